"""Argument types and the one-line-error parser shared by every command-line entry point."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = [
    "OneLineParser",
    "positive",
    "nonnegative_int",
    "nonnegative_float",
    "int64",
    "int_list",
    "run_main",
    "Diverged",
    "one_line",
    "EXIT_OK",
    "EXIT_BUG",
    "EXIT_USAGE",
    "EXIT_DIVERGED",
    "EXIT_INTERRUPTED",
    "check_output_path",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2: ``error: <what> (see <prog> --help)``, no usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a run file stores integers as HDF5 int64 attributes


def _bounded(v, s):
    if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
        raise argparse.ArgumentTypeError(
            f"must be at most {INT64_MAX} in size (a run file stores it as a 64-bit integer), got {s}"
        )
    return v


def positive(kind):
    """Argument type: a ``kind`` (int or float) that is > 0 (NaN refused; an int within the int64 range)."""

    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}") from None
        if not v > 0 or (kind is float and v == float("inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
        return _bounded(v, s)

    return parse


def count(hi, why, zero=False):
    """Argument type: an int in [1, ``hi``] ([0, ``hi``] with ``zero``; ``why``: what the bound is, named in the
    error)."""

    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {s!r}") from None
        if v < (0 if zero else 1):
            raise argparse.ArgumentTypeError(f"must be a number {'>= 0' if zero else '> 0'}, got {s}")
        if v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi} ({why}), got {s}")
        return v

    return parse


def nonnegative_int(s):
    """Argument type: an int >= 0 (within the int64 range)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return _bounded(v, s)


def nonnegative_float(s):
    """Argument type: a finite float >= 0 (NaN refused)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def int64(s):
    """Argument type: an int within the int64 range (what a run file can store)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {s!r}") from None
    return _bounded(v, s)


def int_list(s):
    """Argument type: comma- or space-separated ints, e.g. ``256,256``."""
    try:
        return [int(v) for v in str(s).replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


# ----------------------------------------------------------------------------------------------------
# the one error path of every entry point
# ----------------------------------------------------------------------------------------------------
EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class Diverged(RuntimeError):
    """Training produced a non-finite value; the message says where and which checkpoint is intact (exit 3)."""


def one_line(exc) -> str:
    """An exception's message folded onto one line (``;`` between its lines)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        text = f"out of memory: {text}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def expected_errors() -> tuple:
    """Failures that are the user's input or the machine, not a bug: reported as one ``error:`` line, exit 2.

    ``ValueError`` covers every checked bad value or file (``RunFileError``, ``DatasetError``, ``LinalgError``,
    TOML and UTF-8 decoding errors subclass it); ``OSError`` missing, unreadable or unwritable files and a full
    disk; ``MemoryError`` an allocation the machine cannot make; ``BackendError`` an unusable array backend;
    ``DistributedError`` a collective that failed or timed out."""
    from .backend import BackendError  # noqa: PLC0415
    from .distributed import DistributedError  # noqa: PLC0415

    return (ValueError, OSError, MemoryError, BackendError, DistributedError)


_BUGS = (KeyError, IndexError, AttributeError, TypeError, AssertionError, NameError, UnboundLocalError)


def run_main(body, argv=None, *, stderr=None) -> int:
    """Run ``body(argv) -> int`` with the engine's one error path.

    * an expected failure (bad value or file, I/O error, out of memory; see ``expected_errors``) prints
      ``error: <what and which file>`` on one line and returns 2;
    * ``Diverged`` (a non-finite loss, parameter or state) prints ``error: ...`` and returns 3;
    * Ctrl-C returns 130; ``SystemExit`` (argparse's exit 2 with its one line) passes through;
    * anything else is a bug: its traceback is printed, then one line asking for a report, and 1 is returned.
    """
    import sys  # noqa: PLC0415
    import traceback  # noqa: PLC0415

    err = stderr if stderr is not None else sys.stderr
    try:
        return body(argv)
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001  (classified below)
        if isinstance(exc, Diverged):
            print(f"error: {one_line(exc)}", file=err)
            return EXIT_DIVERGED
        if isinstance(exc, expected_errors()) and not isinstance(exc, _BUGS):
            print(f"error: {one_line(exc)}", file=err)
            return EXIT_USAGE
        from . import __version__  # noqa: PLC0415

        traceback.print_exc(file=err)
        print(f"error: this is a bug in ssaref {__version__}, please report it with the traceback above", file=err)
        return EXIT_BUG


def check_output_path(path, *, flag="--out", overwrite=False, allowed_existing=(), kind="file", create=True):
    """Refuse an output path before any work is done: an existing one (unless ``overwrite`` or it is one of
    ``allowed_existing``, e.g. the run being resumed), a folder where a file is wanted (or the reverse), or a
    parent folder that cannot be created or written.  ``create=False`` only checks (the nearest existing
    ancestor must be a writable folder) and creates nothing.  Returns the path as a ``Path``."""
    p = Path(path)
    try:  # a symbolic link loop (the path or a folder on it): Path.resolve raises RuntimeError (OSError on 3.13)
        p.resolve()
    except (RuntimeError, OSError):
        raise ValueError(
            f"{flag} {path}: a symbolic link loop (the path, or a folder on it, links back to itself)"
        ) from None
    same = any(os.path.abspath(p) == os.path.abspath(a) for a in allowed_existing if a)
    if kind == "file":
        if p.is_dir():
            raise ValueError(f"{flag} {path} is a folder, not a file")
        if p.exists() and not (overwrite or same):
            raise ValueError(f"{flag} {path} exists; pass --overwrite to replace it")
        parent = p.resolve().parent
    else:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag} {path} exists and is not a folder")
        parent = p.resolve() if p.exists() else p.resolve().parent
    if not create:
        anc = parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            raise OSError(f"{flag} {path}: {anc} is not a folder")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise OSError(f"{flag} {path}: folder {anc} is not writable")
        return p
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{flag} {path}: cannot create folder {parent}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"{flag} {path}: folder {parent} is not writable")
    return p
