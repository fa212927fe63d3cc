"""Tests of the ZhangLab (Kaggle layout) datalist with a validation split drawn from ``train``
(``benchmarks/zhanglab_validation.py``): the splits are disjoint, the validation images come from ``train`` (and
``val``), the test split is ``test`` whole, the draw follows the seed, and the bundle reads the datalist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.zhanglab_validation import zhanglab_datalist
from scripts.data.datalist import find_datalist

COUNTS = {("train", "NORMAL"): 10, ("train", "PNEUMONIA"): 6, ("val", "NORMAL"): 1, ("val", "PNEUMONIA"): 1,
          ("test", "NORMAL"): 3, ("test", "PNEUMONIA"): 4}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for (split, folder), n in COUNTS.items():
        (tmp_path / split / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / split / folder / f"{folder[0]}{i}.jpeg")
    (tmp_path / "train" / "NORMAL" / ".DS_Store").write_text("")
    return tmp_path


def _folder(item: dict) -> str:
    return "/".join(Path(item["image"]).parts[-3:-1])


def test_validation_is_drawn_from_train_and_left_out_of_training(root):
    datalist = zhanglab_datalist(root, val_normal=3, val_abnormal=2, seed=0)
    training = {item["image"] for item in datalist["training"]}
    validation = {item["image"] for item in datalist["validation"]}
    test = {item["image"] for item in datalist["test"]}
    assert len(training) == 10 - 3 and not training & validation and not test & (training | validation)
    assert {_folder(item) for item in datalist["training"]} == {"train/NORMAL"}
    counts = {}
    for item in datalist["validation"]:
        counts[_folder(item)] = counts.get(_folder(item), 0) + 1
        assert item["label"] == (_folder(item).endswith("PNEUMONIA"))
    assert counts == {"train/NORMAL": 3, "train/PNEUMONIA": 2, "val/NORMAL": 1, "val/PNEUMONIA": 1}
    assert len(test) == 7 and {_folder(item) for item in datalist["test"]} == {"test/NORMAL", "test/PNEUMONIA"}
    assert {item["kind"] for item in datalist["test"] if item["label"]} == {"pneumonia"}


def test_the_draw_follows_the_seed(root):
    first, again = zhanglab_datalist(root, 3, 2, seed=0), zhanglab_datalist(root, 3, 2, seed=0)
    assert first == again
    others = [zhanglab_datalist(root, 3, 2, seed=s)["validation"] for s in range(1, 6)]
    assert any(other != first["validation"] for other in others)


def test_the_bundle_reads_it(root, tmp_path):
    datalist = zhanglab_datalist(root, 3, 2)
    file = tmp_path / "datalist.json"
    file.write_text(json.dumps(datalist))
    read = find_datalist(file)
    assert [item["image"] for item in read["training"]] == sorted(item["image"] for item in datalist["training"])
    assert sum(item["label"] for item in read["validation"]) == 3 and len(read["test"]) == 7


@pytest.mark.parametrize("kwargs, match", [({"val_normal": 6}, "too few"), ({"val_abnormal": 7}, "too few")])
def test_too_few_images_is_refused(root, kwargs, match):
    with pytest.raises(ValueError, match=match):
        zhanglab_datalist(root, **{"val_normal": 3, "val_abnormal": 2, **kwargs})


def test_a_folder_without_test_is_refused(root, tmp_path):
    for folder in ("NORMAL", "PNEUMONIA"):
        for file in (root / "test" / folder).iterdir():
            file.unlink()
    with pytest.raises(ValueError, match="test"):
        zhanglab_datalist(root, 3, 2)
