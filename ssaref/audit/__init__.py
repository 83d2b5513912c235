"""Audit of the SSA paper against float64 transcriptions of its formulas and against the engine.

``python -m ssaref.audit --out DIR`` checks every equation (1)-(18) and the structural statements of sections 2,
4 and 5 for shapes, derivatives, claims and training dynamics, and writes ``DIR/report.md`` and
``DIR/findings.json`` (schema ``ssaref-audit/1``).

Public API::

    run_audit(out, only=None, backend="numpy", seed=0, echo=False) -> (findings dict, outcomes)
    checks.shape_check(expr, shapes) -> ShapeResult
    checks.gradient_check(f, grad, x) -> GradResult (rel_err, cosine, norm_ratio, ok)
    checks.claim_search(sample_fn, predicate, n, seed, size_fn) -> ClaimResult (fail_rate, smallest, ...)
    items.ITEMS, items.get_items(ids)
    report.validate_findings(doc)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["run_audit"]


def run_audit(out, only=None, backend="numpy", seed=0, echo=False):
    """Run the audit items and write the report.

    Parameters
    ----------
    out : str or Path, output folder (created if needed).
    only : list of str or None, item ids to run (ValueError naming the valid ids on a bad one).
    backend : "numpy", "cupy" or "auto", array module of the engine runs.
    seed : int, base seed; every item derives its own generator from it and its id.
    echo : bool, print the summary table.

    Returns
    -------
    (doc, results) : the findings document and the list of (Item, Outcome).
    """
    import json

    from ..backend import resolve_backend
    from .items import Context, get_items
    from .report import build_findings, render_markdown, summary_table, validate_findings, write_atomic

    items = get_items(only)  # validates --only before anything is written
    xp = resolve_backend(backend)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(seed=seed, out=out, xp=xp)
    results = []
    for it in items:
        try:
            results.append((it, it.run(ctx)))
        except Exception as exc:  # name the item that broke (e.g. after an engine change)
            raise RuntimeError(f"audit item {it.id!r} failed: {type(exc).__name__}: {exc}") from exc
    doc = build_findings(results)
    validate_findings(doc)
    details = {it.id: o.details for it, o in results}
    write_atomic(out / "findings.json", json.dumps(doc, indent=1) + "\n")
    write_atomic(out / "report.md", render_markdown(doc, details, seed))
    if echo:
        print(summary_table(doc))
        print(f"\nwrote {out / 'report.md'} and {out / 'findings.json'}")
    return doc, results
