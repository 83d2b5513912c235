"""FA, DFA, uSF/brSF/frSF, DRTP and PEPITA against independent PyTorch oracles (float64), plus identities.

Each oracle is written in torch from the published formula; it reads only the model's *structure* (layer
kinds, strides) and parameter values, never calls an ssaref op, and computes every local gradient with
``torch.autograd.grad`` of the layer's own forward op given the error that the rule delivers.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _torch_models import _run, torch_params
from ssaref.nn import build_model
from ssaref.nn.containers import Sequential
from ssaref.nn.layers import BatchNorm, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh
from ssaref.optim import build_optimizer
from ssaref.rules import RULES, build_rule

F64 = np.float64
TOL = dict(rtol=1e-10, atol=1e-12)
FA_TYPE = ("fa", "usf", "brsf", "frsf")
ALL = ("fa", "dfa", "usf", "brsf", "frsf", "drtp", "pepita")


# ------------------------------------------------------------------------------------------------ models
def convbn_model(seed=0, K=5):
    """Conv-BN-ReLU-pool-flatten-Linear-Tanh-Linear on (2, 6, 6): BN, pooling and tanh in one graph."""
    rng = np.random.default_rng(seed)
    ctx = dict(xp=np, dtype=F64, rng=rng)
    m = Sequential([Conv2d(2, 3, 3, padding=1, **ctx), BatchNorm(3, xp=np, dtype=F64), ReLU(), MaxPool2d(2),
                    Flatten(), Linear(27, 7, **ctx), Tanh(), Linear(7, K, **ctx)])
    m.name, m.input_shape, m.num_classes = "convbn", (2, 6, 6), K
    # non-trivial BN affine parameters
    m.layers[1].params["gamma"][...] = rng.uniform(0.5, 1.5, 3)
    m.layers[1].params["beta"][...] = rng.uniform(-0.2, 0.2, 3)
    return m


def make(name, seed=0):
    if name == "mlp":
        return build_model("mlp", (1, 4, 4), 5, dtype=F64, seed=seed, hidden=(7, 6))
    if name == "mlp1":
        return build_model("mlp", (1, 3, 3), 4, dtype=F64, seed=seed, hidden=(6,))
    if name == "convnet":
        return build_model("convnet", (1, 8, 8), 5, dtype=F64, seed=seed, width_mult=0.125)
    if name == "resnet":
        return build_model("resnet20", (3, 8, 8), 4, dtype=F64, seed=seed, width_mult=0.25)
    if name == "convbn":
        return convbn_model(seed)
    raise KeyError(name)


def batch(model, n=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + tuple(model.input_shape))
    y = rng.integers(0, model.num_classes, n)
    return x, y


def rule_for(name, model, seed=3, **opts):
    r = build_rule(name, **opts)
    model = r.setup(model, np.random.default_rng(seed))
    return r


# ---------------------------------------------------------------------------------------- torch pieces
class TorchNet:
    """Layer-by-layer torch forward: ``xs[k]`` leaf input of layer k, ``ys[k]`` its output."""

    def __init__(self, model, x):
        self.model = model
        self.P = torch_params(model)
        self.xs, self.ys = [], []
        h = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        for k, layer in enumerate(model.layers):
            xin = h.detach().requires_grad_(True)
            out = _run(layer, xin, self.P, f"{k}.", True)
            self.xs.append(xin)
            self.ys.append(out)
            h = out

    def error(self, y):
        """e = (softmax(a_N) - onehot(y)) / B (eq. (7), batch mean)."""
        logits = self.ys[-1].detach()
        K = logits.shape[1]
        oh = F.one_hot(torch.as_tensor(np.asarray(y)), K).double()
        return (torch.softmax(logits, 1) - oh) / logits.shape[0], oh

    def layer_keys(self, k):
        return [key for key in self.P if key.startswith(f"{k}.")]

    def local(self, k, delta, need_dx=True):
        """True local gradients of layer k's parameters (and input) for the error ``delta`` at its output."""
        keys = self.layer_keys(k)
        wrt = [self.P[key] for key in keys] + ([self.xs[k]] if need_dx else [])
        if not wrt:
            return {}, None
        g = torch.autograd.grad(self.ys[k], wrt, delta, retain_graph=True, allow_unused=True)
        grads = {key: gi for key, gi in zip(keys, g)}
        return grads, (g[-1] if need_dx else None)


def first_param(model):
    return next(i for i, l in enumerate(model.layers) if l.params)


def torch_fa(model, x, y, B):
    """FA (Lillicrap et al.): delta_{k-1} = B_k-transport of delta_k; every dW the local gradient."""
    net = TorchNet(model, x)
    e, _ = net.error(y)
    delta, out = e, {}
    first = first_param(model)
    for k in range(len(model.layers) - 1, first - 1, -1):
        layer = model.layers[k]
        grads, dx = net.local(k, delta, need_dx=(k > first and layer.kind not in ("linear", "conv2d")))
        out.update(grads)
        if k == first:
            break
        if layer.kind == "linear":
            delta = delta @ torch.as_tensor(np.asarray(B[f"{k}.W"]))  # dx = dy B  (B in place of W)
        elif layer.kind == "conv2d":
            delta = torch.nn.grad.conv2d_input(net.xs[k].shape, torch.as_tensor(np.asarray(B[f"{k}.W"])),
                                               delta, stride=layer.stride, padding=layer.padding)
        else:
            delta = dx
    return {k: v.numpy() for k, v in out.items()}


def torch_segments(model):
    """(lead, end) per hidden segment: a weight layer and what follows it up to the next weight layer."""
    leads = [i for i, l in enumerate(model.layers[:-1]) if l.kind in ("linear", "conv2d", "residual")]
    return [(s, (leads[j + 1] - 1) if j + 1 < len(leads) else len(model.layers) - 2) for j, s in enumerate(leads)]


def torch_direct(model, x, y, B, src="e", reduction="mean"):
    """DFA (eq. (3)) / DRTP: output layer from e; segment i from B_i e (or B_i y*) at its output, local BP."""
    net = TorchNet(model, x)
    e, oh = net.error(y)
    N = len(model.layers) - 1
    out, _ = net.local(N, e, need_dx=False)
    proj = e if src == "e" else (oh / oh.shape[0] if reduction == "mean" else oh)
    for lead, end in torch_segments(model):
        Bi = torch.as_tensor(np.asarray(B[f"B/{lead}"]))
        delta = (proj @ Bi.T).reshape(net.ys[end].shape)
        # local BP through the segment only: graph from xs[lead] to ys[end]
        h = net.xs[lead].detach()
        for k in range(lead, end + 1):
            h = _run(model.layers[k], h, net.P, f"{k}.", True)
        keys = [key for k in range(lead, end + 1) for key in net.layer_keys(k)]
        g = torch.autograd.grad(h, [net.P[key] for key in keys], delta)
        out.update(dict(zip(keys, g)))
    return {k: v.numpy() for k, v in out.items()}


def torch_pepita(model, x, y, Fm):
    """Dellaferrera & Kreiman (2022), Algorithm 1, batch mean, on an MLP with biases."""
    P = {k: t.detach() for k, t in torch_params(model).items()}
    lin = [k for k, l in enumerate(model.layers) if l.kind == "linear"]
    act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    kinds = [l.kind for l in model.layers]

    def fwd(h0):
        hs = [h0]  # hs[j]: input of the j-th Linear layer, hs[-1]: logits
        h = h0
        for j, k in enumerate(lin):
            h = h @ P[f"{k}.W"].T + P[f"{k}.b"]
            stop = lin[j + 1] if j + 1 < len(lin) else len(kinds)
            for kk in range(k + 1, stop):
                h = act[kinds[kk]](h)
            hs.append(h)
        return hs

    x0 = torch.as_tensor(np.asarray(x)).reshape(len(x), -1)
    Ft = torch.as_tensor(np.asarray(Fm))
    hs = fwd(x0)
    oh = F.one_hot(torch.as_tensor(np.asarray(y)), hs[-1].shape[1]).double()
    err = torch.softmax(hs[-1], 1) - oh  # e = y_hat - y*
    hs_err = fwd(x0 + err @ Ft.T)  # h_0^err = x + F e
    n = len(x)
    out = {}
    for j, k in enumerate(lin):
        d = err if j == len(lin) - 1 else hs[j + 1] - hs_err[j + 1]
        out[f"{k}.W"] = (d.T @ hs_err[j] / n).numpy()
        out[f"{k}.b"] = (d.sum(0) / n).numpy()
    return out


def compare(upd, ref, keys=None):
    keys = sorted(ref) if keys is None else keys
    assert set(upd) == set(ref), (sorted(upd), sorted(ref))
    for k in keys:
        np.testing.assert_allclose(np.asarray(upd[k]), ref[k], err_msg=k, **TOL)


def bp_updates(model, x, y):
    return build_rule("bp").step(model, x, y).updates


# -------------------------------------------------------------------------------------- oracle tests
@pytest.mark.parametrize("mname", ["mlp", "convnet", "convbn"])
@pytest.mark.parametrize("rname", FA_TYPE)
def test_fa_type_rules_match_torch_oracle(rname, mname):
    model = make(mname)
    x, y = batch(model)
    rule = rule_for(rname, model)
    B = {k: np.array(v) for k, v in rule.feedback(model).items()}  # the B the coming step uses
    res = rule.step(model, x, y)
    B_after = {k: np.array(v) for k, v in rule.feedback(model).items()}
    for k in B:   # fixed feedback stays; brSF moves on to its next draw
        assert np.array_equal(B[k], B_after[k]) == (rname != "brsf"), k
    params = dict(model.named_params())
    first_w = next(k for k, _ in model.named_params() if k.endswith("W"))
    assert first_w not in B  # the first weight layer transports nothing
    for k, b in B.items():
        W = np.asarray(params[k])
        assert b.shape == W.shape
        if rname in ("usf", "brsf", "frsf"):  # sign-concordant: sign(B) = sign(W)
            np.testing.assert_array_equal(np.sign(b), np.sign(W))
        if rname == "usf":
            fan_in = int(np.prod(W.shape[1:]))
            np.testing.assert_allclose(b, np.sign(W) / math.sqrt(3 * fan_in), rtol=1e-15)
    compare(res.updates, torch_fa(model, x, y, B))


@pytest.mark.parametrize("mname", ["mlp", "convnet", "convbn", "resnet"])
@pytest.mark.parametrize("rname", ["dfa", "drtp"])
def test_direct_rules_match_torch_oracle(rname, mname):
    model = make(mname)
    x, y = batch(model)
    rule = rule_for(rname, model)
    res = rule.step(model, x, y)
    ref = torch_direct(model, x, y, rule.state, src="e" if rname == "dfa" else "target")
    compare(res.updates, ref)


def test_dfa_mlp_is_equation_3():
    """Explicit matrices: delta W_i = [(B_i e) o f'(a_i)] h_{i-1}^T (eq. (3)), ReLU MLP."""
    model = make("mlp")
    x, y = batch(model, n=9)
    rule = rule_for("dfa", model)
    rule.keep_signals = True  # the signals are checked below
    res = rule.step(model, x, y)
    W1, b1 = np.asarray(model.layers[1].params["W"]), np.asarray(model.layers[1].params["b"])
    W2, b2 = np.asarray(model.layers[3].params["W"]), np.asarray(model.layers[3].params["b"])
    W3, b3 = np.asarray(model.layers[5].params["W"]), np.asarray(model.layers[5].params["b"])
    h0 = x.reshape(len(x), -1)
    a1 = h0 @ W1.T + b1
    h1 = np.maximum(a1, 0)
    a2 = h1 @ W2.T + b2
    h2 = np.maximum(a2, 0)
    a3 = h2 @ W3.T + b3
    p = np.exp(a3 - a3.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(a3.shape[1])[y]) / len(x)
    d1 = (e @ np.asarray(rule.state["B/1"]).T) * (a1 > 0)
    d2 = (e @ np.asarray(rule.state["B/3"]).T) * (a2 > 0)
    np.testing.assert_allclose(res.updates["1.W"], d1.T @ h0, **TOL)
    np.testing.assert_allclose(res.updates["3.W"], d2.T @ h1, **TOL)
    np.testing.assert_allclose(res.updates["5.W"], e.T @ h2, **TOL)
    # the signal logged at the Linear layer is (B_i e) o f'(a_i)
    np.testing.assert_allclose(res.signals[1], d1, **TOL)
    # B_i: N(0,1) columns normalised to unit l2 norm (paper section 4.3)
    B = np.asarray(rule.state["B/1"])
    assert B.shape == (7, 5)
    np.testing.assert_allclose(np.linalg.norm(B, axis=0), 1.0, rtol=1e-12)


@pytest.mark.parametrize("inject", ["before_pool"])
def test_dfa_before_pool_injection_matches_oracle(inject):
    """Injection before pooling (Frenkel et al.'s placement): B_i maps e to the conv ReLU output."""
    model = make("convnet")
    x, y = batch(model)
    rule = rule_for("dfa", model, dfa_inject=inject)
    # conv segments inject at their ReLU (index 1 and 4), the fc segment at its ReLU
    assert rule.state["B/0"].shape == (4 * 8 * 8, 5)
    res = rule.step(model, x, y)
    net = TorchNet(model, x)
    e, _ = net.error(y)
    ref, _ = net.local(len(model.layers) - 1, e, need_dx=False)
    for seg in rule.segments:
        delta = (e @ torch.as_tensor(np.asarray(rule.state[f"B/{seg.lead}"])).T).reshape(net.ys[seg.inject].shape)
        h = net.xs[seg.lead].detach()
        for k in range(seg.lead, seg.inject + 1):
            h = _run(model.layers[k], h, net.P, f"{k}.", True)
        keys = [key for k in range(seg.lead, seg.inject + 1) for key in net.layer_keys(k)]
        ref.update(dict(zip(keys, torch.autograd.grad(h, [net.P[k] for k in keys], delta))))
    compare(res.updates, {k: v.numpy() for k, v in ref.items()})


def test_pepita_matches_torch_oracle():
    model = build_model("mlp", (1, 4, 4), 5, dtype=F64, seed=0, hidden=(7, 6), activation="tanh")
    x, y = batch(model, n=8)
    rule = rule_for("pepita", model)
    res = rule.step(model, x, y)
    compare(res.updates, torch_pepita(model, x, y, rule.state["F"]))
    Fm = np.asarray(rule.state["F"])
    assert Fm.shape == (16, 5)
    assert np.abs(Fm).max() <= 0.05 * math.sqrt(6 / 16) and np.abs(Fm).max() > 0.5 * 0.05 * math.sqrt(6 / 16)


# ------------------------------------------------------------------------------------------ identities
@pytest.mark.parametrize("mname", ["mlp", "convnet", "resnet"])
def test_fa_with_B_equal_W_is_bp(mname):
    model = make(mname)
    x, y = batch(model)
    rule = rule_for("fa", model)
    params = dict(model.named_params())
    for k in list(rule.state):
        rule.state[k] = params[k[2:]].copy()  # B_{i+1} = W_{i+1} (i.e. B^T = W^T in the transport)
    compare(rule.step(model, x, y).updates, bp_updates(model, x, y))


def test_dfa_one_hidden_layer_with_B_equal_W2T_is_bp():
    model = make("mlp1")
    x, y = batch(model)
    rule = rule_for("dfa", model)
    rule.state["B/1"] = model.layers[3].params["W"].T.copy()  # B_1 = W_2^T
    compare(rule.step(model, x, y).updates, bp_updates(model, x, y))


@pytest.mark.parametrize("rname", ["fa", "dfa", "usf", "brsf", "frsf", "drtp"])
@pytest.mark.parametrize("mname", ["mlp", "convbn"])
def test_output_layer_update_equals_bp(rname, mname):
    model = make(mname)
    x, y = batch(model)
    upd = rule_for(rname, model).step(model, x, y).updates
    ref = bp_updates(model, x, y)
    N = len(model.layers) - 1
    for k in (f"{N}.W", f"{N}.b"):
        np.testing.assert_allclose(upd[k], ref[k], **TOL)
    # and (a sanity check that the test can fail) the first layer differs from BP
    first_w = next(k for k, _ in model.named_params() if k.endswith("W"))
    assert not np.allclose(upd[first_w], ref[first_w])


def test_dfa_frozen_output_leaves_readout_untrained():
    model = make("mlp")
    x, y = batch(model)
    upd = rule_for("dfa", model, dfa_output="frozen").step(model, x, y).updates
    assert "5.W" not in upd and "5.b" not in upd and "1.W" in upd


def _train_steps(rname, model, steps=4, lr=0.05, seed=3, **opts):
    rule = rule_for(rname, model, seed=seed, **opts)
    opt = build_optimizer("sgd", model.named_params(), lr, momentum=0.0)
    x, y = batch(model, n=16)
    snaps = []
    for t in range(steps):
        res = rule.step(model, x, y)
        snaps.append({k: np.array(v) for k, v in (rule.feedback(model).items() if hasattr(rule, "feedback")
                                                   else rule.state.items())})
        opt.step(res.updates)
        yield rule, res, snaps


@pytest.mark.parametrize("rname", ["fa", "dfa", "frsf", "drtp", "pepita"])
def test_feedback_is_fixed_during_training(rname):
    model = make("mlp")
    rule = rule_for(rname, model)
    before = {k: np.array(v) for k, v in rule.state.items()}
    assert before
    for rule, res, _ in _train_steps(rname, model):
        pass
    assert set(rule.state) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(rule.state[k]), v, err_msg=k)


def test_frsf_magnitudes_fixed_signs_follow_w():
    model = make("mlp")
    for rule, res, snaps in _train_steps("frsf", model, steps=3, lr=0.5):
        params = dict(model.named_params())
        for k, B in rule.feedback(model).items():
            np.testing.assert_array_equal(np.abs(np.asarray(B)), np.asarray(rule.state["R/" + k]))
            np.testing.assert_array_equal(np.sign(np.asarray(B)), np.sign(np.asarray(params[k])))


def test_usf_matches_its_definition_after_every_step():
    model = make("convbn")
    for rule, res, snaps in _train_steps("usf", model, steps=4, lr=0.5):
        params = dict(model.named_params())
        B = rule.feedback(model)
        for k, b in B.items():
            W = np.asarray(params[k])
            fan_in = int(np.prod(W.shape[1:]))
            np.testing.assert_array_equal(np.asarray(b), np.sign(W) * (1 / math.sqrt(3 * fan_in)))
    # and the weights did move (so the check above saw different W)
    assert any(not np.array_equal(snaps[0][k], snaps[-1][k]) for k in snaps[0])
    m2 = make("mlp")
    r2 = rule_for("usf", m2, usf_scaled=False)
    for k, b in r2.feedback(m2).items():
        np.testing.assert_array_equal(np.asarray(b), np.sign(np.asarray(dict(m2.named_params())[k])))


def test_brsf_resamples_every_step_and_resumes_identically():
    model = make("mlp")
    snaps = None
    for rule, res, snaps in _train_steps("brsf", model, steps=3):
        pass
    for k in snaps[0]:
        assert not np.array_equal(np.abs(snaps[0][k]), np.abs(snaps[1][k]))
        assert not np.array_equal(np.abs(snaps[1][k]), np.abs(snaps[2][k]))
        bound = 1 / math.sqrt(snaps[0][k].shape[1])
        assert np.abs(snaps[0][k]).max() <= bound
    # checkpoint after step 1, resume in a fresh rule: the next draw is the same
    model = make("mlp")
    x, y = batch(model)
    r1 = rule_for("brsf", model)
    r1.step(model, x, y)
    saved = r1.state_dict()
    u_next = r1.step(model, x, y).updates
    r2 = rule_for("brsf", model, seed=99)
    r2.load_state_dict(saved, np)
    compare(r2.step(model, x, y).updates, {k: np.asarray(v) for k, v in u_next.items()})


@pytest.mark.parametrize("rname", ALL)
def test_state_is_drawn_from_seed_and_checkpoint_roundtrip(rname):
    model = make("mlp")
    x, y = batch(model)
    a, b, c = rule_for(rname, model, seed=5), rule_for(rname, model, seed=5), rule_for(rname, model, seed=6)
    assert set(a.state) == set(b.state)
    for k in a.state:
        np.testing.assert_array_equal(np.asarray(a.state[k]), np.asarray(b.state[k]))
    if rname != "usf":
        assert any(not np.array_equal(np.asarray(a.state[k]), np.asarray(c.state[k])) for k in a.state)
    c.load_state_dict(a.state_dict(), np)
    compare(c.step(model, x, y).updates, {k: np.asarray(v) for k, v in a.step(model, x, y).updates.items()})


def test_state_dtype_follows_model():
    model = build_model("mlp", (1, 4, 4), 5, dtype=np.float32, seed=0, hidden=(7,))
    x, y = batch(model)
    for rname in ALL:
        rule = rule_for(rname, model)
        for k, v in rule.state.items():
            if not k.startswith("brsf"):
                assert v.dtype == np.float32, (rname, k)
        upd = rule.step(model, x.astype(np.float32), y).updates
        for k, v in upd.items():
            assert v.dtype == np.float32, (rname, k)


# ------------------------------------------------------------------------------------------ bad input
def test_pepita_refuses_conv_models():
    model = make("convnet")
    with pytest.raises(ValueError, match=r"pepita.*convnet"):
        rule_for("pepita", model)


@pytest.mark.parametrize("rname,opt", [("fa", {"fa_init": "orthogonal"}), ("dfa", {"dfa_init": "uniformish"}),
                                       ("dfa", {"dfa_inject": "middle"}), ("dfa", {"dfa_output": "bp"}),
                                       ("drtp", {"drtp_reduction": "max"}), ("usf", {"sf_init": "ones"}),
                                       ("pepita", {"pepita_F_scale": -1.0})])
def test_bad_options_are_refused(rname, opt):
    model = make("mlp")
    with pytest.raises(ValueError, match=next(iter(opt))):
        rule_for(rname, model, **opt)


def test_options_are_unique_and_registered():
    seen = {}
    for name in ALL:
        assert name in RULES
        for opt in RULES[name].OPTIONS:
            seen.setdefault(opt, []).append(name)
    assert seen["sf_init"] == ["usf", "brsf", "frsf"]
    assert all(len(v) == 1 for k, v in seen.items() if k != "sf_init"), seen


def test_direct_rule_refuses_untrainable_leading_params():
    rng = np.random.default_rng(0)
    m = Sequential([BatchNorm(4, xp=np, dtype=F64), Linear(4, 3, xp=np, dtype=F64, rng=rng), ReLU(),
                    Linear(3, 2, xp=np, dtype=F64, rng=rng)])
    m.name, m.input_shape, m.num_classes = "bnfirst", (4,), 2
    with pytest.raises(ValueError, match="layer 0"):
        rule_for("dfa", m)


# ----------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("rname", ALL)
def test_every_rule_lowers_the_training_loss_on_synthetic_data(rname):
    from ssaref.data import load_dataset

    ds = load_dataset("synthetic", train_limit=1000, test_limit=10, seed=0)
    model = build_model("mlp", ds.input_shape, ds.num_classes, dtype=np.float32, seed=0, hidden=(64,))
    rule = rule_for(rname, model)
    # DRTP's hidden signal B_i y* does not shrink as the error does, so it needs a smaller step
    lr = 0.003 if rname == "drtp" else 0.01
    opt = build_optimizer("sgd", model.named_params(), lr, momentum=0.9)
    rng = np.random.default_rng(0)
    epoch_loss = []
    for epoch in range(4):
        perm = rng.permutation(len(ds.x_train))
        tot = 0.0
        for i in range(0, len(perm), 50):
            idx = perm[i:i + 50]
            res = rule.step(model, ds.x_train[idx], ds.y_train[idx])
            opt.step(res.updates)
            tot += res.loss * len(idx)
        epoch_loss.append(tot / len(perm))
    assert epoch_loss[-1] < epoch_loss[0] - 0.1, epoch_loss


@pytest.mark.parametrize("rname", ["fa", "dfa", "usf", "drtp"])
def test_rules_lower_the_loss_on_a_conv_net(rname):
    model = convbn_model(0, K=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 2, 6, 6))
    y = (x[:, 0, :3].sum((1, 2)) > x[:, 1, 3:].sum((1, 2))).astype(int) + (x[:, 0].mean((1, 2)) > 0.3)
    rule = rule_for(rname, model)
    opt = build_optimizer("sgd", model.named_params(), 0.1, momentum=0.9)
    losses = []
    for t in range(30):
        res = rule.step(model, x, y)
        opt.step(res.updates)
        losses.append(res.loss)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("rname", ALL)
def test_rules_on_cupy_match_numpy(rname):
    from ssaref import backend

    if not backend.cupy_available():
        pytest.skip("cupy with a CUDA device is not available")
    from ssaref.nn.containers import collect

    cp = backend.resolve_backend("cupy")
    mname = "mlp" if rname == "pepita" else "convbn"
    m_np = make(mname)
    m_cp = make(mname)  # the same values, moved to the device
    for layer in m_cp.layers:
        layer.params = {k: cp.asarray(v) for k, v in layer.params.items()}
        layer.buffers = {k: cp.asarray(v) for k, v in layer.buffers.items()}
    collect(m_cp)
    x, y = batch(m_np)
    r_np, r_cp = rule_for(rname, m_np), rule_for(rname, m_cp)
    for k, v in r_np.state.items():
        np.testing.assert_array_equal(backend.asnumpy(r_cp.state[k]), np.asarray(v))
    u_np = r_np.step(m_np, x, y).updates
    u_cp = r_cp.step(m_cp, cp.asarray(x), cp.asarray(y)).updates
    assert set(u_np) == set(u_cp)
    for k in u_np:
        np.testing.assert_allclose(backend.asnumpy(u_cp[k]), u_np[k], rtol=1e-9, atol=1e-12, err_msg=k)


# ------------------------------------------------------------------- DFA/DRTP: residual blocks per layer, BN
# Independent oracle of dfa_residual=layer, written from the segment rule: inside every residual branch each
# weight layer with the BN/activation layers after it up to the next weight layer is a segment that receives
# B_i src at its end; the last weight layer of each branch (and what follows it in the branch) feeds the add,
# receiving B_i src injected at the block output (after the top-level pool/flatten layers that follow the
# block, or before them with before_pool), carried back through relu(main + shortcut).
WEIGHT = ("linear", "conv2d")
POOLS = ("maxpool2d", "avgpool2d", "global_avgpool", "flatten")


def deepblock_model(seed=0, K=4):
    """Conv-ReLU, a residual block with a 3-conv main branch and a 2-conv projection shortcut, max-pool."""
    from ssaref.nn.containers import ResidualBlock

    rng = np.random.default_rng(seed)
    ctx = dict(xp=np, dtype=F64, rng=rng)
    bn = lambda c: BatchNorm(c, xp=np, dtype=F64)  # noqa: E731
    main = Sequential([Conv2d(3, 4, 3, stride=2, padding=1, bias=False, **ctx), bn(4), ReLU(),
                       Conv2d(4, 4, 3, padding=1, bias=False, **ctx), bn(4), ReLU(),
                       Conv2d(4, 4, 1, bias=False, **ctx), bn(4)])
    short = Sequential([Conv2d(3, 4, 1, stride=2, bias=False, **ctx), bn(4), ReLU(), Conv2d(4, 4, 1, **ctx)])
    m = Sequential([Conv2d(2, 3, 3, padding=1, **ctx), ReLU(), ResidualBlock(main, short), MaxPool2d(2),
                    Flatten(), Linear(16, K, **ctx)])
    m.name, m.input_shape, m.num_classes = "deepblock", (2, 8, 8), K
    for layer in main.layers + short.layers:
        if layer.kind == "batchnorm":
            layer.params["gamma"][...] = rng.uniform(0.5, 1.5, 4)
            layer.params["beta"][...] = rng.uniform(-0.2, 0.2, 4)
    return m


def torch_direct_layer(model, x, y, B, src="e", inject="segment", reduction="mean"):
    """DFA / DRTP with residual blocks split per weight layer (oracle of ``dfa_residual=layer``)."""
    net = TorchNet(model, x)
    e, oh = net.error(y)
    N = len(model.layers) - 1
    out, _ = net.local(N, e, need_dx=False)
    proj = e if src == "e" else (oh / oh.shape[0] if reduction == "mean" else oh)

    def inj_end(kinds, lead, end):
        if inject == "before_pool":
            while end > lead and kinds[end] in POOLS:
                end -= 1
        return end

    def signal(key, shape):
        return (proj @ torch.as_tensor(np.asarray(B[f"B/{key}"])).T).reshape(shape)

    def run(layers, prefix, h, lo, hi):
        for i in range(lo, hi + 1):
            h = _run(layers[i], h, net.P, f"{prefix}{i}.", True)
        return h

    def grads(h, prefixes, delta):
        keys = [k for k in net.P if any(k.startswith(p) for p in prefixes)]
        out.update(dict(zip(keys, torch.autograd.grad(h, [net.P[k] for k in keys], delta))))

    top_kinds = [l.kind for l in model.layers]
    for lead, end in torch_segments(model):
        end = inj_end(top_kinds, lead, end)
        if model.layers[lead].kind != "residual":
            h = run(model.layers, "", net.xs[lead].detach(), lead, end)
            grads(h, [f"{k}." for k in range(lead, end + 1)], signal(lead, h.shape))
            continue
        block = model.layers[lead]
        tails, tail_prefixes = {}, []
        for br in ("main", "shortcut"):
            lay = getattr(block, br).layers
            pre = f"{lead}.{br}."
            ins, h = [], net.xs[lead].detach()  # every branch layer's input, computed in torch
            for i, layer in enumerate(lay):
                ins.append(h)
                h = _run(layer, h, net.P, f"{pre}{i}.", True)
            w = [i for i, l in enumerate(lay) if l.kind in WEIGHT]
            for j in range(len(w) - 1):  # inner segments: W and its BN/ReLU, B_i src at the end
                s, t = w[j], inj_end([l.kind for l in lay], w[j], w[j + 1] - 1)
                hs = run(lay, pre, ins[s].detach(), s, t)
                grads(hs, [f"{pre}{i}." for i in range(s, t + 1)], signal(f"{pre}{s}", hs.shape))
            lo = w[-1] if w else 0
            tails[br] = (lay, pre, lo)
            tail_prefixes += [f"{pre}{i}." for i in range(lo, len(lay))]
        # the add segment: z = main_tail + shortcut_tail (identity: the block input), relu, top-level tail
        parts = []
        for br in ("main", "shortcut"):
            lay, pre, lo = tails[br]
            if not lay:  # identity shortcut
                parts.append(net.xs[lead].detach())
                continue
            parts.append(run(lay, pre, _branch_input(lay, pre, lo, net, lead), lo, len(lay) - 1))
        h = F.relu(parts[0] + parts[1])
        h = run(model.layers, "", h, lead + 1, end)
        key = next(f"{tails[b][1]}{tails[b][2]}" for b in ("main", "shortcut") if tails[b][0])
        grads(h, tail_prefixes, signal(key, h.shape))
    return {k: v.numpy() for k, v in out.items()}


def _branch_input(lay, pre, lo, net, lead):
    """The (detached) input of branch layer ``lo``: the branch run in torch from the block input."""
    h = net.xs[lead].detach()
    for i in range(lo):
        h = _run(lay[i], h, net.P, f"{pre}{i}.", True)
    return h.detach()


@pytest.mark.parametrize("mname,inject", [("resnet", "segment"), ("resnet", "before_pool"),
                                          ("deepblock", "segment"), ("deepblock", "before_pool")])
@pytest.mark.parametrize("rname", ["dfa", "drtp"])
def test_direct_rules_layer_mode_match_torch_oracle(rname, mname, inject):
    model = make("resnet") if mname == "resnet" else deepblock_model()
    x, y = batch(model)
    rule = rule_for(rname, model, **{f"{rname}_residual": "layer", f"{rname}_inject": inject})
    res = rule.step(model, x, y)
    ref = torch_direct_layer(model, x, y, rule.state, src="e" if rname == "dfa" else "target", inject=inject)
    compare(res.updates, ref)
    # and the test can fail: block mode (local BP inside the block) gives other updates on the same weights
    blk = rule_for(rname, model, **{f"{rname}_inject": inject}).step(model, x, y).updates
    inner = next(k for k in ref if ".main.0.W" in k)
    assert not np.allclose(blk[inner], ref[inner])


def test_dfa_layer_mode_state_keys_shapes_and_segments():
    model = make("resnet")
    rule = rule_for("dfa", model, dfa_residual="layer")
    shapes = {k: v.shape for k, v in rule.state.items()}
    # stem conv; per block one B for main.0 (at its ReLU) and one for the residual add (at the block output,
    # for the last block after global average pooling); no separate B for the projection shortcut
    expect = {"B/0": (4 * 8 * 8, 4)}
    for b, (c, hw) in zip(range(3, 12), [(4, 8)] * 3 + [(8, 4)] * 3 + [(16, 2)] * 3):
        expect[f"B/{b}.main.0"] = (c * hw * hw, 4)
        expect[f"B/{b}.main.3"] = (c * hw * hw, 4) if b < 11 else (16, 4)
    assert shapes == expect
    assert list(rule.state) == ["B/0"] + [f"B/{b}.main.{i}" for b in range(3, 12) for i in (0, 3)]  # forward
    np.testing.assert_allclose(np.linalg.norm(np.asarray(rule.state["B/6.main.0"]), axis=0), 1.0, rtol=1e-12)
    # every parameter is trained, the stem and the classifier exactly as in block mode
    x, y = batch(model)
    upd = rule.step(model, x, y).updates
    assert set(upd) == set(dict(model.named_params()))
    ref = rule_for("dfa", model).step(model, x, y).updates
    for k in ("0.W", "1.gamma", "13.W", "13.b"):
        np.testing.assert_allclose(upd[k], ref[k], **TOL)
    # deep block: the shortcut's inner conv leads its own segment, the add is keyed by main's last conv
    m2 = deepblock_model()
    r2 = rule_for("dfa", m2, dfa_residual="layer")
    assert list(r2.state) == ["B/0", "B/2.main.0", "B/2.main.3", "B/2.shortcut.0", "B/2.main.6"]
    assert r2.state["B/2.main.6"].shape == (16, 4) and r2.state["B/2.shortcut.0"].shape == (64, 4)
    r3 = rule_for("dfa", m2, dfa_residual="layer", dfa_inject="before_pool")
    assert r3.state["B/2.main.6"].shape == (64, 4) and r3.state["B/0"].shape == (3 * 64, 4)


def test_dfa_layer_mode_add_segment_with_B_equal_downstream_is_bp():
    """Identity: a projection block followed by global pooling and the classifier; B at the pooled block output
    set to W_N^T (the exact, linear downstream map) gives BP's gradient to both branches' tails (and, in block
    mode, to the whole block)."""
    from ssaref.nn.layers import GlobalAvgPool
    from ssaref.nn.models import _basic_block

    rng = np.random.default_rng(0)
    ctx = dict(xp=np, dtype=F64, rng=rng)
    m = Sequential([Conv2d(2, 3, 3, padding=1, bias=False, **ctx), BatchNorm(3, xp=np, dtype=F64), ReLU(),
                    _basic_block(3, 5, 2, ctx), GlobalAvgPool(), Linear(5, 4, **ctx)])
    m.name, m.input_shape, m.num_classes = "projblock", (2, 6, 6), 4
    x, y = batch(m, n=7)
    bp = bp_updates(m, x, y)
    WNt = np.asarray(m.layers[5].params["W"]).T.copy()
    r = rule_for("dfa", m, dfa_residual="layer")
    r.state["B/3.main.3"] = WNt
    upd = r.step(m, x, y).updates
    tail = ["3.main.3.W", "3.main.4.gamma", "3.main.4.beta", "3.shortcut.0.W", "3.shortcut.1.gamma",
            "3.shortcut.1.beta"]
    for k in tail:
        np.testing.assert_allclose(upd[k], bp[k], err_msg=k, **TOL)
    assert not np.allclose(upd["3.main.0.W"], bp["3.main.0.W"])  # its own random B: not BP
    rb = rule_for("dfa", m)
    rb.state["B/3"] = WNt
    ub = rb.step(m, x, y).updates
    for k in [k for k in bp if k.startswith("3.")]:
        np.testing.assert_allclose(ub[k], bp[k], err_msg=k, **TOL)


@pytest.mark.parametrize("mname,residual", [("convbn", "block"), ("resnet", "block"), ("resnet", "layer")])
@pytest.mark.parametrize("rname", ["dfa", "drtp"])
def test_frozen_bn_gets_no_update_and_signal_still_passes(rname, mname, residual):
    """dfa_bn=frozen: gamma/beta absent from the updates; every other update equals the oracle's, which
    carries the signal through BN's backward (torch autograd through F.batch_norm)."""
    model = make(mname)
    x, y = batch(model)
    rule = rule_for(rname, model, **{f"{rname}_bn": "frozen", f"{rname}_residual": residual})
    res = rule.step(model, x, y)
    oracle = torch_direct if residual == "block" else torch_direct_layer
    ref = oracle(model, x, y, rule.state, src="e" if rname == "dfa" else "target")
    bn_keys = {k for k in ref if k.endswith((".gamma", ".beta"))}
    assert bn_keys and not bn_keys & set(res.updates)
    compare(res.updates, {k: v for k, v in ref.items() if k not in bn_keys})
    # an optimiser step leaves gamma/beta where they were
    params = dict(model.named_params())
    before = {k: np.array(params[k]) for k in bn_keys}
    build_optimizer("sgd", model.named_params(), 0.1, momentum=0.0).step(res.updates)
    for k in bn_keys:
        np.testing.assert_array_equal(np.asarray(params[k]), before[k])


def test_layer_mode_checkpoint_roundtrip_and_metrics():
    from ssaref.metrics import AlignmentTracker, matrix_alignment

    model = make("resnet")
    x, y = batch(model)
    a = rule_for("dfa", model, seed=5, dfa_residual="layer")
    b = rule_for("dfa", model, seed=5, dfa_residual="layer")
    c = rule_for("dfa", model, seed=6, dfa_residual="layer")
    for k in a.state:
        np.testing.assert_array_equal(np.asarray(a.state[k]), np.asarray(b.state[k]))
    c.load_state_dict(a.state_dict(), np)
    ua = a.step(model, x, y)
    compare(c.step(model, x, y).updates, {k: np.asarray(v) for k, v in ua.updates.items()})
    # a fresh rule that never saw init_state resumes from the state alone
    d = build_rule("dfa", dfa_residual="layer")
    d.load_state_dict(a.state_dict(), np)
    compare(d.step(model, x, y).updates, {k: np.asarray(v) for k, v in ua.updates.items()})
    ma = matrix_alignment(a, model)
    assert set(ma) == {f"{p}/{k}" for p in ("flat", "principal") for k in
                       ["0.W"] + [f"{b}.main.{i}.W" for b in range(3, 12) for i in (0, 3)]}
    # the last add segment injects at the pooled output, so B against W_N^T is defined; nested ones are not
    assert np.isfinite(ma["flat/11.main.3.W"]) and math.isnan(ma["flat/11.main.0.W"])
    tr = AlignmentTracker(model, every=1)
    tr.maybe_record(0, model, a, x, y, ua)
    summ = tr.epoch_metrics()
    assert summ
    assert "align" in tr.summary_line()


def test_residual_and_bn_options_are_refused_when_unknown():
    model = make("resnet")
    for opt in ({"dfa_residual": "conv"}, {"dfa_bn": "none"}, {"drtp_residual": "x"}, {"drtp_bn": "fixed"}):
        with pytest.raises(ValueError, match=next(iter(opt))):
            rule_for(next(iter(opt)).split("_")[0], model, **opt)


def test_layer_mode_refuses_params_before_a_branch_weight():
    from ssaref.nn.containers import ResidualBlock

    rng = np.random.default_rng(0)
    ctx = dict(xp=np, dtype=F64, rng=rng)
    main = Sequential([BatchNorm(3, xp=np, dtype=F64), ReLU(), Conv2d(3, 3, 3, padding=1, **ctx)])
    m = Sequential([Conv2d(2, 3, 3, padding=1, **ctx), ResidualBlock(main), Flatten(), Linear(3 * 16, 2, **ctx)])
    m.name, m.input_shape, m.num_classes = "preact", (2, 4, 4), 2
    rule_for("dfa", m)  # block mode: local BP inside the block trains the BN
    with pytest.raises(ValueError, match=r"layer 1\.main\.0"):
        rule_for("dfa", m, dfa_residual="layer")


def test_cli_dfa_layer_mode_on_resnet20_lowers_the_loss(tmp_path, capsys):
    from ssaref import train as train_mod
    from ssaref.runlog import read_run

    out = tmp_path / "run.h5"
    rc = train_mod.main(["--method", "dfa", "--model", "resnet20", "--width-mult", "0.25", "--dfa-residual",
                         "layer", "--dfa-bn", "frozen", "--dataset", "synthetic", "--train-limit", "300",
                         "--test-limit", "50", "--batch-size", "50", "--epochs", "2", "--lr", "0.05",
                         "--no-progress", "--no-download", "--out", str(out)])
    _, err = capsys.readouterr()
    assert rc == 0, err
    config, metrics, ck = read_run(out)
    assert config["rule_dfa_residual"] == "layer" and config["rule_dfa_bn"] == "frozen"
    assert metrics["train_loss"][-1] < metrics["train_loss"][0], metrics["train_loss"]
    assert {"B/0", "B/3.main.0", "B/3.main.3", "B/11.main.3"} <= set(ck["rule_state"])
