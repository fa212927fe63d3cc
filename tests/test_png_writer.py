"""The overlay PNG writer: files any reader decodes to the same pixels, for any size and block size."""

from __future__ import annotations

import zlib
from pathlib import Path

import itk
import numpy as np
import pytest
from PIL import Image

from scripts.outputs.png import write_png_rgb


def _read_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.verify()  # chunk CRCs and structure
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (300, 17), (64, 129)])
@pytest.mark.parametrize("block_rows", [1, 7, 256])
def test_random_pixels_round_trip(tmp_path: Path, shape: tuple[int, int], block_rows: int) -> None:
    rgb = np.random.default_rng(sum(shape) + block_rows).integers(0, 256, (*shape, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    write_png_rgb(path, rgb, block_rows=block_rows)
    np.testing.assert_array_equal(_read_pillow(path), rgb)


def test_itk_reads_the_same_pixels(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (70, 45, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    write_png_rgb(path, rgb, block_rows=16)  # several IDAT chunks
    np.testing.assert_array_equal(itk.array_from_image(itk.imread(str(path))), rgb)


def test_non_contiguous_input_and_replacing_a_file(tmp_path: Path) -> None:
    base = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    view = base[::2, ::3]  # strided view
    path = tmp_path / "x.png"
    path.write_bytes(b"an older, longer file " * 1000)
    write_png_rgb(path, view)
    np.testing.assert_array_equal(_read_pillow(path), view)


def test_smooth_images_compress(tmp_path: Path) -> None:
    """Up-filtered rows of a smooth image are nearly all 0 or 1: the file is a small fraction of the raw pixels."""
    vertical = np.linspace(0, 255, 512)[:, None] * np.ones((1, 400))
    horizontal = np.ones((512, 1)) * np.linspace(0, 255, 400)[None, :]
    rgb = np.stack([vertical, horizontal, np.full_like(vertical, 80)], axis=-1).astype(np.uint8)
    path = tmp_path / "x.png"
    write_png_rgb(path, rgb)
    np.testing.assert_array_equal(_read_pillow(path), rgb)
    assert path.stat().st_size < 0.15 * rgb.nbytes  # 8.7 % here; stored uncompressed it would be over 100 %
    raw = zlib.decompress(b"".join(_idat_payloads(path.read_bytes())))
    assert len(raw) == 512 * (400 * 3 + 1) and set(raw[:: 400 * 3 + 1]) == {2}  # every row Up-filtered


def _idat_payloads(data: bytes) -> list[bytes]:
    payloads, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        if data[offset + 4 : offset + 8] == b"IDAT":
            payloads.append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return payloads


@pytest.mark.parametrize(
    "rgb",
    [
        np.zeros((4, 4, 3), dtype=np.float32),
        np.zeros((4, 4), dtype=np.uint8),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((0, 4, 3), dtype=np.uint8),
    ],
)
def test_refuses_what_is_not_rgb_uint8(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        write_png_rgb(tmp_path / "x.png", rgb)
    assert not (tmp_path / "x.png").exists()


def test_refuses_block_rows_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="block_rows"):
        write_png_rgb(tmp_path / "x.png", np.zeros((2, 2, 3), dtype=np.uint8), block_rows=0)
