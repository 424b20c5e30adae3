"""Image decoding and hardening for every image input (the CLI, the app, the Spaces): `open_image` turns a path,
bytes, a PIL image or an array into a validated 8-bit RGB PIL image, checking the pixel budget from the header
before any pixel is decoded; `to_pil_rgb` converts arrays and odd PIL modes (16-bit, float, RGBA, CMYK, ...)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from fmhub.errors import FmhubError

MAX_IMAGE_PIXELS = 36_000_000  # pixel budget checked from the header, before any pixel is decoded


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
    elif a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32))
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        a = np.clip(a, 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = _to_8bit(a)
    if a.ndim == 3 and a.shape[-1] == 4:
        return _pil_to_rgb(Image.fromarray(a, "RGBA"))
    return Image.fromarray(a).convert("RGB")


def _to_8bit(a: np.ndarray) -> np.ndarray:
    """Integer data wider than 8 bits: values up to 255 stay; 10/12-bit data (max < 4096, common in medical imaging)
    is scaled by 255/4095; anything larger by 255/65535 (the inverse of the usual 8 -> 16 bit scaling)."""
    a = a.astype(np.float64)
    top = a.max(initial=0)
    if top > 255:
        a = a * (255.0 / (4095.0 if top < 4096 else 65535.0))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _pil_to_rgb(im):
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_pil_rgb(np.asarray(im))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))  # transparent areas read as black background
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB


def _too_large(width: int, height: int) -> str:
    return (f"The image is too large ({width} x {height} = {width * height / 1e6:.0f} megapixels); "
            f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels. Please resize it.")


def open_image(source):
    """A validated 8-bit RGB PIL image from a path, bytes, a PIL image or an array.

    Files: the size is read from the header and checked against the pixel budget before any pixel is decoded;
    empty, truncated, unreadable and vector (SVG) files get a clear FmhubError.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Image.Image) or isinstance(source, np.ndarray):
        if isinstance(source, Image.Image) and source.width * source.height > MAX_IMAGE_PIXELS:
            raise FmhubError(_too_large(source.width, source.height))
        return to_pil_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        head, stream, name = bytes(source[:512]), io.BytesIO(source), "the upload"
        if not source:
            raise FmhubError("The image file is empty (0 bytes).")
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FmhubError(f"image file not found: {path.name}")
        if path.stat().st_size == 0:
            raise FmhubError("The image file is empty (0 bytes).")
        with path.open("rb") as f:
            head = f.read(512)
        stream, name = path, path.name
    else:
        raise FmhubError(f"expected an image path, bytes, a PIL image or an array, got {type(source).__name__}")
    text = head.lstrip().lower()
    if text.startswith(b"<") and (b"<svg" in head.lower() or text.startswith(b"<?xml")):
        raise FmhubError("SVG (vector) images are not supported; please upload a PNG, JPEG, TIFF or BMP.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(stream)  # reads the header only
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise FmhubError(_too_large(width, height))
        im.load()
        im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FmhubError(f"The image is too large (over {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels). "
                         "Please resize it.") from None
    except UnidentifiedImageError:
        raise FmhubError(f"{name} is not an image format this app can read (PNG, JPEG, TIFF, BMP, ...).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise FmhubError(f"{name} could not be decoded (the file looks damaged or truncated: {err}).") from None
    if width < 1 or height < 1:
        raise FmhubError("The image has no pixels.")
    return to_pil_rgb(im)


__all__ = ["MAX_IMAGE_PIXELS", "open_image", "to_pil_rgb"]
