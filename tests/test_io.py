"""Tests of the radiograph loading transforms (``scripts.data.transforms``) and readers (``scripts.data``)."""

from __future__ import annotations

import os
import pickle
import struct
import tracemalloc
import zlib
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, Resized
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import apply_color_lut, apply_voi_lut
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from scripts.data.formats import DICOM_META_KEYWORDS, RadiographLoadError, is_supported_file
from scripts.data.transforms import LoadMaskd, LoadRadiograph, LoadRadiographd

LUMA = np.array([0.299, 0.587, 0.114])
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


@pytest.fixture(scope="module")
def loader() -> LoadRadiograph:
    return LoadRadiograph()


@pytest.fixture(scope="module")
def preprocess() -> Compose:
    """The bundle's deterministic preprocessing: load, then resize to the model size."""
    return Compose([LoadRadiographd(keys="image"), Resized(keys="image", spatial_size=(128, 128), mode="area")])


@pytest.fixture(scope="module")
def rg1(loader: LoadRadiograph) -> MetaTensor:
    return loader(get_testdata_file("RG1_UNCR.dcm"))


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing"
    return path


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                **elements: object) -> Path:
    """Write a minimal, conformant DX image holding ``pixels`` (rows x columns [x 3])."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "P1"
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    bits = bits_stored or pixels.dtype.itemsize * 8
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_part10(path: Path, ds: Dataset, transfer_syntax: str, body: bytes | None = None) -> Path:
    """Write ``ds`` as explicit VR little endian after a file meta naming ``transfer_syntax`` (any UID).

    ``body`` replaces the encoded dataset (e.g. deflated bytes). pydicom refuses to write unknown or
    mismatched transfer syntaxes itself, hence this hand assembly.
    """
    if body is None:
        encoded = pydicom.filebase.DicomBytesIO()
        pydicom.filewriter.write_dataset(encoded, ds)
        body = encoded.getvalue()
    file_meta = FileMetaDataset(ds.file_meta)
    file_meta.TransferSyntaxUID = transfer_syntax
    meta = pydicom.filebase.DicomBytesIO()
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + body)
    return path


def asymmetric(rows: int = 40, cols: int = 24) -> np.ndarray:
    """A uint8 test image whose transposes and flips all differ from it."""
    image = np.add.outer(np.arange(rows) * 4, np.arange(cols)).astype(np.uint8)
    image[2:6, 3:9] = 255
    return image


def error_of(loader: LoadRadiograph, path: Path | str) -> RadiographLoadError:
    with pytest.raises(RadiographLoadError) as info:
        loader(path)
    assert str(path) in str(info.value) and info.value.path == str(path)
    return info.value


# ----------------------------------------------------------------------------------------- real DICOM


def test_rg1_uncompressed_and_jpeg2000_give_the_same_tensor(preprocess: Compose) -> None:
    plain = preprocess({"image": pydicom_file("RG1_UNCR.dcm")})["image"]
    j2k = preprocess({"image": pydicom_file("RG1_J2KR.dcm")})["image"]
    assert plain.shape == j2k.shape == (1, 128, 128)
    assert torch.equal(plain.as_tensor(), j2k.as_tensor())


def test_rg1_matches_pydicom_window_and_is_not_inverted(rg1: MetaTensor) -> None:
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    # pydicom's windowing outputs the stored-value range 0 .. 2**15 - 1; MONOCHROME1 displays inverted
    reference = 1.0 - apply_voi_lut(ds.pixel_array, ds) / (2**15 - 1)
    assert rg1.shape == (1, ds.Rows, ds.Columns) and rg1.dtype == torch.float32
    np.testing.assert_allclose(rg1[0].numpy(), reference, atol=1e-6)


def test_rg1_lung_fields_darker_than_mediastinum(preprocess: Compose) -> None:
    image = preprocess({"image": pydicom_file("RG1_UNCR.dcm")})["image"][0]
    lungs = torch.cat([image[30:70, 22:42].flatten(), image[30:70, 84:104].flatten()]).mean()
    mediastinum = image[30:100, 58:70].mean()
    assert lungs + 0.15 < mediastinum


def test_png_of_displayed_dicom_preprocesses_to_the_same_tensor(
    rg1: MetaTensor, preprocess: Compose, tmp_path: Path
) -> None:
    png = write_png(tmp_path / "rg1.png", np.rint(rg1[0].numpy() * 255).astype(np.uint8))
    from_png = preprocess({"image": str(png)})["image"]
    from_dicom = preprocess({"image": pydicom_file("RG1_UNCR.dcm")})["image"]
    assert from_png.shape == from_dicom.shape
    assert float((from_png - from_dicom).abs().max()) <= 0.5 / 255 + 1e-6


def test_rg1_meta_carries_identifiers_and_original_shape(rg1: MetaTensor) -> None:
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    meta = rg1.meta
    assert meta["filename_or_obj"] == pydicom_file("RG1_UNCR.dcm")
    assert list(meta["spatial_shape"]) == [1955, 1841]
    assert meta["source_format"] == "dicom"
    dicom = meta["dicom"]
    assert set(dicom) == set(DICOM_META_KEYWORDS) and all(isinstance(v, str) for v in dicom.values())
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                    "StudyDate", "AccessionNumber"):
        assert dicom[keyword] == str(ds[keyword].value), keyword
    assert dicom["PatientName"] == "CompressedSamples^RG1"


@pytest.mark.parametrize(
    "variant",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm",
     "MR_small_bigendian.dcm"],
)
def test_lossless_transfer_syntaxes_match_uncompressed(loader: LoadRadiograph, variant: str) -> None:
    assert torch.equal(loader(pydicom_file(variant)).as_tensor(), loader(pydicom_file("MR_small.dcm")).as_tensor())


def test_mr_small_window_follows_the_standard_linear_formula(loader: LoadRadiograph) -> None:
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(np.float64)
    expected = np.where(
        x <= center - 0.5 - (width - 1) / 2,
        0.0,
        np.where(x > center - 0.5 + (width - 1) / 2, 1.0, (x - (center - 0.5)) / (width - 1) + 0.5),
    )
    np.testing.assert_allclose(loader(pydicom_file("MR_small.dcm"))[0].numpy(), expected, atol=1e-6)


def test_ct_without_window_uses_the_rescaled_value_range(loader: LoadRadiograph) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(
        loader(pydicom_file("CT_small.dcm"))[0].numpy(), (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6
    )


def test_voi_lut_sequence_is_applied(loader: LoadRadiograph) -> None:
    ds = pydicom.dcmread(pydicom_file("vlut_04.dcm"))
    bits = ds.VOILUTSequence[0].LUTDescriptor[2]
    expected = apply_voi_lut(ds.pixel_array, ds) / (2**bits - 1)
    np.testing.assert_allclose(loader(pydicom_file("vlut_04.dcm"))[0].numpy(), expected, atol=1e-6)


def test_voi_lut_clamps_inputs_outside_the_table(loader: LoadRadiograph, tmp_path: Path) -> None:
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [256, 0, 8])
    lut.add_new("LUTData", "US", list(range(256)))
    stored = np.tile(np.array([0, 100, 200, 32773], dtype=np.uint16), (32, 8))  # x2 -> 0, 200, 400, 65546
    path = write_dicom(tmp_path / "lut.dcm", stored, RescaleSlope=2, RescaleIntercept=0, VOILUTSequence=[lut])
    image = loader(path)[0].numpy()
    np.testing.assert_allclose(image[0, :4], [0.0, 200 / 255, 1.0, 1.0], atol=1e-6)  # above the table: last entry


def test_rgb_and_jpeg_baseline_become_luma(loader: LoadRadiograph) -> None:
    rgb = pydicom.dcmread(pydicom_file("SC_rgb.dcm")).pixel_array
    expected = rgb @ LUMA / 255
    np.testing.assert_allclose(loader(pydicom_file("SC_rgb.dcm"))[0].numpy(), expected, atol=1e-6)
    lossy = loader(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))[0].numpy()  # same picture, YBR JPEG baseline
    assert np.abs(lossy - expected).mean() < 0.01


def test_palette_colour_becomes_luma(loader: LoadRadiograph) -> None:
    ds = pydicom.dcmread(pydicom_file("OT-PAL-8-face.dcm"), force=True)  # no file meta: implicit VR LE
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    rgb = apply_color_lut(ds.pixel_array, ds)
    expected = rgb @ LUMA / np.iinfo(rgb.dtype).max
    np.testing.assert_allclose(loader(pydicom_file("OT-PAL-8-face.dcm"))[0].numpy(), expected, atol=1e-6)


def test_deflated_dataset_loads(loader: LoadRadiograph) -> None:
    image = loader(pydicom_file("image_dfl.dcm"))
    assert image.shape == (1, 512, 512) and 0 <= float(image.min()) < float(image.max()) <= 1


# ---------------------------------------------------------------------- orientation and scaling rules


def test_dicom_orientation_and_scale_match_png(loader: LoadRadiograph, tmp_path: Path) -> None:
    pixels = asymmetric()
    from_png = loader(write_png(tmp_path / "a.png", pixels))
    # the full 8-bit window (centre 128, width 256) maps stored value x to x / 255 (PS3.3 C.11.2.1.2.1)
    mono2 = loader(write_dicom(tmp_path / "a.dcm", pixels, WindowCenter=128, WindowWidth=256))
    mono1 = loader(write_dicom(tmp_path / "b.dcm", 255 - pixels, "MONOCHROME1", WindowCenter=128, WindowWidth=256))
    expected = pixels / 255.0
    assert from_png.shape == (1, 40, 24)
    np.testing.assert_allclose(from_png[0].numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(mono2[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(mono1[0].numpy(), expected, atol=1e-6)
    assert list(from_png.meta["spatial_shape"]) == list(mono2.meta["spatial_shape"]) == [40, 24]


@pytest.mark.parametrize(
    ("function", "width", "at_center"),
    [("LINEAR", 100, 0.5), ("LINEAR_EXACT", 100, 0.5), ("SIGMOID", 100, 0.5)],
)
def test_window_maps_its_edges_to_black_and_white(
    loader: LoadRadiograph, tmp_path: Path, function: str, width: int, at_center: float
) -> None:
    # stored 1000 + 2 * value - 1000 = 2 * value after rescale; window centred on 0 (linear: at 0 - 0.5)
    stored = np.full((32, 32), 500, dtype=np.uint16)
    stored[:8] = 0  # -1000 after rescale, far below the window
    stored[8:16] = 1000  # 1000, far above
    stored[16:24] = 500  # 0: the centre
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=0 if function != "LINEAR" else 0.5, WindowWidth=width, VOILUTFunction=function)
    image = loader(path)[0].numpy()
    np.testing.assert_allclose(image[:8], 0.0, atol=1e-6)
    np.testing.assert_allclose(image[8:16], 1.0, atol=1e-6)
    np.testing.assert_allclose(image[16:24], at_center, atol=1e-6)


def test_invalid_window_falls_back_to_pixel_range(loader: LoadRadiograph, tmp_path: Path) -> None:
    pixels = asymmetric().astype(np.uint16) * 10
    path = write_dicom(tmp_path / "w0.dcm", pixels, WindowCenter=100, WindowWidth=0)
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    np.testing.assert_allclose(loader(path)[0].numpy(), expected, atol=1e-6)


def test_sixteen_bit_png_is_divided_by_65535(loader: LoadRadiograph, tmp_path: Path) -> None:
    pixels = (asymmetric().astype(np.uint16) * 257 + 3).astype(np.uint16)
    image = loader(write_png(tmp_path / "a16.png", pixels))
    np.testing.assert_allclose(image[0].numpy(), pixels / 65535.0, atol=1e-7)


def test_rgba_palette_and_grey_alpha_png(loader: LoadRadiograph, tmp_path: Path) -> None:
    grey = asymmetric()
    rgba = np.dstack([grey, grey // 2, 255 - grey, np.full_like(grey, 7)])  # alpha is dropped
    np.testing.assert_allclose(
        loader(write_png(tmp_path / "rgba.png", rgba))[0].numpy(), rgba[..., :3] @ LUMA / 255, atol=1e-6
    )
    palette = Image.fromarray(grey).convert("P")  # grey palette: same picture as the grey PNG
    palette.save(tmp_path / "p.png")
    np.testing.assert_allclose(loader(tmp_path / "p.png")[0].numpy(), grey / 255.0, atol=1e-6)
    grey_alpha = np.dstack([grey, np.zeros_like(grey)])
    np.testing.assert_allclose(
        loader(write_png(tmp_path / "la.png", grey_alpha, "LA"))[0].numpy(), grey / 255.0, atol=1e-7
    )


def test_jpeg_keeps_orientation(loader: LoadRadiograph, tmp_path: Path) -> None:
    grey = np.kron(asymmetric(), np.ones((4, 4), dtype=np.uint8))  # smooth enough for JPEG
    Image.fromarray(grey).save(tmp_path / "a.jpeg", quality=98)
    image = loader(tmp_path / "a.jpeg")
    assert image.shape == (1, 160, 96) and image.meta["source_format"] == "jpeg"
    assert float(np.abs(image[0].numpy() - grey / 255.0).mean()) < 0.01


def test_nifti_is_transposed_and_min_max_scaled_with_non_finite_values(loader: LoadRadiograph, tmp_path: Path) -> None:
    grey = asymmetric().astype(np.float32) - 50  # rows x cols
    grey[0, 0], grey[0, 1], grey[0, 2] = np.nan, np.inf, -np.inf
    nib.save(nib.Nifti1Image(grey.T[..., None], np.eye(4)), tmp_path / "a.nii.gz")  # voxel (i, j) = (col, row)
    image = loader(tmp_path / "a.nii.gz")[0].numpy()
    finite = np.isfinite(grey)
    low, high = grey[finite].min(), grey[finite].max()
    np.testing.assert_allclose(image[finite], ((grey - low) / (high - low))[finite], atol=1e-6)
    assert image[0, 0] == 0 and image[0, 1] == 1 and image[0, 2] == 0


def test_mixed_formats_collate_after_resize(preprocess: Compose, tmp_path: Path) -> None:
    items = [
        preprocess({"image": str(write_png(tmp_path / "a.png", asymmetric()))}),
        preprocess({"image": pydicom_file("MR_small.dcm")}),
    ]
    batch = list_data_collate(items)
    assert batch["image"].shape == (2, 1, 128, 128)
    assert batch["image"].meta["source_format"] == ["png", "dicom"]
    assert batch["image"].meta["dicom"]["PatientID"][0] == ""


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_nrrd_and_metaimage_read_through_itk_like_nifti(loader: LoadRadiograph, tmp_path: Path, suffix: str) -> None:
    grey = asymmetric().astype(np.float32) * 7 - 300  # rows x cols, outside [0, 1]
    grey[0, 0], grey[0, 1] = np.inf, np.nan
    itk.imwrite(itk.image_from_array(grey), str(tmp_path / f"a{suffix}"))  # ITK's numpy order is rows first
    image = loader(tmp_path / f"a{suffix}")
    assert image.shape == (1, *grey.shape) and image.meta["source_format"] == "itk"
    finite = np.isfinite(grey)
    low, high = grey[finite].min(), grey[finite].max()
    np.testing.assert_allclose(image[0].numpy()[finite], ((grey - low) / (high - low))[finite], atol=1e-6)
    assert image[0, 0, 0] == 1 and image[0, 0, 1] == 0
    assert is_supported_file(tmp_path / f"a{suffix}")


def test_itk_formats_are_checked_from_the_header(loader: LoadRadiograph, tmp_path: Path) -> None:
    volume = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    itk.imwrite(itk.image_from_array(volume), str(tmp_path / "volume.nrrd"))
    assert "only 2-D images" in error_of(loader, tmp_path / "volume.nrrd").reason
    rgb = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    itk.imwrite(itk.image_from_array(rgb, is_vector=True), str(tmp_path / "colour.mha"))
    assert "components" in error_of(loader, tmp_path / "colour.mha").reason
    itk.imwrite(itk.image_from_array(np.ones((8, 40), np.float32)), str(tmp_path / "thin.nrrd"))
    assert "below the minimum" in error_of(loader, tmp_path / "thin.nrrd").reason
    (tmp_path / "text.nrrd").write_text("not an image\n" * 10)
    assert "content is not" in error_of(loader, tmp_path / "text.nrrd").reason


# -------------------------------------------------------------------------------------- bad input


def test_zero_byte_file(loader: LoadRadiograph, tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert "empty" in error_of(loader, tmp_path / "empty.dcm").reason


def test_missing_file_folder_device_and_pipe(loader: LoadRadiograph, tmp_path: Path) -> None:
    assert "not found" in error_of(loader, tmp_path / "nope.png").reason
    assert "is a folder" in error_of(loader, tmp_path).reason
    (tmp_path / "zero.dcm").symlink_to("/dev/zero")  # would read forever; refused from its type
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block until a writer comes
    for name in ("zero.dcm", "pipe.png"):
        assert "not a regular file (a device, pipe or socket" in error_of(loader, tmp_path / name).reason


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_dicom(loader: LoadRadiograph, tmp_path: Path, keep: float) -> None:
    data = Path(pydicom_file("MR_small.dcm")).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: int(len(data) * keep)])
    error_of(loader, path)


def test_truncated_png(loader: LoadRadiograph, tmp_path: Path) -> None:
    path = write_png(tmp_path / "cut.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-300])
    assert "cannot be decoded" in error_of(loader, path).reason


@pytest.mark.parametrize(("name", "kind"), [("test-SR.dcm", "SR"), ("rtplan.dcm", "RT Plan")])
def test_non_image_dicom(loader: LoadRadiograph, name: str, kind: str) -> None:
    reason = error_of(loader, pydicom_file(name)).reason
    assert "no pixel data" in reason and kind in reason


def test_dicom_without_pixel_data(loader: LoadRadiograph, tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    assert "no pixel data" in error_of(loader, tmp_path / "nopix.dcm").reason


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.110", "1.2.3.4.5"])
def test_unsupported_transfer_syntax(loader: LoadRadiograph, tmp_path: Path, uid: str) -> None:
    path = write_part10(tmp_path / "ts.dcm", pydicom.dcmread(pydicom_file("MR_small.dcm")), uid)
    error = error_of(loader, path)
    assert "transfer syntax" in error.reason and "dcmdjpeg" in str(error)


def test_multiframe_and_one_bit_are_refused(loader: LoadRadiograph) -> None:
    assert "10 frames" in error_of(loader, pydicom_file("emri_small.dcm")).reason
    assert "Bits Allocated 1" in error_of(loader, pydicom_file("liver_1frame.dcm")).reason


def test_dicom_named_png_loads_by_content(loader: LoadRadiograph, tmp_path: Path) -> None:
    renamed = tmp_path / "actually_dicom.png"
    renamed.write_bytes(Path(pydicom_file("MR_small.dcm")).read_bytes())
    assert torch.equal(loader(renamed).as_tensor(), loader(pydicom_file("MR_small.dcm")).as_tensor())


def test_dicom_without_preamble_needs_dicom_extension(loader: LoadRadiograph, tmp_path: Path) -> None:
    data = Path(pydicom_file("MR_small.dcm")).read_bytes()
    bare = data[132:]  # no preamble, no "DICM": the file meta group follows directly
    (tmp_path / "bare.dcm").write_bytes(bare)
    (tmp_path / "bare.png").write_bytes(bare)
    assert torch.equal(loader(tmp_path / "bare.dcm").as_tensor(), loader(pydicom_file("MR_small.dcm")).as_tensor())
    assert "not DICOM, PNG, JPEG, NIfTI, NRRD or MetaImage" in error_of(loader, tmp_path / "bare.png").reason


def test_unrecognised_content_and_misnamed_nifti(loader: LoadRadiograph, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    assert "not DICOM, PNG, JPEG, NIfTI, NRRD or MetaImage" in error_of(loader, tmp_path / "notes.png").reason
    nib.save(nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4)), tmp_path / "v.nii")
    (tmp_path / "v.png").write_bytes((tmp_path / "v.nii").read_bytes())
    assert "rename" in str(error_of(loader, tmp_path / "v.png")).lower()


@pytest.mark.parametrize("shape", [(1, 1), (10, 10000), (15, 100)])
def test_too_small_images(loader: LoadRadiograph, tmp_path: Path, shape: tuple[int, int]) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    assert "minimum of 16" in error_of(loader, write_png(tmp_path / "s.png", pixels)).reason


def test_extreme_aspect_ratio(loader: LoadRadiograph, tmp_path: Path) -> None:
    wide = np.random.default_rng(0).integers(0, 255, (20, 200), dtype=np.uint8)
    assert "aspect ratio 10.0:1" in error_of(loader, write_png(tmp_path / "wide.png", wide)).reason
    assert loader(write_png(tmp_path / "ok.png", wide[:, :80])).shape == (1, 20, 80)  # 4:1 is accepted


@pytest.mark.parametrize("pixels", [np.zeros((32, 32), np.uint8), np.full((32, 32), 9000, np.uint16)])
def test_constant_image(loader: LoadRadiograph, tmp_path: Path, pixels: np.ndarray) -> None:
    assert "constant" in error_of(loader, write_png(tmp_path / "c.png", pixels)).reason
    assert "constant" in error_of(loader, write_dicom(tmp_path / "c.dcm", pixels)).reason


def test_nifti_volume_and_all_nan(loader: LoadRadiograph, tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((20, 20, 3), np.float32), np.eye(4)), tmp_path / "vol.nii")
    assert "only 2-D" in error_of(loader, tmp_path / "vol.nii").reason
    nib.save(nib.Nifti1Image(np.full((20, 20), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii")
    assert "no finite values" in error_of(loader, tmp_path / "nan.nii").reason


def test_large_dicom_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Decoder, "as_array", no_decoding)
    with pytest.raises(RadiographLoadError, match="max_pixels=1000000"):
        LoadRadiograph(max_pixels=1_000_000)(pydicom_file("RG1_UNCR.dcm"))


def test_large_png_header_refused_before_decoding(tmp_path: Path) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # a 60000 x 60000 grey PNG header with a few bytes of image data: decoding would need 3.6 GB
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100)))
    data += chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(data)
    with pytest.raises(RadiographLoadError, match="max_pixels"):
        LoadRadiograph()(tmp_path / "bomb.png")


def test_compressed_frame_larger_than_header_is_refused(loader: LoadRadiograph, tmp_path: Path) -> None:
    data = bytearray(Path(pydicom_file("MR_small_jp2klossless.dcm")).read_bytes())
    siz = data.index(b"\xff\x4f\xff\x51") + 4
    data[siz + 4 : siz + 12] = struct.pack(">II", 40000, 40000)  # Xsiz, Ysiz of the codestream
    (tmp_path / "j2k.dcm").write_bytes(bytes(data))
    assert "disagrees with the DICOM header" in error_of(loader, tmp_path / "j2k.dcm").reason
    data = bytearray(Path(pydicom_file("JPEG-LL.dcm")).read_bytes())
    sof = data.index(b"\xff\xc3")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)  # rows, columns of the JPEG frame
    (tmp_path / "jpeg.dcm").write_bytes(bytes(data))
    assert "disagrees with the DICOM header" in error_of(loader, tmp_path / "jpeg.dcm").reason


def test_deflate_bomb_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    plain = pydicom.filebase.DicomBytesIO()
    pydicom.filewriter.write_dataset(plain, ds)  # explicit VR little endian
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(plain.getvalue())
    body += deflater.compress(struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, 70 * 2**20))  # private OB element
    body += b"".join(deflater.compress(bytes(2**20)) for _ in range(70)) + deflater.flush()  # ~70 KB on disk
    path = write_part10(tmp_path / "bomb.dcm", ds, DeflatedExplicitVRLittleEndian, body)
    with pytest.raises(RadiographLoadError, match="inflates beyond"):
        LoadRadiograph(max_pixels=1_000)(path)


def test_error_pickles_with_its_message(loader: LoadRadiograph, tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    error = error_of(loader, tmp_path / "empty.png")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, RadiographLoadError) and str(copy) == str(error)


def test_is_supported_file(tmp_path: Path) -> None:
    for name in ("a.png", "b.JPG", "c.jpeg", "d.dcm", "e.nii", "f.nii.gz", "g.dicom"):
        (tmp_path / name).write_bytes(b"x")
        assert is_supported_file(tmp_path / name), name
    (tmp_path / "IM0001").write_bytes(Path(pydicom_file("MR_small.dcm")).read_bytes())  # DICOM without extension
    assert is_supported_file(tmp_path / "IM0001")
    for name in ("notes.txt", "._a.png", "DICOMDIR", "IM0002"):
        (tmp_path / name).write_bytes(b"plain text, no DICOM preamble" * 10)
        assert not is_supported_file(tmp_path / name), name
    assert not is_supported_file(tmp_path)
    # offered to the loader (which reports them) rather than silently left out of a data set
    (tmp_path / "zero.dcm").symlink_to("/dev/zero")
    (tmp_path / "moved.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "dev_null").symlink_to("/dev/null")  # no image suffix, not a regular file: not offered
    assert is_supported_file(tmp_path / "zero.dcm") and is_supported_file(tmp_path / "moved.png")
    assert not is_supported_file(tmp_path / "dev_null")
    (tmp_path / "scans.png").mkdir()
    assert not is_supported_file(tmp_path / "scans.png")


def _traced_peak(function: object, *args: object) -> tuple[object, int]:
    tracemalloc.start()
    try:
        try:
            result = function(*args)
        except RadiographLoadError as error:
            result = error
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_corrupt_length_fields_are_not_allocated(loader: LoadRadiograph, tmp_path: Path) -> None:
    # DICOM: the (0002,0001) length of MR_small made 0x7FFFFFF0 bytes (found by the fuzz as 0x18000002)
    data = bytearray(Path(pydicom_file("MR_small.dcm")).read_bytes())
    length_at = data.index(b"\x02\x00\x01\x00OB\x00\x00") + 8
    data[length_at : length_at + 4] = struct.pack("<I", 0x7FFFFFF0)
    (tmp_path / "len.dcm").write_bytes(bytes(data))
    result, peak = _traced_peak(loader, tmp_path / "len.dcm")
    assert isinstance(result, RadiographLoadError) and peak < 32 * 2**20
    # NIfTI: a 1 GiB header extension (nibabel reading from a path allocates it before failing)
    nifti = bytearray(nib.Nifti1Image(asymmetric().T.astype(np.int16), np.eye(4)).to_bytes())
    nifti[108:112] = struct.pack("<f", 2.0**30 + 352)  # vox_offset
    nifti[348:352] = b"\x01\x00\x00\x00"  # extension flag
    nifti[352:360] = struct.pack("<ii", 2**30, 4)  # esize, ecode
    (tmp_path / "ext.nii").write_bytes(bytes(nifti))
    result, peak = _traced_peak(loader, tmp_path / "ext.nii")
    assert isinstance(result, RadiographLoadError) and peak < 32 * 2**20


def test_gzip_bomb_nifti_is_refused(tmp_path: Path) -> None:
    header = nib.Nifti1Image(np.ones((20, 20), np.uint8), np.eye(4)).to_bytes()
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = deflater.compress(header) + b"".join(deflater.compress(bytes(2**20)) for _ in range(70))
    (tmp_path / "bomb.nii.gz").write_bytes(body + deflater.flush())
    with pytest.raises(RadiographLoadError, match="gzip content inflates beyond"):
        LoadRadiograph(max_pixels=1_000)(tmp_path / "bomb.nii.gz")


def test_lesion_masks_load_at_the_model_size_in_the_image_orientation(tmp_path: Path) -> None:
    mask = np.zeros((60, 40), np.uint8)  # rows x columns, like the radiograph
    mask[10:30, 5:15] = 255  # 20 x 10 pixels -> 8 x 8 at 16 x 16 (scale 16/60 rows, 16/40 columns)
    write_png(tmp_path / "m.png", mask)
    nib.save(nib.Nifti1Image((mask.T > 0).astype(np.uint8), np.eye(4)), tmp_path / "m.nii.gz")  # (column, row)
    load = LoadMaskd(keys="mask", spatial_size=16)
    expected = torch.nn.functional.interpolate(torch.from_numpy(mask > 0).float()[None, None], size=(16, 16),
                                               mode="area")[0] >= 0.5
    for name in ("m.png", "m.nii.gz"):
        item = load({"mask": str(tmp_path / name), "label": 1})
        assert item["mask_known"] and item["mask"].shape == (1, 16, 16)
        assert torch.equal(item["mask"].bool(), expected), name
    assert int(expected.sum()) > 0 and expected[0, 4, 3] and not expected[0, 12, 12]
    normal = load({"mask": "", "label": 0})  # a normal image without a mask: no lesion anywhere
    assert normal["mask_known"] and not normal["mask"].any()
    unknown = load({"label": 1})  # an abnormal image without a mask: left out of the pixel metrics
    assert not unknown["mask_known"] and unknown["mask"].shape == (1, 16, 16)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(RadiographLoadError, match="mask cannot be read"):
        load({"mask": str(tmp_path / "bad.png"), "label": 1})
