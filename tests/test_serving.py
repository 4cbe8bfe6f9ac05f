"""One serving path: every entry point gives the same answer, heatmaps are Grad-CAM's and never mix between
concurrent visitors, one reader with one set of errors, and serving code that never imports training code."""

import ast
import csv
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from serving import InputImageError, NotAChestXray, PneumoniaClassifier, Predictor, images, read_image
from serving.heatmap import grad_cam, upsample
from serving.upload import diagnose
from tests.app_inputs import bad_uploads, dicom_variants, non_xray_files
from tests.conftest import REPO_ROOT, SAMPLE_DIR, data_url, mcp_session, sample_images, start_pipeline
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
    for candidate in (PneumoniaClassifier.from_pretrained(served_run / "best"), untrained.eval()):
        predictor = Predictor(candidate, engine)
        assert predictor.engine == engine
        for path in sample_images("test", "NORMAL", 3) + sample_images("test", "PNEUMONIA", 3):
            image = predictor.read(path)
            _, _, feature_map = predictor.forward(candidate.transform(image).unsqueeze(0))
            for class_index in (0, 1):
                expected = reference_grad_cam(candidate, image, class_index)
                ours = upsample(grad_cam(candidate, feature_map, [class_index])[0], (224, 224))
                assert np.abs(ours - expected).max() <= GRAD_CAM_TOLERANCE, (path.name, class_index)
                compared += expected.max() > 0.5  # a real map, not an all-zero one
    assert compared >= 12


def test_concurrent_visitors_get_the_heatmap_and_probabilities_of_their_own_image(app_url, served_predictor):
    images = TEST_IMAGES[::12][:8]
    assert len({p.name for p in images}) == 8
    assert all(served_predictor.analyse(p, heatmap=True).heatmap.max() > 0 for p in images)  # every map shows something

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


def test_every_entry_point_gives_one_answer_at_a_threshold_far_from_half_and_none_for_non_xrays(
        served_run, served_model, served_predictor, app_url, pushed_served_model, tmp_path):
    """The 101 sample X-rays get the Predictor's decision everywhere; a photograph, a scanned page and a CT slice get
    NOT_A_CHEST_XRAY (or the Space's sentence, or NotAChestXray) everywhere, NORMAL or PNEUMONIA nowhere."""
    assert served_model.threshold == pytest.approx(0.8)
    non_xrays = {str(p): name for name, p in non_xray_files(tmp_path / "not_xrays").items()}
    images = [*map(str, TEST_IMAGES), *non_xrays]
    # The Hub model through transformers alone (it reads bitmaps: the CT slice as the project renders it), in a new
    # Python that runs while this one asks the other entry points
    as_bitmaps = [path if Path(path).suffix != ".dcm" else png_of(path, tmp_path) for path in images]
    pipeline_answers = start_pipeline(pushed_served_model, as_bitmaps, tmp_path)
    project = {path: served_predictor.analyse(path) for path in images}
    between = [p for p, answer in project.items() if answer.looks_like_xray
               and 0.5 <= answer.probabilities["PNEUMONIA"] < served_model.threshold]
    assert between, "no image lies between 0.5 and the threshold: the test could not tell argmax from decision"
    assert all(project[p].decision == "NORMAL" for p in between)
    assert {project[p].decision for p in non_xrays} == {"NOT_A_CHEST_XRAY"}
    assert {"NORMAL", "PNEUMONIA"} <= {project[p].decision for p in map(str, TEST_IMAGES)}

    # PneumoniaClassifier.predict refuses with the Space's sentence, unless asked for the raw probabilities
    for path in non_xrays:
        with pytest.raises(NotAChestXray, match="This does not look like a chest X-ray"):
            served_model.predict(path)
        assert served_model.predict(path, allow_non_xray=True) == pytest.approx(project[path].probabilities)

    # The batch CLI (its main, in this process; test_predict.py runs it as a command)
    output = tmp_path / "predictions.csv"
    predict([str(SAMPLE_DIR / "test"), str(tmp_path / "not_xrays"), "--model", str(served_run / "best"),
             "--output", str(output)])
    cli = {row["path"]: row["prediction"] for row in csv.DictReader(output.open())}

    # The Space (what a visitor sees first: the label's heading and the decision text), every request submitted at
    # once by one client as gradio_client does it; the app answers four at a time
    def shown(path, job):
        label, decision, comparison, _ = job.result()
        if decision.startswith("**This does not look like a chest X-ray.**"):
            assert comparison is None and (label is None or not label.get("confidences")), path
            return "NOT_A_CHEST_XRAY"
        assert f"Model output: {label['label']}" in decision
        return label["label"]

    client = Client(app_url, verbose=False)
    jobs = {path: client.submit(handle_file(path), api_name="/predict") for path in project}
    app = {path: shown(path, job) for path, job in jobs.items()}

    # The Space's screening tab, all images in one request
    table, _ = client.predict([handle_file(p) for p in project], api_name="/screen")
    screened = dict(zip(project, (row[1] for row in table["data"])))

    # The Space's MCP tool, as an agent calls it
    async def calls(session):
        return [await session.call_tool("predict", {"xray_file": data_url(Path(path), mime)})
                for path, mime in zip(non_xrays, ("image/jpeg", "image/png", "application/dicom"))]

    for result in mcp_session(app_url, calls):
        assert not result.isError and "does not look like a chest X-ray" in result.content[0].text
        assert "Model output" not in result.content[0].text

    pipeline = dict(zip(images, pipeline_answers()))

    for path, answer in project.items():
        assert cli[path] == app[path] == screened[path] == pipeline[path][0]["label"] == answer.decision, path
        if path in non_xrays or not answer.looks_like_xray:  # a refused real X-ray too (the guard's alpha allows it)
            assert len(pipeline[path]) == 1 and pipeline[path][0]["guard_distance"] == pytest.approx(
                answer.guard_distance, rel=1e-3), non_xrays[path]
            continue
        by_label = {entry["label"]: entry for entry in pipeline[path]}
        for label, probability in answer.probabilities.items():
            assert by_label[label]["probability"] == pytest.approx(probability, abs=1e-4)
        assert pipeline[path][0]["score"] >= 0.5 >= pipeline[path][1]["score"]


def png_of(path: str, folder: Path) -> str:
    rendered = folder / f"{Path(path).stem}.png"
    read_image(path).save(rendered)
    return str(rendered)


def test_predict_reads_the_dicom_variants_the_app_reads(served_model, served_predictor, tmp_path):
    source = Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L")
    expected = served_model.predict(source)
    for name, path in dicom_variants(tmp_path).items():
        rendered = np.asarray(served_predictor.read(path).convert("L"), dtype=int)
        assert np.abs(rendered - np.asarray(source, dtype=int)).max() <= 1, name  # the same radiograph, +-1 grey level
        assert served_model.predict(path) == pytest.approx(expected, abs=5e-3), name  # see test_app's DICOM test


def test_the_space_decodes_an_upload_once_and_answers_exactly_as_every_entry_point(untrained_model_dir, tmp_path,
                                                                                   monkeypatch):
    """One decode per Space request, except a JPEG large enough to be drafted coarser for the model than for the
    display (one extra decode at 1/8 scale); the answer always equals the CLI's and PneumoniaClassifier's."""
    predictor = Predictor(PneumoniaClassifier.from_pretrained(untrained_model_dir), engine="eager")
    source = Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L")
    source.resize((1800, 1500), Image.BICUBIC).save(tmp_path / "large.jpeg", quality=90)
    source.resize((1800, 1500), Image.BICUBIC).save(tmp_path / "large.png")
    uploads = {"sample JPEG": (sample_images("test", "PNEUMONIA", 1)[0], 1), "large PNG": (tmp_path / "large.png", 1),
               "DICOM": (dicom_variants(tmp_path)["mono1_12bit"], 1), "large JPEG": (tmp_path / "large.jpeg", 2)}
    decodes = []
    for reader in ("open_bitmap", "dicom_to_image"):
        real = getattr(images, reader)
        monkeypatch.setattr(images, reader, lambda *args, real=real: decodes.append(args[0]) or real(*args))
    for name, (path, expected_decodes) in uploads.items():
        decodes.clear()
        prediction, _, shown = diagnose(predictor, path)
        assert len(decodes) == expected_decodes, name
        assert prediction.probabilities == predictor.analyse(path).probabilities, name  # exactly, not approximately
        assert max(shown.size) == min(1024, max(Image.open(path).size) if path.suffix != ".dcm" else 224), name


def test_predict_refuses_unusable_files_with_the_apps_messages(untrained_model_dir, tmp_path):
    model = PneumoniaClassifier.from_pretrained(untrained_model_dir)  # refused before any prediction: any model will do
    for case, (path, phrase) in bad_uploads(tmp_path).items():
        with pytest.raises(InputImageError, match=phrase):
            model.predict(path)
    with pytest.raises(InputImageError, match="No such file"):
        model.predict(tmp_path / "mistyped.jpeg")


def test_serving_code_imports_neither_training_code_nor_gradio_and_the_space_push_no_gradio():
    code = ("import sys, pkgutil, importlib, serving\n"
            "for module in pkgutil.walk_packages(serving.__path__, 'serving.'):\n"
            "    if module.name != 'serving.hub_files.modeling_pneumonia':  # runs under transformers only\n"
            "        importlib.import_module(module.name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'trainer', 'gradio', 'gradio_client'}))\n"
            "import trainer.push_space\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'gradio', 'gradio_client'}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-2:] == ["[]", "[]"]
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse((REPO_ROOT / "app.py").read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in
                (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert "serving" in imported and "trainer" not in imported
