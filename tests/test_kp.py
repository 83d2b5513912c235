"""Kolen-Pollack (rules/kp.py) against independent PyTorch oracles written from Akrout et al. (2019), float64.

* one step: FA's chain with the current B (oracle: ``torch_fa`` of test_rules_fa_family), and B's direction equal
  to W's (B is stored in W's shape, so Akrout's ``delta B = h delta^T`` is W's update), both plus ``lambda``;
* five SGD steps of a hand-written torch KP training loop (its own forward, its own backward through B, its own
  update of W and B) against ``build_run(..., "kp", optimizer="sgd")``;
* the defining property: with plain SGD, ``B - W`` contracts by exactly ``(1 - eta lambda)`` per step.
"""
import numpy as np
import pytest
import torch

from ssaref.nn import build_model
from ssaref.run import build_run
from test_rules_fa_family import batch, compare, make, rule_for, torch_fa

F64 = np.float64


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("mname", ["mlp", "convnet", "convbn"])
def test_kp_step_matches_torch_oracle(mname, lam):
    model = make(mname)
    x, y = batch(model)
    rule = rule_for("kp", model, kp_decay=lam)
    B = {k: np.array(v) for k, v in rule.feedback(model).items()}
    assert B and not any(k.startswith("0.") for k in B)          # the first weight layer transports nothing
    res = rule.step(model, x, y)
    ref = torch_fa(model, x, y, B)                               # the chain with B in place of W (eq. (2))
    params = {k: np.asarray(v) for k, v in model.named_params()}
    for k in list(ref):
        if k == "W" or k.endswith(".W"):
            g = ref[k]
            if k in B:
                ref["B/" + k] = g + lam * B[k]                  # delta B = W's update + lambda B
            ref[k] = g + lam * params[k]                         # delta W = delta h^T + lambda W
    assert set(res.updates) == set(ref)
    compare(res.updates, ref)


def _torch_kp_train(Ws, bs, Bs, x, y, lr, lam, steps):
    """KP on a ReLU MLP, by hand: forward, e = (softmax - y*)/B, delta_{l-1} = (delta_l B_l) o relu'(a_{l-1})
    (B_l in W_l's shape), dW_l = delta_l^T h_{l-1}, dB_l = dW_l; SGD on W with lambda W and on B with lambda B."""
    Ws = [torch.tensor(W) for W in Ws]
    bs = [torch.tensor(b) for b in bs]
    Bs = {k: torch.tensor(B) for k, B in Bs.items()}
    X = torch.tensor(x.reshape(x.shape[0], -1))
    Y = torch.nn.functional.one_hot(torch.tensor(y), Ws[-1].shape[0]).double()
    L = len(Ws)
    for _ in range(steps):
        hs, zs = [X], []
        for l in range(L):
            z = hs[-1] @ Ws[l].T + bs[l]
            zs.append(z)
            hs.append(torch.relu(z) if l < L - 1 else z)
        delta = (torch.softmax(hs[-1], 1) - Y) / X.shape[0]     # eq. (7)
        gW, gb, gB = [None] * L, [None] * L, {}
        for l in range(L - 1, -1, -1):
            gW[l] = delta.T @ hs[l]
            gb[l] = delta.sum(0)
            if l > 0:
                gB[l] = gW[l]
                delta = (delta @ Bs[l]) * (zs[l - 1] > 0)        # B_l in place of W_l
        for l in range(L):
            if l in Bs:
                Bs[l] = Bs[l] - lr * (gB[l] + lam * Bs[l])
            Ws[l] = Ws[l] - lr * (gW[l] + lam * Ws[l])
            bs[l] = bs[l] - lr * gb[l]
    return [W.numpy() for W in Ws], [b.numpy() for b in bs], {k: B.numpy() for k, B in Bs.items()}


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_kp_training_matches_a_hand_written_torch_loop(lam):
    model = build_model("mlp", (1, 4, 4), 5, dtype=F64, seed=0, hidden=(7, 6))
    run = build_run(model, "kp", np.random.default_rng(3), options={"kp_decay": lam}, optimizer="sgd", lr=0.2,
                    momentum=0.0)
    x, y = batch(run.model, n=8)
    lin = [k for k, l in enumerate(run.model.layers) if l.kind == "linear"]
    P = {k: np.array(v) for k, v in run.model.named_params()}
    Ws = [P[f"{k}.W"] for k in lin]
    bs = [P[f"{k}.b"] for k in lin]
    Bs = {j: np.array(run.rule.state[f"B/{k}.W"]) for j, k in enumerate(lin) if j > 0}
    for _ in range(5):
        run.train_step(x, y)
    tW, tb, tB = _torch_kp_train(Ws, bs, Bs, x, y, 0.2, lam, 5)
    for j, k in enumerate(lin):
        np.testing.assert_allclose(run.model.layers[k].params["W"], tW[j], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(run.model.layers[k].params["b"], tb[j], rtol=1e-10, atol=1e-12)
        if j > 0:
            np.testing.assert_allclose(run.rule.state[f"B/{k}.W"], tB[j], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("via", ["kp_decay", "weight_decay"])
def test_kp_feedback_converges_to_the_weights(via):
    """SGD: B_{t+1} - W_{t+1} = (1 - eta lambda)(B_t - W_t) exactly (same direction, same decay), whether lambda
    comes from the rule (``kp_decay``) or from the optimiser (``--weight-decay``); so B -> W (= W^T in Akrout's
    layout)."""
    lr, lam, steps = 0.1, 0.5, 20
    model = build_model("mlp", (1, 4, 4), 5, dtype=F64, seed=0, hidden=(7, 6))
    opts, kw = ({"kp_decay": lam}, {}) if via == "kp_decay" else ({}, {"weight_decay": lam})
    run = build_run(model, "kp", np.random.default_rng(3), options=opts, optimizer="sgd", lr=lr, momentum=0.0,
                    **kw)
    x, y = batch(run.model, n=8)
    keys = [k[2:] for k in run.rule.state]
    params = dict(run.model.named_params())
    d0 = {k: np.array(run.rule.state["B/" + k] - params[k]) for k in keys}
    for _ in range(steps):
        run.train_step(x, y)
    for k in keys:
        d = run.rule.state["B/" + k] - params[k]
        np.testing.assert_allclose(d, (1 - lr * lam) ** steps * d0[k], rtol=1e-9, atol=1e-13)


def test_kp_without_decay_keeps_the_difference_fixed():
    """No decay anywhere: B and W receive identical directions, so B - W never changes (Adam as well)."""
    model = build_model("mlp", (1, 4, 4), 5, dtype=F64, seed=0, hidden=(7, 6))
    run = build_run(model, "kp", np.random.default_rng(3), optimizer="adam", lr=1e-2)
    x, y = batch(run.model, n=8)
    params = dict(run.model.named_params())
    d0 = {k: np.array(B - params[k[2:]]) for k, B in run.rule.state.items()}
    for _ in range(10):
        run.train_step(x, y)
    for k, B in run.rule.state.items():
        np.testing.assert_allclose(B - params[k[2:]], d0[k], rtol=0, atol=1e-12)


def test_kp_rejects_bad_options():
    from ssaref.rules import build_rule

    with pytest.raises(ValueError, match="kp_decay"):
        build_rule("kp", kp_decay=-1.0)
    with pytest.raises(ValueError, match="kp_init"):
        build_rule("kp", kp_init="nope")
