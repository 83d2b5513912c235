"""The fused device kernels (ssaref/ops/kernels.py), executed by the strict stand-in's ``ElementwiseKernel``.

* the stand-in's ``ElementwiseKernel`` behaves as CuPy's where the engine relies on it (type placeholders bound by
  the arrays, scalars cast, broadcasting, outputs updated in place or allocated, one launch) and refuses what is
  outside the restricted C subset;
* every optimiser's fused update matches its NumPy path in float64 and float32 over several steps (bit for bit on
  the stand-in: both run the one body of ``kernels.adam`` / ``kernels.sgd``, NumPy through ``kernels.evaluate``),
  and a planted wrong term moves both paths alike;
* ``kernels.program`` turns Adam's body into the NumPy path's former ufunc sequence, ``kernels.evaluate`` gives the
  stand-in kernel's bits for every body of the catalogue, and refuses bodies outside the subset.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import _strictxp as S
from ssaref.ops import kernels
from ssaref.optim import build_optimizer

xp = S.install()


# ------------------------------------------------------------------------------------------ the stand-in
def test_elementwise_kernel_binds_types_broadcasts_and_counts_one_launch():
    k = xp.ElementwiseKernel("T x, T y, T a", "T z", "T d = x - y;\nz = d * d * a;", "sqdiff")
    x = S.device(np.arange(6.0).reshape(2, 3))
    y = S.device(np.arange(3.0))
    S.reset()
    z = k(x, y, 2.0)                                         # outputs allocated with the broadcast shape
    assert S.COUNT.launches == 1
    np.testing.assert_array_equal(z.get(), 2.0 * (np.arange(6.0).reshape(2, 3) - np.arange(3.0)) ** 2)
    out = xp.zeros((2, 3))
    assert k(x, y, 1.0, out) is out                          # a given output is written in place
    np.testing.assert_array_equal(out.get(), (np.arange(6.0).reshape(2, 3) - np.arange(3.0)) ** 2)
    # float32 arrays: the scalar is cast to T = float32, as CuPy does (and a NumPy ufunc with a Python float)
    x32, y32 = S.device(np.float32([1.0, 2.0])), S.device(np.float32([0.1, 0.2]))
    z32 = k(x32, y32, 0.1)
    assert z32.dtype == np.float32
    d = np.float32([1.0, 2.0]) - np.float32([0.1, 0.2])
    np.testing.assert_array_equal(z32.get(), d * d * np.float32(0.1))
    inplace = xp.ElementwiseKernel("T g, T c", "T p, T m", "m = m + g * c;\np = p - m;", "upd")
    p, m = S.device(np.ones(3)), S.device(np.full(3, 2.0))
    inplace(S.device(np.arange(3.0)), 0.5, p, m)             # outputs are read-write, statements in order
    np.testing.assert_array_equal(m.get(), 2.0 + 0.5 * np.arange(3.0))
    np.testing.assert_array_equal(p.get(), 1.0 - (2.0 + 0.5 * np.arange(3.0)))


def test_elementwise_kernel_refuses_what_cupy_or_the_subset_refuses():
    k = xp.ElementwiseKernel("T x, T y", "T z", "z = x + y;", "add2")
    with pytest.raises(TypeError, match="mismatched"):
        k(S.device(np.ones(2)), S.device(np.ones(2, np.float32)))       # one placeholder, two dtypes
    with pytest.raises(TypeError):
        k(S.device(np.ones(2)), np.ones(2))                              # a host array
    with pytest.raises(ValueError):
        k(S.device(np.ones(2)), S.device(np.ones(2)), xp.zeros(3))         # an output of another shape
    with pytest.raises(TypeError, match="number of arguments"):
        k(S.device(np.ones(2)))
    for body in ("z = x + 1.5;",            # a literal (a double in C)
                 "z = x + 2;",              # an int literal
                 "z = x > y ? x : y;",      # a ternary
                 "z = x ** y;",             # not C
                 "z = exp(x);",             # a function outside the subset
                 "x = y;",                  # inputs are const
                 "z = w + x;",              # unknown name
                 "z = x + y"):              # missing ';'
        with pytest.raises(ValueError):
            xp.ElementwiseKernel("T x, T y", "T z", body, "bad")
    with pytest.raises(ValueError, match="reserved"):
        xp.ElementwiseKernel("T i", "T z", "z = i;", "bad")


def test_every_kernel_body_is_in_the_subset():
    """Each kernel of ssaref.ops.kernels builds on the stand-in (its body passes the subset check)."""
    specs = kernels.catalogue()
    constants = [getattr(kernels, n) for n in kernels.__all__ if isinstance(getattr(kernels, n), kernels.Kernel)]
    assert set(constants) <= set(specs)
    for spec in specs:
        xp.ElementwiseKernel(spec.in_params, spec.out_params, spec.body, spec.name)


# ------------------------------------------------------------------------------------------ the optimisers
OPTIMIZERS = [
    ("adam", {}), ("adam", {"weight_decay": 0.1}), ("adamw", {}), ("adamw", {"weight_decay": 0.3}),
    ("sgd", {}), ("sgd", {"weight_decay": 0.1}), ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("sgd", {"momentum": 0.8, "nesterov": True}), ("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
]


def _trajectory(module, name, kw, steps=4, dtype=np.float64):
    rng = np.random.default_rng(0)
    shapes = {"W": (5, 4), "b": (4,), "s": (1,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()} for _ in range(steps)]
    if module is xp:
        params = {k: S.device(v) for k, v in params.items()}
        grads = [{k: S.device(v) for k, v in g.items()} for g in grads]
    opt = build_optimizer(name, list(params.items()), 1e-2, **kw)
    for t, g in enumerate(grads):
        if t == 2:
            g = {k: v for k, v in g.items() if k != "b"}     # a skipped parameter keeps its own step count
        opt.step(g, lr=1e-2 * (1 + t))
    host = lambda a: a.get() if isinstance(a, S.StrictArray) else a
    return {k: host(v) for k, v in params.items()}, {k: v for k, v in opt.state_dict().items()
                                                        if isinstance(v, np.ndarray)}


def _max_diff(name, kw, dtype=np.float64):
    (pd, sd), (ph, sh) = _trajectory(xp, name, kw, dtype=dtype), _trajectory(np, name, kw, dtype=dtype)
    assert set(sd) == set(sh)
    return max(float(np.max(np.abs(a[k] - b[k]))) for a, b in ((pd, ph), (sd, sh)) for k in b)


@pytest.mark.parametrize("name, kw", OPTIMIZERS)
def test_fused_optimiser_matches_the_numpy_path(name, kw):
    """Same operations in the same order: the same bits on the stand-in (a GPU may contract into FMAs)."""
    assert _max_diff(name, kw) == 0.0
    assert _max_diff(name, kw, np.float32) == 0.0            # float32: scalars cast to T, as NumPy's ufuncs do


@pytest.mark.parametrize("name, kw", OPTIMIZERS[:1] + OPTIMIZERS[-1:])
def test_fused_optimiser_is_one_launch_per_parameter(name, kw):
    rng = np.random.default_rng(0)
    params = [(k, S.device(rng.standard_normal(4))) for k in "abc"]
    opt = build_optimizer(name, params, 1e-2, **kw)
    grads = {k: S.device(rng.standard_normal(4)) for k, _ in params}
    opt.step(grads)
    S.reset()
    opt.step(grads)
    assert S.COUNT.launches == len(params)


@pytest.mark.parametrize("name, kw, table, key, old, new", [
    ("adam", {}, "_ADAM", "none", "m = m + (g - m) * c1;", "m = m + (g - m) * c2;"),
    ("adam", {"weight_decay": 0.1}, "_ADAM", "l2", "T gw = p * wd + g;", "T gw = p * wd - g;"),
    ("adamw", {}, "_ADAM", "decoupled", "p = p * decay;", "p = p * c1;"),
    ("sgd", {"momentum": 0.9, "nesterov": True}, "_SGD_APPLY", "nesterov", "buf * lrmom", "buf * lr"),
    ("sgd", {"momentum": 0.9, "dampening": 0.5}, "_SGD_BUF", "damped", "d * damp", "d"),
])
def test_a_planted_wrong_body_moves_both_paths(monkeypatch, name, kw, table, key, old, new):
    """The body is the update's one formula: a term changed in it changes the NumPy path and the fused one alike
    (they still agree bit for bit) and moves both off the unchanged trajectory, which tests/test_optim.py checks
    against torch.optim (so a wrong formula cannot hide in one path)."""
    right = _trajectory(np, name, kw)
    entries = getattr(kernels, table)
    spec = entries[key]
    if isinstance(spec, kernels.Kernel):
        assert old in spec.body
        monkeypatch.setitem(entries, key, dataclasses.replace(spec, body=spec.body.replace(old, new)))
    else:
        assert old in spec
        monkeypatch.setitem(entries, key, spec.replace(old, new))
    assert _max_diff(name, kw) == 0.0
    wrong = _trajectory(np, name, kw)
    assert max(float(np.max(np.abs(w[k] - r[k]))) for w, r in zip(wrong, right) for k in r) > 1e-6


# ------------------------------------------------------------------------------------------ the NumPy path
def test_the_adam_program_is_torchs_ufunc_sequence():
    """``kernels.program`` turns Adam's body into the ufunc calls the NumPy path made before the body was its one
    formula (the golden vectors' bits): the same operations in the same order, one scratch array (two for L2)."""
    g, c1, b2, c2, bc2, eps, step, p, m, v, s = range(11)
    moments = [("subtract", (g, m), s), ("multiply", (s, c1), s), ("add", (m, s), m),          # m += (g - m) c1
               ("multiply", (v, b2), v), ("multiply", (g, g), s), ("multiply", (s, c2), s),    # v = b2 v + c2 g g
               ("add", (v, s), v),
               ("sqrt", (v,), s), ("divide", (s, bc2), s), ("add", (s, eps), s),               # sqrt(v)/bc2 + eps
               ("divide", (m, s), s), ("multiply", (s, step), s), ("subtract", (p, s), p)]     # p -= m/denom step
    assert kernels.program(kernels.adam("none")) == kernels.Program(tuple(moments), 1)
    shift = lambda k: k if k == g else k + 1                                   # one more input (wd or decay)
    later = [(f, tuple(shift(a) for a in args), shift(o)) for f, args, o in moments]
    p1 = shift(p)
    assert kernels.program(kernels.adam("decoupled")) == kernels.Program(
        (("multiply", (p1, 1), p1), *later), 1)                                # p *= 1 - lr wd first
    # L2: gw = g + wd p in a second scratch array, then the moments on gw; after gw's last read (g g) its array
    # takes the temporaries (the former sequence used the first one: the same values)
    g, wd, c1, b2, c2, bc2, eps, step, p, m, v, gw, s = range(13)
    assert kernels.program(kernels.adam("l2")) == kernels.Program((
        ("multiply", (p, wd), gw), ("add", (gw, g), gw),
        ("subtract", (gw, m), s), ("multiply", (s, c1), s), ("add", (m, s), m),
        ("multiply", (v, b2), v), ("multiply", (gw, gw), gw), ("multiply", (gw, c2), gw), ("add", (v, gw), v),
        ("sqrt", (v,), gw), ("divide", (gw, bc2), gw), ("add", (gw, eps), gw),
        ("divide", (m, gw), gw), ("multiply", (gw, step), gw), ("subtract", (p, gw), p)), 2)


@pytest.mark.parametrize("spec", kernels.catalogue(), ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_evaluate_matches_the_stand_in_kernel(spec, dtype):
    """Every kernel body run by ``kernels.evaluate`` (ufuncs with ``out=`` into scratch arrays) gives the bits of
    the stand-in's ``ElementwiseKernel`` (the body executed statement by statement, as a kernel would)."""
    rng = np.random.default_rng(0)
    ins, outs = kernels._param_names(spec.in_params), kernels._param_names(spec.out_params)
    args = [rng.uniform(0.5, 2.0, (3, 4)).astype(dtype) if k % 2 == 0 else float(rng.uniform(0.5, 2.0))
            for k in range(len(ins))]
    if not any(isinstance(a, np.ndarray) for a in args):
        args[0] = rng.uniform(0.5, 2.0, (3, 4)).astype(dtype)
    starts = [rng.uniform(0.5, 2.0, (3, 4)).astype(dtype) for _ in outs]
    mine = [o.copy() for o in starts]
    scratch = [np.full((3, 4), np.nan, dtype) for _ in range(kernels.program(spec).n_scratch)]
    kernels.evaluate(np, spec, [*args, *mine], scratch)
    theirs = [S.device(o) for o in starts]
    xp.ElementwiseKernel(spec.in_params, spec.out_params, spec.body, spec.name)(
        *[S.device(a) if isinstance(a, np.ndarray) else a for a in args], *theirs)
    for a, b in zip(mine, theirs):
        np.testing.assert_array_equal(a, b.get())
        assert a.dtype == dtype


@pytest.mark.parametrize("body", [
    "T a = x * y;\nT b = a;\nz = b + a;\nT c = x + x;\nw = b * c;",   # a local copied, read after its source's end
    "T a = x;\nz = z * a + (z - a) * z;\nw = -(w * a) / sqrt(y);",     # an input aliased; targets read late
    "z = (z * x + z) * y;\nw = z - (w * x + w) * z;",                   # the target read in both operands
])
def test_evaluate_matches_the_stand_in_on_crafted_bodies(body):
    """Bodies that stress the placement of values (targets read after a partial write, locals past their last
    use, aliases): ``evaluate`` still gives the stand-in kernel's bits."""
    spec = kernels.Kernel("crafted", "T x, T y", "T z, T w", body)
    rng = np.random.default_rng(1)
    x, y, z, w = (rng.uniform(0.5, 2.0, 5) for _ in range(4))
    mine = [z.copy(), w.copy()]
    kernels.evaluate(np, spec, [x, y, *mine], [np.full(5, np.nan) for _ in range(kernels.program(spec).n_scratch)])
    theirs = [S.device(z), S.device(w)]
    xp.ElementwiseKernel(spec.in_params, spec.out_params, spec.body, spec.name)(S.device(x), S.device(y), *theirs)
    for a, b in zip(mine, theirs):
        np.testing.assert_array_equal(a, b.get())


def test_evaluate_refuses_bodies_outside_the_subset_and_short_arguments():
    for body in ("z = x + 1.5;", "z = x > y;", "z = exp(x);", "x = y;", "z = w + x;", "z = x + y", "z = = x;",
                 "T z = x;"):
        with pytest.raises(ValueError, match="kernel bad"):
            kernels.program(kernels.Kernel("bad", "T x, T y", "T z", body))
    add = kernels.Kernel("add2", "T x, T y", "T z", "z = x + y;")
    with pytest.raises(ValueError, match="every output given"):
        kernels.evaluate(np, add, [np.ones(2), np.ones(2)], [])
