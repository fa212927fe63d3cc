"""Quality benchmark: train the default config on the built-in synthetic set within a time budget, then
evaluate the best checkpoint on the test split and print the test AUC of every score, overall and per
finding kind, beside the PCA floor (80 components at 64 x 64) on the same data.

Usage (from the repository root)::

    python benchmarks/bench_train_auc.py --minutes 30 --threads 2 [--workdir /tmp/auc] [-- --img_size 64 ...]

Everything after ``--`` is passed to the bundle as config overrides (``--name value`` pairs). Prints a JSON
summary last; ``--json FILE`` also writes it to a file. ``model_vs_floor`` gives, overall and per finding kind, the
AUC of the model's score (its ``score_kind``) and the floor's with 95 % stratified-bootstrap intervals and the
paired difference model - floor on the same test images (its interval, and ``p_not_better``: the fraction of resamples in which the model did not beat the floor).
``--report-only`` recomputes that comparison from an earlier run's ``WORKDIR/eval`` without training, and
``--paired-with WORKDIR2`` adds the paired difference to another run evaluated on the same images
(``minus_paired_run``), e.g. to compare two settings::

    python benchmarks/bench_train_auc.py --workdir A --report-only --test-images 1000 --paired-with B

A setting chosen on one test set is confirmed on another: ``--test-seed 1`` draws a fresh, independent set
(both runs need it, the run in B first).
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
sys.path[:0] = [str(BUNDLE), str(BUNDLE.parent)]  # scripts.* and benchmarks.*

from monai.bundle import ConfigWorkflow  # noqa: E402

from benchmarks.quality_stats import paired_auc_difference  # noqa: E402
from scripts.metrics import auc_or_nan, finding_subsets  # noqa: E402
from benchmarks.pca_floor import pca_scores  # noqa: E402
from scripts.data.synthetic import ensure_synthetic_dataset  # noqa: E402

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


def _test_rows(scores_csv: Path, manifest: Path, dataset_dir: Path) -> tuple[list[dict], list[dict]]:
    """The test split's manifest rows and, in the same order, their rows of the evaluation's ``scores.csv``."""
    with open(manifest) as f:
        test = [row for row in csv.DictReader(f) if row["split"] == "test"]
    with open(scores_csv) as f:
        scored = {str(Path(r["file"]).resolve()): r for r in csv.DictReader(f)}
    keys = [str((dataset_dir / r["file"]).resolve()) for r in test]
    missing = [r["file"] for r, key in zip(test, keys) if key not in scored]
    if missing:
        raise SystemExit(f"{scores_csv} has no score for {len(missing)} test images, e.g. {missing[0]}")
    return test, [scored[key] for key in keys]


Subsets = dict[str, tuple[np.ndarray, np.ndarray]]


def _auc_by_finding(scored: list[dict], subsets: Subsets) -> dict[str, dict[str, float]]:
    """Per finding kind: AUC of each score, normal test images against that kind's test images."""
    result: dict[str, dict[str, float]] = {}
    for score in (k for k in scored[0] if k.startswith("score_")):
        s = np.array([float(r[score]) for r in scored])
        for kind, (keep, labels) in subsets.items():
            if kind == "overall":
                continue
            result.setdefault(kind, {})[score.removeprefix("score_")] = auc_or_nan(s[keep], labels)
    return result


def _floor_scores(train_dir: Path, test_dir: Path, test: list[dict]) -> np.ndarray:
    """PCA floor score (80 components at 64 x 64, fitted on the training normals of ``train_dir``) of each test
    image (manifest rows of ``test_dir``)."""
    from PIL import Image

    def load(root: Path, row: dict) -> np.ndarray:
        return np.asarray(Image.open(root / row["file"]), dtype=np.float32) / 255

    with open(train_dir / "findings.csv") as f:
        train = [load(train_dir, r) for r in csv.DictReader(f) if r["split"] == "train"]
    return pca_scores(train, [load(test_dir, r) for r in test])


def _kind_masks(test: list[dict]) -> Subsets:
    """``{"overall" | kind: (images kept, their labels)}`` of the manifest rows ``test``."""
    kinds = [r["finding"] for r in test]
    return finding_subsets([int(k != "normal") for k in kinds], kinds)


def _rounded(values: Any) -> list[float]:
    return [round(float(v), 4) for v in values]


def _difference(diff: dict[str, Any]) -> dict[str, Any]:
    """The part of :func:`paired_auc_difference`'s result the summary reports, rounded."""
    return {
        "difference": round(diff["difference"], 4),
        "difference_ci95": _rounded((diff["low"], diff["high"])),
        "p_not_better": round(diff["fraction_not_above_zero"], 4),
    }


def _against_floor(subsets: Subsets, model: np.ndarray, floor: np.ndarray) -> dict[str, dict]:
    """Overall and per finding kind: the model's AUC and the floor's, each with a 95 % bootstrap interval, and
    the paired difference model - floor on the same images (interval, fraction of resamples not above 0)."""
    result = {}
    for kind, (keep, labels) in subsets.items():
        diff = paired_auc_difference(model[keep], floor[keep], labels)
        result[kind] = {
            "auc": round(auc_or_nan(model[keep], labels), 4),
            "auc_ci95": _rounded(diff["interval_a"]),
            "floor_auc": round(auc_or_nan(floor[keep], labels), 4),
            "floor_ci95": _rounded(diff["interval_b"]),
            **_difference(diff),
        }
    return result


def _model_scores(scored: list[dict], kind: str) -> np.ndarray:
    return np.array([float(r[f"score_{kind}"]) for r in scored])


def _quality(eval_dir: Path, train_dir: Path, test_dir: Path, kind: str, paired_with: Path | None = None
             ) -> dict[str, Any]:
    """The test-split part of the summary from the ``scores.csv`` in ``eval_dir`` of the test split of ``test_dir``,
    for the score ``kind``; with ``paired_with`` (another benchmark workdir, evaluated on the same test split) also
    the paired difference of that score's AUC, this run - that run, overall and per kind."""
    test, scored = _test_rows(eval_dir / "scores.csv", test_dir / "findings.csv", test_dir)
    model = _model_scores(scored, kind)
    subsets = _kind_masks(test)
    against = _against_floor(subsets, model, _floor_scores(train_dir, test_dir, test))
    extra = {}
    if paired_with is not None:
        _, other = _test_rows(paired_with / eval_dir.name / "scores.csv", test_dir / "findings.csv",
                              paired_with / test_dir.name)
        other_scores = _model_scores(other, kind)
        extra["minus_paired_run"] = {"run": str(paired_with), **{
            kind: _difference(paired_auc_difference(model[keep], other_scores[keep], labels))
            for kind, (keep, labels) in subsets.items()
        }}
    return {
        "test_images": {"normal": sum(r["finding"] == "normal" for r in test),
                        "abnormal": sum(r["finding"] != "normal" for r in test)},
        "test_auc_by_finding": _auc_by_finding(scored, subsets),
        "pca_floor_auc": {kind: values["floor_auc"] for kind, values in against.items()},
        "score_kind": kind,
        "model_vs_floor": against,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget (wall clock)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/simsid_auc_benchmark"))
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--report-only", action="store_true",
                        help="no training: use the checkpoint (and, without --test-images, the evaluation) in WORKDIR")
    parser.add_argument("--test-images", type=int, default=0, metavar="N",
                        help="evaluate on N normal + N abnormal synthetic test images from the same generator (the "
                        "built-in test split is the first 200 of each) for tighter per-kind intervals; built-in set only")
    parser.add_argument("--test-seed", type=int, default=0, metavar="S",
                        help="with --test-images: seed of the test images; 0 (default) extends the built-in test split, "
                        "another seed draws a fresh, independent set (e.g. to confirm a choice made on seed 0)")
    parser.add_argument("--paired-with", type=Path, metavar="WORKDIR2",
                        help="also report this run's AUC (its score_kind) minus that of the run in WORKDIR2 (evaluated on "
                        "the same test split, e.g. with the same --test-images), paired on the same images")
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
    if args.test_seed and not args.test_images:
        raise SystemExit("--test-seed needs --test-images.")
    if "dataset_dir" in override:
        raise SystemExit("bench_train_auc.py trains and scores on the built-in synthetic set, which it writes to "
                         "WORKDIR/data: drop --dataset_dir. For another data set run the bundle's training and "
                         "evaluating commands and benchmarks/pca_baseline.py --dataset_dir D (bundle/docs/README.md, "
                         "Performance).")
    dataset_dir = Path(ensure_synthetic_dataset(override["synthetic_dataset_dir"]))
    if args.report_only:
        _report(_evaluate(args, override, dataset_dir), args.json)
        return

    start = time.time()
    train = _workflow(["train.json"], "train", "training", **override)
    trainer = train.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(limit_sec=int(args.minutes * 60)))
    train.run()
    train.finalize()
    train_seconds = time.time() - start
    evaluator = train.parser.get_parsed_content("validate#evaluator")

    quality = _evaluate(args, override, dataset_dir)
    summary = {
        "train_minutes": round(train_seconds / 60, 2),
        "epochs_completed": trainer.state.epoch - (0 if trainer.state.iteration % trainer.state.epoch_length == 0 else 1),
        "iterations": trainer.state.iteration,
        "best_val_auc": evaluator.state.best_metric,
        "best_val_epoch": evaluator.state.best_metric_epoch,
        **quality,
        "threads": args.threads,
        "overrides": {k: v for k, v in override.items() if not k.endswith("_dir")},
    }
    _report(summary, args.json)


def _evaluate(args: argparse.Namespace, override: dict[str, Any], dataset_dir: Path) -> dict[str, Any]:
    """Evaluate the best checkpoint in the workdir on the test split (built-in, or ``--test-images`` of the same
    generator) and compare it with the PCA floor; with ``--report-only`` and the built-in split, reuse WORKDIR/eval."""
    eval_override, test_dir = dict(override), dataset_dir
    if args.test_images:
        name = f"test{args.test_images}" + (f"_seed{args.test_seed}" if args.test_seed else "")
        # one training image: a dataset needs a training split, the evaluation reads only the test split
        test_dir = Path(ensure_synthetic_dataset(args.workdir / f"data_{name}", n_train=1, n_val_normal=0,
                                                 n_val_abnormal=0, n_test_normal=args.test_images,
                                                 n_test_abnormal=args.test_images, seed=args.test_seed))
        eval_override.update(dataset_dir=str(test_dir), img_size=override.get("img_size", 64),
                             eval_output_dir=str(args.workdir / f"eval_{name}"))
    eval_dir = Path(eval_override["eval_output_dir"])
    if args.test_images or not args.report_only:
        _workflow(["train.json", "evaluate.json"], "eval", "evaluating", **eval_override, overwrite=True).run()
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    kinds = [k for k in metrics if isinstance(metrics[k], dict) and "auc" in metrics[k]]
    return {
        "test_auc": {k: metrics[k]["auc"] for k in kinds},
        **({"pixel_auroc": metrics["pixel"]["auroc"]} if "pixel" in metrics else {}),
        **_quality(eval_dir, dataset_dir, test_dir, metrics["score_kind"], args.paired_with),
    }


def _report(summary: dict[str, Any], json_file: Path | None) -> None:
    text = json.dumps(summary, indent=2)
    logging.getLogger("bench_train_auc").info("summary:\n%s", text)
    print(text)
    if json_file:
        json_file.write_text(text)


if __name__ == "__main__":
    main()
