"""fmhub: fine-tune foundation-model backbones with Accelerate and serve them as Gradio demos.

The public names load on first use, so `import fmhub` (and `fmhub --help`) does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "TrainConfig": "fmhub.config",
    "Predictor": "fmhub.predictors.base",
    "load_predictor": "fmhub.serving",
    "get_scenario": "fmhub.registry",
    "list_scenarios": "fmhub.registry",
    "register": "fmhub.registry",
    "ModelFolder": "fmhub.model_folder",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'fmhub' has no attribute {name!r}")


__all__ = [*_PUBLIC, "__version__"]
