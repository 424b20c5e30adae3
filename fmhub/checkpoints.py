"""Training checkpoints that are safe to resume from.

A checkpoint is `<output-dir>/checkpoint-<step>/`: Accelerate's state (model, optimizer, scheduler, RNG, sampler)
plus `fmhub_checkpoint.json`, a manifest with the run's identity (scenario, backbone, labels), the loop state (epoch,
position inside the epoch, best metric) and the SHA-256 of every file. It is written to a temporary folder and renamed
when complete, so a crash mid-save never leaves a folder that looks complete. Accelerate's `load_state` unpickles RNG
state, so a checkpoint is only loaded when its manifest matches the run and every file matches its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from fmhub.errors import FmhubError

MANIFEST = "fmhub_checkpoint.json"
BEST = "best_model.safetensors"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def save(accelerator: Accelerator, model, output_dir: Path, state: dict, identity: dict, keep: int) -> Path:
    """Write checkpoint-<step> atomically (temporary folder, manifest last, then rename); keep the newest `keep`."""
    _check_finite(model, state)
    step = state["global_step"]
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest = {"format": 1, "identity": identity, "state": state, "files": _file_hashes(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, default=float))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _check_finite(model, state: dict) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FmhubError(f"refusing to save a checkpoint at step {state['global_step']}: weight {name} is not finite")


def _fsync_dir(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders with a manifest, oldest first. Temporary or partial folders are ignored."""
    if output_dir is None or not Path(output_dir).is_dir():
        return []
    found = []
    for path in Path(output_dir).iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / MANIFEST).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest(output_dir: Path | None) -> Path | None:
    found = complete_checkpoints(output_dir) if output_dir else []
    return found[-1] if found else None


def verify(path: Path, identity: dict) -> dict:
    """Check that `path` is a complete checkpoint of this run; return its manifest. Raises FmhubError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise FmhubError(f"not a checkpoint folder: {path}")
    if not (path / MANIFEST).is_file():
        raise FmhubError(f"{path} is not a complete fmhub checkpoint (no {MANIFEST}); refusing to load it")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError:
        raise FmhubError(f"{path}/{MANIFEST} is corrupted; refusing to load the checkpoint") from None
    theirs = manifest.get("identity", {})
    for key, ours in identity.items():
        if theirs.get(key) != ours:
            raise FmhubError(
                f"{path} belongs to another run ({key}: {theirs.get(key)!r}, this run: {ours!r}); refusing to resume"
            )
    actual = _file_hashes(path)
    if actual != manifest.get("files"):
        bad = sorted(set(actual.items()) ^ set(manifest.get("files", {}).items()))
        raise FmhubError(f"{path} is corrupted or was modified ({bad[0][0] if bad else '?'}); refusing to load it")
    return manifest


def load(accelerator: Accelerator, path: Path, identity: dict) -> dict:
    """Verify, then restore model/optimizer/scheduler/RNG; returns the loop state saved with it."""
    manifest = verify(path, identity)
    accelerator.load_state(str(path))
    return manifest["state"]


def save_best_weights(output_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".{BEST}.tmp"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    os.replace(tmp, output_dir / BEST)


def load_best_weights(output_dir: Path) -> dict[str, torch.Tensor] | None:
    path = Path(output_dir) / BEST
    return load_file(str(path)) if path.is_file() else None
