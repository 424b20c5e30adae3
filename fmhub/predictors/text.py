"""Customer-service predictor: intent, calibrated out-of-scope decision, FAQ answer and human hand-off."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import torch

from fmhub.errors import FmhubError
from fmhub.predictors.base import Predictor

MAX_TEXT_CHARS = 2000  # server-side cap before tokenization; the tokenizer also truncates to the model maximum
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

HANDOFF_MESSAGE = (
    "I'm not sure I can help with that here, so I'm passing you to a human colleague. "
    "Someone from our support team will reply in this chat shortly."
)


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

    def __init__(self, folder: Path, scenario):
        super().__init__(folder, scenario)
        self.threshold = float(self.settings.get("oos_threshold", 0.0))
        self.faq = self.settings.get("faq") or {}
        self.max_length = min(int(getattr(self.processor, "model_max_length", 512) or 512), 512)

    @torch.no_grad()
    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            enc = self.processor(chunk, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            with self._lock:
                logits = self.model(**enc).logits.float()
            out.append((logits / self.temperature).softmax(-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)))

    def predict(self, texts: list[str]) -> list[dict]:
        cleaned = [clean_text(t) for t in texts]
        results: list[dict | None] = [None] * len(cleaned)
        todo = [i for i, t in enumerate(cleaned) if t]
        probs = self.predict_proba([cleaned[i] for i in todo]) if todo else []
        for i, p in zip(todo, probs):
            results[i] = self._decide(p)
        for i, t in enumerate(cleaned):
            if not t:
                results[i] = {
                    "label": "empty",
                    "score": 0.0,
                    "scores": {},
                    "intent": None,
                    "answer": "Please type a message so I can help.",
                    "handoff": False,
                }
        return results

    def _decide(self, probs: np.ndarray) -> dict:
        best = int(probs.argmax())
        intent, score = self.label_names[best], float(probs[best])
        out_of_scope = score < self.threshold
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
        }
