"""Quality benchmark: train the default config on the built-in synthetic set within a time budget, then
evaluate the best checkpoint on the test split and print the test AUC of both scores, overall and per
finding kind, beside the PCA floor (80 components at 64 x 64) on the same data.

Usage (from the repository root)::

    python benchmarks/bench_train_auc.py --minutes 30 --threads 2 [--workdir /tmp/auc] [-- --img_size 64 ...]

Everything after ``--`` is passed to the bundle as config overrides (``--name value`` pairs). Prints a JSON
summary last; ``--json FILE`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from ignite.handlers import TimeLimit

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
sys.path.insert(0, str(BUNDLE))

from monai.bundle import ConfigWorkflow  # noqa: E402

from scripts.metrics import auc_or_nan  # noqa: E402
from scripts.pca_floor import pca_auc_by_finding  # noqa: E402
from scripts.synthetic import ensure_synthetic_dataset  # noqa: E402

CONFIGS = BUNDLE / "configs"


def _literal(text: str) -> Any:
    """A command-line value as the MONAI bundle CLI reads it: a Python literal where it is one, else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _overrides(extra: list[str]) -> dict[str, Any]:
    if len(extra) % 2:
        raise SystemExit(f"overrides must be '--name value' pairs, got {extra}")
    return {extra[i].lstrip("-"): _literal(extra[i + 1]) for i in range(0, len(extra), 2)}


def _workflow(configs: list[str], workflow_type: str, run_id: str, **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        bundle_root=str(BUNDLE),
        **override,
    )
    wf.initialize()
    return wf


def _auc_by_finding(scores_csv: Path, manifest: Path, dataset_dir: Path) -> dict[str, dict[str, float]]:
    """Per finding kind: AUC of each score, normal test images against that kind's test images."""
    kinds = {}
    with open(manifest) as f:
        for row in csv.DictReader(f):
            if row["split"] == "test":
                kinds[str((dataset_dir / row["file"]).resolve())] = row["finding"]
    with open(scores_csv) as f:
        rows = list(csv.DictReader(f))
    result: dict[str, dict[str, float]] = {}
    for score in ("score_discriminator", "score_reconstruction"):
        s = np.array([float(r[score]) for r in rows])
        k = np.array([kinds[str(Path(r["file"]).resolve())] for r in rows])
        for kind in sorted(set(k) - {"normal"}):
            keep = (k == "normal") | (k == kind)
            result.setdefault(kind, {})[score.removeprefix("score_")] = auc_or_nan(s[keep], (k[keep] == kind).astype(int))
    return result


def _pca_floor(dataset_dir: Path, manifest: Path) -> dict[str, float]:
    from PIL import Image

    rows = list(csv.DictReader(open(manifest)))
    train = [np.asarray(Image.open(dataset_dir / r["file"]), dtype=np.float32) / 255 for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    images = [np.asarray(Image.open(dataset_dir / r["file"]), dtype=np.float32) / 255 for r in test]
    return pca_auc_by_finding(train, images, [int(r["label"]) for r in test], [r["finding"] for r in test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget (wall clock)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/simsid_auc_benchmark"))
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    torch.set_num_threads(args.threads)
    override = {  # the built-in set, written to the workdir: train.json treats it as the built-in set (img_size 64)
        "synthetic_dataset_dir": str(args.workdir / "data"),
        "ckpt_dir": str(args.workdir / "models"),
        "output_dir": str(args.workdir / "runs"),
        "eval_output_dir": str(args.workdir / "eval"),
        "device": "cpu",
        **_overrides(extra),
    }
    dataset_dir = ensure_synthetic_dataset(override.get("dataset_dir", override["synthetic_dataset_dir"]))
    manifest = Path(dataset_dir) / "findings.csv"

    start = time.time()
    train = _workflow(["train.json"], "train", "training", **override)
    trainer = train.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(limit_sec=int(args.minutes * 60)))
    train.run()
    train.finalize()
    train_seconds = time.time() - start
    evaluator = train.parser.get_parsed_content("validate#evaluator")

    _workflow(["train.json", "evaluate.json"], "eval", "evaluating", **override).run()
    metrics = json.loads((Path(override["eval_output_dir"]) / "metrics.json").read_text())
    summary = {
        "train_minutes": round(train_seconds / 60, 2),
        "epochs_completed": trainer.state.epoch - (0 if trainer.state.iteration % trainer.state.epoch_length == 0 else 1),
        "iterations": trainer.state.iteration,
        "best_val_auc": evaluator.state.best_metric,
        "best_val_epoch": evaluator.state.best_metric_epoch,
        "test_auc": {k: metrics[k]["auc"] for k in ("discriminator", "reconstruction")},
        "test_auc_by_finding": _auc_by_finding(Path(override["eval_output_dir"]) / "scores.csv", manifest, Path(dataset_dir)),
        "pca_floor_auc": _pca_floor(Path(dataset_dir), manifest),
        "threads": args.threads,
        "overrides": {k: v for k, v in override.items() if not k.endswith("_dir")},
    }
    text = json.dumps(summary, indent=2)
    logging.getLogger("bench_train_auc").info("summary:\n%s", text)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
