"""Issue 21 (docs/decisions.md D4.16): SSA's manifold-aware optimiser option and the diagnostics behind it.

* ``--transport true`` (with ``--orthogonality retract``): after every retraction the optimiser's first moment of
  ``U``, ``V`` is projected onto the tangent space at the retracted point; with Adam this is Riemannian Adam
  (Becigneul & Ganea 2019, per-entry second moments as geoopt's ``RiemannianAdam``).  Checked: the factors stay on
  the Stiefel manifold to round-off, the moments lie in the tangent space (and do not without the option), and two
  steps equal an independent NumPy transcription of the algorithm;
* the per-layer metrics added for the diagnosis: ``svd_retract_jump`` (relative change of ``W`` a retraction
  made) against the dense matrices, ``svd_cond_U/V``, ``svd_s_max/min``, and the rank constraint of section 4.4
  (``svd_rank_bound``, ``svd_rank_ok``, ``svd_rank_ok_all``).
"""

import numpy as np
import pytest

from ssaref import train as train_mod
from ssaref.linalg import factor_condition, tangent_project
from ssaref.nn import build_model
from ssaref.rank import parity_rank
from ssaref.rules import build_rule
from ssaref.run import build_run
from ssaref.runlog import read_run


def _run(seed=0, lr=1e-2, optimizer="adam", optimizer_kw=None, **opts):
    model = build_model("mlp", (1, 6, 6), 10, xp=np, dtype=np.float64, seed=seed, hidden=(24, 16))
    rule = build_rule("ssa", **opts)
    return build_run(model, rule, np.random.default_rng(2), optimizer=optimizer, lr=lr, **(optimizer_kw or {}))


def _batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((16, 1, 6, 6)), rng.integers(0, 10, 16)) for _ in range(n)]


def _sym_norm(X, M):
    A = X.T @ M
    return np.linalg.norm(A + A.T) / max(np.linalg.norm(M), 1e-300)


def _polar(Y):
    A, _, Bt = np.linalg.svd(Y, full_matrices=False)
    return A @ Bt


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_transport_keeps_factors_on_the_manifold_and_moments_tangent(optimizer):
    """30 steps at a large learning rate: ``||X^T X - I||_F`` at round-off after every step and the first moment
    of every ``U``, ``V`` in the tangent space (``sym(X^T M) = 0``); without transport the moment keeps a normal
    part (so the check can fail)."""
    kw = {"optimizer": "sgd", "optimizer_kw": {"momentum": 0.9}} if optimizer == "momentum" else {}
    with_t = _run(orthogonality="retract", transport=True, **kw)
    without = _run(orthogonality="retract", **kw)
    for x, y in _batches(30):
        with_t.train_step(x, y)
        without.train_step(x, y)
        for p, layer in with_t.rule.layers:
            for n in ("U", "V"):
                X = layer.params[n]
                if X.shape[0] < X.shape[1]:
                    continue
                assert np.linalg.norm(X.T @ X - np.eye(X.shape[1])) < 1e-12
                assert _sym_norm(X, with_t.optimizer.first_moment(f"{p}.{n}")) < 1e-12
    normal = max(
        _sym_norm(layer.params[n], without.optimizer.first_moment(f"{p}.{n}"))
        for p, layer in without.rule.layers
        for n in ("U", "V")
    )
    assert normal > 1e-3


def test_riemannian_adam_two_steps_equal_an_independent_transcription():
    """Becigneul & Ganea's Riemannian Adam with per-entry second moments, written out in NumPy:
    ``m = b1 tau(m) + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``X <- polar(X - lr m_hat / (sqrt(v_hat) + eps))``,
    ``tau(m) = P_X(m)`` at the new point; ``g`` the rule's direction (tangent gradient plus eq. (9)'s term)."""
    lr, b1, b2, eps = 3e-2, 0.9, 0.999, 1e-8
    run = _run(lr=lr, orthogonality="retract", transport=True)
    layers = dict(run.rule.layers)
    X = {(p, n): layers[p].params[n].copy() for p in layers for n in ("U", "V")}
    m = {k: np.zeros_like(v) for k, v in X.items()}
    v = {k: np.zeros_like(v) for k, v in X.items()}
    for t, (x, y) in enumerate(_batches(2), start=1):
        res = run.step(x, y)
        for (p, n), Xk in X.items():
            g = res.updates[f"{p}.{n}"]
            m[(p, n)] = b1 * m[(p, n)] + (1 - b1) * g
            v[(p, n)] = b2 * v[(p, n)] + (1 - b2) * g * g
            Y = Xk - lr / (1 - b1**t) * m[(p, n)] / (np.sqrt(v[(p, n)] / (1 - b2**t)) + eps)
            if Y.shape[0] >= Y.shape[1]:
                Y = _polar(Y)
                m[(p, n)] = tangent_project(Y, m[(p, n)])
            X[(p, n)] = Y
        run.apply(res)
        for (p, n), Xk in X.items():
            np.testing.assert_allclose(layers[p].params[n], Xk, rtol=0, atol=1e-11, err_msg=f"{p}.{n} step {t}")
            np.testing.assert_allclose(run.optimizer.first_moment(f"{p}.{n}"), m[(p, n)], rtol=0, atol=1e-11)


def test_transport_validation_and_resolved_options():
    for bad in ({"orthogonality": "landing"}, {"orthogonality": "retract", "retraction": "none"},
                {"orthogonality": "retract-every", "retraction": "none"}):
        with pytest.raises(ValueError, match="transport"):
            build_rule("ssa", transport=True, **bad)
    run = _run(orthogonality="retract")
    assert "transport" not in run.rule.resolved_options(run.model)  # golden files of 0.2.0 stay byte-identical
    run = _run(orthogonality="retract", transport=True)
    assert run.rule.resolved_options(run.model)["transport"] is True


def test_transport_with_retract_every_projects_the_moment_at_the_retraction_steps_only():
    """``retract-every 3``: the moments are tangent right after steps 3 and 6 and not after the others."""
    run = _run(orthogonality="retract-every", retract_every=3, transport=True)
    for t, (x, y) in enumerate(_batches(6), start=1):
        run.train_step(x, y)
        p, layer = run.rule.layers[1]
        sym = _sym_norm(layer.params["U"], run.optimizer.first_moment(f"{p}.U"))
        assert bool(sym < 1e-12) is (t % 3 == 0), (t, sym)


def test_plain_sgd_has_no_moment_and_transport_is_a_no_op():
    a = _run(optimizer="sgd", orthogonality="retract", transport=True)
    b = _run(optimizer="sgd", orthogonality="retract")
    assert a.optimizer.first_moment("1.U") is None
    for x, y in _batches(3):
        a.train_step(x, y)
        b.train_step(x, y)
    for (p, la), (_, lb) in zip(a.rule.layers, b.rule.layers):
        for n in ("U", "s", "V"):
            np.testing.assert_array_equal(la.params[n], lb.params[n])


# ------------------------------------------------------------------------------------------ metrics
def test_retract_jump_is_the_relative_change_of_W_a_retraction_makes():
    """Factors pushed off the manifold, one retraction: the logged jump equals ``||W' - W||_F / ||W||_F`` of the
    dense matrices, and it is the maximum over the epoch's retractions."""
    run = _run(orthogonality="retract-every", retract_every=1000)
    rule = run.rule
    rng = np.random.default_rng(5)
    jumps = {}
    for scale in (0.3, 0.1):
        before = {}
        for p, layer in rule.layers:
            for n in ("U", "V"):
                X = layer.params[n]
                X += scale * rng.standard_normal(X.shape) / np.sqrt(X.shape[0])
            before[p] = layer.matrix().copy()
        rule._retract_all(run.model)
        for p, layer in rule.layers:
            W0, W1 = before[p], layer.matrix()
            jumps.setdefault(p, []).append(np.linalg.norm(W1 - W0) / np.linalg.norm(W0))
    m = rule.on_epoch_end(run.model, run.optimizer, 1, 10)
    for j, (p, _) in enumerate(rule.layers):
        assert m["svd_retract_jump"][j] == pytest.approx(max(jumps[p]), rel=1e-9)
        assert min(jumps[p]) > 1e-3


def test_condition_and_spectrum_metrics():
    run = _run(orthogonality="retract-every", retract_every=1000)
    rule = run.rule
    p, layer = rule.layers[0]
    layer.params["U"][:, 0] *= 2.0
    m = rule.on_epoch_end(run.model, run.optimizer, 1, 10)
    assert m["svd_cond_U"][0] == pytest.approx(2.0, rel=1e-9)
    assert m["svd_cond_V"][0] == pytest.approx(1.0, abs=1e-9)
    s = np.abs(layer.params["s"])
    assert m["svd_s_max"][0] == s.max() and m["svd_s_min"][0] == s.min()
    assert factor_condition(np.ones((3, 5))) != factor_condition(np.ones((3, 5)))   # wide: NaN


def test_rank_constraint_metrics(tmp_path, capsys):
    """Section 4.4's ``r < mn/(m+n)``: with ``--parity true`` (SSA's default since 0.3.0, D4.17) every layer
    satisfies it after the first epoch end and the run file says so per layer; ``--parity false`` (the 0.2.0
    default) does not (the classifier keeps r = 10 > 7)."""
    common = ["--method", "ssa", "--dataset", "synthetic", "--train-limit", "128", "--test-limit", "64",
              "--epochs", "2", "--hidden", "32,16", "--no-progress", "--no-download"]
    for flags, ok in ((["--parity", "false"], False), ([], True), (["--parity", "true"], True)):
        out = tmp_path / f"run{'_'.join(flags)}.h5"
        assert train_mod.main(common + flags + ["--out", str(out)]) == 0, capsys.readouterr().err
        cfg, m, _ = read_run(out)
        dims = [(32, 784), (16, 32), (10, 16)]
        bounds = [parity_rank(a, b) for a, b in dims]
        np.testing.assert_array_equal(m["svd_rank_bound"][-1], bounds)
        np.testing.assert_array_equal(m["svd_rank_ok"][-1], (m["svd_rank"][-1] <= bounds).astype(float))
        assert bool(m["svd_rank_ok_all"][-1]) is ok
        assert bool(np.all(m["svd_rank_ok"][-1] == 1.0)) is ok
