"""Customer service: intent detection with a calibrated out-of-scope decision, FAQ answers and human hand-off."""

from __future__ import annotations

import random
import string
from pathlib import Path

import numpy as np
import torch

from fmhub.config import TrainConfig
from fmhub.data import intents
from fmhub.errors import FmhubError
from fmhub.hub import REPO_ID
from fmhub.models.text import load_pretrained
from fmhub.scenarios import register_scenario
from fmhub.scenarios.base import Scenario


@register_scenario
class CustomerService(Scenario):
    name = "customer-service"
    modality = "text"
    pipeline_tag = "text-classification"
    library_name = "transformers"
    default_backbone = "sentence-transformers/all-MiniLM-L6-v2"
    default_labels = intents.INTENTS
    input_key = "text"
    defaults = {
        "epochs": 7,
        "batch_size": 32,
        "learning_rate": 1e-4,
        "head_learning_rate": 1e-3,
        "warmup_ratio": 0.1,
        "max_length": 64,
        "early_stopping_patience": 0,  # the full linear decay: the last epochs at a low rate give the best model
        "metric_for_best_model": "macro_f1",
        "augment": False,
        "freeze_embeddings": True,
        "group_by_length": True,
    }

    # -- data ---------------------------------------------------------------------------------------------------
    def load_data(self, config: TrainConfig, label_names: list[str] | None = None):
        import datasets

        if config.data is None:
            rows = intents.load_embedded_intents(seed=0)
        elif Path(config.data).expanduser().exists() or not REPO_ID.match(config.data):
            rows = intents.load_text_rows(config.data, seed=config.seed)
        else:
            rows = _hub_rows(config.data)
        in_scope = sorted({r["label"] for r in rows["train"] if r["label"].lower() not in intents.OOS_ALIASES})
        if config.data is None:
            in_scope = list(intents.INTENTS)
        if label_names is not None:
            in_scope = list(label_names)  # evaluation: the saved model's label order decides the ids
        if len(in_scope) < 2:
            raise FmhubError(f"the training data has {len(in_scope)} intent label(s); at least 2 are needed")
        ids = {name: i for i, name in enumerate(in_scope)}
        features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=in_scope)})
        out = {}
        for split, items in rows.items():
            unknown = sorted({r["label"] for r in items} - set(ids) - intents.OOS_ALIASES)
            if unknown:
                raise FmhubError(f"{split} split has labels not in the training split: {', '.join(unknown[:5])}")
            out[split] = datasets.Dataset.from_dict(
                {"text": [str(r["text"]) for r in items], "label": [ids.get(r["label"], -1) for r in items]},
                features=features,
            )
        return datasets.DatasetDict(out)

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, config: TrainConfig, label_names: list[str]):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        backbone = self.resolve_backbone(config.model)
        tokenizer = load_pretrained(AutoTokenizer, backbone, "tokenizer")
        model = load_pretrained(
            AutoModelForSequenceClassification,
            backbone,
            "text model",
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            ignore_mismatched_sizes=True,
        )
        if config.freeze_embeddings:
            # fine-tuning barely moves the 30k x 384 token table, but its dense gradient and AdamW update were a
            # third of each CPU step; position/type embeddings and LayerNorm still train
            model.get_input_embeddings().weight.requires_grad_(False)
        return model, tokenizer

    def load_model(self, folder: Path):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = load_pretrained(AutoTokenizer, str(folder), "tokenizer")
        model = load_pretrained(AutoModelForSequenceClassification, str(folder), "text model")
        return model.eval(), tokenizer

    def make_dataset(self, split, tokenizer, config: TrainConfig, train: bool):
        return TextDataset(
            list(split["text"]), list(split["label"]), tokenizer, config.max_length, augment=train and config.augment
        )

    def collate_fn(self, tokenizer, config: TrainConfig):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)  # dynamic padding: each batch to its own longest sentence

    def save_model(self, model, tokenizer, folder: Path, label_names: list[str]) -> None:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {n: i for i, n in enumerate(label_names)}
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    # -- out of scope -------------------------------------------------------------------------------------------
    def calibrate(self, probs: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
        """Pick the confidence threshold that best separates correct in-scope answers from out-of-scope messages.

        Objective on validation data: mean of (in-scope accepted and correct) and (out-of-scope rejected).
        """
        confidence, preds = probs.max(axis=1), probs.argmax(axis=1)
        inside = labels >= 0
        faq = intents.load_faq() if set(label_names) <= set(intents.INTENTS) else {}
        if not (~inside).any():
            correct = confidence[inside & (preds == labels)]
            threshold = float(np.quantile(correct, 0.02)) if len(correct) else 0.5
            return {
                "oos_threshold": threshold,
                "oos_calibration": "2nd percentile of correct validation answers",
                "faq": faq,
            }
        candidates = np.unique(np.concatenate([confidence, [0.0]]))
        best, threshold = -1.0, 0.0
        for t in candidates:
            accept = confidence >= t
            in_ok = (accept & (preds == labels))[inside].mean()
            oos_ok = (~accept)[~inside].mean()
            score = 0.5 * (in_ok + oos_ok)
            if score > best + 1e-9:
                best, threshold = score, float(t)
        # place the threshold half-way to the next lower confidence, not on a validation point
        lower = confidence[confidence < threshold]
        if len(lower):
            threshold = float((threshold + lower.max()) / 2)
        return {"oos_threshold": threshold, "oos_calibration": f"validation balanced score {best:.3f}", "faq": faq}

    def extra_metrics(self, probs: np.ndarray, labels: np.ndarray, extras: dict, label_names: list[str]) -> dict:
        threshold = extras.get("oos_threshold", 0.0)
        accept = probs.max(axis=1) >= threshold
        inside = labels >= 0
        out = {"oos_threshold": threshold}
        if inside.any():
            out["in_scope_accuracy_with_oos"] = float((accept & (probs.argmax(1) == labels))[inside].mean())
        if (~inside).any():
            out["oos_recall"] = float((~accept)[~inside].mean())
            out["oos_examples"] = int((~inside).sum())
            # 13-way accuracy: the 12 intents plus out_of_scope as one more class
            pred = np.where(accept, probs.argmax(1), -1)
            out["accuracy_with_oos"] = float((pred == labels).mean())
        return out

    def load_eval_split(self, config: TrainConfig, label_names: list[str]):
        """A single JSONL/CSV file is scored whole; folders and the embedded set use their test split."""
        path = Path(config.data).expanduser() if config.data else None
        if path is not None and path.is_file():
            import datasets

            rows = intents._read_table(path)
            ids = {name: i for i, name in enumerate(label_names)}
            unknown = sorted({r["label"] for r in rows} - set(ids) - intents.OOS_ALIASES)
            if unknown:
                raise FmhubError(f"{path} has labels the model does not know: {', '.join(unknown[:5])}")
            features = datasets.Features(
                {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(label_names))}
            )
            return datasets.Dataset.from_dict(
                {"text": [str(r["text"]) for r in rows], "label": [ids.get(r["label"], -1) for r in rows]},
                features=features,
            )
        return self.load_data(config, label_names)["test"]

    def predictor(self, folder: Path):
        from fmhub.serving import TextIntentPredictor

        return TextIntentPredictor(folder, self)

    def card_info(self, data_source: str | None) -> dict:
        return {
            "datasets": [] if data_source is None else [data_source],
            "license": "apache-2.0",
            "data_description": (
                "fmhub's embedded customer-service intent set: about 1,750 English customer messages written by the "
                "fmhub team over 12 intents, plus about 400 out-of-scope messages used for outlier exposure and to "
                "calibrate the out-of-scope threshold."
                if data_source is None
                else f"`{data_source}`"
            ),
            "intended_use": "Intent detection for an online shop's chat assistant, with FAQ answers and a hand-off "
            "to a human for `human_agent` and out-of-scope messages.",
            "limitations": "English only; trained on short chat messages about orders, delivery, payments and "
            "accounts. Messages outside these topics should fall below the out-of-scope threshold, "
            "but no threshold is perfect: keep the human hand-off.",
        }


def _hub_rows(dataset_id: str) -> dict[str, list[dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id)
    except Exception as err:  # datasets raises many types for a missing or unreachable id
        raise FmhubError(
            f"cannot load data {dataset_id!r}: not a local file or folder, and the Hub said: "
            f"{str(err).splitlines()[0][:200]}"
        ) from None
    label_feature = ds["train"].features.get("label")
    out = {}
    for split, name in (("train", "train"), ("validation", "validation"), ("test", "test")):
        if name in ds:
            part = ds[name]
            names = label_feature.names if hasattr(label_feature, "names") else None
            out[split] = [
                {"text": t, "label": names[y] if names else str(y)} for t, y in zip(part["text"], part["label"])
            ]
    if len(out) < 3:
        auto = intents.split_rows(out["train"])
        for split in intents.SPLITS:
            out.setdefault(split, auto[split])
    return out


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
