"""The one training loop, for text, image and audio alike, on Hugging Face Accelerate.

Contract: a batch is a dict of tensors with a `labels` entry; the model is called with the other entries and returns
a mapping (or ModelOutput) holding `logits`. The loss is computed here, so class weights, label smoothing and
outlier exposure (label -1: "none of these classes", trained towards a uniform distribution) work for every modality.

Loop order follows Accelerate's examples: Accelerator -> set_seed -> dataloaders -> optimizer -> scheduler -> prepare
-> accumulate/backward -> evaluate with gather_for_metrics -> end_training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from fmhub import checkpoints
from fmhub.config import TrainConfig
from fmhub.errors import FmhubError, TrainingDiverged

HEAD_KEYWORDS = ("classifier", "head.fc", "fc.")
ProgressCallback = Callable[[float, str], None]


@dataclass
class TrainingResult:
    best_metric: float | None
    best_step: int
    steps: int
    epochs_run: float
    stopped_early: bool
    skipped_batches: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def make_accelerator(config: TrainConfig, output_dir: Path | None) -> Accelerator:
    """One Accelerator per run; trackers only where there is a folder to write to."""
    log_with = resolve_report_to(config.report_to) if output_dir else None
    project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")) if output_dir else None
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=log_with,
        project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
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
    counts[counts == 0] = 1.0
    return torch.tensor(counts.sum() / (num_classes * counts), dtype=torch.float32)


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


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def build_dataloader(dataset, config: TrainConfig, collate_fn, train: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size if train else config.eval_batch_size,
        shuffle=train,
        collate_fn=collate_fn,
        num_workers=config.num_workers,
        worker_init_fn=_seed_worker if config.num_workers else None,
        generator=torch.Generator().manual_seed(config.seed) if train else None,
    )


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _logits(outputs) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") else outputs.logits


@torch.no_grad()
def predict_probs(model, dataloader, accelerator: Accelerator, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels for a whole (prepared) dataloader, gathered once across processes."""
    model.eval()
    all_probs, all_labels = [], []
    for batch in dataloader:
        logits = _logits(model(**model_inputs(batch))).float() / temperature
        probs, labels = accelerator.gather_for_metrics((logits.softmax(-1), batch["labels"]))
        all_probs.append(probs.cpu().numpy())
        all_labels.append(labels.cpu().numpy())
    return np.concatenate(all_probs), np.concatenate(all_labels)


class Engine:
    """Runs `config.epochs` of training with evaluation, early stopping, checkpoints and fault guards.

    `compute_metrics(labels, probs) -> dict` scores a validation pass; `config.metric_for_best_model` selects.
    """

    def __init__(
        self,
        config: TrainConfig,
        accelerator: Accelerator,
        model: torch.nn.Module,
        train_dataset,
        eval_dataset,
        collate_fn,
        compute_metrics: Callable[[np.ndarray, np.ndarray], dict],
        *,
        output_dir: Path | None = None,
        run_identity: dict | None = None,
        class_weights: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        fault_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ):
        self.config, self.accelerator = config, accelerator
        self.compute_metrics, self.output_dir = compute_metrics, output_dir
        self.run_identity = run_identity or {}
        self.class_weights, self.progress, self.fault_hook = class_weights, progress, fault_hook
        train_dl = build_dataloader(train_dataset, config, collate_fn, train=True)
        eval_dl = build_dataloader(eval_dataset, config, collate_fn, train=False)
        optimizer = build_optimizer(model, config)
        # steps are counted after prepare(): each process sees its shard of the data
        self.model, self.optimizer, self.train_dl, self.eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)
        self.steps_per_epoch = math.ceil(len(self.train_dl) / config.gradient_accumulation_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        scheduler = get_scheduler(
            "constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
            self.optimizer,
            num_warmup_steps=int(config.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.scheduler = accelerator.prepare(scheduler)
        self.state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "best_metric": None, "best_step": 0,
                      "bad_epochs": 0, "history": [], "skipped_batches": 0, "stopped_early": False}

    # -- the loop -------------------------------------------------------------------------------------------------
    def train(self) -> TrainingResult:
        config, acc = self.config, self.accelerator
        start = time.perf_counter()
        self._maybe_resume()
        if acc.trackers:
            acc.init_trackers("fmhub", config={k: v for k, v in config.to_dict().items() if v is not None})
        bar = tqdm(total=self.total_steps, initial=self.state["global_step"], desc="training",
                   disable=not acc.is_local_main_process, unit="step", dynamic_ncols=True)
        while self.state["epoch"] < config.epochs and not self._finished():
            self._set_trainable(self.state["epoch"])
            self.train_one_epoch(bar)
            if self.state["batches_in_epoch"] < len(self.train_dl):
                self.evaluate_and_track()  # max_steps reached mid-epoch
                break
            self.state["epoch"] += 1
            self.state["batches_in_epoch"] = 0
            improved = self.evaluate_and_track()
            self._save_checkpoint()
            if self._should_stop(improved):
                self.state["stopped_early"] = True
                break
        bar.close()
        self._restore_best()
        acc.end_training()
        s = self.state
        return TrainingResult(s["best_metric"], s["best_step"], s["global_step"],
                              s["global_step"] / max(self.steps_per_epoch, 1), s["stopped_early"],
                              s["skipped_batches"], time.perf_counter() - start, s["history"])

    def train_one_epoch(self, bar) -> None:
        config, acc, state = self.config, self.accelerator, self.state
        self.model.train()
        if hasattr(self.train_dl, "set_epoch"):
            self.train_dl.set_epoch(state["epoch"])
        loader = self.train_dl
        if state["batches_in_epoch"]:
            loader = acc.skip_first_batches(self.train_dl, state["batches_in_epoch"])
        running, seen = 0.0, 0
        for batch in loader:
            with acc.accumulate(self.model):
                logits = _logits(self.model(**model_inputs(batch)))
                loss = classification_loss(logits, batch["labels"], self.class_weights, config.label_smoothing)
                if self.fault_hook is not None:
                    loss = self.fault_hook(state["global_step"] + 1, loss)
                if not self._finite_or_skip(loss, "loss"):
                    continue
                acc.backward(loss)
                if acc.sync_gradients:
                    norm = acc.clip_grad_norm_(self.model.parameters(), config.max_grad_norm or float("inf"))
                    if not self._finite_or_skip(norm, "gradient norm"):
                        continue
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            state["batches_in_epoch"] += 1
            running += loss.item()
            seen += 1
            if acc.sync_gradients:
                state["global_step"] += 1
                bar.update(1)
                record = {"step": state["global_step"], "train_loss": running / seen,
                          "learning_rate": self.scheduler.get_last_lr()[0]}
                state["history"].append(record)
                running, seen = 0.0, 0
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
                if acc.trackers:
                    acc.log({"train/loss": record["train_loss"], "train/learning_rate": record["learning_rate"]},
                            step=state["global_step"])
                if self.progress:
                    self.progress(state["global_step"] / self.total_steps, "training")
                every = config.checkpoint_every_steps
                if every and state["global_step"] % every == 0:
                    self._save_checkpoint()
                if self._finished():
                    return

    def evaluate_and_track(self) -> bool:
        """Validation metrics after an epoch; returns whether the selection metric improved."""
        probs, labels = predict_probs(self.model, self.eval_dl, self.accelerator)
        metrics = self.compute_metrics(labels, probs)
        name = self.config.metric_for_best_model
        if name not in metrics:
            raise FmhubError(f"--metric-for-best-model {name!r} is not computed; choose one of {', '.join(metrics)}")
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        state = self.state
        state["history"].append({"step": state["global_step"], "epoch": state["epoch"], **scalars})
        if self.accelerator.trackers:
            self.accelerator.log({f"eval/{k}": v for k, v in scalars.items()}, step=state["global_step"])
        value = scalars[name]
        improved = state["best_metric"] is None or value > state["best_metric"]
        if improved:
            state["best_metric"], state["best_step"], state["bad_epochs"] = value, state["global_step"], 0
            self._best_weights = {k: v.detach().cpu().clone() for k, v in self._unwrapped().state_dict().items()}
            if self.output_dir and self.accelerator.is_main_process:
                checkpoints.save_best_weights(self.output_dir, self._best_weights)
        else:
            state["bad_epochs"] += 1
        self.accelerator.print(f"epoch {state['epoch']}: " + ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()
                                                                      if k != "num_examples"))
        return improved

    # -- helpers --------------------------------------------------------------------------------------------------
    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _finished(self) -> bool:
        return self.state["global_step"] >= self.total_steps

    def _should_stop(self, improved: bool) -> bool:
        config, state = self.config, self.state
        if config.target_metric is not None and state["best_metric"] is not None:
            if state["best_metric"] >= config.target_metric:
                return True
        return bool(config.early_stopping_patience) and state["bad_epochs"] >= config.early_stopping_patience

    def _set_trainable(self, epoch: int) -> None:
        model = self._unwrapped()
        if self.config.freeze_backbone_epochs and hasattr(model, "freeze_backbone"):
            model.freeze_backbone(epoch < self.config.freeze_backbone_epochs)

    def _finite_or_skip(self, value: torch.Tensor, what: str) -> bool:
        if torch.isfinite(value).all():
            return True
        step = self.state["global_step"] + 1
        if self.config.nan_policy == "skip":
            self.optimizer.zero_grad()
            self.state["skipped_batches"] += 1
            self.accelerator.print(f"warning: {what} is {value.item()} at step {step}; batch skipped")
            return False
        raise TrainingDiverged(
            f"training stopped: the {what} became {value.item()} at step {step}. Nothing after step {step - 1} "
            "was saved. Try a lower --learning-rate, --mixed-precision no, or --nan-policy skip."
        )

    def _restore_best(self) -> None:
        best = getattr(self, "_best_weights", None)
        if best is None and self.output_dir:
            best = checkpoints.load_best_weights(self.output_dir)
        if best is not None:
            self._unwrapped().load_state_dict(best)

    def _save_checkpoint(self) -> None:
        if self.output_dir is None:
            return
        checkpoints.save(self.accelerator, self._unwrapped(), self.output_dir, self.state, self.run_identity, self.config.save_total_limit)

    def _maybe_resume(self) -> None:
        config = self.config
        if not (config.resume or config.resume_from):
            return
        path = Path(config.resume_from) if config.resume_from else checkpoints.latest(self.output_dir)
        if path is None:
            raise FmhubError(f"--resume: no complete checkpoint in {self.output_dir}; start without --resume")
        self.state = checkpoints.load(self.accelerator, path, self.run_identity)
        best = checkpoints.load_best_weights(self.output_dir) if self.output_dir else None
        if best is not None:
            self._best_weights = best
        self.accelerator.print(f"resumed from {path} (step {self.state['global_step']}, epoch {self.state['epoch']})")


def seed_everything(seed: int) -> None:
    set_seed(seed, deterministic=False)
