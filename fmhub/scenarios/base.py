"""What a scenario states: its data, preprocessing, backbone family, post-processing and serving.

Everything else (the loop, metrics, saving, the CLI) is shared and lives outside the scenario.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fmhub.config import TrainConfig


class Scenario:
    name: ClassVar[str]
    modality: ClassVar[str]  # text | image | audio
    pipeline_tag: ClassVar[str]  # the Hub's task name
    library_name: ClassVar[str]  # transformers | timm
    default_backbone: ClassVar[str]
    local_backbones: ClassVar[tuple[str, ...]] = ()  # default names built from a local config (not Hub repos)
    default_labels: ClassVar[list[str]] = []
    defaults: ClassVar[dict[str, Any]] = {}  # TrainConfig overrides for this scenario
    input_key: ClassVar[str] = "path"  # key of a `fmhub predict` JSONL line

    # -- data ---------------------------------------------------------------------------------------------------
    def load_data(self, config: TrainConfig, label_names: list[str] | None = None):
        """A datasets.DatasetDict with train/validation/test and an integer `label` (ClassLabel).

        `label_names`, when given (evaluating a saved model), fixes the label order.
        """
        raise NotImplementedError

    def load_eval_split(self, config: TrainConfig, label_names: list[str]):
        """The split `fmhub evaluate` scores: the test split of the data."""
        return self.load_data(config, label_names)["test"]

    def label_names(self, data) -> list[str]:
        return list(data["train"].features["label"].names)

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, config: TrainConfig, label_names: list[str]) -> tuple[torch.nn.Module, Any]:
        """(model, processor) ready for fine-tuning."""
        raise NotImplementedError

    def load_model(self, folder: Path) -> tuple[torch.nn.Module, Any]:
        """(model, processor) from a saved folder."""
        raise NotImplementedError

    def make_dataset(self, split, processor, config: TrainConfig, train: bool):
        """A torch-style dataset yielding dicts the collate function batches."""
        raise NotImplementedError

    def collate_fn(self, processor, config: TrainConfig):
        raise NotImplementedError

    def save_model(self, model, processor, folder: Path, label_names: list[str]) -> None:
        raise NotImplementedError

    # -- scenario-specific post-processing -------------------------------------------------------------------------
    def calibrate(self, probs: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
        """Extras fitted on validation predictions (thresholds, ...); stored in fmhub.json."""
        return {}

    def extra_metrics(self, probs: np.ndarray, labels: np.ndarray, extras: dict, label_names: list[str]) -> dict:
        """Scenario metrics beyond the shared ones (out-of-scope recall, localisation, false accepts/hour)."""
        return {}

    def evaluate_extra(self, model, processor, split, config: TrainConfig, extras: dict) -> dict:
        """Metrics that need the model itself, run once after testing (main process is enough)."""
        return {}

    def predictor(self, folder: Path):
        raise NotImplementedError

    # -- defaults -----------------------------------------------------------------------------------------------
    def resolve_backbone(self, name: str | None) -> str:
        return name or self.default_backbone

    def card_info(self, data_source: str | None) -> dict:
        """Facts for the model card: datasets, license, intended use, limitations."""
        return {}
