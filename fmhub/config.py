"""Run configuration: one dataclass, the single source for CLI flags, YAML files and the saved `train_config.yaml`.

Precedence when a run is resolved: dataclass defaults < the scenario's defaults < a `--config` YAML file < CLI flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fmhub.errors import FmhubError

CHOICES = {
    "optimizer": ("adamw", "sgd"),
    "scheduler": ("linear", "cosine", "constant"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "report_to": ("auto", "none", "tensorboard", "wandb"),
    "class_weights": ("none", "auto"),
    "nan_policy": ("stop", "skip"),
    "export": ("none", "onnx"),
}


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run. Field comments double as CLI help."""

    scenario: str = field(
        default="customer-service", metadata={"help": "a registered scenario (see `fmhub train --help`)"}
    )
    model: str | None = field(default=None, metadata={"help": "backbone: transformers model id / timm name / folder"})
    data: str | None = field(
        default=None, metadata={"help": "Hub dataset id, local folder or file; default: embedded"}
    )
    output_dir: str | None = field(default=None, metadata={"help": "where the saved model goes; default: the cache"})
    pretrained: bool = field(
        default=True, metadata={"help": "start from pretrained weights (--no-pretrained: scratch)"}
    )
    max_samples_per_class: int | None = field(
        default=None, metadata={"help": "keep at most N examples of each class per split (quick runs, tests)"}
    )

    epochs: int = field(default=5, metadata={"help": "maximum number of epochs"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "per-process training batch size"})
    eval_batch_size: int = field(default=64, metadata={"help": "per-process evaluation batch size"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "batches per optimizer step"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate"})
    head_learning_rate: float | None = field(default=None, metadata={"help": "learning rate of the new head"})
    weight_decay: float = field(default=0.01, metadata={"help": "decoupled weight decay"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | sgd"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    scheduler: str = field(default="linear", metadata={"help": "linear | cosine | constant (after warmup)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps spent warming up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    class_weights: str = field(default="none", metadata={"help": "none | auto (inverse class frequency)"})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16"})
    seed: int = field(default=42, metadata={"help": "random seed (data order, augmentation, init)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers"})

    early_stopping_patience: int = field(default=3, metadata={"help": "epochs without improvement (0: off)"})
    metric_for_best_model: str = field(default="macro_f1", metadata={"help": "validation metric to select on"})
    target_metric: float | None = field(default=None, metadata={"help": "stop once the metric reaches this"})

    max_length: int = field(default=64, metadata={"help": "text: maximum tokens"})
    group_by_length: bool = field(
        default=False, metadata={"help": "text: batch examples of similar length together (less padding)"}
    )
    freeze_embeddings: bool = field(
        default=False, metadata={"help": "text: keep the token-embedding matrix fixed (a third less time per step)"}
    )
    image_size: int | None = field(default=None, metadata={"help": "image: input size (default: the backbone's)"})
    freeze_backbone_epochs: int = field(
        default=0, metadata={"help": "train only the head for this many epochs (pretrained backbones only)"}
    )
    freeze_layers: int = field(
        default=0, metadata={"help": "audio, pretrained Whisper-style encoders: keep the convolutional stem and the "
                                     "first N transformer layers fixed (the voice default: 2)"}
    )
    augment: bool = field(default=True, metadata={"help": "training-time augmentation (image, audio)"})
    voice_families: str | None = field(
        default=None, metadata={"help": "audio, embedded corpus: synthesizer families to train on, comma-separated "
                                        "(espeak-ng, piper, mbrola, pico, gnuspeech; `--voice-families=-piper`: "
                                        "every installed one but piper; default: every installed one; opt-in: "
                                        "kokoro, e.g. `--voice-families=+kokoro` adds it)"}
    )
    temperature_scaling: bool = field(default=False, metadata={"help": "fit a temperature on validation data"})

    report_to: str = field(default="auto", metadata={"help": "auto | none | tensorboard | wandb"})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "also checkpoint every N steps (0: epochs only)"})
    save_total_limit: int = field(default=2, metadata={"help": "keep the last K checkpoints"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest complete checkpoint"})
    resume_from: str | None = field(default=None, metadata={"help": "continue from this checkpoint folder"})
    overwrite: bool = field(
        default=False, metadata={"help": "write into a non-empty --output-dir fmhub did not create, or start over in "
                                         "one that holds a run's checkpoints (they are deleted)"}
    )
    nan_policy: str = field(default="stop", metadata={"help": "stop | skip: what a NaN/Inf loss does"})

    unlabeled_data: str | None = field(
        default=None, metadata={"help": "semi-supervised: unlabelled examples (a JSONL/CSV with a `text` column, a "
                                        "folder of image or audio files, or a Hub dataset `user/name[:split]`), "
                                        "pseudo-labelled over --self-training-rounds"}
    )
    labels_per_class: float | None = field(
        default=None, metadata={"help": "semi-supervised simulation: keep N labelled training examples per class "
                                        "(or a share, if below 1; drawn with --seed) and use the rest as unlabelled"}
    )
    self_training_rounds: int = field(
        default=2, metadata={"help": "with --unlabeled-data or --labels-per-class: rounds of pseudo-labelling "
                                     "after the labelled-only round (0: labelled examples only)"}
    )
    pseudo_label_threshold: float = field(
        default=0.0, metadata={"help": "semi-supervised: least confidence for a pseudo-label (besides the model's "
                                       "own out-of-scope threshold, when it has one)"}
    )

    export: str = field(default="none", metadata={"help": "none | onnx: also write onnx/model.onnx and the int8 "
                                                          "onnx/model_quantized.onnx at the end (`fmhub export`)"})
    push_to_hub: bool = field(default=False, metadata={"help": "push the saved model to the Hub at the end"})
    hub_repo_id: str | None = field(default=None, metadata={"help": "user/name for --push-to-hub"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repo private"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise FmhubError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        positive = ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_length")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise FmhubError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise FmhubError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise FmhubError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.label_smoothing < 1:
            raise FmhubError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_samples_per_class is not None and self.max_samples_per_class < 1:
            raise FmhubError(f"--max-samples-per-class must be at least 1, got {self.max_samples_per_class}")
        if self.max_steps is not None and self.max_steps < 1:
            raise FmhubError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.resume and self.resume_from:
            raise FmhubError("give either --resume or --resume-from, not both")
        if (self.resume or self.resume_from) and self.overwrite:
            raise FmhubError("give either --resume (continue the run) or --overwrite (start over), not both")
        if (self.resume or self.resume_from) and not self.output_dir:
            raise FmhubError("--resume needs --output-dir (the folder of the interrupted run)")
        if self.labels_per_class is not None and (self.labels_per_class <= 0 or (
                self.labels_per_class >= 1 and self.labels_per_class != int(self.labels_per_class))):
            raise FmhubError(f"--labels-per-class must be a whole number of examples or a share in (0, 1), got "
                             f"{self.labels_per_class}")
        if self.labels_per_class is not None and self.labels_per_class >= 1:
            self.labels_per_class = int(self.labels_per_class)  # a count: saved as 8, not 8.0
        if self.self_training_rounds < 0:
            raise FmhubError(f"--self-training-rounds must be 0 or more, got {self.self_training_rounds}")
        if not 0 <= self.pseudo_label_threshold < 1:
            raise FmhubError(f"--pseudo-label-threshold must be in [0, 1), got {self.pseudo_label_threshold}")
        if self.semi_supervised and not self.output_dir:
            raise FmhubError("--unlabeled-data and --labels-per-class need --output-dir (each round's model is "
                             "kept there, so a killed run resumes at its round)")
        if self.push_to_hub and not self.hub_repo_id:
            raise FmhubError("--push-to-hub needs --hub-repo-id user/name")
        if self.freeze_backbone_epochs and not self.pretrained:
            # a randomly initialised backbone is not worth keeping: freezing it would only train a head on noise
            # (and make a from-scratch run spend part of its budget on that)
            self.freeze_backbone_epochs = 0
        if self.freeze_backbone_epochs >= self.epochs and self.freeze_backbone_epochs > 0:
            raise FmhubError("--freeze-backbone-epochs must be smaller than --epochs, or the backbone never trains")

    @property
    def semi_supervised(self) -> bool:
        return bool(self.unlabeled_data or self.labels_per_class)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FmhubError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        # --overwrite is about this invocation's folder: a saved config reused with --config must not carry it along
        values = {k: v for k, v in self.to_dict().items() if k != "overwrite"}
        Path(path).write_text(yaml.safe_dump(values, sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(load_yaml(path))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FmhubError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise FmhubError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise FmhubError(f"config file {path} must hold a mapping of settings")
    return {key.replace("-", "_"): value for key, value in values.items()}


def resolve_config(
    scenario_defaults: dict[str, Any], yaml_values: dict[str, Any], cli_values: dict[str, Any]
) -> TrainConfig:
    """Merge the layers; later ones win. `cli_values` holds only flags the user actually gave."""
    merged: dict[str, Any] = {}
    for layer in (scenario_defaults, yaml_values, cli_values):
        merged.update({k: v for k, v in layer.items() if v is not None})
    return TrainConfig.from_dict(merged)
