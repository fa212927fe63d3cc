"""The train and evaluate configs run for real, on a small generated data set, through ConfigWorkflow."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from bundle_utils import BUNDLE, CONFIGS, TINY, run, workflow
from scripts.checkpoint import load_checkpoint, save_atomic
from scripts.data.phantom import FINDINGS
from scripts.data.synthetic import write_synthetic_dataset
from scripts.detector import SCORE_KINDS
from scripts.handlers import PIXEL_MAPS

N_TEST_NORMAL, N_TEST_ABNORMAL = 3, 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    return write_synthetic_dataset(
        root, n_train=8, n_val_normal=2, n_val_abnormal=2, n_test_normal=N_TEST_NORMAL,
        n_test_abnormal=N_TEST_ABNORMAL, size=64, seed=1,
    )


def _train(dataset, ckpt_dir, tmp_path, **override):
    args = {**TINY, "dataset_dir": str(dataset), "ckpt_dir": str(ckpt_dir), "output_dir": str(tmp_path / "tb"),
            "epochs": 2, **override}
    return run(["train.json"], "train", "training", **args)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    ckpt_dir = tmp / "models"
    wf = _train(dataset, ckpt_dir, tmp)
    return wf, ckpt_dir


def _chain(exc: BaseException) -> str:
    """The messages of an exception and its causes (MONAI wraps errors raised while instantiating)."""
    messages = []
    while exc is not None:
        messages.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(messages)


def _epoch(checkpoint):
    """The completed epochs stored in a checkpoint's trainer state (Ignite stores the iteration)."""
    return checkpoint["trainer"]["iteration"] // checkpoint["trainer"]["epoch_length"]


def test_train_config_has_standard_properties(dataset, tmp_path):
    wf = workflow(["train.json"], "train", "training", **TINY, dataset_dir=str(dataset), epochs=7, val_interval=3,
                  ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"))
    wf.initialize()
    assert wf.check_properties() in (None, [])
    # the optional ids the bundle has follow MONAI's standard names
    for prop in ("network_def", "train_handlers", "train_preprocessing", "evaluator", "val_dataset",
                 "val_handlers", "val_preprocessing", "val_inferer", "train_dataset", "train_inferer"):
        assert getattr(wf, prop) is not None, prop
    assert wf.max_epochs == 7 and wf.val_interval == 3  # epochs reach train#trainer#max_epochs
    # validation reports the AUC of every score the default detector computes
    assert set(wf.parser.get_parsed_content("validate#additional_metrics")) == {f"val_auc_{k}" for k in SCORE_KINDS}


@pytest.mark.parametrize("device, fused", [("cpu", True), ("meta", False)])
def test_adam_is_fused_where_torch_has_the_kernel(device, fused, tmp_path):
    """The single-kernel Adam (faster, no per-step temporaries the size of the model) on CPU/CUDA, for-loop elsewhere."""
    wf = workflow(["train.json"], "train", "training", **{**TINY, "device": device})
    for name in ("g_optimizer", "d_optimizer"):
        assert wf.parser.get_parsed_content(name).defaults["fused"] is fused, name


def test_training_writes_checkpoints_that_round_trip(trained):
    wf, ckpt_dir = trained
    names = {p.name for p in ckpt_dir.iterdir()}
    assert {"checkpoint_latest.pt", "checkpoint_best.pt", "model.pt"} <= names
    latest = load_checkpoint(ckpt_dir / "checkpoint_latest.pt")
    assert _epoch(latest) == 2
    for key in ("generator", "discriminator", "g_optimizer", "d_optimizer", "g_lr_scheduler", "d_lr_scheduler",
                "score_statistics", "rng", "checkpointer"):
        assert key in latest, key
    generator = wf.parser.get_parsed_content("generator")
    # the memory queues travel in the generator state and were written during training
    pointer = [k for k in latest["generator"] if k.endswith("queue.ptr")]
    assert len(pointer) == 1, "generator state has no memory write pointer"
    # 2 epochs x 2 iterations, a generator step (and memory write of 4 queries) every n_critic=2 iterations
    num_slots = latest["generator"][pointer[0].replace("ptr", "memory")].shape[1]
    assert int(latest["generator"][pointer[0]]) == (2 * 4) % num_slots
    for k, v in generator.state_dict().items():
        assert torch.equal(v.cpu(), latest["generator"][k]), k
    assert bool(latest["score_statistics"]["ready"])

    # model.pt loads into a fresh detector built from the config and reproduces its scores
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), **TINY})
    detector = parser.get_parsed_content("detector")
    missing = detector.load_state_dict(load_checkpoint(ckpt_dir / "model.pt"))
    assert not missing.missing_keys and not missing.unexpected_keys
    trained_detector = wf.parser.get_parsed_content("detector").eval()
    detector.eval()
    x = torch.rand(2, 1, 64, 64)
    best_epoch = _epoch(load_checkpoint(ckpt_dir / "checkpoint_best.pt"))
    if best_epoch == 2:
        with torch.no_grad():
            assert torch.allclose(detector(x)[1], trained_detector(x)[1])


def test_evaluate_writes_metrics_csv_and_roc(trained, dataset, tmp_path, caplog):
    _, ckpt_dir = trained
    out = tmp_path / "eval"
    logger = logging.getLogger("scripts.progress")
    logger.addHandler(caplog.handler)  # the workflow's logging.conf replaced the root logger's handlers
    try:
        run(["train.json", "evaluate.json"], "eval", "evaluating", **TINY, dataset_dir=str(dataset),
            ckpt_dir=str(ckpt_dir), eval_output_dir=str(out))
    finally:
        logger.removeHandler(caplog.handler)
    total = N_TEST_NORMAL + N_TEST_ABNORMAL
    progress = [r.getMessage() for r in caplog.records if r.name == "scripts.progress"]
    assert len(progress) == 1 and progress[0].startswith(f"evaluated {total} / {total} images (") and "in all" in progress[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["score_kind"] == "feature"
    for kind in SCORE_KINDS:
        m = metrics[kind]
        assert m["num_images"] == N_TEST_NORMAL + N_TEST_ABNORMAL and m["num_abnormal"] == N_TEST_ABNORMAL
        assert 0.0 <= m["auc"] <= 1.0
        low, high = m["auc_ci95"]
        assert 0.0 <= low <= m["auc"] <= high <= 1.0
        for key in ("accuracy", "f1", "sensitivity", "specificity", "precision", "threshold"):
            assert key in m
    # the built-in set's datalist gives finding kinds and lesion masks: per-finding AUCs, pixel AUROCs, AUPROs
    kinds = FINDINGS[:N_TEST_ABNORMAL]
    for kind in SCORE_KINDS:
        per_finding = metrics[kind]["per_finding"]
        assert set(per_finding) == set(kinds) and all(v["num_abnormal"] == 1 for v in per_finding.values())
        assert all(0.0 <= v["auc"] <= 1.0 for v in per_finding.values())
    pixel = metrics["pixel"]
    assert set(pixel["auroc"]) == set(PIXEL_MAPS) and all(0 <= v <= 1 for v in pixel["auroc"].values())
    assert set(pixel["aupro"]) == set(PIXEL_MAPS) and 0 <= pixel["aupro"]["anomaly_map"] <= 1  # None (NaN) fails
    assert pixel["num_regions"] == N_TEST_ABNORMAL  # each synthetic finding is one connected blob
    masks = [np.asarray(Image.open(p).resize((TINY["img_size"],) * 2, Image.BOX)) >= 128
             for p in sorted((dataset / "masks" / "test").iterdir())]
    assert pixel["num_lesion_pixels"] == pytest.approx(sum(int(m.sum()) for m in masks), rel=0.05)
    total_pixels = (N_TEST_NORMAL + N_TEST_ABNORMAL) * TINY["img_size"] ** 2
    assert pixel["num_lesion_pixels"] + pixel["num_other_pixels"] == total_pixels
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_TEST_NORMAL + N_TEST_ABNORMAL
    assert sorted(r["kind"] for r in rows if r["label"] == "1") == sorted(kinds)
    assert sum(int(r["label"]) for r in rows) == N_TEST_ABNORMAL
    assert all(r["decision"] in ("normal", "abnormal") for r in rows)
    for name in ("roc.png", "score_histogram.png", "cases.png"):
        assert (out / name).stat().st_size > 1000, name


def test_evaluation_keeps_the_models_statistics_unless_asked_to_measure_them_again(trained, dataset, tmp_path, caplog):
    """The model's saved statistics score evaluation; ``--remeasure_statistics true`` measures them again with the
    given settings: here the same bank (the same weights, the augmentation reset to the seed), so the same image
    scores, and an unsmoothed map (``--feature_map_sigma 0``), whose saved smoothing then replaces the model's."""
    _, ckpt_dir = trained
    logger = logging.getLogger("scripts.handlers")
    logger.addHandler(caplog.handler)  # the workflow's logging.conf replaced the root logger's handlers
    args = {**TINY, "dataset_dir": str(dataset), "ckpt_dir": str(ckpt_dir)}
    try:
        kept = run(["train.json", "evaluate.json"], "eval", "evaluating", **args, eval_output_dir=str(tmp_path / "a"),
                   feature_map_sigma=0.0)
        assert "loaded with the checkpoint; not recomputed" in caplog.text
        caplog.clear()
        again = run(["train.json", "evaluate.json"], "eval", "evaluating", **args, eval_output_dir=str(tmp_path / "b"),
                    feature_map_sigma=0.0, remeasure_statistics=True)
        assert "not recomputed" not in caplog.text and "feature statistics over" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)
    density_kept = kept.parser.get_parsed_content("detector").statistics.density
    density_again = again.parser.get_parsed_content("detector").statistics.density
    assert float(density_kept.map_sigma) == 0.75 and float(density_again.map_sigma) == 0.0
    torch.testing.assert_close(density_again.bank, density_kept.bank)
    torch.testing.assert_close(density_again.cell_scale, density_kept.cell_scale)
    assert float(density_again.smooth_scale) == float(density_again.cell_scale)  # no smoothing: one map
    assert float(density_kept.smooth_scale) < float(density_kept.cell_scale)
    rows = [list(csv.DictReader(open(tmp_path / name / "scores.csv"))) for name in ("a", "b")]
    assert [r["file"] for r in rows[0]] == [r["file"] for r in rows[1]]
    for column in ("feature_score", "score_feature"):
        np.testing.assert_allclose([float(r[column]) for r in rows[1]], [float(r[column]) for r in rows[0]],
                                   rtol=1e-4, atol=1e-6)


def test_evaluation_with_other_feature_settings_measures_the_features_again_and_keeps_the_weights(
    trained, dataset, tmp_path
):
    """A model trained without the mirror descriptor, evaluated with ``--feature_mirror true``: refused with the
    setting to pass while its saved feature statistics are kept; with ``--remeasure_statistics true`` its weights load
    without them, they are measured again with the new descriptor (twice as long), and the model file is untouched."""
    _, ckpt_dir = trained
    before = (ckpt_dir / "model.pt").read_bytes()
    args = {**TINY, "dataset_dir": str(dataset), "ckpt_dir": str(ckpt_dir), "feature_mirror": True}
    with pytest.raises(Exception) as info:
        run(["train.json", "evaluate.json"], "eval", "evaluating", **args, eval_output_dir=str(tmp_path / "a"))
    assert "model.pt does not fit" in _chain(info.value) and "--feature_mirror false" in _chain(info.value)
    wf = run(["train.json", "evaluate.json"], "eval", "evaluating", **args, eval_output_dir=str(tmp_path / "b"),
             remeasure_statistics=True)
    detector = wf.parser.get_parsed_content("detector")
    saved = load_checkpoint(ckpt_dir / "model.pt")
    density = detector.statistics.density
    assert density.mirror and density.mean.shape[1] == 2 * saved["statistics.density.mean"].shape[1]
    assert bool(detector.statistics.ready) and float(density.score_std) > 0
    weights = [k for k in saved if not k.startswith("statistics.")]
    assert weights and all(torch.equal(detector.state_dict()[k].cpu(), saved[k]) for k in weights)
    rows = list(csv.DictReader(open(tmp_path / "b" / "scores.csv")))
    assert len({r["feature_score"] for r in rows}) > 1
    assert (ckpt_dir / "model.pt").read_bytes() == before


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_exactly(num_workers, dataset, tmp_path):
    """1 epoch + resume to 2 epochs gives the same weights, queues and states as 2 uninterrupted epochs.

    Random augmentation is on (``aug_prob`` 1): with ``num_workers`` 0 the random affine transform's own generator
    runs on across epochs in the main process and must come from the checkpoint; with workers, each epoch's
    workers re-seed their copies from torch's generator.
    """
    common = {"aug_prob": 1.0, "num_workers": num_workers}
    _train(dataset, tmp_path / "full", tmp_path, **common)
    _train(dataset, tmp_path / "split", tmp_path, epochs=1, **common)
    _train(dataset, tmp_path / "split", tmp_path, resume=True, **common)
    full = load_checkpoint(tmp_path / "full" / "checkpoint_latest.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoint_latest.pt")
    assert _epoch(split) == _epoch(full) == 2
    for net in ("generator", "discriminator"):
        for k, v in full[net].items():
            assert torch.equal(v, split[net][k]), f"{net}.{k}"
    for opt in ("g_optimizer", "d_optimizer"):
        for param, state in full[opt]["state"].items():
            for k, v in state.items():
                assert torch.equal(v, split[opt]["state"][param][k]), f"{opt}.{param}.{k}"
    for name, state in full["rng"]["transforms"].items():
        assert torch.equal(state["keys"], split["rng"]["transforms"][name]["keys"]), name
        assert state["pos"] == split["rng"]["transforms"][name]["pos"], name


def test_resume_from_checkpoint_without_transform_states_warns(dataset, tmp_path, caplog):
    """A checkpoint written before the augmentation's random states were saved still resumes, with a warning."""
    _train(dataset, tmp_path / "old", tmp_path, epochs=1)
    path = tmp_path / "old" / "checkpoint_latest.pt"
    old = load_checkpoint(path)
    for key in ("transforms", "numpy_has_gauss", "numpy_cached_gaussian"):
        del old["rng"][key]
    save_atomic(old, path)
    wf = workflow(["train.json"], "train", "training", **TINY, dataset_dir=str(dataset), ckpt_dir=str(path.parent),
                  output_dir=str(tmp_path / "tb"), epochs=2, resume=True)
    loggers = [logging.getLogger("scripts.checkpoint"), logging.getLogger("scripts.progress")]
    for logger in loggers:
        logger.addHandler(caplog.handler)  # the workflow's logging.conf replaced the root logger's handlers
    try:
        wf.initialize()
        wf.run()
        wf.finalize()
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)
    assert "no random state of the augmentation transforms" in caplog.text
    progress = [r.getMessage() for r in caplog.records if r.name == "scripts.progress"]
    assert len(progress) == 1 and progress[0].startswith("epoch 2 / 2 done (") and "about 0 s left" in progress[0]
    resumed = load_checkpoint(path)
    assert _epoch(resumed) == 2 and "transforms" in resumed["rng"]


def test_logged_iterations_are_generator_steps():
    """The StatsHandler logs every log_every-th iteration from the first; with log_every a multiple of n_critic
    those are generator steps (iterations 1, 1 + n_critic, ...), so the printed lines carry the G losses."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"log_every": 10, "n_critic": 2})
    index = next(i for i, h in enumerate(parser["train#handlers"]) if h["_target_"] == "StatsHandler")
    iteration_log = parser.get_parsed_content(f"train#handlers#{index}#iteration_log")
    logged = [it for it in range(1, 41) if iteration_log(None, it)]
    assert logged == [1, 11, 21, 31]
    assert all((it - 1) % 2 == 0 for it in logged)  # the trainer's generator-step rule


def test_resume_without_checkpoint_names_the_file(dataset, tmp_path):
    with pytest.raises(Exception) as info:
        _train(dataset, tmp_path / "none", tmp_path, resume=True)
    assert str(tmp_path / "none" / "checkpoint_latest.pt") in _chain(info.value)


def test_missing_dataset_dir_is_named(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(Exception) as info:
        _train(missing, tmp_path / "m", tmp_path)
    assert str(missing) in _chain(info.value)


def test_new_run_never_replaces_existing_checkpoints(trained, dataset, tmp_path):
    _, ckpt_dir = trained
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    with pytest.raises(Exception) as info:
        _train(dataset, ckpt_dir, tmp_path, epochs=1)
    assert str(ckpt_dir) in _chain(info.value) and "--overwrite true" in _chain(info.value)
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == before


def test_papers_config_trains_and_evaluates_with_the_published_scoring(dataset, tmp_path):
    """``configs/paper.json`` over train.json: the discriminator score selects checkpoint and threshold, the map is
    the residual, and no encoder-feature statistics are measured or saved."""
    paper = ["train.json", "paper.json"]
    overrides = {**TINY, "dataset_dir": str(dataset), "ckpt_dir": str(tmp_path / "models")}
    wf = run(paper, "train", "training", **overrides, output_dir=str(tmp_path / "tb"), epochs=1)
    detector = wf.parser.get_parsed_content("detector")
    assert detector.score_kind == "discriminator" and detector.map_kind == "residual"
    assert detector.statistics.density is None
    assert set(wf.parser.get_parsed_content("validate#additional_metrics")) == {"val_auc_discriminator",
                                                                                "val_auc_reconstruction"}
    assert not any("density" in k for k in load_checkpoint(tmp_path / "models" / "model.pt"))
    out = tmp_path / "eval"
    run(paper + ["evaluate.json"], "eval", "evaluating", **overrides, eval_output_dir=str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["score_kind"] == "discriminator"
    assert {"discriminator", "reconstruction"} <= set(metrics) and not {"feature", "combined"} & set(metrics)
    with open(out / "scores.csv") as f:
        assert "feature_score" not in next(csv.reader(f))
    # inference with the paper's scoring: the residual map on the overlay's residual scale
    infer = workflow(["inference.json", "paper.json"], "infer", "inferring", ckpt_path=str(tmp_path / "models" /
                                                                                           "model.pt"))
    network = infer.parser.get_parsed_content("network_def")
    assert (network.score_kind, network.map_kind, network.statistics.density) == ("discriminator", "residual", None)
    assert infer.parser.get_parsed_content("overlay_vmax") == 0.25
