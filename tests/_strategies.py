"""Hypothesis strategies shared by the op tests: conv/pool geometries and float64 arrays.

Geometries are drawn so that the kernel always fits the padded input (a valid output of at least
one pixel); arrays hold finite float64 values from a hypothesis-drawn seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

__all__ = ["ConvGeometry", "PoolGeometry", "conv_geometries", "pool_geometries", "finite_arrays",
           "away_from_zero_arrays", "distinct_arrays", "seeds"]

seeds = st.integers(0, 2**32 - 1)


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


@dataclass(frozen=True)
class ConvGeometry:
    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    kh: int
    kw: int
    stride: tuple
    padding: tuple

    @property
    def x_shape(self):
        return (self.N, self.C_in, self.H, self.W)

    @property
    def w_shape(self):
        return (self.C_out, self.C_in, self.kh, self.kw)

    @property
    def out_hw(self):
        return (_out(self.H, self.kh, self.stride[0], self.padding[0]),
                _out(self.W, self.kw, self.stride[1], self.padding[1]))


@dataclass(frozen=True)
class PoolGeometry:
    N: int
    C: int
    H: int
    W: int
    kernel: tuple
    stride: tuple          # None: the op's default (= kernel)
    padding: tuple

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)


def _size(draw, k, p, max_size):
    """An input length that the kernel ``k`` with padding ``p`` fits."""
    return draw(st.integers(max(1, k - 2 * p), max(max_size, k)))


@st.composite
def conv_geometries(draw, max_batch=2, max_channels=3, max_kernel=3, max_stride=3, max_pad=2,
                    max_size=7):
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    stride = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    padding = (draw(st.integers(0, max_pad)), draw(st.integers(0, max_pad)))
    return ConvGeometry(N=draw(st.integers(1, max_batch)), C_in=draw(st.integers(1, max_channels)),
                        C_out=draw(st.integers(1, max_channels)),
                        H=_size(draw, kh, padding[0], max_size), W=_size(draw, kw, padding[1], max_size),
                        kh=kh, kw=kw, stride=stride, padding=padding)


@st.composite
def pool_geometries(draw, max_batch=2, max_channels=3, max_kernel=3, max_stride=3, max_size=7):
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = draw(st.none() | st.tuples(st.integers(1, max_stride), st.integers(1, max_stride)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    return PoolGeometry(N=draw(st.integers(1, max_batch)), C=draw(st.integers(1, max_channels)),
                        H=_size(draw, kernel[0], padding[0], max_size),
                        W=_size(draw, kernel[1], padding[1], max_size),
                        kernel=kernel, stride=stride, padding=padding)


def _generator(draw):
    return np.random.default_rng(draw(seeds))


@st.composite
def finite_arrays(draw, shape, lo=-2.0, hi=2.0):
    """float64 arrays of ``shape``, uniform in [lo, hi].

    Values come from a generator seeded by hypothesis (every element distinct and dense; drawing
    each of a few hundred elements through hypothesis would make its examples too large).
    """
    return _generator(draw).uniform(lo, hi, size=shape)


@st.composite
def away_from_zero_arrays(draw, shape, gap=1e-3, hi=2.0):
    """float64 arrays with ``gap <= |x| <= hi``: away from the kink of ReLU at 0."""
    g = _generator(draw)
    return g.uniform(gap, hi, size=shape) * g.choice([-1.0, 1.0], size=shape)


@st.composite
def distinct_arrays(draw, shape, gap=0.05):
    """float64 arrays whose values differ pairwise by at least ``0.4 * gap``.

    A random permutation of evenly spaced levels plus a jitter of at most ``0.3 * gap``: no ties,
    so max-pool stays away from its kinks under finite differences.
    """
    g = _generator(draw)
    n = int(np.prod(shape))
    levels = g.permutation(n) - n / 2 + g.uniform(-0.3, 0.3, size=n)
    return (levels * gap).reshape(shape)
