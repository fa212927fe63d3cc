"""With ``seed`` set, CPU training through the train config is reproducible bit for bit.

Two runs with the same seed (random augmentation on, as by default) end with identical generator and
discriminator weights, memory queues and write pointers, optimiser states and score statistics; a run with
another seed ends elsewhere, so the equality cannot come from, say, nothing being trained or seeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from bundle_utils import TINY, run
from scripts.checkpoint import load_checkpoint
from scripts.data.synthetic import write_synthetic_dataset

N_TRAIN, BATCH = 12, 4  # 3 iterations: generator steps (and queue writes) at iterations 1 and 3


def _assert_identical(a: Any, b: Any, where: str) -> None:
    """Exact equality of two nested state dicts (tensors, numbers, lists, dicts)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _queue_keys(generator_state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k in generator_state if k.endswith(("queue.memory", "queue.ptr"))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("determinism_data") / "synthetic"
    return write_synthetic_dataset(root, n_train=N_TRAIN, n_val_normal=2, n_val_abnormal=2, n_test_normal=1,
                                   n_test_abnormal=1, size=64, seed=5)


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Final training state of three one-epoch runs: seed 0 twice, seed 1 once."""
    tmp = tmp_path_factory.mktemp("determinism_runs")
    states = {}
    for name, seed in (("first", 0), ("second", 0), ("other_seed", 1)):
        run(["train.json"], "train", "training", **{**TINY, "batch_size": BATCH}, dataset_dir=str(dataset),
            ckpt_dir=str(tmp / name), output_dir=str(tmp / "tb"), epochs=1, seed=seed, aug_prob=1.0)
        states[name] = load_checkpoint(tmp / name / "checkpoint_latest.pt")
    return states


def test_same_seed_gives_identical_training_state(trained: dict[str, dict[str, Any]]) -> None:
    first, second = trained["first"], trained["second"]
    assert first["trainer"]["iteration"] == N_TRAIN // BATCH
    queue = _queue_keys(first["generator"])
    assert len(queue) == 2, "expected the memory queue and its write pointer in the generator state"
    # two generator steps wrote 2 x BATCH queries into every position's queue
    ptr = next(k for k in queue if k.endswith("ptr"))
    assert int(first["generator"][ptr]) == 2 * BATCH % TINY["num_slots"]
    for part in ("generator", "discriminator", "g_optimizer", "d_optimizer", "g_lr_scheduler", "d_lr_scheduler",
                 "score_statistics", "trainer", "rng"):
        _assert_identical(first[part], second[part], part)


def test_other_seed_gives_other_training_state(trained: dict[str, dict[str, Any]]) -> None:
    first, other = trained["first"], trained["other_seed"]
    memory = next(k for k in _queue_keys(first["generator"]) if k.endswith("memory"))
    assert not torch.equal(first["generator"][memory], other["generator"][memory])
    weights = [k for k, v in first["generator"].items() if v.is_floating_point()]
    differing = [k for k in weights if not torch.equal(first["generator"][k], other["generator"][k])]
    assert len(differing) > len(weights) // 2, "another seed should change most of the weights"
    assert any(not torch.equal(v, other["discriminator"][k]) for k, v in first["discriminator"].items())
