"""Output folders: fmhub writes only into folders it owns, one run at a time, never without a loadable checkpoint,
reports a failed write in one line, and resumes only the run a checkpoint belongs to.

The training runs reuse tests/test_engine.py's set-up (the tiny BERT on a small slice of the embedded intents, one CPU
thread, so runs are bit-for-bit reproducible across processes).
"""

# the fixtures intent_data, reference and _one_thread come from test_engine by name (pytest finds them in this module)
# ruff: noqa: F401, F811
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from accelerate import Accelerator
from test_engine import (
    SLOW_TRAIN,
    _one_thread,
    assert_same_run,
    copy_run,
    intent_data,
    last_error_line,
    reference,
    snapshot,
    subprocess_env,
    train_argv,
    with_fault_hook,
)

from fmhub import checkpoints, reports
from fmhub.cli import main
from fmhub.errors import FmhubError
from fmhub.model_folder import OWNER_MARKER, RUN_LOCK, OutputFolder, RunLock
from fmhub.paths import default_model_dir

QUICK = ("--epochs", "1", "--max-steps", "2", "--report-to", "none")


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def foreign_folder(path: Path, names=("model.safetensors", "config.json", "README.md")) -> Path:
    """Someone else's files: a downloaded Hub folder, a hand-made Space."""
    path.mkdir(parents=True)
    for i, name in enumerate(names):
        (path / name).write_bytes(os.urandom(64) + name.encode() + bytes([i]))
    (path / "notes").mkdir()
    (path / "notes" / "keep.txt").write_text("mine\n")
    return path


# -- a folder fmhub did not create ----------------------------------------------------------------------------------
def test_train_into_a_foreign_folder_is_refused_and_touches_nothing(intent_data, tiny_text_backbone, tmp_path, capsys):
    out = foreign_folder(tmp_path / "downloaded")
    before = digests(out)
    started = time.perf_counter()
    assert main(train_argv(intent_data, tiny_text_backbone, out, *QUICK)) == 2
    assert time.perf_counter() - started < 5  # refused before anything was loaded
    line = last_error_line(capsys)
    assert line.startswith(f"fmhub train: error: --output-dir {out} is not empty and was not created by fmhub"), line
    assert "README.md, config.json, model.safetensors" in line and "--overwrite" in line
    assert digests(out) == before  # every file's sha256 unchanged, and no file added (no lock, no marker)


def test_train_with_overwrite_proceeds_and_the_folder_becomes_fmhubs(
    intent_data, tiny_text_backbone, tmp_path, capsys
):
    out = foreign_folder(tmp_path / "downloaded")
    before = digests(out)
    assert main(train_argv(intent_data, tiny_text_backbone, out, *QUICK, "--overwrite")) == 0
    after = digests(out)
    assert after["model.safetensors"] != before["model.safetensors"]
    assert after["notes/keep.txt"] == before["notes/keep.txt"]  # only files of the same name are replaced
    assert OWNER_MARKER in after and RUN_LOCK not in after
    assert OutputFolder(out).is_owned()

    # its own folder: refused only because it holds a run's checkpoints (which --resume continues) ...
    capsys.readouterr()
    assert main(train_argv(intent_data, tiny_text_backbone, out, *QUICK)) == 2
    assert "already holds checkpoints of a run; add --resume" in last_error_line(capsys)
    # ... and once they are cleaned away, training into it again needs no flag
    for ckpt in checkpoints.complete_checkpoints(out):
        shutil.rmtree(ckpt)
    assert main(train_argv(intent_data, tiny_text_backbone, out, *QUICK)) == 0

    # a copy of fmhub's folder (marker included) is not fmhub's folder
    copy = Path(shutil.copytree(out, tmp_path / "copy", ignore=shutil.ignore_patterns("checkpoint-*")))
    before = digests(copy)
    capsys.readouterr()
    assert main(train_argv(intent_data, tiny_text_backbone, copy, *QUICK)) == 2
    assert "was not created by fmhub" in last_error_line(capsys)
    assert digests(copy) == before


def test_the_cached_default_is_retrained_in_place(intent_data, tiny_text_backbone, tmp_path, monkeypatch):
    """No --output-dir: the cache default (what the app trains on first start) is trained aside and swapped in,
    also when it already exists."""
    monkeypatch.setenv("FMHUB_HOME", str(tmp_path / "home"))
    argv = [a for a in train_argv(intent_data, tiny_text_backbone, tmp_path / "unused", *QUICK)]
    at = argv.index("--output-dir")
    del argv[at:at + 2]
    cache = default_model_dir("customer-service")
    for _ in range(2):
        assert main(argv) == 0
        assert (cache / "fmhub.json").is_file() and OutputFolder(cache).is_owned()
        assert not (cache / RUN_LOCK).exists()
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no work folder or backup left


def test_spaces_build_into_a_foreign_folder(tmp_path, capsys):
    out = foreign_folder(tmp_path / "space", names=("app.py", "README.md"))
    before = digests(out)
    argv = ["spaces", "build", "--scenario", "customer-service", "--output-dir", str(out)]
    assert main(argv) == 2
    line = last_error_line(capsys)
    assert line.startswith(f"fmhub spaces: error: --output-dir {out} is not empty and was not created by fmhub"), line
    assert digests(out) == before

    assert main([*argv, "--overwrite"]) == 0
    assert 'build_space_demo("customer-service"' in (out / "app.py").read_text()
    assert (out / "notes" / "keep.txt").read_text() == "mine\n"
    assert main(argv) == 0  # its own folder now: building again needs no flag
    fresh = tmp_path / "new" / "space"
    assert main(["spaces", "build", "--scenario", "customer-service", "--output-dir", str(fresh)]) == 0
    assert (fresh / "fmhub" / "__init__.py").is_file() and OutputFolder(fresh).is_owned()


# -- one run per folder -----------------------------------------------------------------------------------------------
def test_a_second_run_into_a_running_runs_folder_is_refused_at_once(
    reference, intent_data, tiny_text_backbone, tmp_path, capsys
):
    out = tmp_path / "busy"
    argv = train_argv(intent_data, tiny_text_backbone, out)
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        first = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *argv], env=subprocess_env(), stdout=fh,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not checkpoints.complete_checkpoints(out):  # running, with a checkpoint on disk
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads((out / RUN_LOCK).read_text())["pid"] == first.pid
        for extra in ([], ["--resume"], ["--overwrite"]):
            capsys.readouterr()
            started = time.perf_counter()
            assert main([*argv, *extra]) == 2
            assert time.perf_counter() - started < 1.0
            line = last_error_line(capsys)
            assert f"error: another fmhub run (pid {first.pid} on {socket.gethostname()}" in line, line
            assert first.poll() is None
        assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        first.kill()
        first.wait()
    assert not (out / RUN_LOCK).exists()  # removed at the end
    assert_same_run(out, reference)  # the first run is unaffected: bit-identical to a solo run


def test_the_lock_is_atomic_a_stale_one_is_taken_over_and_an_unknown_one_refuses(tmp_path, capsys):
    folder = OutputFolder(tmp_path / "run")
    winners, errors = [], []

    def take():
        try:
            winners.append(folder.lock())
        except FmhubError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(errors) == 7 and all("another fmhub run (pid" in e for e in errors)
    winners[0].release()
    assert not (folder.path / RUN_LOCK).exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    lock_path = folder.path / RUN_LOCK
    lock_path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    capsys.readouterr()
    with folder.lock():
        assert f"taking over the lock of an earlier run in {folder.path} (pid {dead.pid}" in capsys.readouterr().err
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert not lock_path.exists()

    lock_path.write_text(json.dumps({"pid": 1, "host": "another-machine", "started": "earlier"}))
    with pytest.raises(FmhubError, match="another fmhub run \\(pid 1 on another-machine.*delete .*fmhub-run.lock"):
        folder.lock()
    assert json.loads(lock_path.read_text())["host"] == "another-machine"  # not ours: left alone
    RunLock(lock_path).release()  # never acquired: removes nothing
    assert lock_path.exists()


# -- the same step saved again: never a moment without a loadable checkpoint ---------------------------------------
KILL_IN_RESAVE = """
import os, sys
from fmhub import checkpoints, cli, runner
set_aside = checkpoints._set_aside
def set_aside_then_die(final):
    set_aside(final)
    os._exit(9)  # the old checkpoint-<step> is set aside, the new one not yet renamed in
checkpoints._set_aside = set_aside_then_die
seen = set()
def skip_two(step, loss):
    first = step not in seen
    seen.add(step)
    return loss * float("nan") if first and step in (2, 13) else loss
train = runner.train
runner.train = lambda config, **kwargs: train(config, fault_hook=skip_two)
sys.exit(cli.main(sys.argv[1:]))
"""


def skip_two_batches():
    """NaN on batch 2 and batch 14 of the first epoch (the first time steps 2 and 13 come up): step 12 is saved at
    batch 13 (mid-epoch) and again at the epoch end, after the skipped batch 14."""
    seen = set()

    def hook(step, loss):
        first = step not in seen
        seen.add(step)
        return loss * float("nan") if first and step in (2, 13) else loss

    return hook


def test_a_kill_in_the_resave_window_leaves_a_loadable_checkpoint(
    intent_data, tiny_text_backbone, tmp_path, monkeypatch, capsys
):
    extra = ("--save-total-limit", "1", "--nan-policy", "skip", "--report-to", "none")
    out = tmp_path / "killed"
    argv = train_argv(intent_data, tiny_text_backbone, out, *extra)
    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        killed = subprocess.run([sys.executable, "-c", KILL_IN_RESAVE, *argv], env=subprocess_env(), stdout=fh,
                                stderr=subprocess.STDOUT, timeout=600)
    assert killed.returncode == 9, log.read_text()[-3000:]
    assert not (out / "checkpoint-12").exists()  # killed inside the window
    latest = checkpoints.latest(out)
    assert latest == out / ".prev-checkpoint-12", sorted(p.name for p in out.iterdir())  # the old one, set aside
    state = checkpoints.verify(latest, {})["state"]  # complete: every file matches its hash
    assert (state["global_step"], state["epoch"], state["batches_in_epoch"]) == (12, 0, 13)

    with_fault_hook(monkeypatch, skip_two_batches())
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    captured = capsys.readouterr()
    assert f"taking over the lock of an earlier run in {out}" in captured.err
    assert f"resumed from {out / 'checkpoint-12'} (step 12, epoch 0, batch 13 of 14)" in captured.out
    assert not [p for p in out.iterdir() if p.name.startswith((".prev-", ".tmp-", ".old-"))]

    with_fault_hook(monkeypatch, skip_two_batches())
    assert main(train_argv(intent_data, tiny_text_backbone, tmp_path / "whole", *extra)) == 0
    assert_same_run(out, tmp_path / "whole")  # and it ends where the uninterrupted run ends


def test_a_set_aside_checkpoint_stands_in_until_its_replacement_is_in_place(tmp_path):
    def folder(name, manifest=True):
        (tmp_path / name).mkdir()
        if manifest:
            (tmp_path / name / checkpoints.MANIFEST).write_text("{}")
        return tmp_path / name

    folder("checkpoint-4")
    prev = folder(".prev-checkpoint-8")
    folder(".tmp-checkpoint-8")
    assert checkpoints.complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-4", prev]
    checkpoints.remove_leftovers(tmp_path)  # the replacement never arrived: the old one gets its name back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    folder(".prev-checkpoint-4")  # set aside, and the replacement is in place: checkpoint-4 wins, the old one goes
    assert checkpoints.latest(tmp_path) == tmp_path / "checkpoint-8"
    assert checkpoints.complete_checkpoints(tmp_path)[0] == tmp_path / "checkpoint-4"
    checkpoints.remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]


# -- resume only the run a checkpoint belongs to ----------------------------------------------------------------------
def _other_data(data: Path, tmp: Path) -> Path:
    """The same number of rows and labels, one training sentence different."""
    other = Path(shutil.copytree(data, tmp / "other_data"))
    rows = (other / "train.jsonl").read_text().splitlines()
    row = json.loads(rows[5])
    row["text"] = row["text"] + " please"
    rows[5] = json.dumps(row)
    (other / "train.jsonl").write_text("\n".join(rows) + "\n")
    return other


CHANGED_RUNS = {
    "other-data": (lambda data, tmp: ["--data", str(_other_data(data, tmp))], "(data: '"),
    "other-epochs": (lambda data, tmp: ["--epochs", "4"], "(epochs: 3, this run: 4)"),
    "other-learning-rate": (lambda data, tmp: ["--learning-rate", "1e-3"], "(learning_rate: 0.003, this run: 0.001)"),
    "other-scheduler": (lambda data, tmp: ["--scheduler", "cosine"], "(scheduler: 'linear', this run: 'cosine')"),
}


@pytest.mark.parametrize("case", list(CHANGED_RUNS))
def test_a_resume_with_other_data_or_schedule_is_refused(
    case, reference, intent_data, tiny_text_backbone, tmp_path, capsys
):
    extra, message = CHANGED_RUNS[case]
    out = copy_run(reference, tmp_path / "run")
    before = snapshot(out)
    capsys.readouterr()
    argv = [*train_argv(intent_data, tiny_text_backbone, out), *extra(intent_data, tmp_path), "--resume"]
    assert main(argv) == 2
    line = last_error_line(capsys)
    assert "belongs to another run " + message in line and "refusing to resume" in line, line
    assert snapshot(out) == before


# -- a full disk or a permission problem: one line ------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_permission(path, *args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(path))


WRITE_FAILURES = {
    "best-weights": (checkpoints, "save_file", _no_space, "cannot write the best weights "),
    "checkpoint": (Accelerator, "save_state", _no_space, "cannot write checkpoint "),
    "model-folder": (reports, "write_json", _no_permission, "cannot write the model folder "),
}


@pytest.mark.parametrize("case", list(WRITE_FAILURES))
def test_a_write_error_while_saving_is_one_clear_line(case, intent_data, tiny_text_backbone, tmp_path, monkeypatch,
                                                      capsys):
    owner, name, failure, message = WRITE_FAILURES[case]
    monkeypatch.setattr(owner, name, failure)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(train_argv(intent_data, tiny_text_backbone, out, *QUICK)) == 2
    line = last_error_line(capsys)  # also asserts: no traceback
    assert line.startswith("fmhub train: error: " + message), line
    reason = "No space left on device; free some disk space" if failure is _no_space else "Permission denied"
    assert reason in line, line
    assert not (out / RUN_LOCK).exists()  # the lock goes on error too
