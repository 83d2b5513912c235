"""Finite-difference gradient checks in float64.

``numerical_grad`` differentiates a scalar function of one array element by element (central
differences); ``directional_check`` compares one directional derivative with ``<grad, d>``,
which checks many parameters with two function evaluations.
"""
from __future__ import annotations

import numpy as np

__all__ = ["rel_error", "numerical_grad", "directional_check"]


def rel_error(a, b):
    """``||a - b|| / max(||a||, ||b||)`` (Frobenius norms); 0 when both are zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    den = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if den == 0.0 else float(np.linalg.norm(a - b) / den)


def numerical_grad(f, x, eps=1e-6):
    """Central-difference gradient of a scalar function ``f`` at ``x``.

    Parameters
    ----------
    f : callable
        ``f(x) -> float`` for an array ``x`` of the shape of ``x``.
    x : array, any shape, float64
    eps : float

    Returns
    -------
    grad : array, shape of ``x``
        ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)`` for every element ``i``.
    """
    if np.asarray(x).dtype != np.float64:
        raise ValueError(f"numerical_grad needs float64 input, got {np.asarray(x).dtype}")
    x = np.array(x, dtype=np.float64)               # private copy, perturbed in place
    grad = np.empty_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + eps
        f_plus = float(f(x))
        x.flat[i] = old - eps
        f_minus = float(f(x))
        x.flat[i] = old
        grad.flat[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def directional_check(f, params, grads, rng, eps=1e-6):
    """Relative error between a directional derivative and ``<grads, d>``.

    Parameters
    ----------
    f : callable
        ``f(params) -> float``, called with a structure like ``params``.
    params : dict[str, array] or sequence of arrays, float64
    grads : same structure and shapes as ``params``
        The analytic gradient to check.
    rng : numpy.random.Generator
        Draws the direction ``d`` (standard normal, unit norm over all parameters).
    eps : float

    Returns
    -------
    float
        ``|fd - an| / max(|fd|, |an|)`` with ``fd = (f(p + eps d) - f(p - eps d)) / (2 eps)`` and
        ``an = sum_k <grads[k], d[k]>``.
    """
    keys = list(params) if isinstance(params, dict) else list(range(len(params)))
    d = {k: rng.standard_normal(np.shape(params[k])) for k in keys}
    norm = np.sqrt(sum(float(np.sum(v * v)) for v in d.values()))
    d = {k: v / norm for k, v in d.items()}

    def shifted(sign):
        moved = {k: np.asarray(params[k], dtype=np.float64) + sign * eps * d[k] for k in keys}
        return moved if isinstance(params, dict) else [moved[k] for k in keys]

    fd = (float(f(shifted(1.0))) - float(f(shifted(-1.0)))) / (2.0 * eps)
    an = sum(float(np.sum(np.asarray(grads[k], dtype=np.float64) * d[k])) for k in keys)
    den = max(abs(fd), abs(an))
    return 0.0 if den == 0.0 else abs(fd - an) / den
