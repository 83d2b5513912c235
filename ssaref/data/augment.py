"""Data augmentation on a batch, on whichever device the batch lives (numpy or cupy)."""

from __future__ import annotations

import numbers

import numpy as np

from ..backend import get_array_module

__all__ = ["augment"]


def augment(x, rng, *, pad: int = 4, flip: bool = True):
    """Random crop with zero padding, then random horizontal flip, per example.

    Each example is zero-padded by ``pad`` pixels on every side and an ``H x W`` window is cut at a random
    offset ``(oy, ox)``, ``0 <= oy, ox <= 2 * pad`` (``oy = ox = pad`` gives the original); then, if ``flip``,
    it is mirrored left-right with probability 1/2.  Draw order (fixed, so a seeded ``rng`` reproduces the
    batch): ``oy`` (N,), ``ox`` (N,) when ``pad > 0``, then the flip coins (N,) when ``flip``.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
        numpy or cupy batch; not modified.
    rng : numpy.random.Generator or cupy.random.Generator
        Generator of the same library as ``x`` (``ssaref.backend.default_rng(xp, seed)``).
    pad : int
        Padding / maximal shift in pixels, >= 0.
    flip : bool
        Whether to apply random horizontal flips.

    Returns
    -------
    array, shape (N, C, H, W)
        A new array, same library and dtype as ``x``.
    """
    xp = get_array_module(x)
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"augment expects a batch of shape (N, C, H, W), got shape {getattr(x, 'shape', None)}")
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    pad = int(pad)
    n, c, h, w = x.shape
    # every draw first, in the documented order, then one host->device copy of them all
    draws = []
    if pad > 0:
        draws += [rng.integers(0, 2 * pad + 1, size=n), rng.integers(0, 2 * pad + 1, size=n)]
    if flip:
        draws.append(rng.random(n) < 0.5)
    if draws and not isinstance(draws[0], np.ndarray):  # a device generator: its draws are there already
        drawn = draws
    else:
        drawn = list(xp.asarray(np.stack([np.asarray(d, dtype=np.int64) for d in draws]))) if draws else []
    if pad > 0:
        oy, ox = drawn[0], drawn[1]
        padded = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
        padded[:, :, pad : pad + h, pad : pad + w] = x
        rows = oy[:, None] + xp.arange(h)[None, :]  # (N, H)
        cols = ox[:, None] + xp.arange(w)[None, :]  # (N, W)
        out = padded[
            xp.arange(n)[:, None, None, None],
            xp.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    else:
        out = x.copy()
    if flip:
        coins = drawn[-1] != 0
        out = xp.where(coins[:, None, None, None], out[:, :, :, ::-1], out)
    return out
