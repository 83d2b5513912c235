"""``python -m ssaref.audit --out DIR [--only ID ...] [--backend numpy] [--seed 0] [--overwrite]``.

Runs every audit item (or the ``--only`` ones), writes ``DIR/report.md``, ``DIR/findings.json`` and the figures,
and prints the summary table.  Exit codes: 0 done, 2 bad input or an unwritable folder (one ``error:`` line),
1 a bug (traceback).  An existing report in DIR is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import sys

from ..cli import OneLineParser, check_output_path, nonnegative_int, run_main
from . import run_audit

OUTPUTS = ("report.md", "findings.json")


def _main(argv):
    from ..backend import resolve_backend
    from .items import ITEMS

    p = OneLineParser(
        prog="python -m ssaref.audit",
        description="Audit the SSA paper's equations (1)-(18) and the structural statements of sections 2, 4 and 5.",
    )
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument(
        "--only",
        nargs="+",
        action="extend",
        default=None,
        metavar="ID",
        help="run only these items: " + ", ".join(it.id for it in ITEMS),
    )
    p.add_argument(
        "--backend",
        default="numpy",
        choices=["numpy", "cupy", "auto"],
        help="array module of the engine runs (transcriptions always run in NumPy float64)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    a = p.parse_args(argv)
    known = {it.id for it in ITEMS}
    bad = sorted(set(a.only or ()) - known)
    if bad:
        raise ValueError(f"unknown audit item(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    out = check_output_path(a.out, kind="folder")
    present = [n for n in OUTPUTS if (out / n).exists()]
    if present and not a.overwrite:
        raise ValueError(f"--out {a.out} already holds an audit ({', '.join(present)}); pass --overwrite to replace it")
    resolve_backend(a.backend)  # an unusable backend fails here, before any item runs
    run_audit(a.out, only=a.only, backend=a.backend, seed=a.seed, echo=True)
    return 0


def main(argv=None):
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
