"""ProgressLogger: images done, rate and time left, at most every interval seconds, one line at the end."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from ignite.engine import Engine
from torch.utils.data import DataLoader

import scripts.progress as progress
from scripts.progress import EpochProgressLogger, ProgressLogger, format_duration


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0 s"), (44.2, "45 s"), (59.5, "1 min"), (60, "1 min"), (61, "2 min"), (3600, "1 h 00 min"), (7385, "2 h 04 min"),
     (-3, "0 s"), (float("inf"), "unknown")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def _run(data, interval: float, seconds_per_iteration: float, monkeypatch, caplog) -> list[str]:
    """Run an engine over ``data`` whose every iteration takes ``seconds_per_iteration`` on a fake clock."""
    clock = [1000.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # this module's clock only

    def step(engine, batch):
        clock[0] += seconds_per_iteration

    engine = Engine(step)
    ProgressLogger(interval, verb="scored").attach(engine)
    with caplog.at_level(logging.INFO, logger="scripts.progress"):
        engine.run(data)
    return [r.getMessage() for r in caplog.records if r.name == "scripts.progress"]


def test_lines_follow_the_interval_and_the_end_is_logged_once(monkeypatch, caplog) -> None:
    lines = _run(DataLoader(range(10), batch_size=2), 30, 12, monkeypatch, caplog)
    # 12 s per batch of 2: the first line after 36 s (6 images), then none until the end at 60 s
    assert lines == ["scored 6 / 10 images (0.17 images/s, about 24 s left)",
                     "scored 10 / 10 images (0.17 images/s, 1 min in all)"]


def test_interval_zero_logs_every_iteration_and_the_last_batch_may_be_smaller(monkeypatch, caplog) -> None:
    lines = _run(DataLoader(range(5), batch_size=2), 0, 1, monkeypatch, caplog)
    assert [line.split(" (")[0] for line in lines] == ["scored 2 / 5 images", "scored 4 / 5 images", "scored 5 / 5 images"]


def test_without_a_batch_size_batches_are_counted(monkeypatch, caplog) -> None:
    lines = _run([[1, 2], [3, 4], [5]], 1e9, 5, monkeypatch, caplog)
    assert lines == ["scored 3 / 3 batches (0.20 batches/s, 15 s in all)"]


@pytest.mark.parametrize("interval", [-1, "soon", float("nan"), None])
def test_bad_interval_is_refused(interval) -> None:
    with pytest.raises(ValueError, match="progress interval"):
        ProgressLogger(interval)


def _train(monkeypatch, caplog, resume_from_epoch: int = 0) -> list[str]:
    """Four epochs of two 10-second iterations on a fake clock, optionally resumed after ``resume_from_epoch``."""
    clock = [50.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def step(engine, batch):
        clock[0] += 10

    engine = Engine(step)
    EpochProgressLogger().attach(engine)
    if resume_from_epoch:
        engine.load_state_dict({"epoch": resume_from_epoch, "max_epochs": 4, "epoch_length": 2})
    with caplog.at_level(logging.INFO, logger="scripts.progress"):
        engine.run([1, 2], max_epochs=4)
    return [r.getMessage() for r in caplog.records if r.name == "scripts.progress"]


def test_epoch_lines_give_the_time_per_epoch_and_the_time_left(monkeypatch, caplog) -> None:
    assert _train(monkeypatch, caplog) == [
        "epoch 1 / 4 done (20 s per epoch, about 1 min left)",
        "epoch 2 / 4 done (20 s per epoch, about 40 s left)",
        "epoch 3 / 4 done (20 s per epoch, about 20 s left)",
        "epoch 4 / 4 done (20 s per epoch, about 0 s left)",
    ]


def test_a_resumed_run_counts_only_its_own_epochs(monkeypatch, caplog) -> None:
    assert _train(monkeypatch, caplog, resume_from_epoch=2) == [
        "epoch 3 / 4 done (20 s per epoch, about 20 s left)",
        "epoch 4 / 4 done (20 s per epoch, about 0 s left)",
    ]
