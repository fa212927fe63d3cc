"""Crash-safe checkpoints: atomic writes, latest/best training state and the deployable weights file."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from monai.transforms import Randomizable, Transform

from .detector import (
    FeatureSettingsMismatchError,
    ImageSizeMismatchError,
    IntensitySettingsMismatchError,
    recorded_percentiles,
)
from .distributed import is_main_process
from .utils import as_bool

__all__ = [
    "save_atomic", "load_checkpoint", "state_img_size", "trained_settings", "trained_img_size", "check_new_run",
    "find_randomizable", "RNGState", "TrainingCheckpointer", "CheckpointFileLoader", "ResumeLoader",
]

logger = logging.getLogger(__name__)

LATEST_NAME = "checkpoint_latest.pt"
BEST_NAME = "checkpoint_best.pt"
MODEL_NAME = "model.pt"


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A reader sees either the previous complete file or the new complete file, never a partial one, even
    if the process is killed during the write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by this bundle, with an error that names the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist: train first (python -m monai.bundle run training ...) "
            "or point the config at an existing checkpoint."
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is not a complete "
                         "checkpoint of this bundle.") from e
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict of state dicts.")
    return dict(ckpt)


def state_img_size(state: Mapping[str, Any]) -> int | None:
    """The image size of the detector's per-pixel score statistics (``...pixel_mean``, 1 x 1 x H x W) found anywhere
    in a (nested) state dict, or ``None`` when it holds none."""
    for key, value in state.items():
        if isinstance(value, Mapping):
            found = state_img_size(value)
            if found is not None:
                return found
        elif str(key).endswith("pixel_mean") and isinstance(value, torch.Tensor) and value.ndim == 4:
            return int(value.shape[-1])
    return None


def trained_settings(
    path: str | os.PathLike, img_size: int, intensity_percentiles: Sequence[float] | None, feature_centre: bool = False
) -> dict[str, Any]:
    """The preprocessing and feature settings the model file ``path`` was trained with, read in one pass, so that
    inference and export build the network it fits and scale images as training did: ``{"img_size": int,
    "intensity_percentiles": [low, high] or None, "feature_centre": bool}`` (``None``: images as loaded, also for
    models of bundles before 0.6, which recorded none; ``feature_centre`` false for models that recorded none).
    The arguments are the defaults, used when the file does not exist (the loader then says what to do) or holds
    no statistics.

    Raises:
        ValueError: the file exists but is not a readable checkpoint (names the file).
    """
    default = {"img_size": img_size, "intensity_percentiles": None if intensity_percentiles is None
               else list(intensity_percentiles), "feature_centre": bool(feature_centre)}
    if not Path(path).is_file():
        return default
    state = load_checkpoint(path)
    size = state_img_size(state)
    if size is None:
        return default
    recorded = state.get("statistics.intensity_percentiles")
    found = recorded_percentiles(recorded) if isinstance(recorded, torch.Tensor) else None
    centred = state.get("statistics.density.centred")
    return {"img_size": size, "intensity_percentiles": None if found is None else list(found),
            "feature_centre": bool(centred) if isinstance(centred, torch.Tensor) else False}


def trained_img_size(path: str | os.PathLike, default: int) -> int:
    """The ``img_size`` the model file ``path`` was trained at (``default`` as in :func:`trained_settings`)."""
    return trained_settings(path, default, None)["img_size"]


def check_new_run(ckpt_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse a run whose ``ckpt_dir`` holds an earlier run's checkpoints, unless it resumes or overwrites them.

    The train configs call it first thing in ``initialize``, so a refused run stops before it reads any data or
    writes anything; :class:`TrainingCheckpointer` checks again. ``resume`` and ``overwrite`` may be the
    ``"true"``/``"false"`` strings of the command line (:func:`scripts.utils.as_bool`).

    Raises:
        FileExistsError: ``ckpt_dir`` holds ``checkpoint_latest.pt``, ``checkpoint_best.pt`` or ``model.pt`` and
            neither ``resume`` nor ``overwrite`` is set: a new run never silently replaces a trained model.
    """
    ckpt_dir = Path(ckpt_dir)
    resume, overwrite = as_bool(resume, "resume"), as_bool(overwrite, "overwrite")
    existing = [n for n in (LATEST_NAME, BEST_NAME, MODEL_NAME) if (ckpt_dir / n).exists()]
    if existing and not (resume or overwrite):
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints of an earlier run ({', '.join(existing)}). "
            "Continue that run with '--resume true', write this one elsewhere with '--ckpt_dir <new folder>', "
            "or replace them with '--overwrite true'."
        )


def find_randomizable(transforms: Any) -> dict[str, Randomizable]:
    """Every ``Randomizable`` object of ``transforms``, named by its attribute path from ``transforms``.

    The search follows what MONAI's ``set_rnd`` seeds: lists, tuples and dicts, and the attributes of transforms
    (``Compose.transforms``, ``RandAffined.rand_affine``, ``RandAffine.rand_affine_grid``, ...). Each object is
    listed once, under the first path that reaches it, e.g. ``"root.transforms.3.rand_affine.rand_affine_grid"``.

    Args:
        transforms: a transform (e.g. the training ``Compose``) or a list, tuple or dict of them.
    """
    found: dict[str, Randomizable] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("root", transforms)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        if isinstance(obj, (list, tuple)):
            children = [(f"{path}.{i}", item) for i, item in enumerate(obj)]
        elif isinstance(obj, Mapping):
            children = [(f"{path}.{key}", item) for key, item in obj.items()]
        elif isinstance(obj, (Transform, Randomizable)):
            if isinstance(obj, Randomizable):
                found[path] = obj
            children = [(f"{path}.{key}", item) for key, item in vars(obj).items() if not key.startswith("__")]
        else:
            continue
        seen.add(id(obj))
        stack.extend(reversed(children))  # depth first, in attribute order
    return found


def _numpy_state_dict(state: tuple) -> dict[str, Any]:
    """A ``RandomState.get_state()`` tuple as tensors and numbers, which ``torch.load(weights_only=True)`` reads."""
    _, keys, pos, has_gauss, cached_gaussian = state
    return {
        "keys": torch.as_tensor(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_state(state: Mapping[str, Any]) -> tuple:
    """The ``RandomState.set_state()`` tuple of a :func:`_numpy_state_dict` output, whose keys may lie on the GPU
    that the checkpoint was mapped to."""
    keys = torch.as_tensor(state["keys"]).cpu().numpy().astype(np.uint32)
    return "MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])


class RNGState:
    """The random-generator states that training draws from, as a stateful object for checkpoints.

    Saved after the epoch's validation, restored on resume, so that the random masks of the model, the data order
    and the random augmentations continue as in an uninterrupted run. It holds the global Python, NumPy and torch
    generators and the own generators (``.R``) of the ``Randomizable`` objects of ``transforms``
    (:func:`find_randomizable`).

    The transforms' generators matter with ``num_workers`` 0: MONAI's ``DataLoader`` seeds them once, when it is
    built, and they then run on across epochs in the main process, so a resumed run would otherwise draw the
    first epoch's augmentations again. With ``num_workers`` > 0 each epoch's workers seed their copies from
    torch's generator (``monai.data.worker_init_fn``), which this object restores as well.

    Args:
        transforms: the training preprocessing (a ``Compose``, a transform, or a list or dict of them) whose
            random transforms continue exactly on resume; ``None`` for the global generators only.
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def state_dict(self) -> dict[str, Any]:
        python_state = random.getstate()
        numpy_state = _numpy_state_dict(np.random.get_state())
        return {
            "python": list(python_state[1]),
            "python_pos": python_state[2],
            "numpy_keys": numpy_state["keys"],
            "numpy_pos": numpy_state["pos"],
            "numpy_has_gauss": numpy_state["has_gauss"],
            "numpy_cached_gaussian": numpy_state["cached_gaussian"],
            "torch": torch.get_rng_state(),
            "transforms": {name: _numpy_state_dict(obj.R.get_state()) for name, obj in self._randomizable().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generators; a checkpoint without the transforms' states (written before they were saved)
        restores the global ones and logs a warning that the augmentations will not continue exactly."""
        random.setstate((3, tuple(int(v) for v in state["python"]), state["python_pos"]))
        np.random.set_state(_numpy_state({
            "keys": state["numpy_keys"],
            "pos": state["numpy_pos"],
            "has_gauss": state.get("numpy_has_gauss", 0),
            "cached_gaussian": state.get("numpy_cached_gaussian", 0.0),
        }))
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
        self._load_transforms(state.get("transforms"))

    def _randomizable(self) -> dict[str, Randomizable]:
        return find_randomizable(self.transforms) if self.transforms is not None else {}

    def _load_transforms(self, saved: Mapping[str, Any] | None) -> None:
        current = self._randomizable()
        if not current:
            return
        if saved is None:
            logger.warning("the checkpoint holds no random state of the augmentation transforms (it was written by "
                           "an older version of the bundle): training resumes, but its random augmentations differ "
                           "from those of an uninterrupted run.")
            return
        missing = sorted(set(current) - set(saved))
        if missing or set(saved) - set(current):
            logger.warning("the random transforms differ from the checkpoint's (not in the checkpoint: %s; only in "
                           "the checkpoint: %s): training resumes, but their random augmentations differ from those "
                           "of an uninterrupted run.", missing, sorted(set(saved) - set(current)))
        for name, obj in current.items():
            if name in saved:
                generator = np.random.RandomState()
                generator.set_state(_numpy_state(saved[name]))
                obj.R = generator  # a new generator: objects that never set their own share the class's ``R``


class TrainingCheckpointer:
    """Writes the training state after every epoch and whenever validation improves the key metric.

    Files in ``ckpt_dir``:

    - ``checkpoint_latest.pt``: every object of ``save_dict`` after every trainer epoch (after validation);
      resume from it with ``--resume true``.
    - ``checkpoint_best.pt``: the same, whenever the evaluator's key metric improves.
    - ``model.pt``: the state dict of ``detector`` alone at the best epoch (generator, discriminator,
      score statistics), what ``inference.json`` and ``ckpt_export`` load.

    Every write is atomic (:func:`save_atomic`), so an interrupted run leaves the previous files intact.
    Under ``torch.distributed`` only rank 0 writes; every rank tracks the best metric.

    Args:
        ckpt_dir: folder for the files.
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (networks, optimisers, schedulers,
            the trainer engine, :class:`RNGState`, the score statistics).
        detector: the module whose state dict is ``model.pt``.
        key_metric_name: the evaluator metric to maximise; ``None`` to use the evaluator's key metric.
        resume: this run continues the checkpoints in ``ckpt_dir`` (they may exist); ``"true"``/``"false"``
            strings from the command line are read as booleans (:func:`scripts.utils.as_bool`).
        overwrite: allow a new run to replace the checkpoints of an earlier run in ``ckpt_dir``; read like
            ``resume``.

    Partial temporary files that a run killed during a write left in ``ckpt_dir`` are deleted (with a
    warning) when the checkpointer is created.

    Raises:
        FileExistsError: ``ckpt_dir`` holds checkpoints of an earlier run and neither ``resume`` nor
            ``overwrite`` is set: a new run never silently replaces a trained model.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        detector: torch.nn.Module | None = None,
        key_metric_name: str | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        check_new_run(self.ckpt_dir, resume, overwrite)
        if is_main_process():
            self._remove_partial_files()
        self.save_dict = dict(save_dict)
        self.detector = detector
        self.key_metric_name = key_metric_name
        self.best_metric = -float("inf")
        self.best_epoch = -1

    def _remove_partial_files(self) -> None:
        """Delete the temporary files of :func:`save_atomic` that an interrupted run left behind."""
        for name in (LATEST_NAME, BEST_NAME, MODEL_NAME):
            for partial in self.ckpt_dir.glob(f".{name}.*.tmp"):
                logger.warning("removing %s: a partial checkpoint left by an interrupted run.", partial)
                partial.unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])

    def attach(self, trainer: Engine, evaluator: Engine | None = None) -> None:
        """Save the latest state after each trainer epoch; the best after each improving validation.

        Attach after the validation handler so the latest checkpoint includes that epoch's validation.
        """
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.save_latest)
        if evaluator is not None:
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.save_best_if_improved)

    def _checkpoint(self) -> dict[str, Any]:
        state = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        state["checkpointer"] = self.state_dict()
        return state

    def save_latest(self, engine: Engine) -> None:
        if not is_main_process():
            return
        path = save_atomic(self._checkpoint(), self.ckpt_dir / LATEST_NAME)
        logger.info("epoch %d: saved %s", engine.state.epoch, path)

    def save_best_if_improved(self, evaluator: Engine) -> None:
        name = self.key_metric_name or getattr(evaluator.state, "key_metric_name", None)
        value = evaluator.state.metrics.get(name) if name else None
        if value is None or not np.isfinite(value):
            logger.warning("validation metric %r is %s: no best checkpoint written this epoch.", name, value)
            return
        if value <= self.best_metric:
            return
        self.best_metric, self.best_epoch = float(value), int(evaluator.state.epoch)
        if not is_main_process():
            return
        save_atomic(self._checkpoint(), self.ckpt_dir / BEST_NAME)
        if self.detector is not None:
            save_atomic(self.detector.state_dict(), self.ckpt_dir / MODEL_NAME)
        logger.info("epoch %d: new best %s=%.4f, saved %s", self.best_epoch, name, value, self.ckpt_dir / BEST_NAME)


class CheckpointFileLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that first checks the checkpoint file exists and says what to do if not.

    Args:
        load_path: the checkpoint file.
        load_dict: name -> object to restore, as in ``CheckpointLoader``.
        hint: what the user should do when the file is missing.
        keep_feature_statistics: ``False`` leaves the detector's saved feature statistics (``statistics.density.*``)
            unloaded, to be measured again (evaluation's ``--remeasure_statistics true``): a model can then be
            scored with other feature settings (grid, subcells, mirror) without training again.
        kwargs: passed on to ``CheckpointLoader`` (``map_location``, ``strict``, ...).
    """

    FEATURE_STATISTICS = "statistics.density."

    def __init__(
        self,
        load_path: str | os.PathLike,
        load_dict: Mapping[str, Any],
        hint: str = "train first (python -m monai.bundle run training --config_file configs/train.json) or pass "
        "the checkpoint path on the command line",
        keep_feature_statistics: bool = True,
        **kwargs: Any,
    ) -> None:
        if not Path(load_path).is_file():
            raise FileNotFoundError(f"checkpoint {load_path} does not exist: {hint}.")
        super().__init__(load_path=str(load_path), load_dict=dict(load_dict), **kwargs)
        self.keep_feature_statistics = as_bool(keep_feature_statistics, "keep_feature_statistics")

    def __call__(self, engine: Engine) -> None:
        """Restore ``load_dict`` from the file.

        Raises:
            ValueError: the file is not a readable checkpoint, or its tensors do not fit the networks this config
                builds (the message names the ``img_size`` the checkpoint was trained at when that differs, and the
                feature or intensity settings to pass when its statistics were measured with others).
        """
        try:
            if self.keep_feature_statistics:
                super().__call__(engine)
            else:
                self._load_without_feature_statistics()
        except (FeatureSettingsMismatchError, IntensitySettingsMismatchError) as e:  # the detector's own checks: their
            # messages say what to pass
            raise ValueError(f"checkpoint {self.load_path} does not fit the network this config builds: {e}") from e
        except Exception as e:
            mismatch = isinstance(e, ImageSizeMismatchError)  # the detector's own check, before torch's
            if mismatch or (isinstance(e, RuntimeError) and "loading state_dict" in str(e)):
                raise ValueError(self._mismatch_message(e)) from e
            load_checkpoint(self.load_path)  # raises the clear error when the file itself is unreadable
            raise

    def _load_without_feature_statistics(self) -> None:
        """Restore ``load_dict`` from the file without the ``statistics.density.*`` entries (the detector then loads
        as a model saved before feature statistics existed: they keep their defaults and are marked unmeasured)."""
        checkpoint = load_checkpoint(self.load_path, self.map_location)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and first not in checkpoint:  # a model file: the detector's state dict itself
            checkpoint = {first: checkpoint}
        for name, obj in self.load_dict.items():
            state = {k: v for k, v in checkpoint[name].items() if not str(k).startswith(self.FEATURE_STATISTICS)}
            obj.load_state_dict(state, strict=self.strict)
        self.logger.info(f"Restored {self.load_path} without its feature statistics (measured again)")

    def _mismatch_message(self, error: RuntimeError) -> str:
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        saved = state_img_size(load_checkpoint(self.load_path))
        built = state_img_size({k: v.state_dict() for k, v in self.load_dict.items() if hasattr(v, "state_dict")})
        if saved is not None and built is not None and saved != built:
            todo = f"it was trained at img_size {saved}, this config builds {built}: pass '--img_size {saved}'"
        else:
            todo = "pass the network settings it was trained with (img_size, num_patch, level, features_root, ...)"
        return (f"checkpoint {self.load_path} does not fit the network this config builds; {todo}. "
                f"First difference: {details[0] if details else error}")


class ResumeLoader(CheckpointFileLoader):
    """Loads ``checkpoint_latest.pt`` to continue a training run (``--resume true``)."""

    def __init__(self, load_path: str | os.PathLike, load_dict: Mapping[str, Any], **kwargs: Any) -> None:
        hint = "train without '--resume true' first, or pass '--resume_ckpt <path to checkpoint_latest.pt>'"
        super().__init__(load_path=load_path, load_dict=load_dict, hint=hint, **kwargs)
