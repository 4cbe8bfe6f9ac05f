"""Pneumonia Detector Space: upload a chest X-ray (JPEG, PNG or DICOM), get the decision, probabilities and a Grad-CAM map.

    MODEL_ID=outputs/best python app.py      # or MODEL_ID=NAME/REPO; GRADIO_SERVER_PORT etc. are honoured
"""

import os
import sys

import gradio as gr

from serving.demo import DEFAULT_MODEL, DISCLAIMER, DecisionLabel, diagnose, example_files
from serving.images import ACCEPTED_SUFFIXES, InputImageError
from serving.model import ModelNotFound, load_model

MAX_FILE_SIZE = "25mb"

try:
    model = load_model(os.environ.get("MODEL_ID", DEFAULT_MODEL))
except ModelNotFound as error:
    sys.exit(f"error: {error}\nThe app reads the model from the MODEL_ID environment variable.")


def predict(upload: str | None):
    try:
        return diagnose(model, upload)
    except InputImageError as error:
        raise gr.Error(str(error)) from error


with gr.Blocks(title="Pneumonia Detector") as demo:
    gr.Markdown(f"# Pneumonia Detector\nChest X-ray: NORMAL or PNEUMONIA?\n\n{DISCLAIMER}")
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Chest X-ray (JPEG, PNG or DICOM)", type="filepath", file_types=list(ACCEPTED_SUFFIXES))
            submit = gr.Button("Analyse", variant="primary")
            gr.Examples(example_files(), inputs=upload)
        with gr.Column():
            decision = gr.Markdown()
            probabilities = DecisionLabel(label="Decision at the model's threshold; calibrated probabilities")
            heatmap = gr.Image(label="Grad-CAM: evidence for the decision", type="pil", format="png",
                               elem_id="gradcam")
    submit.click(predict, upload, [probabilities, decision, heatmap], api_name="predict", concurrency_limit=4)

if __name__ == "__main__":
    demo.queue().launch(max_file_size=MAX_FILE_SIZE)
