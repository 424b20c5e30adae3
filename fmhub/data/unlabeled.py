"""Unlabelled data for semi-supervised training (`--unlabeled-data`, `--labels-per-class`).

Two sources, one shape: a pool `datasets.Dataset` with the training split's columns (its `label` a placeholder 0) and
the hidden labels beside it (`UNKNOWN` where nobody knows them).

- `--labels-per-class N` keeps N labelled rows of each class of the training split and hands the rest on as the pool;
  their true labels are kept only to report how accurate the pseudo-labels are.
- `--unlabeled-data PATH`: a JSONL/CSV of texts, a folder of image or audio files (searched recursively), or a Hub
  dataset split (`user/name` or `user/name:split`). Files that fail to decode are skipped and counted. Data that
  carries labels is refused with a message saying to pass it with --data: labelled and unlabelled are never mixed
  silently.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmhub.errors import FmhubError

UNKNOWN = -2  # hidden label of a pool row whose truth nobody knows (-1 is taken: out of scope)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
LABEL_COLUMNS = ("label", "labels", "intent", "class")


@dataclass
class Pool:
    """Unlabelled rows (`dataset`, label column a placeholder) with what is known about them."""

    dataset: object  # datasets.Dataset with the training split's columns
    hidden_labels: np.ndarray  # true label ids (-1 out of scope), UNKNOWN where not known
    skipped_unreadable: int = 0

    def __len__(self) -> int:
        return len(self.hidden_labels)


# -- the low-label simulation -----------------------------------------------------------------------------------------
def labelled_indices(labels, per_class: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, rest): `per_class` >= 1 keeps that many rows of each class, a fraction in (0, 1) keeps that share (at
    least one row); rows labelled -1 (out of scope) count as one more group. Seeded: other seeds, other subsets."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    for value in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == value))
        n = int(per_class) if per_class >= 1 else max(1, round(per_class * len(idx)))
        kept += idx[:n].tolist()
    kept_set = set(kept)
    return sorted(kept), [i for i in range(len(labels)) if i not in kept_set]


def split_off_pool(train, per_class: float, seed: int) -> tuple[object, Pool]:
    """The training split cut into its labelled part and the pool of the rest (labels hidden)."""
    kept, rest = labelled_indices(train["label"], per_class, seed)
    rest_ds = train.select(rest)
    hidden = np.asarray(rest_ds["label"], dtype=np.int64)
    return train.select(kept), Pool(with_placeholder_labels(rest_ds), hidden)


def with_placeholder_labels(ds):
    """The same rows with every label 0: nothing downstream may read a pool row's true label."""
    return replace_labels(ds, [0] * len(ds))


def replace_labels(ds, labels: list[int]):
    """The rows of `ds` with other labels (same features, same column order, same format)."""
    fmt = ds.format
    feature, order = ds.features["label"], ds.column_names
    out = ds.with_format(None).remove_columns("label").add_column("label", list(labels), feature=feature)
    return out.select_columns(order).with_format(fmt["type"], columns=fmt["columns"],
                                                 output_all_columns=fmt["output_all_columns"])


# -- reading unlabelled sources ---------------------------------------------------------------------------------------
def refuse_labelled(source: str, column: str) -> FmhubError:
    return FmhubError(
        f"--unlabeled-data {source} carries labels (a {column!r} column): pass labelled examples with --data, and "
        "give --unlabeled-data only data without labels (drop the column to use the rows as unlabelled)"
    )


def is_label(value) -> bool:
    """A label value, not the usual marks of "no label" (missing, empty, -1 as in the Hub's unsupervised splits)."""
    return value not in (None, "", -1, "-1")


def check_unlabelled(rows, source: str) -> None:
    """Refuse rows that carry labels: labelled data goes in with --data, never mixed into the pool silently."""
    for row in rows:
        column = next((c for c in LABEL_COLUMNS if is_label(row.get(c))), None)
        if column:
            raise refuse_labelled(source, column)


def read_texts(path: Path) -> tuple[list[str], int]:
    """Texts from a JSONL or CSV file with a `text` field; (texts, rows skipped as unreadable). Rows with labels
    are refused."""
    rows, skipped = [], 0
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            rows = list(csv.DictReader(fh))
    else:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    skipped += 1
                    continue
                if not isinstance(row, dict):
                    skipped += 1
                    continue
                rows.append(row)
    check_unlabelled(rows, str(path))
    texts = []
    for row in rows:
        text = row.get("text")
        if isinstance(text, str) and text.strip():
            texts.append(text)
        else:
            skipped += 1
    return texts, skipped


def media_files(folder: Path, suffixes: set[str], label_names: list[str]) -> list[Path]:
    """The folder's files with these suffixes, recursively; a folder laid out as class subfolders is refused."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name in set(label_names))
    if classes:
        raise FmhubError(
            f"--unlabeled-data {folder} has class subfolders ({', '.join(classes[:4])}): it holds labelled "
            "examples; pass it with --data, or give a folder of files without class subfolders"
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise FmhubError(f"--unlabeled-data {folder} has no {'/'.join(sorted(suffixes))} files")
    return files


def read_images(folder: Path, label_names: list[str]) -> tuple[list, int]:
    """Decoded RGB PIL images of a folder (recursively); (images, files that failed to decode)."""
    from PIL import Image

    images, skipped = [], 0
    for path in media_files(folder, IMAGE_SUFFIXES, label_names):
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except Exception:  # PIL raises many types for a truncated or foreign file
            skipped += 1
    return images, skipped


def read_clips(folder: Path, label_names: list[str]) -> tuple[np.ndarray, int]:
    """1 s int16 clips of a folder's audio files (recursively); (clips, files that failed to decode)."""
    from fmhub import audio
    from fmhub.data.audio_data import AUDIO_SUFFIXES, CLIP

    clips, skipped = [], 0
    for path in media_files(folder, AUDIO_SUFFIXES, label_names):
        try:
            wave = audio.fit_clip(audio.load_audio(str(path), max_seconds=600.0), CLIP)
        except Exception:  # soundfile and the decoders raise many types for a broken file
            skipped += 1
            continue
        clips.append(to_int16(wave))
    return (np.stack(clips) if clips else np.zeros((0, CLIP), np.int16)), skipped


def to_int16(wave: np.ndarray) -> np.ndarray:
    return np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)


def hub_split(ref: str, column: str | None = None):
    """`user/name` (its train split) or `user/name:split` through `datasets`; a split with labels is refused, and so
    is one without `column` when given."""
    from fmhub.data.splits import load_hub_dataset

    repo, _, split = ref.partition(":")
    data = load_hub_dataset(repo, "unlabelled data")
    split = split or "train"
    if split not in data:
        raise FmhubError(f"--unlabeled-data {ref}: no split {split!r} (it has {', '.join(data)})")
    ds = data[split]
    for name in (c for c in LABEL_COLUMNS if c in ds.column_names):
        if any(is_label(value) for value in ds[name]):
            raise refuse_labelled(ref, name)
    if column is not None and column not in ds.column_names:
        raise FmhubError(f"--unlabeled-data {ref}: expected a `{column}` column, found {', '.join(ds.column_names)}")
    return ds


def check_source(source: str) -> Path | None:
    """The local path of `--unlabeled-data`, or None for a Hub dataset id; a missing local path is an error."""
    from fmhub.hubids import looks_like_repo_id

    path = Path(source).expanduser()
    if path.exists():
        return path
    if looks_like_repo_id(source.split(":")[0]):
        return None
    raise FmhubError(f"--unlabeled-data {source}: no such file or folder, and not a Hub dataset id user/name")


# -- pools shaped like the training split, one per modality ---------------------------------------------------------
def text_pool(source: str, like) -> Pool:
    """`source` as rows of `like` (`text`, `label`)."""
    import datasets

    path = check_source(source)
    if path is None:
        ds = hub_split(source, "text")
        raw = list(ds["text"])
        texts = [t for t in raw if isinstance(t, str) and t.strip()]
        skipped = len(raw) - len(texts)
    elif path.is_dir():
        raise FmhubError(f"--unlabeled-data {path} is a folder; give a JSONL or CSV file with a `text` column")
    else:
        texts, skipped = read_texts(path)
    features = datasets.Features({"text": like.features["text"], "label": like.features["label"]})
    dataset = datasets.Dataset.from_dict({"text": texts, "label": [0] * len(texts)}, features=features)
    return Pool(dataset, np.full(len(texts), UNKNOWN, dtype=np.int64), skipped)


def image_pool(source: str, like, label_names: list[str]) -> Pool:
    """`source` as rows of `like`: uint8 arrays of its size when its images are arrays, else images."""
    import datasets

    from fmhub.imaging import to_pil_rgb

    path = check_source(source)
    if path is None:
        ds = hub_split(source)
        column = next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        if column is None:
            raise FmhubError(f"--unlabeled-data {source}: no image column (found {', '.join(ds.column_names)})")
        images, skipped = [], 0
        for row in ds.cast_column(column, datasets.Image(decode=False)):
            try:
                images.append(to_pil_rgb(datasets.Image().decode_example(row[column])))
            except Exception:  # a broken image in the split
                skipped += 1
    elif path.is_dir():
        images, skipped = read_images(path, label_names)
    else:
        raise FmhubError(f"--unlabeled-data {path}: give a folder of image files (or a Hub dataset split)")
    kind = like.features["image"]
    if isinstance(kind, datasets.Array3D):  # the embedded set: fixed-size arrays
        h, w = kind.shape[:2]
        arrays = np.stack([np.asarray(im.resize((w, h))) for im in images]) if images else np.zeros((0, h, w, 3))
        features = datasets.Features({"image": kind, "label": like.features["label"]})
        dataset = datasets.Dataset.from_dict({"image": arrays.astype(np.uint8), "label": [0] * len(images)},
                                             features=features).with_format("numpy", columns=["image"],
                                                                            output_all_columns=True)
    else:
        features = datasets.Features({"image": datasets.Image(), "label": like.features["label"]})
        dataset = datasets.Dataset.from_dict({"image": images, "label": [0] * len(images)}, features=features)
    return Pool(dataset, np.full(len(images), UNKNOWN, dtype=np.int64), skipped)


def audio_pool(source: str, label_names: list[str]) -> Pool:
    """`source` as 1 s int16 clips in the audio datasets' layout (`fmhub.data.audio_data.dataset_dict`)."""
    import datasets

    from fmhub import audio
    from fmhub.data.audio_data import CLIP, dataset_dict

    path = check_source(source)
    if path is None:
        ds = hub_split(source, "audio")
        clips, skipped = [], 0
        for row in ds.cast_column("audio", datasets.Audio(decode=False)):
            try:
                wave = audio.fit_clip(audio.load_audio(row["audio"], max_seconds=600.0), CLIP)
            except Exception:  # a broken clip in the split
                skipped += 1
                continue
            clips.append(to_int16(wave))
        waves = np.stack(clips) if clips else np.zeros((0, CLIP), np.int16)
    elif path.is_dir():
        waves, skipped = read_clips(path, label_names)
    else:
        raise FmhubError(f"--unlabeled-data {path}: give a folder of audio files (or a Hub dataset split)")
    dataset = dataset_dict({"pool": (waves, [0] * len(waves))}, label_names)["pool"]
    return Pool(dataset, np.full(len(waves), UNKNOWN, dtype=np.int64), skipped)
