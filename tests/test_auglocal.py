"""AugLocal (rules/auglocal.py) against an independent PyTorch oracle written from Ma et al. (ICLR 2024) and the
reference code (ChenxiangMA/AugLocal), float64.

The oracle runs the primary network layer by layer, detaching the input of every hidden layer (segment) and of the
output layer except that the last hidden layer and the output layer form one module (the reference's last local
module); it adds each auxiliary network's cross-entropy on the detached-from-nothing block output (the auxiliary
network itself is evaluated by torch.nn.functional from its layer graph and arrays) and the task loss, and takes
one autograd backward of the sum.  The auxiliary networks' structure is checked separately against the
reference's formulas (pyramidal depths, uniformly selected layers, their types and widths).

* one step and five SGD steps, mlp and conv nets (LeNet, a BN conv net, a residual net);
* finite differences (hypothesis) of a layer's local loss (its auxiliary network's cross-entropy);
* stop-gradient: a layer's update does not change when a later layer's weights change.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from _gradcheck import numerical_grad, rel_error
from _torch_models import _run
from ssaref.nn import build_model
from ssaref.rules.auglocal import pyramid_depths, selected_layers
from ssaref.run import build_run
from test_predsim import WEIGHT
from test_predsim import make as make_predsim
from test_rules_fa_family import batch

F64 = np.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def make(name, seed=0):
    if name == "mlp3":
        return build_model("mlp", (1, 4, 4), 5, dtype=F64, seed=seed, hidden=(7, 6, 5))
    if name == "resnet":
        return build_model("resnet20", (3, 8, 8), 4, dtype=F64, seed=seed, width_mult=0.25)
    return make_predsim(name, seed)   # mlp, convnet, lenet, convbn


# -------------------------------------------------------------------------------------- the structure
def test_pyramid_depths_follow_the_reference_formula():
    # the reference's aux_depth_list, max(1, round(d (1 - i c / (M - 2)) + i c / (M - 2))), for ResNet-32
    # (local_module_num M = 16, so n = 16 hidden layers) with --aux_net_depth 3 --pyramid_coeff 0.5
    ref = [max(1, round(3 * (1 - i * 0.5 / 14) + i * 0.5 / 14)) for i in range(15)]
    assert pyramid_depths(16, 3, 0.5) == ref
    assert ref[0] == 3 and ref[-1] == 2
    assert pyramid_depths(4, 2, 0.0) == [2, 2, 2]
    assert pyramid_depths(5, 5, 1.0) == [5, 4, 2, 1]   # 5, 3.67, 2.33, 1 rounded


def test_selected_layers_are_uniform_over_the_later_layers():
    assert selected_layers(0, 16, 3) == [5, 10, 15]
    assert selected_layers(0, 4, 2) == [2, 3]          # round(1.5) = 2, round(3) = 3
    assert selected_layers(13, 16, 3) == [14, 15]       # fewer later layers than the depth: all of them
    assert selected_layers(2, 4, 1) == [3]


def test_auxiliary_networks_copy_the_selected_layers():
    run = build_run(make("mlp3"), "auglocal", np.random.default_rng(3), optimizer=None,
                    options={"aux_depth": 2, "pyramid_coeff": 0.0})
    heads = run.rule.heads
    # hidden layers at 1, 3, 5 (widths 7, 6, 5); layer 1's aux copies the layers at 3 and 5, then a classifier
    aux = heads["1"]["aux"].layers
    assert [l.kind for l in aux] == ["linear", "relu", "linear", "relu", "linear"]
    assert [l.params["W"].shape for l in aux if l.kind == "linear"] == [(6, 7), (5, 6), (5, 5)]
    assert [l.params["W"].shape for l in heads["3"]["aux"].layers if l.kind == "linear"] == [(5, 6), (5, 5)]
    assert heads["5"] == {}   # the last hidden layer learns with the output layer
    # own weights, not the primary's
    P = dict(run.model.named_params())
    assert not np.array_equal(aux[0].params["W"], P["3.W"])


# ------------------------------------------------------------------------------------------- the oracle
def segments(model):
    """``[(lead, end)]`` of the hidden layers: a weight layer and the layers after it up to the next one."""
    L = model.layers
    leads = [k for k, l in enumerate(L[:-1]) if l.kind in WEIGHT]
    return [(s, (leads[j + 1] - 1) if j + 1 < len(leads) else len(L) - 2) for j, s in enumerate(leads)]


def torch_auglocal_loss(model, rule, P, A, x, y):
    yt = torch.as_tensor(y)
    segs = segments(model)
    ends = {end: lead for lead, end in segs[:-1]}      # layers whose output feeds an auxiliary network
    cut = {lead for lead, _ in segs}                   # every hidden layer's input is detached ...
    N = len(model.layers) - 1                          # ... but not the output layer's: last module = last + output
    h = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    total = 0.0
    for k, layer in enumerate(model.layers):
        if k in cut:
            h = h.detach()
        h = _run(layer, h, P, f"{k}.", True)
        if k in ends:
            lead = ends[k]
            net = rule.heads[str(lead)]["aux"]
            AP = {key[len(f"aux/{lead}/aux."):]: t for key, t in A.items() if key.startswith(f"aux/{lead}/aux.")}
            total = total + F.cross_entropy(_run(net, h, AP, "", True), yt)
    assert k == N
    return total + F.cross_entropy(h, yt)


def leaves(model, rule):
    P = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in model.named_params()}
    A = {i.key: torch.tensor(np.array(i.array), requires_grad=True) for i in rule.learnable(model)}
    return P, A


MODELS = ["mlp3", "lenet", "convbn", "resnet"]


@pytest.mark.parametrize("opts", [{}, {"aux_depth": 1, "pyramid_coeff": 0.0}, {"aux_depth": 3, "pyramid_coeff": 1.0}])
@pytest.mark.parametrize("mname", MODELS)
def test_auglocal_step_matches_torch_oracle(mname, opts):
    run = build_run(make(mname), "auglocal", np.random.default_rng(3), options=opts, optimizer=None)
    model, rule = run.model, run.rule
    x, y = batch(model, n=7)
    tmodel = make(mname)   # BN buffers untouched by ssaref's forward
    res = rule.step(model, x, y)
    P, A = leaves(model, rule)
    torch_auglocal_loss(tmodel, rule, P, A, x, y).backward()
    ref = {k: t.grad.numpy() for d in (P, A) for k, t in d.items()}
    assert set(res.updates) == set(ref)
    for k in ref:
        np.testing.assert_allclose(res.updates[k], ref[k], err_msg=k, **TOL)


@pytest.mark.parametrize("mname", ["mlp3", "lenet", "convbn"])
def test_auglocal_five_sgd_steps_match_a_torch_training_loop(mname):
    lr = 0.2
    run = build_run(make(mname), "auglocal", np.random.default_rng(3), optimizer="sgd", lr=lr, momentum=0.0)
    x, y = batch(run.model, n=8)
    P, A = leaves(run.model, run.rule)
    opt = torch.optim.SGD(list(P.values()) + list(A.values()), lr=lr)
    tmodel = make(mname)
    for _ in range(5):
        run.train_step(x, y)
        opt.zero_grad()
        torch_auglocal_loss(tmodel, run.rule, P, A, x, y).backward()
        opt.step()
    for k, a in run.model.named_params():
        np.testing.assert_allclose(a, P[k].detach().numpy(), err_msg=k, **TOL)
    for i in run.rule.learnable(run.model):
        np.testing.assert_allclose(i.array, A[i.key].detach().numpy(), err_msg=i.key, **TOL)


# -------------------------------------------------------------------------------------- finite differences
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), mname=st.sampled_from(["mlp3", "convbn"]))
def test_layer_local_loss_gradient_finite_differences(seed, mname):
    run = build_run(make(mname), "auglocal", np.random.default_rng(3), optimizer=None)
    rule, model = run.rule, run.model
    rng = np.random.default_rng(seed)
    x, y = batch(model, n=5, seed=seed % 1000)
    _, rec = rule.forward(model, x)
    bt = type("B", (), {"x": x, "y": y})()
    seg = rule._segs[0]
    h = np.array(rec.outs[seg.inject]) + 0.05 * rng.standard_normal(rec.outs[seg.inject].shape)
    _, dh, grads = rule.local_loss(seg, h, bt, {})
    assert rel_error(dh, numerical_grad(lambda v: float(rule.local_loss(seg, v, bt, {})[0]), h), floor=1e-3) < 1e-6
    for pkey, gp in grads["aux"].items():
        arr = rule.state[f"aux/{seg.key}/aux.{pkey}"]

        def f(v, arr=arr):
            old = arr.copy()
            arr[...] = v
            try:
                return float(rule.local_loss(seg, h, bt, {})[0])
            finally:
                arr[...] = old

        assert rel_error(gp, numerical_grad(f, np.array(arr)), floor=1e-3) < 1e-6, pkey


# ----------------------------------------------------------------------------------------- stop-gradient
@pytest.mark.parametrize("method, mname", [("auglocal", "mlp3"), ("auglocal", "lenet"),
                                           ("predsim", "mlp"), ("predsim", "convnet")])
def test_a_layer_update_ignores_later_weights(method, mname):
    """The local-loss rules (PredSim, AugLocal): changing every primary weight after the first hidden layer (later
    blocks, the output layer) leaves its update exactly as it was (its local classifier or auxiliary network has
    its own weights); BP's update of the same layer changes (the test can fail)."""
    for rule, same in ((method, True), ("bp", False)):
        run = build_run(make(mname), rule, np.random.default_rng(3), optimizer=None)
        model = run.model
        first = next(k for k, l in enumerate(model.layers) if l.params)
        x, y = batch(model)
        before = {k: np.array(v) for k, v in run.step(x, y).updates.items() if k.startswith(f"{first}.")}
        rng = np.random.default_rng(9)
        for k, p in model.named_params():
            if int(k.split(".")[0]) > first:
                p[...] = rng.standard_normal(p.shape)
        after = run.step(x, y).updates
        for k, v in before.items():
            assert np.array_equal(v, after[k]) == same, (rule, k)


def test_auglocal_refuses_bad_options():
    from ssaref.rules import build_rule

    for opts in ({"aux_depth": 0}, {"pyramid_coeff": 2.0}, {"auglocal_inject": "x"}):
        with pytest.raises(ValueError, match="auglocal"):
            build_rule("auglocal", **opts)


@pytest.mark.parametrize("method", ["auglocal", "predsim"])
def test_a_restore_with_new_arrays_rebinds_every_auxiliary_layer(method):
    """``load_state_dict`` onto arrays of another module replaces them; every auxiliary layer, those inside a
    copied residual block included, must then compute with the restored arrays."""
    run = build_run(make("resnet"), method, np.random.default_rng(3), optimizer=None)
    rule, model = run.rule, run.model
    x, y = batch(model)
    before = rule.step(model, x, y).updates
    saved = {k: np.array(v) for k, v in rule.state_dict().items()}
    rng = np.random.default_rng(1)
    for v in rule.state.values():
        v[...] = rng.standard_normal(v.shape)            # the old arrays now hold other numbers
    rule.state = {k: np.array(v) for k, v in rule.state.items()}   # ... and are no longer the rule's
    rule.load_state_dict(saved, np)
    after = rule.step(model, x, y).updates
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
