"""Render one image of the third set: voxelise the phantom along the rays, project, expose, process.

The attenuation (soft tissue = 1, per unit length) of a ray sample is
``body * (1 + bone) - air - lung * (1 - lung_density) * (1 - fill) - gap`` (see :mod:`.anatomy` and
:mod:`.findings`); its sum along each ray is the line integral ``A`` (units). The voxel grid has
``min(size, VOXELS)`` rays a side and :data:`DEPTH` samples per ray; ``A`` is resized to ``size`` and
vessels, parenchymal texture and foreign objects are added at full size before the detector and processing
(:mod:`.acquisition`). The mask is where the finding changes ``A`` by more than :data:`MASK_THRESHOLD`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

from benchmarks.second_set.texture import power_noise

from .acquisition import Acquisition, expose, foreign_objects, process
from .anatomy import Anatomy, air_occupancy, body_occupancy, bone_density, lung_occupancy
from .findings import Finding, bronchogram_contrast, finding_anatomy, finding_fields, hilum_points
from .geometry import ray_samples
from .vessels import splat_tubes, vessel_segments

__all__ = ["render", "line_integrals", "VOXELS", "DEPTH", "MASK_THRESHOLD"]

VOXELS = 80  # rays per side of the voxel grid (fewer when the image is smaller)
DEPTH = 44  # samples along each ray
MASK_THRESHOLD = 0.012  # change of the line integral (soft-tissue units) counted as the finding
TEXTURE = 0.025  # parenchymal texture amplitude per unit of lung path


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square image to ``size x size``."""
    if image.shape[0] == size:
        return image
    return zoom(image, size / image.shape[0], order=1, grid_mode=True, mode="nearest").astype(np.float32)


def line_integrals(anatomy: Anatomy, acq: Acquisition, n: int, finding: Finding | None = None) -> dict:
    """Projections (``n x n`` float32, units) of the phantom: ``"total"``, ``"lung"`` (aerated lung path
    weighted by ``1 - fill``) and, with a finding, ``"normal"`` (the same patient without it)."""
    x, y, z, step = ray_samples(acq.geometry, n, DEPTH)
    body = body_occupancy(anatomy, x, y, z)
    fixed = body * (1.0 + bone_density(anatomy, x, y, z)) - air_occupancy(anatomy, x, y, z)
    lung = lung_occupancy(anatomy, x, y, z)
    contrast = 1.0 - anatomy.lung_density
    out = {}
    if finding is not None:
        out["normal"] = (fixed - lung * contrast).sum(axis=2) * step
        changed = finding_anatomy(anatomy, finding)
        lung, gap, fill = finding_fields(changed, finding, x, y, z, None if changed is not anatomy else lung)
        out["total"] = (fixed - lung * contrast * (1.0 - fill) - gap).sum(axis=2) * step
        out["lung"] = (lung * (1.0 - fill)).sum(axis=2) * step
    else:
        out["total"] = (fixed - lung * contrast).sum(axis=2) * step
        out["lung"] = lung.sum(axis=2) * step
    return out


def _vessels(anatomy: Anatomy, acq: Acquisition, size: int, finding: Finding | None) -> np.ndarray:
    """Line integral of the vessel trees (grown in the patient without the finding; silhouetted, removed or
    kept by the finding) and of air bronchograms in a consolidation."""

    def inside(p: np.ndarray) -> np.ndarray:
        return lung_occupancy(anatomy, p[:, 0], p[:, 1], p[:, 2]) > 0.5

    segments = vessel_segments(np.random.default_rng(anatomy.vessel_seed), hilum_points(anatomy), inside)
    changed = finding_anatomy(anatomy, finding)
    mid = (segments[:, :3] + segments[:, 3:6]) / 2.0
    lung, _, fill = finding_fields(changed, finding, mid[:, 0], mid[:, 1], mid[:, 2])
    contrast = (1.0 - anatomy.lung_density) * np.clip(lung * 1.5, 0.0, 1.0) * (1.0 - fill)
    out = splat_tubes(acq.geometry, segments, contrast, size)
    air = bronchogram_contrast(changed, finding, segments)
    if np.any(air):
        bronchi = segments.copy()
        bronchi[:, :3] += 0.012
        bronchi[:, 3:6] += 0.012
        out += splat_tubes(acq.geometry, bronchi, air, size)
    return out


def render(
    anatomy: Anatomy, acq: Acquisition, size: int, finding: Finding | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: ``size x size`` float32 image in [0, 1] (bright = dense) and bool mask of the finding
    (empty without one)."""
    n = min(size, VOXELS)
    rays = line_integrals(anatomy, acq, n, finding)
    total = _resize(rays["total"], size)
    mask = np.zeros((size, size), bool)
    if finding is not None:
        mask = np.abs(_resize(rays["total"] - rays["normal"], size)) > MASK_THRESHOLD
    noise = np.random.default_rng(acq.noise_seed)
    texture = power_noise(noise, size, 2.8, low_cut=3.0) * TEXTURE * _resize(rays["lung"], size)
    total = total + texture + _vessels(anatomy, acq, size, finding) + foreign_objects(acq, anatomy, size)
    image = process(expose(total, acq, noise), acq)
    return image, mask
