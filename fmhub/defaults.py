"""The embedded defaults: the cached fine-tuned model of each scenario, trained on first use.

This sits above the runner (it starts a training run); everything below it resolves models without ever training.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fmhub.hub import resolve_model
from fmhub.model_folder import ModelFolder
from fmhub.paths import default_model_dir


def ensure_default_model(scenario: str, progress=None) -> Path:
    """The cached fine-tuned embedded default of `scenario`; trained on first use."""
    folder = default_model_dir(scenario)
    if ModelFolder(folder).is_fmhub_model():
        return folder
    from fmhub.config import resolve_config
    from fmhub.registry import get_scenario
    from fmhub.runner import train

    print(f"fmhub: no cached {scenario} model yet; fine-tuning the embedded default (one time)...", file=sys.stderr)
    config = resolve_config(get_scenario(scenario).defaults, {}, {"scenario": scenario, "report_to": "none"})
    return train(config, progress=progress)


def model_folder_for(ref: str | None, scenario: str) -> Path:
    """A local folder for `ref`: None -> the cached default (trained when missing), else `hub.resolve_model`."""
    if ref is None:
        return ensure_default_model(scenario)
    return resolve_model(ref, scenario)
