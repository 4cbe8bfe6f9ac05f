"""Data loading, patient grouping, image modes and the errors a user's folder can cause."""

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from serving.preprocessing import eval_transform, to_rgb
from tests.conftest import SAMPLE_DIR
from trainer.data import DatasetLayoutError, load_chest_xray, patient_id, split_by_patient


def test_labels_follow_the_class_folders():
    data = load_chest_xray(SAMPLE_DIR)
    assert data["train"].features["label"].names == ["NORMAL", "PNEUMONIA"]
    assert sorted(data) == ["test", "train"]
    first_normal = data["train"]["label"][data["train"]["file_name"].index(
        next(f for f in data["train"]["file_name"] if f.startswith("NORMAL/")))]
    assert first_normal == 0
    assert all((label == 1) == name.startswith("PNEUMONIA/")
               for name, label in zip(data["test"]["file_name"], data["test"]["label"]))


@pytest.mark.parametrize("file_name, patient", [
    ("person1000_bacteria_2931.jpeg", "person1000"),
    ("person1000_virus_1681.jpeg", "person1000"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0115-0001.jpeg", "IM-0115"),
    ("IM-0429-0001-0002.jpeg", "IM-0429"),
    ("scan_7.png", "scan_7"),
])
def test_patient_id_from_kaggle_file_names(file_name, patient):
    assert patient_id(file_name) == patient


def test_validation_split_is_grouped_and_depends_on_seed():
    train = load_chest_xray(SAMPLE_DIR)["train"]
    kept, held_out = split_by_patient(train, 0.1, seed=1)
    assert {patient_id(f) for f in kept["file_name"]}.isdisjoint(patient_id(f) for f in held_out["file_name"])
    assert 0.05 < len(held_out) / len(train) < 0.15
    _, other = split_by_patient(train, 0.1, seed=2)
    assert set(other["file_name"]) != set(held_out["file_name"])


@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.3, 0.45])
def test_validation_gets_the_fraction_asked_for_within_one_patient_in_each_class(fraction):
    train = load_chest_xray(SAMPLE_DIR)["train"]
    kept, held_out = split_by_patient(train, fraction, seed=0)
    patients = [patient_id(f) for f in train["file_name"]]
    largest_patient = max(patients.count(p) for p in set(patients))
    for label in (0, 1):
        in_class = train["label"].count(label)
        assert abs(held_out["label"].count(label) - fraction * in_class) <= largest_patient / 2, label
    assert {patient_id(f) for f in kept["file_name"]}.isdisjoint(patient_id(f) for f in held_out["file_name"])


def test_extra_val_folder_is_ignored_with_a_log_line(sample_copy, caplog):
    shutil.copytree(sample_copy / "test", sample_copy / "val")
    with caplog.at_level(logging.INFO, logger="trainer.data"):
        data = load_chest_xray(sample_copy)
    assert sorted(data) == ["test", "train"] and len(data["test"]) == 101
    assert "val" in caplog.text and "Ignoring" in caplog.text


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "I"])
def test_images_of_any_mode_become_three_channel_input(mode):
    source = Image.open(next((SAMPLE_DIR / "test" / "NORMAL").glob("*.jpeg"))).convert("L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(source, dtype=np.uint16) * 257)
    else:
        image = source.convert(mode)
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == source.size
    assert eval_transform({"input_size": [3, 224, 224], "interpolation": "bicubic", "mean": [0.5] * 3,
                           "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "squash"})(image).shape == (3, 224, 224)
    # Grey levels survive the conversion (16-bit by its full range).
    difference = np.abs(np.asarray(rgb.convert("L"), dtype=int) - np.asarray(source, dtype=int))
    assert difference.mean() < 1.5


def test_squash_keeps_the_whole_wide_image():
    """A wide radiograph is resized whole, not centre-cropped: the edge columns stay in the input."""
    wide = np.zeros((100, 300), dtype=np.uint8)
    wide[:, :30] = 255  # a bright band at the far left, which a centre crop would cut off
    transform = eval_transform({"input_size": [3, 224, 224], "interpolation": "bilinear", "mean": [0.0] * 3,
                                "std": [1.0] * 3, "crop_pct": 1.0, "crop_mode": "squash"})
    tensor = transform(Image.fromarray(wide))
    assert tensor.shape == (3, 224, 224)
    assert tensor[0, :, :10].mean() > 0.9 and tensor[0, :, -10:].mean() < 0.1


def test_a_local_folder_loads_without_download_bars(sample_copy, capfd):
    """datasets labels its progress bars "Downloading data" even for local files; nothing is downloaded."""
    data = load_chest_xray(sample_copy)  # a new path: datasets builds its cache anew, as on a first run
    assert len(data["train"]) == 300
    assert "Downloading" not in capfd.readouterr().err


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / 'nowhere'} does not exist.*--data_dir"):
        load_chest_xray(tmp_path / "nowhere")


def test_folder_without_test_split_is_named(sample_copy):
    shutil.rmtree(sample_copy / "test")
    with pytest.raises(DatasetLayoutError, match="has no test/ folder"):
        load_chest_xray(sample_copy)


def test_missing_class_folder_is_named(sample_copy):
    shutil.rmtree(sample_copy / "train" / "NORMAL")
    with pytest.raises(DatasetLayoutError, match=r"train/NORMAL is missing"):
        load_chest_xray(sample_copy)


def test_empty_class_folder_is_named(sample_copy):
    for image in (sample_copy / "test" / "PNEUMONIA").iterdir():
        image.unlink()
    with pytest.raises(DatasetLayoutError, match=r"test/PNEUMONIA holds no images"):
        load_chest_xray(sample_copy)


def test_corrupt_images_are_all_named_before_training(sample_copy):
    victim = next((sample_copy / "train" / "PNEUMONIA").glob("*.jpeg"))
    victim.write_bytes(victim.read_bytes()[:2000])  # a truncated JPEG
    impostor = sample_copy / "test" / "NORMAL" / "notes.jpeg"
    impostor.write_text("not an image")
    with pytest.raises(DatasetLayoutError, match="2 image") as error:
        load_chest_xray(sample_copy)
    assert str(victim) in str(error.value) and str(impostor) in str(error.value)


