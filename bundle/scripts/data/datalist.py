"""Find the images of a dataset: a MONAI datalist JSON or one of the published folder layouts.

``dataset_dir`` may be

- a datalist JSON file, or a folder holding ``datalist.json``: ``{"training": [{"image": ...}, ...],
  "validation": [{"image": ..., "label": 0 | 1}, ...], "test": [...]}`` with paths relative to the JSON's
  folder or absolute (read with :func:`monai.data.load_decathlon_datalist`); training items without a
  ``label`` are normal. An item may also give ``"mask"``, the path of its lesion mask (an image of the same
  size, non-zero on the finding), which evaluation scores the anomaly maps against, and ``"kind"``, its finding
  kind (any string), which evaluation reports the AUC of separately;
- the ZhangLab layout ``<root>/{train,val,test}/{normal_256,pneumonia_256}/*``;
- the CheXpert layout ``<root>/{train_256_pa,val_256_pa,our_test_256_pa}/{normal_256,abnormal_256}/*``;
- the layout of the Kaggle download of the ZhangLab images ("Chest X-Ray Images (Pneumonia)",
  ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``).

A folder is read in the first layout that has one of its class folders inside one of its split folders.

Image files are those :func:`scripts.data.formats.is_supported_file` accepts: ``.png .jpg .jpeg .dcm .dicom .nii
.nii.gz`` (any case), and extensionless files that carry the DICOM preamble (``DICM`` at byte 128); hidden
files are ignored.  Label 0 is normal, 1 abnormal.
Training keeps the normal images only (abnormal ones are dropped with a warning).  When a layout or datalist
lacks the validation split, the test split is used for validation (and vice versa), with a warning: model
selection on the test split makes the reported test numbers optimistic.

Run ``python -m scripts.datalist --dataset_dir DIR --output FILE`` from ``bundle/`` to write a datalist.
"""

from __future__ import annotations

import argparse
import json
import logging
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monai.data import load_decathlon_datalist

from .formats import is_supported_file

__all__ = [
    "DATALIST_NAME", "DatasetError", "FolderLayout", "KAGGLE_LAYOUT", "LAYOUTS", "SPLITS", "is_image_file", "list_images",
    "find_datalist", "write_datalist",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("training", "validation", "test")
DATALIST_NAME = "datalist.json"
_HINT = (
    "Point dataset_dir at a datalist JSON (or a folder holding datalist.json), or at a folder in the ZhangLab "
    "layout <root>/{train,val,test}/{normal_256,pneumonia_256}/ or the CheXpert layout "
    "<root>/{train_256_pa,val_256_pa,our_test_256_pa}/{normal_256,abnormal_256}/ or the Kaggle layout "
    "<root>/{train,val,test}/{NORMAL,PNEUMONIA}/; "
    "or write the synthetic set with `python -m scripts.synthetic --output_dir DIR` (from bundle/)."
)


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the offending path and what to do."""


@dataclass(frozen=True)
class FolderLayout:
    """A published folder layout: the folder of each split and of each class inside a split."""

    name: str
    splits: dict[str, str]
    normal: str
    abnormal: str


KAGGLE_LAYOUT = FolderLayout(
    "Kaggle chest_xray", {"training": "train", "validation": "val", "test": "test"}, "NORMAL", "PNEUMONIA"
)
LAYOUTS: tuple[FolderLayout, ...] = (
    FolderLayout("ZhangLab", {"training": "train", "validation": "val", "test": "test"}, "normal_256", "pneumonia_256"),
    FolderLayout(
        "CheXpert",
        {"training": "train_256_pa", "validation": "val_256_pa", "test": "our_test_256_pa"},
        "normal_256",
        "abnormal_256",
    ),
    KAGGLE_LAYOUT,
)


def is_image_file(path: str | Path) -> bool:
    """Whether a folder scan takes ``path`` as an image: :func:`scripts.data.formats.is_supported_file` (a supported
    suffix, or an extensionless file with the DICOM preamble), and not a hidden file."""
    return not Path(path).name.startswith(".") and is_supported_file(path)


def list_images(folder: Path) -> list[str]:
    """Sorted absolute paths of the image files directly inside ``folder`` (empty if it is missing)."""
    if not folder.is_dir():
        return []
    return sorted(os.path.abspath(p) for p in folder.iterdir() if is_image_file(p))


def _finish(splits: dict[str, list[dict]], source: Path) -> dict[str, list[dict]]:
    """Drop abnormal training items, fill a missing validation/test split from the other, check classes."""
    training = [item for item in splits.get("training", []) if item["label"] == 0]
    dropped = len(splits.get("training", [])) - len(training)
    if dropped:
        logger.warning("Dropped %d abnormal training images of %s: training uses normal images only.", dropped, source)
    if not training:
        reason = f"all {dropped} training images are abnormal (label 1)" if dropped else "the training split is empty"
        raise DatasetError(f"No normal training images found in {source}: {reason}. {_HINT}")
    validation, test = splits.get("validation", []), splits.get("test", [])
    if not validation and not test:
        raise DatasetError(f"{source} has neither a validation nor a test split with images. {_HINT}")
    if not validation:
        logger.warning(
            "%s has no validation split: validating on the test split (test numbers become optimistic).", source
        )
        validation = test
    if not test:
        logger.warning("%s has no test split: testing on the validation split.", source)
        test = validation
    for name, items in (("validation", validation), ("test", test)):
        classes = {item["label"] for item in items}
        if len(classes) < 2:
            logger.warning(
                "The %s split of %s holds only %s images: its AUC is undefined.",
                name,
                source,
                "normal" if classes == {0} else "abnormal",
            )
    key = operator.itemgetter("label", "image")
    return {
        "training": _same_keys(sorted(training, key=key)),
        "validation": _same_keys(sorted(validation, key=key)),
        "test": _same_keys(sorted(test, key=key)),
    }


def _same_keys(items: list[dict]) -> list[dict]:
    """Give every item the optional keys any item of its split has (``""`` where it has none), so batches collate."""
    optional = sorted({k for item in items for k in item} - {"image", "label"})
    return [{**dict.fromkeys(optional, ""), **item} for item in items]


def _from_layout(root: Path, layout: FolderLayout) -> dict[str, list[dict]]:
    splits = {}
    for split, folder in layout.splits.items():
        items = [{"image": p, "label": 0} for p in list_images(root / folder / layout.normal)]
        items += [{"image": p, "label": 1} for p in list_images(root / folder / layout.abnormal)]
        splits[split] = items
    logger.info("Found the %s layout in %s", layout.name, root)
    return _finish(splits, root)


def _label(value: object, item: dict, file: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise DatasetError(
            f"Item {item} of datalist {file} has label {value!r}; labels must be 0 (normal) or 1 (abnormal)."
        )
    return int(value)


def _mask_and_kind(item: dict, file: Path) -> dict[str, str]:
    """The optional ``mask`` (absolute path) and ``kind`` (string) of an item as ``load_decathlon_datalist`` returns
    it (a relative path that exists beside the datalist is already joined to its folder)."""
    extra = {}
    if item.get("mask") is not None:
        if not isinstance(item["mask"], str):
            raise DatasetError(f"Item {item} of datalist {file} has a 'mask' that is not one path.")
        mask = os.path.abspath(item["mask"])
        if not os.path.isfile(mask):
            raise DatasetError(f"Mask {mask} listed in datalist {file} does not exist; fix or remove the entry.")
        extra["mask"] = mask
    if item.get("kind") is not None:
        extra["kind"] = str(item["kind"])
    return extra


def _from_json(file: Path) -> dict[str, list[dict]]:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"Cannot read the datalist {file}: {e}. {_HINT}") from e
    if not isinstance(data, dict) or not any(data.get(split) for split in SPLITS):
        raise DatasetError(f"Datalist {file} has no non-empty 'training', 'validation' or 'test' list. {_HINT}")
    splits: dict[str, list[dict]] = {}
    for split in SPLITS:
        if not data.get(split):
            continue
        try:
            raw = load_decathlon_datalist(file, is_segmentation=False, data_list_key=split)
        except (TypeError, ValueError, KeyError) as e:
            raise DatasetError(f"The '{split}' list of datalist {file} is malformed: {e}") from e
        items = []
        for item in raw:
            image = item.get("image")
            if not isinstance(image, str):
                raise DatasetError(f"Item {item} of datalist {file} has no single 'image' path.")
            image = os.path.abspath(image)
            if not os.path.isfile(image):
                raise DatasetError(f"Image {image} listed in datalist {file} does not exist; fix or remove the entry.")
            if "label" not in item and split != "training":
                raise DatasetError(f"Item {item} of the '{split}' list of datalist {file} has no 'label' (0 or 1).")
            items.append({"image": image, "label": _label(item.get("label", 0), item, file),
                          **_mask_and_kind(item, file)})
        splits[split] = items
    logger.info("Read datalist %s", file)
    return _finish(splits, file)


def find_datalist(dataset_dir: str | Path) -> dict[str, list[dict]]:
    """The items of each split of the dataset in ``dataset_dir`` (see the module docstring).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each a list of
        ``{"image": absolute path, "label": 0 | 1}`` sorted by label, then path (normal images first, the
        same order for every layout); training holds label 0 only.

    Raises:
        DatasetError: the path is missing or empty, holds no datalist or known layout, has no normal
            training images or no validation/test images, or its datalist names a missing file.
    """
    path = Path(dataset_dir)
    if not path.exists():
        raise DatasetError(f"Dataset path {path} does not exist. {_HINT}")
    if path.is_file():
        return _from_json(path)
    if (path / DATALIST_NAME).is_file():
        return _from_json(path / DATALIST_NAME)
    entries = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    if not entries:
        raise DatasetError(f"Dataset folder {path} is empty. {_HINT}")
    for layout in LAYOUTS:
        if any((path / folder / cls).is_dir() for folder in layout.splits.values()
               for cls in (layout.normal, layout.abnormal)):
            return _from_layout(path, layout)
    raise DatasetError(
        f"Dataset folder {path} (holding {entries[:10]}) has no {DATALIST_NAME} and no known layout. {_HINT}"
    )


def _relative_item(item: dict, base: str) -> dict:
    """A datalist item as written to a file in ``base``: paths relative to it, empty optional keys left out."""
    item = {k: v for k, v in item.items() if v != ""}
    return {**item, **{k: os.path.relpath(item[k], base) for k in ("image", "mask") if k in item}}


def write_datalist(dataset_dir: str | Path, output_file: str | Path) -> Path:
    """Write the dataset found in ``dataset_dir`` as a datalist JSON with paths relative to its folder."""
    output_file = Path(output_file)
    splits = find_datalist(dataset_dir)
    base = os.path.abspath(output_file.parent)
    data = {split: [_relative_item(item, base) for item in items] for split, items in splits.items()}
    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(json.dumps(data, indent=1))
    logger.info("Wrote %s (%s)", output_file, ", ".join(f"{k}: {len(v)}" for k, v in data.items()))
    return output_file


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m scripts.datalist --dataset_dir DIR --output FILE``."""
    parser = argparse.ArgumentParser(description="Write a MONAI datalist JSON for a dataset folder.")
    parser.add_argument("--dataset_dir", required=True, help="dataset folder (ZhangLab, CheXpert or Kaggle layout) or datalist")
    parser.add_argument("--output", required=True, help="datalist JSON to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    write_datalist(args.dataset_dir, args.output)


if __name__ == "__main__":
    main()
