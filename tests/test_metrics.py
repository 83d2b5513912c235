"""Alignment metrics: eq. (4) angles, principal angles, matrix alignment per rule, the BP-alongside tracker."""
import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ssaref.metrics import AlignmentTracker, angle_deg, matrix_alignment, principal_angles_deg
from ssaref.nn import build_model
from ssaref.nn.containers import Sequential
from ssaref.nn.layers import BatchNorm, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from ssaref.rules import build_rule

F64 = np.float64
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def vec(n):
    return hnp.arrays(F64, st.integers(2, n), elements=finite)


# ---------------------------------------------------------------------------------------------- angle_deg
@given(vec(40), st.floats(1e-3, 1e3))
def test_angle_zero_for_identical_and_180_for_negated_and_scale_invariant(a, s):
    assume(np.linalg.norm(a) > 1e-6)
    assert angle_deg(a, a) == pytest.approx(0.0, abs=1e-5)
    assert angle_deg(a, -a) == pytest.approx(180.0, abs=1e-5)
    b = np.roll(a, 1) + 0.5 * a
    assume(np.linalg.norm(b) > 1e-6)
    ref = angle_deg(a, b)
    assert angle_deg(s * a, b) == pytest.approx(ref, abs=1e-6)
    assert angle_deg(a, s * b) == pytest.approx(ref, abs=1e-6)
    assert angle_deg(b, a) == pytest.approx(ref, abs=1e-9)


@given(hnp.arrays(F64, (3, 4), elements=finite), hnp.arrays(F64, (3, 4), elements=finite))
def test_angle_matches_definition_on_matrices(A, B):
    na, nb = np.linalg.norm(A), np.linalg.norm(B)
    assume(na > 1e-6 and nb > 1e-6)
    c = np.clip((A * B).sum() / (na * nb), -1, 1)
    assert angle_deg(A, B) == pytest.approx(math.degrees(math.acos(c)), abs=1e-5)  # acos: ~1e-6 deg error


def test_angle_orthogonal_zero_norm_and_bad_sizes():
    assert angle_deg(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(90.0)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(50)
    b = rng.standard_normal(50)
    b -= (a @ b) / (a @ a) * a
    assert angle_deg(a.reshape(5, 10), b.reshape(10, 5)) == pytest.approx(90.0, abs=1e-9)
    assert math.isnan(angle_deg(np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="3 and 4"):
        angle_deg(np.ones(3), np.ones(4))


# ------------------------------------------------------------------------------------- principal angles
def test_principal_angles_known_rotation():
    for deg in (0.0, 10.0, 45.0, 90.0):
        t = math.radians(deg)
        A = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        B = np.array([[1.0, 0.0], [0.0, math.cos(t)], [0.0, math.sin(t)]]) @ np.array([[2.0, 1.0], [0.0, 3.0]])
        ang = principal_angles_deg(A, B)
        np.testing.assert_allclose(ang, [0.0, deg], atol=1e-6)


@given(st.integers(3, 9), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31))
def test_principal_angles_match_scipy(n, p, q, seed):
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((n, p)), rng.standard_normal((n, q))
    ref = np.sort(np.degrees(scipy.linalg.subspace_angles(A, B)))
    got = principal_angles_deg(A, B)
    assert np.all(np.diff(got) >= -1e-12)
    np.testing.assert_allclose(got, ref, atol=1e-5)  # scipy itself is ~1e-6 deg off at exact intersections
    # column-space property: invariant to a change of basis
    M = rng.standard_normal((p, p)) + 3 * np.eye(p)
    np.testing.assert_allclose(principal_angles_deg(A @ M, B), got, atol=1e-6)


def test_principal_angles_bad_shapes():
    with pytest.raises(ValueError, match=r"\(4, 2\) and \(5, 2\)"):
        principal_angles_deg(np.ones((4, 2)), np.ones((5, 2)))


# ------------------------------------------------------------------------------------- matrix alignment
def mlp(hidden=(7, 6), K=4, dtype=F64):
    return build_model("mlp", (1, 3, 4), K, dtype=dtype, seed=0, hidden=hidden)


def rule(name, model, **opts):
    r = build_rule(name, **opts)
    model = r.setup(model, np.random.default_rng(1))
    return r


def test_matrix_alignment_fa_family():
    model = mlp()
    fa = rule("fa", model)
    ma = matrix_alignment(fa, model)
    assert set(ma) == {"flat/3.W", "principal/3.W", "flat/5.W", "principal/5.W"}
    params = dict(model.named_params())
    assert ma["flat/3.W"] == pytest.approx(angle_deg(fa.state["B/3.W"], params["3.W"]))
    # 3.W is (6, 7): wide -> row spaces (6-dim in R^7); compare with scipy
    ref = np.degrees(scipy.linalg.subspace_angles(np.asarray(fa.state["B/3.W"]).T, params["3.W"].T)).mean()
    assert ma["principal/3.W"] == pytest.approx(ref, abs=1e-6)
    # 5.W is (4, 6): wide as well; make B = W and B = -W
    for k in list(fa.state):
        fa.state[k] = params[k[2:]].copy()
    ma = matrix_alignment(fa, model)
    assert ma["flat/5.W"] == pytest.approx(0.0, abs=1e-5) and ma["principal/5.W"] == pytest.approx(0, abs=1e-5)
    for k in list(fa.state):
        fa.state[k] = -params[k[2:]]
    ma = matrix_alignment(fa, model)
    assert ma["flat/5.W"] == pytest.approx(180.0, abs=1e-5)
    assert ma["principal/5.W"] == pytest.approx(0.0, abs=1e-5)  # same column space, opposite sign
    # square weight: both spaces are the whole space -> nan
    sq = mlp(hidden=(6, 6))
    assert math.isnan(matrix_alignment(rule("frsf", sq), sq)["principal/3.W"])
    # uSF compares scale*sign(W) with W
    us = rule("usf", model)
    assert matrix_alignment(us, model)["flat/3.W"] == pytest.approx(angle_deg(np.sign(params["3.W"]), params["3.W"]))


def test_matrix_alignment_dfa_against_downstream_product():
    model = mlp(hidden=(7, 6), K=4)
    dfa = rule("dfa", model)
    params = dict(model.named_params())
    ma = matrix_alignment(dfa, model)
    assert set(ma) == {"flat/1.W", "principal/1.W", "flat/3.W", "principal/3.W"}
    P1 = params["5.W"] @ params["3.W"]  # downstream of segment 1: W_3 W_2 (K x d_1)
    assert ma["flat/1.W"] == pytest.approx(angle_deg(dfa.state["B/1"], P1.T))
    ref = np.degrees(scipy.linalg.subspace_angles(np.asarray(dfa.state["B/1"]), P1.T)).mean()
    assert ma["principal/1.W"] == pytest.approx(ref, abs=1e-6)
    dfa.state["B/3"] = params["5.W"].T * 2.5  # aligned feedback -> 0
    ma = matrix_alignment(dfa, model)
    assert ma["flat/3.W"] == pytest.approx(0.0, abs=1e-5) and ma["principal/3.W"] == pytest.approx(0.0, abs=1e-5)
    assert matrix_alignment(build_rule("bp"), model) == {}


def test_matrix_alignment_conv_path_is_nan_and_pepita_defined():
    cm = build_model("convnet", (1, 8, 8), 4, dtype=F64, seed=0, width_mult=0.125)
    ma = matrix_alignment(rule("dfa", cm), cm)
    assert math.isnan(ma["flat/0.W"]) and math.isnan(ma["principal/0.W"])  # conv/pool downstream
    assert np.isfinite(ma["flat/3.W"])  # injected at the flatten output: only fc layers downstream
    assert np.isfinite(ma["flat/7.W"]) and np.isfinite(ma["principal/7.W"])
    ma = matrix_alignment(rule("dfa", cm, dfa_inject="before_pool"), cm)
    assert math.isnan(ma["flat/3.W"])  # now a max-pool lies downstream
    model = mlp()
    pep = rule("pepita", model)
    params = dict(model.named_params())
    ma = matrix_alignment(pep, model)
    P = params["5.W"] @ params["3.W"] @ params["1.W"]
    assert ma["flat/1.W"] == pytest.approx(angle_deg(pep.state["F"], P.T))


# ------------------------------------------------------------------------------------------------ tracker
def convbn(K=3):
    rng = np.random.default_rng(0)
    ctx = dict(xp=np, dtype=F64, rng=rng)
    m = Sequential([Conv2d(2, 3, 3, padding=1, **ctx), BatchNorm(3, xp=np, dtype=F64), ReLU(), MaxPool2d(2),
                    Flatten(), Linear(27, 5, **ctx), ReLU(), Linear(5, K, **ctx)])
    m.name, m.input_shape, m.num_classes = "convbn", (2, 6, 6), K
    return m


def data(model, n=8, seed=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + model.input_shape), rng.integers(0, model.num_classes, n)


def test_tracker_bp_is_zero_and_bn_stats_untouched():
    model = convbn()
    x, y = data(model)
    tr = AlignmentTracker(model, every=1)
    assert tr.layer_keys == ["0.W", "5.W", "7.W"]
    bp = build_rule("bp")
    bp.keep_signals = tr.due(0)  # as the training loop: a recording step keeps its signals
    res = bp.step(model, x, y)
    before = {k: v.copy() for k, v in model.buffers.items()}
    tr.maybe_record(0, model, bp, x, y, res)
    for k, v in model.buffers.items():
        np.testing.assert_array_equal(v, before[k])
    m = tr.epoch_metrics()
    np.testing.assert_allclose(m["align/grad_mean"], 0.0, atol=1e-5)
    np.testing.assert_allclose(m["align/signal_mean"], 0.0, atol=1e-5)
    np.testing.assert_array_equal(m["align/grad_frac_gt90"], 0.0)
    assert np.isnan(m["align/matrix_flat"]).all()  # BP has no feedback matrix


def test_tracker_dfa_records_summarises_and_resets():
    model = mlp(hidden=(7, 6), K=4)
    tr = AlignmentTracker(model, every=2)
    dfa = rule("dfa", model)
    rows = []
    for step in range(5):
        x, y = data(model, seed=step)
        dfa.keep_signals = tr.due(step)  # as the training loop: the recording steps keep the signals
        res = dfa.step(model, x, y)
        assert bool(res.signals) == (step % 2 == 0)
        tr.maybe_record(step, model, dfa, x, y, res)
        if step % 2 == 0:  # recompute the expected angles independently
            bp = build_rule("bp")
            bp.keep_signals = True
            bpres = bp.step(model, x, y)
            rows.append(([angle_deg(res.updates[k], bpres.updates[k]) for k in ("1.W", "3.W", "5.W")],
                         [angle_deg(res.signals[i], bpres.signals[i]) for i in (1, 3, 5)]))
    ev = tr.pop_events()
    assert ev["align_step/step"] == [0, 2, 4]
    G = np.array([r[0] for r in rows])
    S = np.array([r[1] for r in rows])
    np.testing.assert_allclose(np.array(ev["align_step/grad_deg"]), G, atol=1e-9)
    np.testing.assert_allclose(np.array(ev["align_step/signal_deg"]), S, atol=1e-9)
    assert tr.pop_events()["align_step/step"] == []
    line = tr.summary_line()
    assert line.startswith("align(deg) 1.W=") and "5.W=0.0" in line
    m = tr.epoch_metrics()
    np.testing.assert_allclose(m["align/grad_mean"], G.mean(0), atol=1e-9)
    np.testing.assert_allclose(m["align/grad_std"], G.std(0), atol=1e-9)
    np.testing.assert_allclose(m["align/grad_frac_gt90"], (G > 90).mean(0))
    np.testing.assert_allclose(m["align/signal_mean"], S.mean(0), atol=1e-9)
    assert m["align/grad_mean"][2] == pytest.approx(0.0, abs=1e-5)  # the output layer is trained with e
    assert 0 < m["align/grad_mean"][0] < 180
    ma = matrix_alignment(dfa, model)
    np.testing.assert_allclose(m["align/matrix_flat"], [ma["flat/1.W"], ma["flat/3.W"], np.nan])
    np.testing.assert_allclose(m["align/matrix_principal"], [ma["principal/1.W"], ma["principal/3.W"], np.nan])
    for v in m.values():
        assert v.shape == (3,)
    m2 = tr.epoch_metrics()  # reset: nothing recorded since
    assert np.isnan(m2["align/grad_mean"]).all()
    assert tr.summary_line().startswith("align(deg) 1.W=nan")


def test_tracker_frac_gt90_counts_negated_updates_and_every_zero_is_off():
    model = mlp()
    x, y = data(model)
    bp = build_rule("bp")
    res = bp.step(model, x, y)
    neg = type(res)(res.loss, res.logits, {k: -v for k, v in res.updates.items()}, {})
    tr = AlignmentTracker(model, every=1)
    tr.maybe_record(0, model, bp, x, y, neg)
    tr.maybe_record(1, model, bp, x, y, type(res)(res.loss, res.logits, res.updates, {}))
    m = tr.epoch_metrics()
    np.testing.assert_allclose(m["align/grad_frac_gt90"], 0.5)
    np.testing.assert_allclose(m["align/grad_mean"], 90.0, atol=1e-5)
    assert np.isnan(m["align/signal_mean"]).all()  # no signals given
    off = AlignmentTracker(model, every=0)
    off.maybe_record(0, model, bp, x, y, res)
    assert off.pop_events()["align_step/step"] == [] and off.summary_line() == ""
    with pytest.raises(ValueError, match="-1"):
        AlignmentTracker(model, every=-1)


# ------------------------------------------------------------------------------------ SSA / SVD layers
def ssa_mlp(hidden=(7, 6), K=4, **opts):
    """SSA on ``mlp(hidden, K)`` (same seed as the dense ``mlp``): model, rule."""
    model = mlp(hidden=hidden, K=K)
    r = build_rule("ssa", **opts)
    model = r.setup(model, np.random.default_rng(1))
    return model, r


def _W(layer):
    """U diag(s) V^T written out from the factors (independent of the engine's matrix())."""
    U, s, V = (np.asarray(layer.params[k]) for k in ("U", "s", "V"))
    return U @ np.diag(s) @ V.T


def test_matrix_alignment_ssa_hand_built_and_consistent_with_dfa():
    model, ssa = ssa_mlp()
    ma = matrix_alignment(ssa, model)
    # hidden SVD layers only (the output layer gets e, no B), keyed by the layer prefix
    assert set(ma) == {"flat/1", "principal/1", "flat/3", "principal/3"}
    W3, W5 = _W(model.layers[3]), _W(model.layers[5])
    P1 = W5 @ W3                                             # (W_N W_{i+1}) for segment 1: (K, d_1)
    assert ma["flat/1"] == pytest.approx(angle_deg(ssa.state["B/1"], P1.T), abs=1e-9)
    ref = np.degrees(scipy.linalg.subspace_angles(np.asarray(ssa.state["B/1"]), P1.T)).mean()
    assert ma["principal/1"] == pytest.approx(ref, abs=1e-6)
    # hand-built: B_3 aligned with W_N^T (any positive scale) -> 0; anti-aligned -> flat 180, principal 0
    ssa.state["B/3"] = 2.5 * W5.T
    ma = matrix_alignment(ssa, model)
    assert ma["flat/3"] == pytest.approx(0.0, abs=1e-5) and ma["principal/3"] == pytest.approx(0.0, abs=1e-5)
    ssa.state["B/3"] = -W5.T
    ma = matrix_alignment(ssa, model)
    assert ma["flat/3"] == pytest.approx(180.0, abs=1e-5) and ma["principal/3"] == pytest.approx(0.0, abs=1e-5)
    # a B orthogonal to W_N^T (columns in the orthogonal complement of col(W_N^T)) -> 90 and 90
    wide, wr = ssa_mlp(hidden=(7, 9))
    W5w = _W(wide.layers[5])                                  # (4, 9)
    Q = np.linalg.qr(W5w.T, mode="complete")[0][:, 4:]       # (9, 5): complement of the 4-dim col(W_5^T)
    wr.state["B/3"] = Q[:, :4] * np.array([1.0, 2.0, 0.5, 3.0])
    ma = matrix_alignment(wr, wide)
    assert ma["flat/3"] == pytest.approx(90.0, abs=1e-6) and ma["principal/3"] == pytest.approx(90.0, abs=1e-6)
    # the same B on the dense model under DFA gives the same figure (SVD layers reproduce W at full rank)
    dense = mlp()
    dfa = rule("dfa", dense)
    dfa.state["B/1"] = np.asarray(ssa.state["B/1"]).copy()
    assert matrix_alignment(dfa, dense)["flat/1.W"] == pytest.approx(
        matrix_alignment(ssa, model)["flat/1"], abs=1e-8)
    # after a rank cut the product is rebuilt from the truncated factors
    m2, r2 = ssa_mlp(rank_schedule="epoch", reduce_to=0.5, reduce_frac=1.0)
    r2.on_epoch_end(m2, None, 1, 1)
    assert m2.layers[3].rank == 3
    P = _W(m2.layers[5]) @ _W(m2.layers[3])
    assert matrix_alignment(r2, m2)["flat/1"] == pytest.approx(angle_deg(r2.state["B/1"], P.T), abs=1e-9)


def test_matrix_alignment_ssa_nan_where_conv_downstream_and_principal_nan_when_K_fills_space():
    cm = build_model("convnet", (1, 8, 8), 4, dtype=F64, seed=0, width_mult=0.125)
    ssa = build_rule("ssa")
    cm = ssa.setup(cm, np.random.default_rng(1))
    ma = matrix_alignment(ssa, cm)
    assert set(ma) == {f"{v}/{p}" for v in ("flat", "principal") for p in ("0", "3", "7")}
    assert math.isnan(ma["flat/0"]) and math.isnan(ma["principal/0"])   # an SVD conv and a pool downstream
    assert np.isfinite(ma["flat/3"]) and np.isfinite(ma["flat/7"])       # only (SVD) fc layers downstream
    B3 = np.asarray(ssa.state["B/3"])
    P = _W(cm.layers[9]) @ _W(cm.layers[7])
    assert B3.shape == (P.shape[1], 4) and ma["flat/3"] == pytest.approx(angle_deg(B3, P.T), abs=1e-9)
    # K >= d_i: both K-dim column spaces are the whole space -> principal nan, flat still defined
    model, r = ssa_mlp(hidden=(7, 3), K=4)
    ma = matrix_alignment(r, model)
    assert math.isnan(ma["principal/3"]) and np.isfinite(ma["flat/3"]) and np.isfinite(ma["principal/1"])
    # SVD-BP and SSA before init_state: no feedback, no entries
    sb = build_rule("svd-bp")
    m3 = sb.setup(mlp(), np.random.default_rng(1))
    assert matrix_alignment(sb, m3) == {} and matrix_alignment(build_rule("ssa"), m3) == {}


def test_tracker_svd_layers_compare_induced_dW_with_bp_gradient():
    model, ssa = ssa_mlp(angle_every=1)
    tr = AlignmentTracker(model, every=1)
    assert tr.layer_keys == ["1", "3", "5"]
    expect = []
    for step in range(2):
        x, y = data(model, seed=step)
        ssa.keep_signals = tr.due(step)
        res = ssa.step(model, x, y)
        tr.maybe_record(step, model, ssa, x, y, res)
        # independent: dense model with W = U diag(s) V^T, BP's gradient of W, dW from the factor updates
        dense = mlp()
        for k in (1, 3, 5):
            dense.layers[k].params["W"][...] = _W(model.layers[k])
            dense.layers[k].params["b"][...] = model.layers[k].params["b"]
        bp = build_rule("bp").step(dense, x, y)
        row = []
        for k in (1, 3, 5):
            U, s, V = (np.asarray(model.layers[k].params[n]) for n in ("U", "s", "V"))
            dU, ds, dV = (res.updates[f"{k}.{n}"] for n in ("U", "s", "V"))
            dW = dU @ np.diag(s) @ V.T + U @ np.diag(ds) @ V.T + U @ np.diag(s) @ dV.T
            row.append(angle_deg(dW, bp.updates[f"{k}.W"]))
        expect.append(row)
        for key, p in model.named_params():   # plain SGD step so the second record sees new factors
            p -= 0.05 * res.updates[key]
    ev = tr.pop_events()
    np.testing.assert_allclose(np.array(ev["align_step/grad_deg"]), expect, atol=1e-7)
    assert np.all(np.isfinite(np.array(ev["align_step/signal_deg"])[:, 2]))
    np.testing.assert_allclose(np.array(ev["align_step/signal_deg"])[:, 2], 0.0, atol=1e-5)  # output gets e
    # the same function as SSA's own svd_angle metric
    m = ssa.on_epoch_end(model, None, 1, 10)
    np.testing.assert_allclose(np.mean(expect, axis=0), m["svd_angle"], atol=1e-7)
    ms = tr.epoch_metrics()
    ma = matrix_alignment(ssa, model)
    np.testing.assert_allclose(ms["align/matrix_flat"], [ma["flat/1"], ma["flat/3"], np.nan])
    np.testing.assert_allclose(ms["align/matrix_principal"], [ma["principal/1"], ma["principal/3"], np.nan])
    assert tr.summary_line().startswith("align(deg) 1=")
    # a negated update is the supplement of the angle
    x, y = data(model, seed=9)
    res = ssa.step(model, x, y)
    neg = type(res)(res.loss, res.logits, {k: -v for k, v in res.updates.items()}, {})
    tr.maybe_record(0, model, ssa, x, y, res)
    tr.maybe_record(0, model, ssa, x, y, neg)
    g = np.array(tr.pop_events()["align_step/grad_deg"])
    np.testing.assert_allclose(g[0] + g[1], 180.0, atol=1e-7)


def test_tracker_svd_layers_inside_residual_blocks_are_nan():
    model = build_model("resnet20", (3, 8, 8), 4, dtype=F64, seed=0, width_mult=0.125)
    ssa = build_rule("ssa", angle_every=0)
    model = ssa.setup(model, np.random.default_rng(1))
    tr = AlignmentTracker(model, every=1)
    assert tr.layer_keys == ssa.metric_layers() and "3.main.0" in tr.layer_keys
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 3, 8, 8)), rng.integers(0, 4, 3)
    tr.maybe_record(0, model, ssa, x, y, ssa.step(model, x, y))
    g = tr.epoch_metrics()["align/grad_mean"]
    nested = np.array(["." in k for k in tr.layer_keys])
    assert np.isnan(g[nested]).all() and np.isfinite(g[~nested]).all()
