"""PredSim's similarity-matching loss (Nokland & Eidnes 2019), forward and backward.

The adjusted cosine-similarity matrix of a batch (``similarity_matrix`` of the authors' code, anokland/local-loss):

* a 4-D input ``(B, C, H, W)`` with ``C > 3`` and ``H > 1`` is first summarised per channel by its standard deviation
  over space (``x[b, c] = std_{hw} a[b, c, h, w]``, unbiased, as ``torch.std``), unless ``channel_std`` is off; any
  other input is flattened to ``(B, d)``;
* every row is centred on its own mean and divided by ``eps + ||row||`` (``eps = 1e-8``):
  ``xn_b = (x_b - mean(x_b)) / (eps + ||x_b - mean(x_b)||)``;
* ``R = clamp(xn xn^T, -1, 1)`` (B x B).

The loss is ``L_sim = mean_{b,b'} (R_h - R_y)^2`` with ``R_y`` the matrix of the one-hot labels (a constant).

``gather`` (data-parallel runs): a callable returning the global batch's rows of an array and this shard's first
row (``distributed.BatchGroup.gather_rows``); ``R`` is then this shard's rows of the global batch's matrix
(B_r x B), the loss this shard's part of the global sum (divided by B^2), and the backward the global loss's
gradient for this shard's examples (``R`` is symmetric: ``dxn = 2 dR xn_all``).
"""

from __future__ import annotations

from ..backend import get_array_module

__all__ = [
    "SIM_EPS",
    "similarity_forward",
    "similarity_backward",
    "similarity_matching",
    "similarity_matching_backward",
]

SIM_EPS = 1e-8


def similarity_forward(a, channel_std=True, gather=None):
    """``(R, cache)``: the adjusted cosine-similarity matrix (B, B) of ``a`` (B, ...); see the module docstring."""
    xp = get_array_module(a)
    B = a.shape[0]
    std = bool(channel_std) and a.ndim == 4 and a.shape[1] > 3 and a.shape[2] > 1
    if std:
        L = a.shape[2] * a.shape[3]
        z = a.reshape(B, a.shape[1], L)
        zc = z - z.mean(axis=2, keepdims=True)
        s = xp.sqrt((zc * zc).sum(axis=2) / (L - 1))  # unbiased std over space: (B, C)
        x = s
    else:
        zc = s = None
        x = a.reshape(B, -1)
    xc = x - x.mean(axis=1, keepdims=True)
    n = xp.sqrt((xc * xc).sum(axis=1, keepdims=True))
    r = SIM_EPS + n
    xn = xc / r
    xn_all = xn if gather is None else gather(xn)[0]
    G = xn @ xn_all.T
    R = xp.clip(G, -1.0, 1.0)
    return R, (a.shape, std, zc, s, xc, n, r, xn, G, gather is not None and xn_all)


def similarity_backward(dR, cache):
    """``da`` from ``dR = dL/dR`` (B, B)."""
    shape, std, zc, s, xc, n, r, xn, G, xn_all = cache
    dG = dR * ((G >= -1.0) & (G <= 1.0))  # clamp passes the gradient inside [-1, 1]
    dxn = (dG + dG.T) @ xn if xn_all is False else 2.0 * (dG @ xn_all)
    # xn = xc / (eps + n), n = ||xc||:  dxc = dxn / r - xc <dxn, xc> / (r^2 n)
    dot = (dxn * xc).sum(axis=1, keepdims=True)
    nz = n + (n == 0)
    dxc = dxn / r - xc * (dot / (r * r * nz))
    dx = dxc - dxc.mean(axis=1, keepdims=True)
    if not std:
        return dx.reshape(shape)
    L = zc.shape[2]
    # s = sqrt(sum zc^2 / (L - 1)):  dz = ds zc / ((L - 1) s)  (the mean's term vanishes: sum zc = 0); a constant
    # channel (s = 0, e.g. all of it cut by a ReLU) passes no gradient, as torch.std's backward
    dz = (dx * (s > 0) / ((L - 1) * (s + (s == 0))))[:, :, None] * zc
    return dz.reshape(shape)


def similarity_matching(a, R_y, channel_std=True, gather=None):
    """``(L_sim, cache)``: ``mean((R(a) - R_y)^2)`` over the B x B entries (``R_y``: B x B, or this shard's rows
    B_r x B with ``gather``; the loss is then this shard's part of the sum over the B^2 entries, divided by B^2)."""
    R, c = similarity_forward(a, channel_std, gather)
    D = R - R_y
    return (D * D).sum() / (D.shape[1] * D.shape[1]), (D, c)


def similarity_matching_backward(cache):
    """``dL_sim/da``."""
    D, c = cache
    return similarity_backward(2.0 * D / (D.shape[1] * D.shape[1]), c)
