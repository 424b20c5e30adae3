"""Customer-service predictor: intent, calibrated out-of-scope decision, FAQ answer and human hand-off."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import torch

from fmhub.errors import FmhubError
from fmhub.ood import DistanceScorer, mean_pool, softmax
from fmhub.predictors.base import Predictor

MAX_TEXT_CHARS = 2000  # server-side cap before tokenization; the tokenizer also truncates to the model maximum
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

HANDOFF_MESSAGE = (
    "I'm not sure I can help with that here, so I'm passing you to a human colleague. "
    "Someone from our support team will reply in this chat shortly."
)
EMPTY_MESSAGE = "Please type a message so I can help."


def clean_text(text) -> str:
    """Printable, valid UTF-8, at most MAX_TEXT_CHARS. Lone surrogates and control characters are dropped."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise FmhubError("the message must be text")
    text = text[: MAX_TEXT_CHARS * 2]
    text = text.encode("utf-8", "ignore").decode("utf-8")  # drops lone surrogates
    text = unicodedata.normalize("NFC", _CONTROL.sub(" ", text))
    return " ".join(text.split())[:MAX_TEXT_CHARS]


class TextIntentPredictor(Predictor):
    """Intent + confidence; below the calibrated threshold -> `out_of_scope`; FAQ answer and hand-off flag."""

    def __init__(self, folder: Path, scenario, runtime: str | None = None):
        super().__init__(folder, scenario, runtime)
        self.threshold = float(self.settings.get("oos_threshold", 0.0))
        # the distance-based score (fmhub.ood), when the model was trained with one
        self.distance = DistanceScorer.load(self.folder) if "ood_threshold" in self.settings else None
        self.distance_threshold = float(self.settings.get("ood_threshold", float("inf")))
        self.faq = self.settings.get("faq") or {}
        self.max_length = min(int(getattr(self.processor, "model_max_length", 512) or 512), 512)

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.probs_and_distances(texts, batch_size, distances=False)[0]

    @torch.no_grad()
    def probs_and_distances(self, texts: list[str], batch_size: int = 64, distances: bool = True
                            ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities [N, C] and, when the model has a distance score, each message's distance [N] (one
        forward: the features are the last hidden state averaged over the message's tokens, as in training)."""
        use_distance = distances and self.distance is not None
        probs, features = [], []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            enc = self.processor(chunk, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            enc = enc.to(self.device)
            with self._lock:
                out = self.model(**enc, output_hidden_states=use_distance)
            probs.append(softmax(out.logits, self.temperature))
            if use_distance:
                features.append(mean_pool(out.hidden_states[-1], enc["attention_mask"]))
        all_probs = np.concatenate(probs) if probs else np.zeros((0, len(self.label_names)))
        if not use_distance:
            return all_probs, None
        return all_probs, self.distance.score(np.concatenate(features)) if features else np.zeros(0)

    def predict(self, texts: list[str]) -> list[dict]:
        cleaned = [clean_text(t) for t in texts]
        results: list[dict | None] = [None] * len(cleaned)
        todo = [i for i, t in enumerate(cleaned) if t]
        probs, distances = self.probs_and_distances([cleaned[i] for i in todo]) if todo else ([], None)
        for n, (i, p) in enumerate(zip(todo, probs)):
            results[i] = self._decide(p, None if distances is None else float(distances[n]))
        for i, t in enumerate(cleaned):
            if not t:
                results[i] = {
                    "label": "empty",
                    "score": 0.0,
                    "scores": {},
                    "intent": None,
                    "answer": EMPTY_MESSAGE,
                    "handoff": False,
                }
        return results

    def _decide(self, probs: np.ndarray, distance: float | None = None) -> dict:
        best = int(probs.argmax())
        intent, score = self.label_names[best], float(probs[best])
        far = distance is not None and distance > self.distance_threshold
        out_of_scope = score < self.threshold or far
        # what decided: the confidence under its threshold first, else the distance over its threshold
        decided_by = None if not out_of_scope else ("confidence" if score < self.threshold else "distance")
        label = "out_of_scope" if out_of_scope else intent
        handoff = out_of_scope or intent == "human_agent"
        if out_of_scope:
            answer = HANDOFF_MESSAGE
        else:
            answer = self.faq.get(intent) or f"(intent: {intent})"
        return {
            "label": label,
            "score": round(score, 6),
            "scores": self.scores_dict(probs),
            "intent": intent,
            "answer": answer,
            "handoff": handoff,
            "out_of_scope": {
                "decided_by": decided_by,
                "confidence": round(score, 6),
                "confidence_threshold": round(self.threshold, 6),
                "distance": None if distance is None else round(distance, 3),
                "distance_threshold": None if self.distance is None else round(self.distance_threshold, 3),
            },
        }
