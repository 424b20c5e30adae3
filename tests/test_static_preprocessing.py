"""The static Spaces' browser code (`fmhub/static/image.js`, `voice.js`) run in Node.js against fmhub's Python path:
the pixel tensor of real embedded images, Whisper log-mel features of real embedded speech, and the decisions
(labels, scores, detections) of the real predictors on tiny local models."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "fmhub" / "static"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_", "_unknown_"]

RUNNER = """
const fs = require('fs')
const image = require(process.argv[2])
const voice = require(process.argv[3])
const request = JSON.parse(fs.readFileSync(process.argv[4], 'utf8'))
const bytes = (text) => new Uint8Array(Buffer.from(text, 'base64'))
const floats = (text) => { const b = bytes(text); return new Float32Array(b.buffer, b.byteOffset, b.length / 4) }
const encode = (array) => Buffer.from(array.buffer, array.byteOffset, array.byteLength).toString('base64')
const ops = {
  pixels: (r) => r.images.map((im) => encode(image.pixelValues({data: bytes(im.rgba), width: im.width,
                                                                  height: im.height}, r.config).data)),
  image_decide: (r) => r.logits.map((row) => image.decide(row, r.config)),
  log_mel: (r) => r.clips.map((clip) => encode(voice.logMel(floats(clip), r.config))),
  voice_decide: (r) => r.cases.map((c) => voice.decideWindows(c.probs, c.starts, c.length, r.config)),
  detections: (r) => {
    let state = null
    return r.chunks.map((c) => {
      const out = voice.findDetections(c.probs, c.times, r.labels, r.threshold, 1.0, 2, state)
      state = out.state
      return out.detections
    })
  },
  fit: (r) => r.clips.map((clip) => encode(voice.fitClip(floats(clip), 16000))),
  round: (r) => r.values.map(([x, digits]) => voice.pyRound(x, digits)),
  resample: (r) => r.clips.map((clip) => encode(voice.resample(floats(clip), r.rate, 16000))),
  classify: async (r) => { // the whole browser path, onnxruntime-web included
    const ort = require(r.ort_web)
    ort.env.wasm.numThreads = 1
    const image_session = await ort.InferenceSession.create(r.image_model)
    const voice_session = await ort.InferenceSession.create(r.voice_model)
    const images = []
    for (const im of r.images) {
      images.push(await image.classify(image_session, {data: bytes(im.rgba), width: im.width, height: im.height},
                                       r.image_config, {ort}))
    }
    const clips = []
    for (const clip of r.clips) clips.push(await voice.classify(voice_session, floats(clip), r.voice_config, {ort}))
    return {images, clips}
  },
}
Promise.resolve(ops[request.op](request)).then((out) => process.stdout.write(JSON.stringify(out)))
  .catch((err) => { console.error(err); process.exit(1) })
"""


def run_js(tmp_path: Path, request: dict):
    runner, payload = tmp_path / "runner.cjs", tmp_path / "request.json"
    runner.write_text(RUNNER)
    payload.write_text(json.dumps(request))
    out = subprocess.run([NODE, str(runner), str(STATIC / "image.js"), str(STATIC / "voice.js"), str(payload)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def floats(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


# -- image ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A saved medical-image folder: timm's `test_efficientnet` (random weights) at 64 px, calibrated temperature."""
    from fmhub.model_folder import ModelFolder
    from fmhub.models.timm_backbone import TimmClassifier, create_backbone

    folder = tmp_path_factory.mktemp("static_image")
    model = TimmClassifier(create_backbone("test_efficientnet", 2, pretrained=False), ["normal", "lesion"],
                           image_size=64)
    model.save_pretrained(folder)
    ModelFolder(folder).write({"scenario": "medical-image", "label_names": ["normal", "lesion"], "temperature": 1.7})
    return folder


def with_preprocessing(folder: Path, tmp_path: Path, **changes) -> Path:
    """A copy of `folder` whose config.json's timm preprocessing has `changes`."""
    copy = tmp_path / "changed"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["pretrained_cfg"].update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def embedded_images(n: int = 20) -> list[np.ndarray]:
    """RGBA arrays of real embedded test images: opaque ones, greyscale ones, cut to other shapes, semi-transparent."""
    from fmhub.data import image_data

    images = image_data.load_embedded()["test"][0][:n]
    rng = np.random.default_rng(0)
    out = []
    for i, rgb in enumerate(images):
        if i % 5 == 1:  # greyscale, as a browser hands it over (R = G = B)
            rgb = np.repeat(rgb.mean(-1, keepdims=True).astype(np.uint8), 3, -1)
        if i % 5 == 2:  # not square: landscape and portrait
            rgb = rgb[:97] if i % 2 else rgb[:, 13:]
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        if i % 5 == 3:  # transparency: composited over black as fmhub.imaging does
            alpha = rng.integers(0, 256, alpha.shape, dtype=np.uint8)
        out.append(np.concatenate([rgb, alpha], -1))
    return out


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the folder as saved: 64 px, bilinear, crop_pct 1.0 (the 128 px images are downscaled)
        {"input_size": [3, 128, 128]},  # fmhub's default size: the resize and the crop are no-ops here
        {"input_size": [3, 96, 96], "interpolation": "bicubic", "crop_pct": 0.875},
        {"input_size": [3, 80, 112], "interpolation": "bicubic"},  # non-square: timm keeps the aspect ratio
        {"input_size": [3, 100, 100], "interpolation": "lanczos", "crop_mode": "squash", "crop_pct": 0.9},
        {"input_size": [3, 150, 150], "interpolation": "hamming", "crop_pct": 1.1},  # upscale, then zero padding
        {"input_size": [3, 72, 72], "interpolation": "box"},
    ],
)
def test_pixel_values_match_fmhub_preprocessing(image_folder, tmp_path, changes):
    import torch

    from fmhub.imaging import open_image
    from fmhub.models.timm_backbone import build_transforms
    from fmhub.registry import get_scenario
    from fmhub.static_assets import image_preprocessing_config

    folder = with_preprocessing(image_folder, tmp_path, **changes) if changes else image_folder
    config = image_preprocessing_config(folder)
    transform = build_transforms(get_scenario("medical-image").load_processor(folder)[0], train=False)
    images = embedded_images()
    expected = [transform(open_image(rgba)) for rgba in images]
    got = run_js(tmp_path, {"op": "pixels", "config": config,
                            "images": [{"rgba": b64(a), "width": a.shape[1], "height": a.shape[0]} for a in images]})
    worst = 0.0
    for want, have in zip(expected, got, strict=True):
        have = torch.from_numpy(floats(have).copy()).reshape(want.shape)
        worst = max(worst, float((want - have).abs().max()))
    print(f"pixel_values {changes or 'as saved'}: max abs difference {worst:.3g} over {len(images)} images")
    assert worst < 1e-5  # the same bytes after Pillow's resize, the same float32 steps after it


def test_image_config_refuses_what_the_browser_cannot_do(image_folder, tmp_path):
    from fmhub.errors import FmhubError
    from fmhub.static_assets import image_preprocessing_config

    config = image_preprocessing_config(image_folder)
    assert config["input_size"] == [3, 64, 64] and config["temperature"] == 1.7
    assert config["label_names"] == ["normal", "lesion"] and config["notice"]
    with pytest.raises(FmhubError, match="crop_mode 'border'"):
        image_preprocessing_config(with_preprocessing(image_folder, tmp_path, crop_mode="border"))


def test_image_decision_matches_the_predictor(image_folder, tmp_path):
    import torch

    from fmhub.imaging import open_image
    from fmhub.registry import get_scenario
    from fmhub.static_assets import image_preprocessing_config

    predictor = get_scenario("medical-image").predictor(image_folder)
    images = [a[..., :3] for a in embedded_images(8)]
    with torch.no_grad():
        pixels = torch.stack([predictor.transform(open_image(im)) for im in images])
        logits = predictor.model(pixel_values=pixels)["logits"].numpy()
    logits = np.concatenate([logits, [[2.0, 2.0], [-30.0, 12.5]]]).astype(np.float32)  # a tie, a confident one
    expected = predictor.predict(images)
    got = run_js(tmp_path, {"op": "image_decide", "config": image_preprocessing_config(image_folder),
                            "logits": logits.tolist()})
    for want, have in zip(expected, got, strict=False):
        assert have["label"] == want["label"] and have["notice"] == want["notice"]
        assert abs(have["score"] - want["score"]) <= 2e-6
        assert all(abs(have["scores"][k] - v) <= 2e-6 for k, v in want["scores"].items())
    assert got[-2]["label"] == "normal" and got[-2]["score"] == 0.5  # ties: the first label, as numpy's argmax
    assert [t["label"] for t in got[-1]["top"]] == ["lesion", "normal"]


# -- voice ---------------------------------------------------------------------------------------------------------
def voice_folder(tmp_path: Path, feature_size: int, hop_length: int, threshold: float) -> Path:
    """A saved voice-command folder: a tiny random Whisper classifier with fmhub's 1 s extractor settings."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    from fmhub.model_folder import ModelFolder

    folder = tmp_path / f"voice_{feature_size}_{hop_length}_{threshold}"
    frames = 16000 // hop_length
    config = WhisperConfig(num_mel_bins=feature_size, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                           encoder_ffn_dim=64, max_source_positions=frames // 2, classifier_proj_size=32,
                           num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                           label2id={n: i for i, n in enumerate(LABELS)})
    WhisperForAudioClassification(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=feature_size, chunk_length=1, hop_length=hop_length).save_pretrained(folder)
    ModelFolder(folder).write({"scenario": "voice-command", "label_names": LABELS, "temperature": 0.8,
                               "detection_threshold": threshold})
    return folder


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    """20 real clips of the embedded corpus (espeak-ng test voices), as float in [-1, 1]."""
    from fmhub.data import voice_corpus
    from fmhub.data.audio_data import corpus_dir

    waves, labels, _ = voice_corpus.load_family("espeak-ng", corpus_dir())["test"]
    picks = np.random.default_rng(0).choice(len(waves), 20, replace=False)
    return [waves[i].astype(np.float32) / 32768.0 for i in sorted(picks)]


@pytest.mark.parametrize("feature_size,hop_length", [(80, 160), (64, 320)])  # Whisper tiny.en's; the local one's
def test_log_mel_matches_whisper_feature_extractor(speech, tmp_path, feature_size, hop_length):
    from fmhub import audio
    from fmhub.registry import get_scenario
    from fmhub.static_assets import voice_features_config

    folder = voice_folder(tmp_path, feature_size, hop_length, 0.5)
    extractor = get_scenario("voice-command").load_processor(folder)[0]
    config = voice_features_config(folder)
    # the clips, plus a short one (zero-padded by the extractor), a long one (cut) and a quiet one
    clips = [*speech, speech[0][3000:9000], np.concatenate(speech[1:3]), speech[3] * 1e-4]
    expected = [audio.features(extractor, [c])["input_features"][0].numpy() for c in clips]
    got = run_js(tmp_path, {"op": "log_mel", "config": config, "clips": [b64(c.astype("<f4")) for c in clips]})
    worst = max(float(np.abs(floats(have).reshape(want.shape) - want).max()) for want, have in zip(expected, got))
    print(f"log-mel {feature_size} mels, hop {hop_length}: max abs difference {worst:.3g} over {len(clips)} clips")
    assert expected[0].shape == (feature_size, 16000 // hop_length)
    assert worst < 1e-3


def test_fit_clip_matches_python(speech, tmp_path):
    from fmhub import audio

    clips = [speech[0][:7001], np.concatenate(speech[:3]), speech[4]]
    got = run_js(tmp_path, {"op": "fit", "clips": [b64(c.astype("<f4")) for c in clips]})
    for clip, have in zip(clips, got, strict=True):
        assert np.array_equal(floats(have), audio.fit_clip(clip))


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_resample_is_close_to_soxr(speech, tmp_path, rate):
    """voice.js's windowed sinc against fmhub's soxr on real speech: close, not equal (the page may also let WebAudio
    resample). Compared away from the clip's ends, where the two filters' edge handling differs."""
    from fmhub import audio

    clips = [audio.resample(c, audio.SAMPLE_RATE, rate) for c in speech[:6]]
    got = run_js(tmp_path, {"op": "resample", "rate": rate, "clips": [b64(c.astype("<f4")) for c in clips]})
    worst = 0.0
    for clip, have in zip(clips, got, strict=True):
        want = audio.resample(clip, rate, audio.SAMPLE_RATE)
        have = floats(have)
        assert abs(len(have) - len(want)) <= 1
        n = min(len(have), len(want))
        worst = max(worst, float(np.abs(have[200:n - 200] - want[200:n - 200]).max()))
    print(f"resample {rate} Hz -> 16 kHz: max abs difference from soxr {worst:.3g}")
    assert worst < (2e-2 if rate < audio.SAMPLE_RATE else 3e-3)  # up from 8 kHz, the filters' edges differ most


def window_logits(windows: np.ndarray) -> np.ndarray:
    """Logits that follow what is said in each window (the energy in 12 bands of its spectrum, sharpened): a random
    tiny model answers nearly the same for every window, a trained one does not."""
    spectrum = np.abs(np.fft.rfft(windows, axis=1)) ** 2
    bands = np.stack([b.sum(1) for b in np.array_split(spectrum, len(LABELS), axis=1)], 1)
    return 3.0 * np.log10(bands + 1e-6)


def test_voice_decision_matches_the_predictor(speech, tmp_path):
    """Short clips, long clips with and without detections, and a silent one: the JS decision on the window
    probabilities gives the Python predictor's result (the tiny model's logits replaced by `window_logits`)."""
    from fmhub import audio
    from fmhub.keyword_spotting import scan
    from fmhub.ood import softmax
    from fmhub.registry import get_scenario
    from fmhub.static_assets import voice_features_config

    clips = [speech[0], speech[1][2000:12000], np.concatenate(speech[2:6]), np.concatenate(speech[6:9]),
             np.concatenate([speech[9], np.zeros(30000, np.float32), speech[10]]), np.zeros(20000, np.float32)]
    fired = {}
    for threshold in (0.6, 0.999):
        folder = voice_folder(tmp_path, 64, 320, threshold)
        predictor = get_scenario("voice-command").predictor(folder)
        predictor.predict_windows = lambda w, p=predictor: softmax(window_logits(w), p.temperature)
        config = voice_features_config(folder)
        cases, expected = [], predictor.predict(clips)
        for clip in clips[:-1]:  # the silent clip never reaches the model: checked below
            probs, starts = scan(predictor.predict_windows, clip, predictor.hop_s)
            cases.append({"probs": probs.astype(np.float64).tolist(), "starts": starts.tolist(), "length": len(clip)})
        got = run_js(tmp_path, {"op": "voice_decide", "config": config, "cases": cases})
        for want, have in zip(expected, got):
            for key in ("label", "command", "duration", "windows", "threshold"):
                assert have[key] == want[key], (key, have, want)
            assert abs(have["score"] - want["score"]) <= 2e-6
            assert all(abs(have["scores"][k] - v) <= 2e-6 for k, v in want["scores"].items())
            assert [(d["label"], d["time"]) for d in have["detections"]] == \
                [(d["label"], d["time"]) for d in want["detections"]]
            assert all(abs(a["score"] - b["score"]) <= 1e-4 for a, b in zip(have["detections"], want["detections"]))
        assert expected[-1]["label"] == "_silence_" and expected[-1]["windows"] == 0
        fired[threshold] = sum(len(r["detections"]) for r in expected[2:5])
    print(f"detections in the long clips: {fired}")
    assert fired[0.6] > 0 and fired[0.999] == 0
    assert audio.SAMPLE_RATE == config["sampling_rate"] and config["mel_filters"]["shape"] == [201, 64]


def test_detections_match_keyword_spotting_across_a_stream(tmp_path):
    from fmhub.keyword_spotting import DetectorState, find_detections

    rng = np.random.default_rng(3)
    probs = np.repeat(rng.dirichlet(np.full(len(LABELS), 0.15), size=80), 2, axis=0).astype(np.float32)  # runs
    times = np.arange(160) * 0.25
    chunks, state, expected = [], DetectorState(), []
    for lo in range(0, 160, 40):  # as a stream: four chunks, the state carried across
        part = slice(lo, lo + 40)
        found, state = find_detections(probs[part], times[part], LABELS, 0.6, state=state)
        expected.append(found)
        chunks.append({"probs": probs[part].astype(np.float64).tolist(), "times": times[part].tolist()})
    got = run_js(tmp_path, {"op": "detections", "labels": LABELS, "threshold": 0.6, "chunks": chunks})
    assert sum(map(len, expected)) > 3
    assert got == expected  # times such as 0.625 round half to even, as Python's round


def test_rounding_is_pythons(tmp_path):
    """Scores and times are rounded as Python's round(): exact halves (0.625 s, 0.3125 s) to the even neighbour."""
    rng = np.random.default_rng(1)
    values = [[float(x), d] for d in (2, 3, 4, 6) for x in rng.uniform(-2, 2, 50)]
    values += [[k / 8 + 0.5, 2] for k in range(-8, 40)] + [[k / 16, 2] for k in range(40)] + [[2.5, 0], [0.0, 6]]
    assert run_js(tmp_path, {"op": "round", "values": values}) == [round(x, d) for x, d in values]


def test_voice_config_refuses_non_whisper_extractors(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor

    from fmhub.errors import FmhubError
    from fmhub.model_folder import ModelFolder
    from fmhub.static_assets import voice_features_config

    ASTConfig().save_pretrained(tmp_path)
    ASTFeatureExtractor(num_mel_bins=64).save_pretrained(tmp_path)
    ModelFolder(tmp_path).write({"scenario": "voice-command", "label_names": LABELS})
    with pytest.raises(FmhubError, match="Whisper log-mel features only"):
        voice_features_config(tmp_path)


# -- the whole browser path, with onnxruntime-web -------------------------------------------------------------------
def _ort_web() -> str | None:
    """The onnxruntime-web package folder: FMHUB_ONNXRUNTIME_WEB, else the one .ci/install-web installs."""
    from fmhub.static_space import ORT_WEB_PACKAGE, node_modules

    package = os.environ.get("FMHUB_ONNXRUNTIME_WEB") or str(node_modules() / ORT_WEB_PACKAGE)
    return package if (Path(package) / "package.json").is_file() else None


ORT_WEB = _ort_web()


def export_fp32(folder: Path, scenario_name: str) -> Path:
    """The folder's fp32 ONNX graph as `fmhub export` traces it (without the int8 step and its parity data)."""
    from fmhub.export import _export_fp32
    from fmhub.models.auto import load_checked
    from fmhub.onnx_runtime import FP32_FILE, onnx_dir
    from fmhub.registry import get_scenario

    scenario = get_scenario(scenario_name)
    model, processor = load_checked(scenario, folder)
    onnx_dir(folder).mkdir(exist_ok=True)
    _export_fp32(scenario, model.eval(), processor, onnx_dir(folder) / FP32_FILE)
    return onnx_dir(folder) / FP32_FILE


@pytest.mark.skipif(not ORT_WEB, reason="onnxruntime-web is not installed: bash .ci/install-web")
def test_browser_path_matches_the_onnx_predictors(image_folder, speech, tmp_path):
    """image.js and voice.js `classify` on onnxruntime-web (WebAssembly, as in a browser) against the predictors on
    ONNX Runtime (`--runtime onnx`), from the same exported graphs."""
    from fmhub.registry import get_scenario
    from fmhub.static_assets import image_preprocessing_config, voice_features_config

    images = embedded_images(10)
    clips = [speech[0], speech[1][:9000], np.concatenate(speech[2:5]), np.zeros(20000, np.float32)]
    voice = voice_folder(tmp_path, 64, 320, 0.5)
    request = {"op": "classify", "ort_web": ORT_WEB, "image_model": str(export_fp32(image_folder, "medical-image")),
               "voice_model": str(export_fp32(voice, "voice-command")),
               "image_config": image_preprocessing_config(image_folder), "voice_config": voice_features_config(voice),
               "images": [{"rgba": b64(a), "width": a.shape[1], "height": a.shape[0]} for a in images],
               "clips": [b64(c.astype("<f4")) for c in clips]}
    got = run_js(tmp_path, request)
    expected = (get_scenario("medical-image").predictor(image_folder, runtime="onnx").predict(images)
                + get_scenario("voice-command").predictor(voice, runtime="onnx").predict(clips))
    worst = 0.0
    for want, have in zip(expected, got["images"] + got["clips"], strict=True):
        assert have["label"] == want["label"] and have.get("command") == want.get("command")
        worst = max(worst, *(abs(have["scores"][k] - v) for k, v in want["scores"].items()))
    print(f"onnxruntime-web vs ONNX Runtime: max probability difference {worst:.3g}")
    assert worst < 1e-4
