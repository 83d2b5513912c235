"""Element-wise activations and flatten, forward and backward.

Each forward returns ``(y, cache)``; the cache of the activations is the output ``y`` itself,
from which each derivative follows (``relu' = [y > 0]``, ``tanh' = 1 - y^2``,
``sigmoid' = y (1 - y)``).  Element-wise results keep the memory order of their input.
"""
from __future__ import annotations

import math

from ..backend import get_array_module

__all__ = ["relu_forward", "relu_backward", "tanh_forward", "tanh_backward",
           "sigmoid_forward", "sigmoid_backward", "flatten_forward", "flatten_backward"]


def _check(dy, y, op):
    if dy.shape != y.shape:
        raise ValueError(f"{op} backward: dy of shape {tuple(dy.shape)}, expected {tuple(y.shape)}")


def relu_forward(x):
    """``y = max(x, 0)``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, shape of ``x``
    cache : array
        ``y``.
    """
    y = get_array_module(x).maximum(x, 0)
    return y, y


def relu_backward(dy, cache):
    """``dx = dy * [y > 0]`` (the derivative at 0 is taken as 0, as PyTorch does).

    Parameters
    ----------
    dy : array, shape of ``y``
    cache : array
        ``y`` from :func:`relu_forward`.

    Returns
    -------
    dx : array, shape of ``y``
    """
    _check(dy, cache, "relu")
    return dy * (cache > 0)


def tanh_forward(x):
    """``y = tanh(x)``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, shape of ``x``
    cache : array
        ``y``.
    """
    y = get_array_module(x).tanh(x)
    return y, y


def tanh_backward(dy, cache):
    """``dx = dy * (1 - y^2)``.

    Parameters
    ----------
    dy : array, shape of ``y``
    cache : array
        ``y`` from :func:`tanh_forward`.

    Returns
    -------
    dx : array, shape of ``y``
    """
    _check(dy, cache, "tanh")
    return dy * (1.0 - cache * cache)


def sigmoid_forward(x):
    """``y = 1 / (1 + exp(-x))``, evaluated without overflow.

    ``exp(-|x|)`` never overflows: ``y = 1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` below.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, shape of ``x``
    cache : array
        ``y``.
    """
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    y = (xp.where(x >= 0, 1.0, e) / (1.0 + e)).astype(x.dtype, copy=False)
    return y, y


def sigmoid_backward(dy, cache):
    """``dx = dy * y * (1 - y)``.

    Parameters
    ----------
    dy : array, shape of ``y``
    cache : array
        ``y`` from :func:`sigmoid_forward`.

    Returns
    -------
    dx : array, shape of ``y``
    """
    _check(dy, cache, "sigmoid")
    return dy * cache * (1.0 - cache)


def flatten_forward(x):
    """``(N, ...) -> (N, prod(...))`` in C order (as ``torch.flatten(x, 1)``).

    Parameters
    ----------
    x : array, shape (N, ...)

    Returns
    -------
    y : array, shape (N, prod(x.shape[1:]))
    cache : tuple
        ``x.shape``.
    """
    if x.ndim < 1:
        raise ValueError("flatten expects an array with a batch axis, got a scalar")
    return x.reshape(x.shape[0], -1), tuple(x.shape)


def flatten_backward(dy, cache):
    """``dx = dy.reshape(x.shape)``.

    Parameters
    ----------
    dy : array, shape (N, prod(x.shape[1:]))
    cache : tuple
        ``x.shape`` from :func:`flatten_forward`.

    Returns
    -------
    dx : array, shape ``x.shape``
    """
    if tuple(dy.shape) != (cache[0], math.prod(cache[1:])):
        raise ValueError(f"flatten backward: dy of shape {tuple(dy.shape)} does not match input {cache}")
    return dy.reshape(cache)
