"""The pieces a run is assembled from: the Accelerator, the loss, the optimizer, seeding and batch prediction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    set_seed,
)

from fmhub.config import TrainConfig

HEAD_KEYWORDS = ("classifier", "projector", "head.fc", "fc.")  # projector: transformers audio heads


def make_accelerator(config: TrainConfig, output_dir: Path | None) -> Accelerator:
    """One Accelerator per run; trackers only where there is a folder to write to."""
    # `accelerate launch --mixed_precision bf16` (or a launch config file's mixed_precision) applies when fmhub's own
    # --mixed-precision is left at "no"; the config saved with the run then says what ran
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if config.mixed_precision == "no" and launched in ("fp16", "bf16"):
        config.mixed_precision = launched
    log_with = resolve_report_to(config.report_to) if output_dir else None
    project = None
    if output_dir:
        project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs"))
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=log_with,
        project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        # a backbone frozen for the first epochs gets no gradients, which DDP must be told to expect
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.freeze_backbone_epochs > 0)],
        cpu=not torch.cuda.is_available(),
    )


def resolve_report_to(report_to: str) -> list[str] | None:
    if report_to == "none":
        return None
    if report_to == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return ["tensorboard"]
    return [report_to]


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy on labelled rows; rows labelled -1 (outliers) are pushed towards the uniform distribution."""
    logits = logits.float()
    inside = labels >= 0
    loss = logits.new_zeros(())
    if inside.any():
        weight = class_weights.to(logits.device) if class_weights is not None else None
        loss = loss + F.cross_entropy(logits[inside], labels[inside], weight=weight, label_smoothing=label_smoothing)
    if (~inside).any():
        loss = loss - 0.5 * F.log_softmax(logits[~inside], dim=-1).mean()
    return loss


def inverse_frequency_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """`--class-weights auto`: weight_c = N / (C * count_c), so a balanced set gets all ones."""
    counts = np.bincount([y for y in labels if y >= 0], minlength=num_classes).astype(np.float64)
    if not counts.sum():
        return torch.ones(num_classes)
    # a class absent from training never is a target, so its weight never counts; 1 keeps it finite
    return torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1.0)), dtype=torch.float32)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on biases and norms; an optional separate learning rate for the new head."""
    head_lr = config.head_learning_rate or config.learning_rate
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if param.ndim < 2 else config.weight_decay
        lr = head_lr if any(k in name for k in HEAD_KEYWORDS) else config.learning_rate
        groups.setdefault((lr, decay), []).append(param)
    params = [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum)
    return torch.optim.AdamW(params, lr=config.learning_rate)


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def logits_of(outputs) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") else outputs.logits


@torch.no_grad()
def predict_probs(
    model, dataloader, accelerator: Accelerator, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels for a whole (prepared) dataloader, gathered once across processes."""
    model.eval()
    all_probs, all_labels = [], []
    for batch in dataloader:
        logits = logits_of(model(**model_inputs(batch))).float() / temperature
        probs, labels = accelerator.gather_for_metrics((logits.softmax(-1), batch["labels"]))
        all_probs.append(probs.cpu().numpy())
        all_labels.append(labels.cpu().numpy())
    return np.concatenate(all_probs), np.concatenate(all_labels)


def seed_everything(seed: int) -> None:
    set_seed(seed, deterministic=False)
