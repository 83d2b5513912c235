"""The GPU code path on the CPU, through the strict CuPy stand-in (tests/_strictxp.py).

* the stand-in is strict: implicit conversions, host/device mixing and host reads inside ``no_sync`` fail, and a
  planted implicit conversion in an op is caught by a training step;
* every rule's step runs on it (mlp, a conv net, a residual BN net, SVD conv layers) and gives the NumPy run's
  updates;
* the sync budget: no rule's step (with the optimiser step and ``after_step``) reads the device except SSA's
  retraction (one read per step); no parameter or feedback is copied host->device inside a step;
* ``ssaref.train`` on the stand-in: one read per ``--log-every`` window, checkpoint written and resumed;
* the device-only branches of the ops and of ``linalg`` (fused kernels, window views, the transposed convolution as
  a forward one, batched orthogonality errors) give the NumPy path's numbers over the geometries they cover;
* the kernel launches per step stay within half of what they were before the device paths were fused.
"""
from __future__ import annotations

import numpy as np
import pytest

import _strictxp as S
from ssaref.nn import build_model
from ssaref.rules import RULES
from ssaref.run import build_run

xp = S.install()
F64 = np.float64

MODELS = {  # name -> (build_model name, input shape, options)
    "mlp": ("mlp", (1, 8, 8), {"hidden": (7, 6)}),
    "conv": ("convnet", (1, 8, 8), {"width_mult": 0.125}),
    "resbn": ("resnet20", (3, 8, 8), {"width_mult": 0.25}),
    "svdconv": ("lenet", (1, 28, 28), {"width_mult": 0.5}),
}
CASES = [(r, m) for r in sorted(RULES) for m in ("mlp", "conv", "resbn")
         if not (r == "pepita" and m != "mlp")] + [("ssa", "svdconv"), ("svd-bp", "svdconv")]
OPTS = {"ssa": {"angle_every": 0}}   # eq. (4) angle logging reads the device by design (a measurement)


def _run(rule, model, module, options=None):
    name, shape, kw = MODELS[model]
    m = build_model(name, shape, 5, xp=module, dtype=F64, seed=0, **kw)
    opts = OPTS.get(rule) if options is None else options
    run = build_run(m, rule, np.random.default_rng(2), options=opts, optimizer="adam", lr=1e-3)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8,) + shape), rng.integers(0, 5, 8)
    if module is xp:
        x, y = S.device(x), S.device(y)
    return run, x, y


def _host(a):
    return a.get() if isinstance(a, S.StrictArray) else np.asarray(a)


# ------------------------------------------------------------------------------------------- the stand-in
def test_the_standin_refuses_what_cupy_refuses():
    d = S.device(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(d)
    with pytest.raises(TypeError):
        np.ones((2, 3)) + d
    with pytest.raises(TypeError):
        d + np.ones((2, 3))
    with pytest.raises(TypeError):
        xp.concatenate([d, np.ones((2, 3))])
    s = d.sum()
    assert isinstance(s, S.StrictArray) and s.ndim == 0          # reductions stay on the device
    assert (d.T + 1.0).flags["C_CONTIGUOUS"]                     # elementwise results are C-contiguous
    with S.no_sync():
        with pytest.raises(S.SyncError):
            float(s)
        with pytest.raises(S.SyncError):
            d.get()
    assert not hasattr(xp, "fromstring") and hasattr(xp, "asnumpy")   # only CuPy's names


def test_a_planted_implicit_conversion_fails_the_step(monkeypatch):
    """An op that calls NumPy on its device input (the bug the stand-in exists to catch) breaks a BP step."""
    from ssaref.nn.layers import ReLU
    from ssaref.ops import activations

    run, x, y = _run("bp", "mlp", xp)
    run.train_step(x, y)   # fine as written
    real = activations.relu_forward
    monkeypatch.setattr(ReLU, "_fwd", staticmethod(lambda a: (np.maximum(a, 0), real(a)[1])))   # a planted bug
    with pytest.raises(TypeError):
        run.train_step(x, y)
    # the same planted op on NumPy arrays runs silently: only the stand-in catches it
    host, xh, yh = _run("bp", "mlp", np)
    host.train_step(xh, yh)


# --------------------------------------------------------------------------------- every rule, every model
@pytest.mark.parametrize("rule, model", CASES)
def test_every_rule_runs_on_the_standin_and_matches_numpy(rule, model):
    dev, xd, yd = _run(rule, model, xp)
    host, xh, yh = _run(rule, model, np)
    for _ in range(2):   # two steps: the optimiser state and after_step are exercised too
        rd = dev.train_step(xd, yd)
        rh = host.train_step(xh, yh)
        assert set(rd.updates) == set(rh.updates)
        for k, u in rh.updates.items():
            np.testing.assert_allclose(_host(rd.updates[k]), u, rtol=1e-10, atol=1e-12, err_msg=k)
        assert isinstance(rd.loss_value, S.StrictArray)   # the loss stays on the device
    for k, p in host.model.named_params():
        np.testing.assert_allclose(_host(dict(dev.model.named_params())[k]), p, rtol=1e-10, atol=1e-12)


RETRACTING = {"ssa"}   # SSA reads ||U^T U - I|| of every factor back once on a step that retracts (every 10th)


@pytest.mark.parametrize("rule, model", [c for c in CASES if c[1] in ("mlp", "resbn")])
def test_sync_and_copy_budget_of_a_step(rule, model):
    run, x, y = _run(rule, model, xp)
    run.train_step(x, y)          # the first step allocates optimiser state etc.
    S.reset()
    run.train_step(x, y)
    c = S.COUNT.snapshot()
    assert c["syncs"] <= (1 if rule in RETRACTING else 0), (c, S.COUNT.sync_sites[:2])
    assert c["d2h"] <= (1 if rule in RETRACTING else 0), c
    assert c["h2d"] == 0, c   # brSF included: its R_t is drawn on the device (ssaref.rng)


def test_brsf_host_draws_are_the_copies_the_device_stream_removes():
    """``--brsf-rng host`` (0.1.0's draws) copies every R_t to the device: the counter sees it."""
    name, shape, kw = MODELS["mlp"]
    m = build_model(name, shape, 5, xp=xp, dtype=F64, seed=0, **kw)
    run = build_run(m, "brsf", np.random.default_rng(2), options={"brsf_rng": "host"}, optimizer="adam", lr=1e-3)
    x, y = S.device(np.random.default_rng(0).standard_normal((8,) + shape)), S.device(np.arange(8) % 5)
    run.train_step(x, y)
    S.reset()
    run.train_step(x, y)
    assert S.COUNT.h2d >= 2


@pytest.mark.parametrize("rule", sorted(set(RULES) - RETRACTING))
def test_a_step_needs_no_host_read_at_all(rule):
    """Inside ``no_sync``: any read raises."""
    run, x, y = _run(rule, "mlp", xp)
    with S.no_sync():
        run.train_step(x, y)


def test_ssa_without_retraction_reads_nothing():
    name, shape, kw = MODELS["mlp"]
    m = build_model(name, shape, 5, xp=xp, dtype=F64, seed=0, **kw)
    run = build_run(m, "ssa", np.random.default_rng(2), options={"angle_every": 0, "retraction": "none"},
                    optimizer="adam", lr=1e-3)
    x, y = S.device(np.random.default_rng(0).standard_normal((8,) + shape)), S.device(np.arange(8) % 5)
    with S.no_sync():
        run.train_step(x, y)


# Kernel launches per step (the stand-in's count: every module function and array operation) at commit b140329,
# before the device path was fused (issue 13, "fewer launches"): float64, batch 8, Adam, the models above; SSA
# with the retraction after every step (that commit's default).  Measured with this file's _run at that commit.
LAUNCHES_BEFORE = {("bp", "mlp"): 116, ("bp", "resbn"): 3488, ("dfa", "mlp"): 118, ("dfa", "resbn"): 3009,
                   ("ssa", "mlp"): 557, ("ssa", "resbn"): 6848}
# the budget: at most half of that, except SSA on the MLP, where what remains is mostly the rule's own elementwise
# arithmetic in ssaref/rules (U, s, V directions, eq. (8)-(9) terms, update norms: ~200 launches, outside the ops,
# optimiser and linalg that were fused), so at most 3/5 of it
LAUNCH_BUDGET = {case: n * (3 / 5 if case == ("ssa", "mlp") else 1 / 2) for case, n in LAUNCHES_BEFORE.items()}


def test_launch_counts_per_step_are_reported(capsys):
    """Kernel launches per step as the stand-in counts them (every module function and array operation), within
    the budget above."""
    rows = []
    for rule, model in LAUNCHES_BEFORE:
        options = {"angle_every": 0, "orthogonality": "retract"} if rule == "ssa" else None
        run, x, y = _run(rule, model, xp, options)
        run.train_step(x, y)
        S.reset()
        run.train_step(x, y)
        rows.append((rule, model, S.COUNT.launches))
    with capsys.disabled():
        print("\nlaunches per step (before -> now):",
              ", ".join(f"{r}/{m}={LAUNCHES_BEFORE[r, m]}->{n}" for r, m, n in rows))
    assert all(0 < n <= LAUNCH_BUDGET[r, m] for r, m, n in rows), rows


# ------------------------------------------------------------------------------- device-only branches of the ops
def _same(dev, host, tol=1e-12):
    if isinstance(host, (tuple, list)):
        for d, h in zip(dev, host):
            _same(d, h, tol)
    elif isinstance(host, np.ndarray):
        d = _host(dev)
        assert d.shape == host.shape and d.dtype == host.dtype, (d.shape, host.shape, d.dtype, host.dtype)
        np.testing.assert_allclose(d, host, rtol=tol, atol=tol)


def _batch_innermost(a):
    """``a`` (N, C, H, W) with (C, H, W, N) memory, as conv outputs are."""
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


def _dev_like(a):
    """``a`` on the stand-in with the same memory order (batch-innermost stays batch-innermost)."""
    if a.ndim == 4 and not a.flags.c_contiguous and a.transpose(1, 2, 3, 0).flags.c_contiguous:
        return S.device(np.ascontiguousarray(a.transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2)
    return S.device(a)


CONV_GEOMETRIES = [(k, st, pad) for k in ((1, 1), (3, 3), (5, 5), (3, 1), (1, 3)) for st in (1, 2, (2, 1))
                   for pad in (0, 1, 2, (0, 2))]


@pytest.mark.parametrize("kernel, stride, padding", CONV_GEOMETRIES)
def test_device_conv_matches_numpy(kernel, stride, padding):
    """im2col as one window gather, the input gradient as the correlation of the dilated, padded dy with the
    flipped kernel (every stride, padding wider than the kernel included: the index algebra of conv.py), the
    GEMMs as tensordot: the NumPy path's numbers."""
    from ssaref.ops import conv

    rng = np.random.default_rng(sum(map(hash, (kernel, stride, padding))) % 2**32)
    x = rng.standard_normal((3, 2, 7, 6))
    W, B, b = rng.standard_normal((4, 2) + kernel), rng.standard_normal((4, 2) + kernel), rng.standard_normal(4)
    for xin in (x, _batch_innermost(x)):
        y, cache = conv.conv2d_forward(xin, W, b, stride, padding)
        dy = rng.standard_normal(y.shape)
        yd, cache_d = conv.conv2d_forward(_dev_like(xin), S.device(W), S.device(b), stride, padding)
        _same(yd, y)
        for d in (dy, _batch_innermost(dy)):
            _same(conv.conv2d_backward_input(_dev_like(d), S.device(B), cache_d),
                  conv.conv2d_backward_input(d, B, cache))
            _same(conv.conv2d_backward_params(_dev_like(d), cache_d), conv.conv2d_backward_params(d, cache))
    y0, c0 = conv.conv2d_forward(x, W, None, stride, padding)
    _, c0d = conv.conv2d_forward(S.device(x), S.device(W), None, stride, padding)
    d0 = rng.standard_normal(y0.shape)
    assert conv.conv2d_backward_params(S.device(d0), c0d)[1] is None
    _same(conv.conv2d_backward_params(S.device(d0), c0d), conv.conv2d_backward_params(d0, c0))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kernel, stride, padding",
                         [(2, None, 0), (2, 2, 1), (3, 3, 1), (3, 2, 1), ((2, 3), 1, (1, 1))])
@pytest.mark.parametrize("ties", [False, True])
def test_device_pool_matches_numpy(kind, kernel, stride, padding, ties):
    """Window view + one argmax/max (sum); disjoint windows written back through the view of dx, overlapping ones
    by the per-offset scatter; ties to the first maximum in row-major window order, as the NumPy path."""
    from ssaref.ops import pool

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 7, 6))
    x = np.round(x) if ties else x
    fwd, bwd = getattr(pool, f"{kind}pool2d_forward"), getattr(pool, f"{kind}pool2d_backward")
    for xin in (x, _batch_innermost(x)):
        y, cache = fwd(xin, kernel, stride, padding)
        yd, cache_d = fwd(_dev_like(xin), kernel, stride, padding)
        _same(yd, y)
        dy = rng.standard_normal(y.shape)
        for d in (dy, _batch_innermost(dy)):
            _same(bwd(_dev_like(d), cache_d), bwd(d, cache))


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_device_batchnorm_matches_numpy(shape, dtype):
    """The fused forward (two reductions, three kernels) and backward (three reductions, one kernel): the general
    path's operations in the same order (NumPy's blocked row path may sum in another order: float32 to rounding)."""
    from ssaref.ops import norm

    rng = np.random.default_rng(2)
    x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    g, b, rm, rv = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(4))
    rv, tol = np.abs(rv), (1e-12 if dtype == np.float64 else 1e-5)
    for xin in ((x,) if len(shape) == 2 else (x, _batch_innermost(x))):
        for train in (True, False):
            out = norm.batchnorm_forward(xin, g, b, rm, rv, train=train)
            out_d = norm.batchnorm_forward(_dev_like(xin), *(S.device(a) for a in (g, b, rm, rv)), train=train)
            _same([out_d[0], out_d[2], out_d[3]] + list(out_d[1][:3]), [out[0], out[2], out[3]] + list(out[1][:3]),
                  tol)
            for need_dx in (True, False):
                _same(norm.batchnorm_backward(S.device(dy), out_d[1], need_dx),
                      norm.batchnorm_backward(dy, out[1], need_dx), tol)


def test_device_linalg_matches_numpy():
    """Batched orthogonality errors (widths and shapes grouped), the Newton-Schulz and exact (eigh) retraction
    steps, sym and the Hoyer gradient as kernels: the NumPy path's numbers."""
    from ssaref import linalg

    rng = np.random.default_rng(3)
    Xs = [np.linalg.qr(rng.standard_normal(s))[0] + 1e-3 * rng.standard_normal(s)
          for s in [(9, 4)] * 4 + [(7, 4), (9, 3), (9, 3), (5, 5)]]
    Xs.append(rng.standard_normal((8, 3)))                     # far from the manifold: the exact (eigh) step
    np.testing.assert_allclose(linalg.orthogonality_errors([S.device(X) for X in Xs]),
                               linalg.orthogonality_errors(Xs), rtol=1e-12)
    for X in Xs:
        for kw in ({}, {"check_every": None, "error": linalg.orthogonality_error(X)}):
            _same(linalg.retract(S.device(X), return_error=True, **kw)[0],
                  linalg.retract(X, return_error=True, **kw)[0])
    M, s = rng.standard_normal((4, 4)), rng.standard_normal(6)
    _same(linalg.sym(S.device(M)), linalg.sym(M), 0)
    G = rng.standard_normal((9, 4))
    _same(linalg.tangent_project(S.device(Xs[0]), S.device(G)), linalg.tangent_project(Xs[0], G))
    _same(linalg.hoyer_grad(S.device(s)), linalg.hoyer_grad(s))
    _same(linalg.hoyer_grad(S.device(s.astype(np.float32))), linalg.hoyer_grad(s.astype(np.float32)), 1e-6)


# ------------------------------------------------------------------------------------------ the training loop
def _train_on_standin(monkeypatch, argv):
    from ssaref import train as train_mod

    monkeypatch.setattr(train_mod, "resolve_backend", lambda name: xp)
    S.reset()
    assert train_mod.main(argv) == 0
    return S.COUNT.snapshot()


@pytest.mark.parametrize("rule", ["bp", "dfa", "svd-bp", "ssa"])
def test_training_loop_reads_once_per_log_window(rule, monkeypatch, tmp_path, capsys):
    """Host reads grow with the number of steps by one per --log-every window (plus SSA's one per step): measured
    as the difference between two runs of 2 and of 6 steps, epoch-end reads cancelling out."""
    base = ["--method", rule, "--dataset", "synthetic", "--test-limit", "32", "--batch-size", "32", "--hidden",
            "16", "--epochs", "1", "--no-progress", "--dtype", "float64"]
    if rule == "ssa":   # the retraction after every step (its one read per step; the default retracts every 10th)
        base += ["--angle-every", "0", "--rank-schedule", "none", "--orthogonality", "retract"]
    per_step = {}
    for every in ("1", "4"):
        a = _train_on_standin(monkeypatch, base + ["--train-limit", "64", "--log-every", every])
        b = _train_on_standin(monkeypatch, base + ["--train-limit", "192", "--log-every", every])
        per_step[every] = (b["syncs"] - a["syncs"]) / 4   # 4 more steps
    own = 1 if rule == "ssa" else 0
    assert per_step["1"] == 1 + own, per_step          # the loss read of every step
    assert per_step["4"] == 0.25 + own, per_step       # one read per 4 steps
    capsys.readouterr()


@pytest.mark.parametrize("augment", ["off", "on"])
def test_data_on_the_device_copies_once_and_gives_the_same_run(augment, monkeypatch, tmp_path, capsys):
    """``--data-on-device on``: the data sets cross once, then one small copy per epoch (its order; with augmentation
    also the host-drawn offsets and flips of every batch), instead of two per batch plus every evaluation batch;
    the run is the same to the bit (``off`` copies each batch as before)."""
    from ssaref.runlog import read_run

    base = ["--method", "dfa", "--dataset", "synthetic", "--test-limit", "32", "--batch-size", "32", "--model",
            "lenet", "--epochs", "2", "--no-progress", "--dtype", "float64", "--augment", augment,
            "--val-split", "0.25"]
    copies, params = {}, {}
    for where in ("on", "off"):
        for n in (128, 256):
            out = tmp_path / f"{where}{n}.h5"
            c = _train_on_standin(monkeypatch, base + ["--train-limit", str(n), "--data-on-device", where,
                                                       "--out", str(out)])
            copies[(where, n)] = c["h2d"]
            params[(where, n)] = read_run(out)[2]["params"]
    for n in (128, 256):
        for k, v in params[("off", n)].items():
            np.testing.assert_array_equal(params[("on", n)][k], v, err_msg=k)
    more_steps = 2 * (256 - 128) * 3 // 4 // 32          # 3 more training steps per epoch, 2 epochs
    per_batch = 1 if augment == "on" else 0              # the batch's offsets and flips, one (3, N) array
    assert copies[("on", 256)] - copies[("on", 128)] == per_batch * more_steps, copies
    assert copies[("off", 256)] - copies[("off", 128)] >= 2 * more_steps, copies       # x and y of every batch
    capsys.readouterr()


@pytest.mark.parametrize("case", ["bp__res__default", "dfa__conv__default", "brsf__mlp__default",
                                  "ssa__conv__every2", "svd-bp__mlp__sgd1", "pepita__mlp__default",
                                  "fa__conv2__default", "ssa__conv__paper-every10"])
def test_golden_export_on_the_standin_matches_the_host_export(case):
    """A golden case computed on the device (``ssaref.vectors export --backend cupy``) holds the host's numbers."""
    from ssaref import vectors as V

    spec = next(s for s in V.case_specs() if V.case_name(s["rule"], s["model"], s["variant"]) == case)
    args = (spec["rule"], spec["model"], spec["variant"], spec["options"])
    host, dev = V.compute_case(*args), V.compute_case(*args, xp=xp)
    assert host["attrs"] == dev["attrs"] and list(host["datasets"]) == list(dev["datasets"])
    for k, a in host["datasets"].items():
        assert type(dev["datasets"][k]) is np.ndarray, k
        np.testing.assert_allclose(dev["datasets"][k], a, rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("what, kw", [("run_ssa", dict(steps=15)), ("run_ssa", dict(variant="paper", steps=15)),
                                      ("run_rank_schedule", dict(epochs=3, steps_per_epoch=4))])
def test_audit_engine_runs_on_the_standin_match_numpy(what, kw):
    """The audit's engine items (``python -m ssaref.audit --backend cupy``) run their training on the device: the
    same records as on NumPy."""
    from ssaref.audit import dynamics

    a, b = getattr(dynamics, what)(xp=np, **kw), getattr(dynamics, what)(xp=xp, **kw)
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_allclose(b[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
        else:
            assert b[k] == v, k


def test_checkpoint_and_resume_on_the_standin(monkeypatch, tmp_path, capsys):
    from ssaref.runlog import read_run

    out = tmp_path / "r.h5"
    base = ["--method", "ssa", "--dataset", "synthetic", "--train-limit", "96", "--test-limit", "32",
            "--batch-size", "32", "--hidden", "16", "--no-progress", "--dtype", "float64"]
    _train_on_standin(monkeypatch, base + ["--epochs", "1", "--out", str(out)])
    _train_on_standin(monkeypatch, base + ["--epochs", "2", "--resume", str(out)])
    ref = tmp_path / "ref.h5"
    from ssaref import train as train_mod

    monkeypatch.undo()
    assert train_mod.main(base + ["--epochs", "2", "--out", str(ref)]) == 0
    a, b = read_run(out)[2], read_run(ref)[2]
    for k, v in b["params"].items():
        np.testing.assert_allclose(a["params"][k], v, rtol=1e-10, atol=1e-12, err_msg=k)
    capsys.readouterr()


def test_the_standin_exposes_only_cupy_13_names():
    """Every name of the stand-in's module is in CuPy 13's namespace (tests/cupy13_namespace.txt, read off the
    cupy-cuda12x 13.6.0 wheel's ``cupy/__init__.py`` and ``cupy/linalg/__init__.py``)."""
    from pathlib import Path

    saved = {ln.strip() for ln in (Path(__file__).parent / "cupy13_namespace.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    assert {"asnumpy", "ndarray", "concatenate", "linalg.norm"} <= saved
    assert set(S.CUPY13_NAMES) - saved == set()
    assert {f"linalg.{n}" for n in S._LINALG} - saved == set()


@pytest.mark.parametrize("xshape", [(6, 3), (4, 3, 5, 5)])
def test_sync_bn_reads_nothing_back_and_matches_identical_replicas(xshape, rng):
    """``--sync-bn``'s statistics (``distributed.CrossReplicaStats``) on a device: forward and backward of a
    BatchNorm layer without a single host read (``no_sync``), and with two identical replicas (an allreduce that
    doubles) the same result as one replica's batch alone."""
    from ssaref import distributed
    from ssaref.ops import norm

    class TwoIdentical(distributed.Comm):
        rank, size = 0, 2

        def allreduce_sum(self, flat, what="allreduce"):
            return flat * 2.0

    stats = distributed.CrossReplicaStats(TwoIdentical())
    stats.set_batch(xshape[0], 2 * xshape[0])
    C = xshape[1]
    x, dy = rng.standard_normal(xshape), rng.standard_normal(xshape)
    g, b, rm, rv = rng.uniform(0.5, 2, C), rng.standard_normal(C), np.zeros(C), np.ones(C)
    ref = norm.batchnorm_forward(S.device(x), *(S.device(a) for a in (g, b, rm, rv)), train=True)
    ref_dx = norm.batchnorm_backward(S.device(dy), ref[1])
    S.reset()
    with S.no_sync():
        out = norm.batchnorm_forward(S.device(x), *(S.device(a) for a in (g, b, rm, rv)), train=True, group=stats)
        dx = norm.batchnorm_backward(S.device(dy), out[1])
    assert S.COUNT.syncs == 0
    # the running variance's unbiasing uses the global count: n/(n-1) with n twice the local one
    n = x.size // C
    np.testing.assert_allclose(out[3].get(), 0.9 + 0.1 * x.var(axis=tuple(i for i in range(x.ndim) if i != 1))
                               * (2 * n) / (2 * n - 1), rtol=1e-12)
    np.testing.assert_allclose(out[0].get(), ref[0].get(), rtol=1e-12, atol=1e-12)
    for a, r in zip(dx, ref_dx):
        np.testing.assert_allclose(a.get(), r.get(), rtol=1e-10, atol=1e-12)


def _real_cupy():
    """The installed ``cupy`` (imports without a GPU), or a skip -- a failure when ``SSAREF_REQUIRE_NVRTC=1`` (CI
    installs the gpu extra)."""
    import os
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cupy
            import cupy.linalg  # noqa: F401
    except ImportError as exc:
        if os.environ.get("SSAREF_REQUIRE_NVRTC") == "1":
            pytest.fail(f"SSAREF_REQUIRE_NVRTC=1 but cupy does not import ({exc})")
        pytest.skip(f"needs cupy installed (the gpu extra; no GPU needed): {exc}")
    return cupy


def test_the_standin_names_exist_in_the_installed_cupy():
    """Every name the stand-in exposes -- top level, ``linalg``, and the fake ``cuda``'s functions, classes and
    their members -- exists in the real ``import cupy`` of this machine (CuPy 14, the gpu extra's), so code that
    runs on the stand-in does not call something CuPy lacks."""
    cupy = _real_cupy()
    assert int(cupy.__version__.split(".")[0]) == 14, cupy.__version__
    missing = [n for n in S.CUPY13_NAMES if not hasattr(cupy, n)]
    missing += [f"linalg.{n}" for n in S._LINALG if not hasattr(cupy.linalg, n)]
    for name in ("ndarray", "lib.stride_tricks.as_strided"):
        obj = cupy
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            missing.append(name)
    fake = S.xp.cuda
    for name in ("Device", "Stream", "Event", "get_current_stream", "get_elapsed_time", "runtime.getDeviceCount",
                 "runtime.getDevice", "runtime.deviceSynchronize"):
        head, _, tail = name.rpartition(".")
        real_ns, fake_ns = (cupy.cuda.runtime, fake.runtime) if head else (cupy.cuda, fake)
        assert hasattr(fake_ns, tail), name
        if not hasattr(real_ns, tail):
            missing.append(f"cuda.{name}")
    for cls, members in ((cupy.cuda.Device, ("use", "synchronize", "mem_info", "compute_capability", "id")),
                         (cupy.cuda.Stream, ("synchronize", "record", "use", "null")),
                         (cupy.cuda.Event, ("record", "synchronize", "done"))):
        fake_cls = getattr(fake, cls.__name__)
        for m in members:
            if not hasattr(cls, m):
                missing.append(f"cuda.{cls.__name__}.{m}")
            assert hasattr(fake_cls, m) or m == "id", (cls.__name__, m)
    assert missing == []


def test_the_standin_refuses_host_data_where_cupy_does():
    """``ascontiguousarray``/``asfortranarray`` of host data are TypeErrors in CuPy (typed Cython arguments), unlike
    ``asarray``/``array`` (a host->device copy); the stand-in does the same."""
    host = np.arange(6.0).reshape(2, 3)
    for fn in (xp.ascontiguousarray, xp.asfortranarray):
        with pytest.raises(TypeError, match="incorrect type"):
            fn(host)
        with pytest.raises(TypeError):
            fn([1.0, 2.0])
        assert isinstance(fn(S.device(host).T), S.StrictArray)
    assert isinstance(xp.asarray(host), S.StrictArray) and isinstance(xp.array(host), S.StrictArray)


def test_the_fake_cuda_counts_synchronisations_and_times_events():
    """The stand-in's ``xp.cuda``: one device with ``mem_info``, synchronisations counted, events timed."""
    S.reset()
    dev = xp.cuda.Device()
    dev.use()
    free, total = dev.mem_info
    assert 0 < free <= total and xp.cuda.runtime.getDeviceCount() == 1
    with pytest.raises(RuntimeError):
        xp.cuda.Device(1)
    a, b = xp.cuda.Event(), xp.cuda.Event()
    a.record()
    with S.simulate_async(2e-3):
        S.device(np.ones(3)) * 2.0
        b.record()
        b.synchronize()
    dev.synchronize()
    xp.cuda.get_current_stream().synchronize()
    xp.cuda.runtime.deviceSynchronize()
    assert S.COUNT.device_syncs == 4 and xp.cuda.get_elapsed_time(a, b) >= 2.0
