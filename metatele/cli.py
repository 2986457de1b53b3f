"""The ``metatele`` command line: thin wrappers that parse a config, call the library and log."""
from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metatele",
        description="Learning to teleport: meta-train LSTM optimizers that update and teleport "
        "LeakyReLU networks, evaluate them on unseen seeds, and compare against baselines.",
    )
    parser.add_argument("--version", action="version", version=f"metatele {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
