"""Softmax cross-entropy and helpers: finite differences, PyTorch oracle, label validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _gradcheck import FD_TOL, directional_check, fd_error, torch_vjp
from _strategies import finite_arrays, seeds
from ssaref.ops.activations import relu_backward, relu_forward
from ssaref.ops.linear import linear_backward_input, linear_backward_params, linear_forward
from ssaref.ops.losses import (log_softmax, one_hot, softmax, softmax_cross_entropy,
                               softmax_cross_entropy_backward)

ORACLE = dict(rtol=1e-10, atol=1e-10)


@st.composite
def logits_and_labels(draw, scale=10.0):
    B, K = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    logits = draw(finite_arrays((B, K), -scale, scale))
    labels = np.random.default_rng(draw(seeds)).integers(0, K, size=B)
    return logits, labels


@given(inp=logits_and_labels())
def test_cross_entropy_gradient_finite_differences(inp):
    logits, y = inp
    loss, cache = softmax_cross_entropy(logits, y)
    assert isinstance(loss, float)
    grad = softmax_cross_entropy_backward(cache)
    assert fd_error(grad, lambda v: softmax_cross_entropy(v, y)[0], logits) < FD_TOL


@given(inp=logits_and_labels(scale=30.0))
def test_cross_entropy_matches_torch(inp):
    logits, y = inp
    loss, cache = softmax_cross_entropy(logits, y)
    loss_t, (grad_t,) = torch_vjp(lambda z: F.cross_entropy(z, torch.tensor(y)), (logits,), 1.0)
    np.testing.assert_allclose(loss, loss_t, **ORACLE)
    np.testing.assert_allclose(softmax_cross_entropy_backward(cache), grad_t, **ORACLE)
    np.testing.assert_allclose(softmax(logits), torch.softmax(torch.tensor(logits), 1).numpy(), **ORACLE)
    np.testing.assert_allclose(log_softmax(logits), torch.log_softmax(torch.tensor(logits), 1).numpy(),
                               **ORACLE)


@given(inp=logits_and_labels())
def test_gradient_is_eq7_softmax_minus_onehot_over_batch(inp):
    logits, y = inp
    _, cache = softmax_cross_entropy(logits, y)
    B, K = logits.shape
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected[np.arange(B), y] -= 1.0
    np.testing.assert_allclose(softmax_cross_entropy_backward(cache) * B, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 3e4 - 1.0], [5e3, 5e3, 5e3]], dtype=dtype)
    y = np.array([1, 2, 0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss, cache = softmax_cross_entropy(logits, y)
        grad = softmax_cross_entropy_backward(cache)
    assert grad.dtype == dtype and np.isfinite(loss) and np.isfinite(grad).all()
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss_t = F.cross_entropy(z, torch.tensor(y))
    loss_t.backward()
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-6)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_one_hot_and_list_labels():
    oh = one_hot(np.array([2, 0, 1]), 4, np.float32)
    assert oh.dtype == np.float32
    np.testing.assert_array_equal(oh, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(one_hot([1], 2, np.float64), [[0.0, 1.0]])
    loss_list, _ = softmax_cross_entropy(np.zeros((2, 3)), [0, 2])
    np.testing.assert_allclose(loss_list, np.log(3.0), rtol=1e-14)


@pytest.mark.parametrize("labels, match", [
    (np.array([0, 3]), r"label 3 out of range \[0, 3\)"),
    (np.array([-1, 0]), r"label -1 out of range \[0, 3\)"),
    (np.array([0.0, 1.0]), "labels must be integers, got dtype float64"),
    (np.array([True, False]), "labels must be integers, got dtype bool"),
    (np.array([0, 1, 2]), r"labels must have shape \(2,\), got \(3,\)"),
    (np.array([[0], [1]]), r"labels must have shape \(2,\), got \(2, 1\)"),
])
def test_cross_entropy_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        softmax_cross_entropy(np.zeros((2, 3)), labels)


def test_cross_entropy_bad_logits_and_one_hot_range():
    with pytest.raises(ValueError, match=r"logits must have shape \(B, K\).*got \(3,\)"):
        softmax_cross_entropy(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match=r"logits must have shape \(B, K\) with B >= 1, got \(0, 3\)"):
        softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"label 5 out of range \[0, 4\)"):
        one_hot(np.array([5]), 4, np.float64)


def test_two_layer_net_directional_derivative(rng):
    """Ops composed by hand (linear-relu-linear-CE) pass a directional finite-difference check."""
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, size=5)
    params = {"W1": rng.standard_normal((6, 4)), "b1": rng.standard_normal(6),
              "W2": rng.standard_normal((3, 6)), "b2": rng.standard_normal(3)}

    def loss_and_grads(p):
        h, hc = relu_forward(linear_forward(x, p["W1"], p["b1"]))
        loss, lc = softmax_cross_entropy(linear_forward(h, p["W2"], p["b2"]), y)
        e = softmax_cross_entropy_backward(lc)                     # eq. (7)
        dW2, db2 = linear_backward_params(e, h)
        dz = relu_backward(linear_backward_input(e, p["W2"]), hc)
        dW1, db1 = linear_backward_params(dz, x)
        return loss, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}

    _, grads = loss_and_grads(params)
    assert directional_check(lambda p: loss_and_grads(p)[0], params, grads, rng) < 1e-7
    wrong = dict(grads, W1=grads["W1"] * 1.01)                      # the check can fail
    assert directional_check(lambda p: loss_and_grads(p)[0], params, wrong,
                             np.random.default_rng(0)) > 1e-4
