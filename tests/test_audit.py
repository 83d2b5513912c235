"""The audit (``python -m ssaref.audit``): every check primitive flags a deliberately wrong formula and passes a
correct one; the items' "holds" verdicts turn when their transcription is broken; findings.json validates;
``--only`` reproduces the full run's evidence; the literal options name real engine options.
"""
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssaref.audit import checks, items, report, run_audit, transcribe
from ssaref.audit.__main__ import main as audit_main
from ssaref.audit.checks import claim_search, gradient_check, shape_check
from ssaref.rules import build_rule


# ---------------------------------------------------------------------------------------------------
# shape_check
# ---------------------------------------------------------------------------------------------------
@given(m=st.integers(1, 9), n=st.integers(1, 9), r=st.integers(1, 9))
def test_shape_check_svd_product_defined(m, n, r):
    res = shape_check("U @ S @ V.T - W", {"U": (m, r), "S": (r, r), "V": (n, r), "W": (m, n)})
    assert res.defined and res.shape == (m, n) and not res.failures and res.ops == 3


@given(m=st.integers(1, 9), n=st.integers(1, 9), r=st.integers(1, 9))
def test_shape_check_flags_missing_transpose(m, n, r):
    res = shape_check("U @ S @ V - W", {"U": (m, r), "S": (r, r), "V": (n, r), "W": (m, n)})
    assert res.defined == (n == r and r == n and (m, r) == (m, n))  # only when V is square and r == n
    if n != r:
        assert res.failures[0]["op"] == "@" and res.failures[0]["left_shape"] == [m, r]
        assert len(res.failures) == 1  # reported once, where it happens


def test_shape_check_sum_of_transposed_terms():
    # eq. (13)-style bracket: an n x r term plus an r x n term
    res = shape_check("G.T @ U + (Vt - BVt)", {"G": (4, 6), "U": (4, 3), "Vt": (3, 6), "BVt": (3, 6)})
    assert not res.defined and res.failures[0]["op"] == "+"
    assert "(6, 3) and (3, 6)" in res.first_failure()
    ok = shape_check("(G.T @ U).T + (Vt - BVt)", {"G": (4, 6), "U": (4, 3), "Vt": (3, 6), "BVt": (3, 6)})
    assert ok.defined and ok.shape == (3, 6)


def test_shape_check_functions():
    sh = {"A": (3, 4), "Q": (3, 3), "B": (4, 2), "v": (3, 1)}
    assert not shape_check("inv(A)", sh).defined
    assert shape_check("inv(Q) @ A", sh).shape == (3, 4)
    assert shape_check("diag(v)", sh).shape == (3, 3)
    assert shape_check("diag(Q)", sh).shape == (3, 1)
    assert not shape_check("diag(A)", sh).defined
    assert shape_check("reshape(A, (2, 6))", sh).defined
    assert not shape_check("reshape(A, (5, 2, 1))", sh).defined
    assert not shape_check("colspace_angle(A.T, Q)", sh).defined
    assert shape_check("colspace_angle(A, Q)", sh).defined
    assert not shape_check("A + 1", sh).defined          # matrix plus a nonzero scalar
    assert shape_check("2 * A - 0", sh).defined
    assert not shape_check("A * B", sh).defined          # Hadamard of different shapes
    assert shape_check("I(3) - Q @ Q.T", sh).defined
    with pytest.raises(ValueError, match="Z"):
        shape_check("A @ Z", sh)
    with pytest.raises(ValueError, match="2-D"):
        shape_check("A", {"A": (3,)})


# ---------------------------------------------------------------------------------------------------
# gradient_check
# ---------------------------------------------------------------------------------------------------
def _ce_case(seed, m=4, n=5, B=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)), rng.standard_normal((B, n)), rng.integers(0, m, B)


@given(seed=st.integers(0, 10 ** 6), coef=st.sampled_from([0.5, 2.0, -1.0, 1.3]))
def test_gradient_check_passes_true_and_flags_wrong_coefficient(seed, coef):
    W, X, y = _ce_case(seed)
    f = lambda w: transcribe.linear_ce(w, X, y)
    G = transcribe.linear_ce_grad(W, X, y)
    good = gradient_check(f, G, W)
    assert good.ok and good.rel_err < 1e-7 and good.cosine > 1 - 1e-10
    bad = gradient_check(f, coef * G, W)
    assert not bad.ok and bad.rel_err > 0.2
    assert math.isclose(bad.norm_ratio, abs(coef), rel_tol=1e-5)
    assert math.isclose(bad.cosine, math.copysign(1.0, coef), rel_tol=1e-6)


def test_gradient_check_flags_S_inverse_and_passes_S():
    """Eq. (12)'s task term: G V S^-1 flagged, G V S passes (generic point, s away from 1)."""
    rng = np.random.default_rng(3)
    U, s, V = transcribe.generic_factors(rng, 4, 5, 3)
    X, y = rng.standard_normal((6, 5)), rng.integers(0, 4, 6)
    f = lambda Uv: transcribe.linear_ce((Uv * s) @ V.T, X, y)
    G = transcribe.linear_ce_grad((U * s) @ V.T, X, y)
    assert gradient_check(f, G @ V * s, U).ok
    assert not gradient_check(f, G @ V / s, U).ok


def test_gradient_check_noncontiguous_point_and_shape_error():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 3)).T  # F-ordered view
    f = lambda x: float(np.sum(x ** 3))
    assert gradient_check(f, 3 * A ** 2, A).ok
    with pytest.raises(ValueError, match="shape"):
        gradient_check(f, np.zeros((5, 3)), A)


# ---------------------------------------------------------------------------------------------------
# claim_search
# ---------------------------------------------------------------------------------------------------
def test_claim_search_true_claim_has_no_counterexample():
    res = claim_search(lambda r: {"a": r.standard_normal(4), "b": r.standard_normal(4)},
                       lambda c: abs(checks.cosine(c["a"], c["b"])) <= 1 + 1e-12, 300, seed=1)
    assert res.holds and res.fail_rate == 0 and res.smallest is None


def test_claim_search_false_claim_found_with_smallest_case_and_deterministic():
    sample = lambda r: {"d": int(r.integers(1, 20)), "x": float(r.standard_normal())}
    pred = lambda c: (c["x"] > 0, -c["x"])
    res = claim_search(sample, pred, 400, seed=5, size_fn=lambda c: c["d"])
    assert 0.35 < res.fail_rate < 0.65 and not res.holds
    assert res.smallest["d"] == 1 and res.smallest["x"] <= 0 and res.smallest["margin"] == -res.smallest["x"]
    again = claim_search(sample, pred, 400, seed=5, size_fn=lambda c: c["d"])
    assert again.smallest == res.smallest and again.fails == res.fails


def test_claim_search_detects_sign_of_W_minus_B_both_ways():
    """The eq. (17) predicate: B = W + c g makes <g, W - B> < 0 always, B = W - c g > 0 always."""
    def sample(rng, sign):
        W, X, y = _ce_case(int(rng.integers(1 << 30)))
        g = transcribe.linear_ce_grad(W, X, y)
        return {"g": g, "W": W, "B": W + sign * rng.uniform(0.1, 2) * g}
    pred = lambda c: (float(np.sum(c["g"] * (c["W"] - c["B"]))) > 0, 0.0)
    assert claim_search(lambda r: sample(r, +1), pred, 50).fail_rate == 1.0
    assert claim_search(lambda r: sample(r, -1), pred, 50).fail_rate == 0.0


# ---------------------------------------------------------------------------------------------------
# items: "holds" must be earned; the paper's wrong formulas are flagged
# ---------------------------------------------------------------------------------------------------
def _run_item(item_id):
    (it,) = items.get_items([item_id])
    return it.run(items.Context(seed=0))


@pytest.mark.parametrize("target, item_id, factor", [
    ("ce_grad_logits", "eq7-output-error", 2.0),
    ("mlp_bp", "eq2-bp", None),
    ("ortho_grad", "eq9-ortho", 0.5),
])
def test_holds_verdict_turns_when_the_transcription_is_wrong(monkeypatch, target, item_id, factor):
    assert _run_item(item_id).verdict == "holds"
    orig = getattr(transcribe, target)
    if target == "mlp_bp":
        wrong = lambda *a, **k: [1.1 * g for g in orig(*a, **k)]
    else:
        wrong = lambda *a, **k: factor * orig(*a, **k)
    monkeypatch.setattr(transcribe, target, wrong)
    assert _run_item(item_id).verdict == "wrong gradient"


def test_items_flag_paper_formulas_and_pass_corrected_ones():
    o12 = _run_item("eq12-grad-U")
    assert o12.verdict == "wrong gradient"
    assert o12.evidence["rel_err_task_GVSinv"] > 0.1 and o12.evidence["rel_err_correct_formula"] < 1e-7
    assert o12.evidence["rel_err_as_S2_preconditioned"] < 1e-6        # G V S^-1 = (grad) S^-2
    assert o12.evidence["projection_norm_ratio_square_U"] < 1e-12
    o14 = _run_item("eq14-ssa-grad")
    assert o14.evidence["rel_err_alpha1"] > 0.1 and o14.evidence["rel_err_correct_alpha1"] < 1e-7
    o11 = _run_item("eq11-grad-S")
    assert o11.evidence["rel_err_diag_alpha1"] < 1e-7 and o11.evidence["rel_err_diag_alpha07"] > 0.01
    assert o11.evidence["rel_err_full_matrix_reading"] < 1e-7
    o13 = _run_item("eq13-grad-V")
    assert o13.verdict == "shape error" and o13.evidence["projection_norm_at_orthonormal_V"] < 1e-12
    o8 = _run_item("eq8-align")
    assert o8.evidence["configs_defined_Bi_factors"] == 0 and o8.evidence["configs_defined_layer_shaped"] == 4
    assert _run_item("conv-svd").evidence["swapped_rel_err"] < 1e-12
    assert _run_item("smooth-align").verdict == "holds"


def test_every_verdict_is_known_and_every_id_unique():
    ids = [it.id for it in items.ITEMS]
    assert len(ids) == len(set(ids))
    eqs = {e for it in items.ITEMS for e in it.equations}
    assert eqs >= set(range(1, 19)), f"equations without an item: {sorted(set(range(1, 19)) - eqs)}"


def test_literal_and_default_options_are_real_engine_options():
    """Every ``--flag value`` in an item's literal option is accepted by the rule it names (ssa by default)."""
    for it in items.ITEMS:
        pairs = re.findall(r"--([a-z][a-z-]*)(?: ([^\s,;()]+))?", it.literal_option)
        if not pairs:
            continue
        opts = {k.replace("-", "_"): v for k, v in pairs if v}
        method = opts.pop("method", "ssa")
        names = [k.replace("-", "_") for k, _ in pairs if k != "method"]
        rule = build_rule(method)
        for n in names:
            assert n in rule.OPTIONS, f"{it.id}: --{n} is not an option of {method}"
        build_rule(method, **opts)  # values valid


# ---------------------------------------------------------------------------------------------------
# the whole audit: schema, determinism, --only, CLI
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    doc, _ = run_audit(out, seed=0)
    return out, doc


def test_full_run_writes_valid_findings_and_report(full_run):
    out, doc = full_run
    on_disk = json.loads((out / "findings.json").read_text())
    assert report.validate_findings(on_disk)
    assert on_disk == json.loads(json.dumps(doc))
    assert [f["id"] for f in on_disk["findings"]] == [it.id for it in items.ITEMS]
    md = (out / "report.md").read_text()
    for f in on_disk["findings"]:
        assert f"| [{f['id']}](#{f['id']})" in md and f"## {f['id']}" in md
        for fig in f["figures"]:
            assert (out / fig).stat().st_size > 1000 and f"![{fig}]({fig})" in md
    assert not list(out.glob(".*.tmp"))


def test_only_reproduces_the_full_runs_evidence(full_run, tmp_path):
    _, doc = full_run
    pick = ["eq17-18-positivity", "dyn-alignment", "rank-schedule", "param-count"]
    sub, _ = run_audit(tmp_path, only=pick, seed=0)
    full = {f["id"]: f for f in doc["findings"]}
    assert [f["id"] for f in sub["findings"]] == pick
    for f in sub["findings"]:
        assert f["evidence"] == full[f["id"]]["evidence"] and f["verdict"] == full[f["id"]]["verdict"]


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d.update(schema="x"), "schema"),
    (lambda d: d["findings"][0].update(verdict="fine"), "verdict"),
    (lambda d: d["findings"][0]["evidence"].update(x=float("nan")), "finite"),
    (lambda d: d["findings"][0]["evidence"].update(x="1"), "finite"),
    (lambda d: d["findings"][0].pop("statement"), "statement"),
    (lambda d: d["findings"][0].update(equations=[19]), "equation"),
    (lambda d: d["findings"].append(dict(d["findings"][0])), "repeated"),
])
def test_validate_findings_rejects_broken_documents(full_run, mutate, msg):
    doc = json.loads(json.dumps(full_run[1]))
    mutate(doc)
    with pytest.raises(ValueError, match=msg):
        report.validate_findings(doc)


def test_cli_bad_only_is_one_line_error_listing_ids(tmp_path, capsys):
    assert audit_main(["--out", str(tmp_path / "o"), "--only", "eq99"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "eq99" in err and "eq12-grad-U" in err
    assert not (tmp_path / "o").exists()


def test_cli_prints_summary_table(tmp_path, capsys):
    assert audit_main(["--out", str(tmp_path / "o"), "--only", "eq5-svd", "eq15-align-grad"]) == 0
    out = capsys.readouterr().out
    assert "eq5-svd" in out and "holds" in out and "shape error" in out
    assert json.loads((tmp_path / "o" / "findings.json").read_text())["schema"] == "ssaref-audit/1"


@pytest.mark.gpu
def test_dynamics_on_cupy_match_numpy(tmp_path):
    """The engine runs of the dynamics items on the GPU (float64) give the numpy run's default-variant figures."""
    cpu, _ = run_audit(tmp_path / "cpu", only=["dyn-orthogonality"], backend="numpy")
    gpu, _ = run_audit(tmp_path / "gpu", only=["dyn-orthogonality"], backend="cupy")
    a, b = cpu["findings"][0]["evidence"], gpu["findings"][0]["evidence"]
    for k in ("default_adam_final_loss", "default_adam_loss_at_step_100", "default_adam_median_change_U"):
        assert math.isclose(a[k], b[k], rel_tol=1e-6), (k, a[k], b[k])
    assert b["default_adam_final_ortho_U"] < 1e-12


def test_decisions_cross_reference_matches_the_audit(full_run):
    """docs/decisions.md D4.8 quotes verdicts and key figures; they must be the audit's own."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "decisions.md").read_text()
    section = text[text.index("### D4.8"):]
    quoted = re.findall(r"- \*\*([\w-]+)\*\* \(([a-z ]+)\): (\w+) (=|~) ([-0-9.e+]+)", section)
    assert len(quoted) >= 10, "D4.8 lost its per-item lines"
    findings = {f["id"]: f for f in full_run[1]["findings"]}
    for item_id, verdict, key, how, value in quoted:
        f = findings[item_id]
        assert f["verdict"] == verdict, (item_id, f["verdict"], verdict)
        got = float(f["evidence"][key])
        if how == "=":
            assert got == pytest.approx(float(value), rel=1e-6, abs=1e-12), (item_id, key)
        else:   # a round-off-sensitive figure (a diverging run): its order of magnitude
            assert float(value) / 3 <= got <= float(value) * 3, (item_id, key, got, value)
