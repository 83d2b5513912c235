"""im2col / col2im by strided slices over kernel offsets (the Chainer ``utils/conv.py`` scheme).

One loop over the ``kh * kw`` kernel offsets, each a strided slice of the padded image, serves
numpy and cupy alike; there is no ``np.add.at`` and no per-pixel Python loop.

Layout
------
Callers see NCHW.  Internally the padded image is held *batch innermost*,
``xpad`` of shape ``(C, Hp, Wp, N)``, and the column tensor is::

    col[c, i, j, oy, ox, n] = xpad[c, i + sy*oy, j + sx*ox, n]       shape (C, kh, kw, Ho, Wo, N)

``col.reshape(C*kh*kw, Ho*Wo*N)`` is a C-contiguous matrix whose rows follow the PyTorch weight
order ``W.reshape(C_out, C*kh*kw)``, so a convolution is one GEMM ``W2 @ col2`` and its weight
gradient one GEMM ``dy2 @ col2.T`` (BLAS reads the transpose in place, no copy).  With ``N``
innermost every kernel-offset slice moves runs of ``Wo*N`` contiguous numbers, which keeps the
copies cheap at the small spatial sizes of the benchmark nets.

Images handed back (``col2im``, and the outputs of ``conv``/``pool``) are NCHW *views* of such
batch-innermost buffers, ``buf.transpose(3, 0, 1, 2)``: ordinary NCHW arrays for every purpose
(only ``.flags.c_contiguous`` is False).  Feeding them to the next conv or pool needs no
transposing copy, because ``x.transpose(1, 2, 3, 0)`` is then contiguous again.
"""
from __future__ import annotations

import numbers

from ..backend import get_array_module

__all__ = ["as_pair", "conv_output_size", "kernel_offsets", "pad_hw", "im2col", "col2im"]


def as_pair(value, name, minimum=0):
    """``int`` or ``(int, int)`` -> ``(int, int)``, each ``>= minimum``; ValueError otherwise."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size, k, s, p):
    """Output length ``(size + 2p - k) // s + 1`` of a window ``k``, stride ``s``, padding ``p``.

    Raises ValueError when the kernel does not fit the padded input.
    """
    if k > size + 2 * p:
        raise ValueError(f"kernel size {k} is larger than the padded input size {size} + 2*{p}")
    return (size + 2 * p - k) // s + 1


def kernel_offsets(kh, kw, sy, sx, Ho, Wo):
    """Yield ``(i, j, rows, cols)``: the slices of the padded image read by kernel offset (i, j)."""
    for i in range(kh):
        rows = slice(i, i + sy * (Ho - 1) + 1, sy)
        for j in range(kw):
            yield i, j, rows, slice(j, j + sx * (Wo - 1) + 1, sx)


def pad_hw(a, ph, pw, value=0.0):
    """Pad the two middle (spatial) axes of ``a``.

    Parameters
    ----------
    a : array, shape (A, H, W, B)
        An image stack with the spatial axes in the middle, e.g. ``x.transpose(1, 2, 3, 0)``.
    ph, pw : int
        Rows/columns added on both sides.
    value : float
        Fill value of the border (0 for conv and avg-pool, -inf for max-pool).

    Returns
    -------
    apad : array, shape (A, H + 2*ph, W + 2*pw, B)
        ``a`` itself (no copy) when there is no padding.
    """
    if ph == 0 and pw == 0:
        return a
    xp = get_array_module(a)
    A, H, W, B = a.shape
    apad = xp.full((A, H + 2 * ph, W + 2 * pw, B), value, dtype=a.dtype)
    apad[:, ph:ph + H, pw:pw + W] = a
    return apad


def im2col(x, kh, kw, sy, sx, ph, pw):
    """Unfold the convolution windows of ``x`` into columns.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kh, kw : int
        Kernel size.
    sy, sx : int
        Stride.
    ph, pw : int
        Zero padding on both sides.

    Returns
    -------
    col : array, shape (C, kh, kw, Ho, Wo, N), C-contiguous
        ``col[c, i, j, oy, ox, n] = xpad[n, c, i + sy*oy, j + sx*ox]``.
    """
    N, C, H, W = x.shape
    Ho, Wo = conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)
    xp = get_array_module(x)
    xc = x.transpose(1, 2, 3, 0)
    if ph == pw == 0:             # one transposing copy (if any) instead of one per kernel offset
        xc = xp.ascontiguousarray(xc)
    xpad = pad_hw(xc, ph, pw)                                   # (C, Hp, Wp, N)
    col = xp.empty((C, kh, kw, Ho, Wo, N), dtype=x.dtype)
    for i, j, rows, cols in kernel_offsets(kh, kw, sy, sx, Ho, Wo):
        col[:, i, j] = xpad[:, rows, cols]
    return col


def col2im(col, sy, sx, ph, pw, H, W):
    """Fold columns back into an image, summing overlaps: the adjoint of :func:`im2col`.

    Parameters
    ----------
    col : array, shape (C, kh, kw, Ho, Wo, N)
    sy, sx, ph, pw : int
        Stride and padding used by ``im2col``.
    H, W : int
        Size of the unpadded image.

    Returns
    -------
    x : array, shape (N, C, H, W)
        ``<im2col(z), col> == <z, col2im(col)>`` for every ``z``.  A view (batch-innermost memory).
    """
    C, kh, kw, Ho, Wo, N = col.shape
    if (conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)) != (Ho, Wo):
        raise ValueError(f"col of shape {col.shape} does not match an image of size {(H, W)} "
                         f"with stride {(sy, sx)} and padding {(ph, pw)}")
    xp = get_array_module(col)
    dpad = xp.zeros((C, H + 2 * ph, W + 2 * pw, N), dtype=col.dtype)
    for i, j, rows, cols in kernel_offsets(kh, kw, sy, sx, Ho, Wo):
        dpad[:, rows, cols] += col[:, i, j]
    return dpad[:, ph:ph + H, pw:pw + W].transpose(3, 0, 1, 2)
