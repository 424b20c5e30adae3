"""Chores every scenario's data shares: cutting missing validation/test splits from train, the per-class cap, and
loading a Hub dataset with one clear error."""

from __future__ import annotations

import numpy as np

from fmhub.errors import FmhubError

SPLITS = ("train", "validation", "test")
EVAL_FRACTION = 0.15  # of each class, per missing split: 70/15/15 when a data set has only train


def stratified_split(labels, seed: int, missing=("validation", "test"), fraction: float = EVAL_FRACTION
                     ) -> dict[str, list[int]]:
    """Row indices per split: each split in `missing` takes `fraction` of every class (at least one row of a class
    with 3 or more), train keeps the rest. Deterministic for a seed; indices sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], **{s: [] for s in missing}}
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label)).tolist()
        n_eval = max(1, round(fraction * len(idx))) if len(idx) >= 3 else 0
        for split in missing:
            parts[split] += idx[:n_eval]
            idx = idx[n_eval:]
        parts["train"] += idx
    return {s: sorted(i) for s, i in parts.items()}


def complete_splits(data, seed: int):
    """A DatasetDict with train/validation/test: the missing ones cut from train (stratified by `label`)."""
    import datasets

    if "train" not in data:
        raise FmhubError("the data has no train split")
    missing = [s for s in ("validation", "test") if s not in data]
    if not missing:
        return datasets.DatasetDict({s: data[s] for s in SPLITS})
    train = data["train"]
    parts = stratified_split(train["label"], seed, missing)
    out = {s: data[s] for s in SPLITS if s in data and s not in parts}
    out.update({s: train.select(idx) for s, idx in parts.items()})
    return datasets.DatasetDict({s: out[s] for s in SPLITS})


def cap_indices(labels, limit: int, seed: int = 0) -> list[int]:
    """At most `limit` rows per class, drawn evenly over the split (data is often ordered by class or speaker)."""
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    seen: dict = {}
    keep = []
    for i in order:
        seen[labels[i]] = seen.get(labels[i], 0) + 1
        if seen[labels[i]] <= limit:
            keep.append(int(i))
    return sorted(keep)


def cap_per_class(data, limit: int | None):
    """`--max-samples-per-class N`: every split of the DatasetDict keeps at most N rows of each class."""
    if not limit:
        return data
    import datasets

    return datasets.DatasetDict({s: ds.select(cap_indices(ds["label"], limit)) for s, ds in data.items()})


def load_hub_dataset(ref: str, what: str = "data", config_name: str | None = None):
    """`datasets.load_dataset(ref)` with one clear line when the id is missing, unreachable or malformed."""
    import datasets

    try:
        return datasets.load_dataset(ref, config_name)
    except Exception as err:  # datasets raises many types for a missing or unreachable id, or a bad layout
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise FmhubError(f"cannot load {what} {ref!r}: not a local file or folder, and the Hub said: {first}"
                         ) from None
