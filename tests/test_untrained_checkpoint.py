"""Tests of the untrained baseline's checkpoint (``benchmarks/untrained_checkpoint.py``): the weights are the
config's detector at its seeded initialisation (same seed, same weights; another seed, other weights), the file
loads strictly into the detector evaluation builds, and an existing model is never overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.untrained_checkpoint import write_untrained_checkpoint


def test_seeded_weights_that_load_into_the_evaluated_detector(tmp_path: Path) -> None:
    first = torch.load(write_untrained_checkpoint(tmp_path / "a", img_size=32, seed=3), weights_only=True)
    again = torch.load(write_untrained_checkpoint(tmp_path / "b", img_size=32, seed=3), weights_only=True)
    other = torch.load(write_untrained_checkpoint(tmp_path / "c", img_size=32, seed=4), weights_only=True)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    conv = "generator.stem.conv_in.conv.weight"
    assert conv in first and not torch.equal(first[conv], other[conv])

    from monai.bundle import ConfigParser

    from benchmarks.untrained_checkpoint import BUNDLE

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "img_size": 32, "seed": 9})
    detector = parser.get_parsed_content("detector")
    detector.load_state_dict(first)
    assert torch.equal(detector.state_dict()[conv], first[conv])


def test_never_overwrites_a_model(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"trained weights")
    with pytest.raises(FileExistsError, match="new --ckpt_dir"):
        write_untrained_checkpoint(tmp_path, img_size=32)
    assert model.read_bytes() == b"trained weights"
