"""SSA's orthogonality handling (``--orthogonality {retract, landing, retract-every}``, docs/decisions.md D4.12).

* the landing pieces of ``ssaref.linalg``: the penalty gradient against float64 central finite differences, the
  field's properties (tangent part = the canonical Riemannian gradient's direction on the manifold, normal part
  zero there, the relative part never moves ``X^T X`` to first order), the closed-form safe step (the distance
  stays below eps over many random steps, for every step size up to the bound) and the exact step fraction;
* the rule: the landing direction is the relative gradient of the FD gradient of the task + alignment terms
  plus the FD gradient of gamma * eq. (9); no retraction; the safeguard holds ``||X^T X - I||_F <= eps`` under
  Adam at a large learning rate; under plain SGD a step within the closed-form bound is never shrunk;
  ``retract-every 1`` equals ``retract``; ``retract-every K`` retracts on steps K, 2K, ...; resume is exact.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ssaref import train as train_mod
from ssaref.linalg import (
    landing_field,
    landing_penalty,
    landing_penalty_grad,
    landing_safe_step,
    landing_step_fraction,
    orthogonality_error,
    relative_project,
    tangent_project,
)
from ssaref.nn import build_model
from ssaref.nn.svd_layers import SVDLinear
from ssaref.rules import build_rule
from ssaref.run import build_run
from ssaref.runlog import read_run

from _gradcheck import numerical_grad, rel_error

P = "0"


def _near(rng, m, r, off):
    """A point ``off`` (relative, in Frobenius norm) away from a random point of the Stiefel manifold."""
    Q = np.linalg.qr(rng.standard_normal((m, r)))[0]
    E = rng.standard_normal((m, r))
    return Q + off * E / np.linalg.norm(E)


def _dist(X):
    return float(np.linalg.norm(X.T @ X - np.eye(X.shape[1])))


# ------------------------------------------------------------------------------------------ linalg pieces
@given(m=st.integers(1, 7), r=st.integers(1, 7), seed=st.integers(0, 10**6))
def test_landing_penalty_gradient_matches_central_differences(m, r, seed):
    """grad N(X) = X (X^T X - I) for N = ||X^T X - I||_F^2 / 4 (float64 central differences, generic X)."""
    assume(r <= m)
    X = np.random.default_rng(seed).standard_normal((m, r))
    num = numerical_grad(landing_penalty, X)
    assert rel_error(landing_penalty_grad(X), num, floor=1e-6) < 1e-7


@given(m=st.integers(1, 8), r=st.integers(1, 8), lam=st.floats(0.0, 3.0), seed=st.integers(0, 10**6))
def test_landing_field_on_the_manifold_is_the_riemannian_gradient_direction(m, r, lam, seed):
    """At X^T X = I the normal part lam X (X^T X - I) vanishes and Lambda(X) = skew(G X^T) X is tangent and
    equals half the canonical-metric Riemannian gradient G - X G^T X, a descent direction."""
    assume(r <= m)
    rng = np.random.default_rng(seed)
    X = np.linalg.qr(rng.standard_normal((m, r)))[0]
    G = rng.standard_normal((m, r))
    L = landing_field(X, G, lam)
    assert np.abs(lam * landing_penalty_grad(X)).max() < 1e-12 * max(1.0, lam)     # normal part zero
    np.testing.assert_allclose(X.T @ L + L.T @ X, 0.0, atol=1e-12)                  # tangent at X
    np.testing.assert_allclose(L, 0.5 * (G - X @ G.T @ X), atol=1e-12)              # canonical gradient / 2
    assert float((L * G).sum()) >= -1e-12                                          # <Lambda, G> >= 0
    # its component along span(X) is the Euclidean projection's (X skew(X^T G)), the rest half of it
    T = tangent_project(X, G)
    np.testing.assert_allclose(X.T @ L, X.T @ T, atol=1e-12)


@given(m=st.integers(2, 8), r=st.integers(1, 8), off=st.floats(0.01, 0.6), seed=st.integers(0, 10**6))
def test_relative_part_leaves_the_gram_matrix_unchanged_to_first_order(m, r, off, seed):
    """Off the manifold too: X^T (psi X) + (psi X)^T X = 0, so only the penalty moves X^T X at first order,
    and it moves it towards I: d/dt ||E||^2 along -X E is -4 tr(E^2 (I + E)) < 0 while ||E||_2 < 1."""
    assume(r <= m)
    rng = np.random.default_rng(seed)
    X = _near(rng, m, r, off)
    G = rng.standard_normal((m, r))
    R = relative_project(X, G)
    np.testing.assert_allclose(X.T @ R + R.T @ X, 0.0, atol=1e-11 * (1 + np.abs(G).max()))
    E = X.T @ X - np.eye(r)
    assume(np.linalg.norm(E, 2) < 0.99 and np.linalg.norm(E) > 1e-6)
    N = landing_penalty_grad(X)
    assert float(np.sum(E * (X.T @ N + N.T @ X))) > 0.0   # -N decreases ||E||^2


@given(m=st.integers(2, 9), r=st.integers(1, 6), lam=st.floats(0.05, 5.0), eps=st.floats(0.05, 0.9),
       gscale=st.floats(0.01, 100.0), seed=st.integers(0, 10**6))
def test_safe_step_keeps_every_step_below_eps(m, r, lam, eps, gscale, seed):
    """For every eta up to landing_safe_step(||Lambda||, d, lam, eps): ||E(X - eta Lambda)|| <= eps."""
    assume(r <= m)
    rng = np.random.default_rng(seed)
    X = _near(rng, m, r, rng.uniform(0.0, 1.0) * eps / 3.0)
    assume(_dist(X) <= eps)
    G = gscale * rng.standard_normal((m, r))
    L = landing_field(X, G, lam)
    eta = landing_safe_step(np.linalg.norm(L), _dist(X), lam, eps)
    assert eta > 0.0
    for t in np.linspace(0.0, 1.0, 11):
        assert _dist(X - t * eta * L) <= eps * (1 + 1e-12) + 1e-14


def test_safeguard_holds_the_distance_over_many_random_steps(rng):
    """500 landing steps with fresh random gradients at a step size far above the bound: with the safeguard
    (eta = min(eta0, safe step)) the distance never exceeds eps; without it, it does."""
    m, r, lam, eps, eta0 = 30, 8, 1.0, 0.3, 0.5
    X0 = np.linalg.qr(rng.standard_normal((m, r)))[0]
    for guarded in (True, False):
        X, worst = X0.copy(), 0.0
        for _ in range(500):
            L = landing_field(X, 3.0 * rng.standard_normal((m, r)), lam)
            eta = min(eta0, landing_safe_step(np.linalg.norm(L), min(_dist(X), eps), lam, eps)) if guarded else eta0
            X = X - eta * L
            worst = max(worst, _dist(X))
            if not np.isfinite(worst) or worst > 10:
                break
        if guarded:
            assert worst <= eps * (1 + 1e-12)
        else:
            assert worst > eps


def test_step_fraction_is_the_first_crossing(rng):
    """landing_step_fraction = the largest t with the whole path X0 + t' D (t' <= t) inside the eps ball (dense
    scan), 1 when the step stays inside, 0-ish when it starts on the boundary heading out."""
    X0 = np.linalg.qr(rng.standard_normal((12, 4)))[0]
    for scale in (0.05, 0.3, 1.0, 3.0):
        D = scale * rng.standard_normal((12, 4))
        for eps in (0.1, 0.5, 0.9):
            t = landing_step_fraction(X0, D, eps)
            ts = np.linspace(0.0, 1.0, 4001)
            outside = [u for u in ts if _dist(X0 + u * D) > eps]
            first = outside[0] if outside else 1.0
            assert _dist(X0 + t * D) <= eps * (1 + 1e-9)
            assert abs(t - first) <= 3e-4 or (not outside and t == 1.0)
    assert landing_step_fraction(X0, np.zeros_like(X0), 0.5) == 1.0


def test_safe_step_bad_arguments():
    with pytest.raises(ValueError, match="eps"):
        landing_safe_step(1.0, 0.1, 1.0, 1.0)
    with pytest.raises(ValueError, match="d <= eps"):
        landing_safe_step(1.0, 0.6, 1.0, 0.5)
    assert landing_safe_step(0.0, 0.0, 0.0, 0.5) == float("inf")


# ------------------------------------------------------------------------------------------ the rule
def _targets(rng, rule, m, n, r):
    k = rng.integers(0, r + 1)
    mU = np.zeros(r)
    mU[:k] = 1.0
    rule.state = {f"TU/{P}": rng.standard_normal((m, r)), f"Ts/{P}": rng.standard_normal(r),
                  f"TV/{P}": rng.standard_normal((n, r)), f"mU/{P}": mU, f"mV/{P}": rng.choice([0.0, 1.0], r)}


@given(B=st.integers(1, 4), m=st.integers(2, 6), n=st.integers(2, 6), r=st.integers(1, 6),
       alpha=st.floats(0.3, 2.0), beta=st.floats(0.01, 0.5), gamma=st.floats(0.01, 0.5), seed=st.integers(0, 10**6))
def test_landing_direction_is_relative_gradient_plus_fd_penalty_gradient(B, m, n, r, alpha, beta, gamma, seed):
    """--orthogonality landing: dX = skew(G X^T) X + grad_X gamma ||X^T X - I||^2 with G the FD gradient of the
    task + alignment terms (eq. (6) without eq. (9)) and the penalty's gradient FD-checked too (lambda = 4 gamma)."""
    assume(r <= min(m, n))
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((m, r)))[0] + 0.05 * rng.standard_normal((m, r))
    V = np.linalg.qr(rng.standard_normal((n, r)))[0] + 0.05 * rng.standard_normal((n, r))
    s = rng.uniform(1.3, 3.0, r)
    layer = SVDLinear(U.copy(), s.copy(), V.copy(), None)
    rule = build_rule("ssa", alpha=alpha, beta=beta, gamma=gamma, hoyer=0.0, orthogonality="landing")
    assert rule.projection == "relative" and rule.retraction == "none" and not rule.project_ortho
    _targets(rng, rule, m, n, r)
    S = rule.state
    x, delta = rng.standard_normal((B, n)), rng.standard_normal((B, m))
    _, task = layer.backward(delta, layer.forward(x)[1], need_dx=False)
    upd = rule.layer_update(P, layer, task)

    def task_align(U_, V_):
        a = ((x @ V_) * s) @ U_.T
        al = np.sum(((U_ - S[f"TU/{P}"]) * S[f"mU/{P}"]) ** 2) + np.sum(((V_ - S[f"TV/{P}"]) * S[f"mV/{P}"]) ** 2)
        return alpha * np.sum(delta * a) + beta * al

    pen = lambda X: gamma * np.sum((X.T @ X - np.eye(r)) ** 2)  # noqa: E731  gamma * eq. (9)
    GU = numerical_grad(lambda u: task_align(u, V), U)
    GV = numerical_grad(lambda v: task_align(U, v), V)
    for X, G, d in ((U, GU, upd["U"]), (V, GV, upd["V"])):
        want = relative_project(X, G) + numerical_grad(pen, X)
        assert rel_error(d, want) < 1e-7
        np.testing.assert_allclose(want, landing_field(X, G, 4.0 * gamma), rtol=1e-6, atol=1e-8)


def _tiny_run(optimizer="adam", lr=1e-3, dtype=np.float64, **opts):
    model = build_model("mlp", (1, 6, 6), 10, seed=0, hidden=(24, 16), dtype=dtype)
    kw = {"momentum": 0.0} if optimizer == "sgd" else {}
    return build_run(model, "ssa", np.random.default_rng(2), options=opts, optimizer=optimizer, lr=lr, **kw)


def _batches(n, rng, B=32):
    for _ in range(n):
        yield rng.standard_normal((B, 1, 6, 6)), rng.integers(0, 10, B)


def _factors(run):
    return [(p, name, layer.params[name]) for p, layer in run.rule.layers for name in ("U", "V")]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 1e-5)])
def test_landing_safeguard_holds_eps_under_adam_at_a_large_learning_rate(dtype, tol, rng):
    """Adam at lr 0.05 throws U, V far off the manifold in one step; with landing the realised step is shrunk
    so that ||X^T X - I||_F <= landing_eps after every step (also in float32, where a factor sits on the bound
    to rounding and the next step heads out), and the guard is seen in the metrics."""
    eps = 0.2
    run = _tiny_run(lr=0.05, dtype=dtype, orthogonality="landing", landing_eps=eps, gamma=0.05)
    worst = 0.0
    for x, y in _batches(40, rng):
        run.train_step(x.astype(dtype), y)
        worst = max(worst, max(orthogonality_error(X) for _, _, X in _factors(run)))
    assert worst <= eps * (1 + tol)
    m = run.rule.on_epoch_end(run.model, run.optimizer, 1, 5)
    assert np.all(m["svd_drift_U"] <= eps * (1 + tol)) and np.all(m["svd_drift_V"] <= eps * (1 + tol))
    assert np.nanmax(m["svd_guard_U"]) > 0.0                       # the guard did act
    assert np.all(m["svd_ortho_U"] <= eps * (1 + tol))             # no retraction at the epoch end either
    assert np.nanmax(m["svd_ortho_U"]) > 1e-3


def test_step_fraction_from_the_bound_heading_out(rng):
    """A start on the bound (to rounding: float32 Gram matrices put it a hair outside) heading out gives t ~ 0,
    heading in t = 1; the coefficients are formed in float64 whatever the factors' dtype."""
    Q = np.linalg.qr(rng.standard_normal((40, 6)))[0]
    for dt in (np.float64, np.float32):
        X = (Q * 1.15).astype(dt)
        d = orthogonality_error(X)
        assert landing_step_fraction(X, (0.05 * X).astype(dt), d) < 1e-6
        assert landing_step_fraction(X, (-0.05 * X).astype(dt), d) == 1.0
        D = (0.05 * rng.standard_normal((40, 6))).astype(dt)
        t = landing_step_fraction(X, D, d)
        assert orthogonality_error((X.astype(np.float64) + t * D)) <= d * (1 + 1e-6)


def test_landing_does_no_retraction_and_sgd_steps_within_the_bound_are_kept(rng):
    """Plain SGD on the landing field at lr below every factor's closed-form safe step: after_step leaves the
    parameters exactly where the optimiser put them (no retraction, the guard does not act), and the factors
    leave the manifold (the penalty, not a retraction, bounds them)."""
    run = _tiny_run(optimizer="sgd", lr=1.0, orthogonality="landing", gamma=0.1, landing_eps=0.5)
    rule = run.rule
    moved = 0.0
    for x, y in _batches(15, rng):
        res = run.step(x, y)
        lrs = []
        for p, name, X in _factors(run):
            d = orthogonality_error(X)
            L = res.updates[f"{p}.{name}"]
            lrs.append(landing_safe_step(np.linalg.norm(L), d, 4.0 * rule.options["gamma"], rule.landing_eps))
        lr = 0.9 * min(lrs + [0.5])
        run.optimizer.step(res.updates, lr=lr)
        before = {(p, n): X.copy() for p, n, X in _factors(run)}
        rule.after_step(run.model, run.optimizer)
        for p, n, X in _factors(run):
            np.testing.assert_array_equal(X, before[(p, n)])
            moved = max(moved, orthogonality_error(X))
    assert 1e-8 < moved <= 0.5
    m = rule.on_epoch_end(run.model, run.optimizer, 1, 5)
    assert np.all(m["svd_guard_U"] == 0.0) and np.all(m["svd_guard_V"] == 0.0)


def test_retract_every_one_equals_retract(tmp_path, capsys):
    common = ["--dataset", "synthetic", "--train-limit", "96", "--test-limit", "32", "--batch-size", "32",
              "--hidden", "12,10", "--epochs", "2", "--no-progress", "--method", "ssa"]
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert train_mod.main(common + ["--out", str(a), "--orthogonality", "retract"]) == 0
    assert train_mod.main(common + ["--out", str(b), "--orthogonality", "retract-every", "--retract-every", "1"]) == 0
    _, ma, ca = read_run(a)
    _, mb, cb = read_run(b)
    for k in ("train_loss", "test_acc", "svd_rank", "svd_ortho_U", "svd_ortho_V"):
        np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    for k, v in ca["params"].items():
        np.testing.assert_array_equal(v, cb["params"][k], err_msg=k)


def test_retract_every_k_retracts_on_every_kth_step_only(rng):
    run = _tiny_run(lr=3e-3, orthogonality="retract-every", retract_every=3)
    errs = []
    for x, y in _batches(7, rng):
        run.train_step(x, y)
        errs.append(max(orthogonality_error(X) for _, _, X in _factors(run)))
    for step, e in enumerate(errs, start=1):
        if step % 3 == 0:
            assert e < 1e-9, (step, e)
        else:
            assert e > 1e-6, (step, e)
    assert run.rule.state["meta/step"][0] == 7


@pytest.mark.parametrize("opts", [
    ["--orthogonality", "landing", "--gamma", "0.1"],
    ["--orthogonality", "retract-every", "--retract-every", "4"],
    ["--rank-reading", "relative"],
    ["--rank-reading", "once", "--parity", "true", "--parity-last", "false"],
])
def test_resume_is_exact_with_the_new_options(opts, tmp_path, capsys):
    """3 epochs of 3 steps; resumed after epoch 1 (retract-every 4 retracts across the epoch boundary; the
    relative reading's reference is taken at the end of epoch T1 = 1)."""
    common = ["--dataset", "synthetic", "--train-limit", "96", "--test-limit", "32", "--batch-size", "32",
              "--hidden", "12,10", "--no-progress", "--method", "ssa"] + opts
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    assert train_mod.main(common + ["--epochs", "3", "--out", str(full)]) == 0, capsys.readouterr().err
    assert train_mod.main(common + ["--epochs", "1", "--out", str(part)]) == 0
    assert train_mod.main(common + ["--epochs", "3", "--resume", str(part)]) == 0, capsys.readouterr().err
    _, mf, cf = read_run(full)
    _, mp, cp = read_run(part)
    for k in ("train_loss", "test_acc", "svd_rank", "svd_ortho_U"):
        np.testing.assert_array_equal(mf[k], mp[k], err_msg=k)
    for group in ("params", "rule_state"):
        assert set(cf[group]) == set(cp[group])
        for k, v in cf[group].items():
            np.testing.assert_array_equal(np.asarray(v), np.asarray(cp[group][k]), err_msg=f"{group}/{k}")


@pytest.mark.parametrize("opts, match", [
    ({"orthogonality": "cayley"}, "orthogonality"),
    ({"retract_every": 0}, "retract_every"),
    ({"landing_eps": 1.0}, "landing_eps"),
    ({"landing_eps": 0.0}, "landing_eps"),
    ({"orthogonality": "landing", "retraction": "polar"}, "landing does no retraction"),
    ({"orthogonality": "penalty", "retraction": "qr"}, "penalty does no retraction"),
    ({"orthogonality": "penalty", "transport": True}, "transport"),
    ({"retract_every": 3}, "retract_every=3 has no effect with orthogonality=penalty"),
    ({"projection": "skew"}, "projection"),
])
def test_orthogonality_option_validation(opts, match):
    with pytest.raises(ValueError, match=match):
        build_rule("ssa", **opts)


def test_resolved_orthogonality_choices():
    r = build_rule("ssa")
    assert (r.orthogonality, r.retraction, r.projection, r.retracts) == ("penalty", "none", "tangent", False)
    assert (r.options["beta"], r.options["gamma"], r.options["rank_reading"]) == (1e-3, 0.1, "none")  # D4.15, D4.18
    e = build_rule("ssa", orthogonality="retract-every")   # the default of 0.2.0-0.3.x
    assert (e.orthogonality, e.retract_every, e.retraction, e.retracts) == ("retract-every", 10, "polar", True)
    p = build_rule("ssa", ssa_variant="paper")
    assert (p.orthogonality, p.retraction, p.projection) == ("retract", "none", "paper")
    assert (p.options["beta"], p.options["gamma"], p.options["rank_reading"]) == (1e-3, 1e-2, "every")
    assert build_rule("ssa", ssa_variant="paper", beta=0.5).options["beta"] == 0.5   # given options still win
    # D4.17 (0.3.0): the rank constraint is SSA's default; the paper variant and SVD-BP keep parity off
    assert (r.options["parity"], r.options["parity_last"], p.options["parity"]) == (True, True, False)
    assert build_rule("ssa", ssa_variant="paper", parity=True).options["parity"] is True
    assert build_rule("svd-bp").options["parity"] is False
    pe = build_rule("ssa", ssa_variant="paper", orthogonality="retract-every")
    assert pe.retraction == "polar"
    land = build_rule("ssa", orthogonality="landing", projection="tangent")
    assert (land.retraction, land.projection) == ("none", "tangent")  # the tangent-projected reading


@pytest.mark.parametrize("model_name", ["mlp", "lenet"])
def test_penalty_is_retract_without_retraction(model_name):
    """``orthogonality penalty`` (the default since 0.4.0, D4.18: the paper's handling, no retraction) takes the same
    steps, bit for bit, as ``orthogonality retract --retraction none``, the spelling the selection ran (e8a9a8b)."""
    shape = (1, 28, 28)
    x = np.random.default_rng(4).standard_normal((16,) + shape).astype(np.float32)
    y = np.random.default_rng(5).integers(0, 10, 16)
    params = []
    for opts in ({}, {"orthogonality": "retract", "retraction": "none"}):
        model = build_model(model_name, shape, 10, seed=0, width_mult=0.25)
        run = build_run(model, "ssa", np.random.default_rng(2), options=opts, optimizer="adam", lr=1e-2)
        for _ in range(5):
            run.train_step(x, y)
        run.rule.on_epoch_end(model, run.optimizer, 1, 3)
        params.append({k: np.array(v) for k, v in model.params.items()})
    assert build_rule("ssa").orthogonality == "penalty"
    assert params[0].keys() == params[1].keys()
    for k in params[0]:
        assert np.array_equal(params[0][k], params[1][k]), k
