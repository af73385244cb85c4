"""The cross-domain benchmark suite runner (``simskip bench``). Placeholder until the suite lands."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simskip bench`` options to ``parser``."""
    parser.add_argument("--suite", choices=["quick", "full"], default="quick")


def main(args: argparse.Namespace) -> int:
    """Run ``simskip bench``."""
    raise NotImplementedError("simskip bench is not implemented yet")
