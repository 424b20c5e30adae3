"""Training throughput: fmhub's engine against a Hugging Face `transformers.Trainer`, side by side.

Both sides get the same model, data, preprocessing, batch size, sequence/image/clip size, learning-rate schedule,
epochs and thread count; only the training loop differs. fmhub runs through its public path (`fmhub.runner.train`
with the config `fmhub train` resolves: the scenario's defaults plus the overrides below). The Trainer side is the
script a user would write instead: text tokenized once with `datasets.map` and padded per batch by
`DataCollatorWithPadding` (the Trainer's default collator), the timm backbone in a small module that returns the
loss, the audio model as built from its config; images and audio go through the same dataset classes and collators
fmhub uses, so the augmentation work is the same. The `trainer` (matched) side gets fmhub's optimizer parameter groups
(a separate head learning rate, no weight decay on biases and norms), the same frozen weights and, for text, fmhub's
length-grouped batches and its loss (out-of-scope rows are labelled -1 and trained towards a uniform distribution),
so only the loop differs. For text two more variants show what a Trainer user gets: `trainer-grouped` (the
Trainer's own `group_by_length` sampler) and `trainer-default` (random batches, every weight trained, the Trainer's
own optimizer).

Every run is its own process (its peak RSS is `ru_maxrss`), the systems run interleaved (A B A B ...), and
samples/s is the median over repetitions, measured from the end of the warm-up steps to the end of the measured
ones (inside the first epoch, so no evaluation or checkpoint falls inside). Time to target is from process launch to
the end of the validation pass that first reaches the target accuracy.

    python benchmarks/train_throughput.py --output benchmarks/results/train.json            # full (tens of minutes)
    python benchmarks/train_throughput.py --scenarios customer-service --reps 3 --target-reps 1
    python benchmarks/train_throughput.py --quick --output /tmp/train.json                   # tiny models, seconds
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

SYSTEM_TITLES = {
    "fmhub": "fmhub",
    "trainer": "Trainer, matched (same trainable weights, optimizer groups and batches)",
    "trainer-grouped": "Trainer with its own group_by_length (frozen embeddings, same optimizer groups)",
    "trainer-default": "Trainer, its defaults (every weight trained, random batches, its fused AdamW)",
}

LOCK: str | None = None  # --lock: an flock held while one scenario is measured (released between scenarios)

# Full runs: the scenario's own defaults, with only these overrides. Throughput uses a step budget inside the first
# epoch; time to target uses a reduced data set where a full run would not fit the time budget (said in the table).
FULL = {
    "customer-service": {
        "overrides": {},
        "warmup": 5,
        "measure": 25,
        "systems": ["fmhub", "trainer", "trainer-grouped", "trainer-default"],
        "target": 0.90,
        "target_overrides": {},
        "target_systems": ["fmhub", "trainer"],
    },
    "medical-image": {
        # every weight trains on both sides: fmhub's default freezes the backbone for epoch 1, where the throughput
        # steps fall, and a frozen backbone skips most of the backward pass (3.4x "faster", measuring the recipe)
        "overrides": {"freeze_backbone_epochs": 0},
        "warmup": 2,
        "measure": 8,
        "systems": ["fmhub", "trainer"],
        "target": 0.75,
        "target_overrides": {"max_samples_per_class": 100},
        "target_systems": ["fmhub", "trainer"],
    },
    "voice-command": {
        "overrides": {"max_samples_per_class": 100},
        "warmup": 5,
        "measure": 25,
        "systems": ["fmhub", "trainer"],
        "target": 0.60,
        "target_overrides": {"max_samples_per_class": 120},
        "target_systems": ["fmhub", "trainer"],
    },
}


# -- the child: one training run ----------------------------------------------------------------------------------
class Recorder:
    """Timestamps of optimizer steps and validation passes; ends the process at the step budget or the target."""

    def __init__(self, spec: dict, started: float):
        self.spec = spec
        self.data = {"started": started, "steps": [], "counters": [], "evals": [], "reached": None,
                     "steps_per_epoch": None, "start_counters": common.cpu_counters()}

    def step(self) -> None:
        counters = common.cpu_counters()
        self.data["steps"].append(counters[0])
        self.data["counters"].append(counters)
        budget = self.spec.get("stop_after_steps")
        if budget and len(self.data["steps"]) >= budget:
            self.finish("step budget reached")

    def evaluated(self, epoch: float, accuracy: float) -> None:
        now = time.time()
        self.data["evals"].append({"time": now, "epoch": epoch, "step": len(self.data["steps"]), "accuracy": accuracy})
        target = self.spec.get("target")
        if target is not None and accuracy >= target:
            self.data["reached"] = {"time": now, "epoch": epoch, "step": len(self.data["steps"])}
            self.finish("target reached")

    def finish(self, status: str) -> None:
        """Write the record and leave at once: what either system does after this point is not measured."""
        self.data["status"] = status
        self.data["end_counters"] = common.cpu_counters()
        Path(self.spec["result_file"]).write_text(json.dumps(self.data))
        sys.stdout.flush()
        os._exit(0)


class EvalLines(io.TextIOBase):
    """stdout that also reads fmhub's per-epoch validation line (`epoch 2: accuracy=0.9300, ...`)."""

    PATTERN = re.compile(r"^epoch (\d+): .*?\baccuracy=([0-9.]+)")

    def __init__(self, stream, recorder: Recorder):
        self.stream, self.recorder, self.buffer = stream, recorder, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            match = self.PATTERN.match(line.strip())
            if match:
                self.recorder.evaluated(int(match.group(1)), float(match.group(2)))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def resolved_config(spec: dict):
    from fmhub.config import resolve_config
    from fmhub.registry import get_scenario

    values = {**spec["overrides"], "scenario": spec["scenario"], "output_dir": spec["work_dir"], "report_to": "none"}
    if spec.get("target") is not None:
        # stop at the end of the epoch whose validation accuracy reaches the target (both systems evaluate per epoch)
        values.update(metric_for_best_model="accuracy", target_metric=spec["target"], early_stopping_patience=0)
    return resolve_config(get_scenario(spec["scenario"]).defaults, {}, values)


def run_fmhub(spec: dict, recorder: Recorder) -> None:
    from fmhub.runner import train

    config = resolved_config(spec)

    def progress(fraction: float, _message: str) -> None:
        if recorder.data["steps_per_epoch"] is None and fraction > 0:
            recorder.data["steps_per_epoch"] = round(1.0 / fraction) / config.epochs  # first call: step 1 of total
        recorder.step()

    sys.stdout = EvalLines(sys.stdout, recorder)
    train(config, progress=progress)


def outlier_exposure_loss(outputs, labels, num_items_in_batch=None):
    """The loss fmhub trains text with: cross-entropy on labelled rows, rows labelled -1 pushed to uniform."""
    from fmhub.training.setup import classification_loss

    return classification_loss(outputs["logits"], labels)


def trainer_data(spec: dict, config, scenario, data, label_names: list[str], default: bool):
    # `default`: every weight trainable, as `Trainer` users get it
    """(model, train set, validation set, collator, loss function) as a Trainer script would set them up."""
    if scenario.modality == "text":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

        from fmhub.models.auto import resolve_model_path

        path = resolve_model_path(scenario.resolve_backbone(config.model))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
        )
        if config.freeze_embeddings and not default:
            model.get_input_embeddings().weight.requires_grad_(False)

        def tokenize(batch):
            return tokenizer(batch["text"], truncation=True, max_length=config.max_length)

        train = data["train"].map(tokenize, batched=True, remove_columns=["text"])
        validation = data["validation"].map(tokenize, batched=True, remove_columns=["text"])
        return model, train, validation, DataCollatorWithPadding(tokenizer), outlier_exposure_loss
    if scenario.modality == "image":
        import timm.data
        import torch.nn.functional as F
        from torch import nn

        class TimmForTrainer(nn.Module):
            """The timm model in the Trainer's contract: keyword inputs in, a dict with the loss out."""

            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, pixel_values, labels=None):
                logits = self.net(pixel_values)
                out = {"logits": logits}
                if labels is not None:
                    out["loss"] = F.cross_entropy(logits.float(), labels)
                return out

        # the very network fmhub trains (for the offline default: efficientnet_lite0 with its last stage dilated),
        # as the plain timm module a Trainer script would hold
        backbone = scenario.build_model(config, label_names)[0].timm_model
        overrides = {"crop_pct": 1.0}
        if config.image_size:
            overrides["input_size"] = (3, config.image_size, config.image_size)
        data_config = timm.data.resolve_data_config(overrides, model=backbone)
        train = scenario.make_dataset(data["train"], data_config, config, train=True)
        validation = scenario.make_dataset(data["validation"], data_config, config, train=False)
        return TimmForTrainer(backbone), train, validation, scenario.collate_fn(data_config, config), None
    model, extractor = scenario.build_model(config, label_names)  # the audio model, built from its config
    train = scenario.make_dataset(data["train"], extractor, config, train=True)
    validation = scenario.make_dataset(data["validation"], extractor, config, train=False)
    return model, train, validation, scenario.collate_fn(extractor, config), None


def run_trainer(spec: dict, recorder: Recorder) -> None:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from fmhub.registry import get_scenario
    from fmhub.training.setup import build_optimizer

    config = resolved_config(spec)
    scenario = get_scenario(spec["scenario"])
    system = spec["system"]
    default = system == "trainer-default"
    grouped = scenario.modality == "text" and getattr(config, "group_by_length", False)
    set_seed(config.seed)
    data = scenario.load_splits(config)
    label_names = scenario.label_names(data)
    model, train, validation, collator, loss_func = trainer_data(spec, config, scenario, data, label_names, default)
    target = spec.get("target") is not None

    def accuracy(prediction) -> dict:
        logits, labels = prediction.predictions, prediction.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        keep = labels >= 0
        return {"accuracy": float((logits[keep].argmax(-1) == labels[keep]).mean())}

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            recorder.data["steps_per_epoch"] = state.max_steps / max(args.num_train_epochs, 1)

        def on_step_end(self, args, state, control, **kwargs):
            recorder.step()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and "eval_accuracy" in metrics:
                recorder.evaluated(round(state.epoch or 0), metrics["eval_accuracy"])

    args = TrainingArguments(
        output_dir=spec["work_dir"],
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type="constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        seed=config.seed,
        eval_strategy="epoch" if target else "no",
        save_strategy="epoch" if target else "no",  # fmhub checkpoints every epoch; so does this side
        save_total_limit=config.save_total_limit,
        logging_strategy="no",
        report_to="none",
        # image and audio items hold exactly what the collator needs (the raw clip is not a model argument)
        remove_unused_columns=scenario.modality == "text",
        disable_tqdm=True,
        dataloader_num_workers=config.num_workers,
        use_cpu=not torch.cuda.is_available(),
        bf16=config.mixed_precision == "bf16",
        fp16=config.mixed_precision == "fp16",
        train_sampling_strategy="group_by_length" if system == "trainer-grouped" else "random",
    )
    optimizers = (None, None) if default else (build_optimizer(model, config), None)
    trainer_class = Trainer
    if grouped and system == "trainer":
        trainer_class = same_batches_trainer(Trainer, config)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        compute_metrics=accuracy,
        compute_loss_func=loss_func,
        optimizers=optimizers,
        callbacks=[Timing()],
    )
    trainer.train()


def same_batches_trainer(trainer_class, config):
    """A Trainer that draws fmhub's length-grouped batches (the same sampler, seed and window)."""
    from torch.utils.data import DataLoader

    from fmhub.training.loaders import LengthGroupedBatchSampler

    class SameBatchesTrainer(trainer_class):
        def get_train_dataloader(self):
            lengths = [len(ids) for ids in self.train_dataset["input_ids"]]
            sampler = LengthGroupedBatchSampler(lengths, config.batch_size, config.seed)
            loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                                num_workers=config.num_workers)
            return self.accelerator.prepare(loader)

    return SameBatchesTrainer


def child_main(spec_path: str) -> None:
    started = time.time()
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    recorder = Recorder(spec, started)
    if spec["system"] == "fmhub":
        run_fmhub(spec, recorder)
    else:
        run_trainer(spec, recorder)
    recorder.finish("finished without reaching the target" if spec.get("target") is not None else "finished")


# -- the parent: schedule, measure, summarise ---------------------------------------------------------------------
def quick_settings(work: Path) -> dict:
    """Tiny backbones and tiny data sets (a MedMNIST-style .npz, an audio folder of tones): seconds per run."""
    import numpy as np
    import soundfile as sf

    backbones = common.tiny_backbones(work / "backbones")
    npz = work / "tiny_images.npz"
    if not npz.is_file():
        rng = np.random.default_rng(0)
        arrays = {}
        for split, n in (("train", 48), ("val", 16), ("test", 16)):
            labels = np.arange(n) % 2
            images = rng.integers(0, 120, size=(n, 32, 32), dtype=np.uint8)
            images[labels == 1, 8:24, 8:24] += 100  # a bright square: learnable in a few steps
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
        np.savez(npz, **arrays)
    clips = work / "tiny_clips"
    if not clips.is_dir():
        from fmhub.data.speech_corpus import LABELS

        rng = np.random.default_rng(0)
        t = np.arange(16000) / 16000.0
        for k, label in enumerate(LABELS):
            for split, n in (("train", 8), ("validation", 2), ("test", 2)):
                (clips / split / label).mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    wave = 0.3 * np.sin(2 * np.pi * (150 + 60 * k) * t) + 0.02 * rng.standard_normal(16000)
                    sf.write(clips / split / label / f"{i}.wav", wave.astype(np.float32), 16000)
    common_quick = {"epochs": 2, "warmup_ratio": 0.0}
    return {
        "customer-service": {
            "overrides": {**common_quick, "model": backbones["customer-service"], "learning_rate": 2e-3},
            "warmup": 1, "measure": 3, "systems": ["fmhub", "trainer", "trainer-grouped", "trainer-default"],
            "target": 0.0,
            "target_overrides": {}, "target_systems": ["fmhub", "trainer"],
        },
        "medical-image": {
            "overrides": {**common_quick, "model": "test_efficientnet", "pretrained": False, "image_size": 32,
                          "batch_size": 8, "data": str(npz)},
            "warmup": 1, "measure": 3, "systems": ["fmhub", "trainer"], "target": 0.0,
            "target_overrides": {}, "target_systems": ["fmhub", "trainer"],
        },
        "voice-command": {
            "overrides": {**common_quick, "model": backbones["voice-command"], "pretrained": False,
                          "batch_size": 16, "data": str(clips)},
            "warmup": 1, "measure": 3, "systems": ["fmhub", "trainer"], "target": 0.0,
            "target_overrides": {}, "target_systems": ["fmhub", "trainer"],
        },
    }


def launch(work: Path, scenario: str, system: str, overrides: dict, threads: int, timeout: float,
           stop_after_steps: int | None = None, target: float | None = None) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{common.SHORT[scenario]}-{system}-", dir=work))
    spec = {
        "scenario": scenario, "system": system, "overrides": overrides, "threads": threads,
        "stop_after_steps": stop_after_steps, "target": target,
        "work_dir": str(run_dir / "out"), "result_file": str(run_dir / "result.json"),
    }
    (run_dir / "spec.json").write_text(json.dumps(spec))
    env = common.bench_env(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(run_dir / "spec.json")]
    proc = common.run_child(cmd, env, timeout, log_path=run_dir / "log.txt")
    record = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
    if not record:
        message = f"warning: {scenario} {system} run failed (exit {proc['returncode']}):"
        print(f"{message}\n{common.tail(run_dir / 'log.txt')}", file=sys.stderr)
    shutil.rmtree(run_dir / "out", ignore_errors=True)  # checkpoints: not needed, and large
    return {**proc, **record, "system": system, "scenario": scenario, "log": str(run_dir / "log.txt")}


def measured_window(run: dict, warmup: int, measure: int) -> tuple[int, int] | None:
    """Indices (first, last) of the step ends that bound the measured steps: full batches of epoch 1."""
    steps = run.get("steps") or []
    per_epoch = run.get("steps_per_epoch") or 0
    measure = min(measure, int(per_epoch) - 1 - warmup) if per_epoch else measure
    if measure < 1 or len(steps) < warmup + measure or warmup < 1:
        return None
    return warmup - 1, warmup + measure - 1


def samples_per_second(run: dict, warmup: int, measure: int, batch_size: int) -> float | None:
    window = measured_window(run, warmup, measure)
    if window is None:
        return None
    seconds = run["steps"][window[1]] - run["steps"][window[0]]
    return (window[1] - window[0]) * batch_size / seconds if seconds > 0 else None


def samples_per_cpu_second(run: dict, warmup: int, measure: int, batch_size: int) -> float | None:
    """Samples per CPU-second of the training process: barely moved by other load on a shared machine."""
    window = measured_window(run, warmup, measure)
    counters = run.get("counters") or []
    if window is None or len(counters) <= window[1]:
        return None
    cpu = counters[window[1]][1] - counters[window[0]][1]
    return (window[1] - window[0]) * batch_size / cpu if cpu > 0 else None


def run_other_load(run: dict, warmup: int | None = None, measure: int | None = None) -> float | None:
    """Other processes' share of the machine during the measured steps (or the whole run)."""
    counters = run.get("counters") or []
    window = measured_window(run, warmup, measure) if warmup else None
    if window is not None:
        return common.other_load(counters[window[0]], counters[window[1]])
    if run.get("start_counters") and run.get("end_counters"):
        return common.other_load(run["start_counters"], run["end_counters"])
    return None


def time_to_target(run: dict) -> dict:
    reached = run.get("reached")
    steps = run.get("steps") or []
    out = {"reached": reached is not None, "status": run.get("status"), "other_load": run.get("other_load"),
           "setup_s": steps[0] - run["spawned_at"] if steps else None,
           "evals": [{"epoch": e["epoch"], "accuracy": e["accuracy"]} for e in run.get("evals", [])]}
    if reached:
        out.update(seconds=reached["time"] - run["spawned_at"], epochs=reached["epoch"], steps=reached["step"])
    return out


def undisturbed(start, check, retries: int) -> dict:
    """`start()` again (up to `retries` times) while other processes loaded the machine during the measurement;
    the last attempt is kept either way, the earlier ones are listed under `disturbed_attempts`."""
    attempts = []
    while True:
        run = start()
        load = check(run)
        run["other_load"] = load
        if load is None or load <= common.DISTURBED or len(attempts) >= retries:
            run["disturbed_attempts"] = [{"other_load": a["other_load"]} for a in attempts]
            run["disturbed"] = load is not None and load > common.DISTURBED
            return run
        print(f"note: {run['scenario']} {run['system']}: other processes used {load:.0%} of the machine; "
              "measuring again", file=sys.stderr)
        attempts.append(run)


def benchmark(settings: dict, scenarios: list[str], reps: int, target_reps: int, threads: int, work: Path,
              timeout: float, quick: bool, retries: int = 2) -> dict:
    results = {}
    for scenario in scenarios:
        with common.measuring(LOCK):  # one scenario's runs back to back (a few minutes)
            results[scenario] = benchmark_scenario(settings[scenario], scenario, reps, target_reps, threads, work,
                                                   timeout, quick, retries)
    return results


def benchmark_scenario(s: dict, scenario: str, reps: int, target_reps: int, threads: int, work: Path,
                       timeout: float, quick: bool, retries: int) -> dict:
    from fmhub.config import resolve_config
    from fmhub.registry import get_scenario

    values = {"scenario": scenario, **s["overrides"]}
    batch = resolve_config(get_scenario(scenario).defaults, {}, values).batch_size
    runs: dict[str, list] = {system: [] for system in s["systems"]}
    targets: dict[str, list] = {system: [] for system in s["target_systems"]}
    if quick:  # one run per system gives both numbers: the step budget inside epoch 1, then the target
        for system in s["systems"]:
            run = launch(work, scenario, system, s["overrides"], threads, timeout, target=s["target"])
            runs[system].append(run)
            if system in targets:
                targets[system].append(run)
    else:
        budget = s["warmup"] + s["measure"]
        for _ in range(reps):  # interleaved: A B A B ...
            for system in s["systems"]:
                start = partial(launch, work, scenario, system, s["overrides"], threads, timeout,
                                stop_after_steps=budget)
                check = partial(run_other_load, warmup=s["warmup"], measure=s["measure"])
                runs[system].append(undisturbed(start, check, retries))
        overrides = {**s["overrides"], **s["target_overrides"]}
        for _ in range(target_reps):
            for system in s["target_systems"]:
                start = partial(launch, work, scenario, system, overrides, threads, timeout, target=s["target"])
                targets[system].append(undisturbed(start, run_other_load, min(retries, 1)))
    summary = {"batch_size": batch, "warmup_steps": s["warmup"], "measured_steps": s["measure"],
               "overrides": s["overrides"], "target_accuracy": s["target"],
               "target_overrides": {**s["overrides"], **s["target_overrides"]}, "systems": {}}
    for system, system_runs in runs.items():
        rates = [samples_per_second(r, s["warmup"], s["measure"], batch) for r in system_runs]
        cpu_rates = [samples_per_cpu_second(r, s["warmup"], s["measure"], batch) for r in system_runs]
        ttt = [time_to_target(r) for r in targets.get(system, [])]
        summary["systems"][system] = {
            "samples_per_s": common.median(rates),
            "samples_per_s_runs": rates,
            "samples_per_cpu_s": common.median(cpu_rates),
            "samples_per_cpu_s_runs": cpu_rates,
            "peak_rss_mb": common.median([r["peak_rss_mb"] for r in system_runs if r.get("steps")]),
            "peak_rss_mb_runs": [r["peak_rss_mb"] for r in system_runs],
            "other_load_runs": [r.get("other_load") for r in system_runs],
            "disturbed_runs": sum(1 for r in system_runs if r.get("disturbed")),
            "time_to_target_s": common.median([t.get("seconds") for t in ttt]) if ttt else None,
            "epochs_to_target": common.median([t.get("epochs") for t in ttt]) if ttt else None,
            "time_to_target_runs": ttt,
            "failed_runs": sum(1 for r in system_runs if not r.get("steps")),
            "runs": [{k: r.get(k) for k in ("steps", "counters", "steps_per_epoch", "peak_rss_mb", "spawned_at",
                                            "other_load", "disturbed_attempts", "status", "returncode")}
                     for r in system_runs],
        }
    fm = summary["systems"]["fmhub"]
    for system, values in summary["systems"].items():
        if system != "fmhub":
            values["ratio_fmhub_over_this"] = common.ratio(fm["samples_per_s"], values["samples_per_s"])
            values["cpu_ratio_fmhub_over_this"] = common.ratio(fm["samples_per_cpu_s"], values["samples_per_cpu_s"])
    return summary


def tables(results: dict) -> str:
    rows = []
    for scenario, summary in results.items():
        fm = summary["systems"]["fmhub"]
        for system, values in summary["systems"].items():
            if system == "fmhub":
                continue
            loads = [x for x in fm["other_load_runs"] + values["other_load_runs"] if x is not None]
            rows.append([
                f"{scenario} ({common.SHORT[scenario]})", SYSTEM_TITLES[system],
                common.fmt(fm["samples_per_s"]), common.fmt(values["samples_per_s"]),
                common.fmt(values["ratio_fmhub_over_this"], 2, "x"),
                common.fmt(values["cpu_ratio_fmhub_over_this"], 2, "x"),
                f"{common.fmt(fm['peak_rss_mb'], 0)} / {common.fmt(values['peak_rss_mb'], 0)}",
                f"{len(fm['samples_per_s_runs'])} / {len(values['samples_per_s_runs'])}",
                common.fmt(100 * max(loads), 0, "%") if loads else "–",
            ])
    throughput = common.markdown_table(
        ["scenario", "fmhub against", "fmhub samples/s", "other samples/s", "ratio fmhub/other",
         "ratio per CPU-second", "peak RSS MB fmhub / other", "runs", "max other load"], rows)
    rows = []
    for scenario, summary in results.items():
        for system, values in summary["systems"].items():
            runs = values["time_to_target_runs"]
            if not runs:
                continue
            reached = sum(1 for r in runs if r["reached"])
            rows.append([
                f"{scenario} ({common.SHORT[scenario]})", SYSTEM_TITLES[system].split(" (")[0],
                f"{summary['target_accuracy']:.2f}",
                ", ".join(f"{k}={Path(v).name if k == 'data' else v}" for k, v in summary["target_overrides"].items()
                          if k != "model") or "scenario defaults",
                common.fmt(values["time_to_target_s"]), common.fmt(values["epochs_to_target"], 0),
                f"{reached}/{len(runs)}",
                common.fmt(common.median([r.get("setup_s") for r in runs])),
            ])
    target = common.markdown_table(
        ["scenario", "system", "target val. accuracy", "data", "s to target (from launch)", "epochs",
         "runs reaching it", "s to first step"], rows)
    return f"### Throughput\n\n{throughput}\n\n### Time to target accuracy\n\n{target}\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and data: checks the script, not speed")
    parser.add_argument("--scenarios", nargs="+", choices=common.SCENARIOS, default=list(common.SCENARIOS))
    parser.add_argument("--reps", type=int, default=3, help="throughput repetitions per system (median)")
    parser.add_argument("--target-reps", type=int, default=1, help="time-to-target repetitions per system")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for all")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed")
    parser.add_argument("--work-dir", help="where runs write (default: a temporary folder, removed)")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--lock", help="flock file held while a scenario is measured; starts on a quiet machine")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    global LOCK
    LOCK = args.lock
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fmhub-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    info = common.machine()
    settings = quick_settings(work) if args.quick else FULL
    started = time.time()
    results = benchmark(settings, args.scenarios, max(1, args.reps), max(0, args.target_reps), args.threads, work,
                        args.timeout, args.quick)
    report = {
        "benchmark": "train_throughput", "quick": args.quick, "machine": info, "threads": args.threads,
        "reps": 1 if args.quick else args.reps, "target_reps": 1 if args.quick else args.target_reps,
        "seconds": round(time.time() - started, 1), "results": results,
    }
    common.print_header("Training throughput: fmhub vs transformers.Trainer", info)
    print(tables(results))
    common.write_json(args.output, report)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    failed = any(v["failed_runs"] for r in results.values() for v in r["systems"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
