"""Audit items of the paper's section 5.2."""

from __future__ import annotations


import numpy as np

from .. import transcribe as T
from ..checks import rel_error
from .core import HOLDS, Outcome, ROUND_RTOL, UNJ, _ev, item


# ---------------------------------------------------------------------------------------------------
# section 5.2
# ---------------------------------------------------------------------------------------------------
def _v_projection(ev):
    tangent = ev["complement_is_tangent_skew_err"] <= ROUND_RTOL
    is_projection = ev["mean_share_of_tangent_component_dropped"] <= ROUND_RTOL
    preserves = ev["drift_at_eta_0p1"] <= ROUND_RTOL
    return HOLDS if tangent and is_projection and preserves else UNJ


@item(
    "projection",
    "5.2",
    [12, 13],
    "grad_U <- (I - U U^T) grad_U and grad_{V^T} <- (I - V^T V) grad_{V^T} "
    "project onto the tangent space of the Stiefel manifold and, without retractions, preserve orthogonality",
    "projection=tangent (G - U sym(U^T G)) plus polar retraction (Riemannian gradient descent for SGD)",
    "--projection paper --retraction none (what --ssa-variant paper selects)",
    judge=_v_projection,
)
def _projection(ctx, project=T.complement, retract=None):
    """``project(U, G)``: the projection under test; ``retract(U)``: the map back to the manifold after a step
    (None: no retraction, as printed)."""
    rng = ctx.rng("projection")
    retract = retract or (lambda X: X)
    lost, drift = [], []
    n_draws = 200
    for _ in range(n_draws):
        m = int(rng.integers(2, 9))
        r = int(rng.integers(1, m + 1))
        Q = np.linalg.qr(rng.standard_normal((m, r)))[0]
        G = rng.standard_normal((m, r))
        Pt, Pc = T.tangent(Q, G), project(Q, G)
        lost.append(float(np.linalg.norm(Pt - Pc) / np.linalg.norm(Pt)))
    Q = np.linalg.qr(rng.standard_normal((6, 3)))[0]
    Pc = project(Q, rng.standard_normal((6, 3)))
    skew = float(np.linalg.norm(Q.T @ Pc + Pc.T @ Q))
    etas = (1e-1, 1e-2, 1e-3)
    for eta in etas:
        D = project(Q, rng.standard_normal((6, 3)))
        D /= np.linalg.norm(D)
        U2 = retract(Q - eta * D)
        drift.append(float(np.linalg.norm(U2.T @ U2 - np.eye(3))))
    slope = float(np.polyfit(np.log10(etas), np.log10(np.maximum(drift, 1e-300)), 1)[0])
    Qs = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    Gs = rng.standard_normal((5, 5))
    sq = rel_error(project(Qs, Gs), T.tangent(Qs, Gs))
    ev = _ev(
        mean_share_of_tangent_component_dropped=float(np.mean(lost)),
        share_dropped_square_U=sq,
        complement_is_tangent_skew_err=skew,
        drift_loglog_slope=slope,
        drift_at_eta_0p1=drift[0],
    )
    v = _v_projection(ev)
    e = ev
    text = (
        f"The projection under test gives a tangent vector (||U^T X + X^T U|| = "
        f"{e['complement_is_tangent_skew_err']:.2g}) and differs from the projection onto the tangent space by "
        f"{e['mean_share_of_tangent_component_dropped']:.1%} of its norm on average over {n_draws} draws and by "
        f"{e['share_dropped_square_U']:.1%} at a square U"
        + (
            " (it discards the rotation component U skew(U^T G); for square U the update is zero)"
            if e["mean_share_of_tangent_component_dropped"] > ROUND_RTOL
            else ""
        )
        + f".  After a step of eta = {etas[0]:g} along it (with the retraction under test) ||U'^T U' - I|| = "
        f"{e['drift_at_eta_0p1']:.3g} (log-log slope {e['drift_loglog_slope']:.3g} over eta = "
        f"{', '.join(f'{x:g}' for x in etas)})"
        + (
            ": a finite step leaves the manifold at second order, so without retraction orthogonality drifts; "
            "Adam's per-entry scaling also leaves the tangent space (see dyn-orthogonality)."
            if e["drift_at_eta_0p1"] > ROUND_RTOL
            else "."
        )
        + "  (I - V^T V) of eq. (13) is not a tangent projection at all (it is zero at orthonormal V, "
        "eq13-grad-V)."
    )
    return Outcome(v, text, ev, "mean_share_of_tangent_component_dropped")
