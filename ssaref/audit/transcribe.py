"""Independent float64 transcriptions used by the audit (no engine code): softmax cross-entropy, small MLPs
with BP and DFA, generic SVD-space points, Stiefel projections, dense and two-pass convolutions."""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "softmax",
    "ce",
    "ce_grad_logits",
    "linear_ce",
    "linear_ce_grad",
    "mlp_forward",
    "mlp_bp",
    "mlp_dfa",
    "unit_col",
    "generic_factors",
    "tangent",
    "complement",
    "conv2d",
    "ortho_grad",
]


def softmax(Z):
    """Row softmax of ``Z`` (B, K)."""
    Z = Z - Z.max(axis=-1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=-1, keepdims=True)


def ce(Z, y):
    """Mean softmax cross-entropy of logits ``Z`` (B, K) and labels ``y`` (B,)."""
    Zm = Z - Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(Zm).sum(axis=1))
    return float(np.mean(lse - Zm[np.arange(len(y)), y]))


def ce_grad_logits(Z, y):
    """``dL/dZ = (softmax(Z) - onehot(y)) / B`` (eq. (7) with the batch mean)."""
    P = softmax(Z)
    P[np.arange(len(y)), y] -= 1.0
    return P / len(y)


def linear_ce(W, X, y):
    """Mean CE of the linear classifier ``Z = X W^T``; ``W`` (m, n), ``X`` (B, n)."""
    return ce(X @ W.T, y)


def linear_ce_grad(W, X, y):
    """``G = dL/dW = E^T X`` (m, n) for ``linear_ce``."""
    return ce_grad_logits(X @ W.T, y).T @ X


_ACT: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {  # f, f'
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(np.float64)),
}


def mlp_forward(Ws, X, act="tanh"):
    """Eq. (1) for a batch: ``a_i = h_{i-1} W_i^T``, ``h_i = f(a_i)`` (last layer linear). Returns (as_, hs)."""
    f, _ = _ACT[act]
    hs, as_ = [X], []
    for i, W in enumerate(Ws):
        a = hs[-1] @ W.T
        as_.append(a)
        hs.append(f(a) if i < len(Ws) - 1 else a)
    return as_, hs


def mlp_loss(Ws, X, y, act="tanh"):
    return ce(mlp_forward(Ws, X, act)[1][-1], y)


def mlp_bp(Ws, X, y, act="tanh"):
    """BP gradients (eq. (2)) of the mean CE; returns list of (d_i, d_{i-1})."""
    _, fp = _ACT[act]
    as_, hs = mlp_forward(Ws, X, act)
    delta = ce_grad_logits(hs[-1], y)
    G = [None] * len(Ws)
    for i in range(len(Ws) - 1, -1, -1):
        G[i] = delta.T @ hs[i]
        if i:
            delta = (delta @ Ws[i]) * fp(as_[i - 1])
    return G


def mlp_dfa(Ws, Bs, X, y, act="tanh"):
    """DFA updates (eq. (3)): hidden ``[(B_i e) o f'(a_i)] h_{i-1}^T``, output ``e h_{N-1}^T``.
    ``Bs[i]`` (d_i, d_N) for the hidden layers."""
    _, fp = _ACT[act]
    as_, hs = mlp_forward(Ws, X, act)
    e = ce_grad_logits(hs[-1], y)
    G = []
    for i in range(len(Ws) - 1):
        G.append(((e @ Bs[i].T) * fp(as_[i])).T @ hs[i])
    G.append(e.T @ hs[-2])
    return G


def unit_col(rng, shape):
    """N(0, 1) with unit-l2-norm columns (section 4.3's law for B_i)."""
    A = rng.standard_normal(shape)
    return A / np.linalg.norm(A, axis=0, keepdims=True)


def generic_factors(rng, m, n, r, off=0.05, smin=1.3, smax=3.0):
    """A generic SVD-space point: ``U`` (m, r), ``V`` (n, r) slightly off orthonormal, ``s`` away from 1."""
    U = np.linalg.qr(rng.standard_normal((m, r)))[0] + off * rng.standard_normal((m, r))
    V = np.linalg.qr(rng.standard_normal((n, r)))[0] + off * rng.standard_normal((n, r))
    s = rng.uniform(smin, smax, r) * rng.choice([-1.0, 1.0], r)
    return U, s, V


def tangent(X, G):
    """Orthogonal projection onto the Stiefel tangent space at ``X``: ``G - X sym(X^T G)``."""
    M = X.T @ G
    return G - X @ (0.5 * (M + M.T))


def complement(X, G):
    """``(I - X X^T) G`` (eq. (12) / section 5.2)."""
    return G - X @ (X.T @ G)


def ortho_grad(X):
    """``d/dX ||X^T X - I||_F^2 = 4 X (X^T X - I)``."""
    return 4.0 * X @ (X.T @ X - np.eye(X.shape[1]))


def conv2d(x, K, stride=(1, 1), pad=(0, 0)):
    """Dense cross-correlation, ``x`` (B, C, H, W), ``K`` (N, C, kh, kw) -> (B, N, Ho, Wo)."""
    (sy, sx), (py, px) = stride, pad
    xp = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px)))
    N, C, kh, kw = K.shape
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sy, ::sx]
    return np.einsum("bchwij,ncij->bnhw", win, K)
