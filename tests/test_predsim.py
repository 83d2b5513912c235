"""PredSim (rules/predsim.py) against an independent PyTorch oracle written from Nokland & Eidnes (2019) and the
reference code's formulas (anokland/local-loss), float64.

The oracle runs the network block by block with each block's input detached (no gradient crosses blocks), adds
every block's local loss ``(1 - beta) CE(classifier(pool(h))) + beta MSE(S(T h), S(y*))`` and the task loss of
the output layer, and takes one autograd backward of the sum: every parameter's gradient is then exactly the
gradient of the one loss that reaches it.  It knows the rule's structure only from the paper/code (blocks start
at each weight layer and end before the pooling layers; the reference's average-pool rule for the classifier);
it reads the auxiliary arrays' values from the rule's state by their documented keys.

* one step (zero-initialised classifiers, and random ones so the prediction path reaches the blocks at step 1),
  mlp and conv nets (with and without BN; the per-channel std path and the flattened one);
* five SGD steps of a hand-written torch training loop against ``build_run(..., "predsim", optimizer="sgd")``;
* finite differences (hypothesis) of the similarity loss and of a whole block's local loss;
* stop-gradient: a block's update does not change when a later layer's weights change.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from _gradcheck import FD_TOL, fd_error, numerical_grad, rel_error
from _torch_models import _run
from ssaref.nn import build_model
from ssaref.ops.similarity import similarity_matching, similarity_matching_backward
from ssaref.run import build_run
from test_rules_fa_family import batch, convbn_model

F64 = np.float64
TOL = dict(rtol=1e-10, atol=1e-12)
WEIGHT = ("linear", "conv2d", "residual")
POOLS = ("maxpool2d", "avgpool2d", "global_avgpool", "flatten")


def make(name, seed=0):
    if name == "mlp":
        return build_model("mlp", (1, 4, 4), 5, dtype=F64, seed=seed, hidden=(7, 6))
    if name == "convnet":   # 4 channels: the per-channel std path of the similarity matrix
        return build_model("convnet", (1, 8, 8), 5, dtype=F64, seed=seed, width_mult=0.125)
    if name == "lenet":     # 3 channels at 28x28 (flattened similarity; the classifier's average pooling)
        return build_model("lenet", (1, 28, 28), 4, dtype=F64, seed=seed, width_mult=0.5)
    if name == "convbn":
        return convbn_model(seed)
    raise KeyError(name)


# ------------------------------------------------------------------------------------------- the oracle
def t_similarity(x, std=True):
    """The reference's ``similarity_matrix``."""
    if x.dim() == 4:
        if std and x.size(1) > 3 and x.size(2) > 1:
            x = x.reshape(x.size(0), x.size(1), -1).std(dim=2)
        else:
            x = x.reshape(x.size(0), -1)
    xc = x - x.mean(dim=1).unsqueeze(1)
    xn = xc / (1e-8 + torch.sqrt(torch.sum(xc ** 2, dim=1))).unsqueeze(1)
    return xn.matmul(xn.transpose(1, 0)).clamp(-1, 1)


def t_pool(h, dim_decoder):
    """The reference's average pooling before a conv block's classifier (``dim_in_decoder``), H and W apart."""
    C, H, W = h.shape[1:]
    ks_h = ks_w = 1
    dh, dw = H, W
    dim = C * dh * dw
    while dim > dim_decoder and ks_h < H:
        ks_h *= 2
        dh = math.ceil(H / ks_h)
        dim = C * dh * dw
        if dim > dim_decoder:
            ks_w *= 2
            dw = math.ceil(W / ks_w)
            dim = C * dh * dw
    if ks_h == 1 and ks_w == 1:
        return h
    pad = ((ks_h * (dh - H // ks_h)) // 2, (ks_w * (dw - W // ks_w)) // 2)
    return F.avg_pool2d(h, (ks_h, ks_w), padding=pad)


def blocks(model):
    """``{lead layer: block-output layer}``: a block starts at each hidden weight layer and its output is the last
    layer before the next weight layer that is not a pooling/flatten layer."""
    L = model.layers
    leads = [k for k, l in enumerate(L[:-1]) if l.kind in WEIGHT]
    out = {}
    for j, s in enumerate(leads):
        end = leads[j + 1] - 1 if j + 1 < len(leads) else len(L) - 2
        while end > s and L[end].kind in POOLS:
            end -= 1
        out[s] = end
    return out


def aux_arrays(A, lead):
    pred = sorted(k for k in A if k.startswith(f"aux/{lead}/pred."))
    sim = [k for k in A if k.startswith(f"aux/{lead}/sim.")]
    Wd = next(k for k in pred if k.endswith(".W"))
    bd = next(k for k in pred if k.endswith(".b"))
    return A[Wd], A[bd], (A[sim[0]] if sim else None)


def torch_predsim_loss(model, P, A, x, y, beta=0.99, dim_decoder=2048, std=True):
    """The sum of every block's local loss and the task loss, each block's input detached."""
    Y = F.one_hot(torch.as_tensor(y), model.num_classes).double()
    R_y = t_similarity(Y)
    yt = torch.as_tensor(y)
    out_of = blocks(model)
    ends = {v: k for k, v in out_of.items()}
    h = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    total = 0.0
    for k, layer in enumerate(model.layers):
        if layer.kind in WEIGHT:
            h = h.detach()                       # no gradient crosses blocks (nor reaches the output layer's input)
        h = _run(layer, h, P, f"{k}.", True)
        if k in ends:
            Wd, bd, Wt = aux_arrays(A, ends[k])
            hp = t_pool(h, dim_decoder) if h.dim() == 4 else h
            loss_pred = F.cross_entropy(F.linear(hp.flatten(1), Wd, bd), yt)
            t = h if Wt is None else (F.conv2d(h, Wt, padding=1) if h.dim() == 4 else F.linear(h, Wt))
            loss_sim = F.mse_loss(t_similarity(t, std), R_y)
            total = total + (1 - beta) * loss_pred + beta * loss_sim
    return total + F.cross_entropy(h, yt)


def leaves(model, rule):
    P = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in model.named_params()}
    A = {i.key: torch.tensor(np.array(i.array), requires_grad=True) for i in rule.learnable(model)}
    return P, A


def torch_grads(model, rule, x, y, **kw):
    P, A = leaves(model, rule)
    torch_predsim_loss(model, P, A, x, y, **kw).backward()
    return {k: t.grad.numpy() for d in (P, A) for k, t in d.items()}


OPTS = {"predsim_beta": "beta", "predsim_dim_decoder": "dim_decoder", "predsim_channel_std": "std"}


def _run_for(mname, optimizer="sgd", lr=0.1, **opts):
    model = make(mname)
    return build_run(model, "predsim", np.random.default_rng(3), options=opts, optimizer=optimizer, lr=lr,
                     **({"momentum": 0.0} if optimizer == "sgd" else {}))


@pytest.mark.parametrize("random_classifier", [False, True])
@pytest.mark.parametrize("mname, opts", [
    ("mlp", {}), ("convnet", {}), ("lenet", {}), ("convbn", {}),
    ("mlp", {"predsim_beta": 0.4}), ("convnet", {"predsim_channel_std": False, "predsim_beta": 0.5}),
    ("lenet", {"predsim_dim_decoder": 300, "predsim_beta": 0.3}),
])
def test_predsim_step_matches_torch_oracle(mname, opts, random_classifier):
    run = _run_for(mname, **opts)
    model, rule = run.model, run.rule
    if random_classifier:   # the classifiers start at zero; random ones let the prediction loss reach h at step 1
        rng = np.random.default_rng(5)
        for item in rule.learnable(model):
            item.array[...] = rng.uniform(-0.5, 0.5, item.array.shape)
    x, y = batch(model, n=7)
    res = rule.step(model, x, y)
    ref = torch_grads(model, rule, x, y, **{OPTS[k]: v for k, v in opts.items()})
    assert set(res.updates) == set(ref)
    for k in ref:
        np.testing.assert_allclose(res.updates[k], ref[k], err_msg=k, **TOL)


def test_predsim_without_transform_matches_oracle():
    run = _run_for("convnet", predsim_sim_transform="none")
    assert not any(".sim." in k or "/sim." in k for k in run.rule.state)
    x, y = batch(run.model)
    res = run.rule.step(run.model, x, y)
    ref = torch_grads(run.model, run.rule, x, y)
    assert set(res.updates) == set(ref)
    for k in ref:
        np.testing.assert_allclose(res.updates[k], ref[k], err_msg=k, **TOL)


@pytest.mark.parametrize("mname", ["mlp", "lenet", "convbn"])
def test_predsim_five_sgd_steps_match_a_torch_training_loop(mname):
    lr = 0.2
    run = _run_for(mname, lr=lr)
    x, y = batch(run.model, n=8)
    P, A = leaves(run.model, run.rule)
    opt = torch.optim.SGD(list(P.values()) + list(A.values()), lr=lr)
    tmodel = make(mname)   # the oracle's own copy of the structure (and BN buffers), untouched by ssaref
    for _ in range(5):
        run.train_step(x, y)
        opt.zero_grad()
        torch_predsim_loss(tmodel, P, A, x, y).backward()
        opt.step()
    for k, a in run.model.named_params():
        np.testing.assert_allclose(a, P[k].detach().numpy(), err_msg=k, **TOL)
    for i in run.rule.learnable(run.model):
        np.testing.assert_allclose(i.array, A[i.key].detach().numpy(), err_msg=i.key, **TOL)


# -------------------------------------------------------------------------------------- finite differences
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(5, 7), (4, 5, 3, 3), (6, 2, 3, 2), (4, 6, 1, 4)]),
       std=st.booleans())
def test_similarity_loss_gradient_finite_differences(seed, shape, std):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    R_y = np.clip(rng.uniform(-1, 1, (shape[0], shape[0])), -1, 1)
    R_y = (R_y + R_y.T) / 2
    loss, c = similarity_matching(a, R_y, std)
    g = similarity_matching_backward(c)
    assert fd_error(g, lambda v: similarity_matching(v, R_y, std)[0], a) < FD_TOL


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), mname=st.sampled_from(["mlp", "convnet"]), beta=st.floats(0.0, 1.0))
def test_block_local_loss_gradient_finite_differences(seed, mname, beta):
    """``local_loss``'s dL/dh and its auxiliary gradients against central differences of its own loss value."""
    run = _run_for(mname, predsim_beta=beta)
    rule, model = run.rule, run.model
    rng = np.random.default_rng(seed)
    for item in rule.learnable(model):
        item.array[...] = rng.uniform(-0.5, 0.5, item.array.shape)
    x, y = batch(model, n=5, seed=seed % 1000)
    _, rec = rule.forward(model, x)
    ctx = rule.step_context(model, None, type("B", (), {"x": x, "y": y})())
    bt = type("B", (), {"x": x, "y": y})()
    seg = rule._segs[0]
    h = np.array(rec.outs[seg.inject]) + 0.05 * rng.standard_normal(rec.outs[seg.inject].shape)
    _, dh, grads = rule.local_loss(seg, h, bt, ctx)
    assert rel_error(dh, numerical_grad(lambda v: float(rule.local_loss(seg, v, bt, ctx)[0]), h),
                     floor=1e-3) < 1e-6
    for hname, g in grads.items():
        for pkey, gp in g.items():
            arr = rule.state[f"aux/{seg.key}/{hname}.{pkey}"]

            def f(v, arr=arr):
                old = arr.copy()
                arr[...] = v
                try:
                    return float(rule.local_loss(seg, h, bt, ctx)[0])
                finally:
                    arr[...] = old

            assert rel_error(gp, numerical_grad(f, np.array(arr)), floor=1e-3) < 1e-6, (hname, pkey)


def test_predsim_refuses_bad_options():
    from ssaref.rules import build_rule

    for opts in ({"predsim_beta": 1.5}, {"predsim_dim_decoder": 0}, {"predsim_sim_transform": "x"},
                 {"predsim_inject": "x"}):
        with pytest.raises(ValueError, match="predsim"):
            build_rule("predsim", **opts)


@pytest.mark.parametrize("shape, std", [((7, 5), True), ((6, 5, 3, 3), True), ((6, 5, 3, 3), False)])
def test_similarity_over_shards_is_the_global_batch(shape, std):
    """With ``gather`` (several ranks) each shard's loss is its rows' part of the global batch's and its gradient
    the global gradient of its own examples: the parts add up to the one-process values."""
    from ssaref.ops.similarity import similarity_forward

    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape)
    Y = np.eye(3)[rng.integers(0, 3, shape[0])]
    R_y, _ = similarity_forward(Y)
    loss, c = similarity_matching(a, R_y, std)
    g = similarity_matching_backward(c)
    xn_all = similarity_forward(a, std)[1][7]          # the rows every rank would gather
    y_all = similarity_forward(Y)[1][7]
    parts, grads = 0.0, []
    for lo, hi in ((0, 2), (2, shape[0])):
        gather_y = lambda v, lo=lo: (y_all, lo)        # noqa: E731
        gather_x = lambda v, lo=lo: (xn_all, lo)       # noqa: E731
        R_y_rows, _ = similarity_forward(Y[lo:hi], gather=gather_y)
        np.testing.assert_allclose(R_y_rows, R_y[lo:hi], rtol=0, atol=1e-15)
        part, cp = similarity_matching(a[lo:hi], R_y_rows, std, gather_x)
        parts += float(part)
        grads.append(similarity_matching_backward(cp))
    np.testing.assert_allclose(parts, float(loss), rtol=1e-13)
    np.testing.assert_allclose(np.concatenate(grads), g, rtol=1e-12, atol=1e-15)
