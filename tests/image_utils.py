"""Image helpers shared by the tests of the synthetic generators."""

from __future__ import annotations

import numpy as np


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation of a 2-D boolean mask by a (2 * pixels + 1) square."""
    padded = np.pad(mask, pixels)
    out = np.zeros_like(mask)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            out |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out
