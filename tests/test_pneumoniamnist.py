"""Tests of the PneumoniaMNIST converter (``benchmarks/pneumoniamnist.py``): the folder it writes is read by the
bundle's datalist reader with the training split's pneumonia images left out, every pixel as stored in the file,
and it refuses a non-empty output folder and a file that is not PneumoniaMNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.pneumoniamnist import write_pneumoniamnist
from scripts.data.datalist import find_datalist

LABELS = {"train": [0, 1, 0, 1, 1, 0, 0], "val": [1, 0, 1], "test": [0, 0, 1, 1, 1]}


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, labels in LABELS.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)[:, None]
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, **arrays)
    return path


def test_splits_labels_and_pixels_as_stored(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "pm"
    write_pneumoniamnist(npz, out)
    datalist = find_datalist(out)
    assert [item["label"] for item in datalist["training"]] == [0, 0, 0, 0]
    assert sorted(item["label"] for item in datalist["validation"]) == sorted(LABELS["val"])
    assert sorted(item["label"] for item in datalist["test"]) == sorted(LABELS["test"])
    assert {item["kind"] for item in datalist["test"] if item["label"]} == {"pneumonia"}
    with np.load(npz) as arrays:
        for item in datalist["test"]:
            index = int(Path(item["image"]).stem)
            assert LABELS["test"][index] == item["label"]
            np.testing.assert_array_equal(np.asarray(Image.open(item["image"])), arrays["test_images"][index])


def test_refuses_non_empty_output_and_other_files(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        write_pneumoniamnist(npz, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    with np.load(npz) as arrays:
        partial = {key: arrays[key] for key in arrays.files if key != "val_labels"}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(ValueError, match="val_labels"):
        write_pneumoniamnist(tmp_path / "partial.npz", tmp_path / "new")


def test_pca_floor_reports_the_datalist_kind(npz: Path, tmp_path: Path) -> None:
    """The PCA baseline names the converted folder's abnormal images by their datalist ``kind`` (there is no
    ``findings.csv``), and its per-kind AUC is the overall one when there is one kind."""
    from benchmarks.pca_baseline import run

    out = tmp_path / "pm"
    write_pneumoniamnist(npz, out)
    result = run(out, n_components=2, size=16)
    assert set(result["auc"]) == {"overall", "pneumonia"}
    assert result["auc"]["pneumonia"] == result["auc"]["overall"]
    assert (result["n_test_normal"], result["n_test_abnormal"]) == (2, 3)
