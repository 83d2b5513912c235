"""Element-wise activations and flatten, forward and backward.

Each forward returns ``(y, cache)``; the cache of the activations is the output ``y`` itself,
from which each derivative follows (``relu' = [y > 0]``, ``tanh' = 1 - y^2``,
``sigmoid' = y (1 - y)``).  Element-wise results keep the memory order of their input.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .im2col import split_rows

__all__ = [
    "relu_forward",
    "relu_backward",
    "tanh_forward",
    "tanh_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "flatten_forward",
    "flatten_backward",
]


_BLOCK = 1 << 16  # elements per NumPy call in the blocked loops (fits the L2 cache)
_ZEROS: dict[np.dtype, np.ndarray] = {}  # dtype -> a block of zeros (np.maximum is SIMD only with two array operands)


def dense_flat(a):
    """A 1-D view of ``a``'s memory in memory order when ``a`` is one dense block (C-contiguous after
    ordering its axes by decreasing stride, e.g. the batch-innermost NCHW views of the conv outputs), else None."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    order = sorted(range(a.ndim), key=lambda i: -a.strides[i])
    t = a.transpose(order)
    return t.reshape(-1) if t.flags.c_contiguous else None


def _same_memory_order(*arrays):
    return all(a.strides == arrays[0].strides for a in arrays[1:])


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
    xp = get_array_module(x)
    xf = dense_flat(x) if xp is np else None
    if xf is None:
        y = xp.maximum(x, 0)
        return y, y
    y = np.empty_like(x)  # x's memory order
    yf = dense_flat(y)
    if yf is None or not _same_memory_order(x, y):
        y = np.maximum(x, 0)
        return y, y
    zeros = _ZEROS.get(x.dtype)
    if zeros is None:
        zeros = _ZEROS[x.dtype] = np.zeros(_BLOCK, dtype=x.dtype)

    def part(lo, hi):  # np.maximum(x, zeros) == np.maximum(x, 0) bit for bit (+0.0 for -0.0, NaN kept)
        for a in range(lo * _BLOCK, min(hi * _BLOCK, xf.size), _BLOCK):
            b = min(a + _BLOCK, xf.size)
            np.maximum(xf[a:b], zeros[: b - a], out=yf[a:b])

    split_rows(np, -(-xf.size // _BLOCK), part, xf.size)
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
    xp = get_array_module(dy, cache)
    if xp is not np:
        return dy * (cache > 0)
    dx = np.empty_like(cache)  # the forward layout, whatever layout dy arrives in (direct rules' signals)
    df, yf, of = dense_flat(dy), dense_flat(cache), dense_flat(dx)
    if df is None or yf is None or of is None or not _same_memory_order(dy, cache, dx):
        np.multiply(dy, cache > 0, out=dx)
        return dx

    def part(lo, hi):
        np.multiply(df[lo:hi], yf[lo:hi] > 0, out=of[lo:hi])

    split_rows(np, of.size, part, of.size)
    return dx


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
