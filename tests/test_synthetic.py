"""Tests of the synthetic chest-radiograph generator and dataset writer (``scripts.data.phantom``, ``scripts.data.synthetic``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_utils import dilate
from scripts.data import synthetic
from scripts.data.phantom import (
    CARDIOMEGALY_CTR_RANGE,
    FINDINGS,
    NORMAL_CTR_RANGE,
    anatomy_masks,
    render_radiograph,
    sample_finding,
    sample_patient,
    synthesize_radiograph,
)
from scripts.data.synthetic import ensure_synthetic_dataset, read_manifest, write_synthetic_dataset

SIZE = 96
SMALL = dict(n_train=3, n_val_normal=1, n_val_abnormal=2, n_test_normal=2, n_test_abnormal=5, size=32)
LUNG_FINDINGS = ("nodule", "consolidation", "effusion", "pneumothorax")


def _pair(seed: int, kind: str, size: int = SIZE):
    """The same patient rendered without and with a finding of ``kind``."""
    rng = np.random.default_rng(seed)
    patient = sample_patient(rng)
    finding = sample_finding(rng, patient, kind)
    normal, empty = render_radiograph(patient, size)
    abnormal, mask = render_radiograph(patient, size, finding)
    return patient, finding, normal, empty, abnormal, mask


def test_deterministic_under_seed():
    for kind in (None, *FINDINGS):
        a = synthesize_radiograph(np.random.default_rng(7), 64, kind)
        b = synthesize_radiograph(np.random.default_rng(7), 64, kind)
        c = synthesize_radiograph(np.random.default_rng(8), 64, kind)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert np.abs(a[0] - c[0]).mean() > 0.01


@pytest.mark.parametrize("kind", (None, *FINDINGS))
def test_range_shape_and_mask_presence(kind):
    image, mask = synthesize_radiograph(np.random.default_rng(1), 64, kind)
    assert image.shape == mask.shape == (64, 64)
    assert image.dtype == np.float32 and mask.dtype == bool
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.std() > 0.1  # a radiograph, not a flat field
    if kind is None:
        assert not mask.any()
    else:
        assert mask.sum() >= 4


def test_unknown_finding_rejected():
    with pytest.raises(ValueError, match="granuloma"):
        synthesize_radiograph(np.random.default_rng(0), 64, "granuloma")


def test_anatomy_intensities_like_a_pa_film():
    for seed in range(4):
        patient = sample_patient(np.random.default_rng(seed))
        image, _ = render_radiograph(patient, SIZE)
        masks = anatomy_masks(patient, SIZE)
        lungs = image[masks["lungs"]].mean()
        central = masks["spine"] & masks["mediastinum"]
        assert central.sum() > 20 and masks["lungs"].sum() > 0.15 * SIZE * SIZE
        assert lungs + 0.25 < image[central].mean()  # dark lungs, bright spine / mediastinum column
        assert lungs + 0.25 < image[masks["heart"]].mean()
        assert image[~masks["body"]].mean() < lungs  # air outside the patient is darkest
        # right and left lung fields on either side of the midline
        cols = np.nonzero(masks["lungs"])[1]
        assert cols.min() < SIZE * 0.35 and cols.max() > SIZE * 0.65


def test_normal_anatomy_varies_between_patients():
    images = [render_radiograph(sample_patient(np.random.default_rng(s)), 64)[0] for s in range(6)]
    lung_masks = [anatomy_masks(sample_patient(np.random.default_rng(s)), 64)["lungs"] for s in range(6)]
    for i in range(1, 6):
        assert np.abs(images[i] - images[0]).mean() > 0.02
        assert (lung_masks[i] ^ lung_masks[0]).sum() > 20  # position / size of the lungs differ


@pytest.mark.parametrize("kind", FINDINGS)
def test_finding_changes_the_image_inside_its_mask(kind):
    for seed in range(3):
        patient, _, normal, empty, abnormal, mask = _pair(seed, kind)
        assert not empty.any() and mask.any()
        anatomy = anatomy_masks(patient, SIZE)
        diff = abnormal - normal
        untouched = ~dilate(anatomy["lungs"] | anatomy["heart"] | mask, 2)
        assert np.abs(diff[mask]).mean() > 0.04
        assert np.abs(diff[untouched]).max() < 0.02  # the rest of the patient is the same
        if kind == "pneumothorax":
            assert diff[mask].mean() < -0.02  # pleural air is darker than aerated lung
        else:
            assert diff[mask].mean() > 0.04  # opacities are brighter


@pytest.mark.parametrize("kind", LUNG_FINDINGS)
def test_lung_findings_lie_in_the_lung_field(kind):
    for seed in range(6):
        patient, finding, _, _, _, mask = _pair(seed, kind)
        lungs = anatomy_masks(patient, SIZE)["lungs"]
        assert (mask & ~lungs).sum() <= 0.02 * mask.sum()
        cols = np.nonzero(mask)[1]
        image_side = np.sign(cols.mean() - SIZE / 2)
        # the finding is on the side it was drawn for (rotation and shift are small)
        assert image_side == finding.side


def test_pneumothorax_collapsed_lung_is_denser():
    patient, finding, normal, _, abnormal, mask = _pair(3, "pneumothorax")
    lungs = anatomy_masks(patient, SIZE)["lungs"]
    cols = np.arange(SIZE)[None, :].repeat(SIZE, 0)
    same_side = (cols > SIZE / 2) if finding.side > 0 else (cols < SIZE / 2)
    collapsed = lungs & same_side & ~mask
    assert (abnormal - normal)[collapsed].mean() > 0.01


def _ctr(mask_heart: np.ndarray, lungs: np.ndarray) -> float:
    heart_cols, lung_cols = np.nonzero(mask_heart)[1], np.nonzero(lungs)[1]
    return (heart_cols.max() - heart_cols.min() + 1) / (lung_cols.max() - lung_cols.min() + 1)


def test_cardiomegaly_beyond_normal_heart_size():
    assert NORMAL_CTR_RANGE[1] < CARDIOMEGALY_CTR_RANGE[0]
    normal_ctr, enlarged_ctr = [], []
    for seed in range(8):
        patient, finding, _, _, _, mask = _pair(seed, "cardiomegaly", size=128)
        anatomy = anatomy_masks(patient, 128)
        assert NORMAL_CTR_RANGE[0] <= patient.heart_ctr <= NORMAL_CTR_RANGE[1]
        normal_ctr.append(_ctr(anatomy["heart"], anatomy["lungs"]))
        enlarged_ctr.append(_ctr(mask, anatomy["lungs"] | mask))
        assert (anatomy["heart"] & ~mask).sum() <= 0.02 * anatomy["heart"].sum()  # enlarged heart covers it
    # measured on the masks, the two ranges do not overlap
    assert max(normal_ctr) + 0.04 < min(enlarged_ctr)
    assert 0.33 < min(normal_ctr) and max(enlarged_ctr) < 0.75


def test_generation_is_fast():
    import time

    rng = np.random.default_rng(0)
    start = time.process_time()
    for i in range(12):
        synthesize_radiograph(rng, 256, FINDINGS[i % len(FINDINGS)] if i % 2 else None)
    assert (time.process_time() - start) / 12 < 0.1  # about 20 ms on one core; loose for busy machines


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_write_layout_manifest_and_masks(tmp_path):
    root = write_synthetic_dataset(tmp_path / "set", seed=3, **SMALL)
    assert root == tmp_path / "set"
    counts = {
        "train/normal_256": 3,
        "train/pneumonia_256": 0,
        "val/normal_256": 1,
        "val/pneumonia_256": 2,
        "test/normal_256": 2,
        "test/pneumonia_256": 5,
    }
    for folder, n in counts.items():
        assert len(list((root / folder).glob("*.png"))) == n, folder
    with open(root / "findings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["split", "file", "label", "finding"]
    images = {p for p in _files(root) if p.endswith(".png") and not p.startswith("masks")}
    assert {r["file"] for r in rows} == images and len(rows) == len(images) == 13
    for row in rows:
        assert row["file"].startswith(row["split"] + "/")
        assert (row["label"] == "1") == ("pneumonia_256" in row["file"]) == (row["finding"] != "normal")
        image = Image.open(root / row["file"])
        assert image.mode == "L" and image.size == (32, 32)
        mask_file = root / "masks" / row["split"] / Path(row["file"]).name
        assert mask_file.is_file() == (row["label"] == "1")
        if mask_file.is_file():
            assert np.asarray(Image.open(mask_file)).max() == 255
    test_kinds = [r["finding"] for r in rows if r["split"] == "test" and r["label"] == "1"]
    assert sorted(test_kinds) == sorted(FINDINGS)  # abnormal images cycle through every kind
    manifest = read_manifest(root)
    assert [m["finding"] for m in manifest] == [r["finding"] for r in rows]
    assert all(Path(m["image"]).is_absolute() and Path(m["image"]).is_file() for m in manifest)
    assert all((m["mask"] is None) == (m["label"] == 0) for m in manifest)


def test_write_is_deterministic(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", seed=5, **SMALL)
    b = write_synthetic_dataset(tmp_path / "b", seed=5, **SMALL)
    c = write_synthetic_dataset(tmp_path / "c", seed=6, **SMALL)
    name = "test/pneumonia_256/abnormal_0001.png"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()
    assert (a / "findings.csv").read_text() == (b / "findings.csv").read_text()


def test_ensure_keeps_a_complete_set(tmp_path, monkeypatch):
    root = ensure_synthetic_dataset(tmp_path / "set", **SMALL)
    before = {p: (root / p).stat().st_mtime_ns for p in _files(root)}

    def fail(*args, **kwargs):
        raise AssertionError("a complete dataset must not be regenerated")

    monkeypatch.setattr(synthetic, "synthesize_radiograph", fail)
    assert ensure_synthetic_dataset(root, **SMALL) == root
    assert {p: (root / p).stat().st_mtime_ns for p in _files(root)} == before


def test_ensure_redoes_an_interrupted_write(tmp_path, monkeypatch):
    reference = write_synthetic_dataset(tmp_path / "reference", **SMALL)
    root = tmp_path / "set"
    save = synthetic._save_png
    calls = []

    def interrupted(array, path):
        calls.append(path)
        if len(calls) > 5:
            raise KeyboardInterrupt
        save(array, path)

    monkeypatch.setattr(synthetic, "_save_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(root, **SMALL)
    monkeypatch.setattr(synthetic, "_save_png", save)
    assert not synthetic.is_complete_synthetic_dataset(root)
    ensure_synthetic_dataset(root, **SMALL)
    assert synthetic.is_complete_synthetic_dataset(root)
    assert _files(root) == _files(reference)
    for name in _files(reference):
        if name.endswith(".png"):
            assert (root / name).read_bytes() == (reference / name).read_bytes()


def test_ensure_redoes_a_set_with_missing_files_or_other_parameters(tmp_path):
    root = ensure_synthetic_dataset(tmp_path / "set", **SMALL)
    (root / "test/normal_256/normal_0001.png").unlink()
    ensure_synthetic_dataset(root, **SMALL)
    assert (root / "test/normal_256/normal_0001.png").is_file()
    ensure_synthetic_dataset(root, **{**SMALL, "n_train": 2})
    assert len(list((root / "train/normal_256").glob("*.png"))) == 2  # stale images removed


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        ensure_synthetic_dataset(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_cli(tmp_path, caplog):
    synthetic.main(
        ["--output_dir", str(tmp_path / "cli"), "--n_train", "2", "--n_val_normal", "1"]
        + ["--n_val_abnormal", "1", "--n_test_normal", "1", "--n_test_abnormal", "1", "--size", "32"]
    )
    assert synthetic.is_complete_synthetic_dataset(tmp_path / "cli")
    assert len(read_manifest(tmp_path / "cli")) == 6
