"""Batch prediction CLI: every file gets a row, equal to the single-image predict; bad files are reported."""

import csv
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, SAMPLE_DIR
from trainer import PneumoniaClassifier


def test_batch_predictions_match_predict_and_report_bad_files(trained_run, tmp_path):
    model_dir = trained_run[0] / "best"
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    output = tmp_path / "preds.csv"
    result = subprocess.run([sys.executable, "-m", "trainer.predict", str(SAMPLE_DIR / "test"), str(broken),
                             "--model", str(model_dir), "--output", str(output), "--batch_size", "16",
                             "--num_workers", "2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 102 and "1 unreadable" in result.stdout
    assert rows[-1]["path"] == str(broken) and "not an image" in rows[-1]["error"] and rows[-1]["prediction"] == ""
    model = PneumoniaClassifier.from_pretrained(model_dir)
    for row in rows[:101:25]:
        expected = model.predict(row["path"])
        assert float(row["PNEUMONIA"]) == pytest.approx(expected["PNEUMONIA"], abs=1e-5)
        assert row["prediction"] == ("PNEUMONIA" if expected["PNEUMONIA"] >= model.threshold else "NORMAL")
