"""Helpers shared by the tabs: friendly errors, public text (no server paths) and the model card summary."""

from __future__ import annotations

import functools
import inspect
import logging
import re
import traceback
from pathlib import Path

import gradio as gr

from fmhub.errors import FmhubError
from fmhub.hubids import is_hub_id, redact
from fmhub.model_folder import ModelFolder
from fmhub.ui.models import ModelLoadFailed, ModelNotReady, ModelSlot, bounded_log_text

log = logging.getLogger("fmhub.app")

MAX_PUBLIC_CHARS = 500  # what a page or an API client is told about a failure, at most

# an absolute path (POSIX, `~/...` or `C:\...`), not inside a URL: `https://host/a` has `:`, `/` or a word before it
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/\\.<-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"`()<>\[\]{},;|]+)+[/\\]?")


def _final_component(path: str) -> str:
    return re.split(r"[/\\]", path.rstrip("/\\"))[-1] or "the model folder"


def public_model_name(ref: str | None) -> str:
    """How the page names a model: a Hub id as it is, a local folder by its name only (never its path)."""
    if ref is None:
        return "embedded default"
    if is_hub_id(ref):
        return ref
    return _final_component(str(ref))


@functools.lru_cache(maxsize=64)
def _private_forms(model_ref: str) -> tuple[tuple[str, ...], str]:
    """The ways a local model reference can appear in a message, and its public name (worked out once per model:
    `public_text` runs on every reply)."""
    return tuple({str(Path(model_ref).expanduser().resolve()), model_ref}), public_model_name(model_ref)


def public_text(text, slot: ModelSlot | None = None) -> str:
    """`text` fit for the page: the slot's model reference by its public name, every other absolute path by its
    final component, tokens redacted, at most MAX_PUBLIC_CHARS. The full text belongs in the server log only."""
    text = redact(str(text))
    if slot is not None and slot.model_ref and not is_hub_id(slot.model_ref):
        forms, name = _private_forms(slot.model_ref)
        for form in forms:
            text = text.replace(form, name)
    text = _ABSOLUTE_PATH.sub(lambda m: _final_component(m.group(0)), text)
    return text if len(text) <= MAX_PUBLIC_CHARS else text[: MAX_PUBLIC_CHARS - 1] + "…"


def friendly_errors(fn=None, *, slot: ModelSlot | None = None):
    """Known problems become a `gr.Error` with their message made public (`public_text`); anything else a generic
    one. Full details go to the server log only, bounded (`bounded_log_text`)."""
    if fn is None:
        return functools.partial(friendly_errors, slot=slot)

    def translated(err: Exception) -> gr.Error:
        if isinstance(err, ModelLoadFailed):
            return gr.Error(public_text(err, slot), title="Model failed to load", print_exception=False)
        if isinstance(err, ModelNotReady):
            return gr.Error(public_text(err, slot), title="Model not ready", print_exception=False)
        if isinstance(err, FmhubError):
            log.warning("handler %s refused its input: %s", fn.__name__, bounded_log_text(str(err)))
            return gr.Error(public_text(err, slot), print_exception=False)
        log.error("handler %s failed:\n%s", fn.__name__, bounded_log_text(traceback.format_exc()))
        return gr.Error("Something went wrong while processing this input. Please try another one.",
                        print_exception=False)

    if inspect.isgeneratorfunction(fn):  # a streaming handler: its errors surface while it is iterated

        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:
                raise translated(err) from None

        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            raise translated(err) from None

    return wrapper


def summary_markdown(slot: ModelSlot) -> str:
    """The model line above a tab: its public name (Hub id or folder name), backbone, data and test metrics."""
    folder = slot.folder()
    source = public_model_name(slot.model_ref)
    if folder is None or not ModelFolder(folder).is_fmhub_model() or slot.load_error:
        return public_text(f"**Model:** {source} - {slot.status()}", slot)
    info = ModelFolder(folder).summary()  # cached: re-read only when the file changes
    metrics = ", ".join(
        f"{k} {v:.3f}" for k, v in info["test_metrics"].items() if k in ("accuracy", "macro_f1", "roc_auc")
    )
    backbone = public_model_name(info["backbone"]) if info["backbone"] else "unknown"
    data = info["data"] if info["data"] == "embedded default" else public_model_name(str(info["data"]))
    return public_text(f"**Model:** {source} (backbone `{backbone}`) · **data:** {data} · **test:** {metrics}", slot)
