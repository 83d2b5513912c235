"""im2col / col2im and conv2d: loop oracles, adjointness, finite differences, PyTorch oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _gradcheck import FD_TOL, fd_error, torch_vjp
from _strategies import conv_geometries, finite_arrays
from ssaref.ops.conv import conv2d_backward_input, conv2d_backward_params, conv2d_forward
from ssaref.ops.im2col import col2im, conv_output_size, im2col

ORACLE = dict(rtol=1e-10, atol=1e-10)


def batch_innermost(x):
    """The same values as ``x`` in the memory order conv outputs have: (C, H, W, N)."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


# ---- independent oracles: plain Python loops over output positions ---------------------------

def loop_pad(x, ph, pw):
    N, C, H, W = x.shape
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for n in range(N):
        for c in range(C):
            for r in range(H):
                for s in range(W):
                    xpad[n, c, r + ph, s + pw] = x[n, c, r, s]
    return xpad


def loop_conv(x, W, b, stride, padding):
    (sy, sx), (ph, pw) = stride, padding
    N, _, H, Wd = x.shape
    C_out, C_in, kh, kw = W.shape
    Ho, Wo = (H + 2 * ph - kh) // sy + 1, (Wd + 2 * pw - kw) // sx + 1
    xpad = loop_pad(x, ph, pw)
    y = np.zeros((N, C_out, Ho, Wo))
    for n in range(N):
        for o in range(C_out):
            for oy in range(Ho):
                for ox in range(Wo):
                    acc = 0.0 if b is None else b[o]
                    for c in range(C_in):
                        for i in range(kh):
                            for j in range(kw):
                                acc += W[o, c, i, j] * xpad[n, c, oy * sy + i, ox * sx + j]
                    y[n, o, oy, ox] = acc
    return y


def loop_im2col(x, kh, kw, sy, sx, ph, pw):
    N, C, H, W = x.shape
    Ho, Wo = (H + 2 * ph - kh) // sy + 1, (W + 2 * pw - kw) // sx + 1
    xpad = loop_pad(x, ph, pw)
    col = np.zeros((C, kh, kw, Ho, Wo, N))
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                for oy in range(Ho):
                    for ox in range(Wo):
                        for n in range(N):
                            col[c, i, j, oy, ox, n] = xpad[n, c, oy * sy + i, ox * sx + j]
    return col


def loop_col2im(col, sy, sx, ph, pw, H, W):
    C, kh, kw, Ho, Wo, N = col.shape
    x = np.zeros((N, C, H, W))
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                for oy in range(Ho):
                    for ox in range(Wo):
                        r, s = oy * sy + i - ph, ox * sx + j - pw
                        if 0 <= r < H and 0 <= s < W:
                            x[:, c, r, s] += col[c, i, j, oy, ox, :]
    return x


def _args(g):
    return g.kh, g.kw, g.stride[0], g.stride[1], g.padding[0], g.padding[1]


# ---- im2col / col2im -------------------------------------------------------------------------

@given(g=conv_geometries(), data=st.data())
def test_im2col_matches_loops(g, data):
    x = data.draw(finite_arrays(g.x_shape))
    col = im2col(x, *_args(g))
    assert col.shape == (g.C_in, g.kh, g.kw) + g.out_hw + (g.N,)
    np.testing.assert_array_equal(col, loop_im2col(x, *_args(g)))


@given(g=conv_geometries(), data=st.data())
def test_col2im_matches_loops_and_is_adjoint_of_im2col(g, data):
    kh, kw, sy, sx, ph, pw = _args(g)
    z = data.draw(finite_arrays(g.x_shape))
    c = data.draw(finite_arrays((g.C_in, kh, kw) + g.out_hw + (g.N,)))
    back = col2im(c, sy, sx, ph, pw, g.H, g.W)
    np.testing.assert_allclose(back, loop_col2im(c, sy, sx, ph, pw, g.H, g.W), rtol=1e-12, atol=1e-12)
    lhs, rhs = np.sum(im2col(z, kh, kw, sy, sx, ph, pw) * c), np.sum(z * back)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_conv_output_size_and_kernel_too_large():
    assert conv_output_size(7, 3, 2, 1) == 4
    assert conv_output_size(3, 5, 1, 1) == 1
    with pytest.raises(ValueError, match="kernel size 6 is larger than the padded input size 3"):
        conv_output_size(3, 6, 1, 1)


def test_col2im_refuses_inconsistent_geometry():
    with pytest.raises(ValueError, match="does not match an image of size"):
        col2im(np.zeros((1, 3, 3, 2, 2, 1)), 1, 1, 0, 0, 5, 5)


# ---- conv2d ------------------------------------------------------------------------------------

def _draw_conv(g, data, bias=True):
    x = data.draw(finite_arrays(g.x_shape))
    W = data.draw(finite_arrays(g.w_shape))
    b = data.draw(finite_arrays((g.C_out,))) if bias else None
    R = data.draw(finite_arrays((g.N, g.C_out) + g.out_hw))
    return x, W, b, R


@given(g=conv_geometries(), bias=st.booleans(), data=st.data())
def test_conv_forward_matches_loops(g, bias, data):
    x, W, b, _ = _draw_conv(g, data, bias)
    y, _ = conv2d_forward(x, W, b, g.stride, g.padding)
    np.testing.assert_allclose(y, loop_conv(x, W, b, g.stride, g.padding), rtol=1e-12, atol=1e-12)


@given(g=conv_geometries(), data=st.data())
def test_conv_gradients_finite_differences(g, data):
    x, W, b, R = _draw_conv(g, data)
    y, cache = conv2d_forward(x, W, b, g.stride, g.padding)
    dx = conv2d_backward_input(R, W, cache)
    dW, db = conv2d_backward_params(R, cache)

    def loss(x_=x, W_=W, b_=b):                    # L = sum(y * R)
        return np.sum(conv2d_forward(x_, W_, b_, g.stride, g.padding)[0] * R)

    assert fd_error(dx, lambda v: loss(x_=v), x) < FD_TOL
    assert fd_error(dW, lambda v: loss(W_=v), W) < FD_TOL
    assert fd_error(db, lambda v: loss(b_=v), b) < FD_TOL


@pytest.mark.parametrize("layout", ["nchw", "batch_innermost"])
@given(g=conv_geometries(max_channels=4, max_size=9), bias=st.booleans(), data=st.data())
def test_conv_matches_torch(layout, g, bias, data):
    x, W, b, R = _draw_conv(g, data, bias)
    if layout == "batch_innermost":
        x, R = batch_innermost(x), batch_innermost(R)
    y, cache = conv2d_forward(x, W, b, g.stride, g.padding)
    dx = conv2d_backward_input(R, W, cache)
    dW, db = conv2d_backward_params(R, cache)
    y_t, (dx_t, dW_t, db_t) = torch_vjp(
        lambda x_, W_, b_: F.conv2d(x_, W_, b_, stride=g.stride, padding=g.padding), (x, W, b), R)
    np.testing.assert_allclose(y, y_t, **ORACLE)
    np.testing.assert_allclose(dx, dx_t, **ORACLE)
    np.testing.assert_allclose(dW, dW_t, **ORACLE)
    if bias:
        np.testing.assert_allclose(db, db_t, **ORACLE)
    else:
        assert db is None


@given(g=conv_geometries(), data=st.data())
def test_conv_backward_input_uses_the_given_matrix(g, data):
    """Feedback alignment: ``dx`` transported by B equals torch's input gradient of conv with B."""
    x, W, b, R = _draw_conv(g, data)
    B = data.draw(finite_arrays(g.w_shape))
    _, cache = conv2d_forward(x, W, b, g.stride, g.padding)
    _, (dx_t,) = torch_vjp(lambda x_: F.conv2d(x_, torch.tensor(B), stride=g.stride,
                                              padding=g.padding), (x,), R)
    np.testing.assert_allclose(conv2d_backward_input(R, B, cache), dx_t, **ORACLE)


def test_conv_chain_of_views_matches_torch(rng):
    """conv -> conv -> conv on the batch-innermost outputs, gradients flowing back through them."""
    x = rng.standard_normal((3, 2, 9, 8))
    Ws = [rng.standard_normal(s) for s in [(4, 2, 3, 3), (5, 4, 2, 3), (3, 5, 3, 1)]]
    geo = [(1, 1), (2, 0), ((1, 2), (1, 0))]
    h, caches = x, []
    for W, (s, p) in zip(Ws, geo):
        h, c = conv2d_forward(h, W, None, s, p)
        caches.append(c)
    R = rng.standard_normal(h.shape)
    d, dWs = R, []
    for W, c in zip(reversed(Ws), reversed(caches)):
        dWs.insert(0, conv2d_backward_params(d, c)[0])
        d = conv2d_backward_input(d, W, c)

    def chain(x_, *Ws_):
        for W_, (s, p) in zip(Ws_, geo):
            x_ = F.conv2d(x_, W_, stride=s, padding=p)
        return x_

    y_t, grads = torch_vjp(chain, [x] + Ws, R)
    np.testing.assert_allclose(h, y_t, **ORACLE)
    for mine, theirs in zip([d] + dWs, grads):
        np.testing.assert_allclose(mine, theirs, **ORACLE)


def test_conv_float32_stays_float32(rng):
    x = rng.standard_normal((4, 3, 8, 8))
    W, b = rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    y64, c64 = conv2d_forward(x, W, b, 2, 1)
    x32, W32, b32 = (a.astype(np.float32) for a in (x, W, b))
    y32, c32 = conv2d_forward(x32, W32, b32, 2, 1)
    R32 = np.ones(y32.shape, np.float32)
    dx32 = conv2d_backward_input(R32, W32, c32)
    dW32, db32 = conv2d_backward_params(R32, c32)
    assert {a.dtype for a in (y32, c32[0], dx32, dW32, db32)} == {np.dtype(np.float32)}
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dW32, conv2d_backward_params(np.ones(y64.shape), c64)[0],
                               rtol=1e-4, atol=1e-4)


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape, w_shape, kw, match", [
    ((2, 3, 5, 5), (4, 2, 3, 3), {}, "x has 3 channels but W of shape"),
    ((2, 3, 2, 5), (4, 3, 5, 3), {"padding": 1}, "kernel size 5 is larger than the padded input size 2"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 0}, "stride must be >= 1, got 0"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"padding": -1}, "padding must be >= 0, got -1"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 1.5}, "stride must be an int or a pair of ints, got 1.5"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"padding": (1, 2, 3)}, "padding must be an int or a pair"),
    ((3, 5, 5), (4, 3, 3, 3), {}, r"conv2d expects x \(N, C, H, W\)"),
])
def test_conv_bad_arguments(x_shape, w_shape, kw, match):
    with pytest.raises(ValueError, match=match):
        conv2d_forward(np.zeros(x_shape), np.zeros(w_shape), None, **kw)


def test_conv_bad_bias_dtype_and_backward_shapes(rng):
    x, W = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        conv2d_forward(x, W, np.zeros(3))
    with pytest.raises(ValueError, match="dtypes differ"):
        conv2d_forward(x.astype(np.float32), W)
    y, cache = conv2d_forward(x, W, None, 1, 1)
    with pytest.raises(ValueError, match="does not match the forward output"):
        conv2d_backward_params(np.zeros((2, 4, 4, 5)), cache)
    with pytest.raises(ValueError, match=r"W of shape \(4, 3, 2, 3\) does not match"):
        conv2d_backward_input(np.zeros(y.shape), np.zeros((4, 3, 2, 3)), cache)
    with pytest.raises(ValueError, match="dtypes differ"):
        conv2d_backward_input(np.zeros(y.shape, np.float32), W, cache)
