"""`load_predictor`: a cached Predictor for a folder, a Hub id or the embedded default. Used by the app, the CLI
and the Spaces; the predictors themselves live in `fmhub.predictors`."""

from __future__ import annotations

import threading

from fmhub.predictors.base import Predictor

_CACHE: dict[tuple[str, str], Predictor] = {}
_CACHE_LOCK = threading.Lock()


def load_predictor(scenario: str, model: str | None = None) -> Predictor:
    """A cached Predictor for a folder, a Hub id, or (None) the embedded default, fine-tuned on first use.

    Where the scenario's `predict` runs one forward pass per list (text, image) it micro-batches: calls arriving
    together from several threads run as one batch.
    """
    from fmhub.defaults import model_folder_for
    from fmhub.registry import get_scenario

    key = (scenario, model or "")
    with _CACHE_LOCK:
        if key not in _CACHE:
            scenario_obj = get_scenario(scenario)
            predictor = scenario_obj.predictor(model_folder_for(model, scenario))
            if scenario_obj.micro_batched:
                predictor.enable_micro_batching()
            _CACHE[key] = predictor
        return _CACHE[key]
