"""The screening limits of serving/batch.py, without the app: what too many files, a zip bomb or an encrypted
archive are told."""

import zipfile
from pathlib import Path

import pytest

from serving import batch
from serving.images import InputImageError
from tests.conftest import sample_images


def test_more_files_than_the_limit_are_refused_before_any_is_read(tmp_path):
    image = str(sample_images("test", "NORMAL", 1)[0])
    assert len(batch.screening_files([image] * batch.MAX_FILES, tmp_path)) == batch.MAX_FILES
    with pytest.raises(InputImageError, match=f"{batch.MAX_FILES + 1} images: one screening takes at most "
                                              f"{batch.MAX_FILES}"):
        batch.screening_files([image] * (batch.MAX_FILES + 1), tmp_path)


def test_an_archive_that_expands_beyond_the_limit_is_refused_before_extraction(tmp_path, monkeypatch):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("a.png", b"\0" * 3 * 2**20)  # 3 MB of zeros: a few KB compressed
    monkeypatch.setattr(batch, "MAX_UNZIPPED_BYTES", 2 * 2**20)  # a small limit instead of writing a real 1 GB bomb
    with pytest.raises(InputImageError, match="big.zip expands to 3 MB, more than the 2 MB limit"):
        batch.screening_files([str(archive)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_members_cannot_escape_the_extraction_folder(tmp_path):
    archive = tmp_path / "sly.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../../escaped.png", b"x")
    [(name, extracted)] = batch.screening_files([str(archive)], tmp_path / "out")
    assert name == "sly.zip/../../escaped.png"
    assert extracted.is_file() and extracted.is_relative_to(tmp_path / "out")
    assert not (tmp_path / "escaped.png").exists()


def test_a_password_protected_archive_is_refused_with_what_to_do(tmp_path):
    """tests/data/password_protected.zip: a bundled X-ray zipped by Info-ZIP with `zip -P secret`."""
    archive = Path(__file__).parent / "data" / "password_protected.zip"
    with pytest.raises(InputImageError, match="password_protected.zip is password-protected, and the app cannot open "
                                              "encrypted archives. Zip the images again without a password"):
        batch.screening_files([str(archive)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_archive_compressed_with_a_method_zipfile_cannot_read_is_refused_with_what_to_do(tmp_path):
    """tests/data/deflate64.zip: a bundled X-ray zipped by 7-Zip with `7z a -tzip -mm=Deflate64`;
    Python's zipfile cannot unpack Deflate64."""
    archive = Path(__file__).parent / "data" / "deflate64.zip"
    with pytest.raises(InputImageError, match="deflate64.zip compresses IM-0007-0001.jpeg with deflate64, which the "
                                              "app cannot unpack. Zip the images again with ordinary"):
        batch.screening_files([str(archive)], tmp_path / "out")
    assert not (tmp_path / "out").exists()
