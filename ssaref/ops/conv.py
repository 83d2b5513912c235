"""2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``) by im2col + one GEMM.

With ``col2 = im2col(x).reshape(K, M)`` (``K = C_in*kh*kw`` rows, ``M = Ho*Wo*N`` columns, see
``im2col.py`` for the layout) and ``W2 = W.reshape(C_out, K)``::

    forward          y2  = W2 @ col2 + b            (C_out, M)
    backward input   dx  = col2im(W2.T @ dy2)       dy2 = dy as (C_out, M)
    backward params  dW  = dy2 @ col2.T,  db = dy2.sum(1)

The input gradient computes ``W2.T @ dy2`` one kernel row (a block of ``kw*C_in`` rows) at a time
and adds each block into the image as soon as it is made (col2im fused with the GEMM), so the
``(K, M)`` temporary is never allocated: fresh large buffers cost page faults on every step.  The
image is never padded (each offset adds only its in-image window; padding would be discarded), and
the copies and adds are split over ssaref's op threads by channel (``ssaref.threads``).
The weight gradient is computed as ``(col2 @ dy2.T).T``, the faster orientation for OpenBLAS.  What the forward
keeps for it is ``set_conv_save``'s choice: the column matrix (``K`` values per output position) or the input
(``C_in`` per input position, rebuilt into columns by the backward: one more im2col, kh kw times less memory).
``y`` and ``dx`` are NCHW views of batch-innermost buffers (see ``im2col.py``).

Bands (``set_conv_chunk``, docs/decisions.md D9): where a transient column matrix would take more than a bound, it
is made a band of output rows ``[r0, r1)`` at a time, the contiguous columns ``r0*Wo*N .. r1*Wo*N`` of ``col2``
(``im2col.im2col_bands``)::

    forward          y2[:, band] = W2 @ col2[:, band]           (written in place)
    backward params  dW = sum over bands of dy2[:, band] @ col2[:, band].T
    backward input   the blocks W2.T @ dy2[:, band], added into the image rows the band's windows read

(the device's transposed convolution likewise in bands of image rows).  Below the bound, the unbanded code, bit
for bit.

Device (CuPy) path of the input gradient: the per-offset adds would be two or more launches per kernel offset,
so there the transposed convolution is computed as a forward one (the identity behind every deconvolution).
Per spatial axis, with ``a = kh - 1 - ph``, let ``E`` (length ``H + kh - 1``) hold ``dy[oy]`` at
``sy*oy + a`` and zeros elsewhere (``dy`` dilated by the stride and padded)::

    dx[y] = sum_{i, oy: sy*oy + i - ph = y} W[i] dy[oy]  =  sum_{i'} W[kh - 1 - i'] E[y + i']

(substitute ``i' = kh - 1 - i``: ``y + i' = sy*oy + a``).  So ``dx`` is the stride-1, unpadded correlation of
``E`` with the flipped kernel, channels swapped: ``dx2 = Wf2 @ im2col(E)`` with ``Wf2[c_in, (c_out, i', j')] =
W[c_out, c_in, kh-1-i', kw-1-j']``.  Positions ``sy*oy + a`` outside ``E`` (padding wider than ``kh - 1``)
belong to outputs that read only padding and are left out.  One zero fill, one strided copy of ``dy`` into it,
one window gather (``im2col.window_view``), one copy of the flipped kernel and one GEMM, whatever the stride and
padding.  The device's forward and weight-gradient GEMMs are the same products as ``tensordot`` calls (no reshape
of their operands).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .im2col import (
    BLOCK,
    _contiguous,
    _fill_outside,
    as_pair,
    conv_output_size,
    im2col,
    im2col_bands,
    split_rows,
    valid_offsets,
    window_view,
)

__all__ = [
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_params",
    "batch_innermost",
    "SAVE_MODES",
    "resolved_save",
    "input_cache",
    "DEFAULT_SAVE",
    "set_conv_save",
    "conv_save",
    "SavedInput",
    "DEFAULT_CHUNK_MIB",
    "set_conv_chunk",
    "conv_chunk",
]

# what a convolution keeps for its weight gradient (``set_conv_save``): "columns", the im2col matrix of the forward
# (C_in kh kw values per output position; the backward reads it), or "input", the input itself (C_in H W values,
# often held by the layer before anyway) and the backward rebuilds the columns (one more im2col a step)
# "recompute" is "input" for every convolution, and a factorised one (``nn.SVDConv2d``, two convolutions) keeps only
# its input, not the intermediate between its two passes: the backward runs the first pass again (D10)
SAVE_MODES = ("auto", "columns", "input", "recompute")
# input mode on NumPy: below this many input channels the weight gradient rebuilds the whole column matrix instead
# of one kernel offset at a time (the per-offset GEMMs (C_out, M) x (M, C_in) are too thin: measured 4x slower at
# C_in = 3, 0.98-1.11x the whole rebuild at C_in = 16-192; that matrix is small there anyway)
BY_OFFSET_MIN_CHANNELS = 16
# the default, "auto": "input" on NumPy, measured (docs/decisions.md D8: step memory -30 % (smallconv) to -73 %
# (resnet20) for a 3-11 % slower step); "columns" on a device, where the rebuild is 2-4 more launches per
# convolution and no device has been lent to measure the trade
DEFAULT_SAVE = "auto"
# the transient column matrices of a convolution (the forward's in input mode, the backward's rebuilt one, the input
# gradient's blocks) are made a band of output rows at a time when the whole would take more than this many MiB
# (``set_conv_chunk``; 0: always whole).  The default, None ("auto"): DEFAULT_CHUNK_MIB on NumPy, measured (D9: less
# memory and a faster step than whole), 0 on a device, where each band is two or more launches more and no device
# has been lent to measure the trade (``bench --backend cupy --conv-chunk 8`` measures it)
DEFAULT_CHUNK_MIB = 8.0
_SAVE: dict = {"mode": DEFAULT_SAVE, "chunk": None}


def set_conv_save(mode):
    """Choose what every later ``conv2d_forward`` keeps for its backward (``SAVE_MODES``); returns the old mode.
    The gradients are the same numbers either way (the rebuilt columns are the forward's, bit for bit)."""
    if mode not in SAVE_MODES:
        raise ValueError(f"conv save mode must be one of {', '.join(SAVE_MODES)}, got {mode!r}")
    old, _SAVE["mode"] = _SAVE["mode"], mode
    return old


def resolved_save(xp, save=None):
    """The save mode a convolution on array module ``xp`` uses: ``save``, else ``set_conv_save``'s mode, with
    "auto" resolved ("input" on NumPy, "columns" on a device)."""
    mode = save or _SAVE["mode"]
    if mode == "auto":
        mode = "input" if xp is np else "columns"
    return mode


def input_cache(x, kernel, stride, padding, has_bias):
    """The cache ``conv2d_forward(x, W, b, stride, padding, save="input")`` returns, without running the
    convolution: for a backward whose input was made again (``nn.SVDConv2d`` in save mode "recompute").  ``kernel``
    is ``(kh, kw)``."""
    kh, kw = kernel
    sy, sx = as_pair(stride, "stride", 1)
    ph, pw = as_pair(padding, "padding", 0)
    N, C_in, H, Wd = x.shape
    Ho, Wo = conv_output_size(H, kh, sy, ph), conv_output_size(Wd, kw, sx, pw)
    kept = SavedInput(x, (kh, kw, sy, sx, ph, pw), (C_in, kh, kw, Ho, Wo, N))
    return kept, tuple(x.shape), (sy, sx), (ph, pw), bool(has_bias)


def conv_save():
    """The current save mode (``set_conv_save``)."""
    return _SAVE["mode"]


def set_conv_chunk(mib):
    """Bound every later convolution's transient column matrix to ``mib`` MiB (a band of output rows at a time; at
    least one row; 0: always the whole matrix; None: the default, ``DEFAULT_CHUNK_MIB`` on NumPy, 0 on a device);
    returns the old setting.  The same numbers up to round-off (a band's GEMM blocks its sums differently); below
    the bound nothing changes, bit for bit."""
    if mib is not None and (
        isinstance(mib, bool) or not isinstance(mib, (int, float)) or not mib >= 0 or mib == float("inf")
    ):
        raise ValueError(f"conv chunk must be a number of MiB >= 0 (or None: the default), got {mib!r}")
    old, _SAVE["chunk"] = _SAVE["chunk"], None if mib is None else float(mib)
    return old


def conv_chunk():
    """The current bound on a convolution's transient column matrix in MiB, None for the default
    (``set_conv_chunk``)."""
    return _SAVE["chunk"]


def _bands(rows, row_bytes, xp=np):
    """The bands ``[(r0, r1), ...]`` of ``rows`` output rows, each at most ``conv_chunk()`` MiB at ``row_bytes`` a
    row (at least one row a band), or None when the whole takes no more (or the bound is 0): the unbanded path.
    ``xp``: the arrays' module (the default bound depends on it)."""
    mib = _SAVE["chunk"]
    if mib is None:
        mib = DEFAULT_CHUNK_MIB if xp is np else 0.0
    budget = mib * 2**20
    if budget <= 0 or rows * row_bytes <= budget:
        return None
    per = max(1, int(budget // row_bytes))
    return [(r, min(rows, r + per)) for r in range(0, rows, per)]


class SavedInput:
    """The input of a convolution kept in place of its column matrix (save mode "input"): ``shape`` is the
    column matrix's, (C_in, kh, kw, Ho, Wo, N); ``columns()`` rebuilds it (``im2col``)."""

    __slots__ = ("x", "geometry", "shape")

    def __init__(self, x, geometry, shape):
        self.x, self.geometry, self.shape = x, geometry, tuple(shape)

    @property
    def dtype(self):
        return self.x.dtype

    def columns(self):
        return im2col(self.x, *self.geometry)


def batch_innermost(a):
    """``a`` (N, C, H, W) itself when its memory is batch-innermost (C, H, W, N), else such a copy (same values):
    the layout every conv GEMM reads.  A layer hands its ``dy`` through this once for both backward GEMMs.  On a
    device ``a`` itself: the device's backward ops read any memory order."""
    xp = get_array_module(a)
    if xp is not np:  # a device: the backward ops read any layout, a copy would be a launch more
        return a
    t = a.transpose(1, 2, 3, 0)
    if t.flags.c_contiguous:
        return a
    out = xp.empty(t.shape, dtype=a.dtype)

    def part(lo, hi):
        out[lo:hi] = t[lo:hi]

    split_rows(xp, t.shape[0], part, t.size)
    return out.transpose(3, 0, 1, 2)


def conv2d_forward(x, W, b=None, stride=1, padding=0, save=None):
    """``y = W * x + b`` (cross-correlation).

    Parameters
    ----------
    x : array, shape (N, C_in, H, W)
    W : array, shape (C_out, C_in, kh, kw)
    b : array, shape (C_out,), or None
    stride, padding : int or (int, int)
        Stride (>= 1) and zero padding (>= 0) along (H, W).

    Returns
    -------
    y : array, shape (N, C_out, Ho, Wo)
        ``Ho = (H + 2*ph - kh) // sy + 1``, likewise ``Wo``.
    cache : tuple
        ``(col, x_shape, stride, padding, has_bias)``; ``col`` of shape (C_in, kh, kw, Ho, Wo, N), or with
        ``save`` "input" (default: ``set_conv_save``'s mode) a ``SavedInput`` that rebuilds it in the backward.
    """
    if x.ndim != 4 or W.ndim != 4:
        raise ValueError(
            f"conv2d expects x (N, C, H, W) and W (C_out, C_in, kh, kw), got x {tuple(x.shape)} and W {tuple(W.shape)}"
        )
    C_out, C_in, kh, kw = W.shape
    if x.shape[1] != C_in:
        raise ValueError(f"conv2d: x has {x.shape[1]} channels but W of shape {tuple(W.shape)} expects {C_in}")
    if b is not None and tuple(b.shape) != (C_out,):
        raise ValueError(f"conv2d: bias must have shape ({C_out},), got {tuple(b.shape)}")
    if x.dtype != W.dtype or (b is not None and b.dtype != W.dtype):
        raise ValueError(
            f"conv2d: dtypes differ (x {x.dtype}, W {W.dtype}{'' if b is None else f', b {b.dtype}'}); cast explicitly"
        )
    sy, sx = as_pair(stride, "stride", 1)
    ph, pw = as_pair(padding, "padding", 0)
    xp = get_array_module(x, W)
    mode = resolved_save(xp, save)
    if mode == "recompute":  # a single convolution has nothing to recompute: it keeps its input
        mode = "input"
    if mode not in ("columns", "input"):
        raise ValueError(f"conv save mode must be one of {', '.join(SAVE_MODES)}, got {mode!r}")
    cache = input_cache(x, (kh, kw), (sy, sx), (ph, pw), b is not None) if mode == "input" else None
    if cache is not None:  # the columns are not kept: made a band of output rows at a time where they are large
        _, _, _, Ho, Wo, N = cache[0].shape
        bands = _bands(Ho, C_in * kh * kw * Wo * N * x.dtype.itemsize, xp)
        if bands is not None:
            return _forward_bands(x, W, b, cache[0], bands), cache
    col = im2col(x, kh, kw, sy, sx, ph, pw)  # (C_in, kh, kw, Ho, Wo, N)
    _, _, _, Ho, Wo, N = col.shape
    if cache is None:  # "columns"
        cache = (col, tuple(x.shape), (sy, sx), (ph, pw), b is not None)
    if xp is not np:  # a device: the same GEMM as one call, the bias as one launch
        y4 = xp.tensordot(W, col, axes=3)  # (C_out, Ho, Wo, N)
        if b is not None:
            _add_bias(y4, b)
        return y4.transpose(3, 0, 1, 2), cache
    y2 = W.reshape(C_out, -1) @ col.reshape(C_in * kh * kw, -1)  # y2 = W2 @ col2, (C_out, M)
    if b is not None:
        _add_bias(y2.reshape(C_out, Ho, Wo, N), b)
    y = y2.reshape(C_out, Ho, Wo, N).transpose(3, 0, 1, 2)
    return y, cache


def _forward_bands(x, W, b, saved, bands):
    """``conv2d_forward``'s ``y`` with the column matrix made a band of output rows at a time (``_bands``): each
    band's GEMM ``W2 @ col2[:, band]`` writes its own columns of ``y2`` in place.  NumPy and a device alike."""
    xp = get_array_module(x, W)
    C_out = W.shape[0]
    _, _, _, Ho, Wo, N = saved.shape
    _, _, band = im2col_bands(x, *saved.geometry)
    W2 = W.reshape(C_out, -1)
    y4 = xp.empty((C_out, Ho, Wo, N), dtype=x.dtype)  # batch-innermost, as the unbanded path's
    y2 = y4.reshape(C_out, -1)
    for r0, r1 in bands:
        col = band(r0, r1)
        xp.matmul(W2, col.reshape(W2.shape[1], -1), out=y2[:, r0 * Wo * N : r1 * Wo * N])
        del col  # before the next band's is made
    if b is not None:
        _add_bias(y4, b)
    return y4.transpose(3, 0, 1, 2)


def _add_bias(y4, b):
    """``y4 += b`` over the channels (axis 0) of a (C_out, Ho, Wo, N) output: split over the op threads by channel
    on NumPy, one launch on a device."""
    xp = get_array_module(y4)
    if xp is not np:
        y4 += b[:, None, None, None]
        return
    y2, bias = y4.reshape(y4.shape[0], -1), b[:, None]

    def add_bias(lo, hi):
        y2[lo:hi] += bias[lo:hi]

    split_rows(xp, y2.shape[0], add_bias, y2.size)


def _check_dy(dy, cache):
    col, (N, _, _, _), _, _, _ = cache
    _, _, _, Ho, Wo, _ = col.shape
    if dy.ndim != 4 or (dy.shape[0], dy.shape[2], dy.shape[3]) != (N, Ho, Wo):
        raise ValueError(
            f"conv2d backward: dy of shape {tuple(dy.shape)} does not match the "
            f"forward output (N, C_out, Ho, Wo) = ({N}, C_out, {Ho}, {Wo})"
        )


def _dy_matrix(dy, cache):
    """``dy`` (N, C_out, Ho, Wo) as the (C_out, Ho*Wo*N) matrix matching ``col``'s columns."""
    _check_dy(dy, cache)
    return dy.transpose(1, 2, 3, 0).reshape(dy.shape[1], -1)  # a view when dy is batch-innermost


def conv2d_backward_input(dy, W, cache):
    """``dx = col2im(W2.T @ dy2)``.

    Parameters
    ----------
    dy : array, shape (N, C_out, Ho, Wo)
    W : array, shape (C_out, C_in, kh, kw)
        The forward weights for BP, or the matrix that replaces them (feedback alignment).
    cache : tuple
        From :func:`conv2d_forward`.

    Returns
    -------
    dx : array, shape (N, C_in, H, W)
    """
    col, (N, C_in, H, Wd), (sy, sx), (ph, pw), _ = cache
    _, kh, kw, Ho, Wo, _ = col.shape
    _check_dy(dy, cache)
    if W.ndim != 4 or tuple(W.shape) != (dy.shape[1], C_in, kh, kw):
        raise ValueError(
            f"conv2d backward: W of shape {tuple(W.shape)} does not match "
            f"(C_out, C_in, kh, kw) = {(dy.shape[1], C_in, kh, kw)}"
        )
    if W.dtype != dy.dtype:
        raise ValueError(f"conv2d backward: dtypes differ (dy {dy.dtype}, W {W.dtype}); cast explicitly")
    xp = get_array_module(dy, W)
    if xp is not np:
        return _backward_input_device(xp, dy, W, (N, C_in, H, Wd), (sy, sx), (ph, pw))
    dy2 = _dy_matrix(dy, cache)  # (C_out, M)
    # W2.T with its rows ordered (i, j, c): one block of kw*C_in rows per kernel row i
    Wk = xp.ascontiguousarray(W.transpose(2, 3, 1, 0)).reshape(kh, kw * C_in, -1)
    # the image gradient itself, unpadded: what a kernel offset would add to the padding is never added
    dx = xp.zeros((C_in, H, Wd, N), dtype=dy.dtype)
    # a band of output rows at a time where a block would be large (``_bands``): the adds of a band go to the
    # image rows its windows read (overlapping the next band's where kh > sy: added, as within a band)
    bands = _bands(Ho, kw * C_in * Wo * N * dy.dtype.itemsize, xp) or [(0, Ho)]
    rows = bands[0][1] - bands[0][0]
    buf = xp.empty(kw * C_in * rows * Wo * N, dtype=dy.dtype)
    for r0, r1 in bands:
        block = buf[: kw * C_in * (r1 - r0) * Wo * N].reshape(kw * C_in, -1)
        dcol_i = block.reshape(kw, C_in, r1 - r0, Wo, N)  # = dcol[:, i, :, band] moved axes
        offsets = list(valid_offsets(kh, kw, sy, sx, ph, pw, H, Wd, Ho, Wo, rows=(r0, r1)))
        for i in range(kh):
            xp.matmul(Wk[i], dy2[:, r0 * Wo * N : r1 * Wo * N], out=block)  # dcol[:, i, :] = W[:, :, i, :].T @ dy2
            row = [o for o in offsets if o[0] == i]

            def add(lo, hi):  # col2im of kernel row i, offsets j in order
                for _, j, orow, ocol, irow, icol in row:
                    dx[lo:hi, irow, icol] += dcol_i[j, lo:hi, orow, ocol]

            split_rows(xp, C_in, add, block.size, block=BLOCK)
    return dx.transpose(3, 0, 1, 2)


def _dilated_span(a, s, n_out, length):
    """The outputs ``oy`` in ``[lo, hi)`` whose position ``s*oy + a`` lies in ``[0, length)`` (module docstring)."""
    lo = max(0, -(a // s)) if a < 0 else 0  # ceil(-a / s)
    hi = min(n_out, (length - 1 - a) // s + 1) if length - 1 - a >= 0 else 0
    return lo, max(lo, hi)


def _backward_input_device(xp, dy, W, x_shape, stride, padding):
    """``conv2d_backward_input`` on a device: ``dx2 = Wf2 @ im2col(E)`` (module docstring), ten launches."""
    N, C_in, H, Wd = x_shape
    (sy, sx), (ph, pw) = stride, padding
    C_out, _, kh, kw = W.shape
    _, _, Ho, Wo = dy.shape
    if (kh, kw, sy, sx, ph, pw) == (1, 1, 1, 1, 0, 0):  # a 1x1 conv: E is dy itself
        dyc = dy.transpose(1, 2, 3, 0)  # (C_out, H, W, N)
        return xp.tensordot(W[:, :, 0, 0], dyc, axes=([0], [0])).transpose(3, 0, 1, 2)
    ay, ax = kh - 1 - ph, kw - 1 - pw
    Hl, Wl = H + kh - 1, Wd + kw - 1
    (ylo, yhi), (xlo, xhi) = _dilated_span(ay, sy, Ho, Hl), _dilated_span(ax, sx, Wo, Wl)
    E = xp.zeros((N, C_out, Hl, Wl), dtype=dy.dtype)  # dy dilated by the stride, padded
    if ylo < yhi and xlo < xhi:
        d = dy if (ylo, yhi, xlo, xhi) == (0, Ho, 0, Wo) else dy[:, :, ylo:yhi, xlo:xhi]
        E[:, :, ay + sy * ylo : ay + sy * (yhi - 1) + 1 : sy, ax + sx * xlo : ax + sx * (xhi - 1) + 1 : sx] = d
    windows = window_view(E, kh, kw, 1, 1, H, Wd, batch_first=True)  # (C_out, kh, kw, H, W, N)
    Wf = xp.ascontiguousarray(W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])  # (C_in, C_out, kh, kw)
    bands = _bands(H, C_out * kh * kw * Wd * N * dy.dtype.itemsize, xp)
    if bands is None:
        return xp.tensordot(Wf, xp.ascontiguousarray(windows), axes=3).transpose(3, 0, 1, 2)  # (C_in, H, W, N)
    # a band of image rows at a time (``_bands``): each band's GEMM writes its own columns of dx2 in place
    dx4 = xp.empty((C_in, H, Wd, N), dtype=dy.dtype)
    dx2, Wf2 = dx4.reshape(C_in, -1), Wf.reshape(C_in, -1)
    for y0, y1 in bands:
        colE = xp.ascontiguousarray(windows[:, :, :, y0:y1])
        xp.matmul(Wf2, colE.reshape(Wf2.shape[1], -1), out=dx2[:, y0 * Wd * N : y1 * Wd * N])
        del colE  # before the next band's is made
    return dx4.transpose(3, 0, 1, 2)


def conv2d_backward_params(dy, cache):
    """``dW = dy2 @ col2.T`` and ``db = sum of dy over (N, Ho, Wo)``.

    Parameters
    ----------
    dy : array, shape (N, C_out, Ho, Wo)
    cache : tuple
        From :func:`conv2d_forward`.

    Returns
    -------
    dW : array, shape (C_out, C_in, kh, kw)
    db : array, shape (C_out,), or None when the forward pass had no bias
    """
    col, _, _, _, has_bias = cache
    if isinstance(col, SavedInput):  # save mode "input"
        C_in, kh, kw, Ho, Wo, N = col.shape
        bands = _bands(Ho, C_in * kh * kw * Wo * N * col.dtype.itemsize, get_array_module(dy))
        if bands is not None:
            return _backward_params_bands(dy, cache, bands)
        if get_array_module(dy) is np and col.shape[0] >= BY_OFFSET_MIN_CHANNELS:
            return _backward_params_by_offset(dy, cache)
        col = col.columns()  # the forward's columns, rebuilt from its input (a device; few channels)
    xp = get_array_module(dy, col)
    if xp is not np:  # a device: the same GEMM as one call (contracting (Ho, Wo, N))
        _check_dy(dy, cache)
        dW = xp.tensordot(dy, col, axes=([2, 3, 0], [3, 4, 5]))  # (C_out, C_in, kh, kw)
        return dW, (dy.sum(axis=(0, 2, 3)) if has_bias else None)
    dy2 = _dy_matrix(dy, cache)  # (C_out, M)
    col2 = col.reshape(-1, dy2.shape[1])  # (K, M)
    db = dy2.sum(axis=1) if has_bias else None
    # dW = dy2 @ col2.T; OpenBLAS is fastest with the taller factor first (measured: K=864, C_out=192:
    # 97 vs 304 ms; K=9, C_out=96: 4 vs 13 ms), so for K >= C_out compute the transpose col2 @ dy2.T
    if col2.shape[0] >= dy2.shape[0]:
        dW = (col2 @ dy2.T).T  # dW.T = col2 @ dy2.T, (K, C_out)
    else:
        dW = dy2 @ col2.T  # (C_out, K)
    return dW.reshape((dy.shape[1],) + col.shape[:3]), db  # C-contiguous (reshape copies a transpose)


def _backward_params_by_offset(dy, cache):
    """``conv2d_backward_params`` from the kept input (save mode "input", NumPy): one kernel offset (i, j) at a
    time, its block of columns ``col[:, i, j]`` (C_in, Ho Wo N) copied from the input into one reused buffer and
    ``dW[:, :, i, j] = dy2 @ block^T``: the column matrix is never whole (kh kw times less memory than "columns"),
    the same products summed in the same order per output element up to the GEMM's blocking (round-off)."""
    saved, _, _, _, has_bias = cache
    x, (kh, kw, sy, sx, ph, pw) = saved.x, saved.geometry
    C_in, _, _, Ho, Wo, N = saved.shape
    H, Wd = x.shape[2], x.shape[3]
    dy2 = _dy_matrix(dy, cache)  # (C_out, M)
    C_out = dy2.shape[0]
    xc = x.transpose(1, 2, 3, 0)  # (C, H, W, N), no copy for batch-innermost x
    if not xc.flags.c_contiguous:
        xc = _contiguous(np, xc)
    block = np.empty((C_in, Ho, Wo, N), dtype=x.dtype)
    b2 = block.reshape(C_in, -1)
    dW = np.empty((C_out, C_in, kh, kw), dtype=dy2.dtype)
    for i, j, orow, ocol, irow, icol in valid_offsets(kh, kw, sy, sx, ph, pw, H, Wd, Ho, Wo):

        def part(lo, hi):
            dst = block[lo:hi]
            dst[:, orow, ocol] = xc[lo:hi, irow, icol]
            _fill_outside(dst, orow, ocol, Ho, Wo)

        split_rows(np, C_in, part, block.size, block=BLOCK)
        # the faster orientation for OpenBLAS: the taller factor first (conv2d_backward_params)
        dW[:, :, i, j] = (b2 @ dy2.T).T if C_in >= C_out else dy2 @ b2.T
    db = dy2.sum(axis=1) if has_bias else None
    return dW, db


def _backward_params_bands(dy, cache, bands):
    """``conv2d_backward_params`` from the kept input, the column matrix rebuilt a band of output rows at a time
    (``_bands``): ``dW = sum over bands of dy2[:, band] @ col2[:, band]^T``, in the faster orientation for OpenBLAS
    (``conv2d_backward_params``).  NumPy and a device alike."""
    saved, _, _, _, has_bias = cache
    C_in, kh, kw, Ho, Wo, N = saved.shape
    _, _, band = im2col_bands(saved.x, *saved.geometry)
    dy2 = _dy_matrix(dy, cache)  # (C_out, M); a view for batch-innermost dy
    xp = get_array_module(dy2)
    C_out, K = dy2.shape[0], C_in * kh * kw
    tall = K >= C_out  # accumulate dW.T = sum col2 @ dy2.T
    acc = part = None
    for r0, r1 in bands:
        col = band(r0, r1).reshape(K, -1)
        d = dy2[:, r0 * Wo * N : r1 * Wo * N]
        a, c = (col, d.T) if tall else (d, col.T)
        if acc is None:
            acc = xp.matmul(a, c)
        else:
            part = xp.matmul(a, c, out=part)
            acc += part
        del col, a, c  # before the next band's is made
    assert acc is not None  # bands: at least one
    dW = (acc.T if tall else acc).reshape(C_out, C_in, kh, kw)  # C-contiguous (reshape copies a transpose)
    return dW, (dy2.sum(axis=1) if has_bias else None)
