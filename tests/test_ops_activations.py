"""ReLU, tanh, sigmoid and flatten: finite differences and the PyTorch oracle."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _gradcheck import FD_TOL, fd_error, torch_vjp
from _strategies import away_from_zero_arrays, finite_arrays
from ssaref.ops.activations import (flatten_backward, flatten_forward, relu_backward, relu_forward,
                                    sigmoid_backward, sigmoid_forward, tanh_backward, tanh_forward)

ORACLE = dict(rtol=1e-10, atol=1e-10)
ACTIVATIONS = {
    "relu": (relu_forward, relu_backward, torch.relu),
    "tanh": (tanh_forward, tanh_backward, torch.tanh),
    "sigmoid": (sigmoid_forward, sigmoid_backward, torch.sigmoid),
}
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


def _values(name, shape):
    # ReLU: |x| >= 1e-3, far from the kink at 0 compared with eps = 1e-6.  tanh/sigmoid: |x| <= 3,
    # where the derivative (>= 0.01) stays well above the round-off of the differences (~1e-10).
    return away_from_zero_arrays(shape) if name == "relu" else finite_arrays(shape, -3.0, 3.0)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@given(shape=shapes, data=st.data())
def test_activation_finite_differences(name, shape, data):
    fwd, bwd, _ = ACTIVATIONS[name]
    x = data.draw(_values(name, shape))
    R = data.draw(finite_arrays(shape))
    y, cache = fwd(x)
    assert fd_error(bwd(R, cache), lambda v: np.sum(fwd(v)[0] * R), x) < FD_TOL


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@given(shape=shapes, data=st.data())
def test_activation_matches_torch(name, shape, data):
    fwd, bwd, tfn = ACTIVATIONS[name]
    x = data.draw(finite_arrays(shape, -8.0, 8.0))
    R = data.draw(finite_arrays(shape))
    y, cache = fwd(x)
    y_t, (dx_t,) = torch_vjp(tfn, (x,), R)
    np.testing.assert_allclose(y, y_t, **ORACLE)
    np.testing.assert_allclose(bwd(R, cache), dx_t, **ORACLE)


def test_relu_derivative_at_zero_is_zero():
    y, cache = relu_forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(relu_backward(np.ones(3), cache), [0.0, 0.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_extreme_inputs_without_overflow(dtype):
    x = np.array([-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # an overflow warning would fail the test
        y, _ = sigmoid_forward(x)
    assert y.dtype == dtype
    exact = torch.sigmoid(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(y, exact, rtol=1e-6 if dtype == np.float32 else 1e-15, atol=1e-38)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_float32_stays_float32(name, rng):
    fwd, bwd, _ = ACTIVATIONS[name]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y, cache = fwd(x)
    assert y.dtype == bwd(np.ones_like(x), cache).dtype == np.float32


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward_shape_mismatch(name):
    fwd, bwd, _ = ACTIVATIONS[name]
    _, cache = fwd(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dy of shape \(3, 2\), expected \(2, 3\)"):
        bwd(np.ones((3, 2)), cache)


@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple),
       batch_innermost=st.booleans(), data=st.data())
def test_flatten_matches_torch_and_round_trips(shape, batch_innermost, data):
    x = data.draw(finite_arrays(shape))
    if batch_innermost:                                # memory order of conv outputs
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 0, -1)), -1, 0)
    y, cache = flatten_forward(x)
    R = data.draw(finite_arrays(y.shape))
    y_t, (dx_t,) = torch_vjp(lambda v: torch.flatten(v, 1), (x,), R)
    np.testing.assert_array_equal(y, y_t)
    np.testing.assert_array_equal(flatten_backward(R, cache), dx_t)


def test_flatten_bad_shapes():
    with pytest.raises(ValueError, match="batch axis"):
        flatten_forward(np.float64(1.0) * np.ones(()))
    _, cache = flatten_forward(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"dy of shape \(2, 11\) does not match input \(2, 3, 4\)"):
        flatten_backward(np.ones((2, 11)), cache)
