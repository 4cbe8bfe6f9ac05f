"""How a saved model presents itself on the Hub: the card's metadata, and the keys and remote code that let
transformers load the same folder (`trust_remote_code=True`) besides the project's own loader."""

from pathlib import Path

REMOTE_CODE = Path(__file__).resolve().parent / "hub_files" / "modeling_pneumonia.py"
# PyTorchModelHubMixin writes these into the model card's metadata
CARD_METADATA = {"library_name": "timm", "pipeline_tag": "image-classification", "license": "cc-by-4.0",
                 "tags": ["chest-x-ray", "pneumonia", "medical-imaging", "research-only"]}


def transformers_config(labels: list[str], num_features: int, preprocessing: dict) -> dict:
    """Keys that let `transformers` load the folder with `trust_remote_code=True` (merged into config.json)."""
    return {
        "model_type": "pneumonia_classifier",
        "architectures": ["PneumoniaForImageClassification"],
        "auto_map": {"AutoConfig": "modeling_pneumonia.PneumoniaConfig",
                     "AutoModelForImageClassification": "modeling_pneumonia.PneumoniaForImageClassification",
                     "AutoImageProcessor": "modeling_pneumonia.PneumoniaImageProcessor"},
        # pipeline("image-classification", trust_remote_code=True) ranks the decided label first
        "custom_pipelines": {"image-classification": {
            "impl": "modeling_pneumonia.PneumoniaClassificationPipeline",
            "pt": ["AutoModelForImageClassification"], "type": "image"}},
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "num_features": num_features,
        # the image processor (TimmWrapperImageProcessor, subclassed in the remote code) reads this
        "pretrained_cfg": preprocessing,
    }
