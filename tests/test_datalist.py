"""Tests of dataset discovery and datalists (``scripts.data.datalist``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.data import datalist
from scripts.data.datalist import DatasetError, find_datalist, is_image_file, write_datalist

ZHANG = {"training": "train", "validation": "val", "test": "test", "normal": "normal_256", "abnormal": "pneumonia_256"}
CHEXPERT = {
    "training": "train_256_pa",
    "validation": "val_256_pa",
    "test": "our_test_256_pa",
    "normal": "normal_256",
    "abnormal": "abnormal_256",
}
KAGGLE = {"training": "train", "validation": "val", "test": "test", "normal": "NORMAL", "abnormal": "PNEUMONIA"}
# (split, class, file names); the training abnormal image must be dropped
FILES = {
    ("training", "normal"): ["n2.png", "n1.png", "n3.jpeg"],
    ("training", "abnormal"): ["p1.png"],
    ("validation", "normal"): ["vn1.png"],
    ("validation", "abnormal"): ["vp1.png"],
    ("test", "normal"): ["tn1.png", "tn2.jpg"],
    ("test", "abnormal"): ["tp1.png", "tp2.png"],
}


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(
        path, format="JPEG" if path.suffix in (".jpg", ".jpeg") else "PNG"
    )


def _make_layout(root: Path, layout: dict, files: dict = FILES, skip: tuple[str, ...] = ()) -> Path:
    for (split, cls), names in files.items():
        if split in skip:
            continue
        for name in names:
            _png(root / layout[split] / layout[cls] / name)
    return root


def _summary(splits: dict) -> dict:
    """Per split: (file name, label) pairs, for comparing layouts holding the same files."""
    return {k: [(Path(i["image"]).name, i["label"]) for i in v] for k, v in splits.items()}


EXPECTED = {
    "training": [("n1.png", 0), ("n2.png", 0), ("n3.jpeg", 0)],
    "validation": [("vn1.png", 0), ("vp1.png", 1)],
    "test": [("tn1.png", 0), ("tn2.jpg", 0), ("tp1.png", 1), ("tp2.png", 1)],
}


def test_zhanglab_layout(tmp_path, caplog):
    root = _make_layout(tmp_path / "zhang", ZHANG)
    with caplog.at_level(logging.WARNING, logger="scripts.data.datalist"):
        splits = find_datalist(root)
    assert list(splits) == ["training", "validation", "test"]
    assert _summary(splits) == EXPECTED  # sorted, training normal only
    assert "Dropped 1 abnormal training image" in caplog.text
    for items in splits.values():
        for item in items:
            assert set(item) == {"image", "label"}
            assert os.path.isabs(item["image"]) and os.path.isfile(item["image"])
    assert splits["test"][2]["image"] == os.path.abspath(root / "test/pneumonia_256/tp1.png")
    assert find_datalist(root) == splits  # deterministic


def test_chexpert_layout_gives_the_same_items(tmp_path):
    zhang = find_datalist(_make_layout(tmp_path / "zhang", ZHANG))
    chexpert = find_datalist(_make_layout(tmp_path / "chexpert", CHEXPERT))
    assert _summary(chexpert) == _summary(zhang) == EXPECTED
    assert "our_test_256_pa" in chexpert["test"][0]["image"]


def test_kaggle_layout_gives_the_same_items(tmp_path):
    """The Kaggle download (chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}) is read as it unpacks; its train/
    folder does not make it the ZhangLab layout, whose class folders it lacks."""
    root = _make_layout(tmp_path / "chest_xray", KAGGLE)
    (root / "__MACOSX").mkdir()  # what the zip also unpacks
    kaggle = find_datalist(root)
    assert _summary(kaggle) == EXPECTED
    assert kaggle["test"][2]["image"] == os.path.abspath(root / "test/PNEUMONIA/tp1.png")


def test_split_folder_without_class_folders_is_no_layout(tmp_path):
    _png(tmp_path / "data" / "train" / "images" / "x.png")
    error = _raises(tmp_path / "data", "no known layout")
    assert "NORMAL" in str(error) and "normal_256" in str(error)  # names the layouts it looks for


def test_datalist_json_gives_the_same_items(tmp_path):
    root = _make_layout(tmp_path / "zhang", ZHANG)
    expected = find_datalist(root)
    # relative paths (to the JSON's folder), absolute paths, labels missing in training, abnormal training item
    data = {
        "training": [{"image": "zhang/train/normal_256/n2.png"}, {"image": str(root / "train/normal_256/n1.png")}]
        + [
            {"image": "zhang/train/normal_256/n3.jpeg", "label": 0},
            {"image": "zhang/train/pneumonia_256/p1.png", "label": 1},
        ],
        "validation": [
            {"image": f"zhang/val/{c}/{n}", "label": y}
            for c, n, y in [("pneumonia_256", "vp1.png", 1), ("normal_256", "vn1.png", 0)]
        ],
        "test": [
            {"image": f"zhang/test/{c}/{n}", "label": y}
            for c, n, y in [
                ("normal_256", "tn2.jpg", 0),
                ("pneumonia_256", "tp1.png", 1),
                ("normal_256", "tn1.png", 0),
                ("pneumonia_256", "tp2.png", 1),
            ]
        ],
    }
    file = tmp_path / "my_list.json"
    file.write_text(json.dumps(data))
    assert find_datalist(file) == expected
    # found as datalist.json inside a folder, where it takes precedence over a layout
    # (relative paths now to the dataset folder itself; only the normal test images listed)
    relative = json.dumps(data).replace('"zhang/', '"')
    inner = {**json.loads(relative), "test": [{"image": "test/normal_256/tn1.png", "label": 0}]}
    (root / "datalist.json").write_text(json.dumps(inner))
    inside = find_datalist(root)
    assert inside["training"] == expected["training"] and inside["validation"] == expected["validation"]
    assert inside["test"] == expected["test"][:1]


def test_write_datalist_round_trip(tmp_path):
    root = _make_layout(tmp_path / "zhang", ZHANG)
    out = write_datalist(root, tmp_path / "lists" / "dl.json")
    assert out == tmp_path / "lists" / "dl.json"
    data = json.loads(out.read_text())
    assert all(not os.path.isabs(i["image"]) for items in data.values() for i in items)
    assert find_datalist(out) == find_datalist(root)


def test_cli_writes_a_datalist(tmp_path):
    root = _make_layout(tmp_path / "chexpert", CHEXPERT)
    datalist.main(["--dataset_dir", str(root), "--output", str(tmp_path / "out.json")])
    assert _summary(find_datalist(tmp_path / "out.json")) == EXPECTED


def test_image_file_detection(tmp_path):
    folder = tmp_path / "train" / "normal_256"
    _png(folder / "a.PNG")
    (folder / "b.nii.gz").write_bytes(b"\x1f\x8b")
    (folder / "c.dcm").write_bytes(b"")
    (folder / "d").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)  # extensionless DICOM
    (folder / "e").write_bytes(b"\0" * 140)  # extensionless, not DICOM
    (folder / "notes.txt").write_text("x")
    _png(folder / ".hidden.png")
    _png(folder / "._a.png")  # macOS resource fork
    found = sorted(p.name for p in folder.iterdir() if is_image_file(p))
    assert found == ["a.PNG", "b.nii.gz", "c.dcm", "d"]
    assert not is_image_file(folder)


def test_missing_validation_falls_back_to_test(tmp_path, caplog):
    root = _make_layout(tmp_path / "zhang", ZHANG, skip=("validation",))
    with caplog.at_level(logging.WARNING, logger="scripts.data.datalist"):
        splits = find_datalist(root)
    assert splits["validation"] == splits["test"] and len(splits["test"]) == 4
    assert "no validation split" in caplog.text


def test_missing_test_falls_back_to_validation(tmp_path):
    splits = find_datalist(_make_layout(tmp_path / "zhang", ZHANG, skip=("test",)))
    assert splits["test"] == splits["validation"] and len(splits["test"]) == 2


def test_single_class_split_is_allowed_with_a_warning(tmp_path, caplog):
    files = {k: v for k, v in FILES.items() if k != ("validation", "abnormal")}
    with caplog.at_level(logging.WARNING, logger="scripts.data.datalist"):
        splits = find_datalist(_make_layout(tmp_path / "zhang", ZHANG, files))
    assert [i["label"] for i in splits["validation"]] == [0]
    assert "validation split" in caplog.text and "AUC is undefined" in caplog.text


# ---------------------------------------------------------------------------------------------- errors


def _raises(path: Path, match: str, target: Path | None = None) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        find_datalist(path if target is None else target)
    assert str(path) in str(info.value)
    assert match in str(info.value)
    return info.value


def test_error_missing_dir(tmp_path):
    error = _raises(tmp_path / "nowhere", "does not exist")
    assert "python -m scripts.synthetic" in str(error)  # tells what to do
    assert isinstance(error, ValueError)


def test_error_empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("")
    _raises(tmp_path / "empty", "is empty")


def test_error_unknown_layout(tmp_path):
    _png(tmp_path / "data" / "images" / "x.png")
    error = _raises(tmp_path / "data", "no known layout")
    assert "images" in str(error) and "normal_256" in str(error)


def test_error_no_normal_training_images(tmp_path):
    files = {k: v for k, v in FILES.items() if k != ("training", "normal")}
    root = _make_layout(tmp_path / "zhang", ZHANG, files)
    _raises(root, "No normal training images")


def test_error_no_evaluation_split(tmp_path):
    root = _make_layout(tmp_path / "zhang", ZHANG, skip=("validation", "test"))
    _raises(root, "neither a validation nor a test split")


def test_error_datalist_names_missing_file(tmp_path):
    root = _make_layout(tmp_path / "zhang", ZHANG)
    file = tmp_path / "dl.json"
    file.write_text(
        json.dumps(
            {
                "training": [{"image": "zhang/train/normal_256/n1.png"}],
                "test": [{"image": "zhang/test/normal_256/gone.png", "label": 0}],
            }
        )
    )
    error = _raises(file, "does not exist")
    assert str(root / "test/normal_256/gone.png") in str(error)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "Cannot read"),
        (json.dumps({"training": []}), "no non-empty"),
        (json.dumps({"training": [{"image": "a.png"}], "test": [{"image": "a.png", "label": 2}]}), "label"),
        (json.dumps({"training": [{"image": "a.png"}], "test": [{"image": "a.png"}]}), "no 'label'"),
        (json.dumps({"training": [{"image": "a.png"}], "test": ["a.png"]}), "no 'label'"),
        (json.dumps({"training": ["a.png"], "test": [{"image": "a.png", "label": 0}]}), "malformed"),
    ],
)
def test_error_bad_datalist(tmp_path, content, match):
    _png(tmp_path / "a.png")
    file = tmp_path / "dl.json"
    file.write_text(content)
    _raises(file, match)


def test_datalist_masks_and_kinds_are_kept_resolved_and_filled(tmp_path):
    for name in ("n.png", "a.png", "b.png", "v.png", "masks/a.png"):
        _png(tmp_path / name)
    (tmp_path / "list.json").write_text(json.dumps({
        "training": [{"image": "n.png"}],
        "validation": [{"image": "v.png", "label": 0}, {"image": "b.png", "label": 1}],
        "test": [{"image": "n.png", "label": 0, "kind": "normal"},
                 {"image": "a.png", "label": 1, "kind": "effusion", "mask": "masks/a.png"},
                 {"image": "b.png", "label": 1, "kind": 7}],
    }))
    splits = find_datalist(tmp_path / "list.json")
    test = {Path(item["image"]).name: item for item in splits["test"]}
    assert test["a.png"] == {"image": str(tmp_path / "a.png"), "label": 1, "kind": "effusion",
                             "mask": str(tmp_path / "masks" / "a.png")}
    # every item of a split has the same keys (batches collate); "" where an item has none
    assert test["b.png"]["mask"] == "" and test["b.png"]["kind"] == "7" and test["n.png"]["mask"] == ""
    assert splits["validation"][0].keys() == {"image", "label"}
    # written back with paths relative to the new datalist's folder, and read again the same
    out = write_datalist(tmp_path / "list.json", tmp_path / "copy" / "datalist.json")
    written = json.loads(out.read_text())
    assert {"image": "../a.png", "label": 1, "kind": "effusion", "mask": "../masks/a.png"} in written["test"]
    assert find_datalist(out) == splits


def test_datalist_missing_mask_is_named(tmp_path):
    _png(tmp_path / "n.png")
    _png(tmp_path / "a.png")
    (tmp_path / "list.json").write_text(json.dumps({
        "training": [{"image": "n.png"}],
        "test": [{"image": "n.png", "label": 0}, {"image": "a.png", "label": 1, "mask": "masks/gone.png"}],
    }))
    with pytest.raises(DatasetError, match=r"Mask .*masks/gone\.png listed in datalist .*list\.json does not exist"):
        find_datalist(tmp_path / "list.json")


def test_synthetic_set_reads_through_its_datalist_with_masks(tmp_path):
    from scripts.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "s", n_train=2, n_val_normal=1, n_val_abnormal=1, n_test_normal=2,
                                   n_test_abnormal=5, size=32, seed=0)
    test = find_datalist(root)["test"]
    abnormal = [item for item in test if item["label"] == 1]
    assert sorted(item["kind"] for item in abnormal) == sorted(
        ["nodule", "consolidation", "effusion", "pneumothorax", "cardiomegaly"])
    assert all(Path(item["mask"]).is_file() and "masks" in item["mask"] for item in abnormal)
    assert all(item["mask"] == "" and item["kind"] == "normal" for item in test if item["label"] == 0)
