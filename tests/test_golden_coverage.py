"""The ``coverage`` of every golden case is measured, and each coefficient's mistake fails a named field.

``ssaref/golden/coverage.py`` lists, per case, the terms it pins.  Here the independent PyTorch candidate
(``tests/_torch_rules.py``, never importing ssaref) makes each term's mistake (``wrong=<term>``) on each case:

* a listed term's mistake must change some required field by more than ``MARGIN`` times the default tolerance
  (``|cand - gold| > MARGIN (atol + rtol |gold|)``): well above round-off, not a near miss;
* an unlisted term's mistake must leave every compared field within the default tolerance (it passes), so an
  unlisted term is really untested there -- e.g. ``gamma`` at an exact SVD, ``alpha`` where alpha = 1.

Mistakes the correct computation never reaches for a case (``T.consulted_terms``) are bit-identical by
construction and are not recomputed (spot-checked below).  ``MUTATIONS`` is the table of the issue: each
coefficient's mistake, through the real checker, fails a named field of a named case.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ssaref import vectors as V
from ssaref.golden import coverage as COV
from ssaref.golden import check as C
from ssaref.golden.check import optional_fields, required_fields

sys.path.insert(0, os.path.dirname(__file__))
import _torch_rules as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARGIN = 100.0

# mistake -> a case and a required field it fails (the list: alpha, beta, 2-vs-4 gamma, Hoyer, projection
# choice, S vs S^-1, injection point, batch mean, PEPITA's per-example error; then the other terms)
MUTATIONS = [
    ("alpha", "ssa__mlp__coef", "update/0/U"),
    ("alpha_bias", "ssa__mlp__coef", "update/4/b"),
    ("alpha_paper", "ssa__mlp__paper-coef", "update/0/s"),
    ("beta", "ssa__mlp__default", "update/2/U"),
    ("gamma", "ssa__mlp__sgd1", "update/2/V"),
    ("gamma", "ssa__mlp__paper-coef", "update/0/U"),
    ("gamma", "svd-bp__mlp__sgd1", "update/2/U"),
    ("gamma_placement", "ssa__mlp__sgd1", "update/2/V"),
    ("gamma_placement", "ssa__mlp__paper-coef", "update/2/U"),
    ("hoyer", "ssa__mlp__default", "update/2/s"),
    ("hoyer", "svd-bp__mlp__default", "update/0/s"),
    ("hoyer_classifier", "ssa__mlp__default", "update/4/s"),
    ("hoyer_paper", "ssa__mlp__paper", "update/2/s"),
    ("projection", "ssa__mlp__default", "update/0/V"),
    ("projection", "ssa__mlp__paper", "update/0/U"),
    ("s_inverse", "ssa__mlp__default", "update/0/U"),
    ("s_inverse", "ssa__conv__paper", "update/0/U"),
    ("s_inverse", "ssa__mlp__paper-coef", "update/0/U"),
    ("inject", "dfa__mlp__default", "update/0/b"),
    ("inject", "dfa__conv__before-pool", "update/0/W"),
    ("inject", "drtp__res__default", "update/0/W"),
    ("batch_mean", "bp__mlp__default", "update/4/b"),
    ("batch_mean", "dfa__res__default", "update/5/b"),
    ("pepita_error", "pepita__mlp__default", "update/0/b"),
    ("momentum", "bp__mlp__momentum3", "steps/3/params/4/b"),
    ("momentum", "ssa__mlp__momentum3", "steps/3/params/4/b"),
    ("adam_bias", "bp__conv__adam3", "steps/3/params/4/W"),
    ("adam_bias", "dfa__mlp__adam3", "steps/3/params/4/b"),
    ("retraction", "ssa__mlp__momentum3", "steps/3/params/0/V"),
    ("retraction", "ssa__conv__adam3", "steps/2/params/0/U"),
    ("retraction", "ssa__mlp__every2", "steps/2/params/0/V"),
    ("retract_every", "ssa__mlp__every2", "steps/1/params/0/V"),
    ("feedback", "fa__mlp__default", "update/0/W"),
    ("usf_scale", "usf__conv__default", "update/0/W"),
    ("drtp_target", "drtp__conv__default", "update/0/b"),
    ("kp_decay", "kp__mlp__decay", "update/2/B"),
    ("predsim_beta", "predsim__mlp__default", "update/0/aux/pred/1/W"),
    ("similarity_std", "predsim__conv__default", "update/0/W"),
    ("inject", "predsim__mlp__warm2", "update/0/W"),
    ("last_module", "auglocal__res__default", "update/2/main/0/W"),
    ("inject", "auglocal__res__default", "update/0/aux/aux/0/main/0/W"),
    # issue 22: the two mistakes an independent docs-only client made undetected (no conv B, no multi-step paper)
    ("feedback_conv", "fa__conv2__default", "update/0/W"),
    ("feedback_conv", "kp__conv2__default", "update/0/W"),
    ("feedback_conv", "usf__conv2__default", "update/0/W"),
    ("feedback_conv", "brsf__conv2__default", "update/0/W"),
    ("feedback_conv", "frsf__conv2__default", "update/0/W"),
    ("paper_no_retract", "ssa__conv__paper-momentum10", "steps/1/params/0/U"),
    ("paper_retract_every", "ssa__conv__paper-every10", "steps/10/params/0/U"),
]


def _names(d):
    return sorted(n[:-3] for n in os.listdir(d) if n.endswith(".h5"))


def _severity(gold, cand, fields):
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


def test_terms_are_the_candidates_mistakes_and_documented():
    assert tuple(COV.TERMS) == T.TERMS
    doc = (ROOT / "docs" / "golden-vectors.md").read_text()
    for t in COV.TERMS:
        assert f"`{t}`" in doc, f"docs/golden-vectors.md does not define coverage term {t}"


def test_every_case_has_its_coverage_recorded(golden):
    names = _names(golden)
    assert sorted(COV.COVERAGE) == names
    covered = set()
    for n in names:
        attrs, _, _ = V.read_file(golden / f"{n}.h5")
        assert tuple(json.loads(attrs["coverage"])) == COV.COVERAGE[n], n
        assert set(COV.COVERAGE[n]) <= set(COV.TERMS), n
        covered |= set(COV.COVERAGE[n])
    assert covered == set(COV.TERMS), f"terms no case pins: {set(COV.TERMS) - covered}"


def test_coverage_is_measured_exactly(golden):
    problems = []
    for n in _names(golden):
        path = str(golden / f"{n}.h5")
        g = T.load_golden(path)
        _, gold, _ = V.read_file(path)
        reached = T.consulted_terms(g) & set(T.TERMS)
        listed = set(COV.COVERAGE[n])
        for t in sorted(listed - reached):
            problems.append(f"{n}: {t} listed but the computation never reaches it")
        for t in sorted(reached):
            cand = T.candidate_fields(g, t)
            if t in listed:
                s, p = _severity(gold, cand, required_fields(gold))
                if not s > MARGIN:
                    problems.append(f"{n}: listed {t} changes the required fields by only {s:.3g} x tolerance")
            else:
                s, p = _severity(gold, cand, required_fields(gold) + optional_fields(gold))
                if not s <= 1.0:
                    problems.append(f"{n}: unlisted {t} fails {p} ({s:.3g} x tolerance): add it to the coverage")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case, term", [("bp__mlp__default", "gamma"), ("fa__conv__default", "alpha"),
                                        ("ssa__mlp__default", "momentum"), ("pepita__mlp__default", "inject")])
def test_an_unreached_mistake_changes_nothing(golden, case, term):
    g = T.load_golden(str(golden / f"{case}.h5"))
    assert term not in T.consulted_terms(g)
    a, b = T.candidate_fields(g), T.candidate_fields(g, term)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _fail_rows(text):
    return {(m.group(1), m.group(2)) for m in re.finditer(r"^(\S+)\s+(\S+)\s+\S+\s+\S+\s+FAIL", text, re.M)}


@pytest.mark.parametrize("term, case, field", MUTATIONS, ids=[f"{t}-{c}" for t, c, _ in MUTATIONS])
def test_each_mistake_fails_a_named_field(golden, tmp_path, capsys, term, case, field):
    assert term in COV.COVERAGE[case]
    gold, cand = tmp_path / "gold", tmp_path / "cand"
    gold.mkdir(), cand.mkdir()
    shutil.copy(golden / f"{case}.h5", gold / f"{case}.h5")
    T.write_candidate(str(golden / f"{case}.h5"), str(cand / f"{case}.h5"), wrong=term)
    rc = V.main(["check", str(gold), str(cand)])
    out = capsys.readouterr().out
    assert rc == 1
    assert (case, field) in _fail_rows(out), out
    assert "cases: 0 passed / 1 failed" in out


def test_docs_list_every_case_with_its_coverage():
    doc = (ROOT / "docs" / "golden-vectors.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9-]+__[a-z0-9]+__[a-z0-9-]+)` \| ([a-z_, ]+) \|$", doc, re.M))
    assert {c: tuple(v.split(", ")) for c, v in rows.items()} == COV.COVERAGE
    assert f"{len(COV.COVERAGE)} files in all" in doc


def test_the_candidate_never_imports_ssaref():
    import ast

    tree = ast.parse((ROOT / "tests" / "_torch_rules.py").read_text())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [m for m in mods if m.split(".")[0] == "ssaref"], mods
    assert "ssaref" not in (ROOT / "tests" / "_torch_rules.py").read_text().split('"""', 2)[2].replace(
        "ssaref-golden", "")


# ------------------------------------------------------------------------------------------------------
# issue 22: the planted mistakes the golden set missed before conv2 and the ten-step paper cases
# ------------------------------------------------------------------------------------------------------
def _write_fields(g, fields, path):
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["schema"] = g["attrs"]["schema"]
        for k in ("rule", "model", "variant"):
            f.attrs[k] = g["attrs"][k]
        for p, a in fields.items():
            f[p] = a
    return path


def _failing(golden, tmp_path, case, g=None, wrong=None):
    """The fields the standalone checker (ssaref.golden.check) fails for the candidate computed from ``g`` (the
    case's golden file as read, possibly edited) with the mistake ``wrong``."""
    gold = str(golden / f"{case}.h5")
    g = T.load_golden(gold) if g is None else g
    cand = _write_fields(g, T.candidate_fields(g, wrong), str(tmp_path / f"{case}.h5"))
    return {r[0] for r in C.compare_case(gold, cand) if not r[3]}


@pytest.mark.parametrize("rule", ["fa", "kp", "usf", "brsf", "frsf"])
def test_conv_feedback_with_W_fails_on_conv2_only(golden, tmp_path, rule):
    """An FA-family conv layer that carries the error with its W instead of its B: the conv case (one conv layer,
    the first, which carries no error) cannot see it; conv2 (a second conv layer) fails on the first layer's
    update and the signal below the conv B."""
    assert not _failing(golden, tmp_path, f"{rule}__conv2__default")        # the correct candidate passes
    assert not _failing(golden, tmp_path, f"{rule}__conv__default", wrong="feedback_conv")
    bad = _failing(golden, tmp_path, f"{rule}__conv2__default", wrong="feedback_conv")
    assert {"update/0/W", "update/0/b", "signal/1"} <= bad, bad
    assert not [p for p in bad if p.startswith(("update/2/", "update/6/"))], bad   # above the conv B: unchanged


def test_paper_variant_that_retracts_fails(golden, tmp_path):
    """The paper variant at its defaults never retracts.  Retracting after every step fails from step 1;
    retracting as the default variant's retract-every 10 fails at step 10 only (why the case has ten steps)."""
    case = "ssa__conv__paper-momentum10"
    g = T.load_golden(str(golden / f"{case}.h5"))
    o = g["options"]
    assert o["ssa_variant"] == "paper" and o["retraction"] == "none" and g["steps"] == 10
    assert "orthogonality" not in o     # 0.1.0's value, retract (docs/golden-vectors.md)
    assert not _failing(golden, tmp_path, case, g)
    every = _failing(golden, tmp_path, case, g, wrong="paper_no_retract")
    assert "steps/1/params/0/U" in every and "steps/10/params/0/U" in every, every
    misread = dict(g, options=dict(o, orthogonality="retract-every", retract_every=10, retraction="polar"))
    bad = _failing(golden, tmp_path, case, misread)
    assert bad and all(p.startswith("steps/10/params/") for p in bad), bad


def test_paper_variant_that_never_retracts_fails(golden, tmp_path):
    """With orthogonality retract-every the paper variant retracts (polar) after step 10: a candidate that never
    retracts in the paper variant passes steps 1-9 and fails step 10's parameters."""
    case = "ssa__conv__paper-every10"
    g = T.load_golden(str(golden / f"{case}.h5"))
    o = g["options"]
    assert (o["ssa_variant"], o["orthogonality"], o["retract_every"], o["retraction"]) == (
        "paper", "retract-every", 10, "polar") and g["steps"] == 10
    assert not _failing(golden, tmp_path, case, g)
    bad = _failing(golden, tmp_path, case, g, wrong="paper_retract_every")
    assert "steps/10/params/0/U" in bad and all(p.startswith("steps/10/params/") for p in bad), bad
