"""The Predictor base every scenario's predictor builds on: load a saved folder once (safely), one forward pass at
a time, server-side micro-batching of concurrent calls, and the hooks a GPU host needs (`to`, `route_model_calls`).
Scenario predictors live beside it in this package."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fmhub.errors import FmhubError
from fmhub.model_folder import ModelFolder
from fmhub.models.auto import load_checked

# server-side micro-batching (see MicroBatcher): at most this many items per merged call, and how long a batch may wait
# for more requests once concurrent traffic has been seen (a lone request never waits)
MICRO_BATCH_MAX_ITEMS = 32
MICRO_BATCH_MAX_WAIT_S = 0.003


class Predictor:
    """Base class: `predict(items) -> list[dict]` with label, score and scores per item."""

    # the methods that run the model (what a GPU host must run on its GPU), each with the seconds one call may take
    # there: one request's forward pass (and Grad-CAM) on these small models takes well under a second, the rest is
    # the first call's copy of the weights; a ZeroGPU Space asks for this much GPU time per call (its default is 60 s,
    # and shorter calls are scheduled sooner)
    model_calls: dict[str, int] = {"predict": 20}

    def __init__(self, folder: Path, scenario, runtime: str | None = None):
        from fmhub.onnx_runtime import check_runtime, load_onnx

        self.folder = Path(folder)
        self.scenario_name = scenario.name
        self.settings = ModelFolder(self.folder).read_or_empty()
        self.runtime = check_runtime(runtime)  # torch | onnx (fmhub.export: ONNX Runtime behind the same call)
        if self.runtime == "onnx":
            self.model, self.processor = load_onnx(scenario, self.folder)
        else:
            self.model, self.processor = load_checked(scenario, self.folder)
        self.label_names = self.settings.get("label_names") or [
            self.model.config.id2label[i] for i in range(len(self.model.config.id2label))
        ]
        self.temperature = float(self.settings.get("temperature", 1.0))
        self.device = "cpu"  # where the model runs; inputs are moved there (see `to`)
        self._lock = threading.Lock()  # one forward pass at a time per model; torch uses the cores itself

    def to(self, device: str) -> Predictor:
        """Run the model on `device` ("cuda", ...); inputs are moved there. PyTorch runtime only.

        The weights stay float32: the calibrated thresholds (temperature, out-of-scope, detection) were fitted on
        float32 outputs, and for models this small half precision saves nothing a visitor would notice."""
        if self.runtime != "torch":
            raise FmhubError(f"the {self.runtime} runtime runs on CPU only; use the torch runtime for {device}")
        self.model.to(device)
        self.device = device
        return self

    def route_model_calls(self, wrap: Callable[[Callable, int], Callable]) -> Predictor:
        """Replace each method of `model_calls` on this predictor by `wrap(method, seconds)` (a ZeroGPU Space passes
        `spaces.GPU`), so that every forward pass runs inside a wrapped call. Micro-batching is dropped: its worker
        thread would run the calls outside the request that asked for them (ZeroGPU bills that request's visitor)."""
        for name, seconds in self.model_calls.items():
            setattr(self, name, wrap(getattr(type(self), name).__get__(self), seconds))
        return self

    def enable_micro_batching(
        self, max_items: int = MICRO_BATCH_MAX_ITEMS, max_wait_s: float = MICRO_BATCH_MAX_WAIT_S
    ) -> Predictor:
        """Merge `predict` calls made at the same time from several threads into one call (see MicroBatcher).

        Results and errors stay per call; `load_predictor` turns it on for the app and the CLI.
        """
        if not isinstance(self.__dict__.get("predict"), MicroBatcher):
            self.predict = MicroBatcher(type(self).predict.__get__(self), max_items, max_wait_s)
        return self

    def scores_dict(self, probs: np.ndarray) -> dict[str, float]:
        return {name: round(float(p), 6) for name, p in zip(self.label_names, probs)}


class _Request:
    __slots__ = ("items", "args", "kwargs", "key", "result", "error", "done")

    def __init__(self, items: list, args: tuple, kwargs: dict, key):
        self.items, self.args, self.kwargs, self.key = items, args, kwargs, key
        self.result, self.error = None, None
        self.done = threading.Event()


class MicroBatcher:
    """Server-side micro-batching for a `predict(items, *options) -> one result per item` function.

    Calls from several threads (a Gradio app's workers) queue up; one worker thread runs what is queued as a single
    call on the concatenated items (calls with the same options only, at most `max_items` items), then hands each
    caller its own slice of the results. A lone request runs at once: the worker waits up to `max_wait_s` for more
    only when the previous batch held several requests, i.e. while concurrent traffic is arriving. If a merged call
    raises, each request of it is run again on its own, so a bad input fails only its own request.
    """

    def __init__(self, fn, max_items: int = MICRO_BATCH_MAX_ITEMS, max_wait_s: float = MICRO_BATCH_MAX_WAIT_S):
        self.fn, self.max_items, self.max_wait_s = fn, max(1, int(max_items)), max(0.0, float(max_wait_s))
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._last_requests = 1  # requests in the previous batch: > 1 means concurrent traffic
        self.batches = 0  # how many merged calls ran, and how many requests they served (for benchmarks)
        self.requests = 0

    def __call__(self, items, *args, **kwargs):
        items = list(items)
        try:
            key = hash((args, tuple(sorted(kwargs.items()))))
        except TypeError:  # unhashable options: cannot tell which calls may be merged
            key = None
        if key is None or not items or threading.current_thread() is self._worker:
            return self.fn(items, *args, **kwargs)
        request = _Request(items, args, kwargs, (args, tuple(sorted(kwargs.items()))))
        with self._cond:
            self._pending.append(request)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="fmhub-micro-batcher", daemon=True)
                self._worker.start()
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _take(self, batch: list[_Request], size: int) -> int:
        """Move queued requests with the first one's options into `batch`, up to `max_items` items in all."""
        key = batch[0].key
        for request in list(self._pending):
            if request.key == key and size + len(request.items) <= self.max_items:
                self._pending.remove(request)
                batch.append(request)
                size += len(request.items)
        return size

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch = [self._pending.popleft()]
                size = self._take(batch, len(batch[0].items))
                deadline = time.monotonic() + self.max_wait_s
                while len(batch) < self._last_requests and size < self.max_items:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                    size = self._take(batch, size)
                self._last_requests = len(batch)
            self._execute(batch)

    def _execute(self, batch: list[_Request]) -> None:
        first = batch[0]
        try:
            if len(batch) == 1:
                first.result = self.fn(first.items, *first.args, **first.kwargs)
            else:
                results = self.fn([x for r in batch for x in r.items], *first.args, **first.kwargs)
                if len(results) != sum(len(r.items) for r in batch):
                    raise RuntimeError("a merged predict call returned a different number of results")
                start = 0
                for r in batch:
                    r.result, start = list(results[start : start + len(r.items)]), start + len(r.items)
        except Exception as err:
            if len(batch) == 1:
                first.error = err
            else:  # isolate the failure: every request again, on its own
                for r in batch:
                    try:
                        r.result = self.fn(r.items, *r.args, **r.kwargs)
                    except Exception as own:
                        r.error = own
        finally:
            self.batches += 1
            self.requests += len(batch)
            for r in batch:
                if r.result is None and r.error is None:
                    r.error = RuntimeError("the prediction was interrupted")
                r.done.set()
