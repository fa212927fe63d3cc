"""A fast PNG writer for clinical-size RGB overlays.

Pillow chooses a PNG filter for every row by trying all five (libpng's heuristic) and has no option to fix one; on a
2850 x 2636 overlay that search and the row packing take more time than the compression itself. Here every row gets
the "Up" filter (the difference to the row above: anatomy changes little from one row to the next), computed with
numpy a block of rows at a time, and zlib compresses the filtered rows with its run-length strategy (matches at
distance 1 only, which is what Up-filtered rows repeat). On the overlays of a trained model (2300-2850 pixels per side,
2026-12-01, scratch timings) that took 127-157 ms instead of Pillow's 283-446 ms with Huffman coding only, and the files
were 15-20 % smaller; with added noise, 2.6x faster at the same size. The file is a plain 8-bit RGB PNG that any
reader reads.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

__all__ = ["write_png_rgb"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2  # PNG filter type: each byte minus the byte above it
COLOUR_TYPE_RGB = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def write_png_rgb(path: str | os.PathLike, rgb: np.ndarray, block_rows: int = 256) -> None:
    """Write an ``H x W x 3`` ``uint8`` image to ``path`` as an 8-bit RGB PNG (an existing file is replaced).

    Rows are filtered and compressed ``block_rows`` at a time, each block's compressed bytes written as they come
    (one IDAT chunk per block), so the temporaries stay at one block whatever the image size.

    Raises:
        ValueError: ``rgb`` is not ``H x W x 3`` ``uint8`` with ``H, W >= 1``, or ``block_rows < 1``.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {rgb.shape} {rgb.dtype}.")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}.")
    height, width = rgb.shape[:2]
    rows = np.ascontiguousarray(rgb).reshape(height, width * 3)
    block = np.empty((min(block_rows, height), width * 3 + 1), dtype=np.uint8)
    block[:, 0] = FILTER_UP
    above = np.zeros(width * 3, dtype=np.uint8)  # the Up filter's row above the first row
    packer = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPE_RGB, 0, 0, 0)  # 8 bits, deflate, Adam7 off
    with open(path, "wb") as stream:
        stream.write(PNG_SIGNATURE + _chunk(b"IHDR", header))
        for start in range(0, height, block_rows):
            part = rows[start : start + block_rows]
            count = len(part)
            np.subtract(part[0], above, out=block[0, 1:])  # uint8 arithmetic wraps modulo 256, as PNG's does
            np.subtract(part[1:], part[:-1], out=block[1:count, 1:])
            above = part[-1]
            data = packer.compress(block[:count])
            if data:
                stream.write(_chunk(b"IDAT", data))
        stream.write(_chunk(b"IDAT", packer.flush()) + _chunk(b"IEND", b""))
