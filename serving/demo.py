"""What the Gradio app does with an upload, kept here so that tests and the app share it."""

from pathlib import Path

import gradio as gr
from gradio.components.label import LabelConfidence, LabelData
from PIL import Image

from .images import read_image
from .model import PneumoniaClassifier
from .predictor import Prediction

DEFAULT_MODEL = "outputs/best"
DISPLAY_SIZE = (1024, 1024)  # radiographs are shown, and overlaid, at most this large, at their own aspect ratio
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_data" / "chest_xray" / "test"
DISCLAIMER = ("**Research demo, not for clinical use.** Trained on pediatric chest X-rays from one hospital; "
              "it is not a medical device and must not be used to diagnose, treat or triage anyone.")
NOT_AN_XRAY = ("**This does not look like a chest X-ray.** The model only knows frontal chest radiographs, so it "
               "gives no diagnosis for this image (its features are {distance:.1f} from the training X-rays; "
               "limit {limit:.1f}).")


class DecisionLabel(gr.Label):
    """A gr.Label whose heading is the model's decision at its threshold, not the most probable class.

    Takes a Prediction (or None); the bars are the calibrated probabilities, the decided label first.
    """

    is_template = True  # drawn by gr.Label's own front end

    def postprocess(self, value: Prediction | None) -> LabelData | dict:
        if value is None:
            return {}
        ranked = sorted(value.probabilities.items(), key=lambda item: item[0] != value.decision)
        return LabelData(label=value.decision,
                         confidences=[LabelConfidence(label=label, confidence=p) for label, p in ranked])


def example_files(per_class: int = 4) -> list[str]:
    """A few real X-rays from the bundled sample, for one-click examples."""
    return [str(p) for name in ("NORMAL", "PNEUMONIA") for p in sorted((EXAMPLES_DIR / name).glob("*.jpeg"))[:per_class]]


def radiograph(path: str | Path | None) -> Image.Image:
    """The upload as a person should see it (DICOM through its window), at its own aspect ratio, at most
    DISPLAY_SIZE; InputImageError if it cannot be read."""
    image = read_image(path, DISPLAY_SIZE)
    image.thumbnail(DISPLAY_SIZE)
    return image


def decision_text(prediction: Prediction) -> str:
    return (f"**Model output: {prediction.decision}** (P(PNEUMONIA) = {prediction.probabilities['PNEUMONIA']:.3f}, "
            f"decision threshold {prediction.threshold:.2f}). Research demo, not for clinical use.")


def diagnose(model: PneumoniaClassifier, path: str | Path | None) -> tuple[Prediction | None, str, Image.Image | None]:
    """(prediction with its Grad-CAM map, decision text, the radiograph to draw the map on) for an upload.

    Raises InputImageError for unusable uploads; answers "not a chest X-ray" without a diagnosis or radiograph.
    The prediction is made on the image exactly as every other entry point reads it; the radiograph is the
    display-size one (the model saw the whole image squashed to its input size, so the map covers all of it).
    """
    image = model.predictor.read(path)
    prediction = model.predictor.predict_image(image, heatmap=True)
    if not prediction.looks_like_xray:
        return None, NOT_AN_XRAY.format(distance=prediction.guard_distance, limit=float(model.guard_threshold)), None
    return prediction, decision_text(prediction), radiograph(path)
