"""Inference on a mixed folder through ``configs/inference.json``: CSV, anomaly maps, Secondary Captures, bad input."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.transforms import Compose, Resize, Resized, ScaleIntensityRangePercentiles
from monai.visualize import blend_images
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from bundle_utils import CONFIGS, TINY, workflow
from scripts.data.phantom import synthesize_radiograph
from scripts.data.transforms import LoadRadiograph
from scripts.inference import AutocastInferer, LoadRadiographOrErrord, choose_input, list_inputs
from scripts.outputs.nifti import write_gzip_huffman
from scripts.outputs.overlay import render_overlay
from scripts.outputs.writers import AnomalyMapWriter, output_stem

# the reconstruction score: a random discriminator gives (almost) the same logit for every image, so its
# standardised score would only amplify rounding noise; the reconstruction error differs between images
INFER_TINY = {**{k: v for k, v in TINY.items() if k not in ("stats_max_images", "log_every")},
              "score_kind": "reconstruction"}
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
MPEG2_TRANSFER_SYNTAX = "1.2.840.10008.1.2.4.100"  # video: no pixel decoder in pydicom
RG1 = get_testdata_file("RG1_UNCR.dcm")
METADATA = json.loads((CONFIGS / "metadata.json").read_text())


# -------------------------------------------------------------------------------------------------- helpers


def tiny_detector() -> torch.nn.Module:
    """The detector of inference.json with the tiny test hyperparameters (random weights), in eval mode."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(INFER_TINY)
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def").eval()


def synthetic(seed: int, rows: int = 64, cols: int = 64) -> np.ndarray:
    """A synthetic radiograph in [0, 1], cropped to ``rows x cols``."""
    image, _ = synthesize_radiograph(np.random.default_rng(seed), size=max(rows, cols))
    return image[:rows, :cols]


def write_dicom(path: Path, image: np.ndarray, study: str, series: str) -> Path:
    """A 12-bit MONOCHROME2 CR image of ``image`` (in [0, 1]) in the given study and series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CR_STORAGE, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^$1+1", "P-17", "CR"  # copied as data, never evaluated
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.set_pixel_data(np.rint(image * 4095).astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=12)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_unsupported_syntax(path: Path, source: Path) -> Path:
    """``source`` re-labelled with a transfer syntax that has no pixel decoder (hand-assembled Part 10 file)."""
    ds = pydicom.dcmread(source)
    ds.PixelData = encapsulate([b"\x00\x01" * 64])
    body = pydicom.filebase.DicomBytesIO()
    pydicom.filewriter.write_dataset(body, ds)
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = MPEG2_TRANSFER_SYNTAX
    meta_bytes = pydicom.filebase.DicomBytesIO()
    write_file_meta_info(meta_bytes, meta, enforce_standard=True)
    path.write_bytes(bytes(128) + b"DICM" + meta_bytes.getvalue() + body.getvalue())
    return path


def prepared(image: torch.Tensor) -> torch.Tensor:
    """A loaded ``1 x H x W`` image as the model sees it, ``1 x 1 x S x S``: resized (area), each image's 1st-99th
    intensity percentiles scaled to [0, 1] (clipped), as a plain tensor."""
    resized = Resize((INFER_TINY["img_size"],) * 2, mode="area")(image)
    return ScaleIntensityRangePercentiles(1, 99, 0.0, 1.0, clip=True)(resized).as_tensor()[None]


def direct(detector: torch.nn.Module, path: str | Path) -> tuple[float, np.ndarray]:
    """The score and the original-size anomaly map of one file, computed here without the bundle's pipeline."""
    image = LoadRadiograph()(path)
    x = prepared(image)
    with torch.no_grad():
        amap, score = detector(x)
    full = F.interpolate(amap, size=tuple(image.shape[1:]), mode="bilinear", align_corners=False)
    return float(score[0]), full[0, 0].numpy()


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def run_inference(input_dir: Path, output_dir: Path, ckpt: Path, **override):
    paths = {"input_dir": str(input_dir), "output_dir": str(output_dir), "ckpt_path": str(ckpt)}
    return workflow(["inference.json"], "infer", "run", **{**INFER_TINY, **paths, **override})


def run(wf):
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def exception_chain(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    """One torch thread: the DataLoader worker shares the CPU cores, and OpenMP threads that wait for each
    other on an oversubscribed CPU make the tiny model's forward pass take seconds instead of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict:
    """A mixed input folder (good and bad files, a name shared by two sub-folders), its results folder inside."""
    root = tmp_path_factory.mktemp("clinic") / "inputs"
    (root / "ward_a").mkdir(parents=True)
    (root / "ward_b").mkdir()
    (root / "bad").mkdir()
    Image.fromarray(np.rint(synthetic(1, 72, 60) * 255).astype(np.uint8)).save(root / "ward_a" / "chest.png")
    Image.fromarray(np.rint(synthetic(2, 60, 80) * 255).astype(np.uint8)).save(root / "ward_b" / "chest.png")
    Image.fromarray(np.rint(synthetic(3, 64, 64) * 255).astype(np.uint8)).save(root / "ward_b" / "pa.jpg", quality=95)
    # config syntax in a file name is data, never evaluated
    Image.fromarray(np.rint(synthetic(5, 64, 64) * 255).astype(np.uint8)).save(root / "ward_b" / "$1+1@x#y.png")
    affine = np.diag([0.7, 0.4, 1.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 0.0]
    nib.Nifti1Image(synthetic(4, 48, 56).T.copy(), affine).to_filename(root / "lateral.nii.gz")
    shutil.copy(RG1, root / "rg1.dcm")
    study, series = generate_uid(), generate_uid()
    small = [write_dicom(root / f"series_{i}.dcm", synthetic(10 + i, 64, 56), study, series) for i in range(2)]
    (root / "notes.txt").write_text("not an image, not listed")
    bad = {
        "truncated": root / "bad" / "truncated.dcm",
        "not_dicom": root / "bad" / "not_dicom.dcm",
        "constant": root / "bad" / "constant.png",
        "transfer_syntax": root / "bad" / "mpeg2.dcm",
        "empty": root / "bad" / "empty.png",
        "device_link": root / "bad" / "zero.dcm",  # a link to a device: reported, never read
        "broken_link": root / "bad" / "moved.png",
    }
    bad["truncated"].write_bytes(small[0].read_bytes()[:3000])
    bad["not_dicom"].write_text("Patient report, not an image\n" * 20)
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(bad["constant"])
    write_unsupported_syntax(bad["transfer_syntax"], small[0])
    bad["empty"].write_bytes(b"")
    bad["device_link"].symlink_to("/dev/zero")
    bad["broken_link"].symlink_to(root / "bad" / "no_such_file.png")
    good = sorted([root / "ward_a" / "chest.png", root / "ward_b" / "chest.png", root / "ward_b" / "pa.jpg",
                   root / "ward_b" / "$1+1@x#y.png", root / "lateral.nii.gz", root / "rg1.dcm", *small])
    return {"root": root, "good": good, "bad": bad, "affine": affine, "small_dicoms": small}


@pytest.fixture(scope="module")
def model(tmp_path_factory, folder) -> dict:
    """A tiny ``model.pt`` whose statistics spread the scores and whose threshold splits them, and the score and
    original-size anomaly map of every good input computed directly with its detector."""
    detector = tiny_detector()
    with torch.no_grad():  # statistics of other images than those scored (mirrored): their distances are not ~0
        raw = [detector.raw_scores(prepared(LoadRadiograph()(p)).flip(-1)) for p in folder["good"]]
    detector.update_statistics({k: torch.cat([r[k] for r in raw]) for k in ("disc_logit", "residual", "pooled_features")})
    expected = {p: direct(detector, p) for p in folder["good"]}
    scores = sorted(score for score, _ in expected.values())
    detector.statistics.threshold.fill_(scores[len(scores) // 2])
    path = tmp_path_factory.mktemp("models") / "model.pt"
    torch.save(detector.state_dict(), path)
    return {"path": path, "expected": expected, "threshold": float(detector.statistics.threshold)}


@pytest.fixture(scope="module")
def results(folder, model) -> dict:
    out = folder["root"] / "results"
    wf = run(run_inference(folder["root"], out, model["path"], num_workers=1, batch_size=3, writer_threads=3))
    return {"wf": wf, "out": out, "rows": read_csv(out / "anomaly_scores.csv")}


# ---------------------------------------------------------------------------------------------------- tests


def test_config_properties_and_network_match_train(results) -> None:
    assert results["wf"].check_properties() == []
    train, infer = ConfigParser(), ConfigParser()
    train.read_config(str(CONFIGS / "train.json"))
    infer.read_config(str(CONFIGS / "inference.json"))
    # same network definitions, with the same ids and defaults for every hyperparameter they use
    for train_id, infer_id in (("network_def", "generator_def"), ("discriminator_def", "discriminator_def")):
        assert train[train_id] == infer[infer_id]
        for ref in (v for v in train[train_id].values() if isinstance(v, str) and v.startswith("@")):
            if ref != "@img_size":  # training: from the data; inference: from the model file (tested below)
                assert infer[ref[1:]] == train[ref[1:]], ref
    assert infer["network_def"]["_target_"] == "scripts.detector.AnomalyDetector"
    # the same scores: the same score kind and reconstruction-score settings
    for key in ("score_kind", "residual_sigma", "residual_top_fraction", "feature_depth", "feature_grid", "map_kind"):
        assert infer[key] == train[key], key
    for key in ("img_size", "residual_sigma", "residual_top_fraction", "feature_depth", "feature_grid", "map_kind"):
        assert infer["network_def"][key] == train["detector"][key] == f"@{key}", key
    # the same deterministic preprocessing as training and validation, only with a fault-tolerant loader
    assert infer["preprocessing"]["transforms"][1:] == train["load_transforms"][1:]
    assert infer["preprocessing"]["transforms"][0]["_target_"] == "scripts.inference.LoadRadiographOrErrord"
    # streamed: a plain Dataset read by a DataLoader with workers, no cache of the whole folder
    assert infer["dataset"]["_target_"] == "Dataset" and infer["num_workers"] > 0
    assert infer["inputs"] == "$scripts.inference.choose_input(@input_dir, @dataset_dir, @default_input_dir)"
    assert infer["postprocessing"]["transforms"][0]["names"] == list(METADATA["network_data_format"]["outputs"])


def test_img_size_follows_the_data_in_training_and_the_model_file_in_inference(tmp_path) -> None:
    def img_size(config: str, **override) -> int:
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        parser.update({"bundle_root": str(tmp_path), **override})
        return parser.get_parsed_content("img_size")

    # the built-in synthetic set trains at 64 (its 30-minute CPU demo), any other data at the reference 128
    assert img_size("train.json") == 64
    assert img_size("train.json", dataset_dir=str(tmp_path / "data" / ".." / "data" / "synthetic")) == 64
    assert img_size("train.json", dataset_dir=str(tmp_path / "zhanglab")) == 128
    assert img_size("train.json", dataset_dir=str(tmp_path / "zhanglab"), img_size=256) == 256
    # inference builds the network at the size of the model file it loads; 128 when there is none yet
    assert img_size("inference.json") == 128
    model_pt = tmp_path / "models" / "model.pt"
    model_pt.parent.mkdir()
    torch.save(tiny_detector().state_dict(), model_pt)
    assert img_size("inference.json") == INFER_TINY["img_size"] != 128
    assert img_size("inference.json", ckpt_path=str(tmp_path / "elsewhere.pt")) == 128
    model_pt.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="trained_settings") as error:  # MONAI wraps the expression's error
        img_size("inference.json")
    assert isinstance(error.value.__cause__, ValueError) and "model.pt cannot be read" in str(error.value.__cause__)


def save_tiny_model(path: Path, percentiles: list[float] | None) -> ConfigParser:
    """Write the tiny inference network's weights and statistics, recorded with ``percentiles``, to ``path``;
    returns the parser that built it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({**INFER_TINY, "intensity_percentiles": percentiles})
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return parser


def test_intensity_scaling_follows_the_model_file_in_inference(tmp_path) -> None:
    """Inference scales images as the model file records (the default before there is one); a model of a bundle
    before 0.6 (nothing recorded) gets images as loaded."""
    def scaling(**override) -> tuple[list | None, list[str]]:
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.json"))
        parser.update({"bundle_root": str(tmp_path), **INFER_TINY, **override})
        steps = [type(t).__name__ for t in parser.get_parsed_content("preprocessing").transforms]
        return parser.get_parsed_content("intensity_percentiles"), steps

    assert scaling() == ([1, 99], ["LoadRadiographOrErrord", "Resized", "ScaleIntensityRangePercentilesd",
                                   "EnsureTyped"])
    model_pt = tmp_path / "models" / "model.pt"
    parser = save_tiny_model(model_pt, [5, 95])
    assert scaling()[0] == [5.0, 95.0]
    parser.update({"intensity_percentiles": None})
    state = parser.get_parsed_content("network_def", lazy=False).state_dict()
    torch.save(state, model_pt)
    assert scaling() == (None, ["LoadRadiographOrErrord", "Resized", "EnsureTyped"])
    torch.save({k: v for k, v in state.items() if k != "statistics.intensity_percentiles"}, model_pt)
    assert scaling()[0] is None
    torch.save({"generator.stem.weight": torch.zeros(1)}, model_pt)  # no statistics: nothing says, the default
    assert scaling()[0] == [1, 99]


def test_inference_reads_the_model_file_once_for_its_settings(tmp_path, monkeypatch) -> None:
    """img_size and intensity_percentiles come from one read of model.pt (a large file) when the config is
    parsed; the CheckpointLoader reads it again when the engine starts, not here."""
    import scripts.checkpoint

    model_pt = tmp_path / "models" / "model.pt"
    save_tiny_model(model_pt, [2, 98])
    reads = []
    load = scripts.checkpoint.load_checkpoint
    monkeypatch.setattr(scripts.checkpoint, "load_checkpoint", lambda path, **kw: reads.append(path) or load(path))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(tmp_path)})
    settings = (parser.get_parsed_content("img_size"), parser.get_parsed_content("intensity_percentiles"))
    network = parser.get_parsed_content("network_def")
    assert settings == (INFER_TINY["img_size"], [2.0, 98.0])
    assert network.statistics.pixel_mean.shape[-1] == settings[0]
    assert [Path(p) for p in reads] == [model_pt]


def test_intensity_scaling_removes_exposure_differences(tmp_path) -> None:
    """The same radiograph at two exposures (gain and offset, saved as 8-bit PNG) is one image after the
    preprocessing when intensities are scaled, and two without."""
    image = synthetic(3, 96, 96)
    paths = {}
    for name, exposed in (("normal", image), ("darker", 0.1 + 0.6 * image)):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(np.round(exposed * 255).astype(np.uint8)).save(paths[name])

    def preprocessed(percentiles) -> list[torch.Tensor]:
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser.update({"bundle_root": str(tmp_path), "img_size": 64, "intensity_percentiles": percentiles})
        transform = parser.get_parsed_content("validate#preprocessing")
        return [transform({"image": str(path)})["image"] for path in paths.values()]

    normal, darker = preprocessed([1, 99])
    assert float(normal.max()) == 1.0 and float(normal.min()) == 0.0
    assert float((normal - darker).abs().max()) < 0.03  # 8-bit rounding at 0.6 x the contrast
    normal, darker = preprocessed(None)
    assert float((normal - darker).abs().max()) > 0.2


def test_csv_has_one_row_per_input_with_the_detectors_scores(results, folder, model) -> None:
    rows = results["rows"]
    assert set(rows) == {str(p) for p in folder["good"]} | {str(p) for p in folder["bad"].values()}
    decisions = set()
    for path in folder["good"]:
        row = rows[str(path)]
        expected_score, _ = model["expected"][path]
        assert row["status"] == "ok"
        assert float(row["score"]) == pytest.approx(expected_score, abs=1e-5)
        assert float(row["threshold"]) == pytest.approx(model["threshold"], abs=1e-7)
        assert row["decision"] == ("abnormal" if float(row["score"]) >= float(row["threshold"]) else "normal")
        assert row["model_version"] == METADATA["version"] and row["score_kind"] == "reconstruction"
        decisions.add(row["decision"])
    assert decisions == {"normal", "abnormal"}


def test_amp_from_the_command_line_runs_the_detector_in_bf16_on_the_cpu(folder, model, tmp_path) -> None:
    """``--amp true`` (a string) scores under bf16 autocast on the CPU (MONAI's evaluator autocasts CUDA only, so
    before it changed nothing): every score close to fp32's but not all identical, the maps written in fp32."""
    out = tmp_path / "amp"
    run(run_inference(folder["root"], out, model["path"], num_workers=0, batch_size=3, amp="true"))
    rows = read_csv(out / "anomaly_scores.csv")
    differences = []
    for path in folder["good"]:
        expected_score, expected_map = model["expected"][path]
        assert rows[str(path)]["status"] == "ok"
        differences.append(abs(float(rows[str(path)]["score"]) - expected_score))
        amap = nib.load(out / rows[str(path)]["anomaly_map"])
        assert amap.get_data_dtype() == np.float32
        assert np.abs(amap.get_fdata() - expected_map.T).max() < 0.05 * np.abs(expected_map).max()
    assert max(differences) < 0.05 and max(differences) > 1e-6


def test_autocast_inferer_autocasts_on_the_inputs_device_and_returns_fp32() -> None:
    class Probe(torch.nn.Module):
        def forward(self, x):
            self.state = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
            y = torch.nn.functional.linear(x, torch.eye(x.shape[-1]))
            return y, torch.arange(3)

    probe = Probe()
    for amp, enabled in (("true", True), ("false", False), (False, False)):
        out, index = AutocastInferer(amp)(torch.rand(2, 1, 4, 4) + 1 / 3, probe)
        assert probe.state[0] is enabled and (not enabled or probe.state[1] == torch.bfloat16)
        assert out.dtype == torch.float32 and index.dtype == torch.int64


def test_bad_files_are_reported_and_the_rest_processed(results, folder) -> None:
    rows = results["rows"]
    reasons = {"truncated": "", "not_dicom": "", "constant": "constant", "transfer_syntax": "transfer syntax",
               "empty": "empty", "device_link": "not a regular file", "broken_link": "not found"}
    for kind, path in folder["bad"].items():
        row = rows[str(path)]
        assert row["status"].startswith("error: ") and str(path) in row["status"], kind
        assert reasons[kind] in row["status"], kind
        assert row["score"] == row["decision"] == row["overlay"] == "", kind
    assert all(rows[str(p)]["status"] == "ok" for p in folder["good"])
    written = {p.name for p in results["out"].iterdir()}
    assert not any(output_stem(p) in name for p in folder["bad"].values() for name in written)


def test_anomaly_maps_have_the_inputs_size_orientation_and_values(results, folder, model) -> None:
    rows, out = results["rows"], results["out"]
    for path in folder["good"]:
        row = rows[str(path)]
        _, expected = model["expected"][path]  # rows x columns, as displayed
        nifti = nib.load(out / row["anomaly_map"])
        np.testing.assert_allclose(nifti.get_fdata().T, expected, atol=1e-5)
        overlay = np.asarray(Image.open(out / row["overlay"]))
        assert overlay.shape == (*expected.shape, 3) and overlay.dtype == np.uint8
        affine = folder["affine"] if path.name.endswith(".nii.gz") else np.eye(4)
        np.testing.assert_allclose(nifti.affine, affine, atol=1e-6)


def test_outputs_are_uniquely_named_inside_the_output_folder(results, folder) -> None:
    rows, out = results["rows"], results["out"]
    a, b = (rows[str(folder["root"] / w / "chest.png")] for w in ("ward_a", "ward_b"))
    assert a["overlay"] != b["overlay"] and a["anomaly_map"] != b["anomaly_map"]
    assert a["overlay"].startswith("chest-") and b["overlay"].startswith("chest-")
    named = [r[k] for r in rows.values() for k in ("overlay", "anomaly_map", "dicom_sc") if r[k]]
    assert len(named) == len(set(named)) and all((out / n).is_file() for n in named)
    assert sorted(p.name for p in out.iterdir()) == sorted(named + ["anomaly_scores.csv"])
    # nothing was written beside the inputs
    inputs = {p for p in folder["root"].rglob("*") if not p.is_dir() and out not in p.parents}
    assert inputs == set(folder["good"]) | set(folder["bad"].values()) | {folder["root"] / "notes.txt"}


def test_dicom_inputs_get_a_secondary_capture_in_their_study(results, folder) -> None:
    rows, out = results["rows"], results["out"]
    captures = {}
    for path in [folder["root"] / "rg1.dcm", *folder["small_dicoms"]]:
        row = rows[str(path)]
        source, sc = pydicom.dcmread(path), pydicom.dcmread(out / row["dicom_sc"])
        assert sc.SOPClassUID == SecondaryCaptureImageStorage and sc.Modality == "OT"
        assert sc.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID"):
            assert sc[keyword].value == source[keyword].value, keyword
        assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.SOPInstanceUID != source.SOPInstanceUID
        assert sc.SeriesInstanceUID.is_valid and sc.SOPInstanceUID.is_valid
        for sequence in ("ReferencedImageSequence", "SourceImageSequence"):
            reference = sc[sequence][0]
            assert reference.ReferencedSOPClassUID == source.SOPClassUID
            assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sc.ConversionType == "WSD" and sc.SecondaryCaptureDeviceManufacturer
        assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated) == (3, "RGB", 8)
        assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
        np.testing.assert_array_equal(sc.pixel_array, np.asarray(Image.open(out / row["overlay"])))
        assert row["decision"] in sc.ImageComments
        captures[path] = sc
    first, second = (captures[p] for p in folder["small_dicoms"])
    assert first.SeriesInstanceUID == second.SeriesInstanceUID  # one derived series per source series
    assert captures[folder["root"] / "rg1.dcm"].SeriesInstanceUID != first.SeriesInstanceUID
    non_dicom = [p for p in folder["good"] if p.suffix != ".dcm"]
    assert all(rows[str(p)]["dicom_sc"] == "" for p in non_dicom)


def _write_batch(folder: dict, out: Path, num_threads: int, broken: Path) -> tuple[list[dict], list[dict]]:
    """Every good input of ``folder``, one input whose loading failed, and ``broken`` (a good PNG, corrupted
    after it was loaded), as one decollated batch through an :class:`AnomalyMapWriter` with ``num_threads``.
    Returns the batch and output items (with what the writer recorded in them)."""
    shutil.copy(folder["root"] / "ward_a" / "chest.png", broken)
    rng = np.random.default_rng(7)
    batch, output = [], []
    for path in [*folder["good"], broken]:
        image = LoadRadiograph()(path)
        batch.append({"image": image})
        output.append({"anomaly_map": torch.as_tensor(rng.random((1, *image.shape[1:]), dtype=np.float32)),
                       "score": torch.tensor(float(rng.random()))})
    batch.insert(2, {"image": str(folder["bad"]["empty"]), "error": "could not be read"})
    output.insert(2, {})
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # reloading it for the overlay fails
    engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=output))
    writer = AnomalyMapWriter(out, tiny_detector(), num_threads=num_threads)
    writer.started(engine)
    writer(engine)
    return batch, output


def test_threaded_writer_writes_the_same_files_and_errors_as_one_thread(folder, tmp_path) -> None:
    (batch_1, output_1), (batch_4, output_4) = (
        _write_batch(folder, tmp_path / f"threads_{n}", n, tmp_path / "broken.png") for n in (1, 4))
    errors = [item.get("error") for item in batch_1]
    assert errors == [item.get("error") for item in batch_4]
    assert errors[2] == "could not be read"
    assert errors[-1].startswith(f"outputs of '{tmp_path / 'broken.png'}' not written: ")
    assert sum(e is not None for e in errors) == 2 and "outputs" not in output_1[-1] and "outputs" not in output_4[-1]
    written = [o.get("outputs") for o in output_1]
    assert written == [o.get("outputs") for o in output_4]
    assert sum(w is not None for w in written) == len(folder["good"])
    out_1, out_4 = tmp_path / "threads_1", tmp_path / "threads_4"
    names = sorted(p.name for p in out_1.iterdir())
    assert names == sorted(p.name for p in out_4.iterdir())
    assert len(names) == 2 * len(folder["good"]) + 4  # a map and an overlay each, 3 captures, the broken one's map
    for name in names:
        if name.endswith(".png"):
            np.testing.assert_array_equal(np.asarray(Image.open(out_1 / name)), np.asarray(Image.open(out_4 / name)))
        elif name.endswith(".nii.gz"):
            np.testing.assert_array_equal(nib.load(out_1 / name).get_fdata(), nib.load(out_4 / name).get_fdata())
        else:
            np.testing.assert_array_equal(pydicom.dcmread(out_1 / name).pixel_array,
                                          pydicom.dcmread(out_4 / name).pixel_array)
    by_source = {str(b["image"].meta["filename_or_obj"]): o for b, o in zip(batch_4, output_4) if "outputs" in o}
    first, second = (pydicom.dcmread(out_4 / by_source[str(p)]["outputs"]["dicom_sc"]) for p in folder["small_dicoms"])
    assert first.SeriesInstanceUID == second.SeriesInstanceUID  # one derived series per source series


def test_threaded_writer_raises_an_unexpected_error_after_writing_the_rest_of_the_batch(folder, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    taken = out / f"{output_stem(folder['good'][1])}_overlay.png"
    taken.write_bytes(b"an earlier run's overlay")
    with pytest.raises(FileExistsError, match="--overwrite true"):
        _write_batch(folder, out, 4, tmp_path / "broken.png")
    assert taken.read_bytes() == b"an earlier run's overlay"  # never replaced
    maps = {p.name for p in out.glob("*_anomaly_map.nii.gz")}
    # maps come first: every item's, the broken one's included, was written
    assert maps == {f"{output_stem(p)}_anomaly_map.nii.gz" for p in [*folder["good"], tmp_path / "broken.png"]}
    for bad in (0, -2, "two", "2.5", 1.5, None):
        with pytest.raises(ValueError, match="writer_threads"):
            AnomalyMapWriter(out, tiny_detector(), num_threads=bad)
    assert AnomalyMapWriter(out, tiny_detector(), num_threads="3").num_threads == 3  # as the command line gives it


def test_gzip_maps_are_gzip_files_of_the_uncompressed_nifti(results, folder) -> None:
    rows, out = results["rows"], results["out"]
    for path in folder["good"]:
        written = (out / rows[str(path)]["anomaly_map"]).read_bytes()
        assert written[:2] == b"\x1f\x8b"  # a gzip file, which any reader inflates
        plain = nib.Nifti1Image.from_bytes(gzip.decompress(written))
        np.testing.assert_array_equal(plain.get_fdata(), nib.load(out / rows[str(path)]["anomaly_map"]).get_fdata())


def test_gzip_huffman_writes_the_data_in_chunks(tmp_path) -> None:
    data = np.random.default_rng(0).random(10_000).astype(np.float32).tobytes() + bytes(5000)
    for chunk in (1000, 1 << 22):
        write_gzip_huffman(tmp_path / "data.gz", data, chunk_bytes=chunk)
        packed = (tmp_path / "data.gz").read_bytes()
        assert gzip.decompress(packed) == data and len(packed) < len(data)


def test_overlay_shows_the_radiograph_where_the_map_is_zero_and_the_colour_map_at_vmax() -> None:
    grey = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    np.testing.assert_array_equal(render_overlay(grey, np.zeros_like(grey)),
                                  np.repeat(np.rint(grey * 255).astype(np.uint8)[..., None], 3, -1))
    hot = render_overlay(grey, np.full_like(grey, 0.5), vmax=0.25, alpha=0.6, cmap="jet")
    colour = np.asarray(matplotlib.colormaps["jet"](1.0)[:3])
    expected = 0.4 * grey[..., None] + 0.6 * colour
    np.testing.assert_allclose(hot, np.rint(expected * 255), atol=1)
    # the same as MONAI's blend_images with the value-dependent opacity
    anomaly_map = np.random.default_rng(0).random(grey.shape, dtype=np.float32) * 0.3
    level = np.clip(anomaly_map / 0.25, 0, 1)[None]
    blended = blend_images(grey[None], level, alpha=0.6 * level, cmap="jet", rescale_arrays=False,
                           transparent_background=False)
    reference = np.rint(np.moveaxis(blended, 0, -1) * 255)
    assert np.abs(render_overlay(grey, anomaly_map).astype(float) - reference).max() <= 1
    # with a floor (the feature map's normal level): values up to vmin show the radiograph, [vmin, vmax] the colours
    shifted = render_overlay(grey, anomaly_map + 1.0, vmax=1.25, vmin=1.0)
    assert np.abs(shifted.astype(float) - reference).max() <= 1
    np.testing.assert_array_equal(render_overlay(grey, np.full_like(grey, 0.9), vmax=2.0, vmin=1.0),
                                  render_overlay(grey, np.zeros_like(grey)))
    with pytest.raises(ValueError, match="vmin"):
        render_overlay(grey, anomaly_map, vmax=1.0, vmin=1.0)


def test_existing_csv_is_not_overwritten_unless_asked(tmp_path, model) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(2):
        Image.fromarray(np.rint(synthetic(20 + i) * 255).astype(np.uint8)).save(inputs / f"x{i}.png")
    out = inputs / "results"  # inside the input folder: its files must never be scored
    run(run_inference(inputs, out, model["path"]))
    csv_path = out / "anomaly_scores.csv"
    before = csv_path.read_bytes()
    with pytest.raises(Exception) as info:
        run(run_inference(inputs, out, model["path"], overwrite="false"))  # as `--overwrite false` passes it
    assert any(isinstance(e, FileExistsError) and str(csv_path) in str(e) and "--overwrite true" in str(e)
               for e in exception_chain(info.value))
    assert csv_path.read_bytes() == before
    run(run_inference(inputs, out, model["path"], overwrite="true", map_suffix=".nii"))  # `--overwrite true`
    rows = read_csv(csv_path)
    assert set(rows) == {str(inputs / "x0.png"), str(inputs / "x1.png")}
    maps = [r["anomaly_map"] for r in rows.values()]
    assert all(m.endswith("_anomaly_map.nii") and (out / m).is_file() for m in maps)


def test_progress_is_logged_in_images_with_one_line_at_the_end(tmp_path, model, caplog) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(5):
        Image.fromarray(np.rint(synthetic(30 + i) * 255).astype(np.uint8)).save(inputs / f"x{i}.png")
    logger = logging.getLogger("scripts.progress")
    logger.addHandler(caplog.handler)  # the workflow's logging.conf replaced the root logger's handlers
    try:
        run(run_inference(inputs, tmp_path / "out", model["path"], batch_size=2, progress_interval=0,
                          save_overlay=False, save_map=False, save_dicom=False))
    finally:
        logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.progress"]
    assert [line.split(" (")[0] for line in lines] == ["scored 2 / 5 images", "scored 4 / 5 images", "scored 5 / 5 images"]
    assert "left)" in lines[0] and "in all)" in lines[-1]


def test_missing_checkpoint_names_the_file_and_what_to_do(tmp_path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(np.rint(synthetic(5) * 255).astype(np.uint8)).save(inputs / "x.png")
    missing = tmp_path / "no_such_model.pt"
    with pytest.raises(Exception) as info:
        run(run_inference(inputs, tmp_path / "out", missing))
    assert any(isinstance(e, FileNotFoundError) and str(missing) in str(e) and "train first" in str(e)
               for e in exception_chain(info.value))
    assert not (tmp_path / "out" / "anomaly_scores.csv").exists()


def test_model_without_score_statistics_stops_and_says_what_to_do(tmp_path) -> None:
    """A model.pt whose statistics were never measured (or that predates the per-pixel ones) is refused."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(np.rint(synthetic(5) * 255).astype(np.uint8)).save(inputs / "x.png")
    state = tiny_detector().state_dict()
    for name in ("pixel_mean", "pixel_std"):  # as written before the per-pixel statistics existed
        del state[f"statistics.{name}"]
    state["statistics.ready"].fill_(True)
    ckpt = tmp_path / "old_model.pt"
    torch.save(state, ckpt)
    with pytest.raises(Exception) as info:
        run(run_inference(inputs, tmp_path / "out", ckpt))
    assert any(isinstance(e, RuntimeError) and "no measured score statistics" in str(e)
               and "monai.bundle run training" in str(e) for e in exception_chain(info.value))
    assert not (tmp_path / "out" / "anomaly_scores.csv").exists()


@pytest.mark.parametrize("version", ["0.2", "0.4"])
def test_model_without_feature_statistics_is_refused_then_scored_without_them(tmp_path, version) -> None:
    """A model.pt of bundle 0.2 (measured statistics, no encoder-feature statistics) or 0.4 (per-cell Gaussians: a
    mean and a precision per cell) is refused by the default feature score, with the overrides that score it without
    them; with those overrides it is scored."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(np.rint(synthetic(5) * 255).astype(np.uint8)).save(inputs / "x.png")
    state = {k: v for k, v in tiny_detector().state_dict().items() if ".density." not in k}
    if version == "0.4":
        cells, values = 64, 128
        state.update({"statistics.density.mean": torch.zeros(cells, values),
                      "statistics.density.precision": torch.eye(values).repeat(cells, 1, 1),
                      "statistics.density.score_mean": torch.tensor(1.0), "statistics.density.score_std": torch.tensor(1.0)})
    state["statistics.ready"].fill_(True)
    ckpt = tmp_path / f"model_{version}.pt"
    torch.save(state, ckpt)
    with pytest.raises(Exception) as info:
        run(run_inference(inputs, tmp_path / "out", ckpt))
    assert any(isinstance(e, RuntimeError) and "--feature_depth '$None' --score_kind reconstruction --map_kind "
               "residual" in str(e) for e in exception_chain(info.value))
    run(run_inference(inputs, tmp_path / "out2", ckpt, feature_depth="$None", score_kind="reconstruction",
                      map_kind="residual"))
    with open(tmp_path / "out2" / "anomaly_scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], r["score_kind"]) for r in rows] == [("ok", "reconstruction")] and 0 < float(rows[0]["score"]) < 1


def test_failed_load_gives_a_placeholder_that_collates(tmp_path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.rint(synthetic(6, 50, 40) * 255).astype(np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    transform = Compose([LoadRadiographOrErrord("image"), Resized("image", (32, 32), mode="area")])
    items = [transform({"image": str(p)}) for p in (good, bad)]
    assert items[0]["error"] == "" and str(bad) in items[1]["error"]
    batch = list_data_collate(items)
    assert batch["image"].shape == (2, 1, 32, 32) and float(batch["image"][1].abs().sum()) == 0.0
    assert batch["image"].meta["filename_or_obj"] == [str(good), str(bad)]
    assert batch["image"].meta["spatial_shape"][0].tolist() == [50, 40]


def test_list_inputs_from_folder_datalist_and_errors(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("sub/b.png", "a.dcm", "c.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "._a.png").write_bytes(b"x")  # macOS resource fork
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old_overlay.png").write_bytes(b"x")
    listed = [d["image"] for d in list_inputs(tmp_path, exclude=[tmp_path / "out"])]
    assert listed == [str(tmp_path / n) for n in ("a.dcm", "c.nii.gz", "sub/b.png")]

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "sub/b.png", "label": 1}, {"image": "sub/b.png"}],
                                    "training": [{"image": "a.dcm"}]}))
    assert list_inputs(datalist) == [{"image": str(tmp_path / "sub" / "b.png")}]
    assert list_inputs(datalist, datalist_key="training") == [{"image": str(tmp_path / "a.dcm")}]
    with pytest.raises(ValueError, match="validation"):
        list_inputs(datalist, datalist_key="validation")
    with pytest.raises(FileNotFoundError, match="--input_dir"):
        list_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        list_inputs(tmp_path / "empty")


def test_input_dir_and_its_alias_dataset_dir_never_silently_override_each_other(tmp_path) -> None:
    default, a, b = tmp_path / "default", tmp_path / "a", tmp_path / "b"
    assert choose_input("", "", default) == str(default)
    assert choose_input(a, "", default) == str(a)
    assert choose_input("", b, default) == str(b)
    assert choose_input(a, tmp_path / "b" / ".." / "a", default) == str(a)  # the same folder, spelt two ways
    with pytest.raises(ValueError, match="--input_dir .* and --dataset_dir .* name different inputs"):
        choose_input(a, b, default)
    # through the config, as `monai.bundle run --input_dir A --dataset_dir B` sets them
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(b)})
    assert parser.get_parsed_content("inputs") == str(b)
    parser.update({"input_dir": str(a)})
    with pytest.raises(RuntimeError) as info:  # MONAI reports a failed config expression with its cause
        parser.get_parsed_content("inputs", lazy=False)
    assert any("name different inputs" in str(e) for e in exception_chain(info.value))


def test_files_a_folder_scan_leaves_out_are_named_in_the_log(tmp_path, caplog) -> None:
    Image.fromarray(np.rint(synthetic(1) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    for name in ("notes.txt", ".DS_Store", "scan.tif"):
        (tmp_path / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="scripts.inference"):
        assert list_inputs(tmp_path) == [{"image": str(tmp_path / "a.png")}]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "3 files" in message and all(n in message for n in ("notes.txt", ".DS_Store", "scan.tif"))


def test_output_stem_is_safe_unique_and_stable() -> None:
    a, b = output_stem("/data/a/chest.png"), output_stem("/data/b/chest.png")
    assert a != b and a.startswith("chest-") and a == output_stem("/data/a/chest.png")
    for hostile in ("/x/../../etc/passwd", "/x/.hidden.dcm", "/x/ä b;rm -rf $(x).nii.gz", "/x/..png",
                    "/x/\\..\\y.png"):
        stem = output_stem(hostile)
        assert stem and "/" not in stem and "\\" not in stem and not stem.startswith(".")
        assert set(stem) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert output_stem("/x/scan.nii.gz").startswith("scan-")
