"""F1 score (macro by default) as an offline `evaluate` module."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "F1 = harmonic mean of precision and recall; macro averages the per-class F1 equally."
_CITATION = "fmhub offline metric module"


class F1(evaluate.Metric):
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
        score = f1_score(references, predictions, labels=labels, average=average, zero_division=zero_division)
        return {"f1": score.tolist() if average is None else float(score)}
