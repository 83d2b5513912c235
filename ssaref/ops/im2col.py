"""im2col / col2im by strided slices over kernel offsets (the Chainer ``utils/conv.py`` scheme).

One loop over the ``kh * kw`` kernel offsets, each a strided slice of the padded image, serves
numpy and cupy alike; there is no ``np.add.at`` and no per-pixel Python loop.  On NumPy the padded
image is never materialised (each offset copies the window that lies inside the image and zeros the
rest; ``col2im`` adds only inside the image), and the copies are split over ssaref's op threads by
channel, a slice of channels at a time (``split_rows``, ``ssaref.threads``): the same numbers, fewer
passes over memory.

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

Device (CuPy) path: kernel launches, not memory passes, are what costs there, so ``im2col`` is one
padded copy (``pad_nchw``, when there is padding) and one gather through ``window_view``, the strided
view ``(C, kh, kw, Ho, Wo, N)`` of the padded image whose element ``[c, i, j, oy, ox, n]`` *is*
``xpad[n, c, i + sy*oy, j + sx*ox]`` (strides ``(s_c, s_y, s_x, sy*s_y, sx*s_x, s_n)``, whatever the
image's memory order): 2-4 launches instead of two or more per kernel offset.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..backend import get_array_module
from ..threads import parallel_ranges

__all__ = [
    "as_pair",
    "conv_output_size",
    "kernel_offsets",
    "valid_offsets",
    "pad_hw",
    "pad_nchw",
    "window_view",
    "im2col",
    "im2col_bands",
    "col2im",
    "split_rows",
]

# the element count below which an op is not split over threads (the hand-off costs tens of microseconds)
PARALLEL_MIN = 1 << 16
# elements per slice of channels in ops that pass over the same rows several times (kept in cache between passes)
BLOCK = 1 << 17


def split_rows(xp, n, fn, work=0, block=None):
    """``fn(lo, hi)`` over ``range(n)`` (rows of an op's outermost memory axis), split over ssaref's op threads
    (``ssaref.threads.parallel_ranges``) on the NumPy backend when the op touches at least ``PARALLEL_MIN``
    elements (``work``); else one call.  With ``block`` (NumPy), each thread's part is handed to ``fn`` in
    slices of about ``block`` elements (at least one row), so an op that makes several passes over its rows makes
    them in cache.  Results are the same either way: parts write disjoint rows."""
    if xp is not np:
        fn(0, n)
        return
    body = fn
    if block is not None and work > block and n > 1:
        per = max(1, (block * n) // max(work, 1))

        def body(lo, hi):
            for a in range(lo, hi, per):
                fn(a, min(hi, a + per))

    if work >= PARALLEL_MIN and n > 1:
        parallel_ranges(n, body, min_chunk=max(1, (PARALLEL_MIN * n) // max(work, 1)))
    else:
        body(0, n)


def as_pair(value, name, minimum=0):
    """``int`` or ``(int, int)`` -> ``(int, int)``, each ``>= minimum``; ValueError otherwise."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair):
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


def valid_offsets(kh, kw, sy, sx, ph, pw, H, W, Ho, Wo, rows=None):
    """Yield ``(i, j, out_rows, out_cols, in_rows, in_cols)`` per kernel offset: the output window positions
    ``(oy, ox)`` whose input pixel ``(i + sy*oy - ph, j + sx*ox - pw)`` lies inside the unpadded image, and those
    input pixels, as slices (empty slices where none does).  Everything else of that offset reads padding.
    ``rows = (r0, r1)``: only the output rows ``r0 <= oy < r1`` (a band), ``out_rows`` counted from ``r0``."""

    def span(k, s, p, size, first, last):
        lo = max(first, -((k - p) // s)) if k < p else first  # ceil((p - k) / s)
        hi = min(last, (size - 1 + p - k) // s + 1) if size - 1 + p - k >= 0 else first
        hi = max(hi, lo)
        start = k + s * lo - p
        return slice(lo - first, hi - first), slice(start, start + s * (hi - lo - 1) + 1 if hi > lo else start, s)

    r0, r1 = rows or (0, Ho)
    for i in range(kh):
        orow, irow = span(i, sy, ph, H, r0, r1)
        for j in range(kw):
            ocol, icol = span(j, sx, pw, W, 0, Wo)
            yield i, j, orow, ocol, irow, icol


def _fill_outside(dst, orow, ocol, Ho, Wo, value=0.0):
    """Set ``dst[:, oy, ox]`` (axes 1, 2 = output rows, columns) to ``value`` outside ``orow`` x ``ocol``."""
    if orow.start > 0:
        dst[:, : orow.start] = value
    if orow.stop < Ho:
        dst[:, orow.stop :] = value
    if ocol.start > 0:
        dst[:, orow, : ocol.start] = value
    if ocol.stop < Wo:
        dst[:, orow, ocol.stop :] = value


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
    apad = xp.empty((A, H + 2 * ph, W + 2 * pw, B), dtype=a.dtype)

    def part(lo, hi):  # the border only is filled, the interior is copied once
        d = apad[lo:hi]
        d[:, ph : ph + H, pw : pw + W] = a[lo:hi]
        _fill_outside(d, slice(ph, ph + H), slice(pw, pw + W), H + 2 * ph, W + 2 * pw, value)

    split_rows(xp, A, part, apad.size)
    return apad


def window_view(a, kh, kw, sy, sx, Ho, Wo, batch_first=False):
    """The windows of ``a`` as a strided view, no copy: ``v[c, i, j, oy, ox, n] = a[c, i + sy*oy, j + sx*ox, n]``.

    Parameters
    ----------
    a : array, shape (A, Hp, Wp, B), or (B, A, Hp, Wp) with ``batch_first``; any strides
        A (padded) image stack.
    kh, kw, sy, sx : int
        Window size and stride.
    Ho, Wo : int
        Window positions per axis, ``(Hp - kh) // sy + 1`` at most.
    batch_first : bool
        ``a`` is NCHW-shaped, ``(B, A, Hp, Wp)`` (the view is the same; ``v[c, i, j, oy, ox, n] =
        a[n, c, i + sy*oy, j + sx*ox]``).

    Returns
    -------
    v : array, shape (A, kh, kw, Ho, Wo, B)
        Strides ``(s_a, s_y, s_x, sy*s_y, sx*s_x, s_b)`` from ``a``'s own strides ``s_a, s_y, s_x, s_b``.
        Overlapping windows share memory: write through ``v`` only when the windows are disjoint.
    """
    if batch_first:
        (B, A, Hp, Wp), (s_b, s_a, s_y, s_x) = a.shape, a.strides
    else:
        (A, Hp, Wp, B), (s_a, s_y, s_x, s_b) = a.shape, a.strides
    if kh + sy * (Ho - 1) > Hp or kw + sx * (Wo - 1) > Wp:
        raise ValueError(f"window_view: {Ho}x{Wo} windows of {kh}x{kw}, stride {(sy, sx)}, do not fit {(Hp, Wp)}")
    xp = get_array_module(a)
    return xp.lib.stride_tricks.as_strided(
        a, shape=(A, kh, kw, Ho, Wo, B), strides=(s_a, s_y, s_x, sy * s_y, sx * s_x, s_b)
    )


def pad_nchw(x, ph, pw, value=0.0):
    """``x`` (N, C, H, W) padded by ``ph`` rows and ``pw`` columns on both sides with ``value``, in two launches
    (a fill, then the interior): the device path's padding, read through ``window_view(..., batch_first=True)``.
    ``x`` itself when there is no padding."""
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    xpad = get_array_module(x).full((N, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype)
    xpad[:, :, ph : ph + H, pw : pw + W] = x
    return xpad


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
    Ho, _, band = im2col_bands(x, kh, kw, sy, sx, ph, pw)
    return band(0, Ho)


def im2col_bands(x, kh, kw, sy, sx, ph, pw):
    """``(Ho, Wo, band)``: ``band(r0, r1)`` is ``im2col(x, ...)[:, :, :, r0:r1]``, the columns of the output rows
    ``r0 <= oy < r1`` only (C-contiguous, shape (C, kh, kw, r1 - r0, Wo, N): a contiguous range of the column
    matrix's ``Ho*Wo*N`` columns), the same numbers; the input's layout copy or padding is made once for every
    band.  A convolution builds its column matrix a band at a time to bound the temporary (``ops.conv``)."""
    N, C, H, W = x.shape
    Ho, Wo = conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)
    xp = get_array_module(x)
    if xp is not np:  # a device: one padded copy (if padded), then one gather of every window of the band
        windows = window_view(pad_nchw(x, ph, pw), kh, kw, sy, sx, Ho, Wo, batch_first=True)
        return Ho, Wo, lambda r0, r1: xp.ascontiguousarray(windows if (r0, r1) == (0, Ho) else windows[:, :, :, r0:r1])
    xc = x.transpose(1, 2, 3, 0)  # (C, H, W, N), no copy for batch-innermost x
    if not xc.flags.c_contiguous:  # one transposing copy instead of one strided gather per kernel offset
        xc = _contiguous(xp, xc)

    def band(r0, r1):
        col = xp.empty((C, kh, kw, r1 - r0, Wo, N), dtype=x.dtype)
        offsets = list(valid_offsets(kh, kw, sy, sx, ph, pw, H, W, Ho, Wo, rows=(r0, r1)))

        # the padding is never materialised: each offset copies its in-image window, zeros the rest
        def part(lo, hi):
            for i, j, orow, ocol, irow, icol in offsets:
                dst = col[lo:hi, i, j]
                dst[:, orow, ocol] = xc[lo:hi, irow, icol]
                _fill_outside(dst, orow, ocol, r1 - r0, Wo)

        split_rows(xp, C, part, col.size, block=BLOCK)
        return col

    return Ho, Wo, band


def _contiguous(xp, a):
    """``a`` copied C-contiguous (a transposing copy), split over the op threads by its first axis."""
    out = xp.empty(a.shape, dtype=a.dtype)

    def part(lo, hi):
        out[lo:hi] = a[lo:hi]

    split_rows(xp, a.shape[0], part, a.size)
    return out


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
        ``<im2col(z), col> == <z, col2im(col)>`` for every ``z``.  A view of a C-contiguous (C, H, W, N)
        buffer (batch-innermost memory).
    """
    C, kh, kw, Ho, Wo, N = col.shape
    if (conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)) != (Ho, Wo):
        raise ValueError(
            f"col of shape {col.shape} does not match an image of size {(H, W)} "
            f"with stride {(sy, sx)} and padding {(ph, pw)}"
        )
    xp = get_array_module(col)
    dx = xp.zeros((C, H, W, N), dtype=col.dtype)  # padding positions would be discarded: never added

    def part(lo, hi):
        for i, j, orow, ocol, irow, icol in valid_offsets(kh, kw, sy, sx, ph, pw, H, W, Ho, Wo):
            dx[lo:hi, irow, icol] += col[lo:hi, i, j, orow, ocol]

    split_rows(xp, C, part, col.size, block=BLOCK)
    return dx.transpose(3, 0, 1, 2)
