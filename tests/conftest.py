"""Test set-up: make the bundle's ``scripts`` package and ``benchmarks`` importable and keep CPU use bounded."""

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
for path in (REPO_ROOT, BUNDLE_ROOT):  # ``benchmarks.*`` (code only benchmarks and their tests use) and ``scripts.*``
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# one thread: on a 2-core machine, 2 OpenMP threads slow down many-fold as soon as anything else runs
torch.set_num_threads(1)


@pytest.fixture
def bundle_root() -> Path:
    """Path of the bundle folder (``bundle/``)."""
    return BUNDLE_ROOT
