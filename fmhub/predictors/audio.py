"""Voice-command predictor: a clip (path, bytes or Gradio's (rate, samples)) -> command, and a streaming detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmhub import audio
from fmhub.data.audio_data import CLIP, SILENCE, UNKNOWN
from fmhub.errors import FmhubError
from fmhub.keyword_spotting import (
    CONFIRM_WINDOWS,
    HOP_S,
    REFRACTORY_S,
    StreamingDetector,
    find_detections,
    scan,
    window_probs,
)
from fmhub.predictors.base import Predictor

MIN_SECONDS = 0.1  # shorter clips cannot hold a command: refused with a message
SILENT_PEAK = 10 ** (-60 / 20)  # a clip whose peak stays below -60 dBFS is `_silence_` without asking the model


class VoiceCommandPredictor(Predictor):
    """Clip -> command. Input: a path, the file's bytes, or (sample_rate, samples) as Gradio gives; any rate and
    channel count. Clips up to 1 s are classified whole; longer ones are scanned with the streaming detector's
    sliding window and report every detection with its time."""

    # `predict_windows`: the streaming detector's entry point (one call per chunk of a live stream)
    model_calls = {"predict": 30, "predict_windows": 20}

    def __init__(self, folder: Path, scenario, runtime: str | None = None):
        super().__init__(folder, scenario, runtime)
        self.threshold = float(self.settings.get("detection_threshold", 0.5))
        self.hop_s = float(self.settings.get("hop_seconds", HOP_S))
        self.refractory_s = float(self.settings.get("refractory_seconds", REFRACTORY_S))
        self.max_seconds = audio.MAX_SECONDS
        self.commands = [n for n in self.label_names if n not in (SILENCE, UNKNOWN)]

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        with self._lock:  # one forward pass at a time per model; torch uses the cores itself
            return window_probs(self.model, self.processor, windows, temperature=self.temperature)

    def predict(self, items: list) -> list[dict]:
        """One result per item; an item that cannot be read gets `label: null` and an `error` message. Clips of up
        to 1 s (one window each) go through the model together, in one batch: with micro-batching on, so do the
        clips of concurrent requests."""
        results: list[dict | None] = [None] * len(items)
        waves = {}
        for i, item in enumerate(items):
            try:
                waves[i] = self.load(item)
            except FmhubError as err:
                results[i] = {"label": None, "score": 0.0, "scores": {}, "error": str(err)}
        single = [i for i, w in waves.items() if len(w) <= CLIP and not self._silent(w)]
        if single:
            probs = self.predict_windows(np.stack([audio.fit_clip(waves[i], CLIP) for i in single]))
            for i, p in zip(single, probs, strict=True):
                results[i] = self.classify(waves[i], p[None])
        for i, wave in waves.items():
            if results[i] is None:
                results[i] = self.classify(wave)
        return results

    def predict_one(self, item) -> dict:
        return self.classify(self.load(item))

    def load(self, item) -> np.ndarray:
        """The 16 kHz waveform of an input, or a clear error: unreadable, empty, too short or too long."""
        wave = audio.load_audio(item, max_seconds=self.max_seconds)
        if len(wave) == 0:
            raise FmhubError("the recording is empty: record or upload at least a fraction of a second")
        if len(wave) < MIN_SECONDS * audio.SAMPLE_RATE:
            raise FmhubError(f"the clip is only {len(wave) / audio.SAMPLE_RATE:.2f} s long: too short for a command "
                             f"(send at least {MIN_SECONDS} s)")
        return wave

    def _silent(self, wave: np.ndarray) -> bool:
        return SILENCE in self.label_names and float(np.max(np.abs(wave), initial=0.0)) < SILENT_PEAK

    def classify(self, wave: np.ndarray, window_probs: np.ndarray | None = None) -> dict:
        """The result for a 16 kHz waveform (see the class docstring); `window_probs` [1, classes]: the model's
        answer for a clip of at most 1 s, already computed (in a batch with others)."""
        duration = len(wave) / audio.SAMPLE_RATE
        if self._silent(wave):
            # nothing above -60 dBFS: no command can be in there, whatever a model trained on other levels thinks
            scores = np.array([float(n == SILENCE) for n in self.label_names])
            return {"label": SILENCE, "score": 1.0, "scores": self.scores_dict(scores), "command": None,
                    "detections": [], "duration": round(duration, 3), "windows": 0, "threshold": self.threshold,
                    "note": "no signal above -60 dBFS"}
        if window_probs is not None and len(wave) <= CLIP:
            probs, starts = window_probs, np.zeros(1, dtype=np.int64)
        else:
            probs, starts = scan(self.predict_windows, wave, self.hop_s)
        times = starts / audio.SAMPLE_RATE
        detections, _ = find_detections(probs, times, self.label_names, self.threshold, self.refractory_s,
                                        confirm=1 if len(probs) == 1 else CONFIRM_WINDOWS)
        if len(probs) == 1:
            window = probs[0]
            detections = [dict(d, time=round(min(duration, 1.0) / 2, 2)) for d in detections]
        elif detections:
            best = max(detections, key=lambda d: d["score"])
            window = probs[int(np.argmin(np.abs(times + 0.5 - best["time"])))]
        else:
            window = probs.mean(0)
        label = self.label_names[int(window.argmax())]
        if len(probs) > 1 and not detections and label in self.commands:
            # nothing confident enough fired anywhere: report the likelier non-command class, if the model has one
            others = [i for i, n in enumerate(self.label_names) if n in (SILENCE, UNKNOWN)]
            if others:
                label = self.label_names[max(others, key=lambda i: window[i])]
        best_detection = max(detections, key=lambda d: d["score"]) if detections else None
        if best_detection is not None and len(probs) > 1:
            label = best_detection["label"]
        return {
            "label": label, "score": round(float(window[self.label_names.index(label)]), 6),
            "scores": self.scores_dict(window),
            "command": best_detection["label"] if best_detection else None,
            "detections": detections, "duration": round(duration, 3), "windows": int(len(probs)),
            "threshold": self.threshold,
        }

    def stream(self) -> StreamingDetector:
        return StreamingDetector(self)
