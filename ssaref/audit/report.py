"""Findings (``findings.json``, schema ``ssaref-audit/1``), the markdown report and the terminal summary."""

from __future__ import annotations

import math

from ..atomic import write_text
from .items import THRESHOLDS, VERDICTS

__all__ = [
    "SCHEMA",
    "PAPER",
    "build_findings",
    "validate_findings",
    "render_markdown",
    "summary_table",
    "write_atomic",
    "format_number",
]

SCHEMA = "ssaref-audit/1"
PAPER = (
    "Roy, Apolinario, Das Biswas, Roy: Feedback Alignment Meets Low-Rank Manifolds: A Structured Recipe for "
    "Local Learning (SSA)"
)

_REQUIRED = {
    "id": str,
    "section": str,
    "equations": list,
    "statement": str,
    "verdict": str,
    "evidence": dict,
    "engine_default": str,
    "literal_option": str,
    "reproduce": str,
}


def _num(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    v = float(v)
    if v.is_integer() and abs(v) < 2**53 and not isinstance(v, bool):
        return float(v)
    return float(f"{v:.10g}")  # rounded: equal in a full run and an --only run, readable


def format_number(v):
    if isinstance(v, int):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.3e}"


def build_findings(results):
    """``results``: list of (Item, Outcome).  Returns the findings document (a dict).

    Non-finite evidence values are left out of ``evidence`` and named in ``nonfinite_evidence``.
    """
    out = []
    for it, o in results:
        if it.judge is not None and it.judge(o.evidence) != o.verdict:
            raise ValueError(
                f"audit item {it.id!r}: verdict {o.verdict!r} is not the one its evidence gives "
                f"({it.judge(o.evidence)!r})"
            )
        ev, bad = {}, []
        for k, v in o.evidence.items():
            if v is None or (not isinstance(v, int) and not math.isfinite(float(v))):
                bad.append(k)
                continue
            ev[k] = _num(v)
        f = {
            "id": it.id,
            "section": it.section,
            "equations": [int(e) for e in it.equations],
            "statement": it.statement,
            "verdict": o.verdict,
            "evidence": ev,
            "engine_default": it.engine_default,
            "literal_option": it.literal_option,
            "reproduce": f"python -m ssaref.audit --only {it.id}",
            "key_figure": o.key,
            "explanation": o.explanation,
            "figures": list(o.figures),
        }
        if bad:
            f["nonfinite_evidence"] = bad
        out.append(f)
    return {"schema": SCHEMA, "paper": PAPER, "thresholds": {k: v for k, (v, _) in THRESHOLDS.items()}, "findings": out}


def validate_findings(doc):
    """Raise ValueError listing every way ``doc`` departs from the ``ssaref-audit/1`` schema."""
    errs = []
    if not isinstance(doc, dict):
        raise ValueError("findings document must be a JSON object")
    if doc.get("schema") != SCHEMA:
        errs.append(f"schema must be {SCHEMA!r}, got {doc.get('schema')!r}")
    if not isinstance(doc.get("paper"), str) or not doc.get("paper"):
        errs.append("paper must be a non-empty string")
    th = doc.get("thresholds", {})
    if not isinstance(th, dict) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in th.values()
    ):
        errs.append("thresholds must map names to finite numbers")
    fs = doc.get("findings")
    if not isinstance(fs, list) or not fs:
        errs.append("findings must be a non-empty list")
        fs = []
    ids = set()
    for i, f in enumerate(fs):
        where = f"findings[{i}]"
        if not isinstance(f, dict):
            errs.append(f"{where} is not an object")
            continue
        for k, typ in _REQUIRED.items():
            if k not in f:
                errs.append(f"{where} lacks {k!r}")
            elif not isinstance(f[k], typ):
                errs.append(f"{where}.{k} must be {typ.__name__}, got {type(f[k]).__name__}")
        if f.get("id") in ids:
            errs.append(f"{where}.id {f.get('id')!r} is repeated")
        ids.add(f.get("id"))
        if f.get("verdict") not in VERDICTS:
            errs.append(f"{where}.verdict {f.get('verdict')!r} is not one of {VERDICTS}")
        for e in f.get("equations", []) if isinstance(f.get("equations"), list) else []:
            if not isinstance(e, int) or isinstance(e, bool) or not 1 <= e <= 18:
                errs.append(f"{where}.equations holds {e!r}, not an equation number 1..18")
        ev = f.get("evidence")
        if isinstance(ev, dict):
            if not ev:
                errs.append(f"{where}.evidence is empty")
            for k, v in ev.items():
                if (
                    not isinstance(k, str)
                    or isinstance(v, bool)
                    or not isinstance(v, (int, float))
                    or not math.isfinite(v)
                ):
                    errs.append(f"{where}.evidence[{k!r}] = {v!r} is not a finite number")
        if isinstance(f.get("reproduce"), str) and f.get("id") and not f["reproduce"].endswith(f"--only {f['id']}"):
            errs.append(f"{where}.reproduce does not name its id")
        if "key_figure" in f and isinstance(ev, dict) and f["key_figure"] not in ev:
            errs.append(f"{where}.key_figure {f['key_figure']!r} is not in its evidence")
    if errs:
        raise ValueError("findings do not validate against " + SCHEMA + ":\n  " + "\n  ".join(errs))
    return True


def _config_table():
    """Every factor's shape at the paper's configurations (B_i's factors at the largest rank B_i has)."""
    from .items import CONFIGS, D_N

    L = [
        "## Configurations and factor shapes",
        "",
        "| layer | W / K' | U | S | V | G = dL/dW | B_i | B_U | B_S | B_V^T |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in CONFIGS:
        m, n, r, di = c["m"], c["n"], c["r"], c["d_i"]
        k = min(r, di, D_N) if di else None
        b = f"{di}x{D_N} | {di}x{k} | {k}x{k} | {k}x{D_N}" if di else "- (receives e) | - | - | -"
        L.append(f"| {c['name']} | {m}x{n} | {m}x{r} | {r}x{r} | {n}x{r} | {m}x{n} | {b} |")
    return L + [""]


def _key(f):
    k = f.get("key_figure")
    if k in f["evidence"]:
        return f"{k} = {format_number(f['evidence'][k])}"
    return "-"


def summary_table(doc):
    """Plain-text summary (one line per finding) for the terminal."""
    fs = doc["findings"]
    w = max(len(f["id"]) for f in fs)
    lines = [f"{'item':<{w}}  {'section':<9}  {'verdict':<17}  key figure", "-" * (w + 70)]
    for f in fs:
        lines.append(f"{f['id']:<{w}}  {f['section']:<9}  {f['verdict']:<17}  {_key(f)}")
    counts = {v: sum(f["verdict"] == v for f in fs) for v in VERDICTS}
    lines.append("-" * (w + 70))
    lines.append(", ".join(f"{v}: {n}" for v, n in counts.items()))
    return "\n".join(lines)


def render_markdown(doc, details, seed):
    """The report: summary table, then one section per finding.  ``details``: id -> markdown lines."""
    fs = doc["findings"]
    L = [
        "# Audit of the SSA paper's equations and claims",
        "",
        f"Paper: {doc['paper']}.",
        "",
        f"Generated by `python -m ssaref.audit` (seed {seed}).  Every number below comes from a float64 "
        "transcription of the paper's formula (`ssaref/audit/transcribe.py`, no engine code) or, where stated, from "
        "the engine (`ssaref.rules.ssa`, `ssaref.nn.svd_layers`, `ssaref.rank`).  Configurations: the 3-layer MLP "
        "of Figures 2/4 on CIFAR-10-shaped input (3072-256-256-10, docs/decisions.md D1) and the SmallConv layer "
        "conv96->conv192 3x3; dynamics on a scaled-down MLP 64-32-32-10 (synthetic data, 200 steps).",
        "",
        "Verdicts: **holds**; **shape error** (an operation in the formula is undefined on the paper's own "
        "shapes); **wrong gradient** (not the gradient of the loss it claims to differentiate); **unjustified "
        "claim** (counterexamples or the stated reason is false); **ambiguous** (several readings, the paper does "
        "not say which).  Every verdict is derived from the item's evidence below with these thresholds "
        "(`ssaref/audit/items/core.py`):",
        "",
        *[f"- `{k}` = {v:g}: {what}" for k, (v, what) in THRESHOLDS.items()],
        "",
        *_config_table(),
        "## Summary",
        "",
        "| item | section | eqs | verdict | key figure |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in fs:
        eq = ", ".join(f"({e})" for e in f["equations"]) or "-"
        L.append(f"| [{f['id']}](#{f['id']}) | {f['section']} | {eq} | {f['verdict']} | {_key(f)} |")
    counts: dict = {}
    for f in fs:
        counts[f["verdict"]] = counts.get(f["verdict"], 0) + 1
    L += ["", "Counts: " + ", ".join(f"{v}: {n}" for v, n in counts.items()), ""]
    for f in fs:
        eq = ", ".join(f"({e})" for e in f["equations"]) or "none"
        L += [
            f"## {f['id']}",
            "",
            f"*Section {f['section']}, equations {eq}.*",
            "",
            f"**Statement.** {f['statement']}",
            "",
            f"**Verdict: {f['verdict']}.** {f['explanation']}",
            "",
            "| evidence | value |",
            "| --- | --- |",
        ]
        L += [f"| {k} | {format_number(v)} |" for k, v in f["evidence"].items()]
        if f.get("nonfinite_evidence"):
            L += ["", "Non-finite (left out): " + ", ".join(f["nonfinite_evidence"])]
        L.append("")
        L += list(details.get(f["id"], []))
        for fig in f.get("figures", []):
            L += [f"![{fig}]({fig})", ""]
        L += [
            "",
            f"- Engine default: {f['engine_default']}",
            f"- Paper-literal option: {f['literal_option']}",
            f"- Reproduce: `{f['reproduce']}`",
            "",
        ]
    return "\n".join(L) + "\n"


def write_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    return write_text(path, text)
