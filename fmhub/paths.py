"""Where fmhub keeps its cache: embedded-default models and generated data sets."""

from __future__ import annotations

import os
from pathlib import Path


def fmhub_home() -> Path:
    """`FMHUB_HOME`, default `~/.cache/fmhub` (outside the repository)."""
    return Path(os.environ.get("FMHUB_HOME") or Path.home() / ".cache" / "fmhub").expanduser()


def default_model_dir(scenario: str) -> Path:
    """Folder holding the fine-tuned embedded default of `scenario`."""
    return fmhub_home() / "models" / scenario


def data_cache_dir(name: str) -> Path:
    path = fmhub_home() / "data" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_data(*parts: str) -> Path:
    """A file shipped inside the package (`fmhub/data/...`)."""
    return Path(__file__).parent.joinpath("data", *parts)
