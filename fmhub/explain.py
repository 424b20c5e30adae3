"""Grad-CAM explanations for timm classifiers (the `grad-cam` package, `pytorch_grad_cam`).

`gradcam(model, pixel_values, targets)` returns one heatmap per image (float32 in [0, 1], the input's size);
`overlay(rgb, heatmap)` blends it onto the image the model saw. `peak_in_mask` scores localisation.

The target layer defaults to the deepest feature stage that still has at least 8 x 8 cells at the input size
(timm's `feature_info`): at 128 px that is the stride-16 stage. The last (stride-32) stage is as class-specific
but only 4 x 4 cells there, too coarse to point at a lesion a tenth of the image across.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from fmhub.errors import FmhubError

_LOCK = threading.Lock()  # hooks and .grad are per model: one Grad-CAM at a time


def _require_gradcam():
    try:
        import pytorch_grad_cam
    except ImportError as err:  # pragma: no cover - in requirements.txt
        raise FmhubError("Grad-CAM needs the 'grad-cam' package: pip install grad-cam") from err
    return pytorch_grad_cam


def _timm_model(model) -> torch.nn.Module:
    """The bare timm model (returns logits) inside a TimmClassifier or a prepared/DDP wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "timm_model", model)


def target_layer(model, input_size: int, min_cells: int = 8) -> torch.nn.Module:
    """The deepest feature stage with at least `min_cells` x `min_cells` cells at `input_size` px."""
    net = _timm_model(model)
    info = getattr(net, "feature_info", None)
    stages = []
    if info is not None:
        entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        stages = [(e["module"], e["reduction"]) for e in entries if e.get("module")]
    fine = [name for name, reduction in stages if input_size / reduction >= min_cells]
    name = fine[-1] if fine else (stages[-1][0] if stages else None)
    if name is not None:
        return net.get_submodule(name)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise FmhubError("Grad-CAM needs a convolutional backbone (no Conv2d layer found)")
    return convs[-1]


def gradcam(
    model, pixel_values: torch.Tensor, targets: Sequence[int], layer: torch.nn.Module | None = None
) -> np.ndarray:
    """Grad-CAM heatmaps [B, H, W] in [0, 1] for class `targets[i]` of image i (H, W: the input's size)."""
    cam_pkg = _require_gradcam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = _timm_model(model)
    layer = layer or target_layer(net, int(pixel_values.shape[-1]))
    was_training = net.training
    with _LOCK, torch.enable_grad():
        try:
            with cam_pkg.GradCAM(model=net, target_layers=[layer]) as cam:
                heat = cam(
                    input_tensor=pixel_values.detach().float(),
                    targets=[ClassifierOutputTarget(int(t)) for t in targets],
                )
        finally:
            net.zero_grad(set_to_none=True)
            net.train(was_training)
    return np.nan_to_num(np.asarray(heat, dtype=np.float32))


def denormalize(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[B, 3, H, W] normalised tensor -> float32 RGB [B, H, W, 3] in [0, 1] (what the model saw)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    rgb = (pixel_values.detach().float().cpu() * s + m).clamp(0, 1)
    return rgb.permute(0, 2, 3, 1).numpy()


def overlay(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB: the JET-coloured heatmap blended onto `rgb` (float [0, 1], H x W x 3)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(np.clip(rgb, 0, 1).astype(np.float32), heatmap, use_rgb=True, image_weight=1 - alpha)


def peak_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the heatmap's maximum falls inside `mask` (both H x W, same geometry)."""
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ in size")
    return bool(mask.flat[int(np.argmax(heatmap))])


__all__ = ["denormalize", "gradcam", "overlay", "peak_in_mask", "target_layer"]
