"""Command line: ``python -m benchmarks.third_set --output DIR [--seed S] [--n_train N] ...`` (repository root)."""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Sequence

from .dataset import write_third_set


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and write the set."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.third_set",
        description="Write the third synthetic chest-radiograph benchmark (3-D phantom projected; ZhangLab "
                    "folders + datalist.json).",
    )
    parser.add_argument("--output", required=True, help="folder to write the set into (new or empty)")
    options = {k: v.default for k, v in inspect.signature(write_third_set).parameters.items() if k != "root"}
    for name, default in options.items():
        parser.add_argument(f"--{name}", type=type(default), default=default, help=f"default {default}")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    write_third_set(args.pop("output"), **args)


if __name__ == "__main__":
    main()
