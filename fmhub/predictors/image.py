"""Medical image predictor: class probabilities (temperature-scaled), optional Grad-CAM, and the scenario's notice
on every result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fmhub.errors import FmhubError
from fmhub.imaging import open_image
from fmhub.ood import softmax
from fmhub.predictors.base import Predictor


class MedicalImagePredictor(Predictor):
    """Image -> {"label", "score", "scores", "notice"} (+ "gradcam": heatmap and overlay when asked).

    Items: file paths, bytes, PIL images or arrays; see `fmhub.imaging.open_image` for the checks and conversions.
    """

    model_calls = {"predict": 30}  # Grad-CAM included; its first call also measures the layer's geometry

    def __init__(self, folder: Path, scenario, runtime: str | None = None):
        import threading

        from fmhub.models.timm_backbone import build_transforms

        super().__init__(folder, scenario, runtime)
        self.notice = scenario.notice
        self.transform = build_transforms(self.processor, train=False)
        self._scenario = scenario
        self._explainer = self.model if self.runtime == "torch" else None
        self._explainer_lock = threading.Lock()

    def explainer(self) -> torch.nn.Module:
        """The PyTorch model Grad-CAM hooks: the predictor's own, or under ONNX Runtime the folder's PyTorch weights,
        loaded on the first explanation asked for."""
        with self._explainer_lock:
            if self._explainer is None:
                from fmhub.models.auto import load_checked

                self._explainer = load_checked(self._scenario, self.folder)[0].eval()
            return self._explainer

    @torch.no_grad()
    def predict_proba(self, pixels: torch.Tensor) -> np.ndarray:
        with self._lock:
            logits = self.model(pixel_values=pixels.to(self.device))["logits"]
        return softmax(logits, self.temperature)

    def predict(self, items: list, gradcam: bool = False, batch_size: int = 32) -> list[dict]:
        """One result per item, in order. An unreadable item gets {"label": None, "error": ..., "notice"} and the
        others still come (the CLI writes every line; the app shows the error)."""
        from fmhub.explain import denormalize, overlay
        from fmhub.explain import gradcam as compute_gradcam

        results: list[dict] = []
        for start in range(0, len(items), batch_size):
            chunk: list[dict | None] = []
            images = []
            for item in items[start : start + batch_size]:
                try:
                    images.append(open_image(item))
                    chunk.append(None)
                except FmhubError as err:
                    chunk.append({"label": None, "score": None, "scores": {}, "error": str(err),
                                  "notice": self.notice})
            if images:
                pixels = torch.stack([self.transform(im) for im in images])
                probs = self.predict_proba(pixels)
                heat = None
                if gradcam:
                    explainer = self.explainer()
                    with self._lock:  # Grad-CAM hooks the shared model: no other forward pass meanwhile
                        heat = compute_gradcam(explainer, pixels, probs.argmax(1).tolist())
                    rgb = denormalize(pixels, self.processor["mean"], self.processor["std"])
                done = iter(range(len(images)))
                for slot, _ in enumerate(chunk):
                    if chunk[slot] is not None:
                        continue
                    i = next(done)
                    best = int(probs[i].argmax())
                    chunk[slot] = {
                        "label": self.label_names[best],
                        "score": round(float(probs[i][best]), 6),
                        "scores": self.scores_dict(probs[i]),
                        "notice": self.notice,
                    }
                    if heat is not None:
                        chunk[slot]["gradcam"] = {"heatmap": heat[i], "overlay": overlay(rgb[i], heat[i])}
            results.extend(chunk)
        return results


__all__ = ["MedicalImagePredictor"]
