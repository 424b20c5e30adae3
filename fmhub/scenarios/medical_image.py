"""Medical images: a timm backbone fine-tuned on labelled images, with Grad-CAM and calibrated probabilities.

Data (`--data`): none -> the embedded synthetic set (`fmhub.data.medical_synth`: normal / lesion with lesion masks),
a MedMNIST `.npz` file, a local imagefolder (`class_name/*.png`, optionally under train/validation/test), or a Hub
dataset id. Research and education only: nothing here is a medical device.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from fmhub.config import TrainConfig
from fmhub.errors import FmhubError
from fmhub.scenarios import register_scenario
from fmhub.scenarios.base import Scenario
from fmhub.serving import Predictor

NOTICE = "Research and education only, not a medical device."
EMBEDDED_SPLITS = {"train": 600, "validation": 200, "test": 200}
EMBEDDED_SIZE = 128
EMBEDDED_VERSION = 3  # bump when medical_synth's output changes, so stale caches are not reused
DILATE_BELOW = 256  # px: below this the offline default backbone runs its last stage at output stride 16
MAX_IMAGE_PIXELS = 36_000_000  # pixel budget checked from the header, before any pixel is decoded
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                  "test": "test"}


@register_scenario
class MedicalImage(Scenario):
    name = "medical-image"
    modality = "image"
    pipeline_tag = "image-classification"
    library_name = "timm"
    default_backbone = "efficientnet_lite0"
    input_key = "path"
    defaults = {
        "epochs": 8,
        "freeze_backbone_epochs": 1,
        "batch_size": 32,
        "eval_batch_size": 64,
        "learning_rate": 1e-3,
        "head_learning_rate": 3e-3,
        "weight_decay": 0.01,
        "scheduler": "cosine",
        "warmup_ratio": 0.1,
        "image_size": 128,
        "early_stopping_patience": 0,
        "metric_for_best_model": "macro_f1",
        "augment": True,
        "temperature_scaling": True,
    }

    # -- data ---------------------------------------------------------------------------------------------------
    def load_data(self, config: TrainConfig, label_names: list[str] | None = None):
        if config.data is None:
            splits, names = load_embedded(), list(_synth().CLASSES)
        elif str(config.data).lower().endswith(".npz"):
            splits, names = load_medmnist_npz(config.data)
        else:
            return _limit(_load_datasets(config.data, config.seed, label_names), config.max_samples_per_class)
        if label_names is not None and list(label_names) != names:
            if len(label_names) != len(names):
                raise FmhubError(f"the model has {len(label_names)} labels but the data has {len(names)}")
            names = list(label_names)  # a .npz has no names: the model's, in its order
        return _limit(_arrays_to_datasets(splits, names), config.max_samples_per_class)

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, config: TrainConfig, label_names: list[str]):
        from fmhub.models.timm_backbone import OFFLINE_LITE0_ARCHS, TimmClassifier, create_backbone

        name = self.resolve_backbone(config.model)
        extra = {}
        if name in OFFLINE_LITE0_ARCHS and (config.image_size or 224) < DILATE_BELOW:
            # the offline default's last stage (stride 32) would have fewer than 8 x 8 cells; dilated instead (same
            # weights, output stride 16) it keeps 8 x 8 at 128 px, fine enough for Grad-CAM to point at a lesion a
            # tenth of the image across. timm records output_stride in config.json, so every loader rebuilds it.
            extra["output_stride"] = 16
        backbone = create_backbone(name, len(label_names), pretrained=config.pretrained, **extra)
        model = TimmClassifier(backbone, label_names, image_size=config.image_size)
        return model, model.data_config()

    def load_model(self, folder: Path):
        from fmhub.models.timm_backbone import TimmClassifier

        model = TimmClassifier.from_pretrained(folder)
        return model.eval(), model.data_config()

    def make_dataset(self, split, data_config, config: TrainConfig, train: bool):
        from fmhub.models.timm_backbone import build_transforms

        return ImageDataset(split, build_transforms(data_config, train=train and config.augment))

    def collate_fn(self, data_config, config: TrainConfig):
        return collate_images

    def save_model(self, model, data_config, folder: Path, label_names: list[str]) -> None:
        model.save_pretrained(folder)

    # -- explanations -------------------------------------------------------------------------------------------
    def evaluate_extra(self, model, data_config, split, config: TrainConfig, extras: dict) -> dict:
        """Grad-CAM localisation: share of lesion images whose heatmap peak (for the lesion class) is in the mask."""
        if "mask" not in split.column_names:
            return {}
        names = list(split.features["label"].names)
        target = names.index("lesion") if "lesion" in names else None
        rows = [i for i, m in enumerate(split["has_lesion"]) if m]
        if not rows:
            return {}
        hits = gradcam_hits(model, data_config, split.select(rows), target)
        return {"localization_score": float(np.mean(hits)), "localization_images": len(hits)}

    # -- serving ------------------------------------------------------------------------------------------------
    def predictor(self, folder: Path):
        return MedicalImagePredictor(folder, self)

    def card_info(self, data_source: str | None) -> dict:
        embedded = data_source is None
        return {
            "datasets": [] if embedded or not _is_hub_id(data_source) else [data_source],
            "license": "apache-2.0",
            "base_model": None,
            "clinical_warning": True,
            "data_description": (
                "**Synthetic data, not for diagnosis.** fmhub's embedded set: 1,000 images (600 train / "
                "200 validation / 200 test, 128 px) made by drawing synthetic focal lesions into crops of real, "
                "unlabelled medical images that Python packages ship (scikit-image fundus, retina close-up, "
                "histology and microscopy images; pydicom CT and MR slices). Classes `normal` / `lesion`; the "
                "lesion masks are known, which is how the Grad-CAM localisation score is computed. No real "
                "finding, patient or label is involved."
                if embedded
                else f"`{data_source}`"
            ),
            "intended_use": "Research and education: demonstrating transfer learning, calibration and Grad-CAM "
            "explanations on medical-looking images. " + NOTICE,
            "limitations": "Not a medical device and not clinically validated: never use it to diagnose, treat, "
            "triage or screen patients. "
            + (
                "Trained on synthetic lesions only; it says nothing about real pathology."
                if embedded
                else "Performance outside the training data's source, devices and population is unknown."
            ),
        }


# -- data loading ---------------------------------------------------------------------------------------------------
def _synth():
    from fmhub.data import medical_synth

    return medical_synth


def load_embedded() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The embedded synthetic splits {split: (images, labels, masks)}, cached as .npz (generated once, seconds)."""
    from fmhub.paths import data_cache_dir

    path = data_cache_dir("medical_synth") / f"splits_v{EMBEDDED_VERSION}_{EMBEDDED_SIZE}px.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {s: (z[f"{s}_images"], z[f"{s}_labels"], z[f"{s}_masks"]) for s in EMBEDDED_SPLITS}
        except (OSError, KeyError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache is rebuilt
    n = EMBEDDED_SPLITS
    splits = _synth().build_splits(
        seed=0, size=EMBEDDED_SIZE, n_train=n["train"], n_val=n["validation"], n_test=n["test"]
    )
    tmp = path.with_name(path.name + ".tmp.npz")
    keys = ("images", "labels", "masks")
    np.savez(tmp, **{f"{s}_{k}": a for s, arrays in splits.items() for k, a in zip(keys, arrays)})
    tmp.replace(path)
    return splits


def load_medmnist_npz(path: str) -> tuple[dict, list[str]]:
    """MedMNIST `.npz`: train/val/test images (N x H x W gray or N x H x W x 3, uint8) and labels (N x 1)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FmhubError(f"data file not found: {path}")
    try:
        z = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FmhubError(f"{path} is not a readable .npz file ({err})") from None
    with z:
        missing = [f"{p}_{k}" for p in ("train", "val", "test") for k in ("images", "labels") if f"{p}_{k}" not in z]
        if missing:
            raise FmhubError(f"{path} is not a MedMNIST file: missing {', '.join(missing)}")
        out = {}
        for prefix, split in (("train", "train"), ("val", "validation"), ("test", "test")):
            images, labels = z[f"{prefix}_images"], z[f"{prefix}_labels"]
            if labels.ndim == 2 and labels.shape[1] > 1:
                raise FmhubError(f"{path}: multi-label MedMNIST sets ({labels.shape[1]} labels per image) are not "
                                 "supported; fmhub trains single-label classifiers")
            labels = labels.reshape(-1).astype(np.int64)
            if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
                raise FmhubError(f"{path}: {prefix}_images must be N x H x W or N x H x W x 3, got {images.shape}")
            if len(images) != len(labels):
                raise FmhubError(f"{path}: {len(images)} {prefix} images but {len(labels)} labels")
            out[split] = (_to_uint8_rgb(images), labels, None)
        num_classes = int(max(int(a[1].max(initial=0)) for a in out.values())) + 1
        if "label_names" in z and len(z["label_names"]) >= num_classes:
            names = [str(n) for n in z["label_names"]]
        else:
            names = [f"class_{i}" for i in range(num_classes)]
    if min(int(a[1].min(initial=0)) for a in out.values()) < 0:
        raise FmhubError(f"{path}: labels must be 0..{num_classes - 1}")
    return out, names


def _to_uint8_rgb(images: np.ndarray) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    return images


def _arrays_to_datasets(splits: dict, names: list[str]):
    """In-memory datasets with an `image` column (uint8 H x W x 3 arrays) and, when known, the lesion `mask`."""
    import datasets

    out = {}
    for split, (images, labels, masks) in splits.items():
        if len(labels) and int(labels.max()) >= len(names):
            raise FmhubError(f"{split} split has label {int(labels.max())}, beyond the {len(names)} classes")
        h, w = images.shape[1:3]
        columns = {"image": datasets.Array3D((h, w, 3), "uint8"), "label": datasets.ClassLabel(names=names)}
        values = {"image": images, "label": labels}
        if masks is not None:
            columns["mask"] = datasets.Array2D((h, w), "bool")
            columns["has_lesion"] = datasets.Value("bool")
            values.update(mask=masks, has_lesion=masks.reshape(len(masks), -1).any(axis=1))
        ds = datasets.Dataset.from_dict(values, features=datasets.Features(columns))
        out[split] = ds.with_format("numpy", columns=["image", "mask"] if masks is not None else ["image"],
                                    output_all_columns=True)
    return datasets.DatasetDict(out)


def _load_datasets(ref: str, seed: int, label_names: list[str] | None):
    """A local imagefolder or a Hub dataset id through `datasets`, split 70/15/15 when it has only `train`."""
    import datasets

    local = Path(ref).expanduser()
    try:
        if local.is_dir():
            raw = datasets.load_dataset("imagefolder", data_dir=str(local))
        elif local.exists():
            raise FmhubError(f"--data {ref}: a file; give a MedMNIST .npz, an image folder or a Hub dataset id")
        else:
            raw = datasets.load_dataset(ref)
    except FmhubError:
        raise
    except Exception as err:  # datasets raises many types for a missing or unreachable id
        raise FmhubError(f"cannot load image data {ref!r}: {str(err).splitlines()[0][:200]}") from None
    raw = datasets.DatasetDict({_SPLIT_ALIASES[k]: v for k, v in raw.items() if k in _SPLIT_ALIASES})
    if "train" not in raw:
        raise FmhubError(f"{ref} has no train split")
    features = raw["train"].features
    image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((c for c in ("label", "labels") if isinstance(features.get(c), datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise FmhubError(f"{ref} needs an image column and a class-label column (found {', '.join(features)})")
    raw = raw.select_columns([image_col, label_col])
    if image_col != "image":
        raw = raw.rename_column(image_col, "image")
    if label_col != "label":
        raw = raw.rename_column(label_col, "label")
    if "test" not in raw:
        parts = raw["train"].train_test_split(test_size=0.3, seed=seed, stratify_by_column="label")
        rest = parts["test"].train_test_split(test_size=0.5, seed=seed, stratify_by_column="label")
        raw = datasets.DatasetDict(train=parts["train"], validation=rest["train"], test=rest["test"])
    elif "validation" not in raw:
        parts = raw["train"].train_test_split(test_size=0.15, seed=seed, stratify_by_column="label")
        raw = datasets.DatasetDict(train=parts["train"], validation=parts["test"], test=raw["test"])
    names = list(raw["train"].features["label"].names)
    if label_names is not None and list(label_names) != names:
        raise FmhubError(f"the model's labels {label_names} differ from the data's {names}")
    return raw


def _limit(data, per_class: int | None):
    """`--max-samples-per-class`: the first N rows of each class in every split (quick runs, tests)."""
    if not per_class:
        return data
    import datasets

    out = {}
    for split, ds in data.items():
        labels = np.asarray(ds["label"])
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
        out[split] = ds.select(np.sort(keep))
    return datasets.DatasetDict(out)


def _is_hub_id(ref: str) -> bool:
    from fmhub.hub import is_hub_id

    return is_hub_id(ref)


# -- preprocessing --------------------------------------------------------------------------------------------------
class ImageDataset(torch.utils.data.Dataset):
    """Rows of a datasets split -> {"pixel_values", "labels"} through timm's transforms. Training augmentation draws
    from torch's and random's generators, which the engine's EpochSeededDataset seeds per (seed, epoch, item)."""

    def __init__(self, split, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        row = self.split[index]
        return {"pixel_values": self.transform(to_pil_rgb(row["image"])), "labels": int(row["label"])}


def collate_images(rows: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long),
    }


def gradcam_hits(model, data_config: dict, split, target: int | None, batch_size: int = 32) -> list[bool]:
    """For each row (with a `mask`): is the Grad-CAM peak (class `target`, else the predicted one) inside the mask?"""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    from fmhub.explain import gradcam, peak_in_mask
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


# -- input validation -----------------------------------------------------------------------------------------------
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


# -- serving --------------------------------------------------------------------------------------------------------
class MedicalImagePredictor(Predictor):
    """Image -> {"label", "score", "scores", "notice"} (+ "gradcam": heatmap and overlay when asked).

    Items: file paths, bytes, PIL images or arrays; see `open_image` for the checks and conversions.
    """

    def __init__(self, folder: Path, scenario):
        from fmhub.models.timm_backbone import build_transforms

        super().__init__(folder, scenario)
        self.transform = build_transforms(self.processor, train=False)

    @torch.no_grad()
    def predict_proba(self, pixels: torch.Tensor) -> np.ndarray:
        with self._lock:
            logits = self.model(pixel_values=pixels)["logits"].float()
        return (logits / self.temperature).softmax(-1).numpy()

    def predict(self, items: list, gradcam: bool = False, batch_size: int = 32) -> list[dict]:
        """One result per item, in order. An unreadable item gets {"label": None, "error": ..., "notice"} and the
        others still come (the CLI writes every line; the app shows the error)."""
        from fmhub.explain import denormalize, overlay
        from fmhub.explain import gradcam as compute_gradcam

        results: list[dict] = []
        for start in range(0, len(items), batch_size):
            chunk: list[dict | None] = []
            images = []
            for item in items[start : start + batch_size]:
                try:
                    images.append(open_image(item))
                    chunk.append(None)
                except FmhubError as err:
                    chunk.append({"label": None, "score": None, "scores": {}, "error": str(err), "notice": NOTICE})
            if images:
                pixels = torch.stack([self.transform(im) for im in images])
                probs = self.predict_proba(pixels)
                heat = None
                if gradcam:
                    with self._lock:  # Grad-CAM hooks the shared model: no other forward pass meanwhile
                        heat = compute_gradcam(self.model, pixels, probs.argmax(1).tolist())
                    rgb = denormalize(pixels, self.processor["mean"], self.processor["std"])
                done = iter(range(len(images)))
                for slot, _ in enumerate(chunk):
                    if chunk[slot] is not None:
                        continue
                    i = next(done)
                    best = int(probs[i].argmax())
                    chunk[slot] = {
                        "label": self.label_names[best],
                        "score": round(float(probs[i][best]), 6),
                        "scores": self.scores_dict(probs[i]),
                        "notice": NOTICE,
                    }
                    if heat is not None:
                        chunk[slot]["gradcam"] = {"heatmap": heat[i], "overlay": overlay(rgb[i], heat[i])}
            results.extend(chunk)
        return results


__all__ = ["NOTICE", "MedicalImage", "MedicalImagePredictor", "load_embedded", "load_medmnist_npz", "open_image"]
