"""What the Space answers for one upload, without any Gradio: the upload decoded once, the model's answer, the
sentence shown with it and the radiograph to draw the Grad-CAM map on. app.py wires it into the page."""

from pathlib import Path

from PIL import Image

from .images import decodes_alike, dicom_identifiers, frontal_view, read_image
from .labels import LABELS, NOT_AN_XRAY_HEADLINE, POSITIVE, not_an_xray_sentence
from .predictor import Prediction, Predictor

DISPLAY_SIZE = (1024, 1024)  # radiographs are shown, and overlaid, at most this large, at their own aspect ratio
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_data" / "chest_xray" / "test"
DISCLAIMER = ("**Research demo, not for clinical use.** Trained on pediatric chest X-rays from one hospital; "
              "it is not a medical device and must not be used to diagnose, treat or triage anyone.")


def example_files(per_class: int = 4) -> list[str]:
    """A few real X-rays from the bundled sample, for one-click examples."""
    return [str(p) for name in LABELS for p in sorted((EXAMPLES_DIR / name).glob("*.jpeg"))[:per_class]]


def radiograph(path: str | Path | None) -> Image.Image:
    """The upload as a person should see it (DICOM through its window), at its own aspect ratio, at most
    DISPLAY_SIZE; InputImageError if it cannot be read."""
    image = read_image(path, DISPLAY_SIZE)
    image.thumbnail(DISPLAY_SIZE)
    return image


def decision_text(prediction: Prediction) -> str:
    """The Space's sentence for an answer: the decision with P(PNEUMONIA) and the threshold, or why there is none."""
    if not prediction.looks_like_xray:
        return not_an_xray_sentence(prediction.guard_distance, prediction.guard_limit, f"**{NOT_AN_XRAY_HEADLINE}**")
    return (f"**Model output: {prediction.decision}** (P({POSITIVE}) = {prediction.probabilities[POSITIVE]:.3f}, "
            f"decision threshold {prediction.threshold:.2f}). Research demo, not for clinical use.")


def diagnose(predictor: Predictor, path: str | Path | None) -> tuple[Prediction | None, str, Image.Image | None]:
    """(prediction with its Grad-CAM map, decision text, the radiograph to draw the map on) for an upload;
    (None, why, None) for an image that does not look like a chest X-ray. InputImageError for unusable files.

    The upload is decoded once, for display, and the model sees that same image unless it is a JPEG large enough
    to be decoded at a coarser scale for the model's input (Pillow's draft mode): then that coarse decode (~5 ms)
    is made too, so that the answer is exactly the one every other entry point gives (benchmarks/serving_cost.py).
    The model sees the whole image squashed to its input size, so the map covers all of the radiograph.
    """
    shown = read_image(path, DISPLAY_SIZE)
    alike = decodes_alike(path, DISPLAY_SIZE, predictor.model.input_size)
    prediction = predictor.analyse(shown if alike else predictor.read(path), heatmap=True)
    text = decision_text(prediction) + view_warning(dicom_identifiers(path))
    if not prediction.looks_like_xray:
        return None, text, None
    shown.thumbnail(DISPLAY_SIZE)
    return prediction, text, shown


def view_warning(identifiers: dict[str, str]) -> str:
    """For a DICOM whose ViewPosition is lateral: that the model only knows frontal views (the decision stands)."""
    if frontal_view(identifiers) != "False":
        return ""
    return (f" **Lateral view** (DICOM ViewPosition {identifiers['view_position']}): the model was trained on frontal "
            "(PA/AP) radiographs only, so this answer is outside what it was trained for.")
