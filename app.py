"""Gradio demo: upload a chest X-ray, get NORMAL / PNEUMONIA probabilities. Research demo, not for clinical use."""

import os

import gradio as gr

from trainer import PneumoniaClassifier

MODEL_ID = os.environ.get("MODEL_ID", "outputs/best")
model = PneumoniaClassifier.from_pretrained(MODEL_ID)


def predict(image_path: str) -> dict[str, float]:
    return model.predict(image_path)


demo = gr.Interface(
    fn=predict,
    inputs=gr.Image(type="filepath", label="Chest X-ray"),
    outputs=gr.Label(num_top_classes=2, label="Prediction"),
    title="Pneumonia Detector",
    description="Research demo, not for clinical use.",
)

if __name__ == "__main__":
    demo.launch()
