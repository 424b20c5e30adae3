"""Lazy, per-tab model loading for the app, with first-run fine-tuning of the embedded defaults in the background.

A tab asks its `ModelSlot` for a Predictor. If the model is cached it loads on first use; if it is the embedded default
and nothing is cached yet, one background worker fine-tunes the defaults one after another (2 cores are better used
sequentially), each in a child process, and the tab shows "preparing the model, n%" until it is ready.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import traceback
from pathlib import Path

from fmhub.model_folder import ModelFolder
from fmhub.paths import default_model_dir

log = logging.getLogger("fmhub.app")


class ModelNotReady(Exception):
    """The model is still being prepared; the message says how far along it is."""


class ModelSlot:
    def __init__(self, scenario: str, model_ref: str | None = None):
        self.scenario, self.model_ref = scenario, model_ref
        self.fraction, self.error = 0.0, None
        self.preparing = False
        self._predictor = None
        self._lock = threading.Lock()

    @property
    def is_default(self) -> bool:
        return self.model_ref is None

    def cached(self) -> bool:
        return not self.is_default or ModelFolder(default_model_dir(self.scenario)).is_fmhub_model()

    def folder(self) -> Path | None:
        if self.is_default:
            return default_model_dir(self.scenario) if self.cached() else None
        path = Path(self.model_ref).expanduser()
        return path if path.is_dir() else None

    def status(self) -> str:
        if self._predictor is not None:
            return "ready"
        if self.error:
            return f"error: {self.error}"
        if self.preparing or not self.cached():
            return f"preparing the model, {int(self.fraction * 100)}%"
        return "not loaded yet (loads on first use)"

    def get(self):
        """The Predictor, loading it on first use. Raises ModelNotReady while the default is being fine-tuned."""
        if self._predictor is not None:
            return self._predictor
        if not self.cached():
            BOOTSTRAP.request(self)
            raise ModelNotReady(f"preparing the model, {int(self.fraction * 100)}% - please try again shortly")
        with self._lock:
            if self._predictor is None:
                from fmhub.serving import load_predictor

                self._predictor = load_predictor(self.scenario, self.model_ref)
        return self._predictor


class _Bootstrap:
    """One worker thread that fine-tunes the embedded defaults that are missing, in request order, each in a child
    process (`python -m fmhub.bootstrap SCENARIO`, see `fmhub.bootstrap` for why) whose progress lines it reads."""

    def __init__(self, command=None):
        # command(scenario) -> argv of the child; replaceable so the worker itself can be tested without training
        self.command = command or (lambda scenario: [sys.executable, "-m", "fmhub.bootstrap", scenario])
        self._queue: queue.Queue[ModelSlot] = queue.Queue()
        self._requested: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self, slot: ModelSlot) -> None:
        with self._lock:
            if slot.scenario in self._requested or slot.cached() or not slot.is_default:
                return
            self._requested.add(slot.scenario)
            slot.preparing = True
            self._queue.put(slot)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fmhub-bootstrap", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            slot = self._queue.get()
            try:
                log.warning("fine-tuning the embedded %s default (first run only)", slot.scenario)
                self._prepare(slot)
            except Exception:  # keep serving the other tabs; the traceback goes to the console only
                log.error("preparing %s failed:\n%s", slot.scenario, traceback.format_exc())
                slot.error = "preparing the model failed; see the server console"
            finally:
                slot.preparing = False

    def _prepare(self, slot: ModelSlot) -> None:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # so the child finds fmhub even when not installed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        error = None
        with subprocess.Popen(self.command(slot.scenario), stdout=subprocess.PIPE, text=True, env=env) as child:
            for line in child.stdout:
                if line.startswith("progress "):
                    try:
                        slot.fraction = min(max(float(line.split()[1]), 0.0), 0.99)
                    except (IndexError, ValueError):
                        pass
                elif line.startswith("error "):
                    error = line[len("error ") :].strip()
                else:
                    sys.stdout.write(line)
                    sys.stdout.flush()
        if child.returncode == 0 and slot.cached():
            slot.fraction = 1.0
        elif error:
            slot.error = error
        else:
            log.error("preparing %s failed: the training process exited with status %s", slot.scenario,
                      child.returncode)
            slot.error = "preparing the model failed; see the server console"


BOOTSTRAP = _Bootstrap()
