"""Calling a command's ``main`` in-process the way a shell would see it: argparse's one-line errors leave through
``SystemExit``, so its code is the exit status."""

from __future__ import annotations


def exit_code(main, argv):
    """``main(argv)``'s exit status, argparse's ``SystemExit`` included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def run_main(main, argv, capsys):
    """``(exit status, stdout, stderr)`` of ``main(argv)`` (``capsys``: pytest's capture fixture)."""
    rc = exit_code(main, argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err
