"""Command line: ``python -m benchmarks.fourth_set --output DIR [--seed S] [--n_train N] ...`` (repository root)."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from .dataset import write_fourth_set


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, write the set and print a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fourth_set",
        description="Write the fourth synthetic chest-radiograph benchmark (statistical shape model, CR/DR "
                    "detectors, vendor processing, foreign objects; ZhangLab folders + datalist.json).",
    )
    parser.add_argument("--output", required=True, help="folder to write the set into (new or empty)")
    options = {k: v.default for k, v in inspect.signature(write_fourth_set).parameters.items() if k != "root"}
    for name, default in options.items():
        parser.add_argument(f"--{name}", type=type(default), default=default, help=f"default {default}")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = write_fourth_set(args.pop("output"), **args)
    count = json.loads((Path(root) / ".fourth_set.json").read_text())["n_images"]
    print(f"fourth set: {count} images written to {root}")


if __name__ == "__main__":
    main()
