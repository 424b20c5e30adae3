"""`load_predictor`: a cached Predictor for a folder, a Hub id or the embedded default. Used by the app, the CLI
and the Spaces; the predictors themselves live in `fmhub.predictors`."""

from __future__ import annotations

import threading

from fmhub.predictors.base import Predictor

_CACHE: dict[tuple[str, str, str, str], Predictor] = {}
_CACHE_LOCK = threading.Lock()  # guards _CACHE and _LOAD_LOCKS only: never held while a model loads
# one per model: the same model is not loaded twice at once
_LOAD_LOCKS: dict[tuple[str, str, str, str], threading.Lock] = {}


def load_predictor(scenario: str, model: str | None = None, runtime: str | None = None, device: str = "cpu"
                   ) -> Predictor:
    """A cached Predictor for a folder, a Hub id, or (None) the embedded default, fine-tuned on first use.

    Where the scenario's `predict` runs one forward pass per list (text, image) it micro-batches: calls arriving
    together from several threads run as one batch. A load (or download) blocks only other loads of the same model;
    a failed load is not cached, so the next call tries again. `runtime`: torch (default) or onnx (the folder's
    ONNX export on ONNX Runtime, `fmhub.export`); None reads FMHUB_RUNTIME. `device`: where the model runs (each
    device has its own cached Predictor).
    """
    from fmhub.defaults import model_folder_for
    from fmhub.onnx_runtime import check_runtime
    from fmhub.registry import get_scenario

    runtime = check_runtime(runtime)
    key = (scenario, model or "", runtime, device)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        load_lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
    with load_lock:
        with _CACHE_LOCK:
            if key in _CACHE:  # loaded by the call we waited for
                return _CACHE[key]
        scenario_obj = get_scenario(scenario)
        predictor = scenario_obj.predictor(model_folder_for(model, scenario), runtime)
        if device != "cpu":
            predictor.to(device)
        if scenario_obj.micro_batched:
            predictor.enable_micro_batching()
        with _CACHE_LOCK:
            _CACHE[key] = predictor
        return predictor
