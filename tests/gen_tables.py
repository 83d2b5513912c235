"""Derived tables, generated: nobody types them when a rule or a golden case is added.

* ``COVERAGE`` in ``ssaref/golden/coverage.py`` (golden case -> the terms it pins) is **measured** here with the
  independent PyTorch candidate (``tests/_torch_rules.py``, whose ``wrong=<term>`` makes the term's mistake):
  a term is pinned when its mistake changes a required field by more than ``MARGIN`` times the default
  tolerance, unpinned when the mistake leaves every compared field within the default tolerance; anything in
  between is a problem (the case neither pins the term clearly nor leaves it untested).
* The marked blocks (``<!-- generated: NAME begin -->`` ... ``end``) of ``docs/golden-vectors.md``: the table of
  golden cases (from ``vectors.case_specs()``, i.e. each rule's ``GOLDEN_VARIANTS``), the file count, and each
  case's coverage; and of ``README.md``: the table of rules (the registry ``RULES`` and each rule's ``SUMMARY``).

``tests/test_golden_coverage.py`` runs the same measurement (``measure``); it and ``tests/test_interface.py`` fail,
naming this command, when the committed table or blocks differ from what is generated::

    python -m tests.gen_tables            # re-measure COVERAGE (seconds), then rewrite the docs blocks
    python -m tests.gen_tables --docs     # only the docs blocks, from the committed COVERAGE
    python -m tests.gen_tables --check    # write nothing; exit 1 and name what differs

``TERMS`` (what each term means) and the prose around the blocks stay hand-written: they are documentation.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python tests/gen_tables.py`` as well as ``python -m tests.gen_tables``
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _torch_rules as T  # noqa: E402

from ssaref import vectors as V  # noqa: E402
from ssaref.golden import coverage as COV  # noqa: E402
from ssaref.golden.check import optional_fields, required_fields  # noqa: E402

COMMAND = "python -m tests.gen_tables"
COVERAGE_PY = ROOT / "ssaref" / "golden" / "coverage.py"
DOC = ROOT / "docs" / "golden-vectors.md"
README = ROOT / "README.md"
MARGIN = 100.0  # a pinned term's mistake exceeds MARGIN x the default tolerance somewhere
LINE = 120  # ruff's line-length (pyproject.toml)


# ----------------------------------------------------------------------------------------------- measurement
def severity(gold, cand, fields):
    """``(max over fields and elements of |cand - gold| / (atol + rtol |gold|), the worst field)``."""
    worst = (0.0, None)
    for p in fields:
        if p not in cand:
            continue
        c, g = np.asarray(cand[p], dtype=np.float64), gold[p]
        assert c.shape == g.shape, p
        if g.size:
            s = float(np.max(np.abs(c - g) / (V.DEFAULT_ATOL + V.DEFAULT_RTOL * np.abs(g))))
            s = np.inf if np.isnan(s) else s
            if s > worst[0]:
                worst = (s, p)
    return worst


def measure_case(path):
    """``(terms the case at ``path`` pins, in ``TERMS`` order; problems)``.  Mistakes the correct computation never
    reaches (``T.consulted_terms``) are bit-identical by construction and not recomputed."""
    g = T.load_golden(str(path))
    _, gold, _ = V.read_file(str(path))
    name = Path(path).stem
    reached = T.consulted_terms(g) & set(T.TERMS)
    pinned, problems = [], []
    for t in sorted(reached, key=T.TERMS.index):
        cand = T.candidate_fields(g, t)
        s_req, _ = severity(gold, cand, required_fields(gold))
        s_all, p = severity(gold, cand, required_fields(gold) + optional_fields(gold))
        if s_req > MARGIN:
            pinned.append(t)
        elif not s_all <= 1.0:
            problems.append(
                f"{name}: {t}'s mistake fails {p} by {s_all:.3g} x tolerance but changes the required fields by "
                f"only {s_req:.3g} x (neither pinned, > {MARGIN:g}, nor untested, <= 1)"
            )
    return tuple(pinned), problems


def measure(golden_dir):
    """``({case: pinned terms} in export order, problems)`` over the golden files in ``golden_dir``."""
    table, problems = {}, []
    for r, m, v, _ in V.cases():
        name = V.case_name(r, m, v)
        table[name], bad = measure_case(Path(golden_dir) / f"{name}.h5")
        problems += bad
    return table, problems


def coverage_diff(measured, committed):
    """Lines naming every case whose committed coverage differs from the measured one (empty: they agree)."""
    out = []
    for c in list(measured) + [c for c in committed if c not in measured]:
        have, want = set(committed.get(c, ())), set(measured.get(c, ()))
        if c not in measured:
            out.append(f"{c}: in COVERAGE but not a golden case")
        elif c not in committed:
            out.append(f"{c}: not in COVERAGE (measured: {', '.join(measured[c]) or 'nothing'})")
        elif tuple(committed[c]) != tuple(measured[c]):
            out.append(
                f"{c}: listed but not pinned {sorted(have - want)}, pinned but not listed {sorted(want - have)}"
                + ("" if have != want else " (order)")
            )
    if list(committed) != [c for c in measured if c in committed]:
        out.append("COVERAGE is not in export order")
    return out


# ----------------------------------------------------------------------------------------------- coverage.py
_COV_START = "COVERAGE: dict[str, tuple[str, ...]] = {\n"


def render_coverage(table):
    """The ``COVERAGE = {...}`` statement as ruff format writes it (one line per case where it fits)."""
    lines = [_COV_START]
    for case, terms in table.items():
        items = ", ".join(f'"{t}"' for t in terms) + ("," if len(terms) == 1 else "")
        one = f'    "{case}": ({items}),\n'
        if len(one) - 1 <= LINE:
            lines.append(one)
        else:
            lines.append(f'    "{case}": (\n' + "".join(f'        "{t}",\n' for t in terms) + "    ),\n")
    return "".join(lines) + "}\n"


def replace_coverage(text, table):
    """``coverage.py``'s text with its ``COVERAGE`` statement replaced by the rendering of ``table``."""
    i = text.index(_COV_START)
    j = text.index("\n}\n", i) + 3
    return text[:i] + render_coverage(table) + text[j:]


# ----------------------------------------------------------------------------------------------- docs
def _value(v):
    return str(v).lower() if isinstance(v, bool) else str(v)


def _options(opts):
    return ", ".join(f"`{k} = {_value(v)}`" for k, v in opts.items()) or "defaults"


def _optimizer(spec, steps):
    kept = [
        f"{k} {tuple(v) if isinstance(v, list) else v}"
        for k, v in spec.items()
        if k != "name" and v not in (0.0, False)
    ]
    return f"{steps} steps of {spec['name']} ({', '.join(kept)})"


def _steps(s):
    if s.get("optimizer"):
        return _optimizer(s["optimizer"], s["steps"])
    if s["warmup"]:
        how = f" with {_options(s['warmup_options'])}" if s.get("warmup_options") is not None else ""
        return f"{s['warmup']} warm-up step{'s' if s['warmup'] > 1 else ''}{how}, then one step"
    return "one step"


def render_cases():
    """The table of cases: one row per variant and declaration, its rules and models (from ``case_specs``)."""
    specs = V.case_specs()
    rows: dict = {}
    for s in specs:
        key = (s["variant"], _options(s["options"]), _steps(s))
        models = rows.setdefault(key, {}).setdefault(s["rule"], [])
        models.append(s["model"])
    # rules with the same declaration and models share a row
    out = [
        "| variant | rules | models | options | steps | files |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (variant, opts, steps), by_rule in rows.items():
        groups: dict = {}
        for rule, models in by_rule.items():
            groups.setdefault(tuple(models), []).append(rule)
        for models, rules in groups.items():
            out.append(
                f"| `{variant}` | {', '.join(rules)} | {', '.join(models)} | {opts} | {steps} | "
                f"{len(rules) * len(models)} |"
            )
    n_rules = len({s["rule"] for s in specs})
    n_variants = len({s["variant"] for s in specs})
    out += ["", f"{len(specs)} files in all: {n_rules} rules, {n_variants} variants."]
    return "\n".join(out)


def render_coverage_table(coverage=None):
    """The table ``| case | coverage |`` of every case, in export order."""
    coverage = COV.COVERAGE if coverage is None else coverage
    out = ["| case | coverage |", "| --- | --- |"]
    for r, m, v, _ in V.cases():
        name = V.case_name(r, m, v)
        out.append(f"| `{name}` | {', '.join(coverage.get(name, ())) or '(none)'} |")
    return "\n".join(out)


def render_rules():
    """README's table of rules: the registry's names in order, each rule's ``SUMMARY`` and file (rules of one
    module with one summary share a row)."""
    from ssaref.rules import RULES

    rows: list = []
    for name, cls in RULES.items():
        path = Path(inspect.getsourcefile(cls) or "").resolve().relative_to(ROOT).as_posix()
        if rows and rows[-1][1:] == [cls.SUMMARY, path]:
            rows[-1][0].append(name)
        else:
            rows.append([[name], cls.SUMMARY, path])
    out = ["| method | what | file |", "| --- | --- | --- |"]
    out += [f"| {', '.join(f'`{n}`' for n in names)} | {summary} | `{path}` |" for names, summary, path in rows]
    return "\n".join(out)


def docs_blocks(coverage=None):
    """``{file: {block name: generated text}}``."""
    return {
        DOC: {"golden-cases": render_cases(), "golden-coverage": render_coverage_table(coverage)},
        README: {"rules": render_rules()},
    }


def _block_re(name):
    return re.compile(
        rf"(<!-- generated: {re.escape(name)} begin[^\n]*-->\n)(.*?)(<!-- generated: {re.escape(name)} end -->)",
        re.S,
    )


def committed_block(text, name):
    """The text between the markers of block ``name`` (without the final newline); None without markers."""
    m = _block_re(name).search(text)
    return None if m is None else m.group(2).rstrip("\n")


def replace_blocks(text, blocks):
    for name, body in blocks.items():
        pat = _block_re(name)
        if not pat.search(text):
            raise ValueError(f"no block '<!-- generated: {name} begin -->'")
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text, count=1)
    return text


def docs_diff(coverage=None, texts=None):
    """``"<file>: block <name>"`` of every block whose committed text differs from the generated one (``texts``:
    ``{file: text}`` in place of the files' contents)."""
    out = []
    for path, blocks in docs_blocks(coverage).items():
        text = (texts or {}).get(path) or path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        for n, body in blocks.items():
            got = committed_block(text, n)
            if got is None:
                out.append(f"{rel}: block {n}: markers missing (restore '<!-- generated: {n} begin -->' ... end)")
            elif got != body:
                out.append(f"{rel}: block {n}")
    return out


# ----------------------------------------------------------------------------------------------- command
def _write(path, text):
    if path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    else:
        print(f"{path.relative_to(ROOT)} unchanged")


def main(argv=None):
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", action="store_true", help="only the docs blocks, from the committed COVERAGE")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when anything differs")
    args = ap.parse_args(argv)
    differs = []
    coverage = dict(COV.COVERAGE)
    if not args.docs:
        with tempfile.TemporaryDirectory() as d:
            V.export(d)  # the coverage attribute of these files is not read by the measurement
            coverage, problems = measure(d)
        if problems:
            print("error: " + "\n".join(problems), file=sys.stderr)
            return 1
        diff = coverage_diff(coverage, COV.COVERAGE)
        if args.check:
            differs += [f"ssaref/golden/coverage.py: {line}" for line in diff]
        else:
            _write(COVERAGE_PY, replace_coverage(COVERAGE_PY.read_text(encoding="utf-8"), coverage))
    if args.check:
        differs += docs_diff(coverage)
        for line in differs:
            print(line)
        if any("markers missing" in line for line in differs):
            print("restore the markers, then regenerate")
        elif differs:
            print(f"regenerate with: {COMMAND}")
        return 1 if differs else 0
    try:
        texts = {path: replace_blocks(path.read_text(encoding="utf-8"), blocks)
                 for path, blocks in docs_blocks(coverage).items()}
    except ValueError as exc:  # a marker was edited away: nothing is written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, text in texts.items():
        _write(path, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
