"""Bad training data stops the run through the train config, with an error that names the path and the reason.

Policy: an image that cannot be loaded stops training (it is never skipped: a silently smaller training set
changes the model); the error names the file, says what is wrong with it and suggests fixing it or removing
it from the data set. A data set without usable normal training images stops before anything is built.
Nothing is written to ``ckpt_dir`` in any of these cases.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bundle_utils import TINY, workflow
from scripts.data.synthetic import write_synthetic_dataset

N_TRAIN = 4
BAD_IMAGE = "train/normal_256/normal_0001.png"


def _error_text(exc: BaseException) -> str:
    """The messages of an exception and of its causes, as the command line's traceback shows them."""
    messages = []
    while exc is not None:
        messages.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(messages)


def _train_error(dataset: Path, tmp_path: Path, **override: object) -> str:
    """Initialise and run one epoch of the train config on ``dataset``; the error it stops with, as text."""
    ckpt_dir = tmp_path / "models"
    wf = workflow(["train.json"], "train", "training", **{**TINY, "batch_size": 2}, dataset_dir=str(dataset),
                  ckpt_dir=str(ckpt_dir), output_dir=str(tmp_path / "runs"), epochs=1, **override)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    assert not ckpt_dir.exists() or not any(ckpt_dir.iterdir()), "a stopped run must not leave checkpoints"
    return _error_text(info.value)


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_data") / "synthetic"
    return write_synthetic_dataset(root, n_train=N_TRAIN, n_val_normal=2, n_val_abnormal=2, n_test_normal=1,
                                   n_test_abnormal=1, size=64, seed=4)


@pytest.fixture
def dataset(clean_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the clean data set in the ZhangLab folder layout (without its datalist.json), to damage."""
    return Path(shutil.copytree(clean_dataset, tmp_path / "xray", ignore=shutil.ignore_patterns("datalist.json")))


def _zero_bytes(data: bytes) -> bytes:
    return b""


def _garbage(data: bytes) -> bytes:
    return b"this is not an image " * 20


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "damage, reason",
    [(_zero_bytes, "file is empty (0 bytes)"), (_garbage, "content is not DICOM, PNG, JPEG, NIfTI, NRRD or MetaImage"),
     (_truncated, "truncated")],
    ids=["zero_bytes", "garbage", "truncated"],
)
def test_unreadable_training_image_stops_naming_it(
    dataset: Path, tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    bad = dataset / BAD_IMAGE
    bad.write_bytes(damage(bad.read_bytes()))
    error = _train_error(dataset, tmp_path)
    assert f"cannot load radiograph '{bad}'" in error
    assert reason in error
    assert "remove it from the dataset" in error


def test_unreadable_image_stops_mid_epoch_without_caching(dataset: Path, tmp_path: Path) -> None:
    """With ``cache_rate 0`` images load during the epoch: the run still stops at the bad file, naming it."""
    bad = dataset / BAD_IMAGE
    bad.write_bytes(b"")
    error = _train_error(dataset, tmp_path, cache_rate=0.0)
    assert f"cannot load radiograph '{bad}': file is empty (0 bytes)" in error


def test_unreadable_validation_image_stops_naming_it(dataset: Path, tmp_path: Path) -> None:
    bad = next((dataset / "val" / "pneumonia_256").iterdir())
    bad.write_bytes(b"")
    assert f"cannot load radiograph '{bad}': file is empty (0 bytes)" in _train_error(dataset, tmp_path)


def test_empty_dataset_folder_stops_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty_dataset"
    empty.mkdir()
    assert f"Dataset folder {empty} is empty" in _train_error(empty, tmp_path)


def test_empty_training_folder_stops_naming_the_dataset(dataset: Path, tmp_path: Path) -> None:
    for image in (dataset / "train" / "normal_256").iterdir():
        image.unlink()
    error = _train_error(dataset, tmp_path)
    assert f"No normal training images found in {dataset}: the training split is empty" in error


def test_only_abnormal_training_images_stop_naming_the_dataset(dataset: Path, tmp_path: Path) -> None:
    abnormal = dataset / "train" / "pneumonia_256"
    abnormal.mkdir()
    for image in list((dataset / "train" / "normal_256").iterdir()):
        image.rename(abnormal / image.name)
    error = _train_error(dataset, tmp_path)
    assert f"No normal training images found in {dataset}: all {N_TRAIN} training images are abnormal" in error


def test_datalist_with_only_abnormal_training_items_stops_naming_it(dataset: Path, tmp_path: Path) -> None:
    images = sorted(str(p) for p in (dataset / "train" / "normal_256").iterdir())
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({
        "training": [{"image": p, "label": 1} for p in images],
        "validation": [{"image": images[0], "label": 0}, {"image": images[1], "label": 1}],
    }))
    error = _train_error(datalist, tmp_path)
    assert f"No normal training images found in {datalist}: all {N_TRAIN} training images are abnormal" in error
