"""Command line: ``python -m benchmarks.second_set --output DIR [--seed S] [--n_train N] ...`` (repository root)."""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Sequence

from .dataset import write_second_set


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and write the set."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.second_set",
        description="Write the second synthetic chest-radiograph benchmark (ZhangLab folders + datalist.json).",
    )
    parser.add_argument("--output", required=True, help="folder to write the set into (new or empty)")
    for name, p in inspect.signature(write_second_set).parameters.items():
        if name != "root":
            parser.add_argument(f"--{name}", type=type(p.default), default=p.default, help=f"default {p.default}")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    write_second_set(args.pop("output"), **args)


if __name__ == "__main__":
    main()
