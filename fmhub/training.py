"""The one training loop, for text, image and audio alike, on Hugging Face Accelerate.

Contract: a batch is a dict of tensors with a `labels` entry; the model is called with the other entries and returns
a mapping (or ModelOutput) holding `logits`. The loss is computed here, so class weights, label smoothing and
outlier exposure (label -1: "none of these classes", trained towards a uniform distribution) work for every modality.

Loop order follows Accelerate's examples: Accelerator -> set_seed -> dataloaders -> optimizer -> scheduler -> prepare
-> accumulate/backward -> evaluate with gather_for_metrics -> end_training.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
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


def _seed_worker(worker_id: int) -> None:
    """Each worker's numpy/random streams follow its torch seed (the loader's per-epoch base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def preserved_rng_state():
    """Run a block without moving the global CPU random streams (random, numpy, torch) that training draws from."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class EpochSeededDataset(torch.utils.data.Dataset):
    """Item i of epoch e is made with random, numpy and torch (CPU) seeded from (seed, e, i).

    So training-time augmentation that draws from the global generators gives the same item whatever ran before it,
    whichever worker loads it, however far the loader has prefetched, and after a resume mid-epoch. The random and
    torch streams are put back afterwards (dropout draws from torch's); numpy's is not (saving it costs more than
    making the item, and nothing in the loop draws from it), so it too only depends on the last item made.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item_seed = zlib.crc32(f"{self.seed}:{self.epoch}:{index}".encode())
        python_state, torch_state = random.getstate(), torch.get_rng_state()
        random.seed(item_seed)
        np.random.seed(item_seed)
        torch.random.default_generator.manual_seed(item_seed)  # CPU only: the GPU's dropout stream stays
        try:
            return self.dataset[index]
        finally:
            random.setstate(python_state)
            torch.set_rng_state(torch_state)


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of similar-length examples, so dynamic padding pads little.

    Each epoch: a permutation drawn from (seed, epoch), cut into windows of `window` batches; each window sorted by
    length and cut into batches; then the batches shuffled. Batches stay random in content and order, but a batch's
    longest example is closer to its others. On the embedded intents, padded tokens per real token go from 2.4 to
    1.5 with windows of 4 batches (1.1 with 50, but then whole batches of greetings and goodbyes, the shortest
    messages, made training steps lopsided: validation peaked early and test accuracy fell by 1.5 points).
    `sampler` points to itself so Accelerate's `set_epoch` reaches it also when it is sharded across processes.
    """

    def __init__(self, lengths, batch_size: int, seed: int, window: int = 4):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.window, self.epoch = batch_size, seed, window, 0
        self.drop_last, self.sampler = False, self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        # a short batch (at most one: the tail) stays last, where Accelerate's sharding expects it
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        for i in rng.permutation(len(full)):
            yield full[i]
        yield from short


def build_dataloader(dataset, config: TrainConfig, collate_fn, train: bool) -> DataLoader:
    lengths = getattr(getattr(dataset, "dataset", dataset), "lengths", None)
    if train and config.group_by_length and lengths is not None:
        return DataLoader(
            dataset,
            batch_sampler=LengthGroupedBatchSampler(lengths, config.batch_size, config.seed),
            collate_fn=collate_fn,
            num_workers=config.num_workers,
            worker_init_fn=_seed_worker if config.num_workers else None,
            # without its own generator, every iteration of the loader draws its base seed from torch's global
            # stream, which dropout also draws from: a resumed run would iterate it a different number of times
            generator=torch.Generator().manual_seed(config.seed),
        )
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
def predict_probs(
    model, dataloader, accelerator: Accelerator, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
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
        # what must match for a checkpoint's data position to mean the same thing in this run
        self.run_identity = {
            **(run_identity or {}),
            "seed": config.seed,
            "batch_size": config.batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "group_by_length": config.group_by_length,
            "num_processes": accelerator.num_processes,
            "train_examples": len(train_dataset),
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
        logits = _logits(self.model(**model_inputs(batch)))
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


def seed_everything(seed: int) -> None:
    set_seed(seed, deterministic=False)
