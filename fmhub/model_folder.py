"""The saved model folder and its one owner: `ModelFolder` writes and reads the manifest (`fmhub.json`: scenario,
backbone, labels, calibrated settings, test metrics) and checks that the label maps agree. `OutputFolder` guards the
folders fmhub writes into (ownership marker, run lock, write errors as one line).

The folder itself is the ecosystem's standard layout (config.json with labels, model.safetensors, tokenizer or
processor files, README.md model card); the manifest adds what only fmhub uses. Reads are cached and re-read only
when the file changes, so a tab can ask for it on every request.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from fmhub.errors import FmhubError

MANIFEST = "fmhub.json"
_CACHE: dict[Path, tuple[int, dict]] = {}
_CACHE_LOCK = threading.Lock()


class ModelFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_fmhub_model(self) -> bool:
        return self.manifest_path.is_file()

    def is_model(self) -> bool:
        """An fmhub folder or any folder with a config.json (a model saved by other tools)."""
        return self.is_fmhub_model() or (self.path / "config.json").is_file()

    # -- the manifest ---------------------------------------------------------------------------------------------
    def read(self) -> dict:
        """The manifest; a clear error when the folder has none or it is damaged."""
        path = self.manifest_path
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            raise FmhubError(f"{self.path} is not an fmhub model folder (no {MANIFEST}); "
                             "train one with `fmhub train --output-dir ...`") from None
        key = path.resolve()
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as err:
            raise FmhubError(f"{self.path}: {MANIFEST} is not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise FmhubError(f"{self.path}: {MANIFEST} is not a JSON object")
        with _CACHE_LOCK:
            _CACHE[key] = (stamp, record)
        return record

    def read_or_empty(self) -> dict:
        return self.read() if self.is_fmhub_model() else {}

    def write(self, record: dict) -> None:
        from fmhub.reports import write_json

        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest_path, record)

    @property
    def scenario(self) -> str | None:
        return self.read_or_empty().get("scenario")

    @property
    def label_names(self) -> list[str]:
        return list(self.read_or_empty().get("label_names") or [])

    def summary(self) -> dict:
        """Backbone, data and test metrics, for display."""
        record = self.read_or_empty()
        return {"backbone": record.get("backbone"), "data": record.get("data") or "embedded default",
                "test_metrics": record.get("test_metrics", {})}

    def check_trained_for(self, scenario: str, ref: str | None = None) -> None:
        trained_for = self.scenario
        if trained_for and trained_for != scenario:
            raise FmhubError(f"{ref or self.path} is a {trained_for} model, not a {scenario} one; "
                             f"pick --scenario {trained_for}")

    # -- consistency before anything leaves the machine ----------------------------------------------------------
    def check_label_maps(self) -> list[str]:
        """The label map must agree everywhere before anything is uploaded; returns the label names."""
        if not self.is_fmhub_model() or not (self.path / "config.json").is_file():
            raise FmhubError(f"{self.path} is not an fmhub model folder (needs {MANIFEST} and config.json); "
                             "train one with `fmhub train --output-dir ...`")
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise FmhubError(f"{self.path}: config.json is not valid JSON ({err})") from None
        names = self.label_names
        if "id2label" in config:
            id2label = {str(k): v for k, v in config["id2label"].items()}
            if id2label != {str(i): n for i, n in enumerate(names)}:
                raise FmhubError(f"label maps disagree: config.json id2label {list(id2label.values())[:4]}... vs "
                                 f"{MANIFEST} label_names {names[:4]}...; re-save the model with fmhub")
            label2id = config.get("label2id", {})
            if {k: int(v) for k, v in label2id.items()} != {n: i for i, n in enumerate(names)}:
                raise FmhubError("label maps disagree: config.json label2id is not the inverse of id2label")
        if "label_names" in config and list(config["label_names"]) != names:
            raise FmhubError(f"label maps disagree: config.json label_names differs from {MANIFEST}")
        if not names or any(re.fullmatch(r"LABEL_\d+", str(n)) for n in names):
            raise FmhubError("the model has placeholder labels (LABEL_0, ...); give real label names before pushing")
        return names


# -- folders fmhub writes into: ownership, the run lock, write errors -------------------------------------------------
OWNER_MARKER = ".fmhub-owner.json"
RUN_LOCK = ".fmhub-run.lock"
_OWN_FILES = (OWNER_MARKER, RUN_LOCK)
_WRITE_FAILURE = re.compile(r"write failed|failed writing|IoError|No space left|Permission denied|Read-only", re.I)


class OutputFolder:
    """A folder fmhub writes into: a training run's `--output-dir` or a built Space folder.

    fmhub writes only into a folder that is missing or empty, that it created itself, or that the user hands over
    with `--overwrite`: a downloaded Hub folder or someone's own files are never silently replaced. Ownership is the
    marker `.fmhub-owner.json`, which records the folder's inode, so a copy or a download of an fmhub folder (marker
    included) does not count as fmhub's. One training run at a time holds `.fmhub-run.lock` (pid and host).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.flag = "--output-dir"  # how messages name the folder: both train and spaces build take it so

    @property
    def marker(self) -> Path:
        return self.path / OWNER_MARKER

    def is_owned(self) -> bool:
        try:
            record = json.loads(self.marker.read_text(encoding="utf-8"))
            return isinstance(record, dict) and record.get("folder_inode") == self.path.stat().st_ino
        except (OSError, ValueError, UnicodeDecodeError):
            return False

    def foreign_entries(self) -> list[str]:
        """What keeps fmhub from writing here: the folder's entries, unless it is fmhub's own (or missing)."""
        if not self.path.is_dir() or self.is_owned():
            return []
        return sorted(p.name for p in self.path.iterdir() if not p.name.startswith(_OWN_FILES))  # + a marker's .tmp

    def check_writable(self, overwrite: bool) -> None:
        """Refuse (nothing written) a non-empty folder fmhub did not create, unless `overwrite`."""
        if self.path.exists() and not self.path.is_dir():
            raise FmhubError(f"{self.flag} {self.path} exists and is not a folder")
        foreign = self.foreign_entries()
        if foreign and not overwrite:
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            raise FmhubError(
                f"{self.flag} {self.path} is not empty and was not created by fmhub (it holds {shown}); "
                "choose an empty folder, or add --overwrite to write into it (files of the same name are replaced)"
            )

    def claim(self) -> None:
        """Create the folder if needed and mark it as fmhub's (atomically: a crash leaves the old marker or none)."""
        with write_errors(f"{self.flag} {self.path}"):
            self.path.mkdir(parents=True, exist_ok=True)
            record = {"created_by": "fmhub", "folder_inode": self.path.stat().st_ino}
            tmp = self.path / f"{OWNER_MARKER}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
            os.replace(tmp, self.marker)

    def check_unlocked(self) -> None:
        """Refuse when a live run holds this folder's lock (read-only: nothing is written)."""
        holder = RunLock(self.path / RUN_LOCK).holder()
        if holder is not None and holder.alive():
            raise FmhubError(holder.busy_message(self.path))

    def lock(self) -> RunLock:
        lock = RunLock(self.path / RUN_LOCK)
        with write_errors(f"{self.flag} {self.path}"):
            self.path.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        return lock


class _Holder:
    def __init__(self, record: dict | None, path: Path):
        self.record, self.path = record or {}, path

    @property
    def pid(self) -> int | None:
        pid = self.record.get("pid")
        return pid if isinstance(pid, int) else None

    def alive(self) -> bool:
        """True unless the holder is known dead: a pid on this host that no longer runs."""
        if self.pid is None or self.record.get("host") != socket.gethostname():
            return True  # unreadable, or another machine's run: cannot tell, so it is treated as running
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # runs as another user
        return True

    def busy_message(self, folder: Path) -> str:
        who = (f"pid {self.pid} on {self.record.get('host')}, started {self.record.get('started')}"
               if self.pid is not None else "an unknown process")
        return (f"another fmhub run ({who}) is training into {folder}; wait for it to end or choose another "
                f"--output-dir (if no run is going, delete {self.path})")


class RunLock:
    """`<folder>/.fmhub-run.lock`, created atomically (one winner), holding pid, host and start time.

    A lock left by a dead process on this host (killed, power cut) is taken over with a note; a lock of a live
    process, of another host, or that cannot be read refuses the run. `release()` removes it only while it is ours.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._record: dict | None = None

    def holder(self) -> _Holder | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return _Holder(None, self.path)
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        return _Holder(record if isinstance(record, dict) else None, self.path)

    def acquire(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": os.urandom(8).hex()}
        for _ in range(3):
            try:
                self._create(record)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                if holder.alive():
                    raise FmhubError(holder.busy_message(self.path.parent)) from None
                print(f"fmhub: note: taking over the lock of an earlier run in {self.path.parent} "
                      f"(pid {holder.pid} is no longer running)", file=sys.stderr)
                self._remove_if(holder.record)
                continue
            self._record = record
            return
        raise FmhubError(f"could not take the lock {self.path}; another run is starting in the same folder")

    def _create(self, record: dict) -> None:
        """Written aside, then hard-linked into place (fails if the lock exists): never seen half-written. Where the
        file system has no hard links, O_CREAT|O_EXCL."""
        text = json.dumps(record) + "\n"
        tmp = self.path.with_name(f"{self.path.name}.{record['token']}.tmp")
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, self.path)
            return
        except FileExistsError:
            raise
        except OSError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)

    def release(self) -> None:
        if self._record is not None:
            self._remove_if(self._record)
            self._record = None

    def _remove_if(self, record: dict) -> None:
        holder = self.holder()
        if holder is not None and holder.record == record:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def write_errors(what: str):
    """A full disk or a permission problem while writing `what` becomes one clear line (FmhubError), no traceback.

    torch's and safetensors' writers report a failed write as RuntimeError / SafetensorError: those count too.
    """
    try:
        yield
    except OSError as err:
        raise FmhubError(describe_write_error(err, what)) from None
    except Exception as err:
        if isinstance(err, FmhubError) or not _WRITE_FAILURE.search(str(err)):
            raise
        raise FmhubError(describe_write_error(err, what)) from None


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)
WRITE_ERRNOS = DISK_FULL + NOT_ALLOWED  # the OSErrors that become one line saying what to do


def describe_write_error(err: Exception, what: str) -> str:
    code = getattr(err, "errno", None)
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0][:200] or type(err).__name__
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    if code in DISK_FULL or "space" in reason.lower():
        hint = "free some disk space or choose another folder"
    elif code in NOT_ALLOWED or "permission" in reason.lower():
        hint = "check the folder's permissions or choose another folder"
    else:
        hint = "check the disk and the folder"
    return f"cannot write {what}: {reason}{where}; {hint}"
