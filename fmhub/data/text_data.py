"""Text rows as datasets and as training batches: ClassLabel datasets (out-of-scope rows: label -1) and a dataset
that tokenizes on the fly with chat-style noise."""

from __future__ import annotations

import random
import string

import torch

from fmhub.data.intents import OOS_ALIASES
from fmhub.errors import FmhubError


def rows_to_datasets(rows: dict[str, list[dict]], label_names: list[str]):
    """{split: rows with string labels} -> DatasetDict (`text`, `label`); out-of-scope aliases become -1."""
    import datasets

    ids = {name: i for i, name in enumerate(label_names)}
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=label_names)})
    out = {}
    for split, items in rows.items():
        unknown = sorted({r["label"] for r in items} - set(ids) - OOS_ALIASES)
        if unknown:
            raise FmhubError(f"{split} split has labels the model or the training split does not know: "
                             f"{', '.join(unknown[:5])}")
        out[split] = datasets.Dataset.from_dict(
            {"text": [str(r["text"]) for r in items], "label": [ids.get(r["label"], -1) for r in items]},
            features=features,
        )
    return datasets.DatasetDict(out)


class TextDataset(torch.utils.data.Dataset):
    """Tokenizes on the fly so training can add chat-style noise (typos, lowercase, no punctuation) each epoch."""

    def __init__(self, texts: list[str], labels: list[int], tokenizer, max_length: int, augment: bool = False):
        self.texts, self.labels, self.tokenizer = texts, labels, tokenizer
        self.max_length, self.augment = max_length, augment

    @property
    def lengths(self) -> list[int]:
        """Token counts (before augmentation), for length-grouped batches."""
        if not hasattr(self, "_lengths"):
            ids = self.tokenizer(self.texts, truncation=True, max_length=self.max_length)["input_ids"]
            self._lengths = [len(x) for x in ids]
        return self._lengths

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        text = self.texts[index]
        if self.augment:
            text = chat_noise(text, random)  # `random` is seeded by set_seed and restored on resume
        encoded = self.tokenizer(text, truncation=True, max_length=self.max_length)
        return {**encoded, "labels": self.labels[index]}


def chat_noise(text: str, rng) -> str:
    """Half the time unchanged; else one or two of: lowercase, no punctuation, a dropped/swapped/doubled letter."""
    if rng.random() < 0.5:
        return text
    for _ in range(rng.randint(1, 2)):
        kind = rng.randrange(5)
        if kind == 0:
            text = text.lower()
        elif kind == 1:
            text = text.translate(str.maketrans("", "", string.punctuation)) or text
        else:
            letters = [i for i, c in enumerate(text) if c.isalpha()]
            if len(letters) < 4:
                continue
            i = rng.choice(letters[1:-1])
            if kind == 2:
                text = text[:i] + text[i + 1 :]
            elif kind == 3 and i + 1 < len(text):
                text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
            else:
                text = text[:i] + text[i] + text[i:]
    return text
