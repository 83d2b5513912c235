"""The audit (``python -m ssaref.audit``): every check primitive flags a deliberately wrong formula and passes a
correct one; every item's verdict is read off its evidence and flips with the transcription it judges (the sound
formula turns a finding into "holds", a broken formula turns "holds" into a finding); findings.json validates;
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
# items: every verdict is a function of its evidence and flips with the transcription it judges
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx():
    """One context for the item tests: the engine runs of the dynamics items are cached across them."""
    return items.Context(seed=0)


def _judge(ctx, item_id, **transcription):
    (it,) = items.get_items([item_id])
    o = it.run(ctx, **transcription)
    assert it.judge(o.evidence) == o.verdict          # the verdict is the one its evidence gives
    return o


# sound transcriptions (written here, independently of the audit's own reference formulas)
def _bp_signal(e, B1, W2, a1, X):
    """The true dL/dW1 of a 2-layer tanh MLP: the error backpropagated through W2."""
    return ((e @ W2) * (1 - np.tanh(a1) ** 2)).T @ X


def _conv_swapped(U, s, Vt, N, C, k):
    r = len(s)
    K1 = (np.sqrt(s)[:, None] * Vt).reshape(r, C, k, 1)                         # V side -> height kernel
    K2 = (U * np.sqrt(s)).reshape(N, k, r).transpose(0, 2, 1).reshape(N, r, 1, k)  # U side -> width kernel
    return K1, K2


def _polar(X):
    P, _, Qt = np.linalg.svd(X, full_matrices=False)
    return P @ Qt


_EQ11_SOUND = dict(task=lambda U, G, V, alpha: alpha * np.diag(np.diag(U.T @ G @ V)),
                   step_expr="s - eta * (alpha * diag(U.T @ G @ V) + 2 * beta * (s - Bs))")
_EQ12_SOUND = dict(task=lambda G, V, s, alpha: alpha * G @ V * s, project=transcribe.tangent)
_EQ13_SOUND = dict(
    expr="(S @ U.T @ G + 2*beta*(Vt - BVt) + 4*gamma*Vt @ (Vt.T @ Vt - I(n))) @ (I(n) - Vt.T @ Vt)",
    task=lambda G, U, s: (G.T @ U * s).T, proj=lambda V: np.eye(V.shape[0]) - V @ V.T)
_EQ17_SOUND = dict(task=lambda Ws, Bs, X, y: transcribe.mlp_bp(Ws, X, y),
                   premise=lambda g, W, B: float(np.sum(g * (W - B))) >= 0)

#: (item, verdict of the printed transcription, another transcription, the verdict it must get): for a flagged
#: item the sound formula / consistent shape (-> "holds"), for a "holds" item a deliberately broken one
FLIPS = [
    ("eq1-forward", "holds", dict(expr="h @ W"), "shape error"),
    ("eq2-bp", "holds", dict(bp=lambda *a: [1.1 * g for g in transcribe.mlp_bp(*a)]), "wrong gradient"),
    ("eq3-dfa", "holds", dict(expr="((B.T @ daN) * fp) @ hp.T - W"), "shape error"),
    ("eq4-cosine", "holds", dict(cos_fn=lambda a, b: float(np.sum(a * b)) / float(np.linalg.norm(a))),
     "ambiguous"),
    ("eq5-svd", "holds", dict(expr="U @ S @ V - W"), "shape error"),
    ("conv-svd", "shape error", dict(k1_expr="reshape(sqrt(S) @ V.T, (r, C, H, 1))",
                                     k2_expr="reshape(U @ sqrt(S), (N, r, 1, Wd))", build=_conv_swapped), "holds"),
    ("eq6-local-loss", "ambiguous", dict(signal=_bp_signal), "holds"),
    ("eq7-output-error", "holds", dict(grad_logits=lambda Z, y: 2.0 * transcribe.ce_grad_logits(Z, y)),
     "wrong gradient"),
    ("eq8-align", "shape error", dict(targets="layer"), "holds"),
    ("eq9-ortho", "holds", dict(ortho_grad=lambda X: 0.5 * transcribe.ortho_grad(X)), "wrong gradient"),
    ("feedback-factors", "shape error", dict(feedback_shape=lambda cfg: (cfg["m"], cfg["n"])), "holds"),
    ("eq10-update", "shape error", dict(expr="Vt - eta * gV.T"), "holds"),
    ("eq11-grad-S", "ambiguous", _EQ11_SOUND, "holds"),
    ("eq12-grad-U", "wrong gradient", _EQ12_SOUND, "holds"),
    ("eq13-grad-V", "shape error", _EQ13_SOUND, "holds"),
    ("param-count", "unjustified claim", dict(bound=lambda m, n: m * n / (m + n + 1)), "holds"),
    ("rank-schedule", "ambiguous", dict(reduce_to=0.45), "holds"),
    ("smooth-ce", "unjustified claim", dict(smoothness=lambda h: 0.5 * float(h @ h), convex_in="W"), "holds"),
    ("smooth-align", "holds", dict(smoothness=1.0), "unjustified claim"),
    ("nonconvex-ortho", "holds", dict(loss=lambda X: float(np.sum((X.T @ X) ** 2)),
                                      grad=lambda X: 4 * X @ (X.T @ X)), "unjustified claim"),
    ("projection", "unjustified claim", dict(project=transcribe.tangent, retract=_polar), "holds"),
    ("eq14-ssa-grad", "wrong gradient", dict(grad=lambda G, W, B, alpha, beta: alpha * G + 2 * beta * (W - B)),
     "holds"),
    ("eq15-align-grad", "shape error", dict(targets="layer"), "holds"),
    ("eq16-ortho-inner", "unjustified claim", dict(space="normal", ortho_dW=lambda U, s, V: np.zeros(
        (U.shape[0], V.shape[0]))), "holds"),
    ("eq17-18-positivity", "unjustified claim", _EQ17_SOUND, "holds"),
    ("dfa-true-grad", "unjustified claim", dict(feedback=lambda Ws, Bs, X, y: transcribe.mlp_bp(Ws, X, y)),
     "holds"),
    ("angle-sign", "ambiguous", dict(condition=lambda ang: ang < 90), "holds"),
    ("matrix-angle", "shape error", dict(expr="colspace_angle(Wabove.T, B)", compare=lambda W, Wabove: Wabove.T),
     "holds"),
    ("dyn-orthogonality", "unjustified claim", dict(variant="default"), "holds"),
    ("dyn-alignment", "unjustified claim", dict(variant="default", layers="classifier"), "holds"),
]


def test_every_item_has_a_flip_test():
    assert [f[0] for f in FLIPS] == [it.id for it in items.ITEMS]
    for item_id, printed, _, flipped in FLIPS:
        assert (printed == "holds") != (flipped == "holds"), item_id


@pytest.mark.parametrize("item_id, printed, transcription, flipped", FLIPS, ids=[f[0] for f in FLIPS])
def test_verdict_flips_with_the_transcription(ctx, item_id, printed, transcription, flipped):
    """The printed transcription gets its verdict, the other one the flipped verdict, and the explanation
    follows the evidence (its figures change with it)."""
    o_printed = _judge(ctx, item_id)
    o_other = _judge(ctx, item_id, **transcription)
    assert o_printed.verdict == printed
    assert o_other.verdict == flipped
    assert o_other.explanation != o_printed.explanation
    assert o_other.key in o_other.evidence and o_other.evidence.keys() >= o_printed.evidence.keys()


@pytest.mark.parametrize("item_id, transcription, verdict", [
    # one repair at a time: the verdict names what is still wrong
    ("eq2-bp", dict(expr="((Wn @ dan) * fp) @ hp.T - W"), "shape error"),
    ("eq7-output-error", dict(mse_grad=lambda z, y: 2 * (z - y)), "wrong gradient"),      # the 1/2 matters
    ("eq11-grad-S", dict(step_expr=_EQ11_SOUND["step_expr"]), "ambiguous"),               # still off-diagonal
    ("eq11-grad-S", dict(task=lambda U, G, V, alpha: np.diag(np.diag(U.T @ G @ V)),
                         step_expr=_EQ11_SOUND["step_expr"]), "wrong gradient"),           # alpha still missing
    ("eq12-grad-U", dict(task=_EQ12_SOUND["task"]), "unjustified claim"),                  # (I - UU^T) kills it
    ("eq13-grad-V", dict(expr=_EQ13_SOUND["expr"]), "wrong gradient"),                     # S^-1 still there
    ("eq13-grad-V", dict(expr=_EQ13_SOUND["expr"], task=_EQ13_SOUND["task"]), "unjustified claim"),
    ("smooth-ce", dict(smoothness=lambda h: 0.5 * float(h @ h)), "unjustified claim"),     # not convex in U, s
    ("smooth-align", dict(grad=lambda X, B: 4 * (X - B)), "unjustified claim"),
    ("projection", dict(project=transcribe.tangent), "unjustified claim"),                 # drifts unretracted
    ("eq17-18-positivity", dict(task=_EQ17_SOUND["task"]), "unjustified claim"),           # premise still false
    ("angle-sign", dict(condition=lambda ang: ang > 90), "unjustified claim"),             # anti-aligned
    ("dyn-alignment", dict(variant="default"), "unjustified claim"),                       # hidden layers > 90
    ("dyn-alignment", dict(layers="classifier"), "unjustified claim"),                     # paper's Adam run
])
def test_partial_repairs_keep_the_remaining_finding(ctx, item_id, transcription, verdict):
    assert _judge(ctx, item_id, **transcription).verdict == verdict


def test_verdicts_follow_the_thresholds_not_constants(ctx, monkeypatch):
    """Moving a threshold across a measured figure moves the verdict: the verdicts are read off the evidence."""
    o = _judge(ctx, "eq12-grad-U")
    assert o.verdict == "wrong gradient"
    def threshold(name, value):   # defined once (items/core.py), read there and by the sections' verdicts
        for mod in (items.core, items.updates, items.local_loss, items.rank):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, value)

    threshold("GRAD_RTOL", 1.0)  # every gradient "matches": the projection finding is left
    assert items._v_eq12(o.evidence) == "unjustified claim"
    o6 = _judge(ctx, "eq6-local-loss")
    threshold("COS_AGREE", o6.evidence["mean_cos_surrogate_vs_true_ds"] - 1e-3)
    assert items._v_eq6(o6.evidence) == "holds"
    o_pc = _judge(ctx, "param-count")
    threshold("CLAIM_FAIL_RATE", o_pc.evidence["parity_with_S_fail_rate"])
    assert items._v_params(o_pc.evidence) == "holds"


def test_items_evidence_of_the_paper_formulas(ctx):
    """The figures the verdicts are read from (the printed formulas' own evidence)."""
    o12 = _judge(ctx, "eq12-grad-U")
    assert o12.evidence["rel_err_task_GVSinv"] > 0.1 and o12.evidence["rel_err_correct_formula"] < 1e-7
    assert o12.evidence["rel_err_as_S2_preconditioned"] < 1e-6        # G V S^-1 = (grad) S^-2
    assert o12.evidence["projection_norm_ratio_square_U"] < 1e-12
    o14 = _judge(ctx, "eq14-ssa-grad")
    assert o14.evidence["rel_err_alpha1"] > 0.1 and o14.evidence["rel_err_correct_alpha1"] < 1e-7
    o11 = _judge(ctx, "eq11-grad-S")
    assert o11.evidence["rel_err_diag_alpha1"] < 1e-7 and o11.evidence["rel_err_diag_alpha07"] > 0.01
    assert o11.evidence["rel_err_full_matrix_reading"] < 1e-7
    o13 = _judge(ctx, "eq13-grad-V")
    assert o13.evidence["projection_norm_at_orthonormal_V"] < 1e-12
    o8 = _judge(ctx, "eq8-align")
    assert o8.evidence["configs_defined_Bi_factors"] == 0 and o8.evidence["configs_defined_layer_shaped"] == 4
    assert _judge(ctx, "conv-svd").evidence["swapped_rel_err"] < 1e-12


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


def test_full_run_verdicts_are_read_off_the_evidence(full_run):
    """Every finding's verdict is its item's verdict function of the evidence written to findings.json, and the
    counts are the audit's (docs/decisions.md D4.8 and the issue-11 record)."""
    doc = full_run[1]
    judge = {it.id: it.judge for it in items.ITEMS}
    for f in doc["findings"]:
        assert "nonfinite_evidence" not in f
        assert judge[f["id"]](f["evidence"]) == f["verdict"], f["id"]
    counts = {v: sum(f["verdict"] == v for f in doc["findings"]) for v in items.VERDICTS}
    assert counts == {"holds": 9, "shape error": 7, "wrong gradient": 2, "unjustified claim": 8, "ambiguous": 4}
    assert doc["thresholds"]["GRAD_RTOL"] == items.GRAD_RTOL


def test_build_findings_refuses_a_verdict_its_evidence_does_not_give(ctx):
    (it,) = items.get_items(["eq10-update"])
    o = it.run(ctx)
    o.verdict = "holds"
    with pytest.raises(ValueError, match="eq10-update"):
        report.build_findings([(it, o)])


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
    (lambda d: d["thresholds"].update(GRAD_RTOL="x"), "thresholds"),
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
