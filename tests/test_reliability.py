"""RELIABILITY.md checks: "App surface" (items 1-10) against a launched app (raw HTTP and gradio_client on
127.0.0.1), and "Models and files" (items 11-14) against the loaders the app and the CLI use."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

from fmhub.ui.app import AppConfig, build_app, launch


@pytest.fixture(scope="module")
def app(tiny_intent_model):
    config = AppConfig(port=None, models={"customer-service": str(tiny_intent_model)},
                       scenarios=("customer-service",), bootstrap=False, queue_size=4, concurrency=1)
    demo, slots = build_app(config)
    launch(demo, config, prevent_thread_lock=True)
    yield demo, slots
    demo.close()


def http(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.mark.parametrize("path", [
    "/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../etc/passwd",
    "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/gradio_api/file=/root/.bashrc",
    "/gradio_api/file=.git/config", "/file=/etc/passwd",
])
def test_file_route_never_serves_system_files(app, path):
    status, _, body = http(app[0].local_url.rstrip("/") + path)
    assert status in (400, 403, 404), status
    assert b"root:" not in body and b"[core]" not in body


def test_model_folder_is_not_served(app, tiny_intent_model):
    url = f"{app[0].local_url.rstrip('/')}/gradio_api/file={tiny_intent_model}/config.json"
    status, _, body = http(url)
    assert status in (403, 404) and b"id2label" not in body


def test_rest_route_that_bypasses_the_queue_is_closed(app):
    status, _, _ = http(app[0].local_url.rstrip("/") + "/gradio_api/api/chat", "POST",
                        b'{"data": ["hi", []]}', {"Content-Type": "application/json"})
    assert status == 404


def test_upload_cap(app):
    url = app[0].local_url.rstrip("/") + "/gradio_api/upload"

    def upload(size: int) -> int:
        boundary = "fmhubboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.bin\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * size + \
            f"\r\n--{boundary}--\r\n".encode()
        status, _, _ = http(url, "POST", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return status

    assert upload(9 * 1024 * 1024) == 200
    assert upload(11 * 1024 * 1024) == 413


def test_cors_is_not_granted_to_other_origins_and_monitoring_is_off(app):
    base = app[0].local_url.rstrip("/")
    _, headers, _ = http(base + "/gradio_api/info", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in headers}
    status, _, _ = http(base + "/monitoring")
    assert status in (403, 404)
    status, _, _ = http(base + "/gradio_api/runs")
    assert status == 404


def test_errors_reach_clients_as_a_friendly_message_only(app):
    demo, slots = app
    slot = slots["customer-service"]
    original = slot.get

    def broken():
        raise RuntimeError("failed reading /srv/secret/model.bin with token hf_abcdefghijklmnop")

    slot.get = broken
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(Exception) as err:
            client.predict("hello", api_name="/classify_intent")
        text = str(err.value)
        assert "secret" not in text and "hf_abc" not in text
        assert "went wrong" in text
    finally:
        slot.get = original


def test_queue_bound_refuses_the_excess_and_stays_healthy(app):
    demo, slots = app
    slot = slots["customer-service"]
    original = slot.get

    def slow():
        time.sleep(1.5)
        return original()

    slot.get = slow
    try:
        client = Client(demo.local_url, verbose=False)
        jobs = [client.submit("where is my order", api_name="/classify_intent") for _ in range(12)]
        outcomes = {"ok": 0, "refused": 0}
        started = time.perf_counter()
        for job in jobs:
            try:
                job.result(timeout=60)
                outcomes["ok"] += 1
            except Exception as err:  # gradio_client reports a full queue as an error
                assert "queue" in str(err).lower() or "full" in str(err).lower(), err
                outcomes["refused"] += 1
        assert outcomes["refused"] >= 1, outcomes  # max_size 4 + concurrency 1 < 12 at once
        assert outcomes["ok"] >= 1
        assert time.perf_counter() - started < 60
    finally:
        slot.get = original
    # still healthy afterwards
    result = Client(demo.local_url, verbose=False).predict("hello", api_name="/classify_intent")
    assert "label" in result


def test_parallel_calls_never_exceed_the_concurrency_limit(app):
    demo, slots = app
    slot = slots["customer-service"]
    original, active, peak = slot.get, [0], [0]

    def counting():
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        active[0] -= 1
        return original()

    slot.get = counting
    try:
        client = Client(demo.local_url, verbose=False)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: client.predict("hi", api_name="/classify_intent"), range(4)))
        assert peak[0] == 1
    finally:
        slot.get = original


# ==================================================================================================================
# Items 8-10: the medical-image and voice-command tabs of a launched app, over gradio_client
# ==================================================================================================================
@pytest.fixture(scope="module")
def media_app(tiny_image_model, tiny_audio_model):
    """The two upload tabs, launched as users get them (default queue and limits)."""
    config = AppConfig(port=None, models={"medical-image": str(tiny_image_model),
                                          "voice-command": str(tiny_audio_model)},
                       scenarios=("medical-image", "voice-command"), bootstrap=False)
    demo, slots = build_app(config)
    launch(demo, config, prevent_thread_lock=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def media_client(media_app):
    return Client(media_app.local_url, verbose=False)


def app_error(client: Client, path, api_name: str, budget_s: float = 15.0) -> str:
    """The message a client gets for a refused upload; it must come back within `budget_s` (no hang)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    started = time.perf_counter()
    with pytest.raises(AppError) as err:
        client.predict(handle_file(str(path)), api_name=api_name)
    assert time.perf_counter() - started < budget_s, f"{path.name}: {time.perf_counter() - started:.1f} s"
    message = str(err.value)
    assert "went wrong" not in message and "Traceback" not in message and "/tmp/" not in message, message
    return message


def memory_mb(key: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(key)


def reset_peak_memory() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0), so the peak of what follows can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bilevel_png(path: Path, width: int, height: int) -> Path:
    """A black 1-bit PNG written row block by row block: a 13000 x 13000 one is about 20 KB on disk and would be
    507 MB as RGB. Written with zlib directly, so making it costs the test no memory either."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    compressor, parts = zlib.compressobj(9), []
    for start in range(0, height, 512):
        parts.append(compressor.compress(row * min(512, height - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))
    return path


def sample_image(folder: Path, label: int = 1, name: str = "sample.png") -> Path:
    import numpy as np
    from PIL import Image

    from fmhub.data import medical_synth

    images, labels, _ = medical_synth.generate(6, size=96, seed=3, split="test")
    path = folder / name
    Image.fromarray(images[int(np.flatnonzero(labels == label)[0])]).save(path)
    return path


# -- item 8: images -------------------------------------------------------------------------------------------------
def test_item8_pixel_bombs_are_refused_before_decoding(media_client, tmp_path):
    """Item 8: 13000 x 13000 1-bit PNG (about 20 KB) and larger -> refused before decoding to RGB, memory growth
    under 100 MB (the peak resident memory of the process that serves the app), through the launched app."""
    from gradio_client import handle_file

    bombs = [bilevel_png(tmp_path / "bomb_13k.png", 13000, 13000),
             bilevel_png(tmp_path / "bomb_30k.png", 30000, 30000),
             bilevel_png(tmp_path / "bomb_wide.png", 200_000, 400)]
    assert bombs[0].stat().st_size < 40_000
    media_client.predict(handle_file(str(sample_image(tmp_path))), api_name="/classify_image")  # model loaded
    before = memory_mb()
    exact = reset_peak_memory()
    for bomb in bombs:
        message = app_error(media_client, bomb, "/classify_image", budget_s=10)
        assert "too large" in message, message
    peak = memory_mb("VmHWM") if exact else memory_mb()
    assert peak - before < 100, f"memory grew by {peak - before:.0f} MB"
    scores, *_ = media_client.predict(handle_file(str(sample_image(tmp_path))), api_name="/classify_image")
    assert scores["label"] in ("normal", "lesion")  # still healthy


def test_item8_damaged_and_foreign_files_get_a_friendly_error(media_client, tmp_path):
    """Item 8: truncated JPEG, random bytes, 0-byte file, SVG -> a friendly error, no hang (launched app)."""
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(good, quality=90)
    cases = {
        "truncated.jpg": (good.read_bytes()[: good.stat().st_size // 2], "damaged or truncated"),
        "random.png": (np.random.default_rng(1).bytes(4096), "not an image"),
        "empty.png": (b"", "empty"),
        "image.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        "image.png": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    }
    for name, (payload, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        message = app_error(media_client, path, "/classify_image", budget_s=10)
        assert expected in message, (name, message)
    scores, *_ = media_client.predict(handle_file(str(sample_image(tmp_path))), api_name="/classify_image")
    assert scores["label"] in ("normal", "lesion")


# -- item 9: audio --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stop_clip():
    """A held-out test clip (float32, 16 kHz) of the embedded corpus."""
    from fmhub.data import speech_corpus as corpus
    from fmhub.data.audio_data import embedded_corpus_path

    waves, labels, _ = corpus.load_corpus(embedded_corpus_path())["test"]
    return waves[labels.index("stop")]


def classify_audio(client: Client, path: Path) -> dict:
    from gradio_client import handle_file

    _verdict, result, *_ = client.predict(handle_file(str(path)), api_name="/classify_audio")
    return result


@pytest.mark.parametrize("variant, tolerance", [
    ("16k-int16-mono", 0.0), ("16k-float32-mono", 0.01), ("8k-int16-mono", 0.05), ("44k1-int16-stereo", 0.03),
    ("48k-float32-stereo", 0.03), ("48k-int16-stereo-uneven", 0.1), ("16k-flac-mono", 0.01),
])
def test_item9_rates_channels_and_sample_formats(media_client, stop_clip, tmp_path, variant, tolerance):
    """Item 9: 8 kHz mono, 44.1/48 kHz stereo, int16 and float32 uploads -> resampled and down-mixed, the same
    prediction within tolerance (as the 16 kHz mono int16 file) through the launched app."""
    import numpy as np
    import soundfile as sf

    from fmhub import audio

    rate = int(variant.split("-")[0].replace("k1", "100").replace("k", "000"))
    wave = audio.resample(stop_clip, 16000, rate)
    # 8 kHz holds nothing above 4 kHz: its reference is the same band-limited clip as a 16 kHz file
    same_content = audio.resample(wave, rate, 16000) if rate < 16000 else stop_clip
    reference = classify_audio(media_client, audio.write_wav(tmp_path / "reference.wav", same_content))
    if "stereo" in variant:
        wave = np.stack([wave, wave * (0.5 if "uneven" in variant else 1.0)], axis=1)
    path = tmp_path / f"{variant}.{'flac' if 'flac' in variant else 'wav'}"
    subtype = "FLOAT" if "float32" in variant else "PCM_16"
    sf.write(path, wave, rate, subtype=subtype)
    assert sf.info(str(path)).samplerate == rate and sf.info(str(path)).channels == (2 if "stereo" in variant else 1)
    result = classify_audio(media_client, path)
    assert result["duration"] == pytest.approx(1.0, abs=0.01)
    diff = max(abs(result["scores"][k] - reference["scores"][k]) for k in reference["scores"])
    assert diff <= tolerance + 1e-6, (variant, diff)
    ranked = sorted(reference["scores"].values(), reverse=True)
    if ranked[0] - ranked[1] > 2 * tolerance:  # a clear reference winner must stay the winner
        assert result["label"] == reference["label"], (variant, result["label"], reference["label"])


def test_item9_a_ten_minute_file_is_refused_fast(media_client, tmp_path):
    """Item 9: a 10-minute file (9.6 MB, under the upload cap) -> refused within the time budget (launched app)."""
    import numpy as np
    import soundfile as sf

    path = tmp_path / "ten_minutes.wav"
    sf.write(path, np.zeros(600 * 8000, np.int16), 8000, subtype="PCM_16")
    assert path.stat().st_size < 10_000_000
    message = app_error(media_client, path, "/classify_audio", budget_s=10)
    assert "600.0 s long" in message and "limit" in message, message


def test_item9_very_short_and_silent_clips(media_client, stop_clip, tmp_path):
    """Item 9: 0.05 s -> a friendly message; pure silence -> `_silence_` (launched app)."""
    import numpy as np

    from fmhub import audio

    message = app_error(media_client, audio.write_wav(tmp_path / "short.wav", stop_clip[4000:4800]), "/classify_audio")
    assert "too short" in message, message
    from gradio_client import handle_file

    verdict, result, *_ = media_client.predict(handle_file(str(audio.write_wav(tmp_path / "silence.wav",
                                                                               np.zeros(16000, np.float32)))),
                                               api_name="/classify_audio")
    assert result["label"] == "_silence_" and result["command"] is None and "silence" in verdict.lower()


@pytest.mark.parametrize("name, payload", [
    ("riff.wav", b"RIFF\xff\xff\xff\xffWAVE" + bytes(range(256)) * 8),
    ("riff-fmt.wav", b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + bytes(range(7, 200))),
    ("id3.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 12),
    ("id3.wav", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 12),
    ("empty.wav", b""),
    ("text.ogg", b"this is not audio at all"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_item9_headers_followed_by_garbage_get_a_friendly_error(media_client, tmp_path, name, payload):
    """Item 9: RIFF/ID3 headers followed by garbage (and other undecodable files) -> a friendly error (launched
    app)."""
    path = tmp_path / name
    path.write_bytes(payload)
    message = app_error(media_client, path, "/classify_audio")
    assert "could not decode" in message or "empty" in message, message


# -- item 10: the medical notice ------------------------------------------------------------------------------------
def test_item10_notice_on_the_tab_and_with_every_prediction(media_app, media_client, tmp_path):
    """Item 10: the research-and-education-only notice is on the medical tab (in the page the browser gets) and comes
    with every prediction and every refusal of the tab's API."""
    import json

    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    from fmhub.scenarios.medical_image import MedicalImage

    status, _, body = http(media_app.local_url.rstrip("/") + "/config")
    assert status == 200
    markdown = [c.get("props", {}).get("value") for c in json.loads(body)["components"] if c.get("type") == "markdown"]
    assert any(MedicalImage.notice in str(v) for v in markdown)

    inputs = [sample_image(tmp_path, 0, "normal.png"), sample_image(tmp_path, 1, "lesion.png")]
    Image.fromarray(np.full((40, 30), 40000, np.uint16)).save(tmp_path / "gray16.png")
    Image.new("RGBA", (50, 50), (10, 200, 30, 128)).save(tmp_path / "rgba.png")
    inputs += [tmp_path / "gray16.png", tmp_path / "rgba.png"]
    for path in inputs:
        scores, _overlay, notice, _summary = media_client.predict(handle_file(str(path)), api_name="/classify_image")
        assert MedicalImage.notice in notice and scores["label"] in notice, (path.name, notice)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert MedicalImage.notice in app_error(media_client, tmp_path / "broken.png", "/classify_image")


# ==================================================================================================================
# Items 11-14: models and files
# ==================================================================================================================
class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


SCENARIO_FIXTURES = {"customer-service": "tiny_intent_model", "medical-image": "tiny_image_model",
                     "voice-command": "tiny_audio_model"}


def fresh_copy(request, scenario: str, folder: Path) -> Path:
    """A copy of the scenario's tiny model without its checkpoints (a loaded folder is cached by path)."""
    source = Path(request.getfixturevalue(SCENARIO_FIXTURES[scenario]))
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "*.png"))
    return folder


def fmhub_sources() -> list[Path]:
    return sorted((Path(__file__).resolve().parents[1] / "fmhub").rglob("*.py"))


def test_item11_no_unsafe_loader_in_the_code():
    """Item 11: nothing is `torch.load`-ed without `weights_only=True`; no pickle.load, no allow_pickle=True."""
    import ast

    offenders = []
    for path in fmhub_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load") and keywords.get("weights_only") != "True":
                offenders.append(f"{path.name}:{node.lineno} {name} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                offenders.append(f"{path.name}:{node.lineno} {name}")
            if keywords.get("allow_pickle") == "True":
                offenders.append(f"{path.name}:{node.lineno} {name}(allow_pickle=True)")
    assert not offenders, offenders


def test_item11_saved_models_and_checkpoints_hold_safetensors(tiny_intent_model, tiny_image_model, tiny_audio_model):
    """Item 11: every saved model and checkpoint keeps its weights in safetensors; the only pickles are Accelerate's
    optimizer/scheduler/RNG files inside checkpoints, listed with their hash; the optimizer and scheduler states
    load with weights_only=True (the RNG states hold numpy objects: only the manifest-checked resume reads them)."""
    import json

    import torch

    from fmhub.checkpoints import MANIFEST

    pickles = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
    for folder in (tiny_intent_model, tiny_image_model, tiny_audio_model):
        assert (folder / "model.safetensors").is_file()
        assert not [p.name for p in folder.iterdir() if p.suffix in pickles], folder
        checkpoints = sorted(folder.glob("checkpoint-*"))
        for checkpoint in checkpoints:
            assert (checkpoint / "model.safetensors").is_file()
            manifest = json.loads((checkpoint / MANIFEST).read_text())
            for path in checkpoint.iterdir():
                if path.suffix in pickles:
                    assert path.name in manifest["files"], path
                    if not path.name.startswith("random_states"):
                        torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers


@pytest.mark.parametrize("scenario", list(SCENARIO_FIXTURES))
def test_item11_a_pickle_that_runs_a_command_is_refused(request, tmp_path, scenario):
    """Item 11: a model folder whose weights are a pickle with a command in `__reduce__` is refused and runs
    nothing (the app's and the CLI's loader, every scenario)."""
    import pickle

    from fmhub.errors import FmhubError
    from fmhub.serving import load_predictor

    folder = fresh_copy(request, scenario, tmp_path / "model")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsACommand(tmp_path / "pwned"), protocol=2))
    with pytest.raises(FmhubError):
        load_predictor(scenario, str(folder))
    assert not (tmp_path / "pwned").exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _huge_header(path: Path) -> None:
    import struct

    path.write_bytes(struct.pack("<Q", 10**12) + b'{"a": 1}')


def _nan_weight(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[1] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})


def _inf_weight(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[-1]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("inf")
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("damage, message", [
    (_truncate, "damaged"), (_huge_header, "damaged"), (_nan_weight, "NaN/Inf"), (_inf_weight, "NaN/Inf"),
], ids=["truncated", "header-larger-than-file", "nan", "inf"])
@pytest.mark.parametrize("scenario", list(SCENARIO_FIXTURES))
def test_item12_damaged_or_non_finite_weights_are_refused_at_load(request, tmp_path, scenario, damage, message):
    """Item 12: truncated safetensors, a header larger than the file -> a clean error; NaN/Inf weights -> refused at
    load (FmhubError: one line in the CLI, the message in the app)."""
    from fmhub.errors import FmhubError
    from fmhub.serving import load_predictor

    folder = fresh_copy(request, scenario, tmp_path / "model")
    damage(folder / "model.safetensors")
    with pytest.raises(FmhubError, match=message) as err:
        load_predictor(scenario, str(folder))
    assert "\n" not in str(err.value)


def test_item12_the_cli_reports_a_damaged_model_in_one_line(tiny_intent_model, tmp_path, capsys):
    """Item 12: the same through `fmhub predict`: exit code 2 and one line, no traceback."""
    from fmhub.cli import main

    folder = tmp_path / "model"
    shutil.copytree(tiny_intent_model, folder, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    _truncate(folder / "model.safetensors")
    (tmp_path / "in.jsonl").write_text('{"text": "where is my order"}\n')
    code = main(["predict", "--scenario", "customer-service", "--model", str(folder), "--input-file",
                 str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "damaged" in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_item13_trust_remote_code_is_never_set():
    """Item 13: no call in fmhub passes trust_remote_code=True (the loaders pass False explicitly)."""
    import ast

    offenders = []
    for path in fmhub_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if ast.unparse(node.value) != "False":
                    offenders.append(f"{path.name}:{node.value.lineno}")
    assert not offenders, offenders


@pytest.mark.parametrize("scenario", ["customer-service", "voice-command"])
def test_item13_a_folder_that_names_custom_code_does_not_run_it(request, tmp_path, scenario):
    """Item 13: a folder whose config names custom code (auto_map + a model type transformers does not know) fails
    to load with a clean error; with a known model type the custom code is ignored. The code never runs."""
    import json

    from fmhub.errors import FmhubError
    from fmhub.serving import load_predictor

    marker = tmp_path / "code_ran"
    for model_type in ("fmhub_evil", None):
        folder = fresh_copy(request, scenario, tmp_path / f"model_{model_type}")
        config = json.loads((folder / "config.json").read_text())
        auto = "AutoModelFor" + ("SequenceClassification" if scenario == "customer-service" else "AudioClassification")
        config["auto_map"] = {"AutoConfig": "evil.EvilConfig", auto: "evil.EvilModel",
                              "AutoFeatureExtractor": "evil.EvilExtractor",
                              "AutoTokenizer": ["evil.EvilTokenizer", None]}
        if model_type:
            config["model_type"] = model_type
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                        "EvilConfig = EvilModel = EvilExtractor = EvilTokenizer = None\n")
        if model_type:
            with pytest.raises(FmhubError, match="custom code|fmhub_evil"):
                load_predictor(scenario, str(folder))
        else:
            predictor = load_predictor(scenario, str(folder))
            assert type(predictor.model).__module__.startswith("transformers.models.")
        assert not marker.exists()


def test_item14_only_checkpoints_the_run_wrote_are_unpickled(tiny_intent_model, tmp_path, monkeypatch):
    """Item 14: Accelerate's load_state (which unpickles) is reached only for a checkpoint folder with this run's
    manifest and matching hashes: a bare Accelerate folder, a foreign run's and a tampered one are refused first.
    (tests/test_engine.py covers the same through `fmhub train --resume`.)"""
    import json
    import pickle

    from fmhub import checkpoints
    from fmhub.errors import FmhubError

    source = checkpoints.latest(tiny_intent_model)
    assert source is not None
    identity = json.loads((source / checkpoints.MANIFEST).read_text())["identity"]
    unpickled = []

    class Accelerator:
        process_index = 0

        def load_state(self, path):
            unpickled.append(("load_state", path))

    monkeypatch.setattr(checkpoints, "load_pickled", lambda path: unpickled.append(("load", path)))

    bare = tmp_path / "bare"
    shutil.copytree(source, bare)
    (bare / checkpoints.MANIFEST).unlink()  # what Accelerate alone writes
    foreign = tmp_path / "foreign"
    shutil.copytree(source, foreign)
    tampered = tmp_path / "checkpoint-9999"
    shutil.copytree(source, tampered)
    (tampered / "random_states_0.pkl").write_bytes(pickle.dumps(_RunsACommand(tmp_path / "pwned")))
    cases = [(bare, identity, "not a complete fmhub checkpoint"),
             (foreign, dict(identity, backbone="someone/else"), "belongs to another run"),
             (tampered, identity, "does not match its hash")]
    for folder, wanted, message in cases:
        with pytest.raises(FmhubError, match=message):
            checkpoints.load(Accelerator(), folder, wanted)
    assert unpickled == [] and not (tmp_path / "pwned").exists()
    assert checkpoints.verify(source, identity)["identity"] == identity  # the run's own checkpoint passes
