"""Small pieces the bundle configs call: dataset resolution and resuming from a checkpoint."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from .datalist import find_datalist
from .synthetic import ensure_synthetic_dataset

__all__ = ["as_bool", "is_synthetic_dir", "prepare_datalist", "require_split", "CheckpointFileLoader", "ResumeLoader"]

logger = logging.getLogger(__name__)

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


def as_bool(value: Any, name: str = "flag") -> bool:
    """A config flag as a ``bool``: ``True``/``False``, ``0``/``1``, or a string such as ``"true"``/``"false"``.

    ``python -m monai.bundle run ... --overwrite false`` hands the config the *string* ``"false"``, which
    Python treats as true; the bundle reads its flags through this function so that they mean what they say.

    Raises:
        ValueError: any other value (e.g. ``"flase"``), naming the flag.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"'{name}' must be true or false, got {value!r}.")


def is_synthetic_dir(dataset_dir: str | os.PathLike, synthetic_dir: str | os.PathLike) -> bool:
    """Whether ``dataset_dir`` is the bundle's built-in synthetic folder (the same folder, however it is spelt)."""
    return Path(dataset_dir).resolve() == Path(synthetic_dir).resolve()


def prepare_datalist(
    dataset_dir: str | os.PathLike, synthetic_dir: str | os.PathLike, **synthetic_kwargs: Any
) -> dict[str, list[dict]]:
    """The datalist of ``dataset_dir``; when it is the built-in synthetic folder, write that set first if needed.

    Args:
        dataset_dir: a datalist JSON, or a folder with one, or a published folder layout (``scripts.datalist``).
        synthetic_dir: the bundle's default ``dataset_dir``; only there is the synthetic set generated, so a
            mistyped real path is reported instead of silently replaced by synthetic data.
        synthetic_kwargs: passed to :func:`scripts.synthetic.ensure_synthetic_dataset`.
    """
    if is_synthetic_dir(dataset_dir, synthetic_dir):
        ensure_synthetic_dataset(synthetic_dir, **synthetic_kwargs)
    return find_datalist(dataset_dir)


def require_split(datalist: Mapping[str, list[dict]], split: str, dataset_dir: str | os.PathLike) -> list[dict]:
    """The items of ``split``, or an error naming the dataset when the split is empty."""
    items = list(datalist.get(split) or [])
    if not items:
        raise ValueError(f"dataset {dataset_dir} has no '{split}' images: add a '{split}' split to its datalist "
                         "or folder layout (see README.md, 'Your own data').")
    return items


class CheckpointFileLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that first checks the checkpoint file exists and says what to do if not.

    Args:
        load_path: the checkpoint file.
        load_dict: name -> object to restore, as in ``CheckpointLoader``.
        hint: what the user should do when the file is missing.
        kwargs: passed on to ``CheckpointLoader`` (``map_location``, ``strict``, ...).
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        load_dict: Mapping[str, Any],
        hint: str = "train first (python -m monai.bundle run training --config_file configs/train.json) or pass "
        "the checkpoint path on the command line",
        **kwargs: Any,
    ) -> None:
        if not Path(load_path).is_file():
            raise FileNotFoundError(f"checkpoint {load_path} does not exist: {hint}.")
        super().__init__(load_path=str(load_path), load_dict=dict(load_dict), **kwargs)

    def __call__(self, engine: Engine) -> None:
        """Restore ``load_dict`` from the file.

        Raises:
            ValueError: the file is not a readable checkpoint, or its tensors do not fit the networks this config
                builds (the message names the ``img_size`` the checkpoint was trained at when that differs).
        """
        from .checkpoint import load_checkpoint  # checkpoint imports this module

        try:
            super().__call__(engine)
        except Exception as e:
            if isinstance(e, RuntimeError) and "loading state_dict" in str(e):
                raise ValueError(self._mismatch_message(e)) from e
            load_checkpoint(self.load_path)  # raises the clear error when the file itself is unreadable
            raise

    def _mismatch_message(self, error: RuntimeError) -> str:
        from .checkpoint import load_checkpoint, state_img_size

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
