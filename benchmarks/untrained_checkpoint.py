"""An untrained baseline: the bundle's detector at its initial weights, saved where evaluation reads a model.

Most of the default (feature) score is the per-location bank of the encoder stem's features, and a randomly
initialised stem already gives a strong score. What the SimSID training adds is the trained model's score minus this
one, on the same images. Usage (from the repository root)::

    python -m benchmarks.untrained_checkpoint --ckpt_dir /tmp/untrained/models [--img_size 64] [--seed 0]
    cd bundle && python -m monai.bundle run evaluating \\
        --config_file "['configs/train.json','configs/evaluate.json']" --ckpt_dir /tmp/untrained/models \\
        --dataset_dir D --img_size 64 --remeasure_statistics true --eval_output_dir /tmp/untrained/eval

writes ``<ckpt_dir>/model.pt``: the state of ``detector`` from ``bundle/configs/train.json`` built after
``monai.utils.set_determinism(seed)`` (PyTorch's default initialisation under that seed),
no weights trained and no score statistics measured; evaluation measures them on the training images
(``--remeasure_statistics true``) exactly as it does for a trained model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from monai.bundle import ConfigParser
from monai.utils import set_determinism

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path.insert(0, str(BUNDLE))  # the config's ``$import scripts``

from scripts.checkpoint import MODEL_NAME, save_atomic  # noqa: E402

logger = logging.getLogger("untrained_checkpoint")


def write_untrained_checkpoint(ckpt_dir: str | Path, img_size: int = 64, seed: int = 0) -> Path:
    """Save the untrained detector's ``state_dict`` as ``<ckpt_dir>/model.pt`` and return that path.

    Raises:
        FileExistsError: ``<ckpt_dir>/model.pt`` exists (a trained model is never overwritten).
    """
    path = Path(ckpt_dir) / MODEL_NAME
    if path.exists():
        raise FileExistsError(f"{path} exists: give a new --ckpt_dir for the untrained baseline.")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "img_size": img_size, "seed": seed})
    set_determinism(seed=seed)
    detector = parser.get_parsed_content("detector")
    return save_atomic(detector.state_dict(), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_dir", type=Path, required=True, help="folder to write model.pt into")
    parser.add_argument("--img_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("untrained detector written to %s", write_untrained_checkpoint(args.ckpt_dir, args.img_size, args.seed))


if __name__ == "__main__":
    main()
