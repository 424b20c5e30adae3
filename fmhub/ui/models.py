"""Lazy, per-tab model loading for the app, with first-run fine-tuning of the embedded defaults in the background.

A tab asks its `ModelSlot` for a Predictor. If the model is cached it loads on first use; if it is the embedded default
and nothing is cached yet, one background worker fine-tunes the defaults one after another (2 cores are better used
sequentially), each in a child process, and the tab shows "preparing the model, n%" until it is ready.

A load or a first-run fine-tune that fails is not tried again on every request: the slot waits LOAD_RETRY_SECONDS
(the tab says so, and when), then the next request tries again, so a repaired folder is picked up without a restart.
No lock is held while a model loads or downloads: requests for the same slot wait for that one load (at most
LOAD_WAIT_SECONDS), other slots and tabs are not held up.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from fmhub.model_folder import ModelFolder
from fmhub.paths import default_model_dir

log = logging.getLogger("fmhub.app")

LOAD_RETRY_SECONDS = 30.0  # after a failed load or fine-tune, at most one new attempt per slot in this time
LOAD_WAIT_SECONDS = 20.0  # a request that finds its model loading waits this long for it, then is told to come back
REFUSALS_PER_SECOND = 0.5  # a slot that cannot answer refuses at most this many requests a second...
MAX_REFUSAL_WAIT_SECONDS = 5.0  # ...each waiting its turn for at most this long (the first one does not wait)
MAX_LOGGED_CHARS = 4000  # one failure never writes more than this to the server log (a traceback is cut in the middle)


class ModelNotReady(Exception):
    """The model is still being prepared; the message says how far along it is."""


class ModelLoadFailed(ModelNotReady):
    """The model failed to load (or to be prepared); the message says why, in public words, and when it retries."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_log_text(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`text` cut to `limit` characters, keeping its start and end (a traceback's last line names the error)."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}\n... [{len(text) - limit} characters left out] ...\n{text[-limit // 2 :]}"


class ModelSlot:
    def __init__(self, scenario: str, model_ref: str | None = None, runtime: str | None = None):
        self.scenario, self.model_ref, self.runtime = scenario, model_ref, runtime
        self.fraction, self.error = 0.0, None  # error: the first-run fine-tune failed (why, one line)
        self.preparing = False
        self.failed_at = 0.0  # time.monotonic() of the last failed load or fine-tune
        self.load_error: str | None = None  # the last load failed (why, one line); None once loaded
        self.load_attempts = 0
        self._predictor = None
        self.reply_writer = None  # customer service under --replies generate: fmhub.replies.ReplyWriter
        self._next_refusal = 0.0  # time.monotonic() from which the next refusal may be answered
        self._loading: threading.Event | None = None  # set while a load runs; other requests wait on it
        self._lock = threading.Lock()  # guards the fields above only, never held across a load

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

    def retry_in(self) -> float:
        """Seconds until a failed load or fine-tune may be tried again (0: now)."""
        return max(0.0, self.failed_at + LOAD_RETRY_SECONDS - time.monotonic())

    def _retry_words(self) -> str:
        wait = self.retry_in()
        return f"next attempt in {math.ceil(wait)} s" if wait > 0 else "it is tried again on the next request"

    def status(self) -> str:
        if self._predictor is not None:
            return "ready"
        if self.load_error:
            return f"failed to load: {self.load_error}; {self._retry_words()}"
        if self.error:
            return f"error: {self.error}"
        if self.preparing or not self.cached():
            return f"preparing the model, {int(self.fraction * 100)}%"
        return "not loaded yet (loads on first use)"

    def get(self):
        """The Predictor, loading it on first use. Raises ModelNotReady while the default is being fine-tuned, and
        ModelLoadFailed (without trying) within LOAD_RETRY_SECONDS of a failed load or fine-tune."""
        if self._predictor is not None:
            return self._predictor
        if not self.cached():
            if self.error and not self.preparing and self.retry_in() > 0:
                self._refuse(ModelLoadFailed(f"preparing the model failed ({self.error}); {self._retry_words()}"))
            BOOTSTRAP.request(self)
            self._refuse(ModelNotReady(f"preparing the model, {int(self.fraction * 100)}% - please try again shortly"))
        failed = None
        with self._lock:
            if self._predictor is not None:
                return self._predictor
            loading = self._loading
            if loading is None:
                if self.load_error and self.retry_in() > 0:
                    failed = ModelLoadFailed(f"the model failed to load ({self.load_error}); {self._retry_words()}")
                else:
                    self._loading = threading.Event()
                    self.load_attempts += 1
        if failed is not None:
            self._refuse(failed)
        if loading is not None:  # someone else is loading it: wait for that load, holding no lock
            if not loading.wait(LOAD_WAIT_SECONDS):
                raise ModelNotReady("the model is still loading - please try again in a moment")
            return self.get()
        return self._load()

    def serve(self, predictor) -> None:
        """Answer with `predictor` from now on: one loaded and placed by the host (a ZeroGPU Space at start-up)."""
        with self._lock:
            self._predictor, self.load_error = predictor, None

    def _refuse(self, err: ModelNotReady):
        """Raise `err` once this slot's turn to refuse comes: refusals are paced at REFUSALS_PER_SECOND, so clients
        that retry in a loop cannot keep the cores busy with answers that the model cannot help (no lock held)."""
        with self._lock:
            now = time.monotonic()
            turn = max(now, min(self._next_refusal, now + MAX_REFUSAL_WAIT_SECONDS))
            self._next_refusal = turn + 1.0 / REFUSALS_PER_SECOND
        if turn > now:
            time.sleep(turn - now)
        raise err

    def _load(self):
        from fmhub.errors import FmhubError
        from fmhub.serving import load_predictor

        predictor = None
        try:
            predictor = load_predictor(self.scenario, self.model_ref, self.runtime)
        except Exception as err:
            log.error("loading the %s model failed (attempt %d; the next one in %.0f s at the earliest):\n%s",
                      self.scenario, self.load_attempts, LOAD_RETRY_SECONDS, bounded_log_text(traceback.format_exc()))
            # an FmhubError is written for users (callers still make it public); anything else stays in the log
            reason = _one_line(err) if isinstance(err, FmhubError) else "unexpected error, see the server log"
            with self._lock:
                self.load_error, self.failed_at = reason, time.monotonic()
            raise ModelLoadFailed(f"the model failed to load ({reason}); {self._retry_words()}") from None
        finally:
            with self._lock:
                if predictor is not None:
                    self._predictor, self.load_error = predictor, None
                self._loading, loading = None, self._loading
            loading.set()
        return predictor


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
        """Queue `slot`'s fine-tune once; after a failure, again only once LOAD_RETRY_SECONDS have passed."""
        with self._lock:
            if slot.scenario in self._requested or slot.cached() or not slot.is_default:
                return
            if slot.error and slot.retry_in() > 0:
                return
            self._requested.add(slot.scenario)
            slot.preparing, slot.error, slot.fraction = True, None, 0.0
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
                log.error("preparing %s failed:\n%s", slot.scenario, bounded_log_text(traceback.format_exc()))
                slot.error = "preparing the model failed; see the server console"
            finally:
                with self._lock:
                    if slot.error:  # back off, then a later request may queue it again (the cause may be fixed)
                        slot.failed_at = time.monotonic()
                    self._requested.discard(slot.scenario)
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
                    error = _one_line(line[len("error ") :])
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
