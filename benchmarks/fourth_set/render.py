"""Rendering one image of the fourth set: layers -> (finding) -> line integral -> detector -> processing."""

from __future__ import annotations

import numpy as np

from .acquisition import Acquisition, expose
from .anatomy import Patient
from .devices import Stroke
from .findings import Finding, apply_finding, finding_mask
from .layers import anatomy_layers, attenuation
from .processing import process

__all__ = ["render"]


def render(patient: Patient, acquisition: Acquisition, strokes: list[Stroke], size: int,
           finding: Finding | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: displayed ``size x size`` float32 in [0, 1] (bright = dense) and bool mask (empty
    without a finding). The same patient, acquisition and noise render with and without the finding."""
    normal = anatomy_layers(patient, size, strokes)
    if finding is None:
        return process(expose(attenuation(normal), acquisition), acquisition), np.zeros((size, size), bool)
    abnormal = apply_finding(normal, patient, finding)
    image = process(expose(attenuation(abnormal), acquisition), acquisition)
    return image, finding_mask(normal, abnormal)
