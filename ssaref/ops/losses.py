"""Softmax cross-entropy (``torch.nn.functional.cross_entropy``, mean over the batch) and helpers.

Everything goes through the log-sum-exp with the row maximum subtracted, so no logit is ever
exponentiated above 0.  The error that BP backpropagates and DFA broadcasts is eq. (7),
``dL/dlogits = y_predict - y_label = softmax - onehot``, here divided by B for the batch mean.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module

__all__ = ["softmax", "log_softmax", "one_hot", "softmax_cross_entropy", "softmax_cross_entropy_backward"]


def log_softmax(z):
    """``z - logsumexp(z)`` along the last axis, computed stably.

    Parameters
    ----------
    z : array, shape (B, K)

    Returns
    -------
    array, shape (B, K)
    """
    xp = get_array_module(z)
    s = z - z.max(axis=-1, keepdims=True)
    return s - xp.log(xp.exp(s).sum(axis=-1, keepdims=True))


def softmax(z):
    """``exp(z) / sum(exp(z))`` along the last axis, computed stably.

    Parameters
    ----------
    z : array, shape (B, K)

    Returns
    -------
    array, shape (B, K)
    """
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def _check_labels(y, B, K, xp):
    """``y`` as an integer ``xp`` array of shape (B,) with values in [0, K); ValueError otherwise."""
    y = xp.asarray(y)
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if tuple(y.shape) != (B,):
        raise ValueError(f"labels must have shape ({B},), got {tuple(y.shape)}")
    if B:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= K:
            raise ValueError(f"label {lo if lo < 0 else hi} out of range [0, {K})")
    return y


def one_hot(y, K, dtype, *, check_labels=True):
    """``onehot[b, k] = 1 if y[b] == k else 0``.

    Parameters
    ----------
    y : int array, shape (B,)
        Labels in ``[0, K)``.
    K : int
        Number of classes.
    dtype : dtype of the result

    Returns
    -------
    array, shape (B, K)
    """
    xp = get_array_module(y) if hasattr(y, "dtype") else np
    if check_labels:  # two host reads on a GPU: callers with labels already checked on the host pass False
        y = _check_labels(y, len(y), K, xp)
    return (y[:, None] == xp.arange(K)).astype(dtype)


def softmax_cross_entropy(logits, y, *, as_array=False, check_labels=True):
    """``L = -mean_b log softmax(logits)[b, y_b]``.

    Parameters
    ----------
    logits : array, shape (B, K)
    y : int array, shape (B,)
        Class labels in ``[0, K)``.
    as_array : bool
        Return the loss as a 0-d array of the logits' module (no device->host read) instead of a float.
    check_labels : bool
        Check the labels' dtype and range (reads their min and max: two host reads on a GPU; the training loop
        checks the labels once, on the host, and passes False for device arrays).

    Returns
    -------
    loss : float (or 0-d array with ``as_array``)
    cache : tuple
        ``(p, y)``: the softmax probabilities (B, K) and the labels.
    """
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must have shape (B, K) with B >= 1, got {tuple(logits.shape)}")
    xp = get_array_module(logits)
    B, K = logits.shape
    if check_labels:
        y = _check_labels(y, B, K, xp)
    logp = log_softmax(logits)
    loss = -logp[xp.arange(B), y].mean()
    return (loss if as_array else float(loss)), (xp.exp(logp), y)


def softmax_cross_entropy_backward(cache):
    """``dL/dlogits = (softmax - onehot) / B``.

    Parameters
    ----------
    cache : tuple
        From :func:`softmax_cross_entropy`.

    Returns
    -------
    dlogits : array, shape (B, K)
    """
    p, y = cache
    B = p.shape[0]
    dlogits = p.copy()
    dlogits[get_array_module(p).arange(B), y] -= 1.0  # eq. (7): y_predict - y_label
    dlogits /= B  # ... of the batch-mean loss
    return dlogits
