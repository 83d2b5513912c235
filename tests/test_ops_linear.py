"""Fully connected op: finite differences and the PyTorch oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _gradcheck import FD_TOL, fd_error, torch_vjp
from _strategies import finite_arrays
from ssaref.ops.linear import linear_backward_input, linear_backward_params, linear_forward

ORACLE = dict(rtol=1e-10, atol=1e-10)
dims = st.integers(1, 6)


def _draw(data, B, n, m):
    return (data.draw(finite_arrays((B, n))), data.draw(finite_arrays((m, n))),
            data.draw(finite_arrays((m,))), data.draw(finite_arrays((B, m))))


@given(B=dims, n=dims, m=dims, data=st.data())
def test_linear_gradients_finite_differences(B, n, m, data):
    x, W, b, R = _draw(data, B, n, m)
    dx = linear_backward_input(R, W)
    dW, db = linear_backward_params(R, x)

    def loss(x_=x, W_=W, b_=b):                        # L = sum(y * R)
        return np.sum(linear_forward(x_, W_, b_) * R)

    assert fd_error(dx, lambda v: loss(x_=v), x) < FD_TOL
    assert fd_error(dW, lambda v: loss(W_=v), W) < FD_TOL
    assert fd_error(db, lambda v: loss(b_=v), b) < FD_TOL


@given(B=dims, n=dims, m=dims, bias=st.booleans(), data=st.data())
def test_linear_matches_torch(B, n, m, bias, data):
    x, W, b, R = _draw(data, B, n, m)
    b = b if bias else None
    y_t, (dx_t, dW_t, db_t) = torch_vjp(F.linear, (x, W, b), R)
    np.testing.assert_allclose(linear_forward(x, W, b), y_t, **ORACLE)
    np.testing.assert_allclose(linear_backward_input(R, W), dx_t, **ORACLE)
    dW, db = linear_backward_params(R, x, has_bias=bias)
    np.testing.assert_allclose(dW, dW_t, **ORACLE)
    if bias:
        np.testing.assert_allclose(db, db_t, **ORACLE)
    else:
        assert db is None


@given(B=dims, n=dims, m=dims, data=st.data())
def test_linear_backward_input_uses_the_given_matrix(B, n, m, data):
    """Feedback alignment: ``dx = dy @ B`` equals torch's input gradient of ``x @ B.T``."""
    x, _, _, R = _draw(data, B, n, m)
    Bfb = data.draw(finite_arrays((m, n)))
    _, (dx_t,) = torch_vjp(lambda x_: F.linear(x_, torch.tensor(Bfb)), (x,), R)
    np.testing.assert_allclose(linear_backward_input(R, Bfb), dx_t, **ORACLE)


def test_linear_float32_stays_float32(rng):
    x, W, b = (rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (2, 3), (2,)])
    y = linear_forward(x, W, b)
    dW, db = linear_backward_params(np.ones_like(y), x)
    assert {a.dtype for a in (y, linear_backward_input(np.ones_like(y), W), dW, db)} == {
        np.dtype(np.float32)}


def test_linear_bad_input():
    x, W = np.ones((4, 3)), np.ones((2, 3))
    with pytest.raises(ValueError, match=r"x \(4, 2\) and W \(2, 3\) do not fit"):
        linear_forward(np.ones((4, 2)), W)
    with pytest.raises(ValueError, match=r"x \(4, 3, 1\) and W \(2, 3\) do not fit"):
        linear_forward(np.ones((4, 3, 1)), W)
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\), got \(3,\)"):
        linear_forward(x, W, np.ones(3))
    with pytest.raises(ValueError, match="dtypes differ"):
        linear_forward(x.astype(np.float32), W)
    with pytest.raises(ValueError, match=r"dy \(4, 3\) and W \(2, 3\) do not fit"):
        linear_backward_input(np.ones((4, 3)), W)
    with pytest.raises(ValueError, match=r"dy \(5, 2\) and x \(4, 3\) do not fit"):
        linear_backward_params(np.ones((5, 2)), x)
    with pytest.raises(ValueError, match="dtypes differ"):
        linear_backward_input(np.ones((4, 2), np.float32), W)
    with pytest.raises(ValueError, match="dtypes differ"):
        linear_backward_params(np.ones((4, 2), np.float32), x)
