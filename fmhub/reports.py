"""Evaluation artefacts on disk: all_results.json, a per-class report, confusion-matrix, reliability and curve PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable))


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def per_class_report(results: dict) -> str:
    """A plain-text table like scikit-learn's classification report, plus sensitivity/specificity."""
    rows = [f"{'class':<24}{'precision':>10}{'recall':>10}{'specif.':>10}{'f1':>10}{'support':>9}"]
    for name, m in results["per_class"].items():
        spec = "-" if m["specificity"] is None else f"{m['specificity']:.3f}"
        rows.append(
            f"{name:<24}{m['precision']:>10.3f}{m['recall']:>10.3f}{spec:>10}{m['f1']:>10.3f}{m['support']:>9}"
        )
    rows.append("")
    for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "roc_auc", "ece"):
        if results.get(key) is not None:
            rows.append(f"{key:<24}{results[key]:>10.4f}")
    return "\n".join(rows) + "\n"


def plot_confusion_matrix(results: dict, path: Path, title: str = "Confusion matrix (test)") -> None:
    matrix = np.asarray(results["confusion_matrix"])
    names = results["label_names"]
    size = max(4.5, 0.55 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    row_sums = matrix.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(matrix / row_sums, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                colour = "white" if matrix[i, j] / row_sums[i, 0] > 0.6 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(results: dict, path: Path) -> None:
    bins = results["calibration_bins"]
    edges = np.asarray(bins["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    acc = [a if a is not None else 0.0 for a in bins["accuracy"]]
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.bar(centres, acc, width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {results['ece']:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_curves(history: list[dict], path: Path, metric: str) -> None:
    """Loss, validation metric and learning rate against the optimizer step."""
    steps = [h["step"] for h in history if "train_loss" in h]
    if not steps:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [h["train_loss"] for h in history if "train_loss" in h])
    axes[0].set_title("training loss")
    evals = [h for h in history if metric in h]
    axes[1].plot([h["step"] for h in evals], [h[metric] for h in evals], marker="o")
    axes[1].set_title(f"validation {metric}")
    axes[2].plot(steps, [h["learning_rate"] for h in history if "train_loss" in h])
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_evaluation(results: dict, folder: Path, prefix: str = "") -> None:
    """all_results.json + classification_report.txt + confusion_matrix.png + reliability_diagram.png."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{prefix}all_results.json", results)
    (folder / f"{prefix}classification_report.txt").write_text(per_class_report(results))
    plot_confusion_matrix(results, folder / f"{prefix}confusion_matrix.png")
    plot_reliability(results, folder / f"{prefix}reliability_diagram.png")
