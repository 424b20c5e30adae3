"""Classification metrics through `evaluate`, loaded from modules shipped in this package (works with no network)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import evaluate
import numpy as np

MODULES = Path(__file__).parent / "modules"


@functools.cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """`evaluate.load` on the local module file: the same code path as a Hub metric, without the Hub."""
    return evaluate.load(str(MODULES / f"{name}.py"))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> tuple[float, dict]:
    """ECE over equal-width confidence bins; also returns the bins for a reliability diagram."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, bins = 0.0, {"confidence": [], "accuracy": [], "count": [], "edges": edges.tolist()}
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        count = int(in_bin.sum())
        bins["count"].append(count)
        bins["confidence"].append(float(confidence[in_bin].mean()) if count else None)
        bins["accuracy"].append(float(correct[in_bin].mean()) if count else None)
        if count:
            ece += abs(confidence[in_bin].mean() - correct[in_bin].mean()) * count / len(labels)
    return float(ece), bins


def compute_classification_metrics(labels: np.ndarray, probs: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1, ROC-AUC, per-class sensitivity/specificity/F1, confusion matrix, ECE.

    `labels`: int class ids [N]; `probs`: class probabilities [N, C].
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(axis=1)
    ids = list(range(len(label_names)))
    args = {"predictions": preds.tolist(), "references": labels.tolist()}
    results = {
        "accuracy": load_metric("accuracy").compute(**args)["accuracy"],
        "macro_f1": load_metric("f1").compute(**args, labels=ids, average="macro")["f1"],
        "macro_precision": load_metric("precision").compute(**args, labels=ids, average="macro")["precision"],
        "macro_recall": load_metric("recall").compute(**args, labels=ids, average="macro")["recall"],
        "num_examples": int(len(labels)),
    }
    results["roc_auc"] = _roc_auc(labels, probs, ids)
    per_f1 = load_metric("f1").compute(**args, labels=ids, average=None)["f1"]
    per_precision = load_metric("precision").compute(**args, labels=ids, average=None)["precision"]
    per_recall = load_metric("recall").compute(**args, labels=ids, average=None)["recall"]
    matrix = np.zeros((len(ids), len(ids)), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    per_class = {}
    for i, name in enumerate(label_names):
        negatives = matrix.sum() - matrix[i].sum()
        true_negatives = negatives - (matrix[:, i].sum() - matrix[i, i])
        per_class[name] = {
            "precision": per_precision[i],
            "recall": per_recall[i],
            "sensitivity": per_recall[i],
            "specificity": float(true_negatives / negatives) if negatives else None,
            "f1": per_f1[i],
            "support": int(matrix[i].sum()),
        }
    results["per_class"] = per_class
    results["confusion_matrix"] = matrix.tolist()
    results["label_names"] = list(label_names)
    results["ece"], results["calibration_bins"] = expected_calibration_error(probs, labels)
    return results


def _roc_auc(labels: np.ndarray, probs: np.ndarray, ids: list[int]) -> float | None:
    present = np.unique(labels)
    if len(present) < 2:
        return None  # undefined with a single class present
    metric = load_metric("roc_auc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(ids) == 2:
            return metric.compute(prediction_scores=probs[:, 1].tolist(), references=labels.tolist())["roc_auc"]
        if len(present) < len(ids):
            # one-vs-rest over the classes that occur; rows renormalised so sklearn accepts them
            sub = probs[:, present]
            sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
            remap = {c: i for i, c in enumerate(present)}
            refs = [remap[c] for c in labels]
            return metric.compute(prediction_scores=sub.tolist(), references=refs)["roc_auc"]
        return metric.compute(prediction_scores=probs.tolist(), references=labels.tolist(), labels=ids)["roc_auc"]


HEADLINE = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "roc_auc", "ece")


def headline(results: dict) -> dict:
    """The scalar metrics worth printing on one line."""
    return {k: results[k] for k in HEADLINE if results.get(k) is not None}
