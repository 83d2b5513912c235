"""Max-, average- and global average pooling (NCHW), forward and backward.

Windows are the strided slices of ``im2col.py``, one per kernel offset, taken from a working
view ``(A, H, W, B)`` of the input that follows its memory order: ``(C, H, W, N)`` for the
batch-innermost outputs of conv and pool, ``(N*C, H, W, 1)`` for C-contiguous NCHW input.
Outputs come back in the same memory order.  Semantics follow ``torch.nn.functional`` with
``ceil_mode=False``:

* ``padding`` is at most half the kernel (PyTorch's rule), so every window holds an input value;
* max-pool pads with ``-inf``; when several elements of a window tie for the maximum, the whole
  gradient goes to the *first* of them in row-major window order (scan ``(i, j)``, keep a value
  only if strictly greater), which is what PyTorch's CPU kernel does;
* avg-pool counts the zero padding in the divisor (``count_include_pad=True``): ``/ (kh*kw)``.

Fast path: when ``kernel == stride`` the windows do not overlap, so the backward passes write
each window's gradient straight into ``dx`` (no temporary, no read-modify-write, and no zero fill
when the windows tile the padded image).  The forward passes use the offset loop in every case:
the windows of the reshape ``(A, Ho, kh, Wo, kw, B)`` are the same strided slices, and a numpy
reduction over its window axes measured no faster on batch-innermost input and ~50x slower on
C-contiguous NCHW input.

Device (CuPy) path, where launches count and not passes over memory: max-pool gathers every window
once through ``im2col.window_view`` and reduces it with one ``argmax`` (first maximum in row-major
window order, the tie rule above) and one ``max``; avg-pool sums the window view; the backward
passes of disjoint windows write through the window view of ``dx`` in one launch.  Overlapping
windows keep the per-offset scatter (their gradients add up).
"""

from __future__ import annotations

from collections import namedtuple


import numpy as np

from ..backend import get_array_module
from .im2col import as_pair, conv_output_size, kernel_offsets, pad_hw, pad_nchw, split_rows, window_view

__all__ = [
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "global_avgpool_forward",
    "global_avgpool_backward",
]

_BLOCK = 1 << 16  # input elements per slice of rows: the kernel-offset passes over a slice run in cache

_Geometry = namedtuple("_Geometry", "x_shape batch_last kh kw sy sx ph pw Ho Wo")


def _geometry(x, kernel, stride, padding, op):
    if x.ndim != 4:
        raise ValueError(f"{op} expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    kh, kw = as_pair(kernel, "kernel", 1)
    sy, sx = as_pair(kernel if stride is None else stride, "stride", 1)
    ph, pw = as_pair(padding, "padding", 0)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{op}: padding {(ph, pw)} must be at most half the kernel {(kh, kw)}")
    Ho, Wo = conv_output_size(x.shape[2], kh, sy, ph), conv_output_size(x.shape[3], kw, sx, pw)
    batch_last = x.strides[0] < min(x.strides[1:])  # memory (C, H, W, N)
    return _Geometry(tuple(x.shape), batch_last, kh, kw, sy, sx, ph, pw, Ho, Wo)


def _to_work(a, g):
    """(N, C, h, w) -> the working view (A, h, w, B) chosen by the forward input's layout."""
    return a.transpose(1, 2, 3, 0) if g.batch_last else a.reshape((-1,) + a.shape[2:] + (1,))


def _from_work(w, g):
    """(A, h, w, B) -> (N, C, h, w)."""
    return w.transpose(3, 0, 1, 2) if g.batch_last else w.reshape(g.x_shape[:2] + w.shape[1:3])


def _offsets(g):
    return kernel_offsets(g.kh, g.kw, g.sy, g.sx, g.Ho, g.Wo)


def _dy_work(dy, g, op):
    """``dy`` in the working layout, copied once into it (C-contiguous) when it arrives in another memory order
    (e.g. NCHW from a Linear layer's input gradient after a flatten): every kernel offset reads it again."""
    N, C = g.x_shape[:2]
    if tuple(dy.shape) != (N, C, g.Ho, g.Wo):
        raise ValueError(f"{op} backward: dy of shape {tuple(dy.shape)}, expected {(N, C, g.Ho, g.Wo)}")
    w = _to_work(dy, g)
    if not w.flags.c_contiguous:
        xp = get_array_module(w)
        out = xp.empty(w.shape, dtype=w.dtype)

        def part(lo, hi):
            out[lo:hi] = w[lo:hi]

        split_rows(xp, w.shape[0], part, w.size)
        w = out
    return w


def _windows(xpad, g):
    """The device path's (C, kh, kw, Ho, Wo, N) window view of the padded NCHW input (``im2col.window_view``)."""
    return window_view(xpad, g.kh, g.kw, g.sy, g.sx, g.Ho, g.Wo, batch_first=True)


def _disjoint_device(dy, g, op, fill):
    """Device backward of disjoint windows (kernel == stride): ``fill(view, dyw)`` writes every window's gradient
    through the window view of the padded ``dx`` (no overlaps, so no sums), ``dyw`` = ``dy`` as (C, 1, 1, Ho, Wo,
    N); returns ``dx`` (N, C, H, W)."""
    N, C, H, W = g.x_shape
    if tuple(dy.shape) != (N, C, g.Ho, g.Wo):
        raise ValueError(f"{op} backward: dy of shape {tuple(dy.shape)}, expected {(N, C, g.Ho, g.Wo)}")
    Hp, Wp = H + 2 * g.ph, W + 2 * g.pw
    xp = get_array_module(dy)
    tiled = (Hp, Wp) == (g.Ho * g.kh, g.Wo * g.kw)  # every element in a window: nothing left to zero
    dpad = (xp.empty if tiled else xp.zeros)((N, C, Hp, Wp), dtype=dy.dtype)
    fill(_windows(dpad, g), dy.transpose(1, 2, 3, 0)[:, None, None])
    return dpad[:, :, g.ph : g.ph + H, g.pw : g.pw + W] if (g.ph or g.pw) else dpad


def _scatter(g, dyw, window_grad):
    """``dx`` (N, C, H, W) from the per-offset window gradients, summed into place.

    ``window_grad(k, lo, hi, out=None)`` returns the (hi - lo, Ho, Wo, B) gradient of kernel offset ``k`` for
    rows ``lo:hi`` of the working layout, written into ``out`` when given (disjoint windows: straight into
    ``dx``, no temporary).  Rows are split over ssaref's op threads.
    """
    H, W = g.x_shape[2:]
    A, _, _, B = dyw.shape
    Hp, Wp = H + 2 * g.ph, W + 2 * g.pw
    disjoint = (g.kh, g.kw) == (g.sy, g.sx)
    tiled = disjoint and (Hp, Wp) == (g.Ho * g.kh, g.Wo * g.kw)
    xp = get_array_module(dyw)
    dpad = (xp.empty if tiled else xp.zeros)((A, Hp, Wp, B), dtype=dyw.dtype)
    offsets = list(enumerate(_offsets(g)))

    def part(lo, hi):  # rows lo:hi of the working layout
        for k, (_, _, rows, cols) in offsets:
            if disjoint:
                window_grad(k, lo, hi, out=dpad[lo:hi, rows, cols])  # each input element in one window
            else:
                dpad[lo:hi, rows, cols] += window_grad(k, lo, hi)

    split_rows(xp, A, part, dpad.size, block=_BLOCK)
    return _from_work(dpad[:, g.ph : g.ph + H, g.pw : g.pw + W], g)


def maxpool2d_forward(x, kernel, stride=None, padding=0):
    """Max over each window.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kernel : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel``.
    padding : int or (int, int)
        Implicit ``-inf`` padding, at most half the kernel.

    Returns
    -------
    y : array, shape (N, C, Ho, Wo)
    cache : tuple
        ``(argmax, geometry)``; ``argmax`` (working layout) is the winning kernel offset
        ``i*kw + j`` of each window (first maximum in row-major order); int8 (int32 for windows of more
        than 127) on NumPy; on a device the int64 of ``argmax`` (no cast launch), of shape (C, Ho, Wo, N).
    """
    g = _geometry(x, kernel, stride, padding, "maxpool2d")
    xp = get_array_module(x)
    if xp is not np:  # a device: gather the windows once, one argmax and one max over them
        N, C = g.x_shape[:2]
        xpad = pad_nchw(x, g.ph, g.pw, float("-inf"))
        win = xp.ascontiguousarray(_windows(xpad, g)).reshape(C, g.kh * g.kw, g.Ho, g.Wo, N)
        argmax = win.argmax(axis=1)  # (C, Ho, Wo, N): first maximum, row-major
        return win.max(axis=1).transpose(3, 0, 1, 2), (argmax, g)
    xpad = pad_hw(_to_work(x, g), g.ph, g.pw, float("-inf"))
    offsets = list(_offsets(g))
    A, B = xpad.shape[0], xpad.shape[3]
    y = xp.empty((A, g.Ho, g.Wo, B), dtype=x.dtype)
    argmax = xp.zeros(y.shape, dtype=xp.int8 if g.kh * g.kw <= 127 else xp.int32)
    step = xp.empty_like(argmax)

    def part(lo, hi):
        _, _, rows, cols = offsets[0]
        yb, ab, sb = y[lo:hi], argmax[lo:hi], step[lo:hi]
        yb[...] = xpad[lo:hi, rows, cols]  # (hi - lo, Ho, Wo, B)
        for k, (_, _, rows, cols) in enumerate(offsets[1:], start=1):
            window = xpad[lo:hi, rows, cols]
            # the last k at which the running max grows strictly is the first argmax: max_k k*[win > y]
            xp.multiply(window > yb, argmax.dtype.type(k), out=sb)
            xp.maximum(ab, sb, out=ab)
            xp.maximum(yb, window, out=yb)

    split_rows(xp, A, part, xpad.size, block=_BLOCK)
    return _from_work(y, g), (argmax, g)


def maxpool2d_backward(dy, cache):
    """Route each window's gradient to its argmax: ``dx[argmax of window] += dy[window]``.

    Parameters
    ----------
    dy : array, shape (N, C, Ho, Wo)
    cache : tuple
        From :func:`maxpool2d_forward`.

    Returns
    -------
    dx : array, shape (N, C, H, W)
    """
    argmax, g = cache
    xp = get_array_module(dy)
    if xp is not np and (g.kh, g.kw) == (g.sy, g.sx):
        offset = xp.arange(g.kh * g.kw, dtype=argmax.dtype).reshape(1, g.kh, g.kw, 1, 1, 1)
        hit = argmax[:, None, None] == offset  # (C, kh, kw, Ho, Wo, N): the window's argmax
        return _disjoint_device(dy, g, "maxpool2d", lambda view, d: xp.multiply(d, hit, out=view))
    if xp is not np:  # overlapping windows: the per-offset scatter, argmax in its working layout
        argmax = _to_work(argmax.transpose(3, 0, 1, 2), g)
    dyw = _dy_work(dy, g, "maxpool2d")
    kk = argmax.dtype.type
    return _scatter(g, dyw, lambda k, lo, hi, out=None: xp.multiply(dyw[lo:hi], argmax[lo:hi] == kk(k), out=out))


def avgpool2d_forward(x, kernel, stride=None, padding=0):
    """Mean over each window, zero padding included in the count (``count_include_pad=True``).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kernel : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel``.
    padding : int or (int, int)
        Zero padding, at most half the kernel.

    Returns
    -------
    y : array, shape (N, C, Ho, Wo)
    cache : tuple
        ``(geometry,)``.
    """
    g = _geometry(x, kernel, stride, padding, "avgpool2d")
    xp = get_array_module(x)
    if xp is not np:  # a device: one sum over the window view
        y = _windows(pad_nchw(x, g.ph, g.pw, 0.0), g).sum(axis=(1, 2))  # (C, Ho, Wo, N)
        y *= 1.0 / (g.kh * g.kw)
        return y.transpose(3, 0, 1, 2), (g,)
    xpad = pad_hw(_to_work(x, g), g.ph, g.pw, 0.0)
    offsets = list(_offsets(g))
    y = xp.empty((xpad.shape[0], g.Ho, g.Wo, xpad.shape[3]), dtype=x.dtype)

    def part(lo, hi):
        _, _, rows, cols = offsets[0]
        yb = y[lo:hi]
        yb[...] = xpad[lo:hi, rows, cols]  # (hi - lo, Ho, Wo, B)
        for _, _, rows, cols in offsets[1:]:
            yb += xpad[lo:hi, rows, cols]
        yb *= 1.0 / (g.kh * g.kw)

    split_rows(xp, y.shape[0], part, xpad.size, block=_BLOCK)
    return _from_work(y, g), (g,)


def avgpool2d_backward(dy, cache):
    """Spread each window's gradient evenly: ``dx[window] += dy / (kh*kw)``.

    Parameters
    ----------
    dy : array, shape (N, C, Ho, Wo)
    cache : tuple
        From :func:`avgpool2d_forward`.

    Returns
    -------
    dx : array, shape (N, C, H, W)
    """
    (g,) = cache
    xp, scale = get_array_module(dy), 1.0 / (g.kh * g.kw)
    if xp is not np and (g.kh, g.kw) == (g.sy, g.sx):
        return _disjoint_device(dy, g, "avgpool2d", lambda view, d: xp.multiply(d, scale, out=view))
    dyw = _dy_work(dy, g, "avgpool2d")
    if (g.kh, g.kw) == (g.sy, g.sx):  # disjoint: scale into place
        return _scatter(g, dyw, lambda k, lo, hi, out=None: xp.multiply(dyw[lo:hi], scale, out=out))
    share = dyw * scale  # overlapping: scale once, add often
    return _scatter(g, dyw, lambda k, lo, hi, out=None: share[lo:hi])


def global_avgpool_forward(x):
    """Mean over the spatial axes.

    Parameters
    ----------
    x : array, shape (N, C, H, W)

    Returns
    -------
    y : array, shape (N, C)
    cache : tuple
        ``(x_shape,)``.
    """
    if x.ndim != 4:
        raise ValueError(f"global_avgpool expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    return x.mean(axis=(2, 3)), (tuple(x.shape),)


def global_avgpool_backward(dy, cache):
    """``dx[n, c, :, :] = dy[n, c] / (H*W)``.

    Parameters
    ----------
    dy : array, shape (N, C)
    cache : tuple
        From :func:`global_avgpool_forward`.

    Returns
    -------
    dx : array, shape (N, C, H, W)
        Batch-innermost memory, like the conv outputs it flows back into.
    """
    ((N, C, H, W),) = cache
    if tuple(dy.shape) != (N, C):
        raise ValueError(f"global_avgpool backward: dy of shape {tuple(dy.shape)}, expected {(N, C)}")
    xp = get_array_module(dy)
    dx = xp.empty((C, H, W, N), dtype=dy.dtype)
    dx[...] = (dy.T * (1.0 / (H * W)))[:, None, None, :]
    return dx.transpose(3, 0, 1, 2)
