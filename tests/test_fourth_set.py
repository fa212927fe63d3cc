"""Tests of the fourth synthetic chest-radiograph set (``benchmarks/fourth_set``, a statistical shape model):
masks non-empty exactly for abnormal images, every kind changing the image where its mask is and barely outside,
cardiomegaly's ratio, foreign objects in normal images, DICOM files through the bundle's reader, the command line
(determinism, layout and datalist: ``tests/test_image_sets.py``, shared with the second and third sets)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from image_utils import dilate  # noqa: E402
from benchmarks.fourth_set.__main__ import main  # noqa: E402
from benchmarks.fourth_set.anatomy import NORMAL_CTR, cardiothoracic_ratio, with_ctr  # noqa: E402
from benchmarks.fourth_set.dataset import draw_case, draw_image, write_fourth_set  # noqa: E402
from benchmarks.fourth_set.findings import CARDIOMEGALY_CTR, KINDS  # noqa: E402
from benchmarks.fourth_set.layers import anatomy_layers  # noqa: E402
from benchmarks.fourth_set.render import render  # noqa: E402
from scripts.data.datalist import find_datalist  # noqa: E402
from scripts.data.transforms import LoadRadiograph  # noqa: E402

SMALL = {"n_train": 3, "n_val_normal": 2, "n_val_abnormal": 6, "n_test_normal": 2, "n_test_abnormal": 6, "size": 48}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fourth_set(tmp_path_factory.mktemp("fourth") / "set", seed=3, dicom_fraction=0.5, **SMALL)


def test_masks_exactly_for_abnormal_images_inside_the_image(small_set: Path) -> None:
    datalist = json.loads((small_set / "datalist.json").read_text())
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [3, 8, 8]
    for items in datalist.values():
        for item in items:
            assert set(item) == ({"image", "label", "kind", "mask"} if item["label"] else {"image", "label", "kind"})
            if item["label"]:
                mask = np.asarray(Image.open(small_set / item["mask"]))
                assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
                assert 0 < (mask > 0).mean() < 0.5, item
    assert sorted(i["kind"] for i in datalist["validation"] if i["label"]) == sorted(KINDS)
    assert not (small_set / "masks" / "train").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_finding_changes_the_image_where_its_mask_is(kind: str) -> None:
    size = 96
    for index in range(2):
        patient, acquisition, _, strokes, finding = draw_case(11, "test", index, kind)
        normal, empty = render(patient, acquisition, strokes, size)
        image, mask = render(patient, acquisition, strokes, size, finding)
        assert not empty.any() and mask.sum() >= 3
        body = anatomy_layers(patient, size, strokes).body > 0
        assert not (mask & ~body).any()
        change = np.abs(image - normal)
        inside, outside = change[mask].mean(), change[~dilate(mask, 2)].mean()
        assert inside > 4 * outside, (index, inside, outside)
        assert change[dilate(mask, 2)].sum() > 0.5 * change.sum(), index


def test_cardiomegaly_ratio_is_above_the_normal_range() -> None:
    for index in range(4):
        patient, _, _, _, finding = draw_case(5, "test", index, "cardiomegaly")
        normal = cardiothoracic_ratio(patient.shape)
        enlarged = cardiothoracic_ratio(with_ctr(patient.shape, finding.params["ctr"]))
        assert NORMAL_CTR[0] - 1e-6 <= normal <= NORMAL_CTR[1] + 1e-6
        assert CARDIOMEGALY_CTR[0] - 1e-6 <= enlarged <= CARDIOMEGALY_CTR[1] + 1e-6


def test_foreign_objects_appear_in_normal_images() -> None:
    cases = [draw_case(0, "train", i, None) for i in range(80)]
    fitted = [i for i, case in enumerate(cases) if case[2]]
    assert 0.3 < len(fitted) / len(cases) < 0.8
    assert {name for i in fitted for name in cases[i][2]} >= {"cvc", "ecg", "buttons"}
    size = 96
    for index in fitted[:3]:
        patient, acquisition, names, strokes, _ = cases[index]
        with_objects, _ = render(patient, acquisition, strokes, size)
        without, _ = render(patient, acquisition, [], size)
        metal = anatomy_layers(patient, size, strokes).metal > 0.05
        assert metal.any(), names
        change = np.abs(with_objects - without)
        assert change[metal].mean() > 0.05 and change[metal].mean() > 4 * change[~dilate(metal, 2)].mean(), names


def test_dicom_files_decode_with_their_bit_depth_as_the_rendered_image(small_set: Path) -> None:
    dicoms = sorted(small_set.rglob("*.dcm"))
    assert dicoms
    items = {i["image"]: i for s in json.loads((small_set / "datalist.json").read_text()).values() for i in s}
    load = LoadRadiograph()
    for path in dicoms:
        ds = pydicom.dcmread(path)
        assert ds.BitsStored in (12, 14, 16) and ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert int(ds.pixel_array.max()) < 2**ds.BitsStored
        relative = path.relative_to(small_set)
        kind = items[relative.as_posix()]["kind"]
        expected, _ = draw_image(3, relative.parts[0], int(path.stem.split("_")[1]), None if kind == "normal" else kind,
                                 48)
        loaded = load(str(path))
        assert loaded.shape == (1, 48, 48)
        assert np.abs(loaded[0].numpy() - expected).max() < 1e-3


def test_command_line_writes_the_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--output", str(tmp_path / "cli"), "--seed", "1", "--n_train", "2", "--n_val_normal", "1",
          "--n_val_abnormal", "1", "--n_test_normal", "1", "--n_test_abnormal", "2", "--size", "32"])
    splits = find_datalist(tmp_path / "cli")
    assert [len(splits[s]) for s in ("training", "validation", "test")] == [2, 2, 3]
    assert "7 images" in capsys.readouterr().out
