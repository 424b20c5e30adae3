"""Customer service: intent detection with a calibrated out-of-scope decision, FAQ answers and human hand-off."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fmhub.data import intents
from fmhub.errors import FmhubError
from fmhub.hubids import looks_like_repo_id
from fmhub.models.auto import label_maps, load_pretrained, load_saved
from fmhub.scenarios.base import Scenario

if TYPE_CHECKING:
    import numpy as np

    from fmhub.config import TrainConfig


OOD_ARRAYS = "_ood_arrays"  # settings key of the distance score's arrays: saved as a file, never in the manifest


def oos_metrics(probs, labels, accept, near_miss=None) -> dict:
    """In-scope accuracy after the out-of-scope decision (`accept`: answered as in scope), out-of-scope recall
    (overall; near-miss and ordinary apart when `near_miss` marks any row) and 13-way accuracy."""
    import numpy as np

    inside, out = labels >= 0, {}
    if inside.any():
        out["in_scope_accuracy_with_oos"] = float((accept & (probs.argmax(1) == labels))[inside].mean())
    if (~inside).any():
        out["oos_recall"] = float((~accept)[~inside].mean())
        out["oos_examples"] = int((~inside).sum())
        if near_miss is not None and near_miss.any():
            ordinary = ~inside & ~near_miss
            out["near_miss_oos_recall"] = float((~accept)[near_miss].mean())
            out["near_miss_oos_examples"] = int(near_miss.sum())
            if ordinary.any():
                out["ordinary_oos_recall"] = float((~accept)[ordinary].mean())
        pred = np.where(accept, probs.argmax(1), -1)  # 13-way: the 12 intents plus out_of_scope as one more class
        out["accuracy_with_oos"] = float((pred == labels).mean())
    return out


class CustomerService(Scenario):
    name = "customer-service"
    title = "Customer service"
    emoji = "💬"
    description = "Intent detection, FAQ answers and human hand-off"
    tab = "fmhub.ui.customer_service:build_customer_service_tab"
    micro_batched = True
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
        from fmhub.data.text_data import rows_to_datasets

        if config.data is None:
            rows = intents.load_embedded_intents(seed=0)
        elif Path(config.data).expanduser().exists() or not looks_like_repo_id(config.data):
            rows = intents.load_text_rows(config.data)
        else:
            rows = intents.hub_rows(config.data)
        in_scope = sorted({r["label"] for r in rows["train"] if r["label"].lower() not in intents.OOS_ALIASES})
        if config.data is None:
            in_scope = list(intents.INTENTS)
        if label_names is not None:
            in_scope = list(label_names)  # evaluation: the saved model's label order decides the ids
        if len(in_scope) < 2:
            raise FmhubError(f"the training data has {len(in_scope)} intent label(s); at least 2 are needed")
        return rows_to_datasets(rows, in_scope)

    def load_unlabeled(self, source: str, like, label_names: list[str]):
        from fmhub.data.unlabeled import text_pool

        return text_pool(source, like)

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, config: TrainConfig, label_names: list[str]):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        backbone = self.resolve_backbone(config.model)
        tokenizer = load_pretrained(AutoTokenizer, backbone, "tokenizer")
        model = load_pretrained(AutoModelForSequenceClassification, backbone, "text model",
                                ignore_mismatched_sizes=True, **label_maps(label_names))
        if config.freeze_embeddings:
            # fine-tuning barely moves the 30k x 384 token table, but its dense gradient and AdamW update were a
            # third of each CPU step; position/type embeddings and LayerNorm still train
            model.get_input_embeddings().weight.requires_grad_(False)
        return model, tokenizer

    def load_model(self, folder: Path):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        return load_saved(folder, AutoModelForSequenceClassification, AutoTokenizer, "text model", "tokenizer")

    def load_processor(self, folder: Path):
        from transformers import AutoConfig, AutoTokenizer

        return load_pretrained(AutoTokenizer, str(folder), "tokenizer"), load_pretrained(AutoConfig, str(folder),
                                                                                         "model config")

    def make_dataset(self, split, tokenizer, config: TrainConfig, train: bool):
        from fmhub.data.text_data import TextDataset

        return TextDataset(
            list(split["text"]), list(split["label"]), tokenizer, config.max_length, augment=train and config.augment
        )

    def collate_fn(self, tokenizer, config: TrainConfig):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)  # dynamic padding: each batch to its own longest sentence

    # -- out of scope -------------------------------------------------------------------------------------------
    def calibrate(self, probs: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
        """Pick the confidence threshold that best separates correct in-scope answers from out-of-scope messages.

        Objective on validation data: mean of (in-scope accepted and correct) and (out-of-scope rejected).
        """
        import numpy as np

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

    def score_predictions(self, probs: np.ndarray, labels: np.ndarray, settings: dict, label_names: list[str]
                          ) -> dict:
        """Confidence alone (a model with a distance score is scored again, as served, by score_model)."""
        threshold = settings.get("oos_threshold", 0.0)
        return {"oos_threshold": threshold, **oos_metrics(probs, labels, probs.max(axis=1) >= threshold)}

    def calibrate_model(self, model, processor, data, config: TrainConfig, settings: dict) -> dict:
        """The distance-based out-of-scope score (`fmhub.ood`): fitted on the training split's in-scope rows, its
        threshold calibrated on validation together with the confidence threshold already chosen."""
        import numpy as np

        from fmhub.ood import DistanceScorer, calibrate_distance, logits_and_features, softmax

        train, val = data["train"], data["validation"]
        train_labels = np.asarray(train["label"])
        keep = [i for i, y in enumerate(train_labels) if y >= 0]
        _, train_features = logits_and_features(model, processor, [train["text"][i] for i in keep], config.max_length)
        scorer = DistanceScorer.fit(train_features, train_labels[keep], model.config.num_labels)
        logits, features = logits_and_features(model, processor, list(val["text"]), config.max_length)
        labels = np.asarray(val["label"])
        probs = softmax(logits)
        accepted = probs.max(1) >= settings.get("oos_threshold", 0.0)
        threshold, how = calibrate_distance(scorer.score(features), probs.argmax(1) == labels, accepted, labels >= 0)
        return {"ood_method": "mahalanobis", "ood_threshold": threshold, "ood_calibration": how,
                OOD_ARRAYS: scorer.to_arrays()}

    def load_model_extras(self, folder: Path) -> dict:
        from fmhub.ood import DistanceScorer

        scorer = DistanceScorer.load(folder)
        return {} if scorer is None else {OOD_ARRAYS: scorer.to_arrays()}

    def save_model_extras(self, folder: Path, settings: dict) -> None:
        from fmhub.ood import DistanceScorer

        arrays = settings.get(OOD_ARRAYS)
        if arrays is not None:
            DistanceScorer(arrays["means"], arrays["precision"]).save(folder)

    def score_model(self, model, processor, split, config: TrainConfig, settings: dict) -> dict:
        """The out-of-scope decision as served (confidence or distance) on the test split, next to confidence alone;
        the embedded near-miss messages are also scored on their own."""
        import numpy as np

        from fmhub.ood import DistanceScorer, logits_and_features, softmax

        if not len(split):
            return {}
        texts, labels = list(split["text"]), np.asarray(split["label"])
        logits, features = logits_and_features(model, processor, texts, config.max_length)
        probs = softmax(logits, settings.get("temperature", 1.0))
        by_confidence = probs.max(1) >= settings.get("oos_threshold", 0.0)
        near = np.asarray(intents.is_near_miss(texts)) & (labels < 0)
        arrays = settings.get(OOD_ARRAYS)
        if arrays is None:  # a model without the distance score (trained before it existed): confidence alone
            return oos_metrics(probs, labels, by_confidence, near)
        distances = DistanceScorer(arrays["means"], arrays["precision"]).score(features)
        accepted = by_confidence & (distances <= settings.get("ood_threshold", float("inf")))
        out = {}
        for suffix, accept in (("", accepted), ("_confidence_only", by_confidence)):
            out.update({f"{k}{suffix}": v for k, v in oos_metrics(probs, labels, accept, near).items()})
        return out

    def load_eval_split(self, config: TrainConfig, label_names: list[str]):
        """A single JSONL/CSV file is scored whole; folders and the embedded set use their test split."""
        path = Path(config.data).expanduser() if config.data else None
        if path is not None and path.is_file():
            from fmhub.data.text_data import rows_to_datasets

            return rows_to_datasets({"test": intents.read_table(path)}, list(label_names))["test"]
        return self.load_splits(config, label_names)["test"]

    def predictor(self, folder: Path, runtime: str | None = None):
        from fmhub.predictors.text import TextIntentPredictor

        return TextIntentPredictor(folder, self, runtime)

    def card_info(self, data_source: str | None) -> dict:
        return {
            "datasets": [] if data_source is None else [data_source],
            "data_description": (
                "fmhub's embedded customer-service intent set: about 1,750 English customer messages written by the "
                "fmhub team over 12 intents, plus about 400 ordinary out-of-scope messages and about 420 "
                "near-miss ones (other businesses' deliveries, returns, accounts, payments), used for outlier "
                "exposure and to calibrate the out-of-scope thresholds."
                if data_source is None
                else f"`{data_source}`"
            ),
            "intended_use": "Intent detection for an online shop's chat assistant, with FAQ answers and a hand-off "
            "to a human for `human_agent` and out-of-scope messages.",
            "limitations": "English only; trained on short chat messages about orders, delivery, payments and "
            "accounts. Messages outside these topics should fall below the confidence threshold or lie beyond "
            "the distance threshold, but no threshold is perfect: keep the human hand-off.",
        }
