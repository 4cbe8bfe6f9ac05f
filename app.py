"""Pneumonia Detector Space: one chest X-ray (JPEG, PNG or DICOM) with its Grad-CAM evidence, or a folder of them
screened into a CSV; also an MCP server, so agents can call the prediction as a tool.

    MODEL_ID=outputs/best python app.py      # or MODEL_ID=NAME/REPO; GRADIO_SERVER_PORT etc. are honoured
"""

import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr
from gradio.components.label import LabelConfidence, LabelData
from PIL import Image

from serving.batch import MAX_FILES, csv_columns, predict_files, screening_files, write_csv
from serving.heatmap import HEATMAP_OPACITY
from serving.images import ACCEPTED_SUFFIXES, InputImageError
from serving.loading import DEFAULT_MODEL, ModelNotFound, load_model
from serving.predictor import Prediction, Predictor
from serving.upload import DISCLAIMER, EXAMPLES_DIR, diagnose, example_files, radiograph

MAX_FILE_SIZE = "25mb"
SCRATCH = Path(tempfile.mkdtemp(prefix="pneumonia-app-"))  # each request's downloads, before Gradio copies them
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
SCRATCH_MAX_AGE_S = 600
# WebP quality of what is only displayed: on the bundled X-rays 16% of a PNG's bytes at 45 dB PSNR (no visible
# difference; Gradio's default, 80, is 10% at 41 dB)
DISPLAY_QUALITY = 90

try:
    predictor = Predictor(load_model(os.environ.get("MODEL_ID", DEFAULT_MODEL)))
except ModelNotFound as error:
    sys.exit(f"error: {error}\nThe app reads the model from the MODEL_ID environment variable.")


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


def scratch_folder() -> Path:
    """A new folder for one request's files; folders older than SCRATCH_MAX_AGE_S go (Gradio serves its own copies)."""
    for old in SCRATCH.iterdir():
        try:
            stale = old.stat().st_mtime < time.time() - SCRATCH_MAX_AGE_S
        except FileNotFoundError:  # a concurrent request removed it meanwhile
            continue
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=SCRATCH))


def display_file(image: Image.Image, folder: Path, name: str) -> str:
    """`image` as the WebP file the browser shows: lossy, because it is only looked at (the download stays PNG).
    Gradio serves a file under its content's hash, so the same radiograph is fetched once per visitor: the preview's
    file is the answer's and every opacity change's."""
    path = folder / f"{name}.webp"
    image.save(path, "webp", quality=DISPLAY_QUALITY)
    return str(path)


def comparison_and_download(prediction: Prediction, shown: Image.Image, opacity: float, name: str) -> tuple[tuple, str]:
    """The (radiograph, Grad-CAM overlay) pair for the slider, and the overlay as a PNG file to download."""
    overlay, folder = prediction.overlay(shown, opacity), scratch_folder()
    png = folder / f"gradcam_{Path(name).stem}.png"
    overlay.save(png)
    return (display_file(shown, folder, "radiograph"), display_file(overlay, folder, "overlay")), str(png)


def predict(xray_file: str, overlay_opacity: float = HEATMAP_OPACITY):
    """Screen one chest X-ray for pneumonia. Research demo, not for clinical use: not a medical device, it must
    not be used to diagnose, treat or triage anyone. The decision is PNEUMONIA when the calibrated P(PNEUMONIA)
    reaches the model's decision threshold (stated in the answer), else NORMAL. An image that does not look like a
    chest X-ray gets no diagnosis; a file that cannot be read gets an error saying why.

    Args:
        xray_file: a frontal chest radiograph as JPEG, PNG or DICOM (.dcm).
        overlay_opacity: from 0 to 1, how strongly the Grad-CAM colour map covers the radiograph in the overlay.

    Returns:
        the decision and the calibrated probability of each class (none for an image that is not a chest X-ray)
        a sentence with the decision, P(PNEUMONIA) and the threshold, or why the image gets no diagnosis
        the radiograph and its Grad-CAM overlay, showing where the evidence for the decision lies
        the overlay as a PNG file
    """
    try:
        prediction, text, shown = diagnose(predictor, xray_file)
    except InputImageError as error:
        raise gr.Error(str(error)) from error
    if prediction is None:
        return None, text, None, None
    return prediction, text, *comparison_and_download(prediction, shown, overlay_opacity, xray_file)


def show_radiograph(xray_file: str | None = None):
    """The upload as soon as it arrives, and no answer left over from the previous image."""
    try:
        shown = display_file(radiograph(xray_file), scratch_folder(), "radiograph") if xray_file else None
    except InputImageError:
        shown = None  # "Analyse" says what is wrong with it
    return shown, None, "", None, None


def pick_example(selected: gr.SelectData):
    """The example as if uploaded: the file, its radiograph, no answer yet (the click then analyses it)."""
    path = example_files()[selected.index]
    return path, *show_radiograph(path)


def screen(xray_files: list[str] | None, progress=gr.Progress(track_tqdm=True)):
    """Screen many chest X-rays at once (JPEG, PNG, DICOM files, or .zip archives of them). Research demo, not
    for clinical use.

    Args:
        xray_files: the image files and/or .zip archives; at most 500 images in all.

    Returns:
        a table, one row per image: path, prediction (NORMAL, PNEUMONIA, or NOT_A_CHEST_XRAY with no probabilities for
        an image that does not look like a chest X-ray), P of each class, looks_like_chest_xray, guard_distance, error
        the same table as a CSV file (the columns of `python -m trainer.predict`)
    """
    folder = scratch_folder()
    try:
        named = screening_files(xray_files, folder / "unzipped")
    except InputImageError as error:
        raise gr.Error(str(error)) from error
    rows = predict_files(predictor, [path for _, path in named], batch_size=16, num_workers=0)
    shutil.rmtree(folder / "unzipped", ignore_errors=True)
    for row, (name, _) in zip(rows, named):
        row["path"] = name
    csv_file = write_csv(rows, predictor.model.labels, folder / "predictions.csv")
    columns = csv_columns(predictor.model.labels)
    # The table rounds probabilities for reading; the CSV keeps them whole
    shown = [[round(value, 4) if isinstance(value := row.get(column, ""), float) else value for column in columns]
             for row in rows]
    return {"headers": columns, "data": shown}, str(csv_file)


with gr.Blocks(title="Pneumonia Detector", delete_cache=(3600, 3600)) as demo:
    gr.Markdown(f"# Pneumonia Detector\nChest X-ray: NORMAL or PNEUMONIA?\n\n{DISCLAIMER}")
    with gr.Tab("One X-ray"):
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Chest X-ray (JPEG, PNG or DICOM)", type="filepath",
                                 file_types=list(ACCEPTED_SUFFIXES), elem_id="upload")
                # What is only displayed travels as WebP files (display_file); the overlay's download stays PNG
                shown = gr.Image(label="Radiograph", type="pil", interactive=False, elem_id="radiograph")
                submit = gr.Button("Analyse", variant="primary")
                examples = gr.Gallery(example_files(), label="Examples from the bundled test images: click one to "
                                      "analyse it", columns=4, allow_preview=False, height="auto", elem_id="examples")
            with gr.Column():
                decision = gr.Markdown()
                probabilities = DecisionLabel(label="Decision at the model's threshold; calibrated probabilities")
                comparison = gr.ImageSlider(label="Radiograph | Grad-CAM overlay (evidence for the decision)",
                                            type="pil", elem_id="comparison")
                opacity = gr.Slider(0, 1, value=HEATMAP_OPACITY, step=0.05, label="Overlay opacity")
                overlay_png = gr.File(label="Overlay (PNG)", elem_id="overlay-png")
    with gr.Tab("Screen a folder"):
        gr.Markdown(f"Choose many X-rays at once, or a `.zip` of a folder (up to {MAX_FILES} images, "
                    f"{MAX_FILE_SIZE} a file). Files that cannot be read get their error in the table.")
        files = gr.File(label="X-rays or .zip archives", file_count="multiple", type="filepath", elem_id="screen-files",
                        file_types=[*ACCEPTED_SUFFIXES, ".zip"])
        run_screen = gr.Button("Screen", variant="primary")
        table = gr.Dataframe(label="Results", interactive=False, wrap=True, elem_id="screen-table")
        table_csv = gr.File(label="Results (CSV)", elem_id="screen-csv")

    results = [probabilities, decision, comparison, overlay_png]
    # Events that change the file clear the previous answer in the same step, so it can never outlive its image
    upload.upload(show_radiograph, upload, [shown, *results], api_visibility="private", concurrency_limit=4)
    upload.clear(show_radiograph, None, [shown, *results], api_visibility="private")
    submit.click(predict, [upload, opacity], results, api_name="predict", concurrency_limit=4)
    # A new opacity redraws from the model's own answer (milliseconds): nothing is kept between requests
    opacity.release(predict, [upload, opacity], results, api_visibility="private", concurrency_limit=4)
    examples.select(pick_example, None, [upload, shown, *results], api_visibility="private").then(
        predict, [upload, opacity], results, api_visibility="private", concurrency_limit=4)
    run_screen.click(screen, files, [table, table_csv], api_name="screen", concurrency_limit=2)

if __name__ == "__main__":
    demo.queue().launch(max_file_size=MAX_FILE_SIZE, mcp_server=True, allowed_paths=[str(EXAMPLES_DIR)])
