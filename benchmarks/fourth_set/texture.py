"""Noise fields of the fourth set: fractal value noise (fBm) and a Worley cell-edge net.

- :func:`fbm`: fractional Brownian motion as a sum of octaves of cubic-interpolated lattice noise, lattice
  doubling per octave and amplitude ``gain ** octave`` (not Fourier-synthesised power-law noise);
- :func:`cell_edges`: ``F2 - F1`` Worley noise (distance to the second nearest minus the nearest of jittered
  seed points), small on the borders between cells: a reticular (net-like) pattern.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom
from scipy.spatial import cKDTree

__all__ = ["fbm", "cell_edges"]


def fbm(rng: np.random.Generator, size: int, octaves: int = 5, base: int = 4, gain: float = 0.6) -> np.ndarray:
    """Zero-mean, unit-std ``size x size`` float32 fBm (lattice ``base * 2**o + 1`` cells per side at octave o)."""
    out = np.zeros((size, size), np.float32)
    for octave in range(octaves):
        cells = base * 2**octave + 1
        lattice = rng.standard_normal((cells, cells)).astype(np.float32)
        out += gain**octave * zoom(lattice, size / cells, order=3, grid_mode=True, mode="grid-wrap")[:size, :size]
    return (out - out.mean()) / max(float(out.std()), 1e-9)


def cell_edges(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """``size x size`` float32 ``F2 - F1`` distance (pixels) for seeds about ``cell`` pixels apart."""
    n = int(np.ceil(size / cell)) + 1
    grid = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    seeds = (grid + rng.uniform(0.0, 1.0, grid.shape)) * cell - 0.5 * cell
    pixels = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).reshape(-1, 2)
    dist, _ = cKDTree(seeds).query(pixels, k=2)
    return (dist[:, 1] - dist[:, 0]).reshape(size, size).astype(np.float32)
