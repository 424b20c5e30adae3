"""Grad-CAM explanations for timm classifiers (the `grad-cam` package, `pytorch_grad_cam`).

`gradcam(model, pixel_values, targets)` returns one heatmap per image (float32 in [0, 1], the input's size);
`overlay(rgb, heatmap)` blends it onto the image the model saw. `peak_in_mask` scores localisation, and
`gradcam_hits` scores it over a split with lesion masks.

Where the map is computed and how it is put back on the image decide whether its peak lands on a finding a tenth of
the image across (measured on the embedded lesion set, validation split; see the README):

* **Layer** (`target_layer`): at the finest stride that still has at least 8 x 8 cells, the last activation output
  that feeds a spatial convolution (for the default EfficientNet at 128 px with its last stage dilated: the
  expansion of the last block). Grad-CAM weighs channels by their mean gradient, which assumes non-negative
  activations: MobileNet/EfficientNet block outputs are linear bottlenecks (signed), on which it scatters.
* **Class score** (`ClassContrastTarget`): the class's logit minus the mean of the others (for two classes, the
  log-odds), so features that raise every logit alike do not light up.
* **Geometry** (`cell_geometry`, `upsample_cells`): a cell of a stride-16 map is not centred where a plain resize
  (the package's `cv2.resize`) puts it, at (i + 0.5) * 16 - 0.5 px: symmetric padding centres it near i * 16, and
  the offline EfficientNet weights (trained with TF "SAME" padding) pull it further up-left, by 6-16 px in all.
  The offsets are measured once per layer with blobs at known positions, and the map is interpolated (bicubic, so
  the peak can fall between two cells) at the measured centres.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fmhub.errors import FmhubError

_LOCK = threading.Lock()  # hooks and .grad are per model: one Grad-CAM at a time
# activation modules whose outputs are (near) non-negative feature maps; gates (sigmoid, softmax) are not
_ACTIVATIONS = {"ReLU", "ReLU6", "SiLU", "Swish", "SwishMe", "GELU", "GELUTanh", "QuickGELU", "Hardswish",
                "HardSwish", "HardSwishMe", "Mish", "MishMe", "LeakyReLU", "ELU", "CELU", "SELU", "PReLU"}
INTERPOLATION = "bicubic"
_GEOMETRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> {input size: (stride, offsets)}
_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(input size, min cells): layer}


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


def _device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


@torch.no_grad()
def _activation_maps(net: torch.nn.Module, input_size: int) -> list[tuple[torch.nn.Module, int, bool]]:
    """(module, map side, feeds a spatial conv) for every activation module called exactly once on a square NCHW
    map, in call order. "Feeds a spatial conv": the next convolution to run has a kernel larger than 1 x 1."""
    calls: list[tuple[torch.nn.Module, tuple]] = []
    watched = [m for m in net.modules() if type(m).__name__ in _ACTIVATIONS or isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(lambda m, i, o: calls.append((m, tuple(o.shape)))) for m in watched]
    was_training = net.training
    try:
        net.eval()
        net(torch.zeros(1, 3, input_size, input_size, device=_device(net)))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    counts: dict[int, int] = {}
    for m, _ in calls:
        counts[id(m)] = counts.get(id(m), 0) + 1
    out = []
    for k, (m, s) in enumerate(calls):
        if isinstance(m, torch.nn.Conv2d):
            continue
        # NCHW only (channels-last MLP activations, e.g. ConvNeXt's, have the channels last) and modules used once
        # (a module called twice would give Grad-CAM two activations)
        if len(s) != 4 or s[2] < 2 or s[2] != s[3] or counts[id(m)] != 1:
            continue
        following = next((c for c, _ in calls[k + 1 :] if isinstance(c, torch.nn.Conv2d)), None)
        spatial = following is not None and max(following.kernel_size) > 1
        out.append((m, s[2], spatial))
    return out


def target_layer(model, input_size: int, min_cells: int = 8) -> torch.nn.Module:
    """Where Grad-CAM looks: at the finest stride that still has at least `min_cells` x `min_cells` cells at
    `input_size` px, the last activation output that feeds a spatial (k > 1) convolution; later layers at that
    resolution only mix channels or widen the receptive field, which blurs the map. Else the deepest timm feature
    stage with that many cells; else the last Conv2d."""
    net = _timm_model(model)
    cached = _LAYERS.setdefault(net, {})
    if (input_size, min_cells) not in cached:
        cached[(input_size, min_cells)] = _find_target_layer(net, input_size, min_cells)
    return cached[(input_size, min_cells)]


def _find_target_layer(net: torch.nn.Module, input_size: int, min_cells: int) -> torch.nn.Module:
    maps = [(m, side, spatial) for m, side, spatial in _activation_maps(net, input_size) if side >= min_cells]
    if maps:
        smallest = min(side for _, side, _ in maps)
        at_size = [(m, spatial) for m, side, spatial in maps if side == smallest]
        feeding = [m for m, spatial in at_size if spatial]
        return (feeding or [m for m, _ in at_size])[-1]
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


@torch.no_grad()
def cell_geometry(model, layer: torch.nn.Module, input_size: int) -> tuple[float, float, float]:
    """(stride, row offset, column offset): a small finding at input pixel (row offset + i * stride, column offset
    + j * stride) shows up in cell (i, j) of `layer`'s map at `input_size` px.

    Measured, not assumed: Gaussian blobs (bright and dark, sigma = stride / 2) are placed on a blank image at
    5 x 5 known interior positions, and the sub-cell centroid of each one's response (summed |change| over
    channels) gives the offset, averaged. Symmetric padding puts cell i near pixel i * stride, not at a plain
    resize's (i + 0.5) * stride - 0.5; the offline EfficientNet weights (trained with TF "SAME" padding) shift
    it further up-left. Cached per layer and input size.
    """
    cached = _GEOMETRY.setdefault(layer, {})
    if input_size in cached:
        return cached[input_size]
    net = _timm_model(model)
    device = _device(net)
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach().float()))
    was_training = net.training
    try:
        net.eval()
        net(torch.zeros(1, 3, input_size, input_size, device=device))
        blank = store["a"]
        side = blank.shape[-1]
        stride = input_size / side
        centres = np.linspace(0.3 * input_size, 0.7 * input_size, 5)
        points = [(r, c) for r in centres for c in centres]
        yy, xx = np.mgrid[:input_size, :input_size]
        sigma = max(stride / 2, 1.0)
        blobs = np.stack([np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2)) for r, c in points])
        blobs = torch.tensor(blobs, dtype=torch.float32, device=device)[:, None].expand(-1, 3, -1, -1)
        response = 0
        for amplitude in (1.5, -1.5):  # inputs are normalised: +-1.5 standard deviations around the mean colour
            net(amplitude * blobs)
            response = response + (store["a"] - blank).abs().sum(1)
    finally:
        handle.remove()
        net.train(was_training)
    offsets = []
    for (r, c), m in zip(points, response.cpu().numpy()):
        i, j = np.unravel_index(int(m.argmax()), m.shape)
        window = m[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
        window = window - window.min()
        if side < 2 or window.sum() <= 0:
            continue
        u = (window.sum(1) * np.arange(max(i - 1, 0), max(i - 1, 0) + window.shape[0])).sum() / window.sum()
        v = (window.sum(0) * np.arange(max(j - 1, 0), max(j - 1, 0) + window.shape[1])).sum() / window.sum()
        offsets.append((r - u * stride, c - v * stride))
    if offsets:
        rows, cols = np.mean(offsets, axis=0)
    else:  # no measurable response: a plain resize's convention
        rows = cols = (stride - 1) / 2
    cached[input_size] = (float(stride), float(rows), float(cols))
    return cached[input_size]


def upsample_cells(
    cam: np.ndarray, geometry: tuple[float, float, float], size: tuple[int, int], mode: str | None = None
) -> np.ndarray:
    """Cell maps [B, n, m] -> [B, H, W] in [0, 1], interpolated (`mode`, default `INTERPOLATION`) between the
    cells' input-pixel centres (`cell_geometry`); pixels outside the outermost centres take the edge value."""
    stride, off_r, off_c = geometry
    maps = torch.as_tensor(np.asarray(cam, dtype=np.float32))[:, None]
    n, m = maps.shape[-2:]
    h, w = size

    def axis(length: int, offset: float, cells: int) -> torch.Tensor:
        index = (torch.arange(length, dtype=torch.float32) - offset) / stride  # fractional cell index
        return 2 * index / max(cells - 1, 1) - 1 if cells > 1 else torch.zeros(length)

    gy, gx = torch.meshgrid(axis(h, off_r, n), axis(w, off_c, m), indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].expand(len(maps), h, w, 2)
    up = F.grid_sample(maps, grid, mode=mode or INTERPOLATION, padding_mode="border", align_corners=True)
    up = up[:, 0].numpy()
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (up - lo) / np.maximum(span, 1e-12), 0.0).astype(np.float32)


class ClassContrastTarget:
    """Grad-CAM's class score: logit of `category` minus the mean of the other logits (for two classes, the
    log-odds). Evidence that raises every class alike cancels out."""

    def __init__(self, category: int):
        self.category = int(category)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim == 1:
            output = output[None]
        chosen = output[:, self.category]
        if output.shape[1] < 2:
            return chosen.squeeze(0)
        others = (output.sum(1) - chosen) / (output.shape[1] - 1)
        return (chosen - others).squeeze(0)


def gradcam(
    model, pixel_values: torch.Tensor, targets: Sequence[int], layer: torch.nn.Module | None = None
) -> np.ndarray:
    """Grad-CAM heatmaps [B, H, W] in [0, 1] for class `targets[i]` of image i (H, W: the input's size)."""
    cam_pkg = _require_gradcam()

    class CellGradCAM(cam_pkg.GradCAM):
        """The package's Grad-CAM, returning maps at the layer's own resolution (placed by `upsample_cells`)."""

        def get_target_width_height(self, input_tensor):
            return None

    net = _timm_model(model)
    size = tuple(int(s) for s in pixel_values.shape[-2:])
    was_training = net.training
    with _LOCK, torch.enable_grad():
        try:
            layer = layer or target_layer(net, size[-1])
            geometry = cell_geometry(net, layer, size[-1])
            # the input takes part in the graph, so the maps exist even when every weight is frozen
            inputs = pixel_values.detach().float().to(_device(net)).requires_grad_(True)
            with CellGradCAM(model=net, target_layers=[layer]) as cam:
                cells = cam(input_tensor=inputs, targets=[ClassContrastTarget(int(t)) for t in targets])
        finally:
            net.zero_grad(set_to_none=True)
            net.train(was_training)
    return np.nan_to_num(upsample_cells(np.nan_to_num(cells), geometry, size))


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
    """Whether the heatmap's maximum falls inside `mask` (both H x W, same geometry: row, column)."""
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ in size")
    return bool(mask.flat[int(np.argmax(heatmap))])


def gradcam_hits(model, data_config: dict, split, target: int | None, batch_size: int = 32) -> list[bool]:
    """For each row (with a `mask`): is the Grad-CAM peak (class `target`, else the predicted one) inside the mask?"""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    from fmhub.imaging import to_pil_rgb
    from fmhub.models.timm_backbone import build_transforms

    transform = build_transforms(data_config, train=False)
    size = int(data_config["input_size"][-1])
    # the mask goes through the same geometry as the image (timm: resize to size / crop_pct, centre crop)
    scale = int(np.floor(size / float(data_config.get("crop_pct") or 1.0)))
    mask_geometry = Compose([Resize(scale, interpolation=InterpolationMode.NEAREST), CenterCrop(size)])
    device = next(model.parameters()).device
    hits: list[bool] = []
    for start in range(0, len(split), batch_size):
        rows = split[start : start + batch_size]
        pixels = torch.stack([transform(to_pil_rgb(im)) for im in rows["image"]]).to(device)
        if target is None:
            with torch.no_grad():
                targets = model(pixel_values=pixels)["logits"].argmax(-1).tolist()
        else:
            targets = [target] * len(pixels)
        heat = gradcam(model, pixels, targets)
        for h, m in zip(heat, rows["mask"]):
            mask = mask_geometry(torch.from_numpy(np.asarray(m, dtype=np.uint8))[None])[0].numpy().astype(bool)
            hits.append(peak_in_mask(h, mask))
    return hits


__all__ = ["ClassContrastTarget", "cell_geometry", "denormalize", "gradcam", "gradcam_hits", "overlay",
           "peak_in_mask", "target_layer", "upsample_cells"]
