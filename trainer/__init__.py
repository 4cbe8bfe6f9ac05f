"""Pneumonia Detector: a frozen-backbone timm classifier for chest X-rays (research demo, not for clinical use).

Training lives here; the model and everything that serves it live in `serving` (re-exported for
`from trainer import PneumoniaClassifier`, which pushed model cards and users' scripts rely on).
"""

from serving import LABELS, NotAChestXray, PneumoniaClassifier, Predictor

__all__ = ["LABELS", "NotAChestXray", "PneumoniaClassifier", "Predictor"]
