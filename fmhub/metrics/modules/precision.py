"""Precision (macro by default) as an offline `evaluate` module."""

import datasets
import evaluate
from sklearn.metrics import precision_score

_DESCRIPTION = "Precision = true positives / predicted positives, per class, then averaged."
_CITATION = "fmhub offline metric module"


class Precision(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description="predictions and references: integer class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, labels=None, average="macro", zero_division=0):
        score = precision_score(references, predictions, labels=labels, average=average, zero_division=zero_division)
        return {"precision": score.tolist() if average is None else float(score)}
