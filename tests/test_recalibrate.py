"""Recalibration for a new site: real sample X-rays as the site, a real trained run as the model, every loader
and the loopback Hub reading the result; bad site folders refused before anything is written."""

import json
import shutil

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from serving.loading import load_model
from serving.predictor import Predictor
from tests.conftest import SAMPLE_DIR, cli_error, sample_images, start_pipeline
from tests.hub_server import TOKEN, USER
from trainer.push import push_run
from trainer.recalibrate import main as recalibrate

SITE = SAMPLE_DIR / "test"  # 40 NORMAL, 61 PNEUMONIA real X-rays the trained run never saw


@pytest.fixture(scope="module")
def recalibrated(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    output_dir = tmp_path_factory.mktemp("site") / "recalibrated"
    report = recalibrate(["--model", str(run_dir), "--data_dir", str(SITE), "--output_dir", str(output_dir),
                          "--threshold_strategy", "sensitivity:0.9", "--num_workers", "0"])
    return run_dir, output_dir, report


def test_recalibration_changes_only_the_operating_point(recalibrated):
    run_dir, output_dir, report = recalibrated
    before, after = load_file(run_dir / "best" / "model.safetensors"), load_file(output_dir / "best" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    # the operating point, and the guard's limit refitted on the site's X-rays (its mean and covariance kept)
    assert "decision_threshold" in changed and changed <= {"temperature", "decision_threshold", "guard_threshold"}
    assert float(after["guard_threshold"]) == pytest.approx(report["changed"]["guard_limit"][1])
    assert report["guard_calibration_images"] == 101 and report["guard_false_refusal"] == 0.005
    assert report["guard_false_refusal_achievable"] == pytest.approx(1 / 102)  # 101 images cannot promise 0.005
    (t0, t1), (h0, h1) = report["changed"]["temperature"], report["changed"]["threshold"]
    assert (float(before["temperature"]), float(after["temperature"])) == pytest.approx((t0, t1))
    assert float(after["decision_threshold"]) == pytest.approx(h1) and h1 != pytest.approx(h0)
    assert report["site_images"] == {"NORMAL": 40, "PNEUMONIA": 61}


def test_the_saved_operating_point_meets_the_strategy_on_the_site_through_every_loader(recalibrated, tmp_path):
    """sensitivity:0.9 on the site: the recalibrated model, as the app's predictor and the transformers pipeline
    load it, calls at least 90% of the site's PNEUMONIA images PNEUMONIA, with the same decisions."""
    _, output_dir, _ = recalibrated
    pneumonia = sorted((SITE / "PNEUMONIA").glob("*.jpeg"))
    checked = pneumonia[:6] + sample_images("test", "NORMAL", 6)
    pipeline_answers = start_pipeline(str(output_dir / "best"), checked, cwd=tmp_path)  # runs beside the predictor
    predictor = Predictor(load_model(str(output_dir / "best")))
    decisions = [predictor.analyse(path).decision for path in pneumonia]
    assert decisions.count("PNEUMONIA") / len(pneumonia) >= 0.9
    answers = pipeline_answers()
    assert [answer[0]["label"] for answer in answers] == [predictor.analyse(path).decision for path in checked]


def test_report_has_before_and_cross_fitted_after_with_intervals(recalibrated):
    run_dir, output_dir, report = recalibrated
    assert json.loads((output_dir / "recalibration.json").read_text())["before"] == report["before"]
    # The site is the sample's test/, which the run evaluated: "before" is the run's own test result
    run = json.loads((run_dir / "all_results.json").read_text())
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert report["before"][key] == pytest.approx(run[f"test_{key}"], abs=0.01), key  # one image of 101
    for part in ("before", "after_cross_fitted"):
        for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
            low, high = report[part]["ci95"][key]
            assert low <= report[part][key] <= high
    # temperature scaling is monotone: each fold's ranking equals the original's, so the AUC barely moves
    assert abs(report["after_cross_fitted"]["roc_auc"] - report["before"]["roc_auc"]) < 0.05
    assert (output_dir / "recalibration_reliability.png").stat().st_size > 10_000


def test_the_recalibrated_model_folder_carries_the_card_that_says_so(recalibrated):
    _, output_dir, report = recalibrated
    card = ModelCard.load(output_dir / "best" / "README.md")
    assert "## Recalibrated for a new site" in card.text and "Research demo, not for clinical use" in card.text
    assert f"at least\n{report['changed']['threshold'][1]:.3f}" in card.text


def test_recalibrated_run_pushes_with_a_card_that_says_so(recalibrated, hub):
    _, output_dir, report = recalibrated
    push_run(output_dir, f"{USER}/recalibrated", token=TOKEN)
    card = ModelCard.load(f"{USER}/recalibrated")
    card.validate()
    assert "## Recalibrated for a new site" in card.text
    assert f"at least\n{report['changed']['threshold'][1]:.3f}" in card.text  # the decision every loader makes
    model = load_model(f"{USER}/recalibrated")
    assert model.threshold == pytest.approx(report["changed"]["threshold"][1])


def site_copy(tmp_path, normal: int = 25, pneumonia: int = 25):
    site = tmp_path / "site"
    for name, count in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
        (site / name).mkdir(parents=True)
        for path in sorted((SAMPLE_DIR / "train" / name).glob("*.jpeg"))[:count]:
            shutil.copy(path, site / name)
    return site




def broken_site(tmp_path, problem):
    if problem == "too few":
        return site_copy(tmp_path, normal=19), "holds 19 images; recalibration needs at least 20 per class"
    if problem == "kaggle layout":
        (tmp_path / "kaggle").mkdir()
        shutil.copytree(SITE, tmp_path / "kaggle" / "test")
        return tmp_path / "kaggle", "NORMAL, PNEUMONIA missing (found: test/)"
    site = site_copy(tmp_path)
    (site / "PNEUMONIA" / "truncated.jpeg").write_bytes((SITE / "NORMAL").glob("*.jpeg").__next__().read_bytes()[:300])
    return site, "1 site image(s) cannot be read"


@pytest.mark.parametrize("problem", ["too few", "kaggle layout", "unreadable"])
def test_bad_site_folders_get_one_line_and_nothing_is_written(untrained_model_dir, tmp_path, problem):
    site, message = broken_site(tmp_path, problem)
    error = cli_error(recalibrate, ["--model", str(untrained_model_dir), "--data_dir", str(site), "--output_dir",
                                    str(tmp_path / "out"), "--num_workers", "0"])
    assert message in error
    assert not (tmp_path / "out").exists()


def youden_j(labels: np.ndarray, scores: np.ndarray, thresholds) -> float:
    from trainer.report import screening_metrics

    metrics = screening_metrics(labels, (scores >= thresholds).astype(int), scores)
    return metrics["sensitivity"] + metrics["specificity"] - 1


def test_cross_fitted_after_metrics_are_not_flattered_by_fitting_on_the_scored_images():
    """Logits that carry no information about the labels (30 + 30 images, 10 draws): a threshold chosen and scored
    on the same images finds a spurious edge (Youden's J above 0); cross-fitted, the edge is gone, as it should be."""
    from trainer.calibration import choose_threshold, fit_operating_point
    from trainer.recalibrate import cross_fitted

    labels = np.array([0] * 30 + [1] * 30)
    in_sample, after = [], []
    for draw in range(10):
        logits = torch.from_numpy(np.random.default_rng(draw).normal(0, 1, (60, 2))).float()
        temperature, _, _ = fit_operating_point(logits, labels, "youden")
        scores = (logits / temperature).softmax(dim=-1)[:, 1].numpy()
        in_sample.append(youden_j(labels, scores, choose_threshold(labels, scores, "youden")))
        scores, thresholds = cross_fitted(logits, labels, [f"patient{i}" for i in range(60)], "youden", seed=0)
        after.append(youden_j(labels, scores, thresholds))
    assert np.mean(in_sample) > 0.1
    assert abs(np.mean(after)) < 0.06 and np.mean(after) < np.mean(in_sample) - 0.08
