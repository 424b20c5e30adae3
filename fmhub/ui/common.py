"""Helpers shared by the tabs: friendly errors and the model card summary."""

from __future__ import annotations

import functools
import logging
import traceback

import gradio as gr

from fmhub.errors import FmhubError
from fmhub.model_folder import ModelFolder
from fmhub.ui.models import ModelNotReady, ModelSlot

log = logging.getLogger("fmhub.app")


def friendly_errors(fn):
    """Known problems become a `gr.Error` with their message; anything else a generic one (details: console only)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ModelNotReady as err:
            raise gr.Error(str(err), title="Model not ready") from None
        except FmhubError as err:
            raise gr.Error(str(err)) from None
        except Exception:
            log.error("handler %s failed:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error("Something went wrong while processing this input. Please try another one.") from None

    return wrapper


def summary_markdown(slot: ModelSlot) -> str:
    folder = slot.folder()
    if folder is None or not ModelFolder(folder).is_fmhub_model():
        where = "embedded default" if slot.is_default else slot.model_ref
        return f"**Model:** {where} - {slot.status()}"
    info = ModelFolder(folder).summary()  # cached: re-read only when the file changes
    metrics = ", ".join(
        f"{k} {v:.3f}" for k, v in info["test_metrics"].items() if k in ("accuracy", "macro_f1", "roc_auc")
    )
    source = "embedded default" if slot.is_default else slot.model_ref
    return f"**Model:** {source} (backbone `{info['backbone']}`) · **data:** {info['data']} · **test:** {metrics}"
