"""The built-in synthetic data set: radiographs of :mod:`scripts.data.phantom` written in the ZhangLab folder layout,
with the finding masks and a manifest, atomically and only when missing or out of date.

Run ``python -m scripts.synthetic --output_dir DIR`` from ``bundle/`` to write the default dataset.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .datalist import DATALIST_NAME
from .phantom import FINDINGS, synthesize_radiograph

__all__ = ["write_synthetic_dataset", "ensure_synthetic_dataset", "is_complete_synthetic_dataset", "read_manifest"]

logger = logging.getLogger(__name__)

_VERSION = 3  # bump whenever the files change, so that ensure_synthetic_dataset rewrites old sets (3: datalist.json)
_COMPLETE_MARKER = ".synthetic_complete.json"
_INCOMPLETE_MARKER = ".synthetic_incomplete.json"
_MANIFEST = "findings.csv"
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_NORMAL_DIR = "normal_256"
_ABNORMAL_DIR = "pneumonia_256"
_MANAGED = ("train", "val", "test", "masks", _MANIFEST, DATALIST_NAME)


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write a [0, 1] float or bool array as an 8-bit grayscale PNG."""
    data = np.round(np.asarray(array, dtype=np.float32) * 255.0).astype(np.uint8)
    Image.fromarray(data, mode="L").save(path)


def _dataset_plan(counts: dict[str, tuple[int, int]]) -> list[tuple[str, int, str | None]]:
    """``(split, index, finding)`` for every image; abnormal images cycle through :data:`FINDINGS`."""
    plan: list[tuple[str, int, str | None]] = []
    for split, (n_normal, n_abnormal) in counts.items():
        plan += [(split, i, None) for i in range(n_normal)]
        plan += [(split, i, FINDINGS[i % len(FINDINGS)]) for i in range(n_abnormal)]
    return plan


def _read_marker(root: Path, name: str) -> dict | None:
    try:
        return json.loads((root / name).read_text())
    except (OSError, ValueError):
        return None


def is_complete_synthetic_dataset(root: str | Path, params: dict | None = None) -> bool:
    """Whether ``root`` holds a complete synthetic dataset (with ``params`` if given) whose files all exist."""
    root = Path(root)
    marker = _read_marker(root, _COMPLETE_MARKER)
    if marker is None or (params is not None and marker.get("params") != params):
        return False
    try:
        with open(root / _MANIFEST, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return False
    return len(rows) == marker.get("n_images") and all((root / row["file"]).is_file() for row in rows)


def write_synthetic_dataset(
    root: str | Path,
    n_train: int = 1000,
    n_val_normal: int = 50,
    n_val_abnormal: int = 50,
    n_test_normal: int = 200,
    n_test_abnormal: int = 200,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write the synthetic set in the ZhangLab layout under ``root`` and return ``root``.

    Layout: ``root/{train,val,test}/{normal_256,pneumonia_256}/<name>.png`` (8-bit gray; train has normals
    only), masks of the abnormal images as ``root/masks/<split>/<name>.png`` and the manifest
    ``root/findings.csv`` (columns ``split,file,label,finding``; ``file`` relative to ``root``; finding
    ``normal`` for normals), and the same as ``root/datalist.json`` (what :func:`scripts.data.datalist.find_datalist`
    reads: labels, ``kind`` and the abnormal images' ``mask``).  Image ``i`` of a split is drawn from
    ``default_rng([seed, split, i, abnormal])``, so each image is independent of the others and of the counts.

    ``root/.synthetic_incomplete.json`` is written first and replaced by ``root/.synthetic_complete.json``
    last, so an interrupted write is recognised (:func:`ensure_synthetic_dataset` redoes it).  Refuses to
    write into a non-empty folder that is not a synthetic dataset, to never delete foreign files.
    """
    root = Path(root)
    params = dict(
        n_train=n_train,
        n_val_normal=n_val_normal,
        n_val_abnormal=n_val_abnormal,
        n_test_normal=n_test_normal,
        n_test_abnormal=n_test_abnormal,
        size=size,
        seed=seed,
        version=_VERSION,
    )
    ours = (root / _COMPLETE_MARKER).exists() or (root / _INCOMPLETE_MARKER).exists()
    if root.exists() and any(root.iterdir()) and not ours:
        raise FileExistsError(
            f"{root} is not empty and holds no synthetic dataset; choose an empty or new folder for it."
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / _INCOMPLETE_MARKER).write_text(json.dumps({"params": params}))
    (root / _COMPLETE_MARKER).unlink(missing_ok=True)
    for name in _MANAGED:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    counts = {"train": (n_train, 0), "val": (n_val_normal, n_val_abnormal), "test": (n_test_normal, n_test_abnormal)}
    rows = []
    logger.info("Writing %d synthetic radiographs (%dx%d) to %s", sum(map(sum, counts.values())), size, size, root)
    for split, index, kind in _dataset_plan(counts):
        abnormal = kind is not None
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index, int(abnormal)])
        image, mask = synthesize_radiograph(rng, size, kind)
        name = f"{'abnormal' if abnormal else 'normal'}_{index:04d}.png"
        folder = root / split / (_ABNORMAL_DIR if abnormal else _NORMAL_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        _save_png(image, folder / name)
        if abnormal:
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            _save_png(mask, root / "masks" / split / name)
        rows.append((split, f"{split}/{folder.name}/{name}", int(abnormal), kind or "normal"))
    with open(root / _MANIFEST, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("split", "file", "label", "finding"))
        writer.writerows(rows)
    _write_datalist(root, rows)
    (root / _COMPLETE_MARKER).write_text(json.dumps({"params": params, "n_images": len(rows)}))
    (root / _INCOMPLETE_MARKER).unlink()
    logger.info("Synthetic dataset complete: %s", root)
    return root


def _write_datalist(root: Path, rows: list[tuple[str, str, int, str]]) -> None:
    """``datalist.json``: the images with their labels, finding kinds and (abnormal images) lesion masks."""
    splits = {"train": "training", "val": "validation", "test": "test"}
    data: dict[str, list[dict]] = {name: [] for name in splits.values()}
    for split, file, label, kind in rows:
        item = {"image": file, "label": label, "kind": kind}
        if label:
            item["mask"] = f"masks/{split}/{Path(file).name}"
        data[splits[split]].append(item)
    (root / DATALIST_NAME).write_text(json.dumps(data, indent=1))


def read_manifest(root: str | Path) -> list[dict]:
    """The rows of ``root/findings.csv`` as ``{"split", "image", "label", "finding", "mask"}`` dicts.

    ``image`` is the absolute image path, ``label`` 0 or 1, ``finding`` ``"normal"`` or one of
    :data:`FINDINGS`, ``mask`` the absolute mask path (``None`` for normal images, whose mask is empty).
    """
    root = Path(root).absolute()
    with open(root / _MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        {
            "split": row["split"],
            "image": str(root / row["file"]),
            "label": int(row["label"]),
            "finding": row["finding"],
            "mask": str(root / "masks" / row["split"] / Path(row["file"]).name) if int(row["label"]) else None,
        }
        for row in rows
    ]


def _default_parameters() -> dict[str, int]:
    """The keyword arguments of :func:`write_synthetic_dataset` with their defaults."""
    signature = inspect.signature(write_synthetic_dataset)
    return {name: p.default for name, p in signature.parameters.items() if name != "root"}


def ensure_synthetic_dataset(root: str | Path, **kwargs) -> Path:
    """Return ``root``, first writing the synthetic set (:func:`write_synthetic_dataset` ``**kwargs``) unless
    ``root`` already holds a complete one with the same parameters (and generator version)."""
    defaults = _default_parameters()
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"Unknown synthetic dataset arguments: {sorted(unknown)}.")
    params = {**defaults, **kwargs}
    if is_complete_synthetic_dataset(root, {**params, "version": _VERSION}):
        logger.info("Using the existing synthetic dataset in %s", root)
        return Path(root)
    return write_synthetic_dataset(root, **params)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m scripts.synthetic --output_dir DIR [--seed S] [--n_train N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True, help="folder to write the dataset into (new or empty)")
    for name, default in _default_parameters().items():
        parser.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_synthetic_dataset(args.pop("output_dir"), **args)


if __name__ == "__main__":
    main()
