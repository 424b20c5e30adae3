"""One scenario's tab as a standalone Gradio app, for Hugging Face Spaces (ZeroGPU-aware)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from fmhub.ui.app import (  # noqa: E402
    CONCURRENCY,
    MAX_IMAGE_PIXELS,
    QUEUE_MAX_SIZE,
    AppConfig,
    available_tabs,
    launch,
    limit_malloc_arenas,
    quiet_idle_queue,
)
from fmhub.ui.models import BOOTSTRAP, ModelSlot  # noqa: E402


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (the `spaces` package sets up GPU access there); False locally and on CPU Spaces."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def gpu_aware(fn):
    """`@spaces.GPU` only where it means something, so the same file runs locally without the package."""
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(fn)


def build_space_demo(scenario: str, model: str | None = None) -> gr.Blocks:
    # one line in the Space's logs: which code and which model this Space runs
    print(f"fmhub Space: {scenario}, model {model or 'embedded default'}, "
          f"fmhub code from {Path(__file__).resolve().parents[1]}", file=sys.stderr, flush=True)
    limit_malloc_arenas()
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    title, build_tab = available_tabs()[scenario]
    slot = ModelSlot(scenario, model)
    if on_zero_gpu():
        slot.get = gpu_aware(slot.get)
    with gr.Blocks(title=f"fmhub {title}", delete_cache=(600, 900)) as demo:
        gr.Markdown(f"# {title}")
        build_tab(slot)
    demo.queue(api_open=False, max_size=QUEUE_MAX_SIZE, default_concurrency_limit=CONCURRENCY)
    quiet_idle_queue(demo)
    if slot.is_default and not slot.cached():
        BOOTSTRAP.request(slot)
    return demo


def launch_space(demo: gr.Blocks):
    """The hub app's hardened launch; host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Spaces set both)."""
    return launch(demo, AppConfig(host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), port=None))
