"""End to end: the bundled real sample → trained, saved, reloaded and evaluated model."""

import json
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_auc_score

from tests.conftest import FAST_TRAINING, SERVING_GUARD
from trainer import PneumoniaClassifier
from trainer.data import patient_id

METRIC_KEYS = ["test_accuracy", "test_roc_auc", "test_sensitivity", "test_specificity", "test_f1"]


def test_all_results_has_every_key_with_sane_values(trained_run):
    output_dir, returned = trained_run
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["test_roc_auc"] == returned["test_roc_auc"]  # the file holds what the run returned
    # The headline metrics again, independently, from the per-image probabilities the run wrote beside them
    per_image = json.loads((output_dir / "test_predictions.json").read_text())
    labels = np.array([entry["label"] for entry in per_image])
    scores = np.array([entry["pneumonia_probability"] for entry in per_image])
    decided = (scores >= results["decision_threshold"]).astype(int)
    assert results["test_roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert results["test_accuracy"] == pytest.approx((decided == labels).mean(), abs=1e-6)
    assert results["test_confusion_matrix"] == confusion_matrix(labels, decided).tolist()
    for key in METRIC_KEYS:
        assert 0.0 <= results[key] <= 1.0, key
    assert results["test_confusion_matrix_labels"] == ["NORMAL", "PNEUMONIA"]
    matrix = np.array(results["test_confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == results["test_samples"] == 101
    assert matrix[0].sum() == 40 and matrix[1].sum() == 61  # rows are the true labels of the sample's test/
    report = results["test_classification_report"]
    for name in ("NORMAL", "PNEUMONIA"):
        assert {"precision", "recall", "f1-score", "support"} <= set(report[name])
    assert report["PNEUMONIA"]["recall"] == results["test_sensitivity"]
    assert report["NORMAL"]["recall"] == results["test_specificity"]
    assert math.isclose(results["test_accuracy"], np.trace(matrix) / matrix.sum())
    assert 1 <= results["best_epoch"] <= 3
    assert 0.0 <= results["best_val_accuracy"] <= 1.0
    assert results["imagenet_weights"] is False
    assert 0.0 < results["decision_threshold"] < 1.0 and results["threshold_strategy"] == "youden"
    assert np.array(results["test_at_0.5_confusion_matrix"]).sum() == 101
    for key in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc"):
        low, high = results["test_ci95"][key]
        assert low <= results[f"test_{key}"] <= high, key
    for key in ("test_ece_before_calibration", "test_ece_after_calibration", "test_brier_after_calibration"):
        assert 0.0 <= results[key] <= 1.0


def test_operating_point_and_guard_are_saved_with_the_model(trained_run):
    output_dir, results = trained_run
    model = PneumoniaClassifier.from_pretrained(output_dir / "best")
    assert model.threshold == pytest.approx(results["decision_threshold"])
    assert float(model.temperature) == pytest.approx(results["temperature"])
    assert float(model.guard_threshold) == pytest.approx(results["feature_guard_threshold"])
    assert np.isfinite(float(model.guard_threshold)) and model.guard_precision.abs().sum() > 0


def test_same_seed_gives_identical_results(trained_run, tmp_path):
    from trainer.train import main

    output_dir, _ = trained_run
    rerun = main([*FAST_TRAINING, "--num_train_epochs", "3", "--lr_patience", "0", *SERVING_GUARD,
                  "--output_dir", str(tmp_path)])
    first = json.loads((output_dir / "all_results.json").read_text())
    for volatile in ("train_runtime_seconds",):
        first.pop(volatile), rerun.pop(volatile)
    assert json.loads(json.dumps(rerun)) == first


def test_best_epoch_is_the_highest_validation_accuracy_by_default(trained_run):
    """The mission's recipe: the best epoch has the highest validation accuracy, ties going to the lower loss."""
    output_dir, results = trained_run
    history = json.loads((output_dir / "training_history.json").read_text())["history"]
    best = max(history, key=lambda e: (e["val_accuracy"], -e["val_loss"]))
    assert results["metric_for_best_model"] == "accuracy"
    assert results["best_epoch"] == best["epoch"]
    assert results["best_val_accuracy"] == best["val_accuracy"]
    assert results["best_val_loss"] == best["val_loss"]


def test_scheduler_follows_validation_accuracy_in_the_run(trained_run):
    """With --lr_patience 0 the lr drops exactly after epochs that do not beat the best validation accuracy
    (ReduceLROnPlateau's default relative threshold, 1e-4)."""
    output_dir, _ = trained_run
    history = json.loads((output_dir / "training_history.json").read_text())["history"]
    best = -math.inf
    for before, after in zip(history, history[1:]):
        improved = before["val_accuracy"] > best * (1 + 1e-4)
        best = max(best, before["val_accuracy"])
        expected = before["lr"] if improved else before["lr"] * 0.1
        assert after["lr"] == pytest.approx(expected), (before, after)


def test_splits_keep_patients_apart_and_classes_balanced(trained_run):
    output_dir, _ = trained_run
    splits = json.loads((output_dir / "splits.json").read_text())
    assert "grouped by patient" in splits["procedure"]
    train_patients = {patient_id(f) for f in splits["train"]}
    val_patients = {patient_id(f) for f in splits["validation"]}
    assert train_patients.isdisjoint(val_patients)
    assert len(splits["train"]) + len(splits["validation"]) == 300 and len(splits["test"]) == 101
    assert splits["validation_fraction"] == len(splits["validation"]) / 300
    assert abs(splits["validation_fraction"] - splits["validation_fraction_requested"]) < 0.02
    assert set(splits["train"]).isdisjoint(splits["validation"])

    def normal_share(files):
        return sum(f.startswith("NORMAL/") for f in files) / len(files)

    assert abs(normal_share(splits["train"]) - normal_share(splits["validation"])) <= 0.02


def test_best_checkpoint_reloads_and_predicts_like_the_run(trained_run):
    output_dir, results = trained_run
    assert (output_dir / "best" / "model.safetensors").is_file()
    config = json.loads((output_dir / "best" / "config.json").read_text())
    assert config["model_name"] == "resnet18" and config["labels"] == ["NORMAL", "PNEUMONIA"]
    assert config["preprocessing"]["crop_mode"] == "squash" and config["preprocessing"]["input_size"] == [3, 224, 224]
    model = PneumoniaClassifier.from_pretrained(output_dir / "best")
    predictions = json.loads((output_dir / "test_predictions.json").read_text())
    assert len(predictions) == 101
    for row in predictions[::20]:
        probabilities = model.predict(row["path"])
        assert probabilities["PNEUMONIA"] == pytest.approx(row["pneumonia_probability"], abs=1e-5)


@pytest.mark.parametrize("name", ["confusion_matrix.png", "roc_curve.png", "pr_curve.png", "reliability_diagram.png",
                                  "training_curves.png"])
def test_plots_are_real_images(trained_run, name):
    output_dir, _ = trained_run
    with Image.open(output_dir / name) as plot:
        assert plot.format == "PNG" and plot.width > 300 and plot.height > 300
        colours = plot.convert("RGB").getcolors(maxcolors=1_000_000)
    assert len(colours) > 50  # text, axes and curves or cells, not a blank canvas


def test_the_best_folder_carries_the_model_card_of_the_run(trained_run):
    """best/README.md is the project's card (results, threshold, limitations), as trainer.push pushes it, not the
    Hub mixin's stub: best/ uploaded with `hf upload` or copied anywhere carries it."""
    from huggingface_hub import ModelCard

    output_dir, results = trained_run
    card = ModelCard.load(output_dir / "best" / "README.md")  # test_hub.py checks that a push leaves the pushed card
    assert card.data.license == "cc-by-4.0" and "More Information Needed" not in card.text
    for phrase in ("Research demo, not for clinical use", "Intended use and limitations", "untouched test set",
                   f"{results['test_accuracy']:.4f}", f"at least\n{results['decision_threshold']:.3f}"):
        assert phrase in card.text, phrase
