"""The MONAI Label app (``label/app``) on the real ``monailabel`` server, through MONAI Label's REST API.

One server (a subprocess of the label environment's Python, README.md "MONAI Label") serves a temporary studies
folder of synthetic radiographs (PNG, not square), pydicom-data's ``RG1_UNCR.dcm`` and an unreadable file, with
its models in a temporary ``ckpt_dir``; it is shared by the tests of this module and always stopped.

Without the label environment (``.venv-label``, or the Python named by ``CXR_LABEL_PYTHON``) the tests are skipped,
and fail under CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from packaging.requirements import Requirement
from PIL import Image
from pydicom.data import get_testdata_file

from bundle_utils import BUNDLE, CONFIGS
from scripts.checkpoint import trained_img_size
from scripts.data.phantom import synthesize_radiograph

REPO = BUNDLE.parent
APP = REPO / "label" / "app"
LABEL_PYTHON = Path(os.environ.get("CXR_LABEL_PYTHON") or REPO / ".venv-label" / "bin" / "python")
MODEL = "cxr"
SERVED_SIZE, TRAIN_SIZE = 64, 32  # img_size of the random model the tests serve, and of the REST training run
DICOM_SPACING = (0.2, 0.15)  # row, column spacing (mm) of the detector, given to the copy of RG1_UNCR.dcm
NORMALS, ABNORMALS = ("normal_0", "normal_1", "normal_2", "normal_3"), ("abnormal_0", "abnormal_1")
START_TIMEOUT, REQUEST_TIMEOUT, TRAIN_TIMEOUT, STOP_TIMEOUT = 120, 120, 300, 20


def _overlay_vmax() -> float:
    """inference.json's ``overlay_vmax`` (for its default map), the app's default map threshold."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    return float(parser.get_parsed_content("overlay_vmax"))


OVERLAY_VMAX = _overlay_vmax()


def _label_python() -> Path:
    """The label environment's Python; skips (locally) or fails (CI) when it cannot import monailabel."""
    reason = None
    if not LABEL_PYTHON.is_file():
        reason = f"no label environment at {LABEL_PYTHON}"
    else:
        probe = subprocess.run([str(LABEL_PYTHON), "-c", "import monailabel"], capture_output=True, text=True,
                               timeout=120)
        if probe.returncode:
            reason = f"{LABEL_PYTHON} cannot import monailabel: {probe.stderr.strip()[-500:]}"
    if reason is None:
        return LABEL_PYTHON
    reason += " (install it as README.md's 'MONAI Label (3D Slicer / OHIF)' says, or set CXR_LABEL_PYTHON)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


# -------------------------------------------------------------------------------------------------- the data


def _write_png(path: Path, seed: int, finding: str | None = None) -> Path:
    """A synthetic radiograph, cropped to 64 rows x 56 columns (not square: orientation shows)."""
    image, _ = synthesize_radiograph(np.random.default_rng(seed), size=64, finding=finding)
    Image.fromarray(np.round(image[:, :56] * 255).astype(np.uint8), mode="L").save(path)
    return path


def _studies(root: Path) -> Path:
    root.mkdir()
    for i, name in enumerate(NORMALS):
        _write_png(root / f"{name}.png", seed=i)
    for i, (name, finding) in enumerate(zip(ABNORMALS, ("nodule", "effusion"))):
        _write_png(root / f"{name}.png", seed=100 + i, finding=finding)
    dicom = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    dicom.ImagerPixelSpacing = list(DICOM_SPACING)  # it has none (PixelSpacing 0): the label must keep this one
    dicom.save_as(root / "RG1_UNCR.dcm")
    (root / "broken.png").write_bytes(b"this is not an image")
    return root


def write_random_model(path: Path, img_size: int = SERVED_SIZE, threshold: float = 0.55) -> Path:
    """A ``model.pt`` of inference.json's detector (its default network) with random weights at ``img_size``.

    The score statistics keep their defaults (mean 0, std 1) and are marked measured, so the reconstruction score is
    ``sigmoid`` of the raw score, well inside (0, 1); ``threshold`` is the stored decision threshold.
    """
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"img_size": img_size, "device": "$torch.device('cpu')"})
    torch.manual_seed(0)
    detector = parser.get_parsed_content("network_def")
    detector.statistics.ready.fill_(True)
    detector.statistics.threshold.fill_(threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(detector.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------ the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """HTTP access to the running server: ``request`` returns ``(status, body bytes)``."""

    def __init__(self, base: str, studies: Path, ckpt_dir: Path, log: Path) -> None:
        self.base, self.studies, self.ckpt_dir, self.log = base, studies, ckpt_dir, log

    @property
    def model_path(self) -> Path:
        return self.ckpt_dir / "model.pt"

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
                timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method: str, path: str, **kwargs) -> tuple[int, object]:
        status, body = self.request(method, path, **kwargs)
        return status, json.loads(body)

    def infer(self, image: str, output: str = "json", params: dict | None = None) -> tuple[int, bytes]:
        """POST /infer/<model>; ``params`` go as the form field MONAI Label reads a request's params from."""
        form = urllib.parse.urlencode({"params": json.dumps(params)}).encode() if params else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if params else None
        return self.request("POST", f"/infer/{MODEL}?image={urllib.parse.quote(image)}&output={output}", data=form,
                            headers=headers)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def label_python() -> Path:
    return _label_python()


@pytest.fixture(scope="module")
def server(label_python, tmp_path_factory):
    """The MONAI Label server over a temporary studies folder, started exactly as README.md says."""
    tmp = tmp_path_factory.mktemp("monailabel")
    studies, ckpt_dir, log = _studies(tmp / "studies"), tmp / "models", tmp / "server.log"
    ckpt_dir.mkdir()
    port = _free_port()
    command = [str(label_python), "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies",
               str(studies), "--host", "127.0.0.1", "--port", str(port), "--conf", "models", MODEL,
               "--conf", "ckpt_dir", str(ckpt_dir)]
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions")}
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", studies, ckpt_dir, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{srv.log_tail()}")
            try:
                if srv.request("GET", "/info/", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer within {START_TIMEOUT} s:\n{srv.log_tail()}")
            time.sleep(1)
        yield srv
    finally:  # the server and its training subprocesses share one process group
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)


@pytest.fixture
def served_model(server) -> Path:
    """A random model (:func:`write_random_model`) in the server's ``ckpt_dir``, written anew for each test."""
    return write_random_model(server.model_path)


def inference_json(label_python: Path, images: list[Path], model: Path, out: Path) -> dict[str, dict]:
    """``configs/inference.json`` on ``images`` (the README command, in the label environment): CSV rows by file."""
    out.mkdir(parents=True, exist_ok=True)
    datalist = out / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": str(p)} for p in images]}))
    command = [str(label_python), "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--input_dir", str(datalist), "--output_dir", str(out / "results"), "--ckpt_path", str(model),
               "--map_suffix", ".nii", "--save_overlay", "false", "--save_dicom", "false", "--num_workers", "0",
               "--batch_size", "1"]  # one image a batch, as the server scores: the same kernels, the same sums
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "results" / "anomaly_scores.csv", newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


# --------------------------------------------------------------------------------------------------- tests


def test_label_environment_satisfies_the_bundle_requirements(label_python):
    """requirements-label.txt is a pinned list: it must still hold everything requirements.txt asks for."""
    requirements = [Requirement(line.split("#")[0].strip())
                    for line in (REPO / "requirements.txt").read_text().splitlines() if line.split("#")[0].strip()]
    names = [r.name for r in requirements]
    script = ("import json, sys, importlib.metadata as m; "
              "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    result = subprocess.run([str(label_python), "-c", script, *names], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"a requirement of requirements.txt is not installed: {result.stderr[-500:]}"
    versions = json.loads(result.stdout)
    unmet = [f"{r} (installed {versions[r.name]})" for r in requirements
             if not r.specifier.contains(versions[r.name], prereleases=True)]
    assert not unmet, f"requirements-label.txt does not satisfy requirements.txt: {unmet}"


def test_missing_model_is_listed_as_needing_training_and_refused(server):
    aside = server.model_path.with_name("model.pt.aside")
    if server.model_path.exists():  # another test served one: take it away for this test
        server.model_path.rename(aside)
    try:
        status, info = server.json("GET", "/info/")
        assert status == 200
        model = info["models"][MODEL]
        assert model["needs_training"] is True and "needs training" in model["description"]
        assert MODEL in info["trainers"]
        status, body = server.infer(NORMALS[0])
        detail = json.loads(body)["detail"]
        assert status == 409 and "needs training" in detail and str(server.model_path) in detail
    finally:
        if aside.exists():
            aside.rename(server.model_path)


def test_unknown_image_id_is_refused(server):
    status, body = server.infer("no_such_image")
    assert status == 404
    assert "no_such_image" in json.loads(body)["detail"]


def test_unreadable_file_is_refused_and_the_rest_is_served(server, served_model):
    status, datastore = server.json("GET", "/datastore/?output=all")
    assert status == 200
    assert {*NORMALS, *ABNORMALS, "RG1_UNCR", "broken"} <= set(datastore["objects"])
    status, body = server.infer("broken")
    assert status == 422
    detail = json.loads(body)["detail"]
    assert "broken.png" in detail and "cannot load" in detail
    status, body = server.infer(NORMALS[0])
    assert status == 200, body
    assert json.loads(body)["decision"] in ("normal", "abnormal")


def test_infer_equals_inference_json(server, served_model, label_python, tmp_path):
    """Same files through /infer and configs/inference.json: same score, decision, threshold and map pixels."""
    _, info = server.json("GET", "/info/")
    assert info["models"][MODEL]["needs_training"] is False
    png, dcm = server.studies / f"{ABNORMALS[0]}.png", server.studies / "RG1_UNCR.dcm"
    rows = inference_json(label_python, [png, dcm], served_model, tmp_path)
    for path, image_id in ((png, ABNORMALS[0]), (dcm, "RG1_UNCR")):
        status, body = server.infer(image_id)
        assert status == 200, body
        params, row = json.loads(body), rows[str(path)]
        assert row["status"] == "ok"
        assert params["img_size"] == SERVED_SIZE
        assert abs(params["anomaly_score"] - float(row["score"])) <= 1e-5
        assert 0.0 < params["anomaly_score"] < 1.0
        assert params["decision"] == row["decision"]
        assert params["threshold"] == pytest.approx(float(row["threshold"]), abs=1e-7)
        assert params["score_kind"] == row["score_kind"]

        assert params["map_threshold"] == pytest.approx(OVERLAY_VMAX)  # the default: the overlay's full-colour value

        # the label: the map of inference.json (voxel (i, j) = (column, row)) at a request's map threshold, the map's
        # median here (a random model's map need not reach the default): both classes present, the comparison means
        # something
        anomaly_map = nib.load(tmp_path / "results" / row["anomaly_map"]).get_fdata(dtype=np.float32)
        threshold = float(np.median(anomaly_map))
        expected = (anomaly_map >= threshold).astype(np.uint8)
        status, body = server.infer(image_id, params={"map_threshold": threshold})
        assert status == 200, body
        params = json.loads(body)
        assert params["map_threshold"] == pytest.approx(threshold)
        status, label_bytes = server.infer(image_id, output="image", params={"map_threshold": threshold})
        assert status == 200
        if path.suffix == ".png":
            label = np.asarray(Image.open(io.BytesIO(label_bytes))).T  # rows x cols -> (col, row)
            assert label.shape == (56, 64)
        else:
            label_file = tmp_path / f"{image_id}_label.nii.gz"
            label_file.write_bytes(label_bytes)
            label = np.asarray(nib.load(label_file).dataobj)[..., 0]  # columns x rows x 1, as ITK reads a DICOM
            source_image, label_image = itk.imread(str(path)), itk.imread(str(label_file))
            assert tuple(itk.spacing(source_image))[:2] == pytest.approx(DICOM_SPACING[::-1])
            for geometry in (itk.spacing, itk.origin):  # the input's geometry, so that viewers overlay it
                assert tuple(geometry(label_image)) == pytest.approx(tuple(geometry(source_image)))
            np.testing.assert_allclose(itk.array_from_matrix(label_image.GetDirection()),
                                       itk.array_from_matrix(source_image.GetDirection()))
        assert label.shape == expected.shape
        assert 0 < expected.sum() < expected.size  # both classes present: the comparison means something
        np.testing.assert_array_equal(label, expected)
        assert params["abnormal_pixels"] == int(expected.sum())


def _train(server: Server, request: dict) -> dict:
    """POST /train/<model> and wait (bounded) for the run to end; returns MONAI Label's task record."""
    status, task = server.json("POST", f"/train/{MODEL}", data=json.dumps(request).encode(),
                               headers={"Content-Type": "application/json"})
    assert status == 200, task
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while task.get("status") not in ("DONE", "ERROR") and time.monotonic() < deadline:
        time.sleep(2)
        task = server.json("GET", "/train/")[1]
    return task


def _mark(server: Server, image_id: str, finding: str) -> None:
    form = urllib.parse.urlencode({"info": json.dumps({"finding": finding})}).encode()
    status, body = server.request("PUT", f"/datastore/image/info?image={image_id}", data=form,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body


def test_training_through_the_rest_api_writes_and_serves_a_new_model(server, served_model):
    """Mark normals (and abnormals for validation) in the datastore, train one epoch, infer with the new model;
    then train again from the served model (MONAI Label's default ``pretrained``)."""
    tiny = {"max_epochs": 1, "val_split": 0.25, "batch_size": 4, "num_workers": 0}
    task = _train(server, {**tiny, "img_size": TRAIN_SIZE})  # nothing marked yet
    assert task["status"] == "ERROR"
    assert "training needs at least 2 images marked normal" in "\n".join(task["details"])

    before = served_model.stat().st_mtime_ns
    for image_id in NORMALS:
        _mark(server, image_id, "normal")
    for image_id in ABNORMALS:
        _mark(server, image_id, "abnormal")
    assert server.json("GET", f"/datastore/image/info?image={NORMALS[1]}")[1]["finding"] == "normal"

    task = _train(server, {**tiny, "img_size": TRAIN_SIZE, "pretrained": False})
    assert task["status"] == "DONE", f"training ended {task['status']}:\n{server.log_tail()}"
    assert "training on 3 normal images; validating on 1 normal and 2 abnormal" in server.log.read_text()
    assert server.model_path.stat().st_mtime_ns != before
    assert trained_img_size(server.model_path, default=0) == TRAIN_SIZE
    status, body = server.infer(NORMALS[0])
    assert status == 200, body
    assert json.loads(body)["img_size"] == TRAIN_SIZE  # the new model is the one served
    status, label = server.infer(NORMALS[0], output="image")
    assert status == 200
    assert np.asarray(Image.open(io.BytesIO(label))).shape == (64, 56)  # the input's rows x columns

    before = server.model_path.stat().st_mtime_ns
    task = _train(server, tiny)  # pretrained (the default) at the served model's img_size (the default)
    assert task["status"] == "DONE", f"training ended {task['status']}:\n{server.log_tail()}"
    assert f"Add Checkpoint Loader for Path: {server.model_path}" in server.log.read_text()
    assert server.model_path.stat().st_mtime_ns != before
    assert trained_img_size(server.model_path, default=0) == TRAIN_SIZE
