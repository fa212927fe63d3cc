"""Pulmonary vessels of the fourth set grown by space colonisation, radii by Murray's law.

In each lung, attraction points are scattered over the lung (patient-frame grid, denser centrally); branches
start from two or three hilar roots and grow in steps towards the mean direction of the attraction points
that have them as nearest node within the influence radius; points closer than the kill distance to a node
are removed (Runions et al., 2005). Leaves get radius ``r0`` and every parent ``(sum r_child^3)^(1/3)``
(Murray), so vessels thin out towards the periphery by construction rather than by a fade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import Patient, grid_to_patient, outline, patient_grid

__all__ = ["VesselTree", "grow_trees"]


@dataclass(frozen=True)
class VesselTree:
    """Nodes ``N x 2`` (patient frame), ``parent`` index per node (-1 at a root), ``radius`` per node."""

    nodes: np.ndarray
    parent: np.ndarray
    radius: np.ndarray


def _colonise(rng: np.random.Generator, attract: np.ndarray, roots: np.ndarray, step: float = 0.04,
              influence: float = 0.3, kill: float = 0.06, iterations: int = 40) -> VesselTree:
    nodes, parent = [r for r in roots], [-1] * len(roots)
    for _ in range(iterations):
        if len(attract) == 0:
            break
        pts = np.asarray(nodes)
        dist = np.linalg.norm(attract[:, None] - pts[None], axis=2)
        nearest = dist.argmin(axis=1)
        close = dist[np.arange(len(attract)), nearest] < influence
        if not close.any():
            break
        direction = (attract[close] - pts[nearest[close]]) / dist[close, nearest[close]][:, None]
        sums = np.zeros_like(pts)
        np.add.at(sums, nearest[close], direction)
        growing = np.flatnonzero(np.linalg.norm(sums, axis=1) > 1e-6)
        heading = sums[growing] / np.linalg.norm(sums[growing], axis=1, keepdims=True)
        heading += rng.normal(0.0, 0.15, heading.shape)
        new = pts[growing] + step * heading / np.linalg.norm(heading, axis=1, keepdims=True)
        nodes.extend(new)
        parent.extend(growing.tolist())
        alive = np.linalg.norm(attract[:, None] - np.asarray(nodes)[None], axis=2).min(axis=1) > kill
        attract = attract[alive]
    parent_arr = np.asarray(parent)
    cubed = np.full(len(nodes), 0.0055**3)
    has_child = np.zeros(len(nodes), bool)
    has_child[parent_arr[parent_arr >= 0]] = True
    cubed[has_child] = 0.0
    for i in range(len(nodes) - 1, -1, -1):  # children always come after their parent
        if parent_arr[i] >= 0:
            cubed[parent_arr[i]] += cubed[i]
    return VesselTree(np.asarray(nodes), parent_arr, np.cbrt(cubed))


def grow_trees(patient: Patient) -> list[VesselTree]:
    """One vessel tree per lung of ``patient`` (deterministic in ``patient.seed``)."""
    rng = np.random.default_rng([patient.seed, 1])
    trees = []
    for part in ("lung_right", "lung_left"):
        rows, cols = np.nonzero(patient_grid(patient, (part,)))
        cells = grid_to_patient(rows, cols)
        medial = outline(patient, part)
        hilum = np.array([medial[:, 0].max() - 0.06 if part == "lung_right" else medial[:, 0].min() + 0.06,
                          0.5 * (medial[:, 1].min() + medial[:, 1].max()) + 0.02])
        side = 1.0 if part == "lung_right" else -1.0
        weight = 0.4 + np.exp(-np.sum((cells - hilum) ** 2, axis=1) / 0.5)
        pick = rng.choice(len(cells), size=min(260, len(cells)), replace=False, p=weight / weight.sum())
        attract = cells[pick] + rng.uniform(-0.0125, 0.0125, (len(pick), 2))
        roots = hilum + np.array([(0.0, -0.12), (0.02 * side, 0.0), (0.0, 0.12)])[: int(rng.integers(2, 4))]
        trees.append(_colonise(rng, attract, roots))
    return trees
