"""Medical image tab: upload or pick an example, get top-k probabilities and a Grad-CAM overlay.

The upload is a plain file (not `gr.Image`), so that every check (pixel budget from the header, damaged files, SVG)
runs in `fmhub.imaging.open_image` with a clear message, before anything is decoded.
"""

from __future__ import annotations

import gradio as gr

from fmhub.imaging import FORMATS
from fmhub.registry import scenario_class
from fmhub.ui.common import friendly_errors, public_text, summary_markdown
from fmhub.ui.models import ModelSlot

TOP_K = 3


def example_images() -> list[str]:
    """A few embedded test-split images (normal and lesion), written once to the data cache."""
    from PIL import Image

    from fmhub.data import medical_synth
    from fmhub.paths import data_cache_dir

    folder = data_cache_dir("medical_synth") / "examples"
    wanted = [folder / f"example_{i}.png" for i in range(4)]
    if not all(p.is_file() for p in wanted):
        folder.mkdir(parents=True, exist_ok=True)
        images, labels, _ = medical_synth.generate(12, size=128, seed=7, split="test")
        normal = [i for i in range(len(labels)) if labels[i] == 0][:2]
        lesion = [i for i in range(len(labels)) if labels[i] == 1][:2]
        picks = [normal[0], lesion[0], normal[1], lesion[1]]
        for path, i in zip(wanted, picks):
            Image.fromarray(images[i]).save(path)
    return [str(p) for p in wanted]


def _notice_markdown(notice: str, result: dict | None = None) -> str:
    if result is None:
        return f"**{notice}**"
    return f"**{result['label']}** ({result['score']:.0%}) · **{result['notice']}**"


def build_medical_image_tab(slot: ModelSlot) -> None:
    notice_text = scenario_class(slot.scenario).notice
    gr.Markdown(
        f"**{notice_text}** Upload an image ({', '.join(FORMATS)}) or pick an example: the model gives "
        "its class probabilities and a Grad-CAM heatmap of the region that drove the prediction. The embedded "
        "default model is trained on synthetic lesions drawn into real medical images and is not meant for diagnosis."
    )
    summary = gr.Markdown(summary_markdown(slot))
    with gr.Row():
        with gr.Column():
            # type="binary": Gradio 6's "filepath" leaves an empty temporary file in the upload cache on every call
            upload = gr.File(label="Image", file_count="single", type="binary", elem_id="mi-upload")
            button = gr.Button("Classify", variant="primary", elem_id="mi-classify")
            gr.Examples(example_images(), inputs=upload, label="Examples (synthetic)")
        with gr.Column():
            probabilities = gr.Label(num_top_classes=TOP_K, label="Probabilities")
            heatmap = gr.Image(label="Grad-CAM overlay", type="numpy", interactive=False, format="png")
            notice = gr.Markdown(_notice_markdown(notice_text), elem_id="mi-notice")

    @friendly_errors(slot=slot)
    def classify(data: bytes | None):
        if data is None:
            raise gr.Error(f"Please upload an image or pick an example. {notice_text}")
        result = slot.get().predict([bytes(data)], gradcam=True)[0]
        if result.get("error"):
            raise gr.Error(f"{public_text(result['error'], slot)} ({notice_text})", print_exception=False)
        verdict = _notice_markdown(notice_text, result)
        return result["scores"], result["gradcam"]["overlay"], verdict, summary_markdown(slot)

    button.click(
        classify, [upload], [probabilities, heatmap, notice, summary], api_name="classify_image", concurrency_limit=1
    )
