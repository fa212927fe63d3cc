"""Tests of the second synthetic chest-radiograph set (``benchmarks/second_set``): masks of every finding kind,
the autoencoder baseline's reading of the datalist, and DICOM/PNG files through the bundle's reader (determinism,
layout and datalist: ``tests/test_image_sets.py``, shared with the third and fourth sets)."""

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
from benchmarks.second_set.__main__ import main  # noqa: E402
from benchmarks.second_set.anatomy import Grid, anatomy_fields, sample_anatomy  # noqa: E402
from benchmarks.second_set.dataset import draw_image, write_second_set  # noqa: E402
from benchmarks.second_set.files import DicomStyle, save_dicom, save_png  # noqa: E402
from benchmarks.second_set.findings import CARDIOMEGALY_CTR, KINDS, heart_widths, sample_finding  # noqa: E402
from benchmarks.second_set.render import render, sample_acquisition  # noqa: E402
from scripts.data.datalist import find_datalist  # noqa: E402
from scripts.data.transforms import LoadRadiograph  # noqa: E402

SMALL = {"n_train": 3, "n_val_normal": 1, "n_val_abnormal": 2, "n_test_normal": 2, "n_test_abnormal": 6, "size": 48}
LUNG_KINDS = ("nodule", "consolidation", "effusion", "pneumothorax")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_second_set(tmp_path_factory.mktemp("second") / "set", seed=3, dicom_fraction=0.5, **SMALL)


def test_ae_baseline_takes_kinds_and_masks_from_the_datalist(small_set: Path) -> None:
    from benchmarks.ae_baseline import load_masks, annotate_test_split

    notes = annotate_test_split(small_set, find_datalist(small_set)["test"])
    kinds = [kind for kind, _ in notes]
    assert kinds == ["normal", "normal", *KINDS]
    masks = [mask for _, mask in notes]
    assert masks[:2] == [None, None] and all(Path(m).is_file() for m in masks[2:])
    loaded = load_masks(masks[2:], 48)
    assert loaded.shape == (6, 48, 48) and loaded.any(axis=(1, 2)).all()


def test_ae_baseline_scales_images_as_the_bundle_does(small_set: Path) -> None:
    from benchmarks.ae_baseline import load_images

    paths = [item["image"] for item in find_datalist(small_set)["test"]]
    as_loaded, scaled = load_images(paths, 32), load_images(paths, 32, (1, 99))
    assert scaled.shape == as_loaded.shape == (len(paths), 32, 32)
    low, high = np.percentile(scaled, (1, 99), axis=(1, 2))
    np.testing.assert_allclose(low, 0.0, atol=0.02)
    np.testing.assert_allclose(high, 1.0, atol=0.02)
    assert float(np.abs(as_loaded - scaled).max()) > 0.05  # the scaling changed the images


def test_command_line_writes_the_counts(tmp_path: Path) -> None:
    main(["--output", str(tmp_path / "cli"), "--seed", "1", "--n_train", "2", "--n_val_normal", "1",
          "--n_val_abnormal", "1", "--n_test_normal", "1", "--n_test_abnormal", "2", "--size", "32"])
    splits = find_datalist(tmp_path / "cli")
    assert [len(splits[s]) for s in ("training", "validation", "test")] == [2, 2, 3]
    assert (tmp_path / "cli" / "contact_sheet.png").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_mask_is_the_finding_and_lies_in_the_thorax(kind: str) -> None:
    size = 96
    for index in range(3):
        rng = np.random.default_rng([11, index])
        anatomy, acquisition = sample_anatomy(rng), sample_acquisition(rng)
        finding = sample_finding(rng, anatomy, kind)
        normal, empty = render(anatomy, acquisition, size)
        image, mask = render(anatomy, acquisition, size, finding)
        assert not empty.any() and mask.sum() >= 3
        fields = anatomy_fields(anatomy, Grid(anatomy, size), heart_widths(anatomy, finding))
        region = fields["lung_left"] + fields["lung_right"] if kind in LUNG_KINDS else fields["thorax"]
        assert not (mask & ~(region > 0.5)).any()
        # the finding changes the image inside its mask far more than away from it
        change = np.abs(image - normal)
        assert change[mask].mean() > 10 * change[~dilate(mask, 2)].mean()


def test_cardiomegaly_widens_the_heart_beyond_the_normal_ratio() -> None:
    rng = np.random.default_rng(5)
    anatomy = sample_anatomy(rng)
    finding = sample_finding(rng, anatomy, "cardiomegaly")
    widths = heart_widths(anatomy, finding)
    ratio = sum(widths) / (2 * anatomy.thoracic_half_width)
    assert CARDIOMEGALY_CTR[0] <= ratio <= CARDIOMEGALY_CTR[1]
    assert sum(widths) > 1.1 * sum(anatomy.heart_widths)


def test_dicom_files_decode_with_their_bit_depth_and_photometric(small_set: Path) -> None:
    dicoms = sorted(small_set.rglob("*.dcm"))
    assert dicoms
    load = LoadRadiograph()
    for path in dicoms:
        ds = pydicom.dcmread(path)
        assert ds.BitsStored in (12, 14, 16) and ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert int(ds.pixel_array.max()) < 2**ds.BitsStored
        split, folder, name = path.relative_to(small_set).parts
        kind = json.loads((small_set / "datalist.json").read_text())
        item = next(i for s in kind.values() for i in s if i["image"] == f"{split}/{folder}/{name}")
        index = int(Path(name).stem.split("_")[1])
        expected, _ = draw_image(3, split, index, None if item["kind"] == "normal" else item["kind"], 48)
        loaded = load(str(path))
        assert loaded.shape == (1, 48, 48)
        assert np.abs(loaded[0].numpy() - expected).max() < 1e-3


@pytest.mark.parametrize("bits", (12, 14, 16))
@pytest.mark.parametrize("photometric", ("MONOCHROME1", "MONOCHROME2"))
def test_png_and_dicom_of_one_image_display_alike(tmp_path: Path, bits: int, photometric: str) -> None:
    image, _ = draw_image(0, "test", 2, "effusion", 64)
    top = 2**bits - 1
    style = DicomStyle(bits, photometric, int(0.05 * top), int(0.8 * top), -1024.0, 0.5)
    save_png(image, tmp_path / "a.png")
    save_dicom(image, tmp_path / "a.dcm", style, key="test")
    load = LoadRadiograph()
    png, dicom = load(str(tmp_path / "a.png"))[0].numpy(), load(str(tmp_path / "a.dcm"))[0].numpy()
    assert np.abs(png - dicom).max() <= 0.5 / 255 + 2.0 / (style.high - style.low)
    assert np.corrcoef(png.ravel(), dicom.ravel())[0, 1] > 0.999
    stored = pydicom.dcmread(tmp_path / "a.dcm").pixel_array.astype(float)
    # MONOCHROME1 stores dense (bright) pixels as low values
    sign = np.corrcoef(stored.ravel(), image.ravel())[0, 1]
    assert sign < -0.99 if photometric == "MONOCHROME1" else sign > 0.99


def test_ae_baseline_keeps_each_test_images_scores(small_set: Path) -> None:
    """``per_image`` holds every test image's autoencoder and PCA scores in the datalist's order, and they are the
    scores the reported AUCs were computed from (so a paired comparison with the bundle's scores.csv can use them)."""
    import argparse

    from benchmarks.ae_baseline import run
    from scripts.metrics import auc_or_nan

    args = argparse.Namespace(dataset_dir=small_set, minutes=0.02, size=32, batch_size=4, threads=1, seed=0,
                              intensity_percentiles=None)
    result = run(args)
    test = find_datalist(small_set)["test"]
    rows = result["per_image"]
    assert [row["image"] for row in rows] == [item["image"] for item in test]
    assert [row["label"] for row in rows] == [item["label"] for item in test]
    assert [row["kind"] for row in rows] == ["normal", "normal", *KINDS]
    labels = [row["label"] for row in rows]
    assert auc_or_nan([row["ae"] for row in rows], labels) == pytest.approx(result["image_auc"]["overall"]["ae"])
    assert auc_or_nan([row["pca"] for row in rows], labels) == pytest.approx(result["image_auc"]["overall"]["pca"])
