"""Fuzz of the radiograph loading path over mutated real files.

Seeds are real DICOM files from ``pydicom-data`` and pydicom's own test files (uncompressed, RLE,
JPEG baseline and lossless, JPEG 2000, deflated, VOI/Modality LUT, palette, multi-frame), plus one PNG,
one JPEG and one NIfTI made from a real radiograph. Mutations: byte flips (biased to the header),
truncation, and rewriting one header field in place (DICOM image-pixel, VOI, rescale and
transfer-syntax elements, the pixel data length, PNG IHDR with a valid CRC, NIfTI dims/type/scaling).

Every outcome must be a valid image (``1 x H x W`` float32, finite, in ``[0, 1]``, within the size
limits) or a :class:`RadiographLoadError` naming the file: never another exception, a hang (per-load
alarm) or an unbounded allocation (traced peak per load, and the process peak RSS over the run).
Examples are derandomised so the suite is reproducible; set ``IO_FUZZ_SCALE=10`` for a longer hunt.
"""

from __future__ import annotations

import io
import os
import resource
import signal
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword

from scripts.data.formats import RadiographLoadError
from scripts.data.transforms import LoadRadiograph

MAX_PIXELS = 4_000_000  # above every seed (largest 1760 x 1760), so mutated size fields hit the limit
PEAK_BYTES = 100 * MAX_PIXELS  # traced allocation bound per load: ~100 bytes per allowed pixel
RSS_GROWTH_BYTES = 2 * 2**30  # process peak RSS may grow at most this much over a whole fuzz test
LOAD_SECONDS = 20.0
SCALE = float(os.environ.get("IO_FUZZ_SCALE", "1"))

DICOM_SEEDS = (
    "MR_small.dcm",  # pydicom: 16-bit MR, window
    "SC_rgb_jpeg_dcmtk.dcm",  # pydicom: JPEG baseline, YBR_FULL
    "image_dfl.dcm",  # pydicom: deflated explicit VR little endian
    "RG3_J2KI.dcm",  # pydicom-data: chest CR, MONOCHROME1, lossy JPEG 2000
    "vlut_04.dcm",  # pydicom-data: VOI LUT Sequence
    "mlut_18.dcm",  # pydicom-data: Modality LUT Sequence
    "OBXXXX1A_rle.dcm",  # pydicom-data: RLE, RGB
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # pydicom-data: JPEG lossless
    "emri_small_jpeg_2k_lossless.dcm",  # pydicom-data: multi-frame JPEG 2000
    "OT-PAL-8-face.dcm",  # pydicom-data: palette colour, no preamble or file meta
)
DICOM_FIELDS = (
    "TransferSyntaxUID",
    "SOPClassUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "WindowCenter",
    "WindowWidth",
    "RescaleIntercept",
    "RescaleSlope",
    "VOILUTFunction",
    "LUTDescriptor",
)
INTERESTING_INTS = (0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 255, 256, 4095, 32767, 32768, 65535)
INTERESTING_TEXT = (
    "0", "1", "-1", "-0", "1e308", "-1e308", "nan", "inf", "1\\2", "65535", "2147483648", "abc", "",
    "MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "LINEAR", "SIGMOID",
    "LINEAR_EXACT", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
)


@dataclass(frozen=True)
class Field:
    """A header value in a seed file: where it is, how long, and how it is encoded (struct code or text)."""

    name: str
    offset: int
    length: int
    encoding: str


@dataclass(frozen=True)
class Seed:
    name: str
    suffix: str
    data: bytes
    fields: tuple[Field, ...]
    png_crc: bool = False


class LoadHang(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` in the loader swallows it."""


def dicom_fields(data: bytes) -> tuple[Field, ...]:
    """Explicit-VR little-endian occurrences of :data:`DICOM_FIELDS` (and the pixel data length)."""
    fields = []
    for keyword in DICOM_FIELDS:
        tag = tag_for_keyword(keyword)
        vrs = ("US", "SS") if keyword == "LUTDescriptor" else (dictionary_VR(tag),)
        for vr in vrs:
            pattern = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
            start = data.find(pattern)
            while start >= 0:
                length = struct.unpack_from("<H", data, start + 6)[0]
                if 0 < length <= 64:
                    encoding = {"US": "<H", "SS": "<h"}.get(vr, "text")
                    fields.append(Field(keyword, start + 8, length, encoding))
                start = data.find(pattern, start + 1)
    pixel_data = data.find(b"\xe0\x7f\x10\x00OB\x00\x00") + 1 or data.find(b"\xe0\x7f\x10\x00OW\x00\x00") + 1
    if pixel_data:
        fields.append(Field("PixelDataLength", pixel_data - 1 + 8, 4, "<I"))
    return tuple(fields)


def radiograph_u8() -> np.ndarray:
    """A real chest radiograph (RG3 CR, displayed) downsampled to 110 x 110, uint8."""
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    image = ds.pixel_array[::16, ::16].astype(np.float64)
    image = 1 - (image - image.min()) / (image.max() - image.min())  # MONOCHROME1
    return np.rint(image * 255).astype(np.uint8)


def make_seeds() -> tuple[Seed, ...]:
    seeds = []
    for name in DICOM_SEEDS:
        path = get_testdata_file(name)
        assert path is not None, f"test file {name} missing"
        data = Path(path).read_bytes()
        deflated = name == "image_dfl.dcm"  # field offsets in the inflated stream are not file offsets
        seeds.append(Seed(name, ".dcm", data, () if deflated else dicom_fields(data)))
    grey = radiograph_u8()
    buffer = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buffer, "PNG")
    png_fields = (
        Field("width", 16, 4, ">I"), Field("height", 20, 4, ">I"), Field("bit_depth", 24, 1, "B"),
        Field("colour_type", 25, 1, "B"), Field("interlace", 28, 1, "B"),
    )
    seeds.append(Seed("radiograph16.png", ".png", buffer.getvalue(), png_fields, png_crc=True))
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG", quality=90)
    seeds.append(Seed("radiograph.jpeg", ".jpeg", buffer.getvalue(), ()))
    nifti = nib.Nifti1Image(grey.T.astype(np.int16), np.eye(4))
    nifti_fields = (
        *(Field(f"dim{i}", 40 + 2 * i, 2, "<h") for i in range(4)), Field("datatype", 70, 2, "<h"),
        Field("bitpix", 72, 2, "<h"), Field("vox_offset", 108, 4, "<f"), Field("scl_slope", 112, 4, "<f"),
        Field("scl_inter", 116, 4, "<f"),
    )
    seeds.append(Seed("radiograph.nii", ".nii", nifti.to_bytes(), nifti_fields))
    return tuple(seeds)


SEEDS = make_seeds()


def fix_png_crc(data: bytearray) -> None:
    """Recompute the IHDR CRC so the PNG decoder trusts the mutated header."""
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))


def field_value(field: Field) -> st.SearchStrategy[bytes]:
    """Replacement bytes of exactly ``field.length`` for ``field``."""
    size = field.length
    raw = st.binary(min_size=size, max_size=size)
    if field.encoding == "text":
        texts = st.one_of(
            st.sampled_from(INTERESTING_TEXT), st.text(alphabet=" 0123456789.-+eE\\", min_size=size, max_size=size)
        )
        return st.one_of(texts.map(lambda t: t.encode("ascii")[:size].ljust(size, b" ")), raw)
    width = struct.calcsize(field.encoding)
    count = max(size // width, 1)
    if field.encoding == "<f":
        number = st.sampled_from([0.0, -1.0, 1e30, float("nan"), float("inf"), -float("inf"), 1e-30, 352.0])
    else:
        bits = 8 * width
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if field.encoding == "<h" else (0, 2**bits - 1)
        number = st.one_of(
            st.sampled_from([v for v in INTERESTING_INTS + (high, low, 2**31 - 1) if low <= v <= high]),
            st.integers(low, high),
        )
    packed = st.lists(number, min_size=count, max_size=count).map(
        lambda values: struct.pack("<" + field.encoding.lstrip("<>") * count if field.encoding[0] == "<"
                                   else ">" + field.encoding.lstrip("<>") * count, *values)
    )
    return st.one_of(packed.map(lambda b: b[:size].ljust(size, b"\0")), raw)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("io_fuzz")


@pytest.fixture(scope="module")
def loader() -> LoadRadiograph:
    return LoadRadiograph(max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def rss_guard() -> Iterator[None]:
    """Fail if the process peak RSS grew by more than :data:`RSS_GROWTH_BYTES` over the fuzz tests."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < RSS_GROWTH_BYTES, f"peak RSS grew by {grown / 2**20:.0f} MiB during the fuzz"


def _alarm(signum: int, frame: object) -> None:
    raise LoadHang(f"a load took more than {LOAD_SECONDS} s")


def check_load(loader: LoadRadiograph, path: Path, data: bytes) -> None:
    """Load ``data`` written to ``path`` and assert the outcome is a valid image or a RadiographLoadError."""
    path.write_bytes(data)
    previous = signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start()
    signal.setitimer(signal.ITIMER_REAL, LOAD_SECONDS)
    try:
        image = loader(path)
    except RadiographLoadError as error:
        image = error
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"load allocated {peak / 2**20:.0f} MiB"
    if isinstance(image, RadiographLoadError):
        assert image.path == str(path) and str(path) in str(image)
        event(f"refused: {image.reason.split('(')[0][:60]}")
        return
    event("loaded")
    assert isinstance(image, MetaTensor) and image.dtype == torch.float32
    assert image.ndim == 3 and image.shape[0] == 1
    rows, cols = image.shape[1:]
    assert rows >= 16 and cols >= 16 and rows * cols <= MAX_PIXELS
    assert bool(torch.isfinite(image).all())
    assert 0.0 <= float(image.min()) < float(image.max()) <= 1.0


FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEED_STRATEGY = st.sampled_from(SEEDS)


@pytest.mark.filterwarnings("ignore")
@settings(FUZZ_SETTINGS, max_examples=int(100 * SCALE))
@given(seed=SEED_STRATEGY, data=st.data())
def test_byte_flips(loader: LoadRadiograph, fuzz_dir: Path, rss_guard: None, seed: Seed, data: st.DataObject) -> None:
    mutated = bytearray(seed.data)
    header_end = min(len(mutated), 4096)
    positions = data.draw(
        st.lists(st.one_of(st.integers(0, header_end - 1), st.integers(0, len(mutated) - 1)), min_size=1, max_size=8)
    )
    for position in positions:
        mutated[position] ^= data.draw(st.integers(1, 255))
    check_load(loader, fuzz_dir / f"flip{seed.suffix}", bytes(mutated))


@pytest.mark.filterwarnings("ignore")
@settings(FUZZ_SETTINGS, max_examples=int(40 * SCALE))
@given(seed=SEED_STRATEGY, data=st.data())
def test_truncation(loader: LoadRadiograph, fuzz_dir: Path, rss_guard: None, seed: Seed, data: st.DataObject) -> None:
    keep = data.draw(st.one_of(st.integers(0, min(len(seed.data) - 1, 2048)), st.integers(0, len(seed.data) - 1)))
    check_load(loader, fuzz_dir / f"cut{seed.suffix}", seed.data[:keep])


@pytest.mark.filterwarnings("ignore")
@settings(FUZZ_SETTINGS, max_examples=int(150 * SCALE))
@given(seed=st.sampled_from([s for s in SEEDS if s.fields]), data=st.data())
def test_header_fields(
    loader: LoadRadiograph, fuzz_dir: Path, rss_guard: None, seed: Seed, data: st.DataObject
) -> None:
    mutated = bytearray(seed.data)
    count = data.draw(st.integers(1, min(3, len(seed.fields))))
    for field in data.draw(st.permutations(seed.fields))[:count]:
        mutated[field.offset : field.offset + field.length] = data.draw(field_value(field))
        event(f"field {field.name}")
    if seed.png_crc:
        fix_png_crc(mutated)
    check_load(loader, fuzz_dir / f"field{seed.suffix}", bytes(mutated))


def test_seeds_load_unmutated(loader: LoadRadiograph, fuzz_dir: Path) -> None:
    """The seeds themselves take the expected paths (so the fuzz starts from meaningful files)."""
    refused = {"emri_small_jpeg_2k_lossless.dcm"}  # multi-frame
    for seed in SEEDS:
        path = fuzz_dir / f"seed{seed.suffix}"
        path.write_bytes(seed.data)
        if seed.name in refused:
            with pytest.raises(RadiographLoadError, match="frames"):
                loader(path)
        else:
            image = loader(path)
            assert image.shape[0] == 1 and float(image.max()) > float(image.min()), seed.name
    by_name = {seed.name: seed for seed in SEEDS}
    assert {f.name for f in by_name["MR_small.dcm"].fields} >= {"Rows", "Columns", "BitsAllocated", "WindowWidth"}
    assert "LUTDescriptor" in {f.name for f in by_name["vlut_04.dcm"].fields}
