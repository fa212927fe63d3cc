"""Atomic checkpoint writes and random-state capture."""

import random

import numpy as np
import pytest
import torch

from scripts import checkpoint as ckpt_mod
from scripts.checkpoint import RNGState, load_checkpoint, save_atomic


def test_save_atomic_keeps_previous_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pt"
    save_atomic({"epoch": 1, "w": torch.arange(4.0)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    restored = load_checkpoint(path)
    assert restored["epoch"] == 1 and torch.equal(restored["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]  # no temp file left behind


def test_load_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "model.pt"
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_checkpoint(missing)
    truncated = tmp_path / "cut.pt"
    save_atomic({"a": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.pt"):
        load_checkpoint(truncated)


def test_rng_state_round_trip(tmp_path):
    state = RNGState()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_atomic({"rng": state.state_dict()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state.load_state_dict(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
