"""The training engine under stress, with the real tiny BERT through the real CLI and loop.

Kill and resume, a crash while saving, NaN guards, determinism, two processes under `accelerate launch`, tracking,
class weights, bad resume input and unsafe checkpoints, and the shipped Accelerate config files.

The runs use a small slice of the embedded customer-service data (110 training rows, 14 batches of 8 per epoch,
checkpoints every 4 steps: never on an epoch end) and one CPU thread, so the runs are bit-for-bit reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from fmhub import checkpoints, runner
from fmhub.cli import main
from fmhub.data import intents
from fmhub.errors import TrainingDiverged
from fmhub.training.loaders import EpochSeededDataset, LengthGroupedBatchSampler
from fmhub.training.setup import classification_loss, inverse_frequency_weights

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "fmhub" / "accelerate_configs"
STEPS_PER_EPOCH = 14  # 110 training rows in batches of 8
EVERY = 4  # checkpoint interval: 4, 8, 12 are mid-epoch, 14 is the epoch end


# -- shared set-up ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One torch thread for every test here (conftest's `one_thread`)."""


def subprocess_env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.fixture(scope="module")
def intent_data(tmp_path_factory) -> Path:
    """train/validation/test JSONL files cut from the embedded set; training classes deliberately imbalanced."""
    splits = intents.load_embedded_intents(seed=0)
    sizes = {
        "train": (lambda label: 4 + 3 * (intents.INTENTS.index(label) % 4), 8),  # 4/7/10/13 per intent + 8 OOS
        "validation": (lambda label: 3, 4),
        "test": (lambda label: 3, 5),  # 41 rows: an odd count, so two processes need padding
    }
    folder = tmp_path_factory.mktemp("intent_slice")
    for split, (per_intent, oos) in sizes.items():
        counts: dict[str, int] = {}
        rows = []
        for row in splits[split]:
            label = row["label"]
            limit = oos if label == intents.OUT_OF_SCOPE else per_intent(label)
            if counts.get(label, 0) < limit:
                counts[label] = counts.get(label, 0) + 1
                rows.append({"text": row["text"], "label": label})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def train_argv(data: Path, backbone: Path, out: Path, *extra: str) -> list[str]:
    """The runs' common settings; later flags in `extra` win."""
    return [
        "train",
        "--scenario",
        "customer-service",
        "--model",
        str(backbone),
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--eval-batch-size",
        "16",
        "--max-length",
        "32",
        "--learning-rate",
        "3e-3",
        "--head-learning-rate",
        "3e-3",
        "--checkpoint-every-steps",
        str(EVERY),
        "--save-total-limit",
        "2",
        "--early-stopping-patience",
        "1",
        "--seed",
        "7",
        "--report-to",
        "tensorboard",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(intent_data, tiny_text_backbone, tmp_path_factory) -> Path:
    """One uninterrupted run: what every interrupted run must end as."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_argv(intent_data, tiny_text_backbone, out)) == 0
    return out


def history(folder: Path) -> list[dict]:
    return json.loads((folder / "training_history.json").read_text())["history"]


def assert_same_run(folder: Path, expected: Path) -> None:
    """Bit-identical final and best weights, and the same training history (losses, metrics, learning rates)."""
    for name in ("model.safetensors", checkpoints.BEST):
        ours, theirs = load_file(str(folder / name)), load_file(str(expected / name))
        assert ours.keys() == theirs.keys()
        different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert history(folder) == history(expected)


def assert_all_weights_finite(folder: Path) -> None:
    files = list(folder.rglob("*.safetensors"))
    assert files
    for path in files:
        for name, tensor in load_file(str(path)).items():
            assert torch.isfinite(tensor).all(), f"{path}: {name}"


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def copy_run(source: Path, target: Path) -> Path:
    """A real copy of a finished run folder with only its latest checkpoint."""
    keep = checkpoints.latest(source).name
    shutil.copytree(
        source,
        target,
        ignore=lambda d, names: [n for n in names if Path(d) == source and n.startswith("checkpoint-") and n != keep],
    )
    return target


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
    }


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def with_fault_hook(monkeypatch, hook) -> None:
    """`runner.train(config, fault_hook=...)` behind the real CLI (cli.run_train imports runner.train when called)."""
    monkeypatch.setattr(runner, "train", functools.partial(runner.train, fault_hook=hook))


# -- kill, crash while saving, resume -----------------------------------------------------------------------------
SLOW_TRAIN = """
import sys, time
from fmhub import cli, runner
train = runner.train
def slow_step(step, loss):
    time.sleep(0.25)  # only slows the loop, so the test can kill it between two checkpoints
    return loss
runner.train = lambda config, **kwargs: train(config, fault_hook=slow_step)
sys.exit(cli.main(sys.argv[1:]))
"""


def kill_when(argv: list[str], out: Path, ready, log: Path) -> None:
    """Run training (slowed down) in a subprocess and SIGKILL it as soon as `ready(out)` holds."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_TRAIN, *argv], env=subprocess_env(), stdout=fh, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 300
            while not ready(out):
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the checkpoint did not appear in time"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # really killed mid-run


def test_killed_run_resumes_mid_epoch_to_the_same_weights(reference, intent_data, tiny_text_backbone, tmp_path):
    out = tmp_path / "killed"
    argv = train_argv(intent_data, tiny_text_backbone, out)
    # killed right after its second checkpoint (step 8, inside the first epoch, before any validation) ...
    kill_when(argv, out, lambda out: len(checkpoints.complete_checkpoints(out)) >= 2, tmp_path / "first.log")
    assert 2 * EVERY <= step_of(checkpoints.latest(out)) < STEPS_PER_EPOCH  # 8 unless the poll was late
    # ... resumed, and killed again inside the second epoch (step 20): the new process validates for the first
    # time in an epoch the first one had already validated in
    kill_when([*argv, "--resume"], out, lambda out: step_of(checkpoints.latest(out)) >= 20, tmp_path / "second.log")
    assert "resumed from" in (tmp_path / "second.log").read_text()
    last = checkpoints.latest(out)
    state = checkpoints.verify(last, {})["state"]
    assert state["epoch"] == 1 and 0 < state["batches_in_epoch"] < STEPS_PER_EPOCH  # mid-epoch: 20 = 14 + 6

    resumed = subprocess.run(
        [sys.executable, "-m", "fmhub", *argv, "--resume"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"resumed from {last} (step {state['global_step']}, epoch 1, batch {state['batches_in_epoch']} "
        f"of {STEPS_PER_EPOCH})"
    ) in resumed.stdout
    assert_same_run(out, reference)


class PowerCut(BaseException):
    """Stands for the process dying: nothing in fmhub catches it."""


def test_crash_while_saving_keeps_the_previous_checkpoint(
    reference, intent_data, tiny_text_backbone, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "crashed"
    argv = train_argv(intent_data, tiny_text_backbone, out)
    real_save_state = Accelerator.save_state
    calls = []

    def save_state_then_die(self, output_dir=None, *args, **kwargs):
        calls.append(output_dir)
        result = real_save_state(self, output_dir, *args, **kwargs)
        if len(calls) == 5:  # steps 4, 8, 12, 14 (epoch end) saved; dies half-way through step 16's save
            optimizer = Path(output_dir) / "optimizer.bin"
            optimizer.write_bytes(optimizer.read_bytes()[:1000])
            raise PowerCut
        return result

    monkeypatch.setattr(Accelerator, "save_state", save_state_then_die)
    with pytest.raises(PowerCut):
        main(argv)
    monkeypatch.undo()

    partial = out / ".tmp-checkpoint-16"
    assert partial.is_dir() and not (partial / checkpoints.MANIFEST).exists()
    previous = out / f"checkpoint-{STEPS_PER_EPOCH}"
    assert checkpoints.latest(out) == previous
    state = checkpoints.verify(previous, {})["state"]  # loadable: every file matches its hash
    assert (state["global_step"], state["epoch"], state["batches_in_epoch"]) == (STEPS_PER_EPOCH, 1, 0)

    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert f"resumed from {previous} (step {STEPS_PER_EPOCH}, epoch 1" in capsys.readouterr().out
    assert not partial.exists()  # cleaned up by the next save
    assert_same_run(out, reference)


def test_gradient_accumulation_resumes_mid_epoch_to_the_same_weights(
    intent_data, tiny_text_backbone, tmp_path, monkeypatch, capsys
):
    """Two batches per optimizer step: checkpoints fall on step boundaries, the accumulation counter is restored."""

    def argv(out):
        return train_argv(
            intent_data,
            tiny_text_backbone,
            out,
            "--gradient-accumulation-steps",
            "2",
            "--epochs",
            "2",
            "--checkpoint-every-steps",
            "3",
            "--early-stopping-patience",
            "0",
            "--report-to",
            "none",
        )

    assert main(argv(tmp_path / "whole")) == 0
    real_save_state = Accelerator.save_state
    calls = []

    def save_state_then_die(self, output_dir=None, *args, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # step 6's save never completes
            raise PowerCut
        return real_save_state(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state_then_die)
    with pytest.raises(PowerCut):
        main(argv(tmp_path / "cut"))
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*argv(tmp_path / "cut"), "--resume"]) == 0
    assert "(step 3, epoch 0, batch 6 of 14)" in capsys.readouterr().out
    ours, theirs = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("cut", "whole"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert history(tmp_path / "cut") == history(tmp_path / "whole")


def test_resuming_a_finished_run_changes_nothing(reference, intent_data, tiny_text_backbone, tmp_path, capsys):
    """The last checkpoint holds the best weights and the early-stopping verdict: nothing is trained again."""
    out = copy_run(reference, tmp_path / "again")
    last = checkpoints.latest(out)
    assert main([*train_argv(intent_data, tiny_text_backbone, out), "--resume"]) == 0
    assert f"resumed from {last}" in capsys.readouterr().out
    assert_same_run(out, reference)


def test_partial_and_temporary_folders_are_never_the_latest(tmp_path):
    complete = tmp_path / "checkpoint-4"
    complete.mkdir()
    (complete / checkpoints.MANIFEST).write_text("{}")
    (tmp_path / "checkpoint-8").mkdir()  # no manifest: interrupted before it was complete
    (tmp_path / ".tmp-checkpoint-12").mkdir()
    (tmp_path / ".tmp-checkpoint-12" / checkpoints.MANIFEST).write_text("{}")  # written, never renamed
    (tmp_path / ".old-checkpoint-2").mkdir()
    assert checkpoints.complete_checkpoints(tmp_path) == [complete]
    assert checkpoints.latest(tmp_path) == complete
    checkpoints.remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]


def test_augmentation_randomness_depends_only_on_seed_epoch_and_index():
    """What a dataset draws from the global generators while making item i of epoch e, whatever ran before."""

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return random.random(), float(np.random.rand()), float(torch.rand(()))

    data = EpochSeededDataset(Noisy(), seed=7)
    first = [data[i] for i in range(4)]
    random.random(), np.random.rand(), torch.rand(3)  # other code drawing in between
    assert [data[i] for i in (3, 2, 1, 0)][::-1] == first  # any order, any history: the same items
    before = random.getstate(), torch.get_rng_state()
    data.set_epoch(1)
    assert [data[i] for i in range(4)] != first  # a new epoch, new noise
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])  # put back
    assert EpochSeededDataset(Noisy(), seed=8)[0] != first[0]


def test_length_grouped_batches_cover_every_example_once_and_pad_less():
    lengths = np.random.default_rng(0).integers(3, 60, 1403)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=32, seed=7, window=50)
    first = list(sampler)
    assert len(first) == len(sampler) == 44
    assert sorted(i for batch in first for i in batch) == list(range(1403))
    assert [len(b) for b in first[:-1]] == [32] * 43 and len(first[-1]) == 1403 - 43 * 32  # the short tail last
    assert list(sampler) == first  # (seed, epoch) decide the order
    sampler.set_epoch(1)
    assert list(sampler) != first
    # padding: a batch's longest example against the data's average, for grouped and plain shuffled batches
    grouped = np.mean([lengths[b].max() for b in first])
    plain = np.mean([lengths[b].max() for b in np.array_split(np.random.default_rng(1).permutation(1403), 44)])
    assert grouped < 0.8 * plain
    # the same data order in every process of an `accelerate launch`: batches are dealt round-robin
    from accelerate.data_loader import BatchSamplerShard

    shards = [list(BatchSamplerShard(LengthGroupedBatchSampler(lengths, 32, seed=7, window=50), 2, rank))
              for rank in (0, 1)]
    assert shards[0][:5] == first[0:10:2] and shards[1][:5] == first[1:10:2]


# -- fault guards -----------------------------------------------------------------------------------------------------
class NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_nan_stops_the_run_naming_the_step(what, intent_data, tiny_text_backbone, tmp_path, monkeypatch, capsys):
    k = 10
    out = tmp_path / "nan"

    def inject(step, loss):
        if step != k:
            return loss
        return loss * float("nan") if what == "loss" else NanGradient.apply(loss)

    with_fault_hook(monkeypatch, inject)
    assert main(train_argv(intent_data, tiny_text_backbone, out)) == 2
    line = last_error_line(capsys)
    assert line.startswith(
        f"fmhub train: error: training stopped: the {what} became nan at step {k}. "
        f"Nothing after step {k - 1} was saved."
    )
    assert [step_of(p) for p in checkpoints.complete_checkpoints(out)] == [EVERY, 2 * EVERY]  # none after k - 1
    assert not list(out.glob(".tmp-checkpoint-*"))
    assert not (out / "model.safetensors").exists()  # nothing tested, saved or pushed
    assert_all_weights_finite(out)


def test_nan_policy_skip_counts_the_batch_and_finishes(intent_data, tiny_text_backbone, tmp_path, monkeypatch):
    out = tmp_path / "skip"
    fired = []

    def inject_once(step, loss):
        if step == 6 and not fired:
            fired.append(step)
            return loss * float("nan")
        return loss

    with_fault_hook(monkeypatch, inject_once)
    argv = train_argv(
        intent_data, tiny_text_backbone, out, "--nan-policy", "skip", "--epochs", "2", "--early-stopping-patience", "0"
    )
    assert main(argv) == 0
    assert json.loads((out / "fmhub.json").read_text())["skipped_batches"] == 1
    # the skipped batch made no optimizer step, and both epochs ran to their end
    assert json.loads((out / "all_results.json").read_text())["train_steps"] == 2 * STEPS_PER_EPOCH - 1
    records = history(out)
    assert [r["epoch"] for r in records if "epoch" in r] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records if "train_loss" in r)
    assert_all_weights_finite(out)


def test_non_finite_weights_are_never_saved(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="weight weight is not finite"):
        checkpoints.save(Accelerator(cpu=True), model, tmp_path, {"global_step": 3}, {}, keep=2)
    assert not list(tmp_path.iterdir())


def test_out_of_memory_suggests_a_smaller_batch(intent_data, tiny_text_backbone, tmp_path, monkeypatch, capsys):
    def out_of_memory(step, loss):
        if step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loss

    with_fault_hook(monkeypatch, out_of_memory)
    assert main(train_argv(intent_data, tiny_text_backbone, tmp_path / "oom", "--epochs", "1")) == 2
    assert last_error_line(capsys) == (
        "fmhub train: error: out of memory at step 2 with --batch-size 8 per process. Try --batch-size 4 "
        "--gradient-accumulation-steps 2 (the same effective batch), --mixed-precision bf16, or a shorter "
        "--max-length / smaller --image-size"
    )


# -- determinism --------------------------------------------------------------------------------------------------
def test_same_seed_same_weights_other_seed_other_weights(intent_data, tiny_text_backbone, tmp_path):
    short = ("--epochs", "1", "--max-steps", "5", "--report-to", "none")
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert main(train_argv(intent_data, tiny_text_backbone, tmp_path / name, *short, "--seed", seed)) == 0
    a, b, c = (load_file(str(tmp_path / name / "model.safetensors")) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert history(tmp_path / "a") == history(tmp_path / "b")
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])
    assert sum(not torch.equal(a[k], c[k]) for k in a) > len(a) // 2


# -- many processes -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(*args: str) -> subprocess.CompletedProcess:
    """Two gloo processes on CPU (`--multi_gpu` without GPUs; see OFFLINE.md)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "--dynamo_backend",
        "no",
        *args,
    ]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_two_process_evaluate_counts_every_example_once(reference, intent_data, tmp_path):
    common = [
        "evaluate",
        "--scenario",
        "customer-service",
        "--model",
        str(reference),
        "--data",
        str(intent_data),
        "--batch-size",
        "8",
    ]
    proc = accelerate_launch(
        "--multi_gpu", "--mixed_precision", "no", "-m", "fmhub", *common, "--output-dir", str(tmp_path / "two")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "all_results.json").read_text())
    one = json.loads((tmp_path / "one" / "all_results.json").read_text())
    test_rows = intents.read_jsonl(intent_data / "test.jsonl")
    assert (two["num_processes"], one["num_processes"]) == (2, 1)
    assert two["num_examples"] + two["oos_examples"] == len(test_rows) == 41
    assert two["num_examples"] == one["num_examples"] == 36
    assert two["confusion_matrix"] == one["confusion_matrix"]
    for key in ("accuracy", "macro_f1", "roc_auc", "ece", "oos_recall", "accuracy_with_oos"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_two_process_training_completes_and_saves_once(intent_data, tiny_text_backbone, tmp_path):
    out = tmp_path / "ddp"
    argv = train_argv(
        intent_data,
        tiny_text_backbone,
        out,
        "--epochs",
        "1",
        "--max-steps",
        "6",
        "--checkpoint-every-steps",
        "3",
        "--warmup-ratio",
        "0",
        "--report-to",
        "none",
    )
    proc = accelerate_launch("--config_file", str(CONFIGS / "multi_gpu.yaml"), "-m", "fmhub", *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the launch config's bf16 applies (fmhub's --mixed-precision was left at "no"), and the saved config says so
    assert "mixed_precision: bf16" in (out / "train_config.yaml").read_text()
    assert proc.stdout.count("saved to") == 1  # the main process saves; the other one only trains
    assert (out / "model.safetensors").is_file() and (out / "fmhub.json").is_file()
    last = checkpoints.latest(out)
    assert step_of(last) == 6
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in last.iterdir()}  # one per process
    assert checkpoints.verify(last, {})["identity"]["num_processes"] == 2
    # the linear schedule spans the whole run on every process (Accelerate steps a prepared scheduler once per
    # process): the learning rate reaches zero at step 6, not half-way
    rates = [r["learning_rate"] for r in history(out) if "learning_rate" in r]
    assert len(rates) == 6 and all(r > 0 for r in rates[:-1]) and rates[-1] == 0
    assert rates[0] == pytest.approx(3e-3 * 5 / 6)


NAN_ON_ONE_PROCESS = """
import os, sys
from fmhub import cli, runner
train = runner.train
def nan_on_process_1(step, loss):
    if step == 2 and os.environ["RANK"] == "1" and not getattr(nan_on_process_1, "fired", False):
        nan_on_process_1.fired = True
        return loss * float("nan")
    return loss
runner.train = lambda config, **kwargs: train(config, fault_hook=nan_on_process_1)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_two_process_nan_on_one_process_is_skipped_by_both(intent_data, tiny_text_backbone, tmp_path):
    """The processes agree on a NaN seen by one of them: neither waits forever in the other's gradient all-reduce."""
    script = tmp_path / "nan_on_one_process.py"
    script.write_text(NAN_ON_ONE_PROCESS)
    out = tmp_path / "ddp_nan"
    argv = train_argv(
        intent_data,
        tiny_text_backbone,
        out,
        "--epochs",
        "1",
        "--max-steps",
        "6",
        "--checkpoint-every-steps",
        "3",
        "--report-to",
        "none",
        "--nan-policy",
        "skip",
    )
    proc = accelerate_launch("--multi_gpu", "--mixed_precision", "no", str(script), *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: the loss is not finite on another process at step 2; batch skipped" in proc.stdout
    assert json.loads((out / "fmhub.json").read_text())["skipped_batches"] == 1
    assert json.loads((out / "all_results.json").read_text())["train_steps"] == 6
    assert_all_weights_finite(out)


# -- tracking, plots, class weights ---------------------------------------------------------------------------
def test_tensorboard_events_and_training_curves(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((reference / "runs" / "fmhub").glob("events.out.tfevents.*"))
    assert events
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    steps = [r["step"] for r in history(reference) if "train_loss" in r]
    assert [e.step for e in board.Scalars("train/loss")] == steps
    assert len(board.Scalars("train/learning_rate")) == len(steps)
    assert len(board.Scalars("eval/macro_f1")) == len([r for r in history(reference) if "epoch" in r]) >= 2
    png = reference / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_inverse_frequency_weights_change_the_loss():
    labels = [0] * 90 + [1] * 10 + [-1] * 5  # class 2 never seen; -1 rows (out of scope) are not counted
    weights = inverse_frequency_weights(labels, 3)
    assert weights.tolist() == pytest.approx([100 / (3 * 90), 100 / (3 * 10), 100 / 3], rel=1e-6)
    assert inverse_frequency_weights([0, 1, 2] * 5, 3).tolist() == pytest.approx([1.0, 1.0, 1.0])
    logits = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor(labels)
    plain = classification_loss(logits, target)
    weighted = classification_loss(logits, target, weights)
    assert torch.isfinite(weighted) and not torch.isclose(plain, weighted)
    # uniform weights are the same as none
    assert torch.isclose(classification_loss(logits, target, torch.ones(3)), plain)


def test_class_weights_auto_changes_the_first_step_loss(reference, intent_data, tiny_text_backbone, tmp_path):
    one_step = ("--epochs", "1", "--max-steps", "1", "--report-to", "none")
    for name, weights in (("plain", "none"), ("weighted", "auto")):
        argv = train_argv(intent_data, tiny_text_backbone, tmp_path / name, *one_step, "--class-weights", weights)
        assert main(argv) == 0
    plain, weighted = (history(tmp_path / name)[0]["train_loss"] for name in ("plain", "weighted"))
    assert plain == history(reference)[0]["train_loss"]  # same first batch, same initial weights: only weights differ
    # at initialisation every row's cross-entropy is close to log(12), so re-weighting rows moves the mean only a
    # little (1e-5 to 1e-3 depending on the tiny backbone's random init); identical runs are bit-exact (line above),
    # so any difference well above float32 rounding of a ~3.7 mean (~4e-7) is the weights at work
    assert abs(weighted - plain) > 5e-6, (weighted, plain)


# -- bad input: one clear line, exit code 2, nothing overwritten ------------------------------------------------
def _other_scenario(out: Path) -> None:
    manifest_path = checkpoints.latest(out) / checkpoints.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["identity"]["scenario"] = "voice-command"
    manifest_path.write_text(json.dumps(manifest))


def _flip_bytes(out: Path) -> None:
    path = checkpoints.latest(out) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


BAD_INPUT = {
    "not-a-checkpoint": (
        lambda out, tmp: ["--resume-from", str(tmp / "empty")],
        None,
        "is not a complete fmhub checkpoint",
    ),
    "missing-path": (lambda out, tmp: ["--resume-from", str(tmp / "nowhere")], None, "not a checkpoint folder"),
    "other-model": (
        lambda out, tmp: ["--resume", "--model", str(tmp / "other_backbone")],
        None,
        "belongs to another run (backbone: ",
    ),
    "other-scenario": (
        lambda out, tmp: ["--resume"],
        _other_scenario,
        "belongs to another run (scenario: 'voice-command', this run: 'customer-service')",
    ),
    "corrupted": (
        lambda out, tmp: ["--resume"],
        _flip_bytes,
        "is corrupted or was modified (model.safetensors does not match its hash)",
    ),
    "other-batch-size": (
        lambda out, tmp: ["--resume", "--batch-size", "16"],
        None,
        "belongs to another run (batch_size: 8, this run: 16)",
    ),
    "both-resume-flags": (
        lambda out, tmp: ["--resume", "--resume-from", str(checkpoints.latest(out))],
        None,
        "give either --resume or --resume-from, not both",
    ),
    "freeze-all-epochs": (
        lambda out, tmp: ["--resume", "--freeze-backbone-epochs", "3"],
        None,
        "--freeze-backbone-epochs must be smaller than --epochs",
    ),
    "no-resume-flag": (lambda out, tmp: [], None, "already holds checkpoints of a run; add --resume"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_resume_input_is_one_clear_line_and_overwrites_nothing(
    case, reference, intent_data, tiny_text_backbone, tmp_path, capsys
):
    extra, damage, message = BAD_INPUT[case]
    out = copy_run(reference, tmp_path / "run")
    shutil.copytree(tiny_text_backbone, tmp_path / "other_backbone")
    (tmp_path / "empty").mkdir()
    if damage:
        damage(out)
    before = snapshot(out)
    capsys.readouterr()
    assert main([*train_argv(intent_data, tiny_text_backbone, out), *extra(out, tmp_path)]) == 2
    line = last_error_line(capsys)
    assert line.startswith("fmhub train: error: ") and message in line, line
    assert snapshot(out) == before


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_pickle_in_a_checkpoint_is_refused_before_unpickling(
    reference, intent_data, tiny_text_backbone, tmp_path, monkeypatch, capsys
):
    out = copy_run(reference, tmp_path / "run")
    argv = [*train_argv(intent_data, tiny_text_backbone, out), "--resume"]
    payload = pickle.dumps(_RunsACommand(tmp_path / "pwned"), protocol=2)
    pickle.loads(pickle.dumps(_RunsACommand(tmp_path / "live")))  # the payload is real: unpickling runs it
    assert (tmp_path / "live").exists()

    target = checkpoints.latest(out) / "random_states_0.pkl"
    target.write_bytes(payload)
    loaded = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loaded.append(str(f)) or real_load(f, *a, **k))
    capsys.readouterr()
    assert main(argv) == 2
    assert "random_states_0.pkl does not match its hash" in last_error_line(capsys)
    assert not [f for f in loaded if f.startswith(str(out))]  # refused before anything in it was unpickled
    assert not (tmp_path / "pwned").exists()

    # an attacker who also rewrites the manifest gets past the hash check, not past torch's weights-only loader
    manifest_path = target.parent / checkpoints.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["random_states_0.pkl"] = hashlib.sha256(payload).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    assert main(argv) == 2
    assert "cannot load checkpoint" in last_error_line(capsys)
    assert not (tmp_path / "pwned").exists()


# -- the shipped Accelerate config files --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kind",
    [
        ("single_gpu.yaml", "NO"),
        ("multi_gpu.yaml", "MULTI_GPU"),
        ("fsdp.yaml", "FSDP"),
        ("deepspeed_zero2.yaml", "DEEPSPEED"),
    ],
)
def test_accelerate_config_files_are_accepted_by_accelerate_launch(name, kind, monkeypatch):
    """What `accelerate launch --config_file X` does before it starts processes, and the plugin each one builds."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = CONFIGS / name
    assert load_config_from_file(str(path)).distributed_type == kind
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "fmhub", "train"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    assert args.mixed_precision == "bf16"
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (
        kind == "MULTI_GPU",
        kind == "FSDP",
        kind == "DEEPSPEED",
    )
    if kind == "FSDP":
        for key, value in prepare_multi_gpu_env(args).items():
            if key.startswith(("FSDP_", "ACCELERATE_")):
                monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    if kind == "DEEPSPEED":
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        for key, value in prepare_deepspeed_cmd_env(args)[1].items():
            if key.startswith("ACCELERATE_"):
                monkeypatch.setenv(key, value)
        config = DeepSpeedPlugin().deepspeed_config
        assert config["zero_optimization"]["stage"] == 2
        assert config["gradient_accumulation_steps"] == "auto"  # filled from --gradient-accumulation-steps
