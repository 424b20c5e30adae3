"""Accuracy: the share of predictions equal to the reference label (an offline `evaluate` module)."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Accuracy = correct predictions / all predictions."
_CITATION = "fmhub offline metric module"


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description="predictions and references: integer class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, sample_weight=None):
        return {"accuracy": float(accuracy_score(references, predictions, sample_weight=sample_weight))}
