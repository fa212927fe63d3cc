"""Training and evaluation write only into their output folders, and never replace earlier results silently.

Every command is the one a user types, ``python -m monai.bundle run ...``, started in a copy of the bundle
(configs and scripts) inside a temporary "home" that also holds a data set and an unrelated user file, with
``HOME`` pointing to it. The whole home is fingerprinted (every path, and the bytes of every file) before and
after each command; the paths that changed must all lie in the folders the command may write. The caches of
Python and of libraries, not of the bundle, are kept out of the home on purpose: Python's bytecode cache
(``PYTHONDONTWRITEBYTECODE=1``), matplotlib's font cache (``MPLCONFIGDIR``) and the system temporary folder
(``TMPDIR``, where torch creates its compiler cache folder) point to a scratch folder outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from bundle_utils import BUNDLE, TINY, workflow
from scripts.checkpoint import load_checkpoint
from scripts.data.synthetic import write_synthetic_dataset
from scripts.checkpoint import CheckpointFileLoader
from scripts.utils import as_bool

RUN_TIMEOUT_S = 300
SMALL_SYNTHETIC = "n_train=8, n_val_normal=2, n_val_abnormal=2, n_test_normal=2, n_test_abnormal=2, size=64"


def _fingerprint(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the content (files) or ``"dir"``, for everything under ``root``."""
    prints = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            prints[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                prints[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return prints


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def _outside(paths: set[str], allowed: tuple[str, ...]) -> set[str]:
    """The paths that are neither inside one of the ``allowed`` folders nor one of them or a parent made for them."""

    def allowed_path(p: str) -> bool:
        return any(p == a or a.startswith(p + os.sep) or p.startswith(a + os.sep) for a in allowed)

    return {p for p in paths if not allowed_path(p)}


class Home:
    """A temporary home with a copy of the bundle, a data set and a user file; runs the bundle's CLI there."""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.root = root
        self.bundle = root / "bundle"
        for part in ("configs", "scripts"):
            shutil.copytree(BUNDLE / part, self.bundle / part, ignore=shutil.ignore_patterns("__pycache__"))
        self.dataset = write_synthetic_dataset(root / "data" / "xray", n_train=8, n_val_normal=2, n_val_abnormal=2,
                                               n_test_normal=2, n_test_abnormal=2, size=64, seed=2)
        (root / "notes.txt").write_text("a file of the user's that no run may touch\n")
        self.env = {**os.environ, "HOME": str(root), "TMPDIR": str(scratch), "MPLCONFIGDIR": str(scratch),
                    "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "2"}
        self.env.pop("PYTHONPATH", None)

    def run(self, workflow: str, configs: list[str], *args: str) -> tuple[int, str, set[str]]:
        """``python -m monai.bundle run <workflow>`` with TINY settings; returns (exit code, output, changed paths)."""
        before = _fingerprint(self.root)
        config_file = configs[0] if len(configs) == 1 else repr(configs)
        cli = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", config_file,
               "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
        for key, value in TINY.items():
            cli += [f"--{key}", str(value)]
        proc = subprocess.run([*cli, "--epochs", "1", *args], cwd=self.bundle, env=self.env, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)
        return proc.returncode, proc.stdout + proc.stderr, _changed(before, _fingerprint(self.root))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return Home(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("scratch"))


@pytest.fixture(scope="module")
def trained(home: Home) -> set[str]:
    """Train once on the home's data set with the default output folders; the paths that changed."""
    code, output, changed = home.run("training", ["configs/train.json"], "--dataset_dir", str(home.dataset))
    assert code == 0, output[-4000:]
    return changed


def test_training_writes_only_ckpt_dir_and_output_dir(home: Home, trained: set[str]) -> None:
    outside = _outside(trained, ("bundle/models", "bundle/runs"))
    assert not outside, sorted(outside)
    assert {f"bundle/models/{name}" for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "model.pt")} <= trained
    assert any(p.startswith("bundle/runs/events.out.tfevents") for p in trained)


def test_second_training_run_refuses_and_writes_nothing(home: Home, trained: set[str]) -> None:
    # "--overwrite false" arrives as the string "false": it must not count as true
    code, output, changed = home.run("training", ["configs/train.json"], "--dataset_dir", str(home.dataset),
                                     "--overwrite", "false")
    assert code != 0
    assert "already holds checkpoints of an earlier run" in output and "--overwrite true" in output
    assert not changed, sorted(changed)


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), (" YES ", True),
     ("no", False), ("1", True), ("0", False)],
)
def test_flags_from_the_command_line_mean_what_they_say(value: object, expected: bool) -> None:
    assert as_bool(value, "overwrite") is expected


@pytest.mark.parametrize("value", ["flase", "", "2", 2, None, 1.0])
def test_anything_else_is_not_a_flag(value: object) -> None:
    with pytest.raises(ValueError, match="'overwrite' must be true or false"):
        as_bool(value, "overwrite")


def test_misspelt_flag_stops_the_run_before_anything_is_read_or_written(tmp_path: Path) -> None:
    wf = workflow(["train.json"], "train", "training", **TINY, dataset_dir=str(tmp_path / "no_data_yet"),
                  ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"), overwrite="flase")
    with pytest.raises(Exception) as info:
        wf.initialize()
    assert "'overwrite' must be true or false, got 'flase'" in str(info.value.__cause__)
    assert not any(tmp_path.iterdir())


def test_evaluation_writes_only_eval_output_dir_and_refuses_a_second_time(home: Home, trained: set[str]) -> None:
    eval_dir = home.root / "results" / "eval"
    configs = ["configs/train.json", "configs/evaluate.json"]
    args = ("--dataset_dir", str(home.dataset), "--eval_output_dir", str(eval_dir))
    code, output, changed = home.run("evaluating", configs, *args)
    assert code == 0, output[-4000:]
    assert not _outside(changed, ("results",)), sorted(changed)
    assert {f"results/eval/{name}" for name in ("metrics.json", "scores.csv", "roc.png")} <= changed

    code, output, changed = home.run("evaluating", configs, *args)
    assert code != 0 and "already holds the results of an earlier evaluation" in output
    assert "--overwrite true" in output
    assert not changed, sorted(changed)


def test_only_the_builtin_synthetic_folder_is_written_as_data(home: Home, trained: set[str]) -> None:
    """With the default ``dataset_dir`` the synthetic set is written to the bundle's ``data/synthetic``, only there.

    The set is made small by overriding its generator's arguments; the decision to write it is the config's.
    """
    datalist = f"$scripts.data.dataset.prepare_datalist(@dataset_dir, @synthetic_dataset_dir, seed=0, {SMALL_SYNTHETIC})"
    allowed = ("bundle/data/synthetic", "bundle/synthetic_models", "bundle/synthetic_runs")
    code, output, changed = home.run("training", ["configs/train.json"], "--datalist", datalist,
                                     "--ckpt_dir", "synthetic_models", "--output_dir", "synthetic_runs")
    assert code == 0, output[-4000:]
    assert not _outside(changed, allowed), sorted(_outside(changed, allowed))
    assert "bundle/data/synthetic/train/normal_256/normal_0000.png" in changed
    assert "bundle/synthetic_models/model.pt" in changed


# ------------------------------------------------------------------------------------------------------------
# configs are code, data is not: nothing read from the data is evaluated or unpickled
# ------------------------------------------------------------------------------------------------------------


def test_names_from_the_data_are_never_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where the canary would appear if a name were run as a config expression
    canary = tmp_path / "EVALUATED"
    hostile = "$__import__('pathlib').Path('EVALUATED').touch() or @x.png"
    dataset = write_synthetic_dataset(tmp_path / "xray", n_train=4, n_val_normal=1, n_val_abnormal=1,
                                      n_test_normal=1, n_test_abnormal=1, size=64, seed=6)
    (dataset / "datalist.json").unlink()  # read as the ZhangLab folder layout, whose scan finds the renamed file
    (dataset / "train" / "normal_256" / "normal_0000.png").rename(dataset / "train" / "normal_256" / hostile)
    wf = workflow(["train.json"], "train", "training", **TINY, dataset_dir=str(dataset),
                  ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"), epochs=1)
    wf.initialize()  # builds the datalist and caches every training image, the hostile name included
    training = [Path(item["image"]).name for item in wf.parser.get_parsed_content("datalist")["training"]]
    assert hostile in training
    assert len(wf.parser.get_parsed_content("train#dataset")) == 4

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": hostile.replace("@x.png", "")}],
                                    "validation": [{"image": "$@dataset_dir", "label": 0}]}))
    wf = workflow(["train.json"], "train", "training", **TINY, dataset_dir=str(datalist),
                  ckpt_dir=str(tmp_path / "models2"), output_dir=str(tmp_path / "runs"), epochs=1)
    with pytest.raises(Exception) as info:
        wf.initialize()
    assert "does not exist" in str(info.value.__cause__)
    assert not canary.exists()


class _Payload:
    """Unpickling it would create ``path``: what a hostile checkpoint could do with arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return Path.touch, (self.path,)


def test_checkpoints_are_loaded_as_data_not_code(tmp_path: Path) -> None:
    canary = tmp_path / "UNPICKLED"
    hostile = tmp_path / "model.pt"
    torch.save({"detector": {"weight": _Payload(canary)}}, hostile)
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(hostile)
    loader = CheckpointFileLoader(load_path=hostile, load_dict={"detector": torch.nn.Linear(1, 1)})
    with pytest.raises(ValueError, match="cannot be read"):  # as evaluate.json and inference.json use it
        loader(Engine(lambda engine, batch: None))
    assert not canary.exists()
