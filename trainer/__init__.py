"""Pneumonia Detector: a frozen-backbone timm classifier for chest X-rays (research demo, not for clinical use)."""

from .model import LABELS, PneumoniaClassifier

__all__ = ["LABELS", "PneumoniaClassifier"]
