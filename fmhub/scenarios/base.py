"""What a scenario states: who it is (name, title, licence, tab, Space facts), its data, preprocessing, backbone
family, post-processing and serving.

Everything else (the loop, metrics, saving, the CLI, the app) is shared and reads the scenario from the registry.
This module imports nothing heavy: the registry lists scenarios without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fmhub.config import TrainConfig


class Scenario:
    # -- identity: the CLI, the app, the Spaces and the model card read these -------------------------------------
    name: ClassVar[str]  # the CLI's --scenario value, e.g. "customer-service"
    title: ClassVar[str]  # tab and Space title
    emoji: ClassVar[str] = "🤗"
    description: ClassVar[str] = ""  # one line: the Space's short_description and the app's tab caption
    license: ClassVar[str] = "apache-2.0"
    notice: ClassVar[str | None] = None  # a warning shown on the tab, the Space README and the model card
    tab: ClassVar[str]  # "module:function" building the Gradio tab from a ModelSlot (imported by the app only)
    modality: ClassVar[str]  # text | image | audio
    pipeline_tag: ClassVar[str]  # the Hub's task name
    library_name: ClassVar[str]  # transformers | timm
    default_backbone: ClassVar[str]
    default_labels: ClassVar[list[str]] = []  # the embedded data's classes, when they are known up front
    local_backbones: ClassVar[tuple[str, ...]] = ()  # default names built from a local config (not Hub repos)
    defaults: ClassVar[dict[str, Any]] = {}  # TrainConfig overrides for this scenario
    input_key: ClassVar[str] = "path"  # key of a `fmhub predict` JSONL line
    micro_batched: ClassVar[bool] = False  # predict() runs one forward pass per list: merge concurrent calls
    score_model_needs_weights: ClassVar[bool] = False  # score_model hooks PyTorch layers (Grad-CAM): never ONNX

    # -- data ---------------------------------------------------------------------------------------------------
    def load_data(self, config: TrainConfig, label_names: list[str] | None = None):
        """A datasets.DatasetDict with at least `train` and an integer `label` (ClassLabel; -1 for rows outside
        every class, such as out-of-scope messages). Missing validation/test splits and the per-class cap are
        handled once for every scenario by `load_splits`. `label_names`, when given (evaluating a saved model),
        fixes the label order."""
        raise NotImplementedError

    def load_splits(self, config: TrainConfig, label_names: list[str] | None = None):
        """`load_data`, then the shared chores: validation/test cut from train when missing, and
        `--max-samples-per-class` applied to every split."""
        from fmhub.data.splits import cap_per_class, complete_splits

        data = complete_splits(self.load_data(config, label_names), config.seed)
        return cap_per_class(data, config.max_samples_per_class)

    def load_eval_split(self, config: TrainConfig, label_names: list[str]):
        """The split `fmhub evaluate` scores: the test split of the data."""
        return self.load_splits(config, label_names)["test"]

    def load_unlabeled(self, source: str, like, label_names: list[str]):
        """`--unlabeled-data`: a `fmhub.data.unlabeled.Pool` whose rows have the columns of `like` (the training
        split); unreadable files skipped and counted, labelled data refused."""
        raise NotImplementedError(f"{self.name} takes no --unlabeled-data")

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
        """Weights and processor files in the ecosystem's format (the label maps go into config.json)."""
        from fmhub.models.auto import label_maps

        maps = label_maps(label_names)
        model.config.id2label, model.config.label2id = maps["id2label"], maps["label2id"]
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)

    # -- scenario-specific post-processing -------------------------------------------------------------------------
    def calibrate(self, probs: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
        """Settings fitted on validation predictions (thresholds, ...); stored in the folder's manifest."""
        return {}

    def calibrate_model(self, model, processor, data, config: TrainConfig, settings: dict) -> dict:
        """More settings fitted with the trained model itself on the training and validation splits (a
        distance-based out-of-scope score, ...), after `calibrate`. Keys starting with "_" hold arrays: they are
        written by `save_model_extras`, never into the manifest."""
        return {}

    def save_model_extras(self, folder: Path, settings: dict) -> None:
        """Write what `calibrate_model` fitted beyond plain settings into the model folder."""

    def load_model_extras(self, folder: Path) -> dict:
        """The settings `save_model_extras` wrote, read back (for `fmhub evaluate`)."""
        return {}

    def score_predictions(self, probs: np.ndarray, labels: np.ndarray, settings: dict, label_names: list[str]) -> dict:
        """Scenario metrics from the test predictions, beyond the shared ones (out-of-scope recall, ...)."""
        return {}

    def score_model(self, model, processor, split, config: TrainConfig, settings: dict) -> dict:
        """Scenario metrics that need the model itself (localisation, false accepts/hour), once after testing."""
        return {}

    def load_processor(self, folder: Path) -> tuple[Any, Any]:
        """(processor, model config or None) from a saved folder without its weights: what `--runtime onnx` needs
        beside the ONNX graph (`fmhub.export`)."""
        raise NotImplementedError(f"{self.name} models have no ONNX runtime")

    def predictor(self, folder: Path, runtime: str | None = None):
        raise NotImplementedError

    # -- defaults -----------------------------------------------------------------------------------------------
    def resolve_backbone(self, name: str | None) -> str:
        return name or self.default_backbone

    def card_info(self, data_source: str | None) -> dict:
        """Facts for the model card: datasets, intended use, limitations (licence and notice come from the class)."""
        return {}
