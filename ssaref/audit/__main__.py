"""``python -m ssaref.audit --out DIR [--only ID ...] [--backend numpy] [--seed 0]``.

Runs every audit item (or the ``--only`` ones), writes ``DIR/report.md``, ``DIR/findings.json`` and the figures,
and prints the summary table.
"""
from __future__ import annotations

import sys

from . import run_audit


def main(argv=None):
    import argparse

    from .items import ITEMS
    p = argparse.ArgumentParser(prog="python -m ssaref.audit",
                                description="Audit the SSA paper's equations (1)-(18) and the structural statements "
                                            "of sections 2, 4 and 5.")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--only", nargs="+", action="extend", default=None, metavar="ID",
                   help="run only these items: " + ", ".join(it.id for it in ITEMS))
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "auto"],
                   help="array module of the engine runs (transcriptions always run in NumPy float64)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        doc, _ = run_audit(a.out, only=a.only, backend=a.backend, seed=a.seed, echo=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
