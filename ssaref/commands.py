"""``ssaref COMMAND [ARGS ...]``: the console script installed with the package.

Each command is the ``python -m`` form of the same name, with the same flags, output and exit codes (those forms
stay and are what the docs use)::

    ssaref train ...      python -m ssaref.train ...
    ssaref audit ...      python -m ssaref.audit ...
    ssaref vectors ...    python -m ssaref.vectors ...
    ssaref bench ...      python -m ssaref.bench ...
    ssaref plot ...       python -m ssaref.plot ...
    ssaref check ...      python ssaref/golden/check.py ...   (the standalone golden-vector checker)

A command's module is imported only when it is run, so ``ssaref --help`` costs nothing.
"""

from __future__ import annotations

import importlib
import sys

#: command -> (module whose ``main(argv)`` runs it, one line of help)
COMMANDS = {
    "train": ("ssaref.train", "train a model with a learning rule (python -m ssaref.train)"),
    "audit": ("ssaref.audit.__main__", "check the paper's equations and claims (python -m ssaref.audit)"),
    "vectors": ("ssaref.vectors", "export or check golden vectors (python -m ssaref.vectors)"),
    "bench": ("ssaref.bench", "time a training step against PyTorch (python -m ssaref.bench)"),
    "plot": ("ssaref.plot", "per-epoch curves from run files (python -m ssaref.plot)"),
    "check": ("ssaref.golden.check", "the standalone golden-vector checker (python ssaref/golden/check.py)"),
}


def usage() -> str:
    from . import __version__

    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return (
        f"usage: ssaref COMMAND [ARGS ...]   (ssaref {__version__})\n\ncommands:\n{rows}\n\n"
        f"'ssaref COMMAND --help' lists a command's flags."
    )


def main(argv=None) -> int:
    """Run ``argv[0]``'s command on ``argv[1:]``; its exit code is returned (2 for an unknown command)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"ssaref {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"error: unknown command {name!r} (one of: {', '.join(COMMANDS)}; 'ssaref --help' says more)",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "check":
        return module.main(rest, prog="ssaref check")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
