"""Multi-process training: ``torchrun`` with 2 CPU processes (gloo) on ``train.json`` + ``multi_gpu_train.json``.

One real run of the user's command (module fixture) is inspected by several tests: each rank dumps its final
state through a test-only config overlay, and the bundle's output folders are per rank so that files written
by rank 1 would be seen.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from bundle_utils import BUNDLE, CONFIGS, TINY
from scripts import distributed
from scripts.engines import autocast_context
from scripts.metrics import auc_or_nan, best_accuracy_operating_point
from scripts.data.synthetic import write_synthetic_dataset

WORLD_SIZE = 2
N_TRAIN, N_VAL_NORMAL, N_VAL_ABNORMAL = 8, 3, 2  # 5 validation images: uneven shards (3 + 2)
STATS_IMAGES = 7  # uneven shards (4 + 3)
RUN_TIMEOUT_S = 300

# the run: 2 epochs of 8 images, batch 2 per rank -> 2 iterations per rank per epoch, a generator step
# (n_critic 2) at iterations 1 and 3, each writing 2 ranks x 2 queries per position
SETTINGS = {
    **{k: v for k, v in TINY.items() if k != "device"},
    "batch_size": 2,
    "epochs": 2,
    "stats_max_images": STATS_IMAGES,
    "feature_stats_max_images": STATS_IMAGES,
    "dist_timeout_s": 120,
    # the untrained TINY discriminator gives nearly constant logits (std ~1e-5), so its normalised scores amplify
    # rounding differences between batchings; the reconstruction score is well conditioned
    "score_kind": "reconstruction",
}
EXPECTED_G_STEPS = 2


def _rank_path(root: Path, name: str) -> str:
    """Config expression for ``root/rank<RANK>/name``: each rank gets its own folder, so rank 1's writes show."""
    return f"$os.path.join({str(root)!r}, 'rank' + os.environ['RANK'], {name!r})"


def _overlay(root: Path, dataset: Path) -> dict:
    """A third config file: TINY settings, per-rank output folders, and a final step dumping the rank's state."""
    dump = (
        f"$torch.save({{"
        "'generator': @generator.state_dict(), 'discriminator': @discriminator.state_dict(),"
        "'statistics': @detector.statistics.state_dict(), 'metrics': dict(@validate#evaluator.state.metrics),"
        "'train_indices': list(@train#sampler), 'val_indices': list(@validate#sampler),"
        "'stats_indices': list(@stats#sampler), 'iterations': @train#trainer.state.iteration,"
        "'uses_sampler': @train#dataloader.sampler is @train#sampler,"
        "'ddp': [type(@train#trainer.generator).__name__, type(@train#trainer.discriminator).__name__],"
        "'world_size': scripts.distributed.get_world_size()},"
        f" os.path.join({str(root / 'dumps')!r}, 'rank' + os.environ['RANK'] + '.pt'))"
    )
    return {
        **SETTINGS,
        "dataset_dir": str(dataset),
        "ckpt_dir": _rank_path(root, "models"),
        "output_dir": _rank_path(root, "tb"),
        "run": ["$@train#trainer.run()", dump],
    }


def _run_torchrun(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill that whole group, so no rank is left behind."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {RUN_TIMEOUT_S} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_data") / "synthetic"
    return write_synthetic_dataset(root, n_train=N_TRAIN, n_val_normal=N_VAL_NORMAL, n_val_abnormal=N_VAL_ABNORMAL,
                                   n_test_normal=1, n_test_abnormal=1, size=64, seed=3)


@pytest.fixture(scope="module")
def ddp_run(dataset, tmp_path_factory):
    """The user's command with 2 processes on the CPU; returns the output root and the per-rank dumps."""
    root = tmp_path_factory.mktemp("ddp_run")
    (root / "dumps").mkdir()
    overlay = root / "overlay.json"
    overlay.write_text(json.dumps(_overlay(root, dataset)))
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(overlay)]
    cmd = [
        # --standalone: a local rendezvous on a port the OS picks, so concurrent runs never collide
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
        "-m", "monai.bundle", "run", "training",
        "--config_file", repr(configs),
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(BUNDLE),
        "--device", "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BUNDLE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = _run_torchrun(cmd, BUNDLE, env)
    assert result.returncode == 0, result.stdout[-6000:]
    dumps = [torch.load(root / "dumps" / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    return root, dumps


def test_ranks_trained_as_one_ddp_model(ddp_run):
    _, dumps = ddp_run
    for d in dumps:
        assert d["world_size"] == WORLD_SIZE
        assert d["ddp"] == ["DistributedDataParallel", "DistributedDataParallel"]
        assert d["uses_sampler"]
        assert d["iterations"] == SETTINGS["epochs"] * N_TRAIN // WORLD_SIZE // SETTINGS["batch_size"]
    # the training shards are disjoint and cover the training set
    shards = [set(d["train_indices"]) for d in dumps]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(N_TRAIN))
    # parameters and every buffer (memory queues, pointers, BatchNorm statistics) are identical on both ranks
    for net in ("generator", "discriminator"):
        a, b = dumps[0][net], dumps[1][net]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{net}.{k} differs between ranks"


def test_memory_queue_writes_gather_all_ranks(ddp_run):
    _, dumps = ddp_run
    state = dumps[0]["generator"]
    ptr_keys = [k for k in state if k.endswith("queue.ptr")]
    assert ptr_keys
    written_per_step = WORLD_SIZE * SETTINGS["batch_size"]
    for k in ptr_keys:
        assert int(state[k]) == EXPECTED_G_STEPS * written_per_step % SETTINGS["num_slots"], k


def test_only_rank_zero_wrote_files(ddp_run):
    root, _ = ddp_run
    assert not (root / "rank1").exists()
    written = {p.name for p in (root / "rank0" / "models").iterdir()}
    assert {"checkpoint_latest.pt", "checkpoint_best.pt", "model.pt"} <= written
    assert any(p.name.startswith("events.out.tfevents") for p in (root / "rank0" / "tb").rglob("*"))


def test_validation_is_sharded_and_gathered(ddp_run, dataset):
    """Each rank scored its shard of the validation split; the AUC, threshold and score statistics are those of
    the whole split, recomputed here in one process with the final model."""
    _, dumps = ddp_run
    n_val = N_VAL_NORMAL + N_VAL_ABNORMAL
    val = [set(d["val_indices"]) for d in dumps]
    assert not val[0] & val[1] and val[0] | val[1] == set(range(n_val)) and len(val[0]) != len(val[1])
    stats = [set(d["stats_indices"]) for d in dumps]
    assert not stats[0] & stats[1] and stats[0] | stats[1] == set(range(STATS_IMAGES))

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**TINY, **SETTINGS, "dataset_dir": str(dataset), "bundle_root": str(BUNDLE)})
    detector = parser.get_parsed_content("detector")
    detector.generator.load_state_dict(dumps[0]["generator"])
    detector.discriminator.load_state_dict(dumps[0]["discriminator"])
    detector.eval()
    # the images in the order the ranks' statistics gathered them (rank 0's shard, then rank 1's), and their augmented
    # copies: each rank augments its own shard with the augmentation reset to the seed
    stats_dataset = parser.get_parsed_content("stats#dataset")
    order = [i for d in dumps for i in d["stats_indices"]]
    augmentation, moved = parser.get_parsed_content("stats#augmentation"), []
    for d in dumps:
        augmentation.set_random_state(parser.get_parsed_content("seed"))
        moved += [torch.as_tensor(augmentation(stats_dataset[i]["image"])) for i in d["stats_indices"]]
    with torch.no_grad():
        raw = detector.raw_scores(torch.stack([torch.as_tensor(stats_dataset[i]["image"]) for i in order]))
        detector.update_statistics({**raw, "augmented_features": detector.pooled_features(torch.stack(moved))})
    single = detector.statistics.state_dict()
    for d in dumps:
        for key in ("mean", "std", "pixel_mean", "pixel_std", "density.mean"):
            assert torch.allclose(d["statistics"][key], single[key], rtol=1e-4, atol=1e-6), key
        # the feature statistics of all ranks' images and copies: the whitening (of an inverse), the whitened bank
        # (float16) and the left-out score statistics, compared at their own scale
        for key in ("density.whitening", "density.bank", "density.cell_scale", "density.score_mean",
                    "density.score_std"):
            scale = single[key].float().abs().max()
            assert (d["statistics"][key].float() - single[key].float()).abs().max() <= 2e-3 * scale, key
        assert d["statistics"]["density.bank"].shape[1] == 2 * STATS_IMAGES  # one augmented copy of each

    scores, labels = [], []
    with torch.no_grad():
        for batch in parser.get_parsed_content("validate#dataloader"):
            raw = detector.raw_scores(batch["image"])
            scores.append(detector.normalise(raw)["reconstruction"])
            labels.append(batch["label"].reshape(-1))
    scores_np, labels_np = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    assert labels_np.size == n_val
    auc = auc_or_nan(scores_np, labels_np)
    threshold = best_accuracy_operating_point(scores_np, labels_np)["threshold"]
    # identical on both ranks (a metric may be NaN, e.g. precision when no image is called abnormal)
    assert dumps[0]["metrics"] == pytest.approx(dumps[1]["metrics"], rel=0, abs=0, nan_ok=True)
    for d in dumps:
        assert d["metrics"]["val_auc"] == pytest.approx(auc, abs=1e-6)
        assert float(d["statistics"]["threshold"]) == pytest.approx(threshold, rel=1e-4, abs=1e-6)


def test_rank_zero_only_handlers_are_logging_handlers():
    """The handler indices that multi_gpu_train.json disables on ranks > 0 are the logging handlers of train.json."""
    multi = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    disabled = [k for k in multi if k.endswith("#_disabled_")]
    assert len(disabled) == 5
    assert parser.get("train#handlers#0#_target_") == "LrScheduleHandler" and "train#handlers#0#print_lr" in multi
    for key in disabled:
        assert parser.get(key.rsplit("#", 1)[0] + "#_target_") in (
            "StatsHandler", "TensorBoardStatsHandler", "scripts.progress.EpochProgressLogger"), key
    # every other handler (learning rates, validation, score statistics, threshold) runs on every rank
    kept = [h.get("_target_") if isinstance(h, dict) else h for group in ("train", "validate")
            for i, h in enumerate(parser.get(f"{group}#handlers")) if f"{group}#handlers#{i}#_disabled_" not in multi]
    for name in ("ValidationHandler", "scripts.handlers.ScoreStatisticsHandler", "@validate#threshold_selector"):
        assert name in kept, name


def test_initialize_keeps_every_single_process_step():
    """multi_gpu_train.json replaces ``initialize``: it must still run every step of train.json's (the seed differs
    per rank)."""
    single = ConfigParser.load_config_file(str(CONFIGS / "train.json"))["initialize"]
    multi = ConfigParser.load_config_file(str(CONFIGS / "multi_gpu_train.json"))["initialize"]
    assert multi[0].startswith("$scripts.distributed.init_distributed(")
    for step in single:
        if step.startswith("$monai.utils.set_determinism("):
            assert "$monai.utils.set_determinism(seed=@seed + scripts.distributed.get_rank())" in multi
        else:
            assert step in multi, step
    assert multi.index(single[-1]) == len(multi) - 1


def test_single_process_helpers(monkeypatch):
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1 and distributed.is_main_process()
    assert distributed.gather_objects([{"a": 1}, 2]) == [{"a": 1}, 2]
    module = nn.Linear(2, 2)
    assert distributed.wrap_ddp(module, "cpu") is module

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.rank_device() == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.rank_device() == torch.device("cpu")

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_distributed("cpu")


def test_prepare_module_channels_last_and_sync_batchnorm():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    weight = net[0].weight
    prepared = distributed.prepare_module(net, "cpu", channels_last=True)
    assert prepared[0].weight is weight  # optimisers built on the module stay valid
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    with pytest.raises(ValueError, match="sync_batchnorm"):
        distributed.prepare_module(net, "cpu", sync_batchnorm=True)


def test_switches_read_command_line_strings():
    """``--channels_last false`` reaches the config as the string "false", which must mean false."""
    net = distributed.prepare_module(nn.Conv2d(2, 4, 3), "cpu", channels_last="false", sync_batchnorm="false")
    assert net.weight.is_contiguous()
    net = distributed.prepare_module(nn.Conv2d(2, 4, 3), "cpu", channels_last="true")
    assert not net.weight.is_contiguous()
    assert isinstance(autocast_context("cpu", "false"), contextlib.nullcontext)
    assert isinstance(autocast_context("cpu", "true"), torch.autocast)
    with pytest.raises(ValueError, match="channels_last"):
        distributed.prepare_module(nn.Conv2d(2, 4, 3), "cpu", channels_last="ture")


def test_configure_backends_sets_cudnn_benchmark():
    before = torch.backends.cudnn.benchmark
    try:
        distributed.configure_backends(cudnn_benchmark=True)
        assert torch.backends.cudnn.benchmark is True
        distributed.configure_backends(cudnn_benchmark="false")
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before
