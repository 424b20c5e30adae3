"""Image decoding and hardening for every image input (the CLI, the app, the Spaces): `open_image` turns a path,
bytes, a PIL image or an array into a validated 8-bit RGB PIL image, checking the format, the pixel budget and the
decoded-size budget from the header before any pixel is decoded; `to_pil_rgb` converts arrays and odd PIL modes
(16-bit, float, RGBA, CMYK, ...) a strip at a time, so that no full-size float or RGBA copy is ever made."""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path

import numpy as np

from fmhub.errors import FmhubError

MAX_IMAGE_PIXELS = 36_000_000  # pixel budget checked from the header, before any pixel is decoded
# Decoded-size budget for images that need converting (16-bit, float, transparency, CMYK, ...): width x height x
# bands x bytes per band of the decoded mode, also from the header. Pixels alone were no bound: an 82 KB 16-bit grey
# PNG of 36 megapixels is 72 MB decoded, an RGBA one 144 MB, and their conversion to RGB costs more on top. 64 MB
# takes a 32-megapixel 16-bit scan or a 16-megapixel RGBA image and keeps a request under about 200 MB (four at
# once under 1 GB). Plain 8-bit grey, palette and RGB images (DIRECT_MODES) decode straight to their final size,
# at most 108 MB under the pixel budget, so that only the pixel budget bounds them: a 24-megapixel photo is fine.
MAX_DECODED_BYTES = 64_000_000
DIRECT_MODES = ("1", "L", "P", "RGB")
# The formats the medical tab reads (DICOM is not among them: Pillow cannot read it, and no upload path decodes it);
# Image.open tries no other decoder on an upload.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")
STRIP_PIXELS = 1 << 20  # conversions run on strips of about a megapixel: the peak is the source plus the RGB result
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # one band of more than 8 bits: scaled to 8 bits


def to_pil_rgb(image):
    """An 8-bit RGB PIL image from a PIL image or an array (H x W, H x W x 1/3/4; uint8, uint16 or float)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise FmhubError(f"an image array must be H x W or H x W x 3/4, got shape {a.shape}")
    if a.shape[0] * a.shape[1] > MAX_IMAGE_PIXELS:
        raise FmhubError(_too_large(a.shape[1], a.shape[0]))
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = _to_8bit(a)
    if a.ndim == 3 and a.shape[-1] == 4:
        return _pil_to_rgb(Image.fromarray(a, "RGBA"))
    return Image.fromarray(a).convert("RGB")


def _to_8bit(a: np.ndarray, top: float | None = None) -> np.ndarray:
    """uint8 from integer or float data, computed a block of rows at a time (never a full-size float copy).

    Integers: values up to 255 stay; 10/12-bit data (max < 4096, common in medical imaging) is scaled by 255/4095;
    anything larger by 255/65535 (the inverse of the usual 8 -> 16 bit scaling); 16-bit data goes through a lookup
    table. Floats: NaN -> 0, data within [0, 1] is scaled by 255, then clipped to 0..255. `top` is the maximum of
    the whole image (`_top`) when `a` is one strip of it.
    """
    top = _top(a) if top is None else top
    if a.dtype.kind == "u" and a.dtype.itemsize <= 2:
        return _lookup_table(1 << (8 * a.dtype.itemsize), _divisor(top))[a]
    out = np.empty(a.shape, np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, a[0].size))
    for i in range(0, len(a), rows):
        out[i:i + rows] = _scale_to_8bit(a[i:i + rows], top)
    return out


@functools.lru_cache(maxsize=8)
def _lookup_table(levels: int, divisor: float) -> np.ndarray:
    """uint8 of every value 0..levels-1, as `_scale_to_8bit` computes it: 16-bit data maps without a float copy."""
    table = np.arange(levels, dtype=np.float64)
    table = np.clip(np.rint(table * (255.0 / divisor) if divisor != 255.0 else table), 0, 255).astype(np.uint8)
    table.flags.writeable = False  # shared between calls
    return table


def _divisor(top: float) -> float:
    return 255.0 if top <= 255 else 4095.0 if top < 4096 else 65535.0


def _top(a: np.ndarray) -> float:
    """The maximum (at least 0) that `_to_8bit` scales by: of the values, or for floats of the values with NaN as 0."""
    if a.dtype.kind != "f":
        return float(a.max(initial=0))
    rows = max(1, STRIP_PIXELS // max(1, a[0].size))
    return max(float(np.nan_to_num(a[i:i + rows].astype(np.float32)).max(initial=0)) for i in range(0, len(a), rows))


def _scale_to_8bit(a: np.ndarray, top: float) -> np.ndarray:
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32))
        return np.clip(a * 255.0 if top <= 1.0 else a, 0, 255).astype(np.uint8)
    a = a.astype(np.float64)
    if top > 255:
        a = a * (255.0 / _divisor(top))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _pil_to_rgb(im):
    from PIL import Image

    if im.mode in WIDE_MODES:
        if im.mode == "F":  # NaN counts as 0: scanned a strip at a time
            top = max(_top(np.asarray(strip)) for _, strip in _strips(im))
        else:  # integers: Pillow knows the maximum without a copy
            top = float(max(0, im.getextrema()[1]))  # the scale comes from the whole image
        return _convert_in_strips(im, lambda strip: Image.fromarray(_to_8bit(np.asarray(strip), top)))
    if (im.mode == "P" and "transparency" in im.info) or im.mode in ("RGBA", "LA", "PA"):
        return _convert_in_strips(im, _flatten_alpha)
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB: Pillow converts these without a detour


def _flatten_alpha(strip):
    """Transparent areas read as black background."""
    from PIL import Image

    strip = strip.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", strip.size, (0, 0, 0, 255)), strip)


def _strips(im):
    """(first row, crop) for bands of rows of `im` of about STRIP_PIXELS each."""
    rows = max(1, STRIP_PIXELS // max(1, im.width))
    for top in range(0, im.height, rows):
        yield top, im.crop((0, top, im.width, min(im.height, top + rows)))


def _convert_in_strips(im, convert):
    """An RGB image of `im`, each strip converted by `convert` and pasted: the peak is `im`, the result and a strip."""
    from PIL import Image

    out = Image.new("RGB", im.size)
    for top, strip in _strips(im):
        out.paste(convert(strip).convert("RGB"), (0, top))
    return out


def _too_large(width: int, height: int) -> str:
    return (f"The image is too large ({width} x {height} = {width * height / 1e6:.0f} megapixels); "
            f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels. Please resize it.")


def _check_decoded_size(width: int, height: int, mode: str) -> None:
    """Refuse, from the header, an image whose decoded pixels (in Pillow's `mode`) would exceed MAX_DECODED_BYTES."""
    from PIL import ImageMode

    try:
        spec = ImageMode.getmode(mode)
        bands, depth = len(spec.bands), np.dtype(spec.typestr).itemsize
    except (KeyError, TypeError):  # a mode this Pillow has no description for: count it as 4 bytes a pixel
        bands, depth = 4, 1
    size = width * height * bands * depth
    if size > MAX_DECODED_BYTES:
        raise FmhubError(
            f"The image is too large to decode ({width} x {height} pixels x {bands} band(s) x {depth} byte(s) = "
            f"{size / 1e6:.0f} MB); the limit is {MAX_DECODED_BYTES / 1e6:.0f} MB of decoded pixels. "
            "Please resize it, or save it with 8 bits per channel and no transparency.")


def open_image(source):
    """A validated 8-bit RGB PIL image from a path, bytes, a PIL image or an array.

    Files: only FORMATS are tried; the size is read from the header and checked against the pixel budget and the
    decoded-size budget before any pixel is decoded; empty, truncated, unreadable and vector (SVG) files get a clear
    FmhubError. A decoded RGB image is returned as it is, anything else is converted a strip at a time.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Image.Image) or isinstance(source, np.ndarray):
        if isinstance(source, Image.Image) and source.width * source.height > MAX_IMAGE_PIXELS:
            raise FmhubError(_too_large(source.width, source.height))
        return to_pil_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        head, name = bytes(source[:512]), "the upload"
        if not source:
            raise FmhubError("The image file is empty (0 bytes).")
        opened = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FmhubError(f"image file not found: {path.name}")
        if path.stat().st_size == 0:
            raise FmhubError("The image file is empty (0 bytes).")
        opened, name = path.open("rb"), path.name
        head = opened.read(512)
        opened.seek(0)
    else:
        raise FmhubError(f"expected an image path, bytes, a PIL image or an array, got {type(source).__name__}")
    text = head.lstrip().lower()
    if text.startswith(b"<") and (b"<svg" in head.lower() or text.startswith(b"<?xml")):
        opened.close()
        raise FmhubError(f"SVG (vector) images are not supported; please upload one of {', '.join(FORMATS)}.")
    try:
        with opened as stream:  # closed once the pixels are in: nothing keeps the upload open
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(stream, formats=FORMATS)  # reads the header only
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise FmhubError(_too_large(width, height))
            if im.mode not in DIRECT_MODES or "transparency" in im.info:
                _check_decoded_size(width, height, im.mode)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no copy unless the image is actually turned
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FmhubError(f"The image is too large (over {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels). "
                         "Please resize it.") from None
    except UnidentifiedImageError:
        raise FmhubError(f"{name} is not an image format this app can read ({', '.join(FORMATS)}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise FmhubError(f"{name} could not be decoded (the file looks damaged or truncated: {err}).") from None
    if width < 1 or height < 1:
        raise FmhubError("The image has no pixels.")
    return im if im.mode == "RGB" else to_pil_rgb(im)


__all__ = ["FORMATS", "MAX_DECODED_BYTES", "MAX_IMAGE_PIXELS", "open_image", "to_pil_rgb"]
