"""Customer-service text data: the embedded intent set (shipped in the package) and the user's own files.

Out-of-scope rows carry label -1: in training they teach the model to be unsure (outlier exposure), in validation they
calibrate the out-of-scope threshold, in test they measure out-of-scope recall.
"""

from __future__ import annotations

import csv
import functools
import json
import random
import re
from pathlib import Path

from fmhub.errors import FmhubError
from fmhub.paths import package_data

INTENTS = [
    "order_status",
    "cancel_order",
    "return_refund",
    "change_address",
    "shipping_info",
    "payment_problem",
    "account_access",
    "product_availability",
    "damaged_or_wrong_item",
    "human_agent",
    "greeting",
    "goodbye",
]
OUT_OF_SCOPE = "out_of_scope"
OOS_ALIASES = {"out_of_scope", "oos", "out-of-scope", "none", "other"}
SPLITS = ("train", "validation", "test")
NEAR_MISS_FILE = "near_miss.jsonl"  # out of scope, but sounding like the shop's business: about someone else's


def _key(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise FmhubError(f"{path}:{number} is not valid JSON ({err.msg})") from None
    return rows


def load_faq() -> dict[str, str]:
    return json.loads(package_data("customer_service", "faq.json").read_text(encoding="utf-8"))


def split_rows(rows: list[dict], seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> dict[str, list[dict]]:
    """Stratified, deterministic train/validation/test split; exact duplicates never cross splits."""
    by_label: dict[str, list[dict]] = {}
    seen = set()
    for row in rows:
        key = _key(row["text"])
        if key in seen:
            continue
        seen.add(key)
        by_label.setdefault(row["label"], []).append(row)
    out = {split: [] for split in SPLITS}
    rng = random.Random(seed)
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        n_val = max(1, round(fractions[1] * len(items)))
        n_test = max(1, round(fractions[2] * len(items)))
        out["validation"] += items[:n_val]
        out["test"] += items[n_val : n_val + n_test]
        out["train"] += items[n_val + n_test :]
    return out


def _oos_rows(name: str) -> list[dict]:
    return [{"text": r["text"], "label": OUT_OF_SCOPE} for r in read_jsonl(package_data("customer_service", name))]


@functools.lru_cache(maxsize=1)
def near_miss_keys() -> frozenset[str]:
    """The embedded near-miss messages (normalised), to score them apart from ordinary out-of-scope ones."""
    return frozenset(_key(r["text"]) for r in read_jsonl(package_data("customer_service", NEAR_MISS_FILE)))


def is_near_miss(texts: list[str]) -> list[bool]:
    keys = near_miss_keys()
    return [_key(t) in keys for t in texts]


def load_embedded_intents(seed: int = 0) -> dict[str, list[dict]]:
    """The shipped data set: ~1,750 utterances over the 12 intents, ~400 ordinary out-of-scope messages (weather,
    jokes, trivia) and ~420 near-miss ones (other businesses' and services' deliveries, returns, accounts, payments,
    addresses and cancellations), each out-of-scope kind split 40/30/30 on its own."""
    rows = read_jsonl(package_data("customer_service", "intents.jsonl"))
    splits = split_rows(rows, seed=seed)
    for oos in (_oos_rows("out_of_scope.jsonl"), _oos_rows(NEAR_MISS_FILE)):
        for split, items in split_rows(oos, seed=seed, fractions=(0.4, 0.3, 0.3)).items():
            splits[split] += items
    return splits


def dedupe(rows: list[dict]) -> list[dict]:
    """Rows whose text (case and punctuation aside) was not seen before: a duplicate cannot cross splits."""
    seen, out = set(), []
    for row in rows:
        key = _key(row["text"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def load_text_rows(source: str) -> dict[str, list[dict]]:
    """User data: a JSONL/CSV file (train only: the missing splits are cut from it) or a folder with
    train/validation/test files (any missing one is cut from train)."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = {}
        for split in SPLITS:
            for name in (f"{split}.jsonl", f"{split}.csv", "valid.jsonl" if split == "validation" else ""):
                if name and (path / name).is_file():
                    found[split] = read_table(path / name)
                    break
        if "train" not in found:
            raise FmhubError(f"{path} has no train.jsonl or train.csv")
        found["train"] = dedupe(found["train"])
        return found
    if path.is_file():
        return {"train": dedupe(read_table(path))}
    raise FmhubError(f"data not found: {source} (expected a .jsonl/.csv file, a folder, or a Hub dataset id)")


def hub_rows(dataset_id: str) -> dict[str, list[dict]]:
    """A Hub dataset with `text` and `label` columns as rows with string labels."""
    from fmhub.data.splits import load_hub_dataset

    ds = load_hub_dataset(dataset_id, "data")
    if "train" not in ds:
        raise FmhubError(f"{dataset_id} has no train split")
    label_feature = ds["train"].features.get("label")
    names = label_feature.names if hasattr(label_feature, "names") else None
    return {split: [{"text": t, "label": names[y] if names else str(y)} for t, y in zip(ds[split]["text"],
                                                                                         ds[split]["label"])]
            for split in SPLITS if split in ds}


def read_table(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        if "text" not in row or "label" not in row:
            raise FmhubError(f"{path}: row {number} needs 'text' and 'label' fields")
        row["label"] = str(row["label"])
    return rows
