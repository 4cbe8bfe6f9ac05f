"""The model's classes and its answers: the one definition every module of the project reads.

The two files that must stand alone on the Hub (serving/hub_files/modeling_pneumonia.py and the `evaluate`
metric, trainer/metrics/pneumonia_metrics.py) keep copies; tests/test_definitions.py checks they agree.
"""

LABELS = ("NORMAL", "PNEUMONIA")
POSITIVE = "PNEUMONIA"  # the class the decision threshold is set on
POSITIVE_INDEX = LABELS.index(POSITIVE)  # its label value, and the column of its probability in (N, 2) outputs
# The answer, in place of a class, for an image the not-an-X-ray guard refuses (serving/guard.py)
NOT_A_CHEST_XRAY = "NOT_A_CHEST_XRAY"


NOT_AN_XRAY_HEADLINE = "This does not look like a chest X-ray."


def not_an_xray_sentence(distance: float, limit: float, headline: str = NOT_AN_XRAY_HEADLINE) -> str:
    """Why an image gets no diagnosis, in the words of every entry point (the Space, the error of
    `PneumoniaClassifier.predict`); `headline` lets the Space set the first sentence in bold."""
    return (f"{headline} The model only knows frontal chest radiographs, so it gives no diagnosis for this image "
            f"(its features are {distance:.1f} from the training X-rays; limit {limit:.1f}).")
