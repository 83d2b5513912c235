"""Optimisers and schedules against torch.optim (float64 oracle), state round trips, allocation-free steps."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from ssaref.backend import cupy_available, resolve_backend
from ssaref.optim import SGD, Adam, build_optimizer, build_schedule

SHAPES = [(3,), (4, 5), (2, 3, 3, 3), (7, 1)]
KEYS = ["0.W", "0.b", "4.conv1.W", "6.W"]


def _make_params(seed, shapes=SHAPES, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [(k, rng.standard_normal(s).astype(dtype)) for k, s in zip(KEYS, shapes)]


def _grad_stream(seed, params, steps, skip_prob=0.0):
    """Per step: dict key -> gradient, some keys left out with probability ``skip_prob``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        g = {}
        for k, p in params:
            val = rng.standard_normal(p.shape).astype(p.dtype)
            if rng.random() >= skip_prob:
                g[k] = val
        out.append(g)
    return out


def _torch_run(params, grads, lrs, make):
    """Oracle: the same steps through torch.optim (``make(tensors, lr) -> torch optimiser``)."""
    tens = [torch.nn.Parameter(torch.from_numpy(p.copy())) for _, p in params]
    opt = make(tens, lrs[0])
    for g, lr in zip(grads, lrs):
        for (k, _), t in zip(params, tens):
            t.grad = torch.from_numpy(g[k].copy()) if k in g else None
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    return [t.detach().numpy() for t in tens]


def _ours_run(params, grads, lrs, opt):
    for g, lr in zip(grads, lrs):
        opt.step(g, lr=lr)
    return [p for _, p in params]


def _compare(ours_factory, torch_factory, *, seed=0, steps=20, skip_prob=0.0, vary_lr=False,
             dtype=np.float64, shapes=SHAPES):
    params = _make_params(seed, shapes, dtype)
    ref_params = [(k, p.copy()) for k, p in params]
    grads = _grad_stream(seed + 1, params, steps, skip_prob)
    lrs = ([0.05 * (1 + 0.5 * math.sin(i)) for i in range(steps)] if vary_lr else [0.05] * steps)
    want = _torch_run(ref_params, grads, lrs, torch_factory)
    got = _ours_run(params, grads, lrs, ours_factory(params, lrs[0]))
    return max(float(np.max(np.abs(a - b))) for a, b in zip(got, want)), got, want


SGD_CASES = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(weight_decay=1e-2),
    dict(momentum=0.8, dampening=0.3),
    dict(momentum=0.9, dampening=0.5, weight_decay=5e-3),
    dict(momentum=0.95, nesterov=True, weight_decay=1e-3),
]


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
@pytest.mark.parametrize("vary_lr", [False, True])
def test_sgd_matches_torch(kw, vary_lr):
    err, _, _ = _compare(lambda p, lr: SGD(p, lr, **kw),
                         lambda t, lr: torch.optim.SGD(t, lr=lr, foreach=False, **kw), vary_lr=vary_lr)
    assert err < 1e-12


ADAM_CASES = [
    (dict(), False),
    (dict(weight_decay=1e-2), False),
    (dict(weight_decay=1e-2), True),
    (dict(betas=(0.5, 0.9), eps=1e-6), False),
    (dict(betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1), True),
    (dict(betas=(0.0, 0.0)), False),
]


@pytest.mark.parametrize("kw,decoupled", ADAM_CASES)
@pytest.mark.parametrize("vary_lr", [False, True])
def test_adam_matches_torch(kw, decoupled, vary_lr):
    tcls = torch.optim.AdamW if decoupled else torch.optim.Adam
    tkw = dict(kw)
    if decoupled and "weight_decay" not in tkw:
        tkw["weight_decay"] = 0.0
    err, _, _ = _compare(lambda p, lr: Adam(p, lr, decoupled=decoupled, **kw),
                         lambda t, lr: tcls(t, lr=lr, foreach=False, **tkw), vary_lr=vary_lr)
    assert err < 1e-12


@given(momentum=st.floats(0.0, 0.99), dampening=st.floats(0.0, 1.0), wd=st.floats(0.0, 0.1),
       nesterov=st.booleans(), lr=st.floats(1e-4, 0.5), seed=st.integers(0, 2**31),
       n=st.integers(1, 6), m=st.integers(1, 6))
def test_sgd_matches_torch_hypothesis(momentum, dampening, wd, nesterov, lr, seed, n, m):
    if nesterov:
        momentum, dampening = max(momentum, 0.1), 0.0
    kw = dict(momentum=momentum, dampening=dampening, weight_decay=wd, nesterov=nesterov)
    shapes = [(n,), (n, m), (m, n, 2, 2), (m, 1)]
    params = _make_params(seed, shapes)
    grads = _grad_stream(seed + 1, params, 12, skip_prob=0.2)
    lrs = [lr] * 12
    want = _torch_run([(k, p.copy()) for k, p in params], grads, lrs,
                      lambda t, lr_: torch.optim.SGD(t, lr=lr_, foreach=False, **kw))
    got = _ours_run(params, grads, lrs, SGD(params, lr, **kw))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@given(b1=st.floats(0.0, 0.99), b2=st.floats(0.0, 0.9999), eps=st.floats(1e-10, 1e-2), wd=st.floats(0.0, 0.1),
       decoupled=st.booleans(), lr=st.floats(1e-4, 0.1), seed=st.integers(0, 2**31),
       n=st.integers(1, 6), m=st.integers(1, 6))
def test_adam_matches_torch_hypothesis(b1, b2, eps, wd, decoupled, lr, seed, n, m):
    kw = dict(betas=(b1, b2), eps=eps, weight_decay=wd)
    tcls = torch.optim.AdamW if decoupled else torch.optim.Adam
    shapes = [(n,), (n, m), (m, n, 2, 2), (m, 1)]
    params = _make_params(seed, shapes)
    grads = _grad_stream(seed + 1, params, 12, skip_prob=0.2)
    lrs = [lr] * 12
    want = _torch_run([(k, p.copy()) for k, p in params], grads, lrs,
                      lambda t, lr_: tcls(t, lr=lr_, foreach=False, **kw))
    got = _ours_run(params, grads, lrs, Adam(params, lr, decoupled=decoupled, **kw))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("which", ["sgd", "adam", "adamw"])
def test_missing_keys_match_torch_none_grad(which):
    """Keys left out of an update behave as torch params with grad None (Adam's per-param step waits)."""
    ours = {"sgd": lambda p, lr: SGD(p, lr, momentum=0.9, weight_decay=1e-2),
            "adam": lambda p, lr: Adam(p, lr, weight_decay=1e-2),
            "adamw": lambda p, lr: Adam(p, lr, weight_decay=1e-2, decoupled=True)}[which]
    theirs = {"sgd": lambda t, lr: torch.optim.SGD(t, lr=lr, momentum=0.9, weight_decay=1e-2, foreach=False),
              "adam": lambda t, lr: torch.optim.Adam(t, lr=lr, weight_decay=1e-2, foreach=False),
              "adamw": lambda t, lr: torch.optim.AdamW(t, lr=lr, weight_decay=1e-2, foreach=False)}[which]
    err, _, _ = _compare(ours, theirs, skip_prob=0.4, steps=25, seed=7)
    assert err < 1e-12


@pytest.mark.parametrize("make", [lambda p: SGD(p, 0.1, momentum=0.9, weight_decay=0.1),
                                  lambda p: Adam(p, 0.1, weight_decay=0.1, decoupled=True)])
def test_missing_keys_untouched(make):
    params = _make_params(3)
    opt = make(params)
    opt.step({k: np.ones_like(p) for k, p in params})
    before = {k: p.copy() for k, p in params}
    state_before = opt.state_dict()
    opt.step({"0.W": np.ones_like(params[0][1]), "6.W": None})
    for k, p in params:
        if k == "0.W":
            assert not np.array_equal(p, before[k])
        else:
            assert np.array_equal(p, before[k]), k
    state_after = opt.state_dict()
    for k, v in state_before.items():
        if k.endswith("/0.W") or k == "step":
            continue
        assert np.array_equal(np.asarray(v), np.asarray(state_after[k])), k


def _continuation(make, seed=11):
    params = _make_params(seed)
    grads = _grad_stream(seed + 1, params, 20, skip_prob=0.2)
    lrs = [0.03 + 0.001 * i for i in range(20)]
    full_params = [(k, p.copy()) for k, p in params]
    full = make(full_params)
    _ours_run(full_params, grads, lrs, full)

    first = make(params)
    _ours_run(params, grads[:10], lrs[:10], first)
    sd = first.state_dict()
    sd_copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in sd.items()}
    fresh_params = [(k, p.copy()) for k, p in params]
    first.step(grads[10], lr=1.0)  # the snapshot must not move with the optimiser it came from
    for k, v in sd.items():
        assert np.array_equal(np.asarray(v), np.asarray(sd_copy[k])), k
    second = make(fresh_params)
    second.load_state_dict(sd)
    _ours_run(fresh_params, grads[10:], lrs[10:], second)
    for (k, a), (_, b) in zip(fresh_params, full_params):
        assert np.array_equal(a, b), k
    assert second.state_dict()["step"] == 20
    for k, v in full.state_dict().items():
        assert np.array_equal(np.asarray(v), np.asarray(second.state_dict()[k])), k


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, 0.1),
    lambda p: SGD(p, 0.1, momentum=0.9, dampening=0.2, weight_decay=1e-3),
    lambda p: SGD(p, 0.1, momentum=0.9, nesterov=True),
    lambda p: Adam(p, 0.01, weight_decay=1e-2),
    lambda p: Adam(p, 0.01, weight_decay=1e-2, decoupled=True),
], ids=["sgd", "sgd-momentum", "sgd-nesterov", "adam", "adamw"])
def test_state_dict_round_trip_continues_exactly(make):
    _continuation(make)


def test_state_dict_layout_and_host_types():
    params = _make_params(0, dtype=np.float32)
    opt = Adam(params, 0.01)
    opt.step({"0.W": np.ones(3, np.float32)})
    sd = opt.state_dict()
    assert sd["step"] == 1 and isinstance(sd["step"], int)
    assert sd["t/0.W"] == 1 and sd["t/0.b"] == 0
    assert set(sd) == {"step"} | {f"{n}/{k}" for n in ("t", "m", "v") for k in KEYS}
    assert sd["m/4.conv1.W"].shape == (2, 3, 3, 3) and sd["m/4.conv1.W"].dtype == np.float32
    assert all(isinstance(v, np.ndarray) for k, v in sd.items() if k[0] in "mv")
    assert SGD(params, 0.1).state_dict_keys() == ["step"] + [f"t/{k}" for k in KEYS]


def test_load_state_dict_errors():
    params = _make_params(0)
    adam = Adam(params, 0.01)
    sd = adam.state_dict()
    bad = dict(sd)
    del bad["m/0.W"]
    with pytest.raises(ValueError, match=r"missing keys \['m/0.W'\]"):
        Adam(params, 0.01).load_state_dict(bad)
    bad = dict(sd, extra=np.zeros(1))
    with pytest.raises(ValueError, match="unexpected keys.*extra"):
        Adam(params, 0.01).load_state_dict(bad)
    bad = dict(sd)
    bad["v/4.conv1.W"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"v/4.conv1.W has shape \(2, 3\)"):
        Adam(params, 0.01).load_state_dict(bad)
    with pytest.raises(ValueError, match="buf/0.W"):
        SGD(params, 0.1, momentum=0.9).load_state_dict(sd)
    bad = dict(sd, step=-1)
    with pytest.raises(ValueError, match="-1"):
        Adam(params, 0.01).load_state_dict(bad)
    bad = dict(sd, step=2.5)
    with pytest.raises(ValueError, match="2.5"):
        Adam(params, 0.01).load_state_dict(bad)


def test_load_state_dict_accepts_numpy_scalars_and_casts_to_param_dtype():
    params32 = _make_params(0, dtype=np.float32)
    src = Adam(_make_params(0, dtype=np.float32), 0.01)
    src.step({k: np.ones_like(p) for k, p in src._params.items()})
    sd = src.state_dict()
    sd = {k: (np.int64(v) if isinstance(v, int) else v.astype(np.float64)) for k, v in sd.items()}
    dst = Adam(params32, 0.01)
    dst.load_state_dict(sd)
    out = dst.state_dict()
    assert out["step"] == 1 and type(out["step"]) is int
    assert out["m/0.W"].dtype == np.float32
    np.testing.assert_array_equal(out["m/0.W"], src.state_dict()["m/0.W"])


def test_step_validation_is_atomic():
    params = _make_params(0)
    opt = SGD(params, 0.1, momentum=0.9)
    before = [p.copy() for _, p in params]
    good = np.ones(3)
    with pytest.raises(ValueError, match=r"'0.b' has shape \(5,\)"):
        opt.step({"0.W": good, "0.b": np.ones(5)})
    with pytest.raises(ValueError, match="float32"):
        opt.step({"0.W": good, "0.b": np.ones((4, 5), np.float32)})
    with pytest.raises(ValueError, match="'nope'"):
        opt.step({"0.W": good, "nope": good})
    with pytest.raises(ValueError, match="-0.5"):
        opt.step({"0.W": good}, lr=-0.5)
    with pytest.raises(ValueError, match="nan"):
        opt.step({"0.W": good}, lr=float("nan"))
    for (_, p), b in zip(params, before):
        assert np.array_equal(p, b)
    assert opt.step_count == 0


def test_float32_kept_and_close_to_torch():
    err, got, _ = _compare(lambda p, lr: Adam(p, lr, weight_decay=1e-2),
                           lambda t, lr: torch.optim.Adam(t, lr=lr, weight_decay=1e-2, foreach=False),
                           dtype=np.float32)
    assert all(a.dtype == np.float32 for a in got)
    assert err < 1e-5


def test_params_updated_in_place():
    params = _make_params(0)
    ids = [id(p) for _, p in params]
    opt = Adam(params, 0.1)
    opt.step({k: np.ones_like(p) for k, p in params})
    assert [id(p) for _, p in params] == ids
    assert all(opt.param(k) is p for k, p in params)


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, 0.1),
    lambda p: SGD(p, 0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: SGD(p, 0.1, momentum=0.9, dampening=0.5, weight_decay=1e-3),
    lambda p: Adam(p, 0.1, weight_decay=1e-2),
    lambda p: Adam(p, 0.1, weight_decay=1e-2, decoupled=True),
], ids=["sgd", "nesterov", "dampening", "adam-l2", "adamw"])
def test_step_allocates_nothing_param_sized(make):
    n = 1 << 20  # 8 MiB of float64
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n)
    g = rng.standard_normal(n)
    opt = make([("w", p)])
    opt.step({"w": g})  # first step (momentum buffer initialisation) too
    for _ in range(2):
        tracemalloc.start()
        try:
            opt.step({"w": g})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < p.nbytes / 50, peak


def test_tracemalloc_sees_numpy_temporaries():
    """Control for the test above: a naive update does show a parameter-sized peak."""
    p = np.zeros(1 << 20)
    g = np.ones(1 << 20)
    tracemalloc.start()
    try:
        p -= 0.1 * g
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= p.nbytes


def test_resize_and_replace_param_match_torch():
    """Rank truncation mid-run: the sliced Adam state continues as torch with the sliced state would."""
    rng = np.random.default_rng(5)
    W = rng.standard_normal((4, 6))
    b = rng.standard_normal(4)
    grads = [(rng.standard_normal((4, 6)), rng.standard_normal(4)) for _ in range(5)]
    grads2 = [(rng.standard_normal((4, 3)), rng.standard_normal(4)) for _ in range(5)]
    kw = dict(weight_decay=1e-2)
    tW, tb = (torch.nn.Parameter(torch.from_numpy(a.copy())) for a in (W, b))
    topt = torch.optim.Adam([tW, tb], lr=0.01, foreach=False, **kw)
    for gW, gb in grads:
        tW.grad, tb.grad = torch.from_numpy(gW.copy()), torch.from_numpy(gb.copy())
        topt.step()
    tW2 = torch.nn.Parameter(tW.detach()[:, :3].clone())
    old = topt.state[tW]
    topt2 = torch.optim.Adam([tW2, tb], lr=0.01, foreach=False, **kw)
    topt2.state[tW2] = {"step": old["step"].clone(), "exp_avg": old["exp_avg"][:, :3].clone(),
                        "exp_avg_sq": old["exp_avg_sq"][:, :3].clone()}
    topt2.state[tb] = topt.state[tb]
    for gW, gb in grads2:
        tW2.grad, tb.grad = torch.from_numpy(gW.copy()), torch.from_numpy(gb.copy())
        topt2.step()

    opt = Adam([("W", W), ("b", b)], 0.01, **kw)
    for gW, gb in grads:
        opt.step({"W": gW, "b": gb})
    W2 = W[:, :3].copy()
    opt.replace_param("W", W2)
    opt.resize("W", (slice(None), slice(0, 3)))
    assert opt.state_dict()["m/W"].shape == (4, 3)
    for gW, gb in grads2:
        opt.step({"W": gW, "b": gb})
    assert np.max(np.abs(W2 - tW2.detach().numpy())) < 1e-12
    assert np.max(np.abs(b - tb.detach().numpy())) < 1e-12


def test_resize_without_replace_raises_clearly():
    W = np.ones((4, 6))
    opt = SGD([("W", W)], 0.1, momentum=0.9)
    opt.resize("W", (slice(None), slice(0, 3)))
    with pytest.raises(ValueError, match="resize"):
        opt.step({"W": np.ones((4, 6))})
    with pytest.raises(ValueError, match="'V'"):
        opt.resize("V", (slice(None),))
    with pytest.raises(ValueError, match="float32"):
        opt.replace_param("W", np.ones((4, 3), np.float32))
    plain = SGD([("W", W)], 0.1)  # no state: resize only reshapes the scratch
    plain.resize("W", (slice(None), slice(0, 2)))
    W2 = W[:, :2].copy()
    plain.replace_param("W", W2)
    plain.step({"W": np.ones((4, 2))})
    np.testing.assert_allclose(W2, 0.9)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), "lr must be > 0, got 0.0"),
    (dict(lr=-1), "lr must be > 0, got -1"),
    (dict(lr=float("inf")), "lr must be finite"),
    (dict(lr=0.1, momentum=-0.5), "momentum must be >= 0, got -0.5"),
    (dict(lr=0.1, weight_decay=-1e-3), "weight_decay must be >= 0, got -0.001"),
    (dict(lr=0.1, dampening=1.5), r"dampening must be in \[0, 1\], got 1.5"),
    (dict(lr=0.1, nesterov=True), "nesterov momentum requires momentum > 0"),
    (dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1), "dampening=0.1"),
])
def test_sgd_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(_make_params(0), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\), got 1.0"),
    (dict(betas=(0.9, -0.1)), r"betas\[1\] must be in \[0, 1\), got -0.1"),
    (dict(betas=0.9), "betas must be a pair"),
    (dict(eps=-1e-8), "eps must be >= 0, got -1e-08"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0, got -0.1"),
])
def test_adam_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam(_make_params(0), 0.1, **kwargs)


def test_bad_params():
    with pytest.raises(ValueError, match="empty"):
        SGD([], 0.1)
    with pytest.raises(ValueError, match="duplicate parameter key '0.W'"):
        SGD([("0.W", np.ones(2)), ("0.W", np.ones(2))], 0.1)
    with pytest.raises(ValueError, match="int64"):
        SGD([("0.W", np.ones(2, dtype=np.int64))], 0.1)


def test_build_optimizer():
    params = _make_params(0)
    assert isinstance(build_optimizer("sgd", params, 0.1, momentum=0.9), SGD)
    a = build_optimizer("adam", params, 0.1)
    assert isinstance(a, Adam) and not a.decoupled and a.weight_decay == 0.0
    w = build_optimizer("AdamW", params, 0.1)
    assert w.decoupled and w.weight_decay == 1e-2  # torch.optim.AdamW default
    assert build_optimizer("adamw", params, 0.1, weight_decay=0.0).weight_decay == 0.0
    with pytest.raises(ValueError, match="'rmsprop'.*sgd, adam, adamw"):
        build_optimizer("rmsprop", params, 0.1)
    with pytest.raises(ValueError, match="'momentum'.*'adam'"):
        build_optimizer("adam", params, 0.1, momentum=0.9)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
def test_constant_schedule():
    s = build_schedule("constant", 0.1, epochs=3, steps_per_epoch=7)
    assert [s(i) for i in (0, 5, 20, 100)] == [0.1] * 4


def test_step_schedule_default_milestones():
    s = build_schedule("step", 0.1, epochs=100, steps_per_epoch=10)
    assert s(0) == 0.1 and s(499) == 0.1
    assert s(500) == pytest.approx(0.01, rel=1e-15) and s(749) == pytest.approx(0.01, rel=1e-15)
    assert s(750) == pytest.approx(0.001, rel=1e-15) and s(999) == pytest.approx(0.001, rel=1e-15)


def test_step_schedule_matches_torch_multistep():
    epochs, spe = 12, 5
    s = build_schedule("step", 0.3, epochs=epochs, steps_per_epoch=spe, milestones=[3, 7, 7, 10], gamma=0.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 7, 7, 10], gamma=0.5)
    for e in range(epochs):
        want = opt.param_groups[0]["lr"]
        for b in range(spe):
            assert s(e * spe + b) == pytest.approx(want, rel=1e-14)
        opt.step()
        sched.step()


def test_cosine_schedule_matches_torch_and_is_monotone():
    epochs, spe = 4, 25
    T = epochs * spe
    s = build_schedule("cosine", 0.2, epochs=epochs, steps_per_epoch=spe, min_lr=0.01)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=0.01)
    vals = []
    for i in range(T):
        vals.append(s(i))
        assert vals[-1] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-10, abs=1e-14)
        opt.step()
        sched.step()
    assert vals[0] == 0.2
    assert s(T // 2) == pytest.approx(0.105, rel=1e-14)
    assert s(T) == pytest.approx(0.01, rel=1e-14) and s(10 * T) == pytest.approx(0.01, rel=1e-14)
    assert all(b <= a for a, b in zip(vals, vals[1:]))
    assert vals[-1] > 0.01


def test_warmup():
    s = build_schedule("cosine", 0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2)
    assert s(0) == pytest.approx(0.1 / 20) and s(9) == pytest.approx(0.05)
    assert s(19) == pytest.approx(0.1) and s(20) == pytest.approx(0.1)
    assert s(60) == pytest.approx(0.05)  # halfway through the 80 cosine steps
    vals = [s(i) for i in range(20, 100)]
    assert all(b <= a for a, b in zip(vals, vals[1:]))
    c = build_schedule("constant", 0.1, epochs=4, steps_per_epoch=4, warmup_epochs=0.5)
    assert [c(i) for i in range(3)] == pytest.approx([0.05, 0.1, 0.1])


@pytest.mark.parametrize("name,kw,match", [
    ("linear", {}, "'linear'.*constant, step, cosine"),
    ("constant", dict(base_lr=0.0), "base_lr must be > 0, got 0.0"),
    ("constant", dict(epochs=0), "epochs must be >= 1, got 0"),
    ("constant", dict(steps_per_epoch=-3), "steps_per_epoch must be >= 1, got -3"),
    ("step", dict(gamma=0.0), "gamma must be > 0, got 0.0"),
    ("step", dict(milestones=[0, 3]), "milestone must be >= 1, got 0"),
    ("step", dict(milestones=[2.5]), "milestone must be an integer, got 2.5"),
    ("cosine", dict(min_lr=0.5), "min_lr must be <= base_lr.*got 0.5"),
    ("cosine", dict(min_lr=-0.1), "min_lr must be >= 0, got -0.1"),
    ("cosine", dict(warmup_epochs=10), "warmup_epochs must be < epochs.*got 10"),
])
def test_schedule_bad_arguments(name, kw, match):
    args = dict(base_lr=0.1, epochs=10, steps_per_epoch=5)
    args.update(kw)
    base_lr = args.pop("base_lr")
    with pytest.raises(ValueError, match=match):
        build_schedule(name, base_lr, **args)


def test_schedule_bad_step():
    s = build_schedule("constant", 0.1, epochs=1, steps_per_epoch=1)
    with pytest.raises(ValueError, match="-1"):
        s(-1)


# ---------------------------------------------------------------------------------------------
# GPU: the same code on CuPy arrays gives the NumPy numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs cupy and a CUDA GPU")
@pytest.mark.parametrize("make", [lambda p: SGD(p, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                  lambda p: Adam(p, 0.05, weight_decay=1e-2),
                                  lambda p: Adam(p, 0.05, weight_decay=1e-2, decoupled=True)])
def test_cupy_matches_numpy(make):
    cp = resolve_backend("cupy")
    params = _make_params(2)
    grads = _grad_stream(3, params, 10, skip_prob=0.2)
    dparams = [(k, cp.asarray(p)) for k, p in params]
    dgrads = [{k: cp.asarray(v) for k, v in g.items()} for g in grads]
    host, dev = make(params), make(dparams)
    for g, dg in zip(grads, dgrads):
        host.step(g)
        dev.step(dg)
    for (k, a), (_, b) in zip(params, dparams):
        assert isinstance(b, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(b), a, rtol=0, atol=1e-12)
    sd = dev.state_dict()
    assert all(isinstance(v, (int, np.ndarray)) for v in sd.values())
    fresh = make([(k, cp.asarray(p)) for k, p in params])
    fresh.load_state_dict(sd)
    assert all(isinstance(a, cp.ndarray) for a in fresh._state["m" if "m" in fresh._state else "buf"].values())
