"""Out-of-scope scores that use more than the top softmax probability: how far a message's embedding lies from the
training messages of every intent.

The score is the Mahalanobis distance of the fine-tuned encoder's mean-pooled last hidden state to the nearest
intent's mean, under one covariance shared by all intents (Podolskiy et al., 2021: distances on the fine-tuned
encoder separate out-of-scope messages far better than confidence does, also with no out-of-scope training rows).
The covariance is shrunk towards its average variance, so a few hundred training rows are enough in 384 dimensions.
It is fitted on the training split's in-scope rows and its threshold calibrated on validation, with the confidence
threshold: a message is out of scope when either says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

STATS_FILE = "ood_stats.safetensors"
SHRINKAGE = 0.1  # weight of the average variance in the shared covariance
BATCH = 64
MAX_REFUSED_BY_DISTANCE = 0.01  # share of correct in-scope validation answers the distance may refuse


def mean_pool(hidden, attention_mask) -> np.ndarray:
    """[B, T, H] hidden states averaged over each row's real tokens -> [B, H] float32: the score's features.

    Tensors or arrays; the sum runs in numpy, which beside an ONNX Runtime session is far cheaper than a torch op."""
    hidden, mask = as_numpy(hidden), as_numpy(attention_mask)[..., None].astype(np.float32)
    return (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)


def as_numpy(values) -> np.ndarray:
    """A float32/int array of a tensor (any device, any float dtype) or an array."""
    if torch.is_tensor(values):
        values = values.detach()
        return (values.float() if values.is_floating_point() else values).cpu().numpy()
    values = np.asarray(values)
    return values.astype(np.float32, copy=False) if values.dtype.kind == "f" else values


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """[N, C] probabilities of logits (tensor or array) divided by the calibrated temperature, in numpy."""
    z = as_numpy(logits) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@torch.no_grad()
def logits_and_features(model, tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], features [N, H]) of a sequence classifier: one forward per batch, the features being the last
    hidden state averaged over each message's tokens."""
    was_training = model.training
    model.eval()
    logits, features = [], []
    device = next(model.parameters()).device
    try:
        for start in range(0, len(texts), BATCH):
            enc = tokenizer(texts[start : start + BATCH], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(device)
            out = model(**enc, output_hidden_states=True)
            logits.append(out.logits.float().cpu().numpy())
            features.append(mean_pool(out.hidden_states[-1], enc["attention_mask"]))
    finally:
        model.train(was_training)
    width = getattr(getattr(model, "config", None), "hidden_size", 0)
    if not logits:
        return np.zeros((0, getattr(model.config, "num_labels", 0))), np.zeros((0, width))
    return np.concatenate(logits), np.concatenate(features)


class DistanceScorer:
    """Squared Mahalanobis distance to the nearest class mean, one shared (shrunk) covariance."""

    def __init__(self, means: np.ndarray, precision: np.ndarray):
        self.means = np.asarray(means, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)
        self._means_term = ((self.means @ self.precision) * self.means).sum(1)  # m'Pm of every class mean

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int, shrinkage: float = SHRINKAGE):
        features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
        keep = labels >= 0
        features, labels = features[keep], labels[keep]
        if len(features) < 2:
            raise ValueError("at least two in-scope training rows are needed to fit the distance score")
        means = np.zeros((num_classes, features.shape[1]))
        for c in range(num_classes):
            rows = features[labels == c]
            means[c] = rows.mean(0) if len(rows) else features.mean(0)
        centred = features - means[labels]
        covariance = centred.T @ centred / len(centred)
        average = np.trace(covariance) / len(covariance)
        covariance = (1 - shrinkage) * covariance + shrinkage * average * np.eye(len(covariance))
        return cls(means, np.linalg.inv(covariance))

    def score(self, features: np.ndarray) -> np.ndarray:
        """[N] distances (higher: further from every intent's training messages)."""
        features = np.asarray(features, dtype=np.float64)
        if not len(features):
            return np.zeros(0)
        # (x - m)' P (x - m) = x'Px - 2 x'Pm + m'Pm for every class mean m at once (P is symmetric)
        projected = features @ self.precision
        own = (projected * features).sum(1, keepdims=True)
        return np.maximum(own - 2 * projected @ self.means.T + self._means_term, 0.0).min(1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"means": self.means.astype(np.float32), "precision": self.precision.astype(np.float32)}

    def save(self, folder: Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(folder) / STATS_FILE
        save_file(self.to_arrays(), str(path))
        return path

    @classmethod
    def load(cls, folder: Path) -> DistanceScorer | None:
        """The scorer saved in `folder`, or None when it has none (a model trained before distances existed)."""
        path = Path(folder) / STATS_FILE
        if not path.is_file():
            return None
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
        return cls(arrays["means"], arrays["precision"])


def calibrate_distance(distances: np.ndarray, correct: np.ndarray, accepted: np.ndarray, inside: np.ndarray
                       ) -> tuple[float, str]:
    """The distance threshold, from validation: among thresholds that reject at most 1 % of the correct in-scope
    answers the confidence threshold accepts, the one with the best balanced score (in-scope answers kept correct,
    out-of-scope messages refused by either test); with no out-of-scope validation rows, the 99th percentile of the
    correct answers' distances. Returns (threshold, how it was chosen)."""
    good = distances[inside & correct & accepted]
    if not len(good):
        return float("inf"), "no correct in-scope validation answers: distance not used"
    if not (~inside).any():
        return float(np.quantile(good, 0.99)), "99th percentile of correct in-scope validation answers"
    best, threshold = -1.0, float("inf")
    for q in np.linspace(1.0 - MAX_REFUSED_BY_DISTANCE, 1.0, 11):
        t = float(np.quantile(good, q))
        keep = accepted & (distances <= t)
        in_ok = (keep & correct)[inside].mean()
        oos_ok = (~keep)[~inside].mean()
        score = 0.5 * (in_ok + oos_ok)
        if score > best:
            best, threshold = score, t
    above = distances[inside & correct & accepted & (distances > threshold)]
    if len(above):  # half-way to the next correct answer's distance, not on a validation point
        threshold = float((threshold + above.min()) / 2)
    return threshold, f"validation balanced score {best:.3f} with the confidence threshold"
