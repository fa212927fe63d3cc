"""The anomaly map as a 2-D NIfTI file that overlays its source in NIfTI viewers."""

from __future__ import annotations

import logging
import os
import zlib

import nibabel as nib
import numpy as np

__all__ = ["source_affine", "write_gzip_huffman", "write_nifti_map"]

logger = logging.getLogger(__name__)


def source_affine(source: str | os.PathLike) -> np.ndarray:
    """The affine of a NIfTI source (header only), identity for other formats."""
    if str(source).lower().endswith((".nii", ".nii.gz")):
        try:
            return np.asarray(nib.load(source).affine)
        except Exception as exc:  # the image loaded, so this is unexpected; the map is still useful
            logger.warning("%s: affine unreadable (%s); anomaly map written with an identity affine.", source, exc)
    return np.eye(4)


def write_nifti_map(path: str | os.PathLike, anomaly_map: np.ndarray, affine: np.ndarray) -> None:
    """Write an ``H x W`` map as float32 NIfTI, voxel ``(i, j)`` = (column, row) as NIfTI viewers index 2-D images.

    A path ending in ``.gz`` is compressed by :func:`write_gzip_huffman`; any other is written uncompressed.
    """
    # the transposed view, which NIfTI's column-major voxel order stores as the map's own row-major bytes, so
    # nibabel writes it without a copy (a C-contiguous copy would be transposed back: 0.11 s per clinical-size map)
    nifti = nib.Nifti1Image(np.asarray(anomaly_map, dtype=np.float32).T, affine)
    if str(path).endswith(".gz"):
        write_gzip_huffman(path, nifti.to_bytes())
    else:
        nifti.to_filename(path)


def write_gzip_huffman(path: str | os.PathLike, data: bytes, chunk_bytes: int = 1 << 22) -> None:
    """Write ``data`` to ``path`` as a gzip file (any gzip reader inflates it), compressed with Huffman coding only,
    ``chunk_bytes`` at a time (the compressed file is never held in memory).

    A float32 anomaly map gives LZ77 almost no repeated strings: on a clinical-size map (27 MB) this takes 0.32 s
    against 0.71 s for zlib's level 1, which nibabel uses, for the same size (84 % of the raw bytes).
    """
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)
    view = memoryview(data)
    with open(path, "wb") as stream:
        for start in range(0, len(view), chunk_bytes):
            stream.write(packer.compress(view[start : start + chunk_bytes]))
        stream.write(packer.flush())
