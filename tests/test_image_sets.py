"""The datalist contract shared by the second, third and fourth synthetic sets (one writer,
``benchmarks.second_set.files.write_image_set``): determinism, independence of counts and file format, layout
and datalist as the bundle reads them, refusal of a foreign folder."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fourth_set import dataset as fourth  # noqa: E402
from benchmarks.fourth_set.findings import KINDS as FOURTH_KINDS  # noqa: E402
from benchmarks.second_set import dataset as second  # noqa: E402
from benchmarks.second_set.findings import KINDS as SECOND_KINDS  # noqa: E402
from benchmarks.third_set import dataset as third  # noqa: E402
from benchmarks.third_set.findings import KINDS as THIRD_KINDS  # noqa: E402
from scripts.data.datalist import find_datalist  # noqa: E402
from scripts.data.transforms import LoadRadiograph  # noqa: E402

SMALL = {"n_train": 3, "n_val_normal": 1, "n_val_abnormal": 2, "n_test_normal": 2, "n_test_abnormal": 6, "size": 48}
SETS: dict[str, tuple[Callable[..., Path], Callable, tuple[str, ...]]] = {
    "second": (second.write_second_set, second.draw_image, SECOND_KINDS),
    "third": (third.write_third_set, third.draw_image, THIRD_KINDS),
    "fourth": (fourth.write_fourth_set, fourth.draw_image, FOURTH_KINDS),
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=sorted(SETS))
def small_set(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    write, _, _ = SETS[request.param]
    return request.param, write(tmp_path_factory.mktemp(request.param) / "set", seed=3, dicom_fraction=0.5, **SMALL)


def test_same_seed_same_bytes_other_seed_other_images(small_set: tuple[str, Path], tmp_path: Path) -> None:
    name, root = small_set
    write, draw_image, _ = SETS[name]
    again = write(tmp_path / "again", seed=3, dicom_fraction=0.5, **SMALL)
    assert _files(root) == _files(again)
    image, _ = draw_image(3, "test", 0, None, 48)
    other, _ = draw_image(4, "test", 0, None, 48)
    assert np.abs(image - other).mean() > 0.01


def test_image_does_not_depend_on_counts_or_format(small_set: tuple[str, Path], tmp_path: Path) -> None:
    name, root = small_set
    write, _, _ = SETS[name]
    bigger = write(tmp_path / "png", seed=3, dicom_fraction=0.0, **{**SMALL, "n_test_normal": 4})
    png = LoadRadiograph()(str(bigger / "test/normal_256/normal_0001.png"))[0].numpy()
    first = find_datalist(root)["test"][1]["image"]  # normal_0001, PNG or DICOM
    assert np.abs(LoadRadiograph()(first)[0].numpy() - png).max() <= 0.6 / 255


def test_layout_and_datalist_read_by_the_bundle(small_set: tuple[str, Path], tmp_path: Path) -> None:
    name, root = small_set
    _, _, kinds = SETS[name]
    splits = find_datalist(root)
    assert [len(splits[s]) for s in ("training", "validation", "test")] == [3, 3, 8]
    assert [item["label"] for item in splits["test"]] == [0, 0] + [1] * 6
    assert {Path(item["image"]).suffix for items in splits.values() for item in items} == {".png", ".dcm"}
    test = json.loads((root / "datalist.json").read_text())["test"]
    assert [item["kind"] for item in test if item["label"]] == list(kinds)
    assert all(item["kind"] == "normal" and "mask" not in item for item in test if not item["label"])
    assert all((root / item["mask"]).is_file() for item in test if item["label"])
    assert (root / f".{name}_set.json").is_file() and (root / "contact_sheet.png").is_file()
    header = (root / "findings.csv").read_text().splitlines()[0]
    assert header == "split,file,label,finding"
    layout = tmp_path / "layout"  # the same folders read as the ZhangLab layout, without the datalist
    shutil.copytree(root, layout, ignore=shutil.ignore_patterns("datalist.json"))
    names = {s: [Path(i["image"]).name for i in items] for s, items in find_datalist(layout).items()}
    assert names == {s: [Path(i["image"]).name for i in items] for s, items in splits.items()}


@pytest.mark.parametrize("name", sorted(SETS))
def test_refuses_a_foreign_folder(name: str, tmp_path: Path) -> None:
    write, _, _ = SETS[name]
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
