"""Max-, avg- and global average pooling: finite differences and the PyTorch oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _gradcheck import FD_TOL, fd_error, torch_vjp
from _strategies import distinct_arrays, finite_arrays, pool_geometries
from ssaref.ops.pool import (avgpool2d_backward, avgpool2d_forward, global_avgpool_backward,
                             global_avgpool_forward, maxpool2d_backward, maxpool2d_forward)

ORACLE = dict(rtol=1e-10, atol=1e-10)
POOLS = {
    "max": (maxpool2d_forward, maxpool2d_backward, F.max_pool2d),
    "avg": (avgpool2d_forward, avgpool2d_backward, F.avg_pool2d),
}
LAYOUTS = ["nchw", "batch_innermost"]


def in_layout(x, layout):
    """``x`` as C-contiguous NCHW, or with the (C, H, W, N) memory of conv outputs."""
    if layout == "nchw":
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


def _out_shape(g):
    stride = g.kernel if g.stride is None else g.stride
    return (g.N, g.C) + tuple((s + 2 * p - k) // st_ + 1 for s, k, st_, p in
                              zip((g.H, g.W), g.kernel, stride, g.padding))


def _torch_args(g):
    return dict(kernel_size=g.kernel, stride=g.stride if g.stride is not None else g.kernel,
                padding=g.padding)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("layout", LAYOUTS)
@given(g=pool_geometries(), data=st.data())
def test_pool_gradient_finite_differences(kind, layout, g, data):
    fwd, bwd, _ = POOLS[kind]
    # distinct values (pairwise gaps >= 0.02 >> eps): max-pool never meets a tie, i.e. a kink
    x = in_layout(data.draw(distinct_arrays(g.x_shape)), layout)
    R = data.draw(finite_arrays(_out_shape(g)))
    y, cache = fwd(x, g.kernel, g.stride, g.padding)
    assert y.shape == R.shape
    dx = bwd(R, cache)
    assert fd_error(dx, lambda v: np.sum(fwd(v, g.kernel, g.stride, g.padding)[0] * R), x) < FD_TOL


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("layout", LAYOUTS)
@given(g=pool_geometries(max_size=9), ties=st.booleans(), data=st.data())
def test_pool_matches_torch(kind, layout, g, ties, data):
    """Forward and backward; with ``ties`` the input holds few distinct integers, so max-pool
    windows tie and the gradient must go to the same (first) element as in PyTorch."""
    fwd, bwd, tfn = POOLS[kind]
    x = data.draw(finite_arrays(g.x_shape))
    if ties:
        x = np.round(x)
    x = in_layout(x, layout)
    R = in_layout(data.draw(finite_arrays(_out_shape(g))), layout)
    y, cache = fwd(x, g.kernel, g.stride, g.padding)
    y_t, (dx_t,) = torch_vjp(lambda v: tfn(v, **_torch_args(g)), (x,), R)
    np.testing.assert_allclose(y, y_t, **ORACLE)
    np.testing.assert_allclose(bwd(R, cache), dx_t, **ORACLE)


def test_maxpool_tie_goes_to_first_element_of_window():
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, :, 2:] = [[1.0, 5.0], [5.0, 5.0]]          # second window: three-way tie at 5
    y, cache = maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(y, [[[[0.0, 5.0]]]])
    dx = maxpool2d_backward(np.array([[[[2.0, 3.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[2.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]]])


@given(N=st.integers(1, 3), C=st.integers(1, 3), H=st.integers(1, 5), W=st.integers(1, 5),
       layout=st.sampled_from(LAYOUTS), data=st.data())
def test_global_avgpool_finite_differences_and_torch(N, C, H, W, layout, data):
    x = in_layout(data.draw(finite_arrays((N, C, H, W))), layout)
    R = data.draw(finite_arrays((N, C)))
    y, cache = global_avgpool_forward(x)
    dx = global_avgpool_backward(R, cache)
    assert fd_error(dx, lambda v: np.sum(global_avgpool_forward(v)[0] * R), x) < FD_TOL
    y_t, (dx_t,) = torch_vjp(lambda v: v.mean(dim=(2, 3)), (x,), R)
    np.testing.assert_allclose(y, y_t, **ORACLE)
    np.testing.assert_allclose(dx, dx_t, **ORACLE)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_float32_stays_float32(kind, rng):
    fwd, bwd, _ = POOLS[kind]
    x = rng.standard_normal((2, 3, 8, 8))
    y, cache = fwd(x.astype(np.float32), 3, 2, 1)
    dx = bwd(np.ones(y.shape, np.float32), cache)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, fwd(x, 3, 2, 1)[0], rtol=1e-6, atol=1e-6)
    y, cache = global_avgpool_forward(x.astype(np.float32))
    assert y.dtype == global_avgpool_backward(np.ones(y.shape, np.float32), cache).dtype == np.float32


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("args, match", [
    (((3, 3), 1, 2), r"padding \(2, 2\) must be at most half the kernel \(3, 3\)"),
    ((6, 1, 0), "kernel size 6 is larger than the padded input size 5"),
    ((0, 1, 0), "kernel must be >= 1, got 0"),
    ((2, (1, 0), 0), r"stride must be >= 1, got \(1, 0\)"),
    ((2.0, None, 0), "kernel must be an int or a pair of ints, got 2.0"),
])
def test_pool_bad_arguments(kind, args, match):
    with pytest.raises(ValueError, match=match):
        POOLS[kind][0](np.zeros((1, 2, 5, 5)), *args)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_bad_shapes(kind):
    fwd, bwd, _ = POOLS[kind]
    with pytest.raises(ValueError, match=r"expects x of shape \(N, C, H, W\), got \(2, 5, 5\)"):
        fwd(np.zeros((2, 5, 5)), 2)
    _, cache = fwd(np.zeros((1, 2, 4, 4)), 2)
    with pytest.raises(ValueError, match=r"dy of shape \(1, 2, 3, 2\), expected \(1, 2, 2, 2\)"):
        bwd(np.zeros((1, 2, 3, 2)), cache)
    _, cache = global_avgpool_forward(np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"dy of shape \(2, 2\), expected \(1, 2\)"):
        global_avgpool_backward(np.zeros((2, 2)), cache)
