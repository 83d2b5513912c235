"""Every op on cupy arrays against the same op on numpy arrays (float64, forward and backward).

Marked ``gpu``: skipped (by conftest.py) where ``ssaref.backend.cupy_available()`` is False.
cupy is reached only through ``ssaref.backend.resolve_backend``.
"""
from __future__ import annotations

import numpy as np
import pytest

from ssaref.backend import asnumpy, resolve_backend
from ssaref.ops import activations as act
from ssaref.ops import conv, im2col, linear, losses, norm, pool

pytestmark = pytest.mark.gpu
TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def cp():
    return resolve_backend("cupy")


def assert_same(gpu, host):
    """Compare a (possibly nested) result computed on the GPU with its host twin."""
    if isinstance(host, (tuple, list)):
        assert len(gpu) == len(host)
        for g, h in zip(gpu, host):
            assert_same(g, h)
    elif host is None:
        assert gpu is None
    elif isinstance(host, np.ndarray):
        assert type(gpu).__module__.startswith("cupy"), type(gpu)
        assert gpu.dtype == host.dtype
        np.testing.assert_allclose(asnumpy(gpu), host, **TOL)
    elif isinstance(host, float):
        np.testing.assert_allclose(gpu, host, **TOL)


def on(cp, *arrays):
    return [None if a is None else cp.asarray(a) for a in arrays]


def test_linear(cp, rng):
    x, W, b, dy = (rng.standard_normal(s) for s in [(5, 4), (3, 4), (3,), (5, 3)])
    xg, Wg, bg, dyg = on(cp, x, W, b, dy)
    assert_same(linear.linear_forward(xg, Wg, bg), linear.linear_forward(x, W, b))
    assert_same(linear.linear_backward_input(dyg, Wg), linear.linear_backward_input(dy, W))
    assert_same(linear.linear_backward_params(dyg, xg), linear.linear_backward_params(dy, x))


def test_im2col_col2im(cp, rng):
    x = rng.standard_normal((2, 3, 7, 6))
    col = im2col.im2col(x, 3, 2, 2, 1, 1, 0)
    assert_same(im2col.im2col(cp.asarray(x), 3, 2, 2, 1, 1, 0), col)
    assert_same(im2col.col2im(cp.asarray(col), 2, 1, 1, 0, 7, 6), im2col.col2im(col, 2, 1, 1, 0, 7, 6))


@pytest.mark.parametrize("stride, padding", [(1, 0), (1, 1), (2, 1), ((2, 1), (0, 2))])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(cp, rng, stride, padding, bias):
    x, W, B = (rng.standard_normal(s) for s in [(3, 2, 8, 7), (4, 2, 3, 3), (4, 2, 3, 3)])
    b = rng.standard_normal(4) if bias else None
    y, cache = conv.conv2d_forward(x, W, b, stride, padding)
    dy = rng.standard_normal(y.shape)
    xg, Wg, bg, Bg, dyg = on(cp, x, W, b, B, dy)
    yg, cache_g = conv.conv2d_forward(xg, Wg, bg, stride, padding)
    assert_same(yg, y)
    assert_same(conv.conv2d_backward_input(dyg, Wg, cache_g), conv.conv2d_backward_input(dy, W, cache))
    assert_same(conv.conv2d_backward_input(dyg, Bg, cache_g), conv.conv2d_backward_input(dy, B, cache))
    assert_same(conv.conv2d_backward_params(dyg, cache_g), conv.conv2d_backward_params(dy, cache))
    # the batch-innermost output fed to a second conv, as in a network
    W2 = rng.standard_normal((3, 4, 2, 2))
    assert_same(conv.conv2d_forward(yg, cp.asarray(W2))[0], conv.conv2d_forward(y, W2)[0])


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), ((2, 3), 1, (1, 1))])
@pytest.mark.parametrize("ties", [False, True])
def test_pool(cp, rng, kind, kernel, stride, padding, ties):
    fwd = getattr(pool, f"{kind}pool2d_forward")
    bwd = getattr(pool, f"{kind}pool2d_backward")
    x = rng.standard_normal((2, 3, 7, 8))
    x = np.round(x) if ties else x
    for xh in (x, conv.conv2d_forward(x, np.ones((3, 3, 1, 1)))[0]):   # NCHW and batch-innermost
        y, cache = fwd(xh, kernel, stride, padding)
        dy = rng.standard_normal(y.shape)
        yg, cache_g = fwd(cp.asarray(xh), kernel, stride, padding)
        assert_same(yg, y)
        assert_same(bwd(cp.asarray(dy), cache_g), bwd(dy, cache))


def test_global_avgpool(cp, rng):
    x, dy = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3))
    y, cache = pool.global_avgpool_forward(x)
    yg, cache_g = pool.global_avgpool_forward(cp.asarray(x))
    assert_same(yg, y)
    assert_same(pool.global_avgpool_backward(cp.asarray(dy), cache_g),
                pool.global_avgpool_backward(dy, cache))


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "flatten"])
def test_activations(cp, rng, name):
    fwd, bwd = getattr(act, f"{name}_forward"), getattr(act, f"{name}_backward")
    x = rng.standard_normal((3, 2, 4)) * 5
    y, cache = fwd(x)
    dy = rng.standard_normal(y.shape)
    yg, cache_g = fwd(cp.asarray(x))
    assert_same(yg, y)
    assert_same(bwd(cp.asarray(dy), cache_g), bwd(dy, cache))


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm(cp, rng, shape, train):
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    g, b, m = (rng.standard_normal(3) for _ in range(3))
    v = rng.uniform(0.5, 2.0, 3)
    y, cache, nm, nv = norm.batchnorm_forward(x, g, b, m, v, train=train)
    yg, cache_g, nmg, nvg = norm.batchnorm_forward(*on(cp, x, g, b, m, v), train=train)
    assert_same((yg, nmg, nvg), (y, nm, nv))
    dyg = cp.asarray(dy)
    assert_same(norm.batchnorm_backward_input(dyg, cache_g), norm.batchnorm_backward_input(dy, cache))
    assert_same(norm.batchnorm_backward_params(dyg, cache_g), norm.batchnorm_backward_params(dy, cache))


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_backward_one_pass(cp, rng, shape, train):
    """``batchnorm_backward`` (what the layer calls; fused kernels on the device) against NumPy."""
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    g, b, m = (rng.standard_normal(3) for _ in range(3))
    v = rng.uniform(0.5, 2.0, 3)
    _, cache, _, _ = norm.batchnorm_forward(x, g, b, m, v, train=train)
    _, cache_g, _, _ = norm.batchnorm_forward(*on(cp, x, g, b, m, v), train=train)
    for need_dx in (True, False):
        assert_same(norm.batchnorm_backward(cp.asarray(dy), cache_g, need_dx),
                    norm.batchnorm_backward(dy, cache, need_dx))


def test_conv2d_geometries(cp, rng):
    """The device input gradient (dilated, padded dy correlated with the flipped kernel) over kernels 1/3/5 and
    non-square ones, strides 1/2, padding 0/1/2 (wider than the kernel included)."""
    for kernel in ((1, 1), (3, 3), (5, 5), (3, 1), (1, 3)):
        for stride in (1, 2, (2, 1)):
            for padding in (0, 1, 2, (0, 2)):
                x, b = rng.standard_normal((3, 2, 7, 6)), rng.standard_normal(4)
                W = rng.standard_normal((4, 2) + kernel)
                y, cache = conv.conv2d_forward(x, W, b, stride, padding)
                dy = rng.standard_normal(y.shape)
                yg, cache_g = conv.conv2d_forward(*on(cp, x, W, b), stride, padding)
                assert_same(yg, y)
                assert_same(conv.conv2d_backward_input(cp.asarray(dy), cp.asarray(W), cache_g),
                            conv.conv2d_backward_input(dy, W, cache))
                assert_same(conv.conv2d_backward_params(cp.asarray(dy), cache_g),
                            conv.conv2d_backward_params(dy, cache))


@pytest.mark.parametrize("mode", ["input", "columns"])
def test_conv2d_in_bands(cp, rng, mode):
    """The column matrices made a band of output rows at a time on the device (``set_conv_chunk`` below one row:
    cupy's ``matmul(out=)`` into a non-contiguous slice of the output, the transposed convolution's bands): the
    host's whole-matrix numbers (docs/decisions.md D9)."""
    old = conv.set_conv_chunk(1e-12)
    try:
        for kernel, stride, padding in (((3, 3), 1, 1), ((3, 2), (2, 1), (1, 2)), ((5, 5), 2, 4), ((1, 1), 2, 0)):
            x, b = rng.standard_normal((3, 4, 9, 8)), rng.standard_normal(5)
            W = rng.standard_normal((5, 4) + kernel)
            conv.set_conv_chunk(0)
            y, cache = conv.conv2d_forward(x, W, b, stride, padding, save=mode)
            dy = rng.standard_normal(y.shape)
            want = (y, conv.conv2d_backward_input(dy, W, cache), conv.conv2d_backward_params(dy, cache))
            conv.set_conv_chunk(1e-12)
            yg, cache_g = conv.conv2d_forward(*on(cp, x, W, b), stride, padding, save=mode)
            got = (yg, conv.conv2d_backward_input(cp.asarray(dy), cp.asarray(W), cache_g),
                   conv.conv2d_backward_params(cp.asarray(dy), cache_g))
            assert_same(got, want)
    finally:
        conv.set_conv_chunk(old)


@pytest.mark.parametrize("name, kw", [
    ("adam", {}), ("adam", {"weight_decay": 0.1}), ("adamw", {}), ("sgd", {"weight_decay": 0.1}),
    ("sgd", {"momentum": 0.9, "dampening": 0.3}), ("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
])
def test_fused_optimizers(cp, rng, name, kw):
    """One fused ElementwiseKernel per parameter update (ssaref/ops/kernels.py) against the NumPy ufunc path."""
    from ssaref.optim import build_optimizer

    p0 = {k: rng.standard_normal(s) for k, s in (("W", (5, 4)), ("b", (4,)))}
    grads = [{k: rng.standard_normal(v.shape) for k, v in p0.items()} for _ in range(4)]
    host = {k: v.copy() for k, v in p0.items()}
    dev = {k: cp.asarray(v) for k, v in p0.items()}
    oh, og = build_optimizer(name, list(host.items()), 1e-2, **kw), build_optimizer(name, list(dev.items()), 1e-2, **kw)
    for t, g in enumerate(grads):
        oh.step(g, lr=1e-2 * (1 + t))
        og.step({k: cp.asarray(v) for k, v in g.items()}, lr=1e-2 * (1 + t))
    for k in host:
        assert_same(dev[k], host[k])


def test_linalg_device_paths(cp, rng):
    """Batched orthogonality errors, Newton-Schulz and eigh retraction steps, sym and hoyer_grad as kernels."""
    from ssaref import linalg

    Xs = [np.linalg.qr(rng.standard_normal(s))[0] + 1e-3 * rng.standard_normal(s)
          for s in [(9, 4)] * 4 + [(7, 4), (9, 3), (5, 5)]] + [rng.standard_normal((8, 3))]
    np.testing.assert_allclose(linalg.orthogonality_errors([cp.asarray(X) for X in Xs]),
                               linalg.orthogonality_errors(Xs), rtol=1e-10)
    for X in Xs:
        assert_same(linalg.retract(cp.asarray(X)), linalg.retract(X))
    M, s = rng.standard_normal((4, 4)), rng.standard_normal(6)
    assert_same(linalg.sym(cp.asarray(M)), linalg.sym(M))
    assert_same(linalg.hoyer_grad(cp.asarray(s)), linalg.hoyer_grad(s))


def test_softmax_cross_entropy(cp, rng):
    logits, y = rng.standard_normal((6, 4)) * 10, rng.integers(0, 4, size=6)
    loss, cache = losses.softmax_cross_entropy(logits, y)
    loss_g, cache_g = losses.softmax_cross_entropy(cp.asarray(logits), cp.asarray(y))
    assert isinstance(loss_g, float)
    assert_same(loss_g, loss)
    assert_same(losses.softmax_cross_entropy_backward(cache_g), losses.softmax_cross_entropy_backward(cache))
    assert_same(losses.one_hot(cp.asarray(y), 4, np.float64), losses.one_hot(y, 4, np.float64))
    with pytest.raises(ValueError, match=r"label 4 out of range \[0, 4\)"):
        losses.softmax_cross_entropy(cp.asarray(logits), cp.asarray(np.full(6, 4)))


def test_float32_stays_float32_on_gpu(cp, rng):
    x = cp.asarray(rng.standard_normal((2, 3, 6, 6)), dtype=cp.float32)
    W = cp.asarray(rng.standard_normal((4, 3, 3, 3)), dtype=cp.float32)
    y, cache = conv.conv2d_forward(x, W, None, 1, 1)
    p, pc = pool.maxpool2d_forward(y, 2)
    dx = conv.conv2d_backward_input(pool.maxpool2d_backward(cp.ones_like(p), pc), W, cache)
    assert y.dtype == p.dtype == dx.dtype == cp.float32
