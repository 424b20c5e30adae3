"""Medical-image scenario: offline pretrained backbone, a tiny timm model through the real loop, MedMNIST .npz,
saved folders loaded by timm and transformers without fmhub, CLI predict/evaluate, Grad-CAM, the tab over
gradio_client, and bad image files."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmhub.cli import main
from fmhub.errors import FmhubError
from fmhub.imaging import MAX_IMAGE_PIXELS, open_image
from fmhub.scenarios.medical_image import MedicalImage
from fmhub.serving import load_predictor

NOTICE = MedicalImage.notice


def _sample_png(folder: Path, label: int = 1, name: str = "sample.png") -> Path:
    from fmhub.data import medical_synth

    images, labels, _ = medical_synth.generate(6, size=96, seed=3, split="test")
    path = folder / name
    Image.fromarray(images[int(np.flatnonzero(labels == label)[0])]).save(path)
    return path


# -- the offline backbone -------------------------------------------------------------------------------------------
def test_offline_efficientnet_lite0_is_imagenet_pretrained():
    import skimage.data
    import timm.data

    from fmhub.models.timm_backbone import load_efficientnet_lite0_imagenet

    model = load_efficientnet_lite0_imagenet().eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    batch = torch.stack([transform(Image.fromarray(skimage.data.chelsea())),
                         transform(Image.fromarray(skimage.data.coffee()))])
    with torch.no_grad():
        cat, coffee = model(batch).argmax(-1).tolist()
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee in (967, 968)  # espresso, cup


# -- training through the real loop ---------------------------------------------------------------------------------
def test_tiny_model_trains_and_reports(tiny_image_model):
    results = json.loads((tiny_image_model / "all_results.json").read_text())
    for key in ("accuracy", "macro_f1", "roc_auc", "ece", "localization_score"):
        assert 0.0 <= results[key] <= 1.0, key
    assert {"sensitivity", "specificity"} <= set(results["per_class"]["lesion"])
    extras = json.loads((tiny_image_model / "fmhub.json").read_text())
    assert extras["scenario"] == "medical-image" and extras["label_names"] == ["normal", "lesion"]
    assert "temperature" in extras
    for png in ("confusion_matrix.png", "reliability_diagram.png"):
        assert (tiny_image_model / png).stat().st_size > 0
    card = (tiny_image_model / "README.md").read_text()
    assert "library_name: timm" in card and "not-for-clinical-use" in card
    assert "synthetic" in card.lower() and "not for diagnosis" in card.lower()


def _run_without_fmhub(script: str, cwd: Path) -> None:
    """Run `script` in a fresh interpreter that does not have fmhub on its path; it must print "ok" last."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_saved_folder_loads_with_timm_and_transformers_without_fmhub(tiny_image_model, tmp_path):
    image = _sample_png(tmp_path)
    script = f"""
import sys, timm, torch
from transformers import pipeline
model = timm.create_model("local-dir:{tiny_image_model}", pretrained=True).eval()
assert model.pretrained_cfg["label_names"] == ["normal", "lesion"], model.pretrained_cfg
with torch.no_grad():
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
out = pipeline("image-classification", model="{tiny_image_model}")("{image}")
assert {{o["label"] for o in out}} == {{"normal", "lesion"}}, out
assert "fmhub" not in sys.modules
print("ok")
"""
    _run_without_fmhub(script, tmp_path)


def test_default_backbone_keeps_its_output_stride_without_fmhub(tmp_path):
    """The default runs efficientnet_lite0's last stage dilated (output stride 16, 8 x 8 cells at 128 px, for
    Grad-CAM): timm and transformers must rebuild it that way from config.json alone, or the weights would run on a
    different network."""
    from fmhub.config import TrainConfig

    model, _ = MedicalImage().build_model(TrainConfig(scenario="medical-image", image_size=128, pretrained=False),
                                          ["normal", "lesion"])
    model.eval()
    with torch.no_grad():
        assert model.timm_model.forward_features(torch.zeros(1, 3, 128, 128)).shape[-1] == 8
        expected = model(torch.full((1, 3, 128, 128), 0.25))["logits"][0].tolist()
    folder = tmp_path / "lite0"
    model.save_pretrained(folder)
    script = f"""
import sys, timm, torch
from transformers import pipeline
x = torch.full((1, 3, 128, 128), 0.25)
model = timm.create_model("local-dir:{folder}", pretrained=True).eval()
clf = pipeline("image-classification", model="{folder}")
with torch.no_grad():
    for net in (model, clf.model.timm_model):
        assert net.forward_features(torch.zeros(1, 3, 128, 128)).shape[-1] == 8
        logits = net(x)[0].tolist()
        assert max(abs(a - b) for a, b in zip(logits, {expected})) < 1e-4, logits
assert "fmhub" not in sys.modules
print("ok")
"""
    _run_without_fmhub(script, tmp_path)


def _medmnist(path: Path, rgb: bool, classes: int = 3, n: int = (24, 9, 9), side: int = 28) -> Path:
    """A MedMNIST-format file: uint8 images (N x H x W or N x H x W x 3), uint8 labels N x 1; a learnable pattern."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in zip(("train", "val", "test"), n):
        labels = np.arange(count) % classes
        images = rng.integers(0, 60, size=(count, side, side), dtype=np.uint8)
        for i, y in enumerate(labels):  # class c: a bright square in corner c
            r, c = divmod(int(y), 2)
            images[i, r * 14 : r * 14 + 10, c * 14 : c * 14 + 10] = 220
        if rgb:
            images = np.repeat(images[..., None], 3, axis=-1)
        arrays[f"{prefix}_images"] = images
        arrays[f"{prefix}_labels"] = labels.astype(np.uint8)[:, None]
    np.savez_compressed(path, **arrays)
    return path


def test_medmnist_npz_trains_and_evaluates(tmp_path):
    gray = _medmnist(tmp_path / "gray.npz", rgb=False)
    out = tmp_path / "model"
    args = ["train", "--scenario", "medical-image", "--model", "test_efficientnet", "--no-pretrained", "--data",
            str(gray), "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--output-dir", str(out),
            "--report-to", "none"]
    assert main(args) == 0
    trained = json.loads((out / "all_results.json").read_text())
    assert trained["label_names"] == ["class_0", "class_1", "class_2"]
    assert trained["num_examples"] == 9 and "localization_score" not in trained
    rgb = _medmnist(tmp_path / "rgb.npz", rgb=True)
    report = tmp_path / "eval"
    assert main(["evaluate", "--scenario", "medical-image", "--model", str(out), "--data", str(rgb),
                 "--output-dir", str(report)]) == 0
    evaluated = json.loads((report / "all_results.json").read_text())
    assert evaluated["num_examples"] == 9 and 0 <= evaluated["roc_auc"] <= 1


def test_medmnist_multilabel_is_refused_clearly(tmp_path):
    path = _medmnist(tmp_path / "multi.npz", rgb=False)
    arrays = dict(np.load(path))
    arrays["train_labels"] = np.zeros((24, 4), np.uint8)
    np.savez(path, **arrays)
    from fmhub.data.image_data import load_medmnist_npz

    with pytest.raises(FmhubError, match="multi-label"):
        load_medmnist_npz(str(path))


# -- CLI predict / evaluate, Grad-CAM -------------------------------------------------------------------------------
def test_cli_predict_and_evaluate(tiny_image_model, tmp_path):
    _sample_png(tmp_path, 1, "lesion.png")
    _sample_png(tmp_path, 0, "normal.png")
    inputs = tmp_path / "in.jsonl"
    (tmp_path / "broken.png").write_bytes(b"not an image")
    inputs.write_text('{"path": "lesion.png"}\n{"path": "broken.png"}\n{"path": "normal.png"}\n')
    output = tmp_path / "out.jsonl"
    assert main(["predict", "--scenario", "medical-image", "--model", str(tiny_image_model),
                 "--input-file", str(inputs), "--output", str(output)]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 3
    assert rows[1]["label"] is None and "not an image" in rows[1]["error"] and rows[1]["notice"] == NOTICE
    for row in (rows[0], rows[2]):
        assert row["label"] in ("normal", "lesion") and row["notice"] == NOTICE
        assert abs(sum(row["scores"].values()) - 1) < 1e-4 and row["score"] == max(row["scores"].values())
    report = tmp_path / "eval"
    assert main(["evaluate", "--scenario", "medical-image", "--model", str(tiny_image_model),
                 "--output-dir", str(report)]) == 0
    results = json.loads((report / "all_results.json").read_text())
    assert results["num_examples"] == 200 and results["localization_images"] == 100
    assert 0 <= results["localization_score"] <= 1


def test_predictor_gradcam_and_input_types(tiny_image_model, tmp_path):
    predictor = load_predictor("medical-image", str(tiny_image_model))
    path = _sample_png(tmp_path)
    as_pil = Image.open(path)
    as_array = np.asarray(as_pil)
    by_path, by_pil, by_array = predictor.predict([path, as_pil, as_array], gradcam=True)
    assert by_path["scores"] == by_pil["scores"] == by_array["scores"]
    cam = by_path["gradcam"]
    assert cam["overlay"].dtype == np.uint8 and cam["overlay"].shape == (64, 64, 3)
    assert cam["heatmap"].shape == (64, 64) and 0 <= cam["heatmap"].min() and cam["heatmap"].max() <= 1
    assert "gradcam" not in predictor.predict([path])[0]


class _BlurNet(torch.nn.Module):
    """Four 3 x 3 / stride-2 mean filters with symmetric padding (stride 16) and ReLUs, average-pooled; the `lesion`
    logit is the pooled brightness. Cell i of its last map is centred exactly on input pixel 16 i."""

    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(4):
            conv = torch.nn.Conv2d(3, 3, 3, stride=2, padding=1, bias=False)
            weight = torch.zeros(3, 3, 3, 3)
            for c in range(3):
                weight[c, c] = 1 / 9
            conv.weight.data = weight
            layers += [conv, torch.nn.ReLU()]
        self.features = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(3, 2)
        self.fc.weight.data = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
        self.fc.bias.data.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_gradcam_lands_on_a_known_spot():
    """The coordinate chain: cell geometry is measured (not a plain resize's), and the peak lands on the spot."""
    from fmhub.explain import cell_geometry, gradcam, peak_in_mask, target_layer, upsample_cells

    net = _BlurNet().eval()
    layer = target_layer(net, 128)
    assert layer is net.features[-1]
    stride, rows, cols = cell_geometry(net, layer, 128)
    assert stride == 16 and abs(rows) < 1.5 and abs(cols) < 1.5  # a plain resize assumes 7.5
    for r, c in ((48, 80), (80, 32), (64, 64)):
        image = torch.zeros(1, 3, 128, 128)
        image[..., r - 6 : r + 6, c - 6 : c + 6] = 2.0
        mask = (image[0, 0] > 0).numpy()
        heat = gradcam(net, image, [1])[0]
        assert peak_in_mask(heat, mask), np.unravel_index(heat.argmax(), heat.shape)
        # the same cells placed the way a plain resize does land 7.5 px down-right, outside the 12 px spot
        cells = net.features(image).sum(1).detach().numpy()
        naive = upsample_cells(cells, (16.0, 7.5, 7.5), (128, 128), mode="bilinear")[0]
        assert not peak_in_mask(naive, mask)


def test_gradcam_layer_for_the_default_backbone():
    import timm

    from fmhub.explain import target_layer

    for output_stride, expected in ((32, "blocks.5.0.bn1.act"), (16, "blocks.6.0.bn1.act")):
        net = timm.create_model("efficientnet_lite0", num_classes=2, output_stride=output_stride).eval()
        layer = target_layer(net, 128)
        assert next(n for n, m in net.named_modules() if m is layer) == expected


def test_embedded_data_is_deterministic_and_masks_are_the_lesions():
    from scipy import ndimage as ndi

    from fmhub.data import medical_synth

    first = medical_synth.generate_detailed(12, size=128, seed=5, split="test")
    second = medical_synth.generate_detailed(12, size=128, seed=5, split="test")
    for key in ("images", "labels", "masks", "sources"):
        assert np.array_equal(first[key], second[key]), key
    assert set(first["labels"]) == {0, 1}
    for i, (image, label, mask) in enumerate(zip(first["images"], first["labels"], first["masks"])):
        assert mask.any() == bool(label)
        if not label:
            continue
        # the same image rendered without its lesion differs only at the lesion (plus its soft edge)
        twin, _, _ = medical_synth._render(5, medical_synth._SPLIT_CODES["test"], i, False, 128)
        outside = ~ndi.binary_dilation(mask, iterations=8)
        assert np.abs(image.astype(int) - twin.astype(int))[outside].max() <= 2
        assert medical_synth._visibility(image.astype(np.float32), mask) >= 1.2  # after blur and sensor noise


# -- bad input ------------------------------------------------------------------------------------------------------
def _bad_files(folder: Path) -> dict[str, Path]:
    files = {}
    bomb = folder / "bomb.png"
    Image.new("1", (13000, 13000)).save(bomb, optimize=True)
    files["bomb"] = bomb
    good = folder / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(good, quality=90)
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    files["truncated"] = folder / "truncated.jpg"
    (folder / "random.png").write_bytes(np.random.default_rng(1).bytes(4096))
    files["random"] = folder / "random.png"
    (folder / "empty.png").write_bytes(b"")
    files["empty"] = folder / "empty.png"
    (folder / "image.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    files["svg"] = folder / "image.svg"
    return files


@pytest.mark.parametrize(
    "kind, message",
    [("bomb", "too large"), ("truncated", "damaged or truncated"), ("random", "not an image"),
     ("empty", "empty"), ("svg", "SVG")],
)
def test_bad_files_get_a_clear_message(tmp_path, kind, message):
    path = _bad_files(tmp_path)[kind]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(FmhubError, match=message):
        open_image(path)
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: under 100 MB


def test_odd_formats_are_converted(tmp_path):
    gray8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    expected = np.repeat(gray8[..., None], 3, axis=-1)
    assert np.array_equal(np.asarray(open_image(tmp_path / "gray16.png")), expected)

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[:4, :, 3] = 0  # transparent top half -> black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(open_image(tmp_path / "rgba.png"))
    assert out.shape == (8, 8, 3) and (out[:4] == 0).all() and (out[4:, :, 0] == 200).all()

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = np.asarray(open_image(tmp_path / "cmyk.jpg")).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    Image.new("L", (1, 1), 128).save(tmp_path / "one.png")
    assert open_image(tmp_path / "one.png").size == (1, 1)
    with pytest.raises(FmhubError, match="too large"):
        open_image(np.zeros((MAX_IMAGE_PIXELS // 1000 + 1, 1001), np.uint8))


def test_odd_formats_are_classified(tiny_image_model, tmp_path):
    predictor = load_predictor("medical-image", str(tiny_image_model))
    Image.new("CMYK", (40, 30), (10, 20, 30, 40)).save(tmp_path / "cmyk.jpg")
    Image.new("L", (1, 1), 128).save(tmp_path / "one.png")
    Image.new("RGBA", (50, 50), (10, 200, 30, 128)).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((30, 30), 40000, np.uint16)).save(tmp_path / "gray16.png")
    paths = [tmp_path / n for n in ("cmyk.jpg", "one.png", "rgba.png", "gray16.png")]
    for result in predictor.predict(paths, gradcam=True):
        assert result["label"] in ("normal", "lesion") and np.isfinite(result["score"])


# -- the tab over gradio_client -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_url(tiny_image_model):
    from fmhub.ui.app import AppConfig, build_app, launch

    config = AppConfig(models={"medical-image": str(tiny_image_model)}, scenarios=("medical-image",), bootstrap=False)
    config.port = None  # let Gradio pick a free port
    demo, _ = build_app(config)
    markdown = [c.get("props", {}).get("value") for c in demo.config["components"] if c.get("type") == "markdown"]
    assert any(NOTICE in str(v) for v in markdown)  # the notice is on the tab itself
    launch(demo, config, prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


def test_tab_round_trip(app_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    scores, overlay, notice, summary = client.predict(handle_file(str(_sample_png(tmp_path))),
                                                      api_name="/classify_image")
    assert {c["label"] for c in scores["confidences"]} == {"normal", "lesion"}
    assert np.asarray(Image.open(overlay)).shape == (64, 64, 3)
    assert NOTICE in notice and "Model:" in summary


@pytest.mark.parametrize("kind", ["bomb", "random", "svg"])
def test_tab_refuses_bad_files_with_a_message(app_url, tmp_path, kind):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    with pytest.raises(Exception) as err:
        client.predict(handle_file(str(_bad_files(tmp_path)[kind])), api_name="/classify_image")
    assert "went wrong" not in str(err.value)
    assert any(word in str(err.value) for word in ("too large", "not an image", "SVG"))
    # the server is still healthy
    scores, *_ = client.predict(handle_file(str(_sample_png(tmp_path))), api_name="/classify_image")
    assert scores["label"] in ("normal", "lesion")


def test_imagefolder_loads_and_splits(tmp_path):
    from fmhub.config import TrainConfig
    from fmhub.registry import get_scenario

    rng = np.random.default_rng(0)
    for name in ("benign", "malignant"):
        folder = tmp_path / "imgs" / name
        folder.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = TrainConfig(scenario="medical-image", data=str(tmp_path / "imgs"))
    scenario = get_scenario("medical-image")
    assert list(scenario.load_data(config)) == ["train"]  # the data as it is; the base cuts the missing splits
    data = scenario.load_splits(config)
    assert {k: len(v) for k, v in data.items()} == {"train": 12, "validation": 4, "test": 4}
    assert data["train"].features["label"].names == ["benign", "malignant"]
    assert open_image(data["test"][0]["image"]).size == (20, 20)


def test_from_scratch_runs_do_not_freeze_a_random_backbone():
    from fmhub.config import resolve_config

    defaults = MedicalImage.defaults
    assert defaults["freeze_backbone_epochs"] == 1
    pretrained = resolve_config(defaults, {}, {"scenario": "medical-image"})
    scratch = resolve_config(defaults, {}, {"scenario": "medical-image", "pretrained": False})
    assert pretrained.freeze_backbone_epochs == 1 and scratch.freeze_backbone_epochs == 0
