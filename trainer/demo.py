"""What the Gradio app does with an upload, kept here so that tests and the app share it."""

from pathlib import Path

from PIL import Image

from .config import BUNDLED_SAMPLE
from .explain import grad_cam_overlay
from .inputs import read_upload
from .model import PneumoniaClassifier

DEFAULT_MODEL = "outputs/best"
DISCLAIMER = ("**Research demo, not for clinical use.** Trained on pediatric chest X-rays from one hospital; "
              "it is not a medical device and must not be used to diagnose, treat or triage anyone.")
NOT_AN_XRAY = ("**This does not look like a chest X-ray.** The model only knows frontal chest radiographs, so it "
               "gives no diagnosis for this image (its features are {distance:.1f} from the training X-rays; "
               "limit {limit:.1f}).")


class ModelNotFound(RuntimeError):
    """No usable model at MODEL_ID; the message says how to get one."""


def load_model(model_id: str) -> PneumoniaClassifier:
    """Load a trainer output folder or Hub repo once, served by ONNX Runtime; or raise ModelNotFound with what to do."""
    try:
        model = PneumoniaClassifier.from_pretrained(model_id)
    except Exception as error:  # a missing folder, an unknown repo and an offline Hub raise different types
        raise ModelNotFound(
            f"No model could be loaded from MODEL_ID={model_id!r} ({type(error).__name__}: {error}).\n"
            "Train one with `python -m trainer --output_dir outputs` (add --no_pretrained offline), "
            "or set MODEL_ID to a folder saved by the trainer or a Hub repo id such as NAME/REPO."
        ) from error
    model.use_onnxruntime()  # probabilities and guard; Grad-CAM needs gradients, so it stays in PyTorch
    return model


def example_files(per_class: int = 2) -> list[str]:
    """A few real X-rays from the bundled sample, for one-click examples."""
    test_dir = BUNDLED_SAMPLE / "test"
    return [str(p) for name in ("NORMAL", "PNEUMONIA") for p in sorted((test_dir / name).glob("*.jpeg"))[:per_class]]


def decision_text(model: PneumoniaClassifier, probabilities: dict[str, float]) -> str:
    return (f"**Model output: {model.decide(probabilities)}** (P(PNEUMONIA) = {probabilities['PNEUMONIA']:.3f}, "
            f"decision threshold {model.threshold:.2f}). "
            "Research demo, not for clinical use.")


def diagnose(model: PneumoniaClassifier, path: str | Path | None) -> tuple[dict | None, str, Image.Image | None]:
    """(probabilities for gr.Label, decision text, Grad-CAM overlay) for an uploaded file.

    Raises InputImageError for unusable uploads; answers "not a chest X-ray" without a diagnosis.
    """
    image = read_upload(path, model.input_size)
    probabilities, distance, looks_like_xray = model.analyse(image)
    if not looks_like_xray:
        return None, NOT_AN_XRAY.format(distance=distance, limit=float(model.guard_threshold)), None
    # Explain the decision shown (made at the model's threshold), which can differ from the argmax.
    heatmap = grad_cam_overlay(model, image, model.labels.index(model.decide(probabilities)))
    return probabilities, decision_text(model, probabilities), heatmap
