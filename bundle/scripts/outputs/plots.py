"""Pictures of the results: ROC curves, score histograms and a grid of input / reconstruction / anomaly map."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..metrics import auc_or_nan, roc_curve  # noqa: E402

__all__ = ["save_roc_curve", "save_score_histogram", "save_case_grid"]


def save_roc_curve(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> None:
    """One ROC curve per score kind: ``curves`` maps a name to (N scores, N labels)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (scores, labels) in curves.items():
        fpr, tpr, _ = roc_curve(scores, labels)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc_or_nan(scores, labels):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_score_histogram(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> None:
    """Histograms of normal and abnormal scores, one panel per score kind."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (name, (scores, labels)) in zip(axes[0], curves.items()):
        bins = np.linspace(float(np.min(scores)), float(np.max(scores)) + 1e-9, 30)
        ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal")
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="abnormal")
        ax.set(title=f"{name} score", xlabel="anomaly score", ylabel="images")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_case_grid(cases: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """A row per case: input, reconstruction and anomaly map, titled with label and score.

    Args:
        cases: dicts with ``"images"`` (three H x W arrays/tensors), ``"label"``, ``"score"``, ``"file"``.
    """
    fig, axes = plt.subplots(len(cases), 3, figsize=(7.5, 2.6 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        image, recon, amap = (np.asarray(a, dtype=np.float32) for a in case["images"])
        row[0].imshow(image, cmap="gray", vmin=0, vmax=1)
        row[1].imshow(recon, cmap="gray", vmin=0, vmax=1)
        row[2].imshow(image, cmap="gray", vmin=0, vmax=1)
        row[2].imshow(amap, cmap="jet", alpha=0.45, vmin=0, vmax=max(float(amap.max()), 1e-6))
        label = "abnormal" if case["label"] == 1 else "normal"
        row[0].set_title(f"{label}: {os.path.basename(str(case['file']))}", fontsize=8)
        row[1].set_title("reconstruction", fontsize=8)
        row[2].set_title(f"anomaly map, score {case['score']:.3f}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
