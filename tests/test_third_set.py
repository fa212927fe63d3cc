"""Tests of the third synthetic chest-radiograph set (``benchmarks/third_set``, a projected 3-D phantom):
masks of every finding kind where the image changed, cardiomegaly's ratio, the effusion's costophrenic angle, and
DICOM files through the bundle's reader (determinism, layout and datalist: ``tests/test_image_sets.py``, shared
with the second and fourth sets)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from image_utils import dilate  # noqa: E402
from benchmarks.third_set.__main__ import main  # noqa: E402
from benchmarks.third_set.dataset import draw_case, draw_image, write_third_set  # noqa: E402
from benchmarks.third_set.findings import (  # noqa: E402
    CARDIOMEGALY_CTR, KINDS, NORMAL_CTR, cardiothoracic_ratio, finding_anatomy)
from benchmarks.third_set.render import line_integrals, render  # noqa: E402
from scripts.data.datalist import find_datalist  # noqa: E402
from scripts.data.transforms import LoadRadiograph  # noqa: E402

SMALL = {"n_train": 3, "n_val_normal": 1, "n_val_abnormal": 2, "n_test_normal": 2, "n_test_abnormal": 6, "size": 48}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_third_set(tmp_path_factory.mktemp("third") / "set", seed=3, dicom_fraction=0.5, **SMALL)


def test_command_line_writes_the_counts(tmp_path: Path) -> None:
    main(["--output", str(tmp_path / "cli"), "--seed", "1", "--n_train", "2", "--n_val_normal", "1",
          "--n_val_abnormal", "1", "--n_test_normal", "1", "--n_test_abnormal", "2", "--size", "32"])
    splits = find_datalist(tmp_path / "cli")
    assert [len(splits[s]) for s in ("training", "validation", "test")] == [2, 2, 3]


@pytest.mark.parametrize("kind", KINDS)
def test_mask_is_where_the_finding_changed_the_image(kind: str) -> None:
    size = 96
    for index in range(3):
        anatomy, acquisition, finding = draw_case(11, "test", index, kind)
        normal, empty = render(anatomy, acquisition, size)
        image, mask = render(anatomy, acquisition, size, finding)
        assert not empty.any() and mask.sum() >= 3
        change = np.abs(image - normal)
        inside, outside = change[mask].mean(), change[~dilate(mask, 2)].mean()
        assert inside > 5 * outside, (index, inside, outside)
        # most of the change lies in the (dilated) mask
        assert change[dilate(mask, 2)].sum() > 0.5 * change.sum()


def test_cardiomegaly_ratio_is_above_the_normal_range() -> None:
    for index in range(4):
        anatomy, _, finding = draw_case(5, "test", index, "cardiomegaly")
        normal = cardiothoracic_ratio(anatomy)
        enlarged = cardiothoracic_ratio(finding_anatomy(anatomy, finding))
        assert NORMAL_CTR[0] - 1e-6 <= normal <= NORMAL_CTR[1] + 1e-6
        assert CARDIOMEGALY_CTR[0] - 1e-6 <= enlarged <= CARDIOMEGALY_CTR[1] + 1e-6
        assert enlarged > NORMAL_CTR[1]


def test_effusion_fills_the_costophrenic_angle() -> None:
    size = 64
    for index in range(3):
        anatomy, acquisition, finding = draw_case(7, "test", index, "effusion")
        _, mask = render(anatomy, acquisition, size, finding)
        lung = line_integrals(anatomy, acquisition, size)["lung"] > 0.05
        columns = np.arange(size)
        same_side = (columns >= size // 2) if finding.side > 0 else (columns < size // 2)
        lung &= same_side[None, :]
        rows, cols = np.nonzero(lung)
        lateral = cols.max() if finding.side > 0 else cols.min()
        # the lowest lateral lung: the lowest rows of the lung footprint within a few columns of its outer edge
        outer = lung & (np.abs(columns - lateral) <= size // 10)[None, :]
        low = rows.max() - 0.15 * (rows.max() - rows.min())
        angle = outer & (np.arange(size) >= low)[:, None]
        assert angle.any() and (mask & angle).any(), index


def test_dicom_files_decode_as_the_rendered_image(small_set: Path) -> None:
    dicoms = sorted(small_set.rglob("*.dcm"))
    assert dicoms
    datalist = json.loads((small_set / "datalist.json").read_text())
    items = {i["image"]: i for s in datalist.values() for i in s}
    load = LoadRadiograph()
    for path in dicoms:
        ds = pydicom.dcmread(path)
        assert ds.BitsStored in (12, 14, 16) and ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        relative = path.relative_to(small_set)
        kind = items[relative.as_posix()]["kind"]
        index = int(path.stem.split("_")[1])
        expected, _ = draw_image(3, relative.parts[0], index, None if kind == "normal" else kind, 48)
        loaded = load(str(path))
        assert loaded.shape == (1, 48, 48)
        assert np.abs(loaded[0].numpy() - expected).max() < 1e-3
