"""ONNX export (`fmhub export`, `fmhub train --export onnx`) and the ONNX Runtime path (`--runtime onnx`) of every
scenario, on the session's tiny models trained through the real loop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fmhub.cli import main
from fmhub.export import FP32_FILE, INT8_FILE, ONNX_DIR, REPORT_FILE


@pytest.fixture(scope="module")
def exported(tiny_intent_model, tiny_image_model, tiny_audio_model, tmp_path_factory) -> dict[str, Path]:
    """A copy of each tiny model with its export (the session's own folders stay as they are)."""
    out = {}
    for scenario, folder in (("customer-service", tiny_intent_model), ("medical-image", tiny_image_model),
                             ("voice-command", tiny_audio_model)):
        copy = tmp_path_factory.mktemp("exported") / scenario
        shutil.copytree(folder, copy)
        assert main(["export", "--model", str(copy)]) == 0
        out[scenario] = copy
    return out


def _inputs(scenario: str, tmp_path: Path, n: int = 12) -> Path:
    """A predict JSONL of real inputs of the scenario: embedded messages, images, clips."""
    path = tmp_path / f"{scenario}.jsonl"
    rows = []
    if scenario == "customer-service":
        from fmhub.data.intents import load_embedded_intents

        rows = [{"text": r["text"]} for r in load_embedded_intents()["test"][: n - 1]] + [{"text": ""}]
    elif scenario == "medical-image":
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(n):
            image = tmp_path / f"img{i}.png"
            Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(image)
            rows.append({"path": str(image)})
    else:
        import soundfile as sf

        from fmhub.data import voice_corpus
        from fmhub.data.audio_data import corpus_dir

        waves, labels, _ = voice_corpus.load_family("espeak-ng", corpus_dir())["test"]
        for i in range(n):
            clip = tmp_path / f"clip{i}.wav"
            sf.write(clip, waves[i * 7], 16000, subtype="PCM_16")
            rows.append({"path": str(clip)})
        long_clip = tmp_path / "long.wav"
        sf.write(long_clip, np.concatenate([waves[1], waves[2], waves[3]]), 16000, subtype="PCM_16")
        rows.append({"path": str(long_clip)})  # 3 s: the sliding-window detector
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("scenario", ["customer-service", "medical-image", "voice-command"])
def test_export_writes_the_onnx_layout_with_parity_and_the_card_section(exported, scenario):
    folder = exported[scenario]
    onnx = folder / ONNX_DIR
    assert (onnx / FP32_FILE).is_file()
    report = json.loads((onnx / REPORT_FILE).read_text())
    assert report["scenario"] == scenario
    fp32 = report["files"][FP32_FILE]["parity"]
    assert fp32["top_label_agreement"] >= 0.999 and fp32["max_probability_difference"] <= 1e-3
    assert fp32["examples"] > 10
    if INT8_FILE in report["files"]:  # kept only when it agreed with PyTorch
        assert (onnx / INT8_FILE).is_file()
        assert report["files"][INT8_FILE]["parity"]["top_label_agreement"] >= 0.99
        assert report["serve"] == INT8_FILE
    else:
        assert report["serve"] == FP32_FILE and any("int8" in n for n in report["notes"])
    card = (folder / "README.md").read_text()
    assert "## ONNX export" in card and "--runtime onnx" in card
    from huggingface_hub import ModelCard

    ModelCard(card)  # still parses
    import onnx as onnx_lib

    graph = onnx_lib.load(str(onnx / FP32_FILE))
    first = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert first.dim_param == "batch_size"  # a dynamic batch axis, as transformers.js and Optimum expect
    if scenario == "customer-service":
        assert {o.name for o in graph.graph.output} == {"logits", "last_hidden_state"}


@pytest.mark.parametrize("scenario", ["customer-service", "medical-image", "voice-command"])
def test_predict_on_onnx_runtime_matches_pytorch(exported, scenario, tmp_path):
    folder = exported[scenario]
    inputs = _inputs(scenario, tmp_path)
    results = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.jsonl"
        assert main(["predict", "--scenario", scenario, "--model", str(folder), "--input-file", str(inputs),
                     "--output", str(out), "--runtime", runtime]) == 0
        results[runtime] = [json.loads(line) for line in out.read_text().splitlines()]
    torch_rows, onnx_rows = results["torch"], results["onnx"]
    assert len(torch_rows) == len(onnx_rows) == len(inputs.read_text().splitlines())
    assert set(torch_rows[0]) == set(onnx_rows[0])  # the same output format
    agree = np.mean([a["label"] == b["label"] for a, b in zip(torch_rows, onnx_rows, strict=True)])
    assert agree >= 0.9
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        if a["scores"]:
            assert max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) < 0.1
    if scenario == "customer-service":
        assert all("out_of_scope" in r for r in onnx_rows if r["label"] != "empty")
        assert onnx_rows[-1]["label"] == "empty"
    if scenario == "voice-command":
        assert onnx_rows[-1]["windows"] > 1  # the long clip went through the sliding window


@pytest.mark.parametrize("scenario", ["customer-service", "voice-command"])
def test_evaluate_on_onnx_runtime_gives_the_same_metrics(exported, scenario, tmp_path):
    scores = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / runtime
        assert main(["evaluate", "--scenario", scenario, "--model", str(exported[scenario]), "--output-dir", str(out),
                     "--runtime", runtime]) == 0
        scores[runtime] = json.loads((out / "all_results.json").read_text())
    assert scores["onnx"]["runtime"] == "onnx"
    assert abs(scores["torch"]["accuracy"] - scores["onnx"]["accuracy"]) <= 0.03
    if scenario == "customer-service":
        assert abs(scores["torch"]["oos_recall"] - scores["onnx"]["oos_recall"]) <= 0.05


def test_gradcam_keeps_working_on_onnx_runtime(exported, tmp_path):
    from fmhub.serving import load_predictor

    inputs = _inputs("medical-image", tmp_path, n=2)
    path = json.loads(inputs.read_text().splitlines()[0])["path"]
    onnx_result = load_predictor("medical-image", str(exported["medical-image"]), "onnx").predict([path],
                                                                                                  gradcam=True)[0]
    torch_result = load_predictor("medical-image", str(exported["medical-image"]), "torch").predict([path],
                                                                                                    gradcam=True)[0]
    assert onnx_result["gradcam"]["heatmap"].shape == torch_result["gradcam"]["heatmap"].shape
    assert onnx_result["label"] == torch_result["label"]


def test_bad_exports_and_files_get_one_clear_line(exported, tiny_intent_model, tmp_path, capsys):
    # a folder without an export, served with --runtime onnx
    inputs = _inputs("customer-service", tmp_path, n=2)
    plain = tmp_path / "plain"
    shutil.copytree(tiny_intent_model, plain)
    shutil.rmtree(plain / ONNX_DIR, ignore_errors=True)
    code = main(["predict", "--scenario", "customer-service", "--model", str(plain), "--input-file", str(inputs),
                 "--output", str(tmp_path / "o.jsonl"), "--runtime", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "no ONNX export" in err and "fmhub export" in err and len(err.strip().splitlines()) == 1
    # a corrupt .onnx
    broken = tmp_path / "broken"
    shutil.copytree(exported["customer-service"], broken)
    report = json.loads((broken / ONNX_DIR / REPORT_FILE).read_text())
    (broken / ONNX_DIR / report["serve"]).write_bytes(b"\x08\x07not a protobuf at all" * 10)
    code = main(["predict", "--scenario", "customer-service", "--model", str(broken), "--input-file", str(inputs),
                 "--output", str(tmp_path / "o.jsonl"), "--runtime", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "not a valid ONNX model" in err and len(err.strip().splitlines()) == 1
    # exporting a folder that holds no model
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["export", "--model", str(empty)])
    err = capsys.readouterr().err
    assert code == 2 and "not an fmhub model folder" in err
    # an unknown runtime from the environment
    from fmhub.errors import FmhubError
    from fmhub.onnx_runtime import check_runtime

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMHUB_RUNTIME", "tensorrt")
        with pytest.raises(FmhubError, match="unknown runtime"):
            check_runtime(None)


def test_train_with_export_onnx_writes_the_export_and_a_retrain_drops_a_stale_one(tmp_path):
    out = tmp_path / "mi"
    args = ["train", "--scenario", "medical-image", "--model", "test_efficientnet", "--no-pretrained",
            "--image-size", "64", "--max-samples-per-class", "12", "--epochs", "1", "--batch-size", "16",
            "--output-dir", str(out), "--report-to", "none"]
    assert main([*args, "--export", "onnx"]) == 0
    report = json.loads((out / ONNX_DIR / REPORT_FILE).read_text())
    assert report["files"][FP32_FILE]["parity"]["top_label_agreement"] >= 0.999
    assert main([*args, "--overwrite"]) == 0  # new weights, no --export: the old graph must not survive
    assert not (out / ONNX_DIR).exists()


def _readme_snippet(scenario: str) -> str:
    """The README's script for running an export without fmhub (the code block after `<!-- snippet:NAME -->`)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split(f"<!-- snippet:{scenario} -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("scenario", ["customer-service", "medical-image", "voice-command"])
def test_the_readme_script_without_fmhub_gives_fmhubs_top_label(exported, scenario, tmp_path):
    """In a clean process where `import fmhub` fails, ONNX Runtime on the served graph (onnx/model_quantized.onnx; the
    tiny voice model's int8 graph fails the parity bar, so fp32 there) plus the folder's own tokenizer / preprocessing
    gives the top label fmhub's ONNX Predictor gives: the README's scripts, run as they are."""
    import subprocess
    import sys

    from fmhub.serving import load_predictor

    folder = exported[scenario]
    rows = [json.loads(line) for line in _inputs(scenario, tmp_path).read_text().splitlines()]
    if scenario == "customer-service":
        items = [r["text"] for r in rows if r["text"]]
    else:
        items = [r["path"] for r in rows if not r["path"].endswith("long.wav")]  # the script takes 1 s clips
    script = tmp_path / "snippet.py"
    script.write_text(_readme_snippet(scenario))
    blocked = "import runpy, sys; sys.modules['fmhub'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0])"
    done = subprocess.run([sys.executable, "-c", blocked, str(script), str(folder), *items], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                           "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = done.stdout.split("\n")[: len(items)]
    predictor = load_predictor(scenario, str(folder), "onnx")
    ours = [max(r["scores"], key=r["scores"].get) for r in predictor.predict(
        items if scenario == "customer-service" else [Path(p) for p in items])]
    assert theirs == ours


def test_the_app_serves_every_tab_on_onnx_runtime(exported, tmp_path):
    """`python app.py --runtime onnx`: the launched hub app answers each tab's API from the ONNX sessions with the
    ONNX Predictor's labels, and the medical tab still draws its Grad-CAM overlay."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from fmhub.serving import load_predictor
    from fmhub.ui.app import AppConfig, build_app, launch

    config = AppConfig(models={s: str(f) for s, f in exported.items()}, bootstrap=False, runtime="onnx")
    config.port = None
    demo, slots = build_app(config)
    launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        assert all(slots[s].get().runtime == "onnx" for s in exported)
        client = Client(demo.local_url, verbose=False)
        inputs = {s: [json.loads(line) for line in _inputs(s, tmp_path, n=3).read_text().splitlines()]
                  for s in exported}
        for row in inputs["customer-service"][:2]:
            answer = client.predict(row["text"], api_name="/classify_intent")
            assert answer == load_predictor("customer-service", str(exported["customer-service"]), "onnx").predict(
                [row["text"]])[0]
        image = inputs["medical-image"][0]["path"]
        scores, overlay, *_ = client.predict(handle_file(image), api_name="/classify_image")
        ours = load_predictor("medical-image", str(exported["medical-image"]), "onnx").predict([Path(image)])[0]
        assert scores["label"] == ours["label"]
        assert np.asarray(Image.open(overlay)).ndim == 3
        clip = inputs["voice-command"][0]["path"]
        _, prediction, *_ = client.predict(handle_file(clip), api_name="/classify_audio")
        assert prediction["label"] == load_predictor("voice-command", str(exported["voice-command"]), "onnx").predict(
            [Path(clip)])[0]["label"]
    finally:
        demo.close()
