"""Which data a config reads: the datalist of ``dataset_dir`` (writing the built-in synthetic set when it is
the default folder) and a split of it, with errors that say what to do."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .datalist import find_datalist
from .synthetic import ensure_synthetic_dataset

__all__ = ["is_synthetic_dir", "prepare_datalist", "require_split"]


def is_synthetic_dir(dataset_dir: str | os.PathLike, synthetic_dir: str | os.PathLike) -> bool:
    """Whether ``dataset_dir`` is the bundle's built-in synthetic folder (the same folder, however it is spelt)."""
    return Path(dataset_dir).resolve() == Path(synthetic_dir).resolve()


def prepare_datalist(
    dataset_dir: str | os.PathLike, synthetic_dir: str | os.PathLike, **synthetic_kwargs: Any
) -> dict[str, list[dict]]:
    """The datalist of ``dataset_dir``; when it is the built-in synthetic folder, write that set first if needed.

    Args:
        dataset_dir: a datalist JSON, or a folder with one, or a published folder layout (``scripts.data.datalist``).
        synthetic_dir: the bundle's default ``dataset_dir``; only there is the synthetic set generated, so a
            mistyped real path is reported instead of silently replaced by synthetic data.
        synthetic_kwargs: passed to :func:`scripts.data.synthetic.ensure_synthetic_dataset`.
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
