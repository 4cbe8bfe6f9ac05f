"""The model card pushed with the model: Hub metadata (model-index) plus the results and recipe of a run."""

import json
from pathlib import Path

import timm
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parent / "hub_files" / "model_card_template.md"
DATASET_NAME = "Chest X-Ray Images (Pneumonia)"
DATASET_TYPE = "chest-xray-pneumonia"
CARD_METRICS = {"accuracy": "accuracy", "roc_auc": "roc_auc", "sensitivity": "recall", "specificity": "specificity",
                "f1": "f1"}


def eval_results(results: dict, dataset_id: str | None) -> list[EvalResult]:
    """model-index entries for the test split (of the Hub dataset the run trained from, when it did)."""
    return [
        EvalResult(task_type="image-classification", task_name="Pneumonia screening",
                   dataset_type=dataset_id or DATASET_TYPE, dataset_name=DATASET_NAME, dataset_split="test",
                   metric_type=metric_type,
                   metric_name=f"test {key}", metric_value=round(float(results[f"test_{key}"]), 4))
        for key, metric_type in CARD_METRICS.items()
    ]


def hub_dataset_id(dataset_name: str | None) -> str | None:
    """The Hub id of the dataset a run trained from (--dataset_name), unless that named a local copy."""
    return dataset_name if dataset_name and not Path(dataset_name).exists() else None


def build_model_card(output_dir: Path, model_id: str) -> ModelCard:
    """A ModelCard for the run in `output_dir` (best/config.json, all_results.json, splits.json, training_config.json)."""
    config = json.loads((output_dir / "training_config.json").read_text())
    model_config = json.loads((output_dir / "best" / "config.json").read_text())
    results = json.loads((output_dir / "all_results.json").read_text())
    split_procedure = json.loads((output_dir / "splits.json").read_text())["procedure"]
    recalibration_file = output_dir / "recalibration.json"  # trainer.recalibrate: a new site's operating point
    recalibration = json.loads(recalibration_file.read_text()) if recalibration_file.is_file() else None
    temperature, threshold = ((recalibration["changed"]["temperature"][1], recalibration["changed"]["threshold"][1])
                              if recalibration else (results["temperature"], results["decision_threshold"]))
    dataset_id = hub_dataset_id(config.get("dataset_name"))
    card_data = ModelCardData(
        model_name=model_id,
        license="cc-by-4.0",
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["image-classification", "medical-imaging", "chest-x-ray", "pneumonia", "timm", "custom_code",
              "pytorch_model_hub_mixin", "research-only", "not-for-clinical-use"],
        base_model=timm.models.get_pretrained_cfg(config["model_name"]).hf_hub_id if results["imagenet_weights"] else None,
        metrics=["accuracy", "roc_auc", "recall", "specificity", "f1"],
        datasets=[dataset_id] if dataset_id else None,
        eval_results=eval_results(results, dataset_id),
    )
    return ModelCard.from_template(
        card_data, template_str=TEMPLATE.read_text(), model_id=model_id, config=config, results=results,
        preprocessing=model_config["preprocessing"], num_features=model_config["num_features"],
        threshold=threshold, temperature=temperature, dataset_id=dataset_id, split_procedure=split_procedure,
        recalibration=recalibration)


def write_model_card(output_dir: Path, model_id: str) -> ModelCard:
    """Write the run's card to output_dir/best/README.md (replacing the Hub mixin's stub), so that best/ carried
    anywhere (`hf upload`, a copy) has the card that trainer.push pushes; returns it."""
    card = build_model_card(output_dir, model_id)
    card.save(output_dir / "best" / "README.md")
    return card
