"""Training checkpoints that are safe to resume from.

A checkpoint is `<output-dir>/checkpoint-<step>/`: Accelerate's state (model, optimizer, scheduler, RNG, accumulation
counter), the best weights so far (`best_model.safetensors`, hard-linked when the file system allows, so an unchanged
best costs no space) and `fmhub_checkpoint.json`, a manifest with the run's identity (scenario, backbone, labels, the
settings that fix the data order), the loop state (epoch, position inside the epoch, best metric, early-stopping
counter, history) and the SHA-256 of every file.

It is written to `.tmp-checkpoint-<step>/` and renamed when complete; old checkpoints are renamed away before they are
deleted. So a crash at any moment leaves only folders that are complete or that `latest()` ignores. The same step saved
again (`--save-total-limit 1` keeps nothing else) is never a window without a loadable checkpoint: the old folder is
first renamed, whole, to `.prev-checkpoint-<step>/`, which `latest()` takes while `checkpoint-<step>/` is missing, and
deleted only once the new one is in place; the next run renames it back if it was left alone.

Accelerate's `load_state` unpickles the optimizer, scheduler and RNG files (with torch's `weights_only` loader), so a
checkpoint is only loaded when its manifest matches the run and every file matches its hash: nothing from a partial,
foreign or modified folder is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import load as load_pickled  # torch.load(weights_only=True) + Accelerate's allow-list
from safetensors.torch import load_file, save_file

from fmhub.errors import FmhubError, TrainingDiverged
from fmhub.model_folder import write_errors

MANIFEST = "fmhub_checkpoint.json"
BEST = "best_model.safetensors"
FORMAT = 2
_NAME = re.compile(r"^checkpoint-(\d+)$")
_PREV_NAME = re.compile(r"^\.prev-checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
_TRASH_PREFIX = ".old-checkpoint-"
_PREV_PREFIX = ".prev-checkpoint-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_hashes(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {str(p.relative_to(folder)): _sha256(p) for p in files}


# -- what a checkpoint must share with the run that resumes it --------------------------------------------------------
def data_fingerprint(data, label_names: list[str]) -> str:
    """A cheap digest of the run's data: the label list, every split's size and labels, every text column in full and
    an evenly spaced sample of the other columns (images, audio), so other data of the same size is told apart."""
    digest = hashlib.sha256(json.dumps(list(label_names)).encode())
    for name in sorted(data):
        split = data[name]
        digest.update(f"|{name}:{len(split)}|".encode())
        if not len(split):
            continue
        features = split.features
        texts = [c for c, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        others = [c for c in features if c not in texts and c != "label"]
        if "label" in features:
            digest.update(np.asarray(split["label"], dtype=np.int64).tobytes())
        for column in texts:
            for text in split[column]:
                digest.update(f"{len(text or '')}:{text}".encode("utf-8", "surrogatepass"))
        if others:
            rows = sorted({round(i * (len(split) - 1) / 31) for i in range(32)})
            for row in split.select(rows).select_columns(others).with_format("numpy"):
                for column in others:
                    _feed(digest, row[column])
    return digest.hexdigest()[:16]


def _feed(digest, value) -> None:
    if isinstance(value, np.ndarray) and value.dtype != object:
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            digest.update(str(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple, np.ndarray)):
        digest.update(f"[{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, bytes):
        digest.update(value)
    elif hasattr(value, "tobytes"):  # a PIL image
        digest.update(value.tobytes())
    else:
        digest.update(repr(value).encode("utf-8", "surrogatepass"))


# -- saving -----------------------------------------------------------------------------------------------------------
def save(
    accelerator: Accelerator,
    model,
    output_dir: Path,
    state: dict,
    identity: dict,
    keep: int,
    best_file: Path | None = None,
) -> Path:
    """Write checkpoint-<step> atomically (temporary folder, manifest last, then rename); keep the newest `keep`.

    Every process calls this (Accelerate writes one RNG file per process); the main process does the file work.
    """
    check_finite(model.state_dict(), f"a checkpoint at step {state['global_step']}")
    step = state["global_step"]
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"{_TMP_PREFIX}{step}"
    with write_errors(f"checkpoint {final}"):
        if accelerator.is_main_process:
            remove_leftovers(output_dir)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if best_file is not None and best_file.is_file():
                _link_or_copy(best_file, tmp / BEST)
            manifest = {"format": FORMAT, "identity": identity, "state": state, "files": _file_hashes(tmp)}
            _fsync_files(tmp)
            (tmp / MANIFEST).write_text(json.dumps(manifest, default=float))
            _fsync_files(tmp, only=MANIFEST)
            _put_in_place(tmp, final)
            for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
                _discard(old)
    accelerator.wait_for_everyone()
    return final


def _put_in_place(new: Path, final: Path) -> None:
    """Rename the complete folder `new` to `final`; a complete checkpoint of this step is on disk at every moment.

    A folder cannot be renamed over a non-empty one, so an existing `final` (the same step saved again, e.g. after
    skipped batches) is first set aside whole as `.prev-checkpoint-<step>`, which `latest()` takes while `final` is
    missing, and deleted only after `new` is in place.
    """
    previous = _set_aside(final) if final.exists() else None
    os.replace(new, final)
    _fsync_dir(final.parent)
    if previous is not None:
        _discard(previous)


def _set_aside(final: Path) -> Path:
    previous = final.with_name(_PREV_PREFIX + final.name.removeprefix("checkpoint-"))
    if previous.exists():
        _discard(previous)
    os.replace(final, previous)
    _fsync_dir(final.parent)
    return previous


def check_finite(weights: dict[str, torch.Tensor], what: str) -> None:
    """NaN/Inf weights are never saved, tested or pushed."""
    for name, tensor in weights.items():
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a shard, under FSDP
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TrainingDiverged(f"refusing to keep {what}: weight {name} is not finite (NaN/Inf)")


def remove_leftovers(output_dir: Path) -> None:
    """Tidy what a crash can leave behind: unfinished `.tmp-checkpoint-*` and half-deleted `.old-checkpoint-*` are
    deleted; a `.prev-checkpoint-<step>` set aside for a re-save of its step gets its name back when the new one never
    arrived, and is deleted when it did."""
    for path in sorted(Path(output_dir).glob(".*-checkpoint-*")):
        if path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
    for path in sorted(Path(output_dir).glob(_PREV_PREFIX + "*")):
        final = path.with_name("checkpoint-" + path.name.removeprefix(_PREV_PREFIX))
        if (final / MANIFEST).is_file() or not (path / MANIFEST).is_file():
            _discard(path)
        else:
            if final.exists():
                _discard(final)
            os.replace(path, final)
            _fsync_dir(final.parent)


def remove_run(output_dir: Path) -> None:
    """`--overwrite` in a folder holding a run: its checkpoints (complete or not) and best weights go first."""
    for path in sorted(Path(output_dir).iterdir()):
        if _NAME.match(path.name) and path.is_dir():
            _discard(path)  # renamed first: an interrupted delete never looks like a checkpoint
        elif path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX, _PREV_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
    (Path(output_dir) / BEST).unlink(missing_ok=True)


def _discard(folder: Path) -> None:
    """Rename first, then delete: an interrupted delete never leaves a half-empty folder that looks complete."""
    step = folder.name.removeprefix(_PREV_PREFIX).removeprefix("checkpoint-")
    trash = folder.with_name(_TRASH_PREFIX + step)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _fsync_files(folder: Path, only: str | None = None) -> None:
    for path in folder.rglob(only or "*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory
    finally:
        os.close(fd)


# -- finding and loading ----------------------------------------------------------------------------------------------
def complete_checkpoints(output_dir: Path | None) -> list[Path]:
    """Checkpoint folders with a manifest, oldest first, one per step. Temporary or partial folders are ignored; a
    `.prev-checkpoint-<step>` (set aside, whole, while its step was saved again) stands in for a missing
    `checkpoint-<step>`."""
    if output_dir is None or not Path(output_dir).is_dir():
        return []
    found: dict[int, Path] = {}
    for path in sorted(Path(output_dir).iterdir(), key=lambda p: p.name.startswith(".")):  # checkpoint-N first
        match = _NAME.match(path.name) or _PREV_NAME.match(path.name)
        if match and path.is_dir() and (path / MANIFEST).is_file():
            found.setdefault(int(match.group(1)), path)
    return [found[step] for step in sorted(found)]


def latest(output_dir: Path | None) -> Path | None:
    found = complete_checkpoints(output_dir) if output_dir else []
    return found[-1] if found else None


def verify(path: Path, identity: dict) -> dict:
    """Check that `path` is a complete checkpoint of this run; return its manifest. Raises FmhubError otherwise.

    Reads only JSON and raw bytes: nothing is unpickled here.
    """
    path = Path(path)
    if not path.is_dir():
        raise FmhubError(f"not a checkpoint folder: {path}")
    if not (path / MANIFEST).is_file():
        raise FmhubError(f"{path} is not a complete fmhub checkpoint (no {MANIFEST}); refusing to load it")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FmhubError(f"{path}/{MANIFEST} is corrupted; refusing to load the checkpoint") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "state" not in manifest:
        raise FmhubError(f"{path}/{MANIFEST} is not an fmhub checkpoint manifest; refusing to load it")
    theirs = manifest.get("identity") or {}
    differs = [
        f"{key}: {theirs[key]!r}, this run: {ours!r}" if key in theirs else f"{key}: not recorded, this run: {ours!r}"
        for key, ours in identity.items()
        if theirs.get(key) != ours
    ]
    if differs:
        raise FmhubError(
            f"{path} belongs to another run ({'; '.join(differs)}); refusing to resume. Resume with the run's own "
            "data and settings, or train into another --output-dir"
        )
    actual = _file_hashes(path)
    if actual != manifest["files"]:
        expected = {(str(name), str(digest)) for name, digest in manifest["files"].items()}
        bad = sorted({name for name, _ in set(actual.items()) ^ expected})
        hint = ""
        earlier = [p for p in complete_checkpoints(path.parent) if p.name != path.name]
        if earlier:
            hint = f"; an earlier one can be named with --resume-from {earlier[-1]}"
        raise FmhubError(
            f"{path} is corrupted or was modified ({', '.join(bad[:3])} does not match its hash); "
            f"refusing to load it{hint}"
        )
    return manifest


def load(accelerator: Accelerator, path: Path, identity: dict) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Verify, then restore model/optimizer/scheduler/RNG; returns (loop state, best weights or None)."""
    manifest = verify(path, identity)
    path = Path(path)
    try:
        # Accelerate swallows a failure to restore the RNG (the run would quietly stop being reproducible), so the
        # file is read first, with the same weights-only loader, and the result checked after load_state
        rng = load_pickled(path / f"random_states_{accelerator.process_index}.pkl")
        accelerator.load_state(str(path))
        best = load_file(str(path / BEST)) if (path / BEST).is_file() else None
    except Exception as err:  # a file that hashes right but does not load (another Accelerate version, ...)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise FmhubError(f"cannot load checkpoint {path}: {first}") from None
    if not torch.equal(torch.get_rng_state(), rng["torch_manual_seed"]):
        raise FmhubError(f"cannot load checkpoint {path}: its random number generator state did not load")
    return manifest["state"], best


# -- the best weights so far ------------------------------------------------------------------------------------------
def save_best_weights(output_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    """`<output-dir>/best_model.safetensors`, replaced atomically: a new file, so hard links in checkpoints stay."""
    with write_errors(f"the best weights {output_dir / BEST}"):
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / f".{BEST}.tmp"
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
        os.replace(tmp, output_dir / BEST)


def restore_best_weights(checkpoint: Path, output_dir: Path) -> None:
    """On resume: the output folder's best weights become the checkpoint's (a crash may have left newer ones)."""
    source, target = Path(checkpoint) / BEST, Path(output_dir) / BEST
    if not source.is_file():
        target.unlink(missing_ok=True)
        return
    with write_errors(f"the best weights {target}"):
        tmp = Path(output_dir) / f".{BEST}.tmp"
        tmp.unlink(missing_ok=True)
        _link_or_copy(source, tmp)
        os.replace(tmp, target)
