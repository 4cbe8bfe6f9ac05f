"""Binary screening metrics for NORMAL (0) vs PNEUMONIA (1), as a local `evaluate` module.

Load it offline by path: `evaluate.load("trainer/metrics/pneumonia_metrics.py")`
(or `trainer.evaluation.load_metric()`), then `compute(predictions=, references=, scores=)`,
where scores are the predicted probabilities of PNEUMONIA.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, roc_auc_score

LABEL_NAMES = ["NORMAL", "PNEUMONIA"]

_DESCRIPTION = """Accuracy, ROC-AUC, sensitivity (PNEUMONIA recall), specificity (NORMAL recall),
the confusion matrix (rows = true label, columns = predicted, order NORMAL, PNEUMONIA) and sklearn's
classification report (precision, recall, F1, support per class)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (0 = NORMAL, 1 = PNEUMONIA).
    references: true labels.
    scores: predicted probability of PNEUMONIA, for ROC-AUC.
Returns:
    accuracy, roc_auc, sensitivity, specificity, f1 (PNEUMONIA), confusion_matrix,
    confusion_matrix_labels, classification_report.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PneumoniaMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("int64"),
                "references": datasets.Value("int64"),
                "scores": datasets.Value("float64"),
            }),
        )

    def _compute(self, predictions, references, scores):
        report = classification_report(references, predictions, labels=[0, 1], target_names=LABEL_NAMES,
                                       output_dict=True, zero_division=0)
        both_classes_present = len(np.unique(references)) == 2
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "roc_auc": float(roc_auc_score(references, scores)) if both_classes_present else float("nan"),
            "sensitivity": report["PNEUMONIA"]["recall"],
            "specificity": report["NORMAL"]["recall"],
            "f1": report["PNEUMONIA"]["f1-score"],
            "confusion_matrix": confusion_matrix(references, predictions, labels=[0, 1]).tolist(),
            "confusion_matrix_labels": LABEL_NAMES,
            "classification_report": report,
        }
