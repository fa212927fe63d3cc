"""Atomic checkpoint writes and random-state capture."""

import logging
import random

import numpy as np
import pytest
import torch
from monai.data.utils import set_rnd
from monai.transforms import Compose, RandAffined, RandGaussianNoised, ScaleIntensityd

from scripts import checkpoint as ckpt_mod
from scripts.checkpoint import RNGState, find_randomizable, load_checkpoint, save_atomic


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


def _augmentation():
    """A training-like preprocessing: a deterministic transform, then nested random ones."""
    return Compose([
        ScaleIntensityd(keys="image"),
        RandAffined(keys="image", prob=1.0, translate_range=(4, 4), scale_range=(0.1, 0.1), padding_mode="border"),
        RandGaussianNoised(keys="image", prob=0.5),
    ])


def _draws(transform, n=3):
    """``n`` augmentations of the same image, stacked: (n, 1, 16, 16)."""
    image = torch.arange(256.0).reshape(1, 16, 16)
    return torch.stack([transform({"image": image})["image"].as_tensor() for _ in range(n)])


def test_find_randomizable_names_nested_transforms():
    transform = _augmentation()
    found = find_randomizable(transform)
    assert list(found) == ["root", "root.transforms.1", "root.transforms.1.rand_affine",
                           "root.transforms.1.rand_affine.rand_affine_grid", "root.transforms.2",
                           "root.transforms.2.rand_gaussian_noise"]
    assert found["root.transforms.1.rand_affine.rand_affine_grid"] is transform.transforms[1].rand_affine.rand_affine_grid
    assert list(find_randomizable([transform.transforms[2]])) == ["root.0", "root.0.rand_gaussian_noise"]


def test_rng_state_round_trip(tmp_path):
    transform = _augmentation().set_random_state(seed=5)
    state = RNGState(transforms=transform)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in the global NumPy state
    _draws(transform)  # the transforms' generators are not at their seed
    save_atomic({"rng": state.state_dict()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.standard_normal(), torch.rand(1).item())
    expected_draws = _draws(transform)

    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rnd(transform, 9)  # as a newly built DataLoader does
    assert not torch.equal(_draws(transform), expected_draws)
    state.load_state_dict(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.standard_normal(), torch.rand(1).item()) == expected
    assert torch.equal(_draws(transform), expected_draws)


def test_rng_state_loads_checkpoints_without_transform_states(tmp_path, caplog):
    """Checkpoints of older versions restore the global generators and warn that augmentation will differ."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    old = RNGState().state_dict()
    for key in ("transforms", "numpy_has_gauss", "numpy_cached_gaussian"):
        del old[key]
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    with caplog.at_level(logging.WARNING, logger="scripts.checkpoint"):
        RNGState(transforms=_augmentation()).load_state_dict(old)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert "no random state of the augmentation transforms" in caplog.text


def test_rng_state_warns_when_the_random_transforms_changed(caplog):
    saved = RNGState(transforms=_augmentation()).state_dict()
    transform = Compose([RandAffined(keys="image", prob=1.0, translate_range=(4, 4))]).set_random_state(seed=1)
    with caplog.at_level(logging.WARNING, logger="scripts.checkpoint"):
        RNGState(transforms=transform).load_state_dict(saved)
    assert "root.transforms.2" in caplog.text  # the saved noise transform has no counterpart now
    assert "root.transforms.0" in caplog.text  # the new first transform has no saved state


def _detector(img_size: int) -> torch.nn.Module:
    """A tiny module with the detector's per-pixel statistics and a size-dependent weight."""
    from scripts.detector import ScoreStatistics

    module = torch.nn.Module()
    module.statistics = ScoreStatistics(img_size)
    module.head = torch.nn.Linear(img_size * img_size, 1)
    return module


def test_checkpoint_loader_names_the_trained_img_size(tmp_path):
    from ignite.engine import Engine

    from scripts.checkpoint import CheckpointFileLoader

    path = tmp_path / "model.pt"
    trained = _detector(16)
    trained.head.weight.data.fill_(0.25)
    save_atomic(trained.state_dict(), path)
    engine = Engine(lambda e, b: None)
    with pytest.raises(ValueError, match=r"model\.pt does not fit .*img_size 16, this config builds 32: pass '--img_size 16'"):
        CheckpointFileLoader(load_path=path, load_dict={"model": _detector(32)})(engine)
    same_size = _detector(16)
    same_size.extra = torch.nn.Linear(2, 2)  # another setting differs: the message cannot name it, says what to pass
    with pytest.raises(ValueError, match="pass the network settings it was trained with"):
        CheckpointFileLoader(load_path=path, load_dict={"model": same_size})(engine)
    fits = _detector(16)
    CheckpointFileLoader(load_path=path, load_dict={"model": fits})(engine)
    assert torch.equal(fits.head.weight, torch.full((1, 256), 0.25))


def test_checkpoint_loader_reports_an_unreadable_file(tmp_path):
    from ignite.engine import Engine

    from scripts.checkpoint import CheckpointFileLoader

    path = tmp_path / "model.pt"
    save_atomic(_detector(16).state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"model\.pt cannot be read"):
        CheckpointFileLoader(load_path=path, load_dict={"model": _detector(16)})(Engine(lambda e, b: None))
