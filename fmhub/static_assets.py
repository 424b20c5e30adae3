"""What the browser pages of the static Spaces need to compute a model's inputs and decisions as fmhub does: the
preprocessing and calibrated settings of a saved folder, as JSON-ready dicts for `fmhub/static/image.js` and
`fmhub/static/voice.js`.

`image_preprocessing_config(folder)`: timm's resolved preprocessing (input size, resize interpolation, crop, mean
and std) with the labels and temperature. `voice_features_config(folder)`: the Whisper feature extractor's settings
and mel filter matrix (base64 float32, see `encode_float32`) with the labels, temperature and detector settings.
Both refuse, with a clear error, a folder whose preprocessing the browser code does not reproduce.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from fmhub.errors import FmhubError

BROWSER_INTERPOLATIONS = ("box", "bilinear", "hamming", "bicubic", "lanczos")  # Pillow's filters image.js reproduces
BROWSER_CROP_MODES = ("center", "squash")


def encode_float32(array) -> dict:
    """{"dtype": "float32", "shape", "base64"}: a little-endian float32 array, row-major, as voice.js reads it."""
    a = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
    return {"dtype": "float32", "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def _settings(folder: Path, scenario: str) -> dict:
    """The manifest (`fmhub.json`) of a saved folder of `scenario`, with the label names from config.json if needed."""
    from fmhub.model_folder import ModelFolder

    model = ModelFolder(folder)
    model.check_trained_for(scenario)
    settings = dict(model.read_or_empty())
    if not settings.get("label_names"):
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise FmhubError(f"{folder}: no fmhub.json labels and no readable config.json ({err})") from None
        id2label = config.get("id2label") or {}
        names = config.get("label_names") or [id2label.get(str(i)) for i in range(len(id2label))]
        if not names or None in names:
            raise FmhubError(f"{folder}: cannot tell the model's label names (no fmhub.json, no id2label)")
        settings["label_names"] = list(names)
    return settings


def image_preprocessing_config(folder) -> dict:
    """Preprocessing and decision settings of a saved medical-image folder for `fmhub/static/image.js`."""
    from fmhub.registry import get_scenario

    folder = Path(folder).expanduser()
    scenario = get_scenario("medical-image")
    settings = _settings(folder, scenario.name)
    data_config, _ = scenario.load_processor(folder)
    interpolation = data_config.get("interpolation", "bilinear")
    crop_mode = data_config.get("crop_mode") or "center"
    if interpolation not in BROWSER_INTERPOLATIONS:
        raise FmhubError(f"{folder}: the browser page cannot resize with {interpolation!r} interpolation "
                         f"(it can with {', '.join(BROWSER_INTERPOLATIONS)})")
    if crop_mode not in BROWSER_CROP_MODES:
        raise FmhubError(f"{folder}: the browser page cannot crop with crop_mode {crop_mode!r} "
                         f"(it can with {', '.join(BROWSER_CROP_MODES)})")
    return {
        "scenario": scenario.name,
        "input_name": "pixel_values",
        "output_name": "logits",
        "input_size": [int(x) for x in data_config["input_size"]],
        "interpolation": interpolation,
        "crop_pct": float(data_config.get("crop_pct") or 1.0),  # fmhub's build_transforms defaults to 1.0
        "crop_mode": crop_mode,
        "mean": [float(x) for x in data_config["mean"]],
        "std": [float(x) for x in data_config["std"]],
        "label_names": list(settings["label_names"]),
        "temperature": float(settings.get("temperature", 1.0)),
        "notice": scenario.notice,
    }


def voice_features_config(folder) -> dict:
    """Feature and detector settings of a saved voice-command folder for `fmhub/static/voice.js`: the Whisper
    extractor's frame settings and mel filters, and the predictor's threshold, hop, refractory and silence rules."""
    from transformers import WhisperFeatureExtractor

    from fmhub import audio
    from fmhub.data.audio_data import CLIP, SILENCE, UNKNOWN
    from fmhub.keyword_spotting import CONFIRM_WINDOWS, HOP_S, REFRACTORY_S
    from fmhub.predictors.audio import MIN_SECONDS, SILENT_PEAK
    from fmhub.registry import get_scenario

    folder = Path(folder).expanduser()
    scenario = get_scenario("voice-command")
    settings = _settings(folder, scenario.name)
    extractor, _ = scenario.load_processor(folder)
    if not isinstance(extractor, WhisperFeatureExtractor):
        raise FmhubError(f"{folder}: the browser page computes Whisper log-mel features only, and this model uses "
                         f"{type(extractor).__name__}")
    if float(getattr(extractor, "dither", 0.0) or 0.0) != 0.0:
        raise FmhubError(f"{folder}: the feature extractor adds random dither ({extractor.dither}); the browser "
                         "page cannot reproduce it")
    if int(extractor.sampling_rate) != audio.SAMPLE_RATE or int(extractor.n_samples) != CLIP:
        raise FmhubError(f"{folder}: the extractor takes {extractor.n_samples} samples at {extractor.sampling_rate} "
                         f"Hz; the detector needs {CLIP} at {audio.SAMPLE_RATE} Hz")
    filters = np.asarray(extractor.mel_filters)
    return {
        "scenario": scenario.name,
        "input_name": "input_features",
        "output_name": "logits",
        "sampling_rate": int(extractor.sampling_rate),
        "n_samples": int(extractor.n_samples),
        "n_fft": int(extractor.n_fft),
        "hop_length": int(extractor.hop_length),
        "feature_size": int(extractor.feature_size),
        "nb_max_frames": int(extractor.nb_max_frames),
        "padding_value": float(extractor.padding_value),
        "mel_filters": encode_float32(filters),  # [n_fft // 2 + 1, feature_size]
        "label_names": list(settings["label_names"]),
        "temperature": float(settings.get("temperature", 1.0)),
        "detection_threshold": float(settings.get("detection_threshold", 0.5)),
        "hop_seconds": float(settings.get("hop_seconds", HOP_S)),
        "refractory_seconds": float(settings.get("refractory_seconds", REFRACTORY_S)),
        "confirm_windows": CONFIRM_WINDOWS,
        "min_seconds": MIN_SECONDS,
        "max_seconds": audio.MAX_SECONDS,
        "silent_peak": SILENT_PEAK,
        "silence_label": SILENCE,
        "unknown_label": UNKNOWN,
    }


__all__ = ["BROWSER_CROP_MODES", "BROWSER_INTERPOLATIONS", "encode_float32", "image_preprocessing_config",
           "voice_features_config"]
