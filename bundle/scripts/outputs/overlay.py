"""The anomaly map as a heatmap over the displayed radiograph (the overlay PNG and DICOM Secondary Capture)."""

from __future__ import annotations

import matplotlib
import numpy as np

__all__ = ["OVERLAY_BLOCK_ROWS", "render_overlay"]

OVERLAY_BLOCK_ROWS = 256  # render_overlay blends this many rows at a time


def render_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    vmax: float = 0.25,
    alpha: float = 0.6,
    cmap: str = "jet",
    vmin: float = 0.0,
) -> np.ndarray:
    """Heatmap of an anomaly map blended over the grey radiograph.

    The map is shown on a fixed scale ``[vmin, vmax]`` (not per image, so colours compare across images) and
    its opacity grows with its value (``alpha * (map - vmin) / (vmax - vmin)``, none at or below ``vmin``), so
    normal regions show the radiograph. The
    result equals :func:`monai.visualize.blend_images` with that alpha and ``rescale_arrays=False``; the colour
    map is applied as a table lookup (the colours matplotlib gives), without the float64 RGBA intermediate,
    which makes it about five times faster on a clinical-size radiograph. Rows are blended in blocks, so its
    float temporaries stay at a few MB however large the radiograph (writers render several at once).

    Args:
        image: ``H x W`` displayed radiograph in ``[0, 1]``.
        anomaly_map: ``H x W`` anomaly map, same size.
        vmax: map value shown at full colour and opacity.
        alpha: largest opacity of the heatmap.
        cmap: matplotlib colour map.
        vmin: map value below which nothing is shown, < ``vmax``.

    Returns:
        ``H x W x 3`` ``uint8`` RGB.
    """
    if image.shape != anomaly_map.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and anomaly map {anomaly_map.shape} must be the same H x W.")
    if not vmin < vmax:
        raise ValueError(f"the overlay's vmin ({vmin}) must be below its vmax ({vmax}).")
    colour_map = matplotlib.colormaps[cmap]
    table = colour_map(np.arange(colour_map.N))[:, :3].astype(np.float32)
    rgb = np.empty((*image.shape, 3), dtype=np.uint8)
    for start in range(0, image.shape[0], OVERLAY_BLOCK_ROWS):  # bounded float temporaries, whatever the size
        rows = slice(start, start + OVERLAY_BLOCK_ROWS)
        level = np.clip((np.asarray(anomaly_map[rows], dtype=np.float32) - vmin) / (vmax - vmin), 0.0, 1.0)
        index = np.minimum((level * colour_map.N).astype(np.intp), colour_map.N - 1)  # matplotlib's value -> colour
        weight = (alpha * level)[..., None]
        grey = np.clip(np.asarray(image[rows], dtype=np.float32), 0.0, 1.0)[..., None]
        rgb[rows] = np.rint(((1.0 - weight) * grey + weight * table[index]) * 255).clip(0, 255)
    return rgb
