"""Argument types and the one-line-error parser shared by every command-line entry point."""
from __future__ import annotations

import argparse

__all__ = ["OneLineParser", "positive", "nonnegative_int", "int_list"]


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2: ``error: <what> (see <prog> --help)``, no usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive(kind):
    """Argument type: a ``kind`` (int or float) that is > 0 (NaN refused)."""
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def nonnegative_int(s):
    """Argument type: an int >= 0."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def int_list(s):
    """Argument type: comma- or space-separated ints, e.g. ``256,256``."""
    try:
        return [int(v) for v in str(s).replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
