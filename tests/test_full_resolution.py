"""Full-size JPEGs: decoded at reduced scale the same way in training and serving; the resize script."""

import datasets
import numpy as np
import pytest
from PIL import Image

from dataset_scripts.resize_dataset import resize_folder
from serving.images import read_image
from serving.preprocessing import eval_transform, preprocessing_config
from tests.conftest import sample_images
from trainer.data import make_loader

PREPROCESSING = preprocessing_config("resnet18")
INPUT_SIZE = (224, 224)


@pytest.fixture
def full_size_xray(tmp_path):
    """A real X-ray upscaled to a Kaggle original's size (grey JPEG, 1,900 x 1,500)."""
    path = tmp_path / "full_size.jpeg"
    Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L").resize((1900, 1500), Image.BICUBIC).save(path)
    return path


def test_a_full_size_jpeg_decodes_at_reduced_scale_but_at_least_the_input_size(full_size_xray):
    assert read_image(full_size_xray).size == (1900, 1500)
    width, height = read_image(full_size_xray, INPUT_SIZE).size
    assert 224 <= width <= 1900 // 4 and 224 <= height <= 1500 // 4


def test_training_loader_drafts_like_the_app_and_leaves_small_images_exact(full_size_xray):
    small = sample_images("test", "NORMAL", 1)[0]
    split = datasets.Dataset.from_dict({"image": [str(full_size_xray), str(small)], "label": [1, 0]})
    batch = next(iter(make_loader(split.cast_column("image", datasets.Image()), eval_transform(PREPROCESSING), 2,
                                  False, 0)))
    transform = eval_transform(PREPROCESSING)
    assert batch["pixel_values"][0].equal(transform(read_image(full_size_xray, INPUT_SIZE)))
    assert not batch["pixel_values"][0].equal(transform(read_image(full_size_xray)))
    assert batch["pixel_values"][1].equal(transform(read_image(small)))


def test_small_images_decode_exactly_as_without_draft():
    for path in sample_images("train", "NORMAL", 3) + sample_images("train", "PNEUMONIA", 3):
        assert np.array_equal(np.asarray(read_image(path, INPUT_SIZE)), np.asarray(read_image(path)))


def test_resize_dataset_writes_input_size_copies_and_lists_broken_files(sample_copy, full_size_xray, tmp_path):
    full_size_xray.rename(sample_copy / "train" / "PNEUMONIA" / "person9999_bacteria_1.jpeg")
    (sample_copy / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"not a jpeg")
    before = sorted(p.relative_to(sample_copy) for p in sample_copy.rglob("*.jpeg"))
    unreadable = resize_folder(sample_copy, tmp_path / "resized", 224)
    assert len(unreadable) == 1 and "broken.jpeg" in unreadable[0]
    written = sorted(p.relative_to(tmp_path / "resized") for p in (tmp_path / "resized").rglob("*.jpeg"))
    assert written == [p for p in before if p.name != "broken.jpeg"]
    resized = Image.open(tmp_path / "resized" / "train" / "PNEUMONIA" / "person9999_bacteria_1.jpeg")
    assert resized.size == (224, 224) and resized.mode == "L"
    assert sorted(p.relative_to(sample_copy) for p in sample_copy.rglob("*.jpeg")) == before  # source untouched
