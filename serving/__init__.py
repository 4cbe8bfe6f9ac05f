"""Serving: a trained model's answer for an image (probabilities, decision, not-an-X-ray guard, heatmap).

Imports neither `trainer` nor Gradio: the Space ships this package with app.py, and the trainer builds on it.
"""

from .images import ACCEPTED_SUFFIXES, InputImageError, read_image
from .labels import LABELS, NOT_A_CHEST_XRAY, POSITIVE
from .loading import ModelNotFound, load_model
from .model import PneumoniaClassifier
from .predictor import NotAChestXray, Prediction, Predictor

__all__ = ["ACCEPTED_SUFFIXES", "LABELS", "NOT_A_CHEST_XRAY", "POSITIVE", "InputImageError", "ModelNotFound",
           "NotAChestXray", "PneumoniaClassifier", "Prediction", "Predictor", "load_model", "read_image"]
