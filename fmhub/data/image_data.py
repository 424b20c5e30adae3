"""Image data for the medical image scenario: the embedded synthetic set, MedMNIST `.npz` files, a local imagefolder
or a Hub dataset, all as `datasets` splits with an `image` and a `label` (ClassLabel) column; and the torch dataset
and collate function that feed them to the training engine.

Nothing here splits or caps: missing validation/test splits and `--max-samples-per-class` are the Scenario base's
`load_splits`, the same for every scenario.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fmhub.errors import FmhubError
from fmhub.imaging import to_pil_rgb

EMBEDDED_SPLITS = {"train": 600, "validation": 200, "test": 200}
EMBEDDED_SIZE = 128
EMBEDDED_VERSION = 3  # bump when medical_synth's output changes, so stale caches are not reused
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                  "test": "test"}


def embedded_class_names() -> list[str]:
    from fmhub.data import medical_synth

    return list(medical_synth.CLASSES)


def load_embedded() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The embedded synthetic splits {split: (images, labels, masks)}, cached as .npz (generated once, seconds)."""
    from fmhub.data import medical_synth
    from fmhub.paths import data_cache_dir

    path = data_cache_dir("medical_synth") / f"splits_v{EMBEDDED_VERSION}_{EMBEDDED_SIZE}px.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {s: (z[f"{s}_images"], z[f"{s}_labels"], z[f"{s}_masks"]) for s in EMBEDDED_SPLITS}
        except (OSError, KeyError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache is rebuilt
    n = EMBEDDED_SPLITS
    splits = medical_synth.build_splits(
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


def arrays_to_datasets(splits: dict, names: list[str]):
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


def load_image_datasets(ref: str, label_names: list[str] | None = None):
    """A local imagefolder or a Hub dataset id through `datasets`: the splits it has (train at least), with the
    columns renamed to `image` and `label`."""
    import datasets

    from fmhub.data.splits import load_hub_dataset

    local = Path(ref).expanduser()
    if local.is_dir():
        try:
            raw = datasets.load_dataset("imagefolder", data_dir=str(local))
        except Exception as err:  # datasets raises many types for an unreadable folder
            raise FmhubError(f"cannot load image data {ref!r}: {str(err).splitlines()[0][:200]}") from None
    elif local.exists():
        raise FmhubError(f"--data {ref}: a file; give a MedMNIST .npz, an image folder or a Hub dataset id")
    else:
        raw = load_hub_dataset(ref, "image data")
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
    names = list(raw["train"].features["label"].names)
    if label_names is not None and list(label_names) != names:
        raise FmhubError(f"the model's labels {label_names} differ from the data's {names}")
    return raw


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


__all__ = ["EMBEDDED_SPLITS", "ImageDataset", "arrays_to_datasets", "collate_images", "load_embedded",
           "load_image_datasets", "load_medmnist_npz"]
