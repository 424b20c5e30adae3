"""Hugging Face Spaces: one scenario's tab, or the whole hub (every tab, as `python app.py`), as a Gradio app.

On a ZeroGPU Space (`SPACES_ZERO_GPU` set) each model that is ready at start-up is loaded while the Space's `app.py`
is imported, on the main thread, and placed on cuda there: that is where the `spaces` package records `.to("cuda")`
(it refuses to start CUDA anywhere else in the main process) and from where it copies the weights into the GPU worker
it forks. Every call that runs a model (`Predictor.model_calls`: a tab's `predict`, Grad-CAM included, and the voice
stream's windows) then runs inside `@spaces.GPU(duration=...)`, in the request's own thread, so the visitor who asked
is the one whose GPU quota it uses. A model that is not ready at start-up (an embedded default, fine-tuned on the
first start, or a model that failed to load) is served on CPU once it is: restart the Space to move it to the GPU.
Elsewhere (locally, CPU Spaces) nothing changes: models load on first use and run on CPU.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from fmhub.errors import FmhubError  # noqa: E402
from fmhub.replies import configured_writer  # noqa: E402
from fmhub.ui.app import (  # noqa: E402
    CONCURRENCY,
    MAX_IMAGE_PIXELS,
    QUEUE_MAX_SIZE,
    AppConfig,
    available_tabs,
    build_app,
    launch,
    limit_malloc_arenas,
    model_variable,
    quiet_idle_queue,
)
from fmhub.ui.models import BOOTSTRAP, ModelSlot, bounded_log_text  # noqa: E402

log = logging.getLogger("fmhub.app")

ZERO_GPU_DEVICE = "cuda"


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (the `spaces` package sets up GPU access there); False locally and on CPU Spaces."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def serve_on_zero_gpu(slots: Iterable[ModelSlot], device: str = ZERO_GPU_DEVICE) -> list[str]:
    """Load each slot's model now, place it on `device` and route its model calls through `spaces.GPU` (see the
    module docstring). Call it at import time, on the main thread. Returns the scenarios now served from the GPU."""
    from fmhub.onnx_runtime import check_runtime
    from fmhub.serving import load_predictor

    spaces = _zero_gpu_package()

    on_gpu = []
    for slot in slots:
        if not slot.cached():
            log.warning("%s: the embedded default is fine-tuned on this first start and then served on CPU; "
                        "restart the Space once it is ready to serve it from the GPU", slot.scenario)
            continue
        runtime = check_runtime(slot.runtime)
        if runtime != "torch":
            log.warning("%s: the %s runtime runs on CPU", slot.scenario, runtime)
            continue
        try:
            predictor = load_predictor(slot.scenario, slot.model_ref, runtime, device)
        except Exception:  # the tab keeps its lazy path: it retries on a request and says why it fails
            log.error("%s: loading the model for the GPU failed; it is tried again on CPU on first use:\n%s",
                      slot.scenario, bounded_log_text(traceback.format_exc()))
            continue
        slot.serve(predictor.route_model_calls(lambda method, seconds: spaces.GPU(method, duration=seconds)))
        on_gpu.append(slot.scenario)
    return on_gpu


def _zero_gpu_package():
    """The `spaces` package (preinstalled on ZeroGPU Spaces), or a clear error."""
    try:
        import spaces
    except ImportError:
        spaces = None
    if not callable(getattr(spaces, "GPU", None)):  # e.g. the fmhub repository's own spaces/ folder
        raise FmhubError("SPACES_ZERO_GPU is set but the ZeroGPU `spaces` package cannot be imported: "
                         "pip install spaces, or unset SPACES_ZERO_GPU")
    return spaces


def _start(slots: Iterable[ModelSlot], bootstrap: bool = True) -> None:
    """ZeroGPU placement (on ZeroGPU Spaces), then first-run fine-tuning of the embedded defaults that are missing."""
    slots = list(slots)
    if on_zero_gpu():
        serve_on_zero_gpu(slots)
    for slot in slots:
        if bootstrap and slot.is_default and not slot.cached():
            BOOTSTRAP.request(slot)


def _announce(what: str, models: str) -> None:
    """One line in the Space's logs: which code and which models this Space runs."""
    print(f"fmhub Space: {what}, {models}, fmhub code from {Path(__file__).resolve().parents[1]}",
          file=sys.stderr, flush=True)


def build_space_demo(scenario: str, model: str | None = None) -> gr.Blocks:
    """One scenario's tab as a standalone app (`spaces/<scenario>/app.py`)."""
    _announce(scenario, f"model {model or 'embedded default'}")
    limit_malloc_arenas()
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    title, build_tab = available_tabs()[scenario]
    slot = ModelSlot(scenario, model)
    if scenario == "customer-service":  # the FMHUB_REPLIES / FMHUB_REPLY_MODEL variables, as in the hub app
        slot.reply_writer = configured_writer()
    with gr.Blocks(title=f"fmhub {title}", delete_cache=(600, 900)) as demo:
        gr.Markdown(f"# {title}")
        build_tab(slot)
    demo.queue(api_open=False, max_size=QUEUE_MAX_SIZE, default_concurrency_limit=CONCURRENCY)
    quiet_idle_queue(demo)
    _start([slot])
    return demo


def build_hub_space_demo(models: dict[str, str | None]) -> gr.Blocks:
    """Every registered scenario's tab, built by the hub app's own `build_app` (same tabs, queue limits and
    hardening). A tab's model: its `FMHUB_<SCENARIO>_MODEL` variable, else `models[scenario]`, else the embedded
    default."""
    tabs = available_tabs()
    models = {name: os.environ.get(model_variable(name)) or models.get(name) for name in tabs}
    _announce("all tabs", "models " + ", ".join(f"{name}={ref or 'embedded default'}" for name, ref in models.items()))
    demo, slots = build_app(AppConfig(models=models, bootstrap=False))
    _start(slots.values())
    return demo


def launch_space(demo: gr.Blocks):
    """The hub app's hardened launch; host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Spaces set both)."""
    return launch(demo, AppConfig(host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), port=None))
