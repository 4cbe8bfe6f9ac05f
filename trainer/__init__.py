"""Pneumonia Detector: a frozen-backbone timm classifier for chest X-rays (research demo, not for clinical use).

Training lives here; the model and everything that serves it live in `serving` (re-exported for
`from trainer import PneumoniaClassifier`, which pushed model cards and users' scripts rely on). The re-exports load
on first use, so a light module (`trainer.threads`) can be imported without torch models, timm or ONNX Runtime.
"""

__all__ = ["LABELS", "NotAChestXray", "PneumoniaClassifier", "Predictor"]


def __getattr__(name: str):
    if name in __all__:
        import serving

        return getattr(serving, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
