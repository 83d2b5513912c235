"""Batch normalisation (``torch.nn.functional.batch_norm``), forward and backward, no hidden state.

2-D input ``(B, F)`` is normalised over axis 0, 4-D input ``(N, C, H, W)`` over ``(N, H, W)``.
Training normalises with the biased batch variance and returns the updated running statistics

    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)    (unbiased, as torch)

as new arrays; evaluation normalises with the running statistics and returns them unchanged.

On a device (CuPy) the elementwise chains are fused kernels (``kernels.BN_*``: the same operations in the same
order): training forward is two reductions and three kernels, training backward three reductions and one kernel.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from . import kernels
from .im2col import split_rows

__all__ = ["batchnorm_forward", "batchnorm_backward_input", "batchnorm_backward_params", "batchnorm_backward"]

_BLOCK = 1 << 18  # elements per channel block of the row-wise (NumPy) path


def _rows(a):
    """``a`` (N, C, H, W) as a (C, H*W*N) view when its memory is batch-innermost (C, H, W, N) -- the layout of
    conv outputs -- else None.  Reducing each row equals NumPy's reduction over (0, 2, 3) of such an array bit
    for bit (the reduction runs over the same contiguous memory in the same order), and a row's elements are
    independent of the other rows', so blocks of channels can be handled apart, in cache and in parallel."""
    if a.ndim != 4 or not isinstance(a, np.ndarray):
        return None
    t = a.transpose(1, 2, 3, 0)
    return t.reshape(a.shape[1], -1) if t.flags.c_contiguous else None


def _channel_blocks(C, L, fn):
    """``fn(lo, hi)`` over blocks of rows (channels) of about ``_BLOCK`` elements, split over the op threads."""
    per = max(1, _BLOCK // max(L, 1))

    def part(lo, hi):
        for a in range(lo, hi, per):
            fn(a, min(hi, a + per))

    split_rows(np, C, part, C * L)


def _mean_of_sum(s, n):
    """What ``np.mean`` returns from the sum ``s`` of ``n`` items (its own division, bit for bit)."""
    return np.true_divide(s, np.intp(n), out=s.copy(), casting="unsafe")


def _axes(ndim):
    """Reduction axes and the broadcast shape of per-channel vectors for an input of ``ndim``."""
    return ((0,), (1, -1)) if ndim == 2 else ((0, 2, 3), (1, -1, 1, 1))


def _check(x, vectors):
    if x.ndim not in (2, 4):
        raise ValueError(f"batchnorm expects x of shape (B, F) or (N, C, H, W), got {tuple(x.shape)}")
    C = x.shape[1]
    for name, v in vectors.items():
        if tuple(v.shape) != (C,):
            raise ValueError(f"batchnorm: {name} must have shape ({C},) for x {tuple(x.shape)}, got {tuple(v.shape)}")
        if v.dtype != x.dtype:
            raise ValueError(f"batchnorm: {name} has dtype {v.dtype} but x has {x.dtype}; cast explicitly")


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, train, momentum=0.1, eps=1e-5, group=None):
    """``y = gamma * (x - mean) / sqrt(var + eps) + beta``.

    ``group`` (data-parallel training with synchronised statistics, ``--sync-bn``): an object whose
    ``mean(local_sums, local_count)`` returns the means over every replica's examples of per-channel sums
    (``ssaref.distributed.CrossReplicaStats``); mean and variance are then those of the global batch, and the
    backward pass reduces its two per-channel means across the replicas too.  None: this batch alone.

    Parameters
    ----------
    x : array, shape (B, F) or (N, C, H, W)
    gamma, beta : array, shape (C,)
        Scale and shift (``C = x.shape[1]``).
    running_mean, running_var : array, shape (C,)
        Running statistics; never modified.
    train : bool
        Batch statistics (True) or running statistics (False).
    momentum : float
        Weight of the batch statistics in the running update (PyTorch's convention).
    eps : float

    Returns
    -------
    y : array, shape of ``x``
    cache : tuple
        ``(xhat, gamma, inv_std, train, group)``; ``xhat`` has the shape of ``x``, ``inv_std`` (C,).
    new_mean, new_var : array, shape (C,)
        Updated running statistics (train) or the given ones (eval).
    """
    _check(x, {"gamma": gamma, "beta": beta, "running_mean": running_mean, "running_var": running_var})
    xp = get_array_module(x, gamma, beta, running_mean, running_var)
    axes, shape = _axes(x.ndim)
    rows = _rows(x) if (xp is np and group is None) else None  # the blocked fast path: one replica's batch
    if rows is not None:
        return _forward_rows(x, rows, gamma, beta, running_mean, running_var, train, momentum, eps)
    if train and group is None and kernels.enabled(xp):
        return _forward_fused(xp, x, gamma, beta, running_mean, running_var, momentum, eps)
    if train:
        n = x.size // x.shape[1]
        if n < 2:
            raise ValueError(
                f"batchnorm: training needs more than one value per channel, got x of shape {tuple(x.shape)}"
            )
        if group is None:
            mean = x.mean(axis=axes)
            xhat = x - mean.reshape(shape)
            var = (xhat * xhat).mean(axis=axes)  # biased: used to normalise
        else:  # the global batch's statistics (two passes)
            mean = group.mean(x.sum(axis=axes)[None], n)[0]
            xhat = x - mean.reshape(shape)
            var = group.mean((xhat * xhat).sum(axis=axes)[None], n)[0]
            n = group.count(n)
        new_mean = (1.0 - momentum) * running_mean + momentum * mean
        new_var = (1.0 - momentum) * running_var + momentum * (var * (n / (n - 1)))
    else:
        var, new_mean, new_var = running_var, running_mean, running_var
        xhat = x - running_mean.reshape(shape)
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat *= inv_std.reshape(shape)
    y = xhat * gamma.reshape(shape)
    y += beta.reshape(shape)
    return y, (xhat, gamma, inv_std, bool(train), group if train else None), new_mean, new_var


def _forward_fused(xp, x, gamma, beta, running_mean, running_var, momentum, eps):
    """Training ``batchnorm_forward`` on a device: the general path's operations, chains fused into kernels."""
    axes, shape = _axes(x.ndim)
    n = x.size // x.shape[1]
    if n < 2:
        raise ValueError(f"batchnorm: training needs more than one value per channel, got x of shape {tuple(x.shape)}")
    mean = x.mean(axis=axes)
    mean_c = mean.reshape(shape)
    var = kernels.launch(xp, kernels.BN_SQDEV, x, mean_c).mean(axis=axes)  # biased: used to normalise
    new_mean, new_var, inv_std = kernels.launch(
        xp, kernels.BN_STATS, running_mean, running_var, mean, var, 1.0 - momentum, momentum, n / (n - 1), eps, 1.0
    )
    xhat, y = kernels.launch(
        xp, kernels.BN_NORMALISE, x, mean_c, inv_std.reshape(shape), gamma.reshape(shape), beta.reshape(shape)
    )
    return y, (xhat, gamma, inv_std, True, None), new_mean, new_var


def _forward_rows(x, rows, gamma, beta, running_mean, running_var, train, momentum, eps):
    """``batchnorm_forward`` on a batch-innermost 4-D ``x`` (NumPy), channel block by channel block: the same
    operations in the same order per element as the general path, so the same bits."""
    C, L = rows.shape
    n = L
    if train and n < 2:
        raise ValueError(f"batchnorm: training needs more than one value per channel, got x of shape {tuple(x.shape)}")
    xhat = np.empty_like(x)
    y = np.empty_like(x)
    xr, yr = _rows(xhat), _rows(y)
    mean = np.empty(C, dtype=x.dtype) if train else running_mean
    var = np.empty(C, dtype=x.dtype) if train else running_var
    inv_std = np.empty(C, dtype=x.dtype)

    def block(lo, hi):
        if train:
            mean[lo:hi] = rows[lo:hi].mean(axis=1)
        np.subtract(rows[lo:hi], mean[lo:hi, None], out=xr[lo:hi])
        if train:
            var[lo:hi] = (xr[lo:hi] * xr[lo:hi]).mean(axis=1)  # biased: used to normalise
        inv_std[lo:hi] = 1.0 / np.sqrt(var[lo:hi] + eps)
        xr[lo:hi] *= inv_std[lo:hi, None]
        np.multiply(xr[lo:hi], gamma[lo:hi, None], out=yr[lo:hi])
        yr[lo:hi] += beta[lo:hi, None]

    _channel_blocks(C, L, block)
    if train:
        new_mean = (1.0 - momentum) * running_mean + momentum * mean
        new_var = (1.0 - momentum) * running_var + momentum * (var * (n / (n - 1)))
    else:
        new_mean, new_var = running_mean, running_var
    return y, (xhat, gamma, inv_std, bool(train)), new_mean, new_var


def batchnorm_backward(dy, cache, need_dx=True):
    """``(dx or None, dgamma, dbeta)``: :func:`batchnorm_backward_input` and :func:`batchnorm_backward_params` in
    one pass over ``dy`` (the per-channel sums are shared; the same bits as the two calls)."""
    xhat, gamma, inv_std, train = cache[:4]
    group = cache[4] if len(cache) > 4 else None  # cross-replica statistics (--sync-bn): the general path
    if dy.shape != xhat.shape:
        raise ValueError(f"batchnorm backward: dy of shape {tuple(dy.shape)}, expected {tuple(xhat.shape)}")
    xp = get_array_module(dy, xhat)
    if train and group is None and kernels.enabled(xp):  # a device: the three sums, then one kernel for dx
        axes, shape = _axes(dy.ndim)
        dgamma, dbeta = (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
        if not need_dx:
            return None, dgamma, dbeta
        dx = kernels.launch(
            xp,
            kernels.BN_GRAD_INPUT,
            dy,
            xhat,
            dbeta.reshape(shape),
            dgamma.reshape(shape),
            dy.size // dy.shape[1],
            (gamma * inv_std).reshape(shape),
        )
        return dx, dgamma, dbeta
    dr, xr = (_rows(dy), _rows(xhat)) if xp is np else (None, None)
    if dr is None or xr is None or group is not None:
        dgamma, dbeta = batchnorm_backward_params(dy, cache)
        return (batchnorm_backward_input(dy, cache) if need_dx else None), dgamma, dbeta
    C, L = dr.shape
    dgamma, dbeta = np.empty(C, dtype=dy.dtype), np.empty(C, dtype=dy.dtype)
    dx = np.empty_like(xhat) if need_dx else None
    dxr = _rows(dx) if need_dx else None
    scale = gamma * inv_std

    def block(lo, hi):
        d, xh = dr[lo:hi], xr[lo:hi]
        dbeta[lo:hi] = d.sum(axis=1)
        dgamma[lo:hi] = (d * xh).sum(axis=1)
        if not need_dx:
            return
        if dxr is None:  # cannot happen: empty_like keeps xhat's batch-innermost layout, which _rows views
            raise RuntimeError("batchnorm backward: the input gradient lost the batch-innermost layout")
        out = dxr[lo:hi]
        if not train:
            np.multiply(d, scale[lo:hi, None], out=out)
            return
        np.subtract(d, _mean_of_sum(dbeta[lo:hi], L)[:, None], out=out)  # dy - mean(dy)
        out -= xh * _mean_of_sum(dgamma[lo:hi], L)[:, None]  # - xhat mean(dy xhat)
        out *= scale[lo:hi, None]

    _channel_blocks(C, L, block)
    return dx, dgamma, dbeta


def batchnorm_backward_input(dy, cache):
    """Input gradient.

    train: ``dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))`` (means per channel);
    eval:  ``dx = gamma * inv_std * dy``.

    Parameters
    ----------
    dy : array, shape of ``x``
    cache : tuple
        From :func:`batchnorm_forward`.

    Returns
    -------
    dx : array, shape of ``x``
    """
    xhat, gamma, inv_std, train = cache[:4]
    group = cache[4] if len(cache) > 4 else None
    if dy.shape != xhat.shape:
        raise ValueError(f"batchnorm backward: dy of shape {tuple(dy.shape)}, expected {tuple(xhat.shape)}")
    axes, shape = _axes(dy.ndim)
    scale = (gamma * inv_std).reshape(shape)
    if not train:
        return dy * scale
    if group is None:
        centred = dy - dy.mean(axis=axes, keepdims=True)
        centred -= xhat * (dy * xhat).mean(axis=axes, keepdims=True)
    else:  # both means over every replica's examples, in this replica's units (one reduction)
        xp = get_array_module(dy)
        n = dy.size // dy.shape[1]
        m = group.grad_mean(xp.stack([dy.sum(axis=axes), (dy * xhat).sum(axis=axes)]), n)
        centred = dy - m[0].reshape(shape)
        centred -= xhat * m[1].reshape(shape)
    centred *= scale
    return centred


def batchnorm_backward_params(dy, cache):
    """``dgamma = sum(dy * xhat)``, ``dbeta = sum(dy)`` over the normalised axes.

    Parameters
    ----------
    dy : array, shape of ``x``
    cache : tuple
        From :func:`batchnorm_forward`.

    Returns
    -------
    dgamma, dbeta : array, shape (C,)
    """
    xhat = cache[0]
    if dy.shape != xhat.shape:
        raise ValueError(f"batchnorm backward: dy of shape {tuple(dy.shape)}, expected {tuple(xhat.shape)}")
    axes, _ = _axes(dy.ndim)
    return (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
