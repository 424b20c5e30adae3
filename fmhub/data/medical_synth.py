"""Embedded, deterministic synthetic medical-image data set ("normal" vs "lesion").

Backgrounds are random crops of the real medical images that installed packages ship:
scikit-image's fundus photograph (`retina`), retinal close-up (`microaneurysms`), IHC histology
(`immunohistochemistry`), phase-contrast microscopy (`cell`), and pydicom's `CT_small.dcm` and
`MR_small.dcm` test files (windowed to 8 bits, made 3-channel). Every image, whatever its label, goes through
the same pipeline: crop with random zoom / rotation / flip, intensity jitter, a tissue check, a candidate
lesion site, and a final blur + sensor noise. Only for `lesion` images is a synthetic focal lesion drawn at
the site before the final blur/noise: an irregular, soft-edged, speckled blob, brighter or darker than its
surroundings (a step of 2.5-4x the local texture's standard deviation, bounded to 40-110 gray levels),
12-26 % of the image width across, centred away from the border. The lesion's pixels are the mask. A lesion
that does not stand out from its surroundings (mean luminance step under `MIN_VISIBILITY` = 1.5 standard
deviations of a ring around it: typically a bright lesion straddling a bone edge in CT, which no reader could
call) is redrawn at another site, from the lesion's own random stream; the most visible of 12 tries is kept.

Cleanup of the sources (so that "normal" crops do not contain lesion-like structures): the two real
microaneurysms in `microaneurysms()` are inpainted, and the large bright cell in `cell()` is kept out of
every crop.

Splits: every image is rendered from its own random stream keyed by (seed, split, index), so train,
validation and test never share a crop, an augmentation or a lesion. They do share the six source images
(there are only six): splitting the sources by region was tried and made the test set a different
distribution (histology normals from an unseen region were all called lesions), while backgrounds seen in
training carry no label information because both classes use the same backgrounds.

Everything depends only on (seed, split, index, size): same arguments, identical arrays.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

CLASSES = ["normal", "lesion"]

_SPLIT_CODES = {None: 0, "all": 0, "train": 1, "val": 2, "validation": 2, "test": 3}

# Lesion geometry (diameter as a fraction of the image width) and contrast.
LESION_DIAMETER = (0.12, 0.26)
LESION_CONTRAST = (2.5, 4.0)  # intensity step, in units of the local background's standard deviation
LESION_STEP = (40.0, 110.0)  # bounds of that step, in gray levels
MIN_VISIBILITY = 1.5  # lesion-to-surroundings luminance step / the surroundings' standard deviation, at least
_LESION_TRIES = 12
_TISSUE_LEVEL = 28.0  # luminance below this is background (air, black fundus surround)
_MIN_TISSUE_FRACTION = 0.6


@dataclass(frozen=True)
class _Source:
    name: str
    rgb: bool
    crop: tuple[float, float]  # crop side in source pixels (before zoom to `size`)
    dihedral: bool  # 90-degree rotations allowed (microscopy / fundus), not for radiology
    areas: tuple  # allowed crop areas (x0, y0, x1, y1), normalised source coordinates
    weight: float


_WHOLE = ((0.0, 0.0, 1.0, 1.0),)
# `cell()` (660 x 550): the big bright cell sits at x 0.60-0.95, y 0.40-0.72 and is never cropped.
_CELL_AREAS = ((0.0, 0.0, 1.0, 0.4), (0.0, 0.72, 1.0, 1.0), (0.0, 0.4, 0.58, 0.72))

SOURCES = (
    _Source("fundus", True, (120.0, 185.0), True, _WHOLE, 0.20),
    _Source("histology_ihc", True, (110.0, 170.0), True, _WHOLE, 0.20),
    _Source("microscopy_cell", False, (100.0, 145.0), True, _CELL_AREAS, 0.15),
    _Source("retina_closeup", False, (60.0, 80.0), True, _WHOLE, 0.15),
    _Source("ct", False, (80.0, 104.0), False, _WHOLE, 0.15),
    _Source("mr", False, (40.0, 52.0), False, _WHOLE, 0.15),
)


# ---------------------------------------------------------------------------------------------------------
# Source images (loaded once per process)


def _to_float_rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _dicom(name: str) -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:  # pragma: no cover - pydicom always ships these test files
        raise FileNotFoundError(f"pydicom test file {name} not found")
    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return a * slope + intercept


def _window(a: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2.0
    return np.clip((a - lo) / width, 0.0, 1.0) * 255.0


@functools.lru_cache(maxsize=1)
def _load_sources() -> dict[str, np.ndarray]:
    """Planar float32 3 x H x W arrays in [0, 255] (radiology: raw values, windowed per image)."""
    import skimage.data as skd
    from skimage.restoration import inpaint_biharmonic
    from skimage.transform import resize

    out: dict[str, np.ndarray] = {}
    retina = skd.retina().astype(np.float32)
    out["fundus"] = resize(retina, (512, 512), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)
    out["histology_ihc"] = _to_float_rgb(skd.immunohistochemistry())
    out["microscopy_cell"] = _to_float_rgb(skd.cell())

    # microaneurysms(): inpaint the two real microaneurysms so that "normal" crops are normal.
    ma = skd.microaneurysms().astype(np.float64)
    yy, xx = np.mgrid[: ma.shape[0], : ma.shape[1]]
    hole = np.zeros(ma.shape, bool)
    for cy, cx in ((22, 16), (71, 49)):
        hole |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 6.5**2
    ma = inpaint_biharmonic(ma, hole)
    # stretch the low-contrast close-up (values ~40-130) to a typical 8-bit range
    lo, hi = np.percentile(ma, [0.5, 99.5])
    out["retina_closeup"] = _to_float_rgb(np.clip((ma - lo) / (hi - lo), 0, 1) * 235.0 + 10.0)

    out["ct"] = _to_float_rgb(_dicom("CT_small.dcm"))  # Hounsfield units
    out["mr"] = _to_float_rgb(_dicom("MR_small.dcm"))
    return {k: np.ascontiguousarray(v.transpose(2, 0, 1)) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------
# Per-image pipeline


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return n / (n.std() + 1e-6)


def _luminance(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _crop(rng: np.random.Generator, src: _Source, image: np.ndarray, size: int) -> np.ndarray:
    """Rotated / flipped / zoomed crop of the planar `image` (3 x H x W) resampled to size x size."""
    h, w = image.shape[1:]
    rects = src.areas
    areas = np.array([(r[2] - r[0]) * w * (r[3] - r[1]) * h for r in rects])
    x0, y0, x1, y1 = rects[rng.choice(len(rects), p=areas / areas.sum())]
    x0, x1, y0, y1 = x0 * w, x1 * w, y0 * h, y1 * h

    angle = rng.uniform(-12.0, 12.0)
    if src.dihedral:
        angle += 90.0 * rng.integers(0, 4)
    theta = math.radians(angle)
    c, s = math.cos(theta), math.sin(theta)
    flip = rng.random() < 0.5
    side = rng.uniform(*src.crop)
    # the rotated crop's bounding box must fit in the area (2 px slack for interpolation)
    reach = abs(c) + abs(s)
    side = min(side, (x1 - x0 - 2) / reach, (y1 - y0 - 2) / reach)
    half = side * reach / 2.0
    cx = rng.uniform(x0 + 1 + half, x1 - 1 - half)
    cy = rng.uniform(y0 + 1 + half, y1 - 1 - half)

    step = side / size
    t = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * step
    v, u = np.meshgrid(t, t, indexing="ij")  # v: output rows, u: output cols
    if flip:
        u = -u
    rows = cy + s * u + c * v
    cols = cx + c * u - s * v
    return _bilinear(image, rows, cols)


def _bilinear(planar: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear sampling of a planar 3 x H x W image at float coordinates (clamped to the image)."""
    _, h, w = planar.shape
    rows = np.clip(rows, 0.0, h - 1.001).ravel()
    cols = np.clip(cols, 0.0, w - 1.001).ravel()
    r0 = rows.astype(np.int64)
    c0 = cols.astype(np.int64)
    fr = (rows - r0).astype(np.float32)
    fc = (cols - c0).astype(np.float32)
    flat = planar.reshape(3, -1)
    i = r0 * w + c0
    p00, p01 = flat.take(i, axis=1), flat.take(i + 1, axis=1)
    p10, p11 = flat.take(i + w, axis=1), flat.take(i + w + 1, axis=1)
    top = p00 + (p01 - p00) * fc
    bottom = p10 + (p11 - p10) * fc
    out = top + (bottom - top) * fr
    side = int(round(math.sqrt(out.shape[1])))
    return np.ascontiguousarray(out.reshape(3, side, side).transpose(1, 2, 0))


def _intensity(rng: np.random.Generator, src: _Source, img: np.ndarray) -> np.ndarray:
    if src.name == "ct":  # soft-tissue window with jitter
        img = _window(img, rng.uniform(20.0, 70.0), rng.uniform(330.0, 480.0))
    elif src.name == "mr":  # the file's own window (600/1600) with jitter
        img = _window(img, rng.uniform(520.0, 700.0), rng.uniform(1300.0, 1800.0))
    gamma = math.exp(rng.uniform(-0.15, 0.15))
    gain = rng.uniform(0.9, 1.1)
    bias = rng.uniform(-8.0, 8.0)
    return np.clip(255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma * gain + bias, 0.0, 255.0)


def _lesion_site(rng: np.random.Generator, lum_smooth: np.ndarray, size: int):
    """Lesion radius and centre on tissue, away from the border; None if none found."""
    yy, xx = np.mgrid[:size, :size]
    for _ in range(40):
        radius = 0.5 * size * rng.uniform(*LESION_DIAMETER)
        margin = radius + 0.08 * size
        cy, cx = rng.uniform(margin, size - 1 - margin, size=2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= (1.4 * radius) ** 2
        if (lum_smooth[disk] > _TISSUE_LEVEL).mean() >= 0.95:
            return radius, float(cy), float(cx)
    return None


def _draw_lesion(
    rng: np.random.Generator, img: np.ndarray, radius: float, cy: float, cx: float, rgb: bool
) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    # local patch around the lesion
    pad = int(math.ceil(1.6 * radius)) + 4
    r0, r1 = max(0, int(cy) - pad), min(size, int(cy) + pad + 1)
    c0, c1 = max(0, int(cx) - pad), min(size, int(cx) + pad + 1)
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    # perturbed ellipse: random elongation and orientation, low-order radial harmonics, smooth noise
    phi = rng.uniform(0, math.pi)
    elong = rng.uniform(0.65, 1.0)
    a = dx * math.cos(phi) + dy * math.sin(phi)
    b = (-dx * math.sin(phi) + dy * math.cos(phi)) / elong
    r = np.hypot(a, b)
    ang = np.arctan2(b, a)
    boundary = np.ones_like(r)
    for k in range(2, 6):
        boundary += rng.uniform(0.0, 0.22 / k) * np.cos(k * ang + rng.uniform(0, 2 * math.pi))
    boundary += 0.12 * _smooth_noise(rng, r.shape, max(1.0, radius / 3.0))
    hard = (r <= radius * boundary).astype(np.float32)
    hard = ndi.binary_fill_holes(hard > 0.5).astype(np.float32)
    soft = ndi.gaussian_filter(hard, rng.uniform(0.8, 1.8))
    mask_patch = soft >= 0.5
    if not mask_patch.any():  # degenerate shape: fall back to the plain disk
        soft = ndi.gaussian_filter((r <= radius).astype(np.float32), 1.0)
        mask_patch = soft >= 0.5

    patch = img[r0:r1, c0:c1]
    lum = _luminance(patch)
    ring = ndi.binary_dilation(mask_patch, iterations=4) & ~mask_patch
    local = lum[ring] if ring.sum() >= 8 else lum.ravel()
    background = float(np.median(lum[ndi.binary_dilation(mask_patch, iterations=2)]))
    if background > 170:
        bright = False
    elif background < 85:
        bright = True
    else:
        bright = bool(rng.random() < 0.5)
    # intensity step: a few times the local texture's spread, within fixed bounds, limited by the headroom
    step = float(np.clip(rng.uniform(*LESION_CONTRAST) * max(float(local.std()), 12.0), *LESION_STEP))
    headroom = (255.0 - background) if bright else background
    contrast = min(step / max(headroom, 1.0), 0.85)
    texture = _smooth_noise(rng, soft.shape, rng.uniform(0.7, 1.5))
    amount = np.clip(soft * contrast * (1.0 + 0.35 * texture), 0.0, 0.9)[..., None]
    if rgb:
        tint = 1.0 + rng.uniform(-0.3, 0.3, size=3).astype(np.float32)
        tint = tint / tint.mean()
    else:
        tint = np.ones(3, np.float32)
    if bright:
        patch = patch + amount * tint * (255.0 - patch)
    else:
        patch = patch - amount * tint * patch
    out = img.copy()
    out[r0:r1, c0:c1] = np.clip(patch, 0.0, 255.0)
    mask = np.zeros((size, size), bool)
    mask[r0:r1, c0:c1] = mask_patch
    return out, mask


def _visibility(img: np.ndarray, mask: np.ndarray) -> float:
    """Mean luminance step between the lesion and a ring 2-6 px around it, in units of the ring's spread."""
    lum = _luminance(img)
    ring = ndi.binary_dilation(mask, iterations=6) & ~ndi.binary_dilation(mask, iterations=2)
    if not mask.any() or ring.sum() < 8:
        return 0.0
    return abs(float(lum[mask].mean()) - float(lum[ring].mean())) / max(float(lum[ring].std()), 4.0)


def _place_lesion(
    rng: np.random.Generator, img: np.ndarray, lum_smooth: np.ndarray, site: tuple, rgb: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a lesion at `site`; if it does not stand out from its surroundings (`MIN_VISIBILITY`; e.g. a bright
    lesion straddling a bone edge in CT), redraw it at other sites and keep the most visible one."""
    best = None
    for attempt in range(_LESION_TRIES):
        if attempt:
            site = _lesion_site(rng, lum_smooth, img.shape[0]) or site
        drawn, mask = _draw_lesion(rng, img, *site, rgb=rgb)
        visibility = _visibility(drawn, mask)
        if best is None or visibility > best[0]:
            best = (visibility, drawn, mask)
        if visibility >= MIN_VISIBILITY:
            break
    return best[1], best[2]


def _render(seed: int, split: int, index: int, lesion: bool, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng([seed, split, index])
    sources = _load_sources()
    weights = np.array([s.weight for s in SOURCES])
    src_id = int(rng.choice(len(SOURCES), p=weights / weights.sum()))
    src = SOURCES[src_id]
    image = sources[src.name]
    site = None
    for _ in range(30):
        img = _intensity(rng, src, _crop(rng, src, image, size))
        lum_smooth = ndi.uniform_filter(_luminance(img), 5)
        if (lum_smooth > _TISSUE_LEVEL).mean() < _MIN_TISSUE_FRACTION:
            continue
        site = _lesion_site(rng, lum_smooth, size)
        if site is not None:
            break
    if site is None:  # pragma: no cover - practically unreachable with the shipped sources
        raise RuntimeError(f"no usable crop for image {index} (source {src.name})")
    # the lesion's own random numbers come from a separate stream, so the background pipeline is identical
    # whatever the label
    lesion_rng = np.random.default_rng([seed, split, index, 1])
    mask = np.zeros((size, size), bool)
    if lesion:
        img, mask = _place_lesion(lesion_rng, img, lum_smooth, site, src.rgb)
    # final acquisition blur and sensor noise, identical for both classes
    blur = rng.uniform(0.0, 0.8)
    if blur > 0.3:
        img = ndi.gaussian_filter(img, (blur, blur, 0))
    img = img + np.float32(rng.uniform(1.0, 3.5)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask, src_id


def generate_detailed(
    n: int, *, size: int = 128, seed: int = 0, lesion_fraction: float = 0.5, split: str | None = None
) -> dict[str, np.ndarray]:
    """Like `generate`, also returning `sources` (index into `SOURCES` per image)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError("lesion_fraction must be in [0, 1]")
    if size < 32:
        raise ValueError("size must be >= 32")
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of train/val/test/None, got {split!r}")
    code = _SPLIT_CODES[split]
    n_lesion = int(round(n * lesion_fraction))
    labels = np.zeros(n, np.int64)
    labels[:n_lesion] = 1
    np.random.default_rng([seed, code, 2**31 - 1]).shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), bool)
    sources = np.empty(n, np.int64)
    for i in range(n):
        images[i], masks[i], sources[i] = _render(seed, code, i, bool(labels[i]), size)
    return {"images": images, "labels": labels, "masks": masks, "sources": sources}


def generate(
    n: int, *, size: int = 128, seed: int = 0, lesion_fraction: float = 0.5, split: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` images (uint8 [N,H,W,3]), labels (int64 [N], index into `CLASSES`) and lesion masks
    (bool [N,H,W], all False for normal images). `split` ("train" / "val" / "test" / None) selects an
    independent random stream, so different splits never produce the same image."""
    d = generate_detailed(n, size=size, seed=seed, lesion_fraction=lesion_fraction, split=split)
    return d["images"], d["labels"], d["masks"]


def build_splits(seed: int = 0, size: int = 128, n_train: int = 600, n_val: int = 200, n_test: int = 200,
                 lesion_fraction: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{"train" | "validation" | "test": (images, labels, masks)}, rendered from disjoint random streams."""
    return {
        "train": generate(n_train, size=size, seed=seed, lesion_fraction=lesion_fraction, split="train"),
        "validation": generate(n_val, size=size, seed=seed, lesion_fraction=lesion_fraction, split="val"),
        "test": generate(n_test, size=size, seed=seed, lesion_fraction=lesion_fraction, split="test"),
    }


__all__ = ["CLASSES", "SOURCES", "build_splits", "generate", "generate_detailed"]
