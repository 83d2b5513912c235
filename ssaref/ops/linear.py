"""Fully connected layer ``y = x W^T + b`` (``torch.nn.functional.linear``), forward and backward."""

from __future__ import annotations

__all__ = ["linear_forward", "linear_backward_input", "linear_backward_params"]


def linear_forward(x, W, b=None):
    """``y = x @ W.T + b``.

    Parameters
    ----------
    x : array, shape (B, n)
    W : array, shape (m, n)
    b : array, shape (m,), or None

    Returns
    -------
    y : array, shape (B, m)
    """
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[1]:
        raise ValueError(
            f"linear: x {tuple(x.shape)} and W {tuple(W.shape)} do not fit; expected x (B, n) and W (m, n)"
        )
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"linear: bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    if x.dtype != W.dtype or (b is not None and b.dtype != W.dtype):
        raise ValueError(
            f"linear: dtypes differ (x {x.dtype}, W {W.dtype}{'' if b is None else f', b {b.dtype}'}); cast explicitly"
        )
    y = x @ W.T
    if b is not None:
        y += b
    return y


def linear_backward_input(dy, W):
    """``dx = dy @ W``.

    Parameters
    ----------
    dy : array, shape (B, m)
    W : array, shape (m, n)
        The forward weights for BP, or the matrix that replaces them (feedback alignment).

    Returns
    -------
    dx : array, shape (B, n)
    """
    if dy.ndim != 2 or W.ndim != 2 or dy.shape[1] != W.shape[0]:
        raise ValueError(
            f"linear backward: dy {tuple(dy.shape)} and W {tuple(W.shape)} do not fit; expected dy (B, m) and W (m, n)"
        )
    if dy.dtype != W.dtype:
        raise ValueError(f"linear backward: dtypes differ (dy {dy.dtype}, W {W.dtype}); cast explicitly")
    return dy @ W


def linear_backward_params(dy, x, has_bias=True):
    """``dW = dy.T @ x`` and ``db = dy.sum(0)``.

    Parameters
    ----------
    dy : array, shape (B, m)
    x : array, shape (B, n)
        The forward input.
    has_bias : bool

    Returns
    -------
    dW : array, shape (m, n)
    db : array, shape (m,), or None when ``has_bias`` is False
    """
    if dy.ndim != 2 or x.ndim != 2 or dy.shape[0] != x.shape[0]:
        raise ValueError(
            f"linear backward: dy {tuple(dy.shape)} and x {tuple(x.shape)} do not fit; expected dy (B, m) and x (B, n)"
        )
    if dy.dtype != x.dtype:
        raise ValueError(f"linear backward: dtypes differ (dy {dy.dtype}, x {x.dtype}); cast explicitly")
    return dy.T @ x, (dy.sum(axis=0) if has_bias else None)
