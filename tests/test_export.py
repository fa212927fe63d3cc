"""TorchScript export with ``ckpt_export``; the exported bundle run as MONAI Deploy's bundle operator runs it."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export
from pydicom.data import get_testdata_file

from bundle_utils import BUNDLE, CONFIGS, TINY

RG1 = get_testdata_file("RG1_UNCR.dcm")
METADATA = json.loads((CONFIGS / "metadata.json").read_text())
NETWORK_TINY = {k: TINY[k] for k in ("img_size", "num_patch", "level", "features_root", "num_slots", "shrink_thres",
                                     "mem_num_slots", "inpaint_channels", "num_heads")}
SIZE = NETWORK_TINY["img_size"]


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    """One torch thread (see ``test_inference.py``: OpenMP threads on an oversubscribed CPU are very slow)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict:
    """A bundle folder with a tiny-network ``inference.json``, a ``model.pt`` for it and the exported ``model.ts``."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "configs").mkdir()
    (root / "models").mkdir()
    config = json.loads((CONFIGS / "inference.json").read_text())
    config.update(NETWORK_TINY)
    assert config["map_kind"] == "feature"  # the default map
    config["score_kind"] = "combined"  # the score with the most parts (smoothing, per-pixel and feature statistics)
    config_file = root / "configs" / "inference.json"
    config_file.write_text(json.dumps(config, indent=4))

    parser = ConfigParser()
    parser.read_config(str(config_file))
    torch.manual_seed(0)
    detector = parser.get_parsed_content("network_def").eval()
    statistics = detector.statistics
    statistics.mean.copy_(torch.tensor([0.02, 0.25]))
    statistics.std.copy_(torch.tensor([0.5, 0.05]))
    generator = torch.Generator().manual_seed(2)  # per-pixel residual statistics unlike the defaults (0 and 1)
    statistics.pixel_mean.copy_(0.05 * torch.randn(statistics.pixel_mean.shape, generator=generator))
    statistics.pixel_std.copy_(0.02 + 0.1 * torch.rand(statistics.pixel_std.shape, generator=generator))
    with torch.no_grad():  # reconstruction and feature scores spread around 0.5, not saturated
        raw = detector.raw_scores(torch.rand(40, 1, SIZE, SIZE, generator=generator))
        statistics.density.fit(raw["pooled_features"])
        # 40 images whiten 32-value descriptors in sample: new images lie further out than the left-out ones, so
        # the feature score's statistics are those of new images here, for scores that are not all saturated
        new = statistics.density.image_score(statistics.density.distance(
            detector.raw_scores(torch.rand(40, 1, SIZE, SIZE, generator=generator))["pooled_features"]))
    statistics.density.score_mean.copy_(new.mean())
    statistics.density.score_std.copy_(new.std())
    statistics.mean[1], statistics.std[1] = raw["recon_error"].mean(), raw["recon_error"].std()
    statistics.ready.fill_(True)
    statistics.threshold.fill_(0.45)
    torch.save(detector.state_dict(), root / "models" / "model.pt")

    # python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \
    #     --meta_file configs/metadata.json --config_file configs/inference.json --use_trace true --input_shape ...
    ckpt_export(
        "network_def",
        filepath=str(root / "models" / "model.ts"),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(config_file),
        use_trace=True,
        input_shape=[1, 1, SIZE, SIZE],
        bundle_root=str(root),
    )
    return {"root": root, "config": config, "config_file": config_file, "detector": detector}


def load_like_deploy(path) -> tuple[torch.jit.ScriptModule, dict, ConfigParser]:
    """Load ``model.ts`` and its ``extra/`` configs, and parse them, as MONAI Deploy's bundle operator does."""
    extra = {"metadata.json": "", "inference.json": ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    meta = json.loads(extra["metadata.json"])
    parser = ConfigParser()
    parser.read_meta(f=meta)
    parser.read_config(f=json.loads(extra["inference.json"]))
    parser.parse()
    return module, meta, parser


def test_exported_module_returns_the_declared_outputs(bundle) -> None:
    module, meta, _ = load_like_deploy(bundle["root"] / "models" / "model.ts")
    assert meta["version"] == METADATA["version"]
    assert meta["network_data_format"] == METADATA["network_data_format"]
    outputs = meta["network_data_format"]["outputs"]
    torch.manual_seed(1)
    x = torch.rand(3, 1, SIZE, SIZE)  # traced with a batch of 1: the batch size must stay free
    with torch.no_grad():
        exported, eager = module(x), bundle["detector"](x)
    assert isinstance(exported, tuple) and len(exported) == len(outputs) == 2
    anomaly_map, score = exported
    assert anomaly_map.shape == (3, outputs["anomaly_map"]["num_channels"], SIZE, SIZE)
    assert score.shape == (3,)
    for value, name in ((anomaly_map, "anomaly_map"), (score, "score")):
        low, high = outputs[name]["value_range"]
        assert low <= float(value.min()) and float(value.max()) <= high, name
    assert float(score.max() - score.min()) > 0.05  # the scores differ: their equality below means something
    for got, want in zip(exported, eager):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the score statistics and the threshold travel inside the exported module
    assert float(module.statistics.threshold) == pytest.approx(0.45)
    assert bool(module.statistics.ready)
    assert torch.equal(module.statistics.pixel_std, bundle["detector"].statistics.pixel_std)
    for name in ("whitening", "bank", "cell_scale", "distance_mean", "distance_scale"):
        assert torch.equal(getattr(module.statistics.density, name), getattr(bundle["detector"].statistics.density, name))


def test_exported_module_holds_no_device_constant(bundle) -> None:
    """A traced module keeps the device of every tensor made inside ``forward`` as a constant (``torch.arange(n,
    device=x.device)`` traced on the CPU makes CPU tensors on a GPU too). The export is traced wherever the user runs
    ``ckpt_export`` and deployed on a GPU or a CPU: its graph must create no tensor on a fixed device."""
    module, _, _ = load_like_deploy(bundle["root"] / "models" / "model.ts")
    graph = str(module.inlined_graph)
    assert "aten::" in graph and "statistics" in str(module.code) + graph  # the whole detector's graph is read
    fixed = [line.strip() for line in graph.splitlines() if ": Device = prim::Constant" in line]
    assert not fixed


def test_deploy_style_run_of_a_dicom_matches_the_eager_bundle(bundle, tmp_path) -> None:
    module, _, parser = load_like_deploy(bundle["root"] / "models" / "model.ts")
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")

    item = preprocessing({"image": RG1})
    assert item["error"] == ""
    with torch.no_grad():
        anomaly_map, score = inferer(item["image"][None], module)
    result = postprocessing({**item, "pred": [anomaly_map[0], score[0]]})
    assert result["anomaly_map"].shape == (1, 1955, 1841)  # RG1's rows x columns

    # the eager bundle on the same DICOM, through ConfigWorkflow as `monai.bundle run` does
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(RG1, inputs / "rg1.dcm")
    out = tmp_path / "out"
    wf = ConfigWorkflow(
        config_file=str(bundle["config_file"]), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", bundle_root=str(BUNDLE),
        input_dir=str(inputs), output_dir=str(out), ckpt_path=str(bundle["root"] / "models" / "model.pt"),
        device="cpu", num_workers=0, save_overlay=False, save_dicom=False,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(out / "anomaly_scores.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "ok"
    assert float(result["score"]) == pytest.approx(float(row["score"]), abs=1e-5)
    eager_map = nib.load(out / row["anomaly_map"]).get_fdata().T
    np.testing.assert_allclose(result["anomaly_map"][0].numpy(), eager_map, atol=1e-5)
    assert row["decision"] == ("abnormal" if float(result["score"]) >= 0.45 else "normal")


def test_export_without_trace_says_to_add_use_trace(bundle, tmp_path) -> None:
    with pytest.raises(TypeError, match="--use_trace true"):
        ckpt_export("network_def", filepath=str(tmp_path / "model.ts"),
                    ckpt_file=str(bundle["root"] / "models" / "model.pt"), meta_file=str(CONFIGS / "metadata.json"),
                    config_file=str(bundle["config_file"]),
                    bundle_root=str(bundle["root"]))
    assert not (tmp_path / "model.ts").exists()


def test_export_of_weights_trained_at_another_size(bundle, tmp_path) -> None:
    """``--ckpt_file`` of a model at another img_size: refused with the size to pass; with ``--ckpt_path`` too (as
    README says) the network is built at the file's size."""
    original = json.loads((CONFIGS / "inference.json").read_text())["img_size"]
    config = {**bundle["config"], "img_size": original}  # inference.json's rule: the size of the file at ckpt_path
    config_file = tmp_path / "inference.json"
    config_file.write_text(json.dumps(config))
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update({"img_size": 2 * SIZE})
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "large.pt")
    common = {"meta_file": str(CONFIGS / "metadata.json"), "config_file": str(config_file), "use_trace": True,
              "bundle_root": str(bundle["root"]), "ckpt_file": str(tmp_path / "large.pt")}
    with pytest.raises(RuntimeError, match=f"trained at img_size {2 * SIZE} .* built at img_size {SIZE}; pass "
                                         f"'--img_size {2 * SIZE}'"):
        ckpt_export("network_def", filepath=str(tmp_path / "a.ts"), input_shape=[1, 1, SIZE, SIZE], **common)
    ckpt_export("network_def", filepath=str(tmp_path / "b.ts"), input_shape=[1, 1, 2 * SIZE, 2 * SIZE],
                ckpt_path=str(tmp_path / "large.pt"), **common)
    module = torch.jit.load(str(tmp_path / "b.ts"))
    assert module.statistics.pixel_mean.shape[-1] == 2 * SIZE
    anomaly_map, _ = module(torch.rand(1, 1, 2 * SIZE, 2 * SIZE))
    assert anomaly_map.shape == (1, 1, 2 * SIZE, 2 * SIZE)
