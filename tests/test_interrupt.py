"""A training run killed at any moment leaves a loadable checkpoint, and ``--resume true`` finishes it exactly.

Every run is a real ``python -m monai.bundle run training`` process (cwd ``bundle/``). To kill one at a known
point, the test starts the same command line through this file as a wrapper,
``python tests/test_interrupt.py <pause point> <marker file> <monai.bundle arguments...>``, which patches the
bundle so that at that point the process writes ``marker`` and sleeps; the test waits for the marker and
sends SIGKILL to the process group. Pause points:

- ``iteration:N``: after the N-th training iteration (an Ignite handler the wrapper adds to the trainer);
- ``save:NAME:N``: inside the N-th ``torch.save`` whose target file name contains NAME, after half of the
  checkpoint's bytes have been written and flushed to disk.
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bundle_utils import BUNDLE, TINY

if str(BUNDLE) not in sys.path:  # when this file runs as the wrapper, outside pytest's conftest
    sys.path.insert(0, str(BUNDLE))

from scripts.checkpoint import load_checkpoint  # noqa: E402
from scripts.data.synthetic import write_synthetic_dataset  # noqa: E402

EPOCHS = 2
ITERATIONS_PER_EPOCH = 2  # 8 training images, batch 4
START_TIMEOUT_S = 300  # until the pause point: imports, caching, up to two epochs on a busy 2-core machine
RUN_TIMEOUT_S = 300
PAUSE_S = 600  # a paused child sleeps this long at most, should the test die before killing it


# ------------------------------------------------------------------------------------------------------------
# the wrapper (runs in the child process)
# ------------------------------------------------------------------------------------------------------------


def _pause(marker: Path, note: str) -> None:
    """Write ``note`` to ``marker`` atomically (the test polls for the file and reads it at once: a plain write
    could be seen created but still empty), then sleep until killed."""
    staged = marker.with_name(marker.name + ".tmp")
    staged.write_text(note)
    os.replace(staged, marker)
    time.sleep(PAUSE_S)


def _pause_after_iteration(n: int, marker: Path) -> None:
    """Make every :class:`SimSIDTrainer` pause after its ``n``-th iteration."""
    from ignite.engine import Events

    from scripts.engines import SimSIDTrainer

    original_init = SimSIDTrainer.__init__

    def init(self: SimSIDTrainer, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.add_event_handler(Events.ITERATION_COMPLETED(once=n), lambda engine: _pause(marker, f"iteration {n}"))

    SimSIDTrainer.__init__ = init


def _pause_in_save(name: str, n: int, marker: Path) -> None:
    """Make the ``n``-th ``torch.save`` into a file named like ``name`` write half of its bytes, then pause."""
    real_save: Callable[..., None] = torch.save
    calls = 0

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        target = os.path.basename(str(getattr(f, "name", f)))
        if name in target:
            calls += 1
            if calls == n:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _pause(marker, target)
        real_save(obj, f, *args, **kwargs)

    torch.save = save


def _wrapper_main(argv: list[str]) -> None:
    """``<pause point> <marker> <monai.bundle arguments...>``: patch, then run ``python -m monai.bundle``."""
    point, marker, cli_args = argv[0], Path(argv[1]), argv[2:]
    sys.path.insert(0, os.getcwd())  # as `python -m` does, so the configs' `$import scripts` finds bundle/scripts
    kind, *params = point.split(":")
    if kind == "iteration":
        _pause_after_iteration(int(params[0]), marker)
    elif kind == "save":
        _pause_in_save(params[0], int(params[1]), marker)
    else:
        raise ValueError(f"unknown pause point {point!r}")
    sys.argv = ["monai.bundle", *cli_args]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


# ------------------------------------------------------------------------------------------------------------
# the tests (run in pytest)
# ------------------------------------------------------------------------------------------------------------


def _cli_args(dataset: Path, ckpt_dir: Path, output_dir: Path, **override: Any) -> list[str]:
    """``run training`` arguments of ``python -m monai.bundle`` for a tiny run, as a user types them."""
    args = {**TINY, "dataset_dir": dataset, "ckpt_dir": ckpt_dir, "output_dir": output_dir, "epochs": EPOCHS,
            **override}
    cli = ["run", "training", "--config_file", "configs/train.json", "--meta_file", "configs/metadata.json",
           "--logging_file", "configs/logging.conf"]
    for key, value in args.items():
        cli += [f"--{key}", str(value)]
    return cli


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def _run_cli(cli: list[str], log: Path) -> None:
    """Run ``python -m monai.bundle <cli>`` to the end; fail with the log's tail if it fails."""
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", *cli], cwd=BUNDLE, env=_env(), stdout=out,
                              stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"run failed ({proc.returncode}):\n{_tail(log)}"


def _kill_at(point: str, cli: list[str], tmp_path: Path) -> str:
    """Run the CLI through the wrapper until it pauses at ``point``, then SIGKILL it; returns the marker's note."""
    marker, log = tmp_path / "paused", tmp_path / "killed_run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, point, str(marker), *cli], cwd=BUNDLE, env=_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not marker.exists():
            assert proc.poll() is None, f"run ended ({proc.returncode}) before {point}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"run did not reach {point} in {START_TIMEOUT_S} s:\n{_tail(log)}"
            time.sleep(0.2)
        return marker.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["trainer"]["iteration"] == EPOCHS * ITERATIONS_PER_EPOCH
    assert a["trainer"] == b["trainer"]  # Ignite's engine state: iteration, epoch_length, max_epochs
    for net in ("generator", "discriminator"):  # the generator state holds the memory queues and their pointers
        assert a[net].keys() == b[net].keys()
        for k, v in a[net].items():
            assert torch.equal(v, b[net][k]), f"{net}.{k}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interrupt_data") / "synthetic"
    return write_synthetic_dataset(root, n_train=4 * ITERATIONS_PER_EPOCH, n_val_normal=2, n_val_abnormal=2,
                                   n_test_normal=1, n_test_abnormal=1, size=64, seed=3)


@pytest.fixture(scope="module")
def uninterrupted(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The final checkpoint of the same run, never interrupted."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    _run_cli(_cli_args(dataset, tmp / "models", tmp / "runs"), tmp / "run.log")
    return load_checkpoint(tmp / "models" / "checkpoint_latest.pt")


def test_fire_is_installed() -> None:
    """``python -m monai.bundle`` parses its command line with ``fire``: without it nothing here can run."""
    import importlib.util

    assert importlib.util.find_spec("fire") is not None, "pip install -r requirements.txt (it lists fire)"


def test_kill_mid_epoch_then_resume(dataset: Path, uninterrupted: dict[str, Any], tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "models"
    cli = _cli_args(dataset, ckpt_dir, tmp_path / "runs")
    _kill_at(f"iteration:{ITERATIONS_PER_EPOCH + 1}", cli, tmp_path)  # first iteration of epoch 2

    # the checkpoint of epoch 1 is intact and complete, and nothing half-written is left
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint_best.pt", "checkpoint_latest.pt", "model.pt"]
    assert load_checkpoint(ckpt_dir / "checkpoint_latest.pt")["trainer"]["iteration"] == ITERATIONS_PER_EPOCH

    _run_cli(cli + ["--resume", "true"], tmp_path / "resumed.log")
    # the resumed run redid epoch 2 from the epoch-1 state: the same weights and queues as never stopping
    _assert_same_training_state(load_checkpoint(ckpt_dir / "checkpoint_latest.pt"), uninterrupted)


def test_kill_mid_checkpoint_write_then_resume(dataset: Path, uninterrupted: dict[str, Any], tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "models"
    cli = _cli_args(dataset, ckpt_dir, tmp_path / "runs")
    partial_name = _kill_at("save:checkpoint_latest:2", cli, tmp_path)  # the write at the end of epoch 2

    # the half-written temporary file is there and unreadable: the kill did land inside the write ...
    partial = ckpt_dir / partial_name
    assert partial.is_file() and partial.name.startswith(".checkpoint_latest.pt.")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(partial)
    # ... and the checkpoint it was to replace is still the complete one of epoch 1
    assert load_checkpoint(ckpt_dir / "checkpoint_latest.pt")["trainer"]["iteration"] == ITERATIONS_PER_EPOCH
    for name in ("checkpoint_best.pt", "model.pt"):
        load_checkpoint(ckpt_dir / name)

    log = tmp_path / "resumed.log"
    _run_cli(cli + ["--resume", "true"], log)
    _assert_same_training_state(load_checkpoint(ckpt_dir / "checkpoint_latest.pt"), uninterrupted)
    # the resumed run removed the partial file, and said so
    assert not partial.exists()
    assert "partial checkpoint" in log.read_text()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint_best.pt", "checkpoint_latest.pt", "model.pt"]


if __name__ == "__main__":
    _wrapper_main(sys.argv[1:])
