"""ROC-AUC as an offline `evaluate` module: binary (positive-class score) or multiclass one-vs-rest (score rows)."""

import datasets
import evaluate
from sklearn.metrics import roc_auc_score

_DESCRIPTION = "Area under the ROC curve; multiclass uses one-vs-rest with macro averaging."
_CITATION = "fmhub offline metric module"


class RocAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description="references: class ids; prediction_scores: positive-class scores or per-class rows",
            features=[
                datasets.Features(
                    {"prediction_scores": datasets.Value("float64"), "references": datasets.Value("int64")}
                ),
                datasets.Features(
                    {
                        "prediction_scores": datasets.Sequence(datasets.Value("float64")),
                        "references": datasets.Value("int64"),
                    }
                ),
            ],
        )

    def _compute(self, prediction_scores, references, multi_class="ovr", average="macro", labels=None):
        if prediction_scores and isinstance(prediction_scores[0], (list, tuple)):
            score = roc_auc_score(
                references, prediction_scores, multi_class=multi_class, average=average, labels=labels
            )
        else:
            score = roc_auc_score(references, prediction_scores, average=average)
        return {"roc_auc": float(score)}
