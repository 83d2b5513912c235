"""Batch normalisation: finite differences and the PyTorch oracle (train and eval, running stats)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from _gradcheck import FD_TOL, fd_error, torch_vjp
from _strategies import finite_arrays
from ssaref.ops.norm import batchnorm_backward_input, batchnorm_backward_params, batchnorm_forward

ORACLE = dict(rtol=1e-10, atol=1e-10)


@st.composite
def bn_inputs(draw, four_d=None):
    """(x, gamma, beta, running_mean, running_var, R) for a 2-D or 4-D batch."""
    if four_d is None:
        four_d = draw(st.booleans())
    C = draw(st.integers(1, 3))
    if four_d:
        shape = (draw(st.integers(1, 3)), C, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        shape = (draw(st.integers(2, 6)), C)
    assume(np.prod(shape) // C >= 2)
    x = draw(finite_arrays(shape))
    if four_d and draw(st.booleans()):                  # the (C, H, W, N) memory of conv outputs
        x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    assume(x.std(axis=axes).min() > 0.1)               # keep 1/std moderate for the differences
    gamma, beta = draw(finite_arrays((C,))), draw(finite_arrays((C,)))
    running_mean, running_var = draw(finite_arrays((C,))), draw(finite_arrays((C,), 0.2, 3.0))
    return x, gamma, beta, running_mean, running_var, draw(finite_arrays(shape))


@pytest.mark.parametrize("train", [True, False])
@given(inp=bn_inputs())
def test_batchnorm_gradients_finite_differences(train, inp):
    x, gamma, beta, rm, rv, R = inp
    y, cache, _, _ = batchnorm_forward(x, gamma, beta, rm, rv, train=train)
    dx = batchnorm_backward_input(R, cache)
    dgamma, dbeta = batchnorm_backward_params(R, cache)

    def loss(x_=x, g_=gamma, b_=beta):                  # L = sum(y * R)
        return np.sum(batchnorm_forward(x_, g_, b_, rm, rv, train=train)[0] * R)

    # (with two values per channel xhat = +-1 whatever x is: dx nearly vanishes, see FD_FLOOR)
    assert fd_error(dx, lambda v: loss(x_=v), x) < FD_TOL
    assert fd_error(dgamma, lambda v: loss(g_=v), gamma) < FD_TOL
    assert fd_error(dbeta, lambda v: loss(b_=v), beta) < FD_TOL


@pytest.mark.parametrize("train", [True, False])
@given(inp=bn_inputs(), momentum=st.floats(0.0, 1.0), eps=st.sampled_from([1e-5, 1e-3, 0.1]))
def test_batchnorm_matches_torch(train, inp, momentum, eps):
    x, gamma, beta, rm, rv, R = inp
    y, cache, new_mean, new_var = batchnorm_forward(x, gamma, beta, rm, rv, train=train,
                                                    momentum=momentum, eps=eps)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)   # torch updates these in place
    y_t, (dx_t, dg_t, db_t) = torch_vjp(
        lambda x_, g_, b_: F.batch_norm(x_, rm_t, rv_t, g_, b_, training=train, momentum=momentum,
                                        eps=eps), (x, gamma, beta), R)
    np.testing.assert_allclose(y, y_t, **ORACLE)
    np.testing.assert_allclose(new_mean, rm_t.numpy(), **ORACLE)
    np.testing.assert_allclose(new_var, rv_t.numpy(), **ORACLE)
    np.testing.assert_allclose(batchnorm_backward_input(R, cache), dx_t, **ORACLE)
    dgamma, dbeta = batchnorm_backward_params(R, cache)
    np.testing.assert_allclose(dgamma, dg_t, **ORACLE)
    np.testing.assert_allclose(dbeta, db_t, **ORACLE)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_mutates_nothing_and_eval_keeps_stats(train, rng):
    x = rng.standard_normal((4, 3, 2, 2))
    args = [rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3),
            rng.uniform(0.5, 2.0, 3)]
    before = [a.copy() for a in [x] + args]
    _, _, new_mean, new_var = batchnorm_forward(x, *args, train=train)
    for a, b in zip([x] + args, before):
        np.testing.assert_array_equal(a, b)
    if train:
        assert not np.allclose(new_mean, args[2])
    else:
        np.testing.assert_array_equal(new_mean, args[2])
        np.testing.assert_array_equal(new_var, args[3])


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 2)])
def test_batchnorm_float32_stays_float32(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    y, cache, m, v = batchnorm_forward(x, ones, zeros, zeros, ones, train=True)
    dx = batchnorm_backward_input(np.ones_like(x), cache)
    dg, db = batchnorm_backward_params(np.ones_like(x), cache)
    assert {a.dtype for a in (y, m, v, dx, dg, db)} == {np.dtype(np.float32)}


def test_batchnorm_bad_input():
    v = np.ones(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        batchnorm_forward(np.ones((1, 3)), v, v, v, v, train=True)
    with pytest.raises(ValueError, match="more than one value per channel"):
        batchnorm_forward(np.ones((1, 3, 1, 1)), v, v, v, v, train=True)
    batchnorm_forward(np.ones((1, 3)), v, v, v, v, train=False)       # eval: fine
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\) .* got \(2,\)"):
        batchnorm_forward(np.ones((4, 3)), np.ones(2), v, v, v, train=True)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        batchnorm_forward(np.ones((4, 3)), v, v, v, np.ones(4), train=True)
    with pytest.raises(ValueError, match=r"got \(4, 3, 2\)"):
        batchnorm_forward(np.ones((4, 3, 2)), v, v, v, v, train=True)
    with pytest.raises(ValueError, match="beta has dtype float32 but x has float64"):
        batchnorm_forward(np.ones((4, 3)), v, v.astype(np.float32), v, v, train=True)
    _, cache, _, _ = batchnorm_forward(np.arange(12.0).reshape(4, 3), v, v, v, v, train=True)
    with pytest.raises(ValueError, match=r"dy of shape \(3, 3\), expected \(4, 3\)"):
        batchnorm_backward_input(np.ones((3, 3)), cache)
