"""The one training loop, for text, image and audio alike, on Hugging Face Accelerate.

Contract: a batch is a dict of tensors with a `labels` entry; the model is called with the other entries and returns
a mapping (or ModelOutput) holding `logits`. The loss is computed here, so class weights, label smoothing and
outlier exposure (label -1: "none of these classes", trained towards a uniform distribution) work for every modality.

Loop order follows Accelerate's examples: Accelerator -> set_seed -> dataloaders -> optimizer -> scheduler -> prepare
-> accumulate/backward -> evaluate with gather_for_metrics -> end_training.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from fmhub import checkpoints
from fmhub.config import TrainConfig
from fmhub.errors import FmhubError, TrainingDiverged
from fmhub.training.loaders import EpochSeededDataset, build_dataloader, preserved_rng_state
from fmhub.training.setup import build_optimizer, classification_loss, logits_of, model_inputs, predict_probs

ProgressCallback = Callable[[float, str], None]
# settings a resumed run must share with the checkpoint's run (besides the data order and the data itself)
SCHEDULE = (
    "epochs", "max_steps", "learning_rate", "head_learning_rate", "weight_decay", "optimizer", "momentum", "scheduler",
    "warmup_ratio", "max_grad_norm", "label_smoothing", "class_weights", "mixed_precision", "pretrained",
    "freeze_backbone_epochs", "freeze_embeddings", "freeze_layers", "early_stopping_patience", "metric_for_best_model",
    "target_metric", "max_length", "image_size", "augment",
)


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


class Engine:
    """Runs `config.epochs` of training with evaluation, early stopping, checkpoints and fault guards.

    `compute_metrics(labels, probs) -> dict` scores a validation pass; `config.metric_for_best_model` selects.

    Everything that decides the final weights lives in `self.state` (a JSON-able dict saved in every checkpoint's
    manifest), in Accelerate's state (model, optimizer, scheduler, RNG, accumulation counter) or in the best weights
    kept inside the checkpoint, so a resumed run ends where an uninterrupted one ends.
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
        self.class_weights, self.progress, self.fault_hook = class_weights, progress, fault_hook
        # what must match for a checkpoint's data position to mean the same thing in this run, and the schedule and
        # settings that decide the weights: a resume with other data, epochs or learning rate is refused, not mixed in
        self.run_identity = {
            **(run_identity or {}),
            "seed": config.seed,
            "batch_size": config.batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "group_by_length": config.group_by_length,
            "num_processes": accelerator.num_processes,
            "train_examples": len(train_dataset),
            **{name: getattr(config, name) for name in SCHEDULE},
        }
        self.train_dataset = EpochSeededDataset(train_dataset, config.seed)
        train_dl = build_dataloader(self.train_dataset, config, collate_fn, train=True)
        eval_dl = build_dataloader(eval_dataset, config, collate_fn, train=False)
        optimizer = build_optimizer(model, config)
        # steps are counted after prepare(): each process sees its shard of the data
        prepared = accelerator.prepare(model, optimizer, train_dl, eval_dl)
        self.model, self.optimizer, self.train_dl, self.eval_dl = prepared
        self.steps_per_epoch = math.ceil(len(self.train_dl) / config.gradient_accumulation_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        # a prepared scheduler steps once per process on every optimizer step (Accelerate assumes the step counts
        # were computed for one process), so its horizon is scaled the same way, as in transformers' examples
        scale = accelerator.num_processes
        scheduler = get_scheduler(
            "constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
            self.optimizer,
            num_warmup_steps=int(config.warmup_ratio * self.total_steps) * scale,
            num_training_steps=self.total_steps * scale,
        )
        self.scheduler = accelerator.prepare(scheduler)
        self.state = {
            "global_step": 0,
            "epoch": 0,
            "batches_in_epoch": 0,
            "best_metric": None,
            "best_step": 0,
            "bad_epochs": 0,
            "history": [],
            "skipped_batches": 0,
            "stopped_early": False,
        }
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._window_batches = 0  # batches whose gradients are in the current accumulation window

    # -- the loop -------------------------------------------------------------------------------------------------
    def train(self) -> TrainingResult:
        acc = self.accelerator
        start = time.perf_counter()
        self._maybe_resume()
        if acc.log_with:
            with preserved_rng_state():  # here after a resume, before training in a fresh run: must not differ
                acc.init_trackers("fmhub", config={k: v for k, v in self.config.to_dict().items() if v is not None})
        bar = tqdm(
            total=self.total_steps,
            initial=self.state["global_step"],
            desc="training",
            disable=not acc.is_local_main_process or os.environ.get("TQDM_DISABLE", "") not in ("", "0"),
            unit="step",
            dynamic_ncols=True,
        )
        try:
            self._run_epochs(bar)
        except torch.OutOfMemoryError:
            raise FmhubError(self._out_of_memory_message()) from None
        finally:
            bar.close()
        self._restore_best()
        for tracker in acc.trackers:  # not end_training(): that also ends the process group the runner still needs
            tracker.finish()
        s = self.state
        return TrainingResult(
            s["best_metric"],
            s["best_step"],
            s["global_step"],
            s["global_step"] / max(self.steps_per_epoch, 1),
            s["stopped_early"],
            s["skipped_batches"],
            time.perf_counter() - start,
            s["history"],
        )

    def _run_epochs(self, bar) -> None:
        config, state = self.config, self.state
        while not state["stopped_early"] and state["epoch"] < config.epochs and not self._finished():
            self._set_trainable(state["epoch"])
            self.train_one_epoch(bar)
            epoch_done = state["batches_in_epoch"] >= len(self.train_dl)  # else max_steps was reached mid-epoch
            if epoch_done:
                state["epoch"] += 1
                state["batches_in_epoch"] = 0
            improved = self.evaluate_and_track()
            # decided before saving, so a run resumed from this checkpoint stops exactly where this one does
            if epoch_done and self._should_stop(improved):
                state["stopped_early"] = True
            self._save_checkpoint()

    def train_one_epoch(self, bar) -> None:
        config, acc, state = self.config, self.accelerator, self.state
        self.model.train()
        self._seed_epoch(state["epoch"])
        loader = self.train_dl
        if state["batches_in_epoch"]:
            loader = acc.skip_first_batches(self.train_dl, state["batches_in_epoch"])
            # the new loader starts counting epochs at 0 and passes that to its sampler when iterated: give it ours
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(state["epoch"])
        losses: list[float] = []
        for batch in loader:
            state["batches_in_epoch"] += 1  # counted even when skipped: the position in the epoch stays exact
            with acc.accumulate(self.model):
                loss = self._forward_backward(batch)
                losses = [] if loss is None else [*losses, loss]  # a skipped batch also drops its window's gradients
                stepped = acc.sync_gradients and self._optimizer_step()
            if not acc.sync_gradients:
                continue
            if not stepped:
                losses = []
                continue
            state["global_step"] += 1
            bar.update(1)
            record = {
                "step": state["global_step"],
                "train_loss": sum(losses) / len(losses),
                "learning_rate": self.scheduler.get_last_lr()[0],
            }
            losses = []
            state["history"].append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}")
            if acc.log_with:
                acc.log(
                    {"train/loss": record["train_loss"], "train/learning_rate": record["learning_rate"]},
                    step=state["global_step"],
                )
            if self.progress:
                self.progress(state["global_step"] / self.total_steps, "training")
            if self._finished():
                return
            every = config.checkpoint_every_steps
            # the epoch's last step is saved by the epoch-end checkpoint, after validation
            if every and state["global_step"] % every == 0 and state["batches_in_epoch"] < len(self.train_dl):
                self._save_checkpoint()

    def _forward_backward(self, batch: dict) -> float | None:
        """Loss and backward for one batch; None when the batch was skipped (`--nan-policy skip`)."""
        logits = logits_of(self.model(**model_inputs(batch)))
        loss = classification_loss(logits, batch["labels"], self.class_weights, self.config.label_smoothing)
        if self.fault_hook is not None:
            loss = self.fault_hook(self.state["global_step"] + 1, loss)
        if not self._finite_or_skip(loss, "loss", collective=True):
            return None
        self.accelerator.backward(loss)
        self._window_batches += 1
        return loss.item()

    def _optimizer_step(self) -> bool:
        """Clip, check and apply the accumulated gradients; False when there was nothing (finite) to apply."""
        acc = self.accelerator
        if not self._window_batches:  # every batch of the window was skipped
            return False
        self._window_batches = 0
        norm = acc.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm or float("inf"))
        # under fp16 the GradScaler skips steps with inf gradients and lowers its scale: that is not divergence.
        # Gradients are already reduced across processes, so every process reaches the same verdict.
        if norm is not None and acc.scaler is None and not self._finite_or_skip(norm, "gradient norm"):
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return True

    def evaluate_and_track(self) -> bool:
        """Validation metrics; returns whether the selection metric improved (then the weights are kept as best)."""
        # evaluation must not move the training's random streams: libraries that draw from them on first use
        # (metric modules loading, ...) do so in the epoch a process first evaluates, which differs after a resume
        with preserved_rng_state():
            probs, labels = predict_probs(self.model, self.eval_dl, self.accelerator)
            metrics = self.compute_metrics(labels, probs)
        name = self.config.metric_for_best_model
        if name not in metrics:
            raise FmhubError(f"--metric-for-best-model {name!r} is not computed; choose one of {', '.join(metrics)}")
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        state = self.state
        state["history"].append({"step": state["global_step"], "epoch": state["epoch"], **scalars})
        if self.accelerator.log_with:
            self.accelerator.log({f"eval/{k}": v for k, v in scalars.items()}, step=state["global_step"])
        value = scalars[name]
        improved = state["best_metric"] is None or value > state["best_metric"]
        if improved:
            state["best_metric"], state["best_step"], state["bad_epochs"] = value, state["global_step"], 0
            weights = self.accelerator.get_state_dict(self.model)  # full weights on every process, also under FSDP
            self._best_weights = {k: v.detach().cpu().clone() for k, v in weights.items()}
            checkpoints.check_finite(self._best_weights, f"the best weights at step {state['global_step']}")
            if self.output_dir and self.accelerator.is_main_process:
                checkpoints.save_best_weights(self.output_dir, self._best_weights)
        else:
            state["bad_epochs"] += 1
        self.accelerator.print(
            f"epoch {state['epoch']}: " + ", ".join(f"{k}={v:.4f}" for k, v in scalars.items() if k != "num_examples")
        )
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

    def _seed_epoch(self, epoch: int) -> None:
        """Data order, augmentation and worker seeds of epoch e depend only on (seed, e): resumable."""
        self.train_dl.set_epoch(epoch)
        self.train_dataset.set_epoch(epoch)
        generator = getattr(self.train_dl, "generator", None)
        if generator is not None:
            generator.manual_seed(self.config.seed + epoch)

    def _finite_or_skip(self, value: torch.Tensor, what: str, collective: bool = False) -> bool:
        """True when `value` is finite. Otherwise skip the batch (counted) or stop, as `--nan-policy` says.

        `collective`: agree across processes (a NaN loss on one of them skips or stops every one, so none waits
        forever in the next gradient all-reduce).
        """
        if hasattr(value, "full_tensor"):  # a DTensor (FSDP2's gradient norm)
            value = value.full_tensor()
        value = torch.as_tensor(value).detach()  # DeepSpeed reports the norm as a float
        bad = (~torch.isfinite(value)).any().float().reshape(1)
        if collective and self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if not bad.item():
            return True
        step = self.state["global_step"] + 1
        shown = value.item() if value.numel() == 1 else "not finite"
        if torch.isfinite(value).all():
            shown = "not finite on another process"
        if self.config.nan_policy == "skip":
            self._discard_window()
            self.state["skipped_batches"] += 1
            self.accelerator.print(
                f"warning: the {what} is {shown} at step {step}; batch skipped "
                f"({self.state['skipped_batches']} so far)"
            )
            return False
        raise TrainingDiverged(
            f"training stopped: the {what} became {shown} at step {step}. Nothing after step {step - 1} "
            "was saved. Try a lower --learning-rate, --mixed-precision no, or --nan-policy skip."
        )

    def _discard_window(self) -> None:
        """Drop the gradients accumulated since the last optimizer step (the accelerated optimizer's zero_grad is
        a no-op in the middle of an accumulation window)."""
        self._unwrapped().zero_grad(set_to_none=True)
        self._window_batches = 0

    def _out_of_memory_message(self) -> str:
        config = self.config
        smaller = max(1, config.batch_size // 2)
        return (
            f"out of memory at step {self.state['global_step'] + 1} with --batch-size {config.batch_size} per "
            f"process. Try --batch-size {smaller} --gradient-accumulation-steps "
            f"{config.gradient_accumulation_steps * config.batch_size // smaller} (the same effective batch), "
            "--mixed-precision bf16, or a shorter --max-length / smaller --image-size"
        )

    def _restore_best(self) -> None:
        if self._best_weights is not None and self.accelerator.is_fsdp2:
            # sharded parameters: Accelerate gathered the full weights on the main process; scatter them back
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(self.model, self._best_weights, options=options)
        elif self._best_weights is not None:
            self._unwrapped().load_state_dict(self._best_weights)
        # the weights the runner is about to test, save and maybe push
        checkpoints.check_finite(self._unwrapped().state_dict(), "the final weights")

    def _save_checkpoint(self) -> None:
        if self.output_dir is None:
            return
        best = self.output_dir / checkpoints.BEST if self._best_weights is not None else None
        checkpoints.save(
            self.accelerator,
            self._unwrapped(),
            self.output_dir,
            self.state,
            self.run_identity,
            self.config.save_total_limit,
            best_file=best,
        )

    def _maybe_resume(self) -> None:
        config = self.config
        if not (config.resume or config.resume_from):
            return
        path = Path(config.resume_from) if config.resume_from else checkpoints.latest(self.output_dir)
        if path is None:
            raise FmhubError(f"--resume: no complete checkpoint in {self.output_dir}; start without --resume")
        state, self._best_weights = checkpoints.load(self.accelerator, path, self.run_identity)
        self.state = {**self.state, **state}
        if self.output_dir and self.accelerator.is_main_process:
            checkpoints.restore_best_weights(path, self.output_dir)
        self._window_batches = 0
        self.accelerator.print(
            f"resumed from {path} (step {self.state['global_step']}, epoch {self.state['epoch']}, "
            f"batch {self.state['batches_in_epoch']} of {len(self.train_dl)})"
        )


