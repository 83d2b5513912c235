"""SSA (rules/ssa.py) and SVD-BP (rules/svd_bp.py).

* finite differences (float64, hypothesis shapes, generic points) for every term of the default update that
  claims to be a gradient of the local loss (eq. (6));
* the paper-literal variant against an independent PyTorch transcription of eqs. (11)-(13);
* numerical evidence for the decisions recorded in docs/decisions.md (D4);
* SVD-BP's updates against torch autograd of its loss;
* orthogonality over a 2-epoch run, resume across a rank change, the CLI on mlp/lenet/smallconv/vgg13.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from ssaref import train as train_mod
from ssaref.linalg import hoyer
from ssaref.nn import build_model
from ssaref.nn.svd_layers import SVDLinear
from ssaref.optim import build_optimizer
from ssaref.rules import build_rule
from ssaref.runlog import read_run

from _gradcheck import numerical_grad, rel_error

P = "0"  # layer prefix used by the single-layer tests


def _factors(rng, m, n, r, off=0.05):
    """Generic point: factors slightly off orthonormal, singular values away from 1."""
    U = np.linalg.qr(rng.standard_normal((m, r)))[0] + off * rng.standard_normal((m, r))
    V = np.linalg.qr(rng.standard_normal((n, r)))[0] + off * rng.standard_normal((n, r))
    s = rng.uniform(1.3, 3.0, r) * rng.choice([-1.0, 1.0], r)
    return U, s, V


def _rule_with_targets(rng, m, n, r, **opts):
    rule = build_rule("ssa", **opts)
    k = rng.integers(0, r + 1)  # partially masked targets, as the "feedback" mode produces
    mU = np.zeros(r); mU[:k] = 1.0
    mV = rng.choice([0.0, 1.0], r)
    rule.state = {f"TU/{P}": rng.standard_normal((m, r)), f"Ts/{P}": rng.standard_normal(r),
                  f"TV/{P}": rng.standard_normal((n, r)), f"mU/{P}": mU, f"mV/{P}": mV}
    return rule


def _local_loss(rule, layer, x, delta, U, s, V):
    """Eq. (6) written out: alpha <delta, a(U, s, V)> + beta L_align + gamma L_ortho + hoyer H(s)."""
    o, S = rule.options, rule.state
    a = ((x @ V) * s) @ U.T
    mU, mV = S[f"mU/{P}"], S[f"mV/{P}"]
    align = (np.sum(((U - S[f"TU/{P}"]) * mU) ** 2) + np.sum(((s - S[f"Ts/{P}"]) * mU) ** 2)
             + np.sum(((V - S[f"TV/{P}"]) * mV) ** 2))
    ortho = np.sum((U.T @ U - np.eye(len(s))) ** 2) + np.sum((V.T @ V - np.eye(len(s))) ** 2)
    return (o["alpha"] * np.sum(delta * a) + o["beta"] * align + o["gamma"] * ortho
            + o["hoyer"] * hoyer(s))


@given(B=st.integers(1, 4), m=st.integers(2, 6), n=st.integers(2, 6), r=st.integers(1, 6),
       alpha=st.floats(0.3, 2.0), beta=st.floats(0.01, 0.5), gamma=st.floats(0.01, 0.5),
       hoy=st.floats(0.0, 0.3), seed=st.integers(0, 10 ** 6))
def test_default_update_is_gradient_of_local_loss(B, m, n, r, alpha, beta, gamma, hoy, seed):
    """With the projection switched off, every term of the default update is the FD gradient of eq. (6)."""
    assume(r <= min(m, n) and abs(alpha - 1.0) > 0.05)
    rng = np.random.default_rng(seed)
    U, s, V = _factors(rng, m, n, r)
    layer = SVDLinear(U.copy(), s.copy(), V.copy(), None)
    rule = _rule_with_targets(rng, m, n, r, alpha=alpha, beta=beta, gamma=gamma, hoyer=hoy,
                              projection="none")
    x, delta = rng.standard_normal((B, n)), rng.standard_normal((B, m))
    _, task = layer.backward(delta, layer.forward(x)[1], need_dx=False)
    upd = rule.layer_update(P, layer, task)
    f = _local_loss
    numU = numerical_grad(lambda v: f(rule, layer, x, delta, v, s, V), U)
    nums = numerical_grad(lambda v: f(rule, layer, x, delta, U, v, V), s)
    numV = numerical_grad(lambda v: f(rule, layer, x, delta, U, s, v), V)
    assert rel_error(upd["U"], numU) < 1e-7
    assert rel_error(upd["s"], nums) < 1e-7
    assert rel_error(upd["V"], numV) < 1e-7


@given(m=st.integers(2, 6), n=st.integers(2, 6), r=st.integers(1, 6), seed=st.integers(0, 10 ** 6))
def test_default_update_is_tangent_projection_plus_unprojected_ortho(m, n, r, seed):
    assume(r <= min(m, n))
    rng = np.random.default_rng(seed)
    U, s, V = _factors(rng, m, n, r, off=0.0)  # on the manifold
    layer = SVDLinear(U, s, V)
    rule = _rule_with_targets(rng, m, n, r, alpha=0.7, beta=0.2, gamma=0.3, hoyer=0.0)
    ref = _rule_with_targets(np.random.default_rng(seed), m, n, r, alpha=0.7, beta=0.2, gamma=0.3, hoyer=0.0,
                             projection="none")
    rule.state = ref.state
    x, delta = rng.standard_normal((3, n)), rng.standard_normal((3, m))
    _, task = layer.backward(delta, layer.forward(x)[1], need_dx=False)
    d, g = rule.layer_update(P, layer, task), ref.layer_update(P, layer, task)
    oU, oV = rule._ortho_grads(layer)
    for X, dX, gX, o in ((U, d["U"], g["U"], oU), (V, d["V"], g["V"], oV)):
        T = dX - o
        np.testing.assert_allclose(X.T @ T, -(X.T @ T).T, atol=1e-12)      # tangent at X
        np.testing.assert_allclose(T, gX - o - X @ (0.5 * (X.T @ (gX - o) + (gX - o).T @ X)), atol=1e-12)
    np.testing.assert_allclose(d["s"], g["s"])


@given(m=st.integers(1, 7), r=st.integers(1, 7), gamma=st.floats(0.0, 2.0), seed=st.integers(0, 10 ** 6))
def test_fused_tangent_plus_ortho_equals_its_two_terms_off_the_manifold(m, r, gamma, seed):
    """The default update's shared-product form equals ``tangent_project(X, G) + 4 gamma X (X^T X - I)`` for any
    ``X`` (not only orthonormal ones): the fusion is algebra, not an approximation."""
    from ssaref.linalg import tangent_project

    assume(r <= m)
    rng = np.random.default_rng(seed)
    X, G = rng.standard_normal((m, r)), rng.standard_normal((m, r))
    rule = build_rule("ssa", gamma=gamma)
    want = tangent_project(X, G) + 4.0 * gamma * (X @ (X.T @ X - np.eye(r)))
    np.testing.assert_allclose(rule._tangent_plus_ortho(X, G), want, rtol=1e-12, atol=1e-12 * (1 + abs(want).max()))


def test_task_term_is_G_V_S_not_G_V_S_inverse(rng):
    """Evidence: d/dU <delta, x V S U^T> = G V S (what the default uses), not the printed G V S^-1."""
    m, n, r = 5, 4, 3
    U, s, V = _factors(rng, m, n, r)
    x, delta = rng.standard_normal((6, n)), rng.standard_normal((6, m))
    G = delta.T @ x
    num = numerical_grad(lambda u: np.sum(delta * (((x @ V) * s) @ u.T)), U)
    assert rel_error(num, G @ V * s) < 1e-8
    assert rel_error(num, G @ V / s) > 0.3


def test_projected_ortho_term_vanishes_to_first_order(rng):
    """Evidence: the tangent projection of 4 U (U^T U - I) is O(eps^2) at U = Q + eps E, the term itself
    O(eps): projecting the orthogonality gradient switches it off (default: added after the projection)."""
    from ssaref.linalg import tangent_project
    Q = np.linalg.qr(rng.standard_normal((10, 4)))[0]
    E = rng.standard_normal((10, 4))
    ratios = []
    for eps in (1e-2, 1e-3):
        U = Q + eps * E
        g = 4 * U @ (U.T @ U - np.eye(4))
        ratios.append(np.linalg.norm(tangent_project(U, g)) / np.linalg.norm(g))
    assert ratios[1] < 0.2 * ratios[0] and ratios[1] < 1e-2


def test_printed_V_projection_vanishes_at_orthonormal_V(rng):
    """Evidence: (I_r - V^T V) in eq. (13) is r x r and zero when V^T V = I; the V update of the paper variant
    is then zero whatever the bracket holds."""
    m, n, r = 6, 7, 4
    U, s, V = _factors(rng, m, n, r, off=0.0)
    layer = SVDLinear(U, s, V)
    rule = _rule_with_targets(rng, m, n, r, ssa_variant="paper", beta=0.3, gamma=0.2, hoyer=0.0)
    x, delta = rng.standard_normal((3, n)), rng.standard_normal((3, m))
    cache = layer.forward(x)[1]
    upd = rule.layer_update(P, layer, None, delta, cache)
    assert np.abs(upd["V"]).max() < 1e-12
    assert np.abs(upd["U"]).max() > 1e-3
    sq = _rule_with_targets(rng, 5, 5, 5, ssa_variant="paper", hoyer=0.0)  # square U: (I - U U^T) = 0
    Us, ss, Vs = _factors(rng, 5, 5, 5, off=0.0)
    sl = SVDLinear(Us, ss, Vs)
    c = sl.forward(rng.standard_normal((3, 5)))[1]
    assert np.abs(sq.layer_update(P, sl, None, rng.standard_normal((3, 5)), c)["U"]).max() < 1e-12


@given(B=st.integers(1, 4), m=st.integers(2, 6), n=st.integers(2, 6), r=st.integers(1, 6),
       proj=st.sampled_from(["auto", "tangent", "complement", "none"]), po=st.sampled_from(["auto", "false"]),
       seed=st.integers(0, 10 ** 6))
def test_paper_variant_matches_torch_transcription(B, m, n, r, proj, po, seed):
    """Eqs. (11)-(13) transcribed in torch (float64) from the printed formulas; the only change is the one the
    printed eq. (13) forces: its first term G^T U S^-1 (n x r) is transposed to fit the r x n bracket."""
    assume(r <= min(m, n))
    rng = np.random.default_rng(seed)
    U, s, V = _factors(rng, m, n, r)
    beta, gamma = 0.3, 0.2
    rule = _rule_with_targets(rng, m, n, r, ssa_variant="paper", beta=beta, gamma=gamma, hoyer=0.0,
                              projection=proj, project_ortho=po)
    layer = SVDLinear(U, s, V)
    x, delta = rng.standard_normal((B, n)), rng.standard_normal((B, m))
    upd = rule.layer_update(P, layer, None, delta, layer.forward(x)[1])

    T = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    Ut, Vt, S = T(U), T(V), torch.diag(T(s))
    St = rule.state
    BU, BS, BVt = T(St[f"TU/{P}"] * St[f"mU/{P}"]), torch.diag(T(St[f"Ts/{P}"] * St[f"mU/{P}"])), \
        T((St[f"TV/{P}"] * St[f"mV/{P}"]).T)
    Um, Vtm = Ut * T(St[f"mU/{P}"]), (Vt * T(St[f"mV/{P}"])).T
    Sm = torch.diag(T(s * St[f"mU/{P}"]))
    G = T(delta).T @ T(x)                                          # grad_W L_CE for the DFA signal
    Ir, Im, In = torch.eye(r, dtype=torch.float64), torch.eye(m, dtype=torch.float64), \
        torch.eye(n, dtype=torch.float64)
    Sinv = torch.linalg.inv(S)
    gS = Ut.T @ G @ Vt + 2 * beta * (Sm - BS)                       # eq. (11)
    inner_U = G @ Vt @ Sinv + 2 * beta * (Um - BU)
    ortho_U = 4 * gamma * Ut @ (Ut.T @ Ut - Ir)
    inner_Vt = (G.T @ Ut @ Sinv).T + 2 * beta * (Vtm - BVt)
    ortho_Vt = 4 * gamma * Vt.T @ (Vt @ Vt.T - In)
    if proj in ("auto",):
        PU = lambda X: (Im - Ut @ Ut.T) @ X                       # noqa: E731  eq. (12)
        PVt = lambda X: (Ir - Vt.T @ Vt) @ X                      # noqa: E731  eq. (13) as printed
    elif proj == "complement":
        PU = lambda X: (Im - Ut @ Ut.T) @ X                       # noqa: E731
        PVt = lambda X: X @ (In - Vt @ Vt.T)                      # noqa: E731
    elif proj == "tangent":
        PU = lambda X: X - Ut @ (Ut.T @ X + X.T @ Ut) / 2         # noqa: E731
        PVt = lambda X: (X.T - Vt @ (Vt.T @ X.T + X @ Vt) / 2).T  # noqa: E731
    else:
        PU = PVt = lambda X: X                                     # noqa: E731
    if po == "auto":  # paper: the orthogonality term inside the projection, as printed
        dU, dVt = PU(inner_U + ortho_U), PVt(inner_Vt + ortho_Vt)
    else:
        dU, dVt = PU(inner_U) + ortho_U, PVt(inner_Vt) + ortho_Vt
    np.testing.assert_allclose(upd["s"], torch.diagonal(gS).numpy(), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(upd["U"], dU.numpy(), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(upd["V"], dVt.T.numpy(), rtol=1e-10, atol=1e-11)


def test_option_validation():
    with pytest.raises(ValueError, match="ssa_variant='nope'"):
        build_rule("ssa", ssa_variant="nope")
    with pytest.raises(ValueError, match="projection='qr'"):
        build_rule("ssa", projection="qr")
    with pytest.raises(ValueError, match="rank_schedule='fast'"):
        build_rule("ssa", rank_schedule="fast")
    with pytest.raises(ValueError, match="energy must be in"):
        build_rule("svd-bp", energy=1.5)
    with pytest.raises(ValueError, match="beta"):
        build_rule("ssa", beta=-1.0)
    with pytest.raises(ValueError, match="takes no option"):
        build_rule("svd-bp", alpha=1.0)
    assert build_rule("ssa", parity="true").options["parity"] is True


# ---------------------------------------------------------------------------------------------------
# whole models
# ---------------------------------------------------------------------------------------------------
def _prepared(method, name="mlp", shape=(1, 6, 6), dtype=np.float64, seed=0, **opts):
    model_opts = {"hidden": (7, 5)} if name == "mlp" else {"width_mult": 1 / 16}
    model = build_model(name, shape, 4, xp=np, dtype=dtype, seed=seed, **model_opts)
    rule = build_rule(method, **opts)
    model = rule.setup(model, np.random.default_rng(seed + 2))
    return model, rule


def test_prepare_model_is_same_function_and_state_shapes(rng):
    dense = build_model("mlp", (1, 6, 6), 4, xp=np, dtype=np.float64, seed=0, hidden=(7, 5))
    x = rng.standard_normal((3, 1, 6, 6))
    y0 = dense.forward(x, train=False)[0]
    model, rule = _prepared("ssa")
    np.testing.assert_allclose(model.forward(x, train=False)[0], y0, atol=1e-12)
    keys = dict(model.named_params())
    assert set(keys) == {f"{i}.{n}" for i in (1, 3, 5) for n in ("U", "s", "V", "b")}
    assert rule.state["B/1"].shape == (7, 4) and rule.state["B/3"].shape == (5, 4)
    np.testing.assert_allclose(np.linalg.norm(rule.state["B/1"], axis=0), 1.0)  # unit-norm columns (4.3)
    # "feedback" targets for Linear layers: U[:, :k] <- B_U with k = min(d_i, d_N); V never aligned
    assert rule.state["mU/1"].sum() == 4 and rule.state["mV/1"].sum() == 0
    U_B, s_B, _ = np.linalg.svd(rule.state["B/1"], full_matrices=False)
    np.testing.assert_allclose(rule.state["Ts/1"][:4], s_B, atol=1e-12)
    np.testing.assert_allclose(np.abs(rule.state["TU/1"][:, :4].T @ U_B), np.eye(4), atol=1e-10)


def test_ssa_task_signal_is_dfa(rng):
    """alpha=1, beta=gamma=hoyer=0, no projection: SSA's b-update and the W-gradient it induces are DFA's."""
    model, rule = _prepared("ssa", beta=0.0, gamma=0.0, hoyer=0.0, projection="none", retraction="none")
    x, y = rng.standard_normal((5, 1, 6, 6)), rng.integers(0, 4, 5)
    rule.keep_signals = True
    res = rule.step(model, x, y)
    e = res.signals[5]
    logits, caches = model.forward(x)
    a1 = caches[1][0] @ model.layers[1].matrix().T + model.params["1.b"]
    delta = (e @ rule.state["B/1"].T) * (a1 > 0)                      # eq. (3)
    np.testing.assert_allclose(res.updates["1.b"], delta.sum(0), atol=1e-12)
    U, s, V = (model.params[f"1.{n}"] for n in ("U", "s", "V"))
    G = delta.T @ caches[1][0]                                         # DFA's dW (eq. (3))
    np.testing.assert_allclose(res.updates["1.U"], G @ V * s, atol=1e-12)
    np.testing.assert_allclose(res.updates["1.s"], np.diag(U.T @ G @ V), atol=1e-12)
    np.testing.assert_allclose(res.updates["1.V"], G.T @ U * s, atol=1e-12)


def test_angle_metric_output_layer_task_angle_is_zero(rng):
    model, rule = _prepared("ssa", angle_every=1)
    x, y = rng.standard_normal((8, 1, 6, 6)), rng.integers(0, 4, 8)
    rule.step(model, x, y)
    m = rule.on_epoch_end(model, None, 1, 10)
    assert m["svd_angle_task"].shape == (3,)
    assert m["svd_angle_task"][-1] < 1e-5       # the output layer gets e, exactly BP's signal
    assert np.all((m["svd_angle"] >= 0) & (m["svd_angle"] <= 180))


@pytest.mark.parametrize("variant, flags", [("default", ["--orthogonality", "retract"]),
                                            ("default", ["--orthogonality", "retract-every", "--retract-every", "3"]),
                                            ("default", []), ("paper", [])])
def test_orthogonality_bounded_over_two_epochs(tmp_path, capsys, variant, flags):
    """Per-step retraction: ||U^T U - I||_F <= 1e-4 (float32) at every epoch end and the drift one Adam step causes
    stays below 0.5 (the Newton-Schulz range).  The default (retraction every K steps): the drift of K steps stays
    in that range too, and so does the error at the epoch ends (at most K - 1 steps after a retraction).  Paper
    variant and the default since 0.4.0 (no retraction, eq. (9)'s penalty only): logged, finite, and for the
    default held below 0.5 by the penalty."""
    out = tmp_path / "run.h5"
    rc = train_mod.main(["--method", "ssa", "--ssa-variant", variant, "--dataset", "synthetic",
                         "--train-limit", "512", "--test-limit", "128", "--epochs", "2", "--hidden", "32,16",
                         "--no-progress", "--no-download", "--out", str(out)] + flags)
    assert rc == 0, capsys.readouterr().err
    _, m, _ = read_run(out)
    assert m["svd_ortho_U"].shape == (2, 3)
    if variant == "default" and "retract" in flags:
        assert m["svd_ortho_U"].max() <= 1e-4 and m["svd_ortho_V"].max() <= 1e-4
        assert m["svd_drift_U"].max() < 0.5 and m["svd_drift_V"].max() < 0.5
    elif variant == "default" and not flags:
        assert "svd_drift_U" not in m and "svd_retract_jump" not in m      # nothing is retracted
        assert 0 < m["svd_ortho_U"].max() < 0.5 and 0 < m["svd_ortho_V"].max() < 0.5
    elif variant == "default":
        assert m["svd_drift_U"].max() < 0.5 and m["svd_drift_V"].max() < 0.5
        assert 1e-4 < m["svd_ortho_U"].max() < 0.5 and m["svd_ortho_V"].max() < 0.5   # not retracted at epoch end
    else:
        assert np.all(np.isfinite(m["svd_ortho_U"]))
    assert np.all(np.diff(m["svd_rank"], axis=0) <= 0)


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
def test_resume_across_rank_change_matches_uninterrupted(tmp_path, capsys, monkeypatch, method):
    """A 4-epoch run (hybrid schedule: ranks cut at epochs 1 and 2) interrupted after epoch 2 and resumed
    ends bit-identical to the uninterrupted run."""
    common = ["--method", method, "--dataset", "synthetic", "--train-limit", "384", "--test-limit", "128",
              "--batch-size", "64", "--hidden", "24,12", "--no-progress", "--no-download", "--lr", "3e-3",
              "--hoyer-every", "2", "--epochs", "4"]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    assert train_mod.main(common + ["--out", str(full)]) == 0
    orig, calls = train_mod.evaluate, []

    class Stop(Exception):
        pass

    def evaluate(*a, **k):  # interrupt the run once epoch 2 is written
        calls.append(1)
        if len(calls) == 3:
            raise Stop
        return orig(*a, **k)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    with pytest.raises(Stop):
        train_mod.train(train_mod.parse_args(common + ["--out", str(part)]), log=lambda *_: None)
    monkeypatch.setattr(train_mod, "evaluate", orig)
    assert read_run(part)[2]["epoch"] == 2
    assert train_mod.main(common + ["--resume", str(part)]) == 0, capsys.readouterr().err
    _, m_full, ck_full = read_run(full)
    _, m_res, ck_res = read_run(part)
    assert m_full["svd_rank"][1, 0] < m_full["svd_rank"][0, 0] < 24   # ranks changed before the cut
    for k in ("train_loss", "test_acc", "svd_rank"):
        np.testing.assert_array_equal(m_full[k], m_res[k], err_msg=k)
    for k, v in ck_full["params"].items():
        np.testing.assert_array_equal(v, ck_res["params"][k], err_msg=k)


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
@pytest.mark.parametrize("name,shape", [("lenet", (1, 28, 28)), ("smallconv", (3, 16, 16)),
                                        ("vgg13", (3, 32, 32))])
def test_conv_models_train_one_epoch(method, name, shape, rng):
    model, rule = _prepared(method, name, shape, dtype=np.float32, beta=1e-3) if method == "ssa" else \
        _prepared(method, name, shape, dtype=np.float32)
    assert not [l for l in model.layers if l.kind in ("linear", "conv2d")]
    opt = build_optimizer("adam", model.named_params(), 3e-3)
    x = rng.standard_normal((8,) + shape).astype(np.float32)
    y = rng.integers(0, 4, 8)
    losses = []
    for _ in range(5):
        res = rule.step(model, x, y)
        assert set(res.updates) == set(dict(model.named_params()))
        opt.step(res.updates)
        losses.append(res.loss)
    m = rule.on_epoch_end(model, opt, 1, 3)
    assert np.all(m["svd_rank"] <= [l.full_rank for _, l in rule.layers])
    assert m["svd_rank"][0] < rule.layers[0][1].full_rank or rule.layers[0][1].full_rank <= 3
    for _ in range(3):  # the optimiser follows the truncated shapes
        res = rule.step(model, x, y)
        opt.step(res.updates)
        losses.append(res.loss)
    assert all(map(math.isfinite, losses))
    if method == "svd-bp":  # BP fits a repeated batch; DFA-type signals need not within 8 steps
        assert min(losses[-3:]) < losses[0]


def test_svd_bp_updates_match_torch_autograd(rng):
    """SVD-BP: BP through the factored layers + 4 gamma U (U^T U - I) ... + hoyer * grad H(s)."""
    gamma, hoy = 0.07, 0.05
    model, rule = _prepared("svd-bp", gamma=gamma, hoyer=hoy)
    for _, l in rule.layers:  # move off the manifold so the regulariser matters
        l.params["U"] += 0.05 * rng.standard_normal(l.params["U"].shape)
    x, y = rng.standard_normal((5, 1, 6, 6)), rng.integers(0, 4, 5)
    res = rule.step(model, x, y)
    T = {k: torch.tensor(v, requires_grad=True) for k, v in model.named_params()}
    h = torch.tensor(x).reshape(5, -1)
    loss_reg = 0
    for i in (1, 3, 5):
        U, s, V, b = (T[f"{i}.{n}"] for n in ("U", "s", "V", "b"))
        h = h @ V @ torch.diag(s) @ U.T + b
        if i != 5:
            h = torch.relu(h)
        I = torch.eye(len(s), dtype=torch.float64)
        loss_reg = loss_reg + gamma * (((U.T @ U - I) ** 2).sum() + ((V.T @ V - I) ** 2).sum()) \
            + hoy * s.abs().sum() / s.norm()
    loss = torch.nn.functional.cross_entropy(h, torch.tensor(y)) + loss_reg
    loss.backward()
    for k, t in T.items():
        np.testing.assert_allclose(res.updates[k], t.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


def test_cli_ssa_lenet_and_options_from_toml(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "ssa"\nmodel = "lenet"\nwidth-mult = 0.5\ndataset = "synthetic"\n'
                   'train-limit = 128\ntest-limit = 64\nepochs = 1\nno_progress = true\nno-download = true\n'
                   'alpha = 0.9\nbeta = 0.002\ngamma = 0.02\nhoyer = 0.0\nrank-schedule = "energy"\n'
                   'energy = 0.9\nssa-variant = "default"\n')
    out = tmp_path / "r.h5"
    rc = train_mod.main(["--config", str(cfg), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    config, m, _ = read_run(out)
    assert config["rule_energy"] == 0.9 and config["rule_alpha"] == 0.9
    assert m["svd_rank"].shape == (1, 5) and np.all(m["svd_flops"] > 0)
    rc = train_mod.main(["--method", "ssa", "--dataset", "synthetic", "--ssa-variant", "bogus",
                         "--no-progress", "--no-download", "--epochs", "1", "--train-limit", "64"])
    assert rc == 2 and "ssa_variant='bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
def test_metric_layers_name_the_columns_of_the_svd_metrics(method, rng):
    model, rule = _prepared(method, angle_every=1) if method == "ssa" else _prepared(method)
    assert rule.metric_layers() == ["1", "3", "5"]
    x, y = rng.standard_normal((4, 1, 6, 6)), rng.integers(0, 4, 4)
    rule.step(model, x, y)
    m = rule.on_epoch_end(model, None, 1, 10)
    per_layer = {k: v for k, v in m.items() if isinstance(v, np.ndarray)}
    assert per_layer and all(v.shape == (3,) for v in per_layer.values())
    # column j is layer metric_layers()[j]: the rank and parameter columns match the named layers
    layers = dict(rule.layers)
    for j, p in enumerate(rule.metric_layers()):
        assert m["svd_rank"][j] == layers[p].rank == model.params[f"{p}.s"].shape[0]
        assert m["svd_params"][j] == sum(model.params[f"{p}.{n}"].size for n in ("U", "s", "V", "b"))
    # residual nets: nested prefixes in forward order; dense rules log no per-layer metrics
    res = build_model("resnet20", (3, 8, 8), 4, xp=np, dtype=np.float64, seed=0, width_mult=0.125)
    r2 = build_rule(method)
    res = r2.prepare_model(res)
    names = r2.metric_layers()
    assert names[:3] == ["0", "3.main.0", "3.main.3"] and names[-1] == str(len(res.layers) - 1)
    assert len(names) == len(set(names))
    keys = [k.rsplit(".", 1)[0] for k, _ in res.named_params() if k.endswith(".s")]
    assert names == keys
    assert build_rule("dfa").metric_layers() == [] and build_rule("bp").metric_layers() == []
    assert build_rule(method).metric_layers() == []          # before prepare_model


# ---------------------------------------------------------------------------------------------------
# the bias update carries alpha; host-side epoch counters; update norms accumulated on the device
# ---------------------------------------------------------------------------------------------------
@given(alpha=st.floats(0.2, 3.0), seed=st.integers(0, 10 ** 6))
def test_default_bias_update_is_alpha_times_fd_gradient(alpha, seed):
    """Default variant, layers WITH bias: updates["k.b"] = d/db alpha <signal_k, a_k(b)> by central differences,
    ``signal_k`` being the task signal SSA delivers to layer k's output (eq. (6), (7))."""
    assume(abs(alpha - 1.0) > 0.05)
    model, rule = _prepared("ssa", seed=seed % 1000, alpha=alpha)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((5, 1, 6, 6)), rng.integers(0, 4, 5)
    rule.keep_signals = True
    res = rule.step(model, x, y)
    h, inputs = x, {}
    for k, layer in enumerate(model.layers):
        inputs[k] = h
        h, _ = layer.forward(h, train=True)
    for p, layer in rule.layers:
        k = int(p)
        assert "b" in layer.params
        b0, sig = layer.params["b"].copy(), res.signals[k]

        def f(b, layer=layer, k=k, sig=sig):
            layer.params["b"][...] = b
            return alpha * float(np.sum(sig * layer.forward(inputs[k], train=True)[0]))

        num = numerical_grad(f, b0.copy())
        layer.params["b"][...] = b0
        assert rel_error(res.updates[f"{p}.b"], num) < 1e-7, p


class _NoHostRead(np.ndarray):
    """An array that refuses to be indexed or read back: stands in for a device array the rule must not sync."""

    def __getitem__(self, item):
        raise AssertionError("state array read on the host during a step")

    def __float__(self):
        raise AssertionError("state array read on the host during a step")

    __int__ = __float__


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
def test_epoch_counters_are_host_ints_and_survive_resume(method, rng):
    model, rule = _prepared(method, hoyer=1e-3, parity=False)   # ranks kept: the fresh rule's shapes fit
    assert (rule.epoch, rule.num_epochs) == (1, 0)
    x, y = rng.standard_normal((4, 1, 6, 6)), rng.integers(0, 4, 4)
    rule.step(model, x, y)
    rule.on_epoch_end(model, None, 1, 7)
    assert (rule.epoch, rule.num_epochs) == (2, 7)
    assert type(rule.epoch) is int and type(rule.num_epochs) is int
    d = rule.state_dict()
    assert d["meta/epoch"][0] == 2 and d["meta/num_epochs"][0] == 7
    # a step (hoyer_on once per layer) never reads the meta arrays back
    saved = {k: rule.state[k] for k in ("meta/epoch", "meta/num_epochs")}
    for k, v in saved.items():
        rule.state[k] = v.view(_NoHostRead)
    rule.step(model, x, y)
    rule.state.update(saved)
    # resume: a fresh rule learns the counters from load_state_dict
    model2, fresh = _prepared(method, hoyer=1e-3, parity=False)
    assert (fresh.epoch, fresh.num_epochs) == (1, 0)
    fresh.load_state_dict(d, np)
    assert (fresh.epoch, fresh.num_epochs) == (2, 7)
    assert fresh.hoyer_on() == rule.hoyer_on()


def test_update_norm_metrics_are_means_over_the_steps(rng):
    model, rule = _prepared("ssa", retraction="none")
    norms = {}
    for _ in range(3):
        x, y = rng.standard_normal((4, 1, 6, 6)), rng.integers(0, 4, 4)
        res = rule.step(model, x, y)
        for p, _ in rule.layers:
            for n in ("U", "s", "V"):
                norms.setdefault((p, n), []).append(np.linalg.norm(res.updates[f"{p}.{n}"]))
        for key, prm in model.named_params():
            prm -= 0.05 * res.updates[key]
    m = rule.on_epoch_end(model, None, 1, 10)
    for j, (p, _) in enumerate(rule.layers):
        for n in ("U", "s", "V"):
            assert m[f"svd_upd_{n}"][j] == pytest.approx(np.mean(norms[(p, n)]), rel=1e-12)
    rule.step(model, x, y)                       # the accumulators restart each epoch
    m2 = rule.on_epoch_end(model, None, 2, 10)
    assert np.all(np.isfinite(m2["svd_upd_U"])) and rule._upd == {}


@pytest.mark.parametrize("beta", [0.01, 0.0])
def test_batch_VtG_gives_the_same_updates(beta, monkeypatch):
    """``V^T g_V`` from the batch (``z^T dz``, chosen by shape) equals the direct ``V^T g_V``: the whole update of
    every parameter agrees to round-off (float64), and the batch path is taken where it is cheaper and no
    alignment term sits on ``V`` (mlp: every hidden layer at batch 8; never with a V target)."""
    from ssaref.rules.ssa import SSA

    model = build_model("mlp", (1, 28, 28), 10, dtype=np.float64, seed=0)
    rule = build_rule("ssa", beta=beta)
    model = rule.setup(model, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 1, 28, 28)), rng.integers(0, 10, 8)
    taken = []
    real = SSA._batch_VtG
    monkeypatch.setattr(SSA, "_batch_VtG", lambda self, *a: taken.append(real(self, *a) is not None) or real(self, *a))
    fast = rule.step(model, x, y).updates
    assert taken == [True, True, True]
    monkeypatch.setattr(SSA, "_batch_VtG", lambda self, *a: None)
    slow = rule.step(model, x, y).updates
    assert fast.keys() == slow.keys()
    for k in fast:
        np.testing.assert_allclose(fast[k], slow[k], rtol=1e-11, atol=1e-13, err_msg=k)
    # a V target (weight-mode alignment): the direct product, whatever the shape
    rule = build_rule("ssa", align_target="weight")
    model = rule.setup(build_model("mlp", (1, 28, 28), 10, dtype=np.float64, seed=0), np.random.default_rng(0))
    p, layer = rule.layers[0]
    dy, cache = np.ones((8, layer.dims[0])), (np.ones((8, layer.dims[1])), np.ones((8, layer.rank)))
    assert real(rule, p, layer, dy, cache) is None


def test_gram_is_the_symmetric_XtX(rng):
    from ssaref.linalg import gram

    for dt in (np.float32, np.float64):
        X = rng.standard_normal((37, 11)).astype(dt)
        G = gram(X)
        assert G.dtype == dt and G.shape == (11, 11) and np.array_equal(G, G.T)
        np.testing.assert_allclose(G, X.T.astype(np.float64) @ X.astype(np.float64),
                                   rtol=1e-5 if dt == np.float32 else 1e-13, atol=1e-4 if dt == np.float32 else 1e-12)


def test_gram_on_the_device_standin_takes_syrk_when_worth_it(monkeypatch):
    """On a device ``gram`` is cuBLAS ``syrk`` (one triangle) plus the mirror where the saving outweighs the extra
    launches, else ``X.T @ X``: both the same symmetric matrix (CuPy stand-in, its ``cublas.syrk`` leaves the lower
    triangle zero as cuBLAS does)."""
    import _strictxp as S

    from ssaref import linalg

    S.install()
    X_h = np.random.default_rng(0).standard_normal((40, 7))
    X = S.device(X_h)
    calls = []
    real = S.xp.cublas.syrk
    monkeypatch.setattr(S.xp.cublas, "syrk", lambda *a, **k: calls.append(1) or real(*a, **k))
    small = linalg.gram(X)                                    # 40 * 21 multiply-adds saved: not worth 2 launches
    monkeypatch.setattr(linalg, "DEVICE_MACS_PER_LAUNCH", 1)
    big = linalg.gram(X)
    assert len(calls) == 1
    for G in (small, big):
        G = G.get()
        assert np.array_equal(G, G.T)
        np.testing.assert_allclose(G, X_h.T @ X_h, rtol=1e-13, atol=1e-13)
    assert linalg.worth_fewer_flops(np, 1) and not linalg.worth_fewer_flops(np, 0)
