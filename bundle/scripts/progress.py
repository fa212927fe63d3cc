"""Progress of long runs, as log lines.

MONAI's ``StatsHandler`` logs losses per iteration; an evaluator or an inference run has no loss to log, and on a
folder of thousands of clinical images it runs for hours. :class:`ProgressLogger` logs how many images are done, the
rate and the time left, at most every ``interval`` seconds; :class:`EpochProgressLogger` logs after every training
epoch the time per epoch and the time left. Both log through ``logging``, so the lines land wherever
``logging.conf`` sends the bundle's logs, a terminal or a pipeline's log file alike.
"""

from __future__ import annotations

import logging
import math
import time

from ignite.engine import Engine, Events

__all__ = ["EpochProgressLogger", "ProgressLogger", "format_duration"]

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"2 h 05 min"``: a remaining time, rounded up to what a person needs."""
    if not math.isfinite(seconds):
        return "unknown"
    whole = math.ceil(max(0.0, seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = math.ceil(whole / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class ProgressLogger:
    """Logs ``"<verb> 320 / 10000 images (1.3 images/s, about 2 h 03 min left)"`` during an engine's run.

    Images done are counted from the iterations and the data loader's batch size (the last batch may be smaller), the
    total from its sampler's length (this process's images); without those it counts batches. A line is logged after
    the first iteration that ends at least ``interval`` seconds after the previous line (or the start), and one when
    the epoch completes unless its last iteration was just logged.

    Args:
        interval: least seconds between two log lines; ``0`` logs every iteration.
        verb: what is being done to the images, e.g. ``"scored"``.
    """

    def __init__(self, interval: float = 30.0, verb: str = "processed") -> None:
        try:
            self.interval = float(interval)
        except (TypeError, ValueError):
            self.interval = math.nan
        if not self.interval >= 0:  # refuses negatives, NaN and what is not a number
            raise ValueError(f"progress interval must be a number of seconds >= 0, got {interval!r}.")
        self.verb = verb
        self._start = self._last = 0.0
        self._logged_iteration = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._start = self._last = time.monotonic()
        self._logged_iteration = 0

    def _iteration_completed(self, engine: Engine) -> None:
        if time.monotonic() - self._last >= self.interval:
            self._log(engine)

    def _completed(self, engine: Engine) -> None:
        if self._logged_iteration != engine.state.iteration:  # not already logged by the last iteration
            self._log(engine)

    def _counts(self, engine: Engine) -> tuple[int, int | None, str]:
        """(done, total or None, unit) for the current epoch."""
        iteration = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        loader = engine.state.dataloader
        batch_size = getattr(loader, "batch_size", None)
        try:
            total = len(loader.sampler)  # type: ignore[union-attr]
        except (AttributeError, TypeError):
            total = None
        if batch_size and total is not None:
            return min(iteration * batch_size, total), total, "images"
        return iteration, engine.state.epoch_length, "batches"

    def _log(self, engine: Engine) -> None:
        now = time.monotonic()
        self._last, self._logged_iteration = now, engine.state.iteration
        done, total, unit = self._counts(engine)
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed
        if total is None:
            logger.info(f"{self.verb} {done} {unit} ({rate:.2f} {unit}/s)")
            return
        left = (total - done) / rate if rate > 0 else math.inf
        tail = f", about {format_duration(left)} left" if done < total else f", {format_duration(elapsed)} in all"
        logger.info(f"{self.verb} {done} / {total} {unit} ({rate:.2f} {unit}/s{tail})")


class EpochProgressLogger:
    """Logs ``"epoch 17 / 200 done (102 s per epoch, about 5 h 12 min left)"`` after every epoch of a training run.

    The time per epoch is the wall time since the run (or its resumption) started divided by the epochs completed
    since, so it includes validation and checkpointing when their handlers run before this one.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._first_epoch = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._start, self._first_epoch = time.monotonic(), engine.state.epoch  # epoch > 0 when resumed

    def _epoch_completed(self, engine: Engine) -> None:
        epoch, max_epochs = engine.state.epoch, engine.state.max_epochs
        per_epoch = (time.monotonic() - self._start) / max(epoch - self._first_epoch, 1)
        left = per_epoch * (max_epochs - epoch) if max_epochs is not None else math.inf
        logger.info(
            f"epoch {epoch} / {max_epochs} done ({per_epoch:.0f} s per epoch, about {format_duration(left)} left)"
        )
