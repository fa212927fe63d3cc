"""Helpers for tests that run the bundle's configs through ``ConfigWorkflow``, as MONAI tools do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CONFIGS = BUNDLE / "configs"

# a small model and few images, so a real training run takes seconds on the CPU
TINY = {
    "img_size": 64,
    "num_patch": 2,
    "level": 4,
    "features_root": 8,
    "num_slots": 12,
    "shrink_thres": 3,
    "mem_num_slots": 12,
    "inpaint_channels": 16,
    "num_heads": 2,
    "batch_size": 4,
    "num_workers": 0,
    "stats_max_images": 8,
    "log_every": 1,
    "device": "cpu",
}


def workflow(configs: list[str], workflow_type: str, run_id: str, **override: Any) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` over ``bundle/configs/<configs>`` with ``override`` applied."""
    return ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        bundle_root=str(BUNDLE),
        **override,
    )


def run(configs: list[str], workflow_type: str, run_id: str, **override: Any) -> ConfigWorkflow:
    """Initialise, run and finalise a workflow; returns it for inspection."""
    wf = workflow(configs, workflow_type, run_id, **override)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf
