"""One scenario's tab as a standalone Gradio app, for Hugging Face Spaces (ZeroGPU-aware)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from fmhub.ui.app import CONCURRENCY, MAX_IMAGE_PIXELS, QUEUE_MAX_SIZE, TAB_TITLES, available_tabs  # noqa: E402
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
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    builder = available_tabs()[scenario]
    slot = ModelSlot(scenario, model)
    if on_zero_gpu():
        slot.get = gpu_aware(slot.get)
    with gr.Blocks(title=f"fmhub {TAB_TITLES[scenario]}", delete_cache=(600, 900)) as demo:
        gr.Markdown(f"# {TAB_TITLES[scenario]}")
        builder(slot)
    demo.queue(api_open=False, max_size=QUEUE_MAX_SIZE, default_concurrency_limit=CONCURRENCY)
    if slot.is_default and not slot.cached():
        BOOTSTRAP.request(slot)
    return demo
