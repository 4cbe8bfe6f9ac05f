"""Serving: a trained model's answer for an image (probabilities, decision, not-an-X-ray guard, heatmap).

Imports nothing from `trainer`: the Space ships this package with app.py, and the trainer builds on it.
"""

from .images import ACCEPTED_SUFFIXES, InputImageError, read_image
from .model import LABELS, PneumoniaClassifier
from .predictor import Prediction, Predictor

__all__ = ["ACCEPTED_SUFFIXES", "LABELS", "InputImageError", "PneumoniaClassifier", "Prediction", "Predictor",
           "read_image"]
