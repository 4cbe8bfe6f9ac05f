"""One serving path: every entry point gives the same answer, heatmaps are Grad-CAM's and never mix between
concurrent visitors, one reader with one set of errors, and serving code that never imports training code."""

import ast
import csv
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from serving import InputImageError, PneumoniaClassifier
from serving.heatmap import grad_cam, upsample
from tests.app_inputs import bad_uploads, dicom_variants
from tests.conftest import REPO_ROOT, SAMPLE_DIR, pipeline_answers, sample_images
from trainer.model import model_for_training
from trainer.predict import main as predict

# Largest difference allowed between our Grad-CAM map and pytorch-grad-cam's, both scaled to [0, 1] at 224 x 224:
# float32 rounding of two different computations of the same gradient (measured up to 6e-5).
GRAD_CAM_TOLERANCE = 2e-4
TEST_IMAGES = sorted((SAMPLE_DIR / "test").glob("*/*.jpeg"))


def reference_grad_cam(model, image, class_index: int) -> np.ndarray:
    pixel_values = model.transform(image).unsqueeze(0).requires_grad_(True)  # the backbone is frozen
    with GradCAM(model=model, target_layers=[model.backbone.layer4]) as cam:
        return cam(input_tensor=pixel_values, targets=[ClassifierOutputTarget(class_index)])[0]


@pytest.mark.parametrize("engine", ["eager", "onnxruntime"])
def test_heatmap_equals_pytorch_grad_cam_on_the_last_stage(served_run, engine):
    torch.manual_seed(0)
    untrained = model_for_training("resnet18", False, 256, 0.5)  # a second model, with other maps
    compared = 0
    for candidate in (PneumoniaClassifier.from_pretrained(served_run / "best"), untrained):
        if engine == "onnxruntime":
            assert candidate.use_onnxruntime()
        for path in sample_images("test", "NORMAL", 3) + sample_images("test", "PNEUMONIA", 3):
            image = candidate.predictor.read(path)
            _, _, feature_map = candidate.predictor.forward(candidate.transform(image).unsqueeze(0))
            for class_index in (0, 1):
                expected = reference_grad_cam(candidate, image, class_index)
                ours = upsample(grad_cam(candidate, feature_map, [class_index])[0], (224, 224))
                assert np.abs(ours - expected).max() <= GRAD_CAM_TOLERANCE, (path.name, class_index)
                compared += expected.max() > 0.5  # a real map, not an all-zero one
    assert compared >= 12


def test_concurrent_visitors_get_the_heatmap_and_probabilities_of_their_own_image(app_url, served_model):
    images = TEST_IMAGES[::12][:8]
    assert len({p.name for p in images}) == 8
    assert all(served_model.analyse(p, heatmap=True).heatmap.max() > 0 for p in images)  # every map shows something

    def ask(path):
        label, _, _, overlay_png = Client(app_url, verbose=False).predict(handle_file(str(path)), api_name="/predict")
        with Image.open(overlay_png) as shown:
            return label, np.asarray(shown.convert("RGB"))

    one_at_a_time = [ask(path) for path in images]
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(ask, images))
    assert len({shown.tobytes() for _, shown in one_at_a_time}) == 8
    for path, (label, shown), (label_alone, shown_alone) in zip(images, together, one_at_a_time):
        assert label == label_alone, path.name
        assert np.array_equal(shown, shown_alone), f"{path.name}: heatmap differs by up to " \
            f"{np.abs(shown.astype(int) - shown_alone).max()} grey levels"


def test_every_entry_point_gives_the_same_decision_at_a_threshold_far_from_half(served_run, served_model, app_url,
                                                                                  pushed_served_model, tmp_path):
    assert served_model.threshold == pytest.approx(0.8)
    project = {str(p): served_model.analyse(p) for p in TEST_IMAGES}
    between = [p for p, answer in project.items() if 0.5 <= answer.probabilities["PNEUMONIA"] < served_model.threshold]
    assert between, "no image lies between 0.5 and the threshold: the test could not tell argmax from decision"
    assert all(project[p].decision == "NORMAL" for p in between)

    # The batch CLI (its main, in this process; test_predict.py runs it as a command)
    output = tmp_path / "predictions.csv"
    predict([str(SAMPLE_DIR / "test"), "--model", str(served_run / "best"), "--output", str(output)])
    cli = {row["path"]: row["prediction"] for row in csv.DictReader(output.open())}

    # The Space (what a visitor sees first: the label's heading and the decision text)
    def ask(path):
        label, decision, *_ = Client(app_url, verbose=False).predict(handle_file(path), api_name="/predict")
        assert f"Model output: {label['label']}" in decision
        return label["label"]

    with ThreadPoolExecutor(4) as pool:
        app = dict(zip(project, pool.map(ask, project)))

    # The Space's screening tab, all images in one request
    table, _ = Client(app_url, verbose=False).predict([handle_file(p) for p in project], api_name="/screen")
    screened = dict(zip(project, (row[1] for row in table["data"])))

    # The Hub model through transformers alone
    pipeline = dict(zip(project, pipeline_answers(pushed_served_model, list(project), tmp_path)))

    for path, answer in project.items():
        assert cli[path] == app[path] == screened[path] == pipeline[path][0]["label"] == answer.decision, path
        by_label = {entry["label"]: entry for entry in pipeline[path]}
        for label, probability in answer.probabilities.items():
            assert by_label[label]["probability"] == pytest.approx(probability, abs=1e-4)
        assert pipeline[path][0]["score"] >= 0.5 >= pipeline[path][1]["score"]


def test_predict_reads_the_dicom_variants_the_app_reads(served_model, tmp_path):
    source = Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L")
    expected = served_model.predict(source)
    for name, path in dicom_variants(tmp_path).items():
        rendered = np.asarray(served_model.predictor.read(path).convert("L"), dtype=int)
        assert np.abs(rendered - np.asarray(source, dtype=int)).max() <= 1, name  # the same radiograph, +-1 grey level
        assert served_model.predict(path) == pytest.approx(expected, abs=5e-3), name  # see test_app's DICOM test


def test_predict_refuses_unusable_files_with_the_apps_messages(untrained_model_dir, tmp_path):
    model = PneumoniaClassifier.from_pretrained(untrained_model_dir)  # refused before any prediction: any model will do
    for case, (path, phrase) in bad_uploads(tmp_path).items():
        with pytest.raises(InputImageError, match=phrase):
            model.predict(path)
    with pytest.raises(InputImageError, match="No such file"):
        model.predict(tmp_path / "mistyped.jpeg")


def test_serving_code_never_imports_training_code():
    code = ("import sys, pkgutil, importlib, serving\n"
            "for module in pkgutil.walk_packages(serving.__path__, 'serving.'):\n"
            "    if module.name != 'serving.hub_files.modeling_pneumonia':  # runs under transformers only\n"
            "        importlib.import_module(module.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'trainer'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse((REPO_ROOT / "app.py").read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in
                (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert "serving" in imported and "trainer" not in imported
