"""Finite-difference gradient checks in float64.

``numerical_grad`` differentiates a scalar function of one array element by element (central
differences); ``directional_check`` compares one directional derivative with ``<grad, d>``,
which checks many parameters with two function evaluations.  ``torch_vjp`` is the PyTorch oracle
(forward value and vector-Jacobian products through torch.autograd).
"""
from __future__ import annotations

import numpy as np

__all__ = ["FD_TOL", "FD_FLOOR", "rel_error", "numerical_grad", "fd_error", "directional_check",
           "torch_vjp"]

#: bound on :func:`fd_error` in the op tests (eps = 1e-6, float64)
FD_TOL = 1e-7
#: gradient norm below which the error is measured absolutely (bounded by FD_TOL * FD_FLOOR):
#: each difference carries round-off of ~1e-16 |f| / eps ~ 1e-10 |f| (seen up to ~1e-8 in norm),
#: which would swamp the relative error of a gradient that is tiny by structure (batch norm with
#: two values per channel, or with a cotangent proportional to x, makes dx ~ 1e-6)
FD_FLOOR = 1.0


def rel_error(a, b, floor=0.0):
    """``||a - b|| / max(||a||, ||b||, floor)`` (Frobenius norms); 0 when the denominator is 0.

    ``floor`` > 0 turns the measure absolute for gradients that vanish by structure, where the
    round-off of the differences (~1e-16 |f| / eps) would dominate a purely relative error.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    den = max(np.linalg.norm(a), np.linalg.norm(b), floor)
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


def fd_error(analytic, f, x, eps=1e-6):
    """``rel_error(analytic, numerical_grad(f, x, eps), floor=FD_FLOOR)``."""
    return rel_error(analytic, numerical_grad(f, x, eps), floor=FD_FLOOR)


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


def torch_vjp(fn, arrays, cotangent):
    """PyTorch oracle: ``fn(*tensors)`` and the gradients of ``sum(fn(...) * cotangent)``.

    Parameters
    ----------
    fn : callable
        Built from ``torch.nn.functional``; never from ssaref.
    arrays : sequence of float64 numpy arrays (``None`` passes through as ``None``)
    cotangent : array, shape of ``fn``'s output

    Returns
    -------
    out : numpy array
    grads : list of numpy arrays (``None`` for ``None`` inputs)
    """
    import torch

    ts = [None if a is None else torch.tensor(np.asarray(a), requires_grad=True) for a in arrays]
    out = fn(*ts)
    (out * torch.tensor(np.asarray(cotangent))).sum().backward()
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]
