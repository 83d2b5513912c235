"""Audit items of the paper's section 5.1."""

from __future__ import annotations


import math

import numpy as np

from .. import transcribe as T
from ..checks import claim_search
from .core import CLAIM_FAIL_RATE, EXACT_TOL, HESS_TOL, HOLDS, Outcome, ROUND_RTOL, UNJ, _ev, _refuted, item


# ---------------------------------------------------------------------------------------------------
# section 5.1
# ---------------------------------------------------------------------------------------------------
def _fd_hessian(grad, x, eps=1e-5):
    x = np.asarray(x, dtype=np.float64).ravel()
    H = np.empty((x.size, x.size))
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = eps
        H[:, j] = (grad(x + e) - grad(x - e)) / (2 * eps)
    return 0.5 * (H + H.T)


def _v_smooth_ce(ev):
    return (
        UNJ if _refuted(ev["logits_fail_rate"], ev["W_smoothness_fail_rate"], ev["factors_nonconvex_rate"]) else HOLDS
    )


@item(
    "smooth-ce",
    "5.1",
    [],
    "L_CE is convex and L-smooth with L = 0.5",
    "no convexity is assumed anywhere in the engine",
    "none",
    judge=_v_smooth_ce,
)
def _smooth_ce(ctx, smoothness=lambda h: 0.5, convex_in="factors"):
    """``smoothness(h)``: the claimed smoothness constant w.r.t. a linear layer's W for the input ``h`` (0.5 as
    printed); ``convex_in``: the variables the convexity claim is checked in, "factors" (U, s: what SSA
    optimises) or "W"."""
    base = int(ctx.rng("smooth-ce").integers(2**31))

    def s_logits(rng):
        K = int(rng.integers(2, 11))
        return {"K": K, "z": rng.standard_normal(K) * rng.uniform(0, 10)}

    def p_logits(c):
        p = T.softmax(c["z"][None])[0]
        lam = np.linalg.eigvalsh(np.diag(p) - np.outer(p, p))
        return bool(lam.max() <= 0.5 + EXACT_TOL and lam.min() >= -EXACT_TOL), float(lam.max() - 0.5)

    n1, n2, n3 = 2000, 300, 200
    r1 = claim_search(s_logits, p_logits, n1, seed=base)
    max_lam = max(
        np.linalg.eigvalsh(np.diag(p) - np.outer(p, p)).max()
        for p in [T.softmax(np.random.default_rng([base, i]).standard_normal((1, 2)) * 0.01)[0] for i in range(5)]
    )

    def s_w(rng):
        K, n = int(rng.integers(2, 5)), int(rng.integers(1, 5))
        h = rng.standard_normal(n)
        h *= math.exp(rng.uniform(math.log(0.1), math.log(10))) / np.linalg.norm(h)
        return {"K": K, "n": n, "h": h, "W": rng.standard_normal((K, n)), "y": int(rng.integers(0, K))}

    def p_w(c):
        K, n, h, y = c["K"], c["n"], c["h"], c["y"]
        grad = lambda w: T.linear_ce_grad(w.reshape(K, n), h[None], np.array([y])).ravel()
        lam = np.linalg.eigvalsh(_fd_hessian(grad, c["W"]))
        L = smoothness(h)
        return bool(lam.max() <= L + HESS_TOL), float(lam.max() - L)

    r2 = claim_search(s_w, p_w, n2, seed=base + 1, size_fn=lambda c: float(np.linalg.norm(c["h"])))

    def s_th(rng):
        m, n, r = int(rng.integers(2, 4)), int(rng.integers(2, 4)), 1
        r = int(rng.integers(1, min(m, n) + 1))
        U, s, V = T.generic_factors(rng, m, n, r)
        return {
            "m": m,
            "n": n,
            "r": r,
            "U": U,
            "s": s,
            "V": V,
            "x": rng.standard_normal((3, n)),
            "y": rng.integers(0, m, 3),
        }

    def p_th(c):
        m, n, r = c["m"], c["n"], c["r"]
        V, x, y = c["V"], c["x"], c["y"]
        if convex_in == "W":
            grad_w = lambda w: T.linear_ce_grad(w.reshape(m, n), x, y).ravel()
            lam = np.linalg.eigvalsh(_fd_hessian(grad_w, ((c["U"] * c["s"]) @ V.T).ravel()))
            return bool(lam.min() >= -HESS_TOL), float(-lam.min())

        def grad(th):
            U, s = th[: m * r].reshape(m, r), th[m * r :]
            G = T.linear_ce_grad((U * s) @ V.T, x, y)
            return np.concatenate([(G @ V * s).ravel(), np.sum(U * (G @ V), axis=0)])

        lam = np.linalg.eigvalsh(_fd_hessian(grad, np.concatenate([c["U"].ravel(), c["s"]])))
        return bool(lam.min() >= -HESS_TOL), float(-lam.min())

    r3 = claim_search(s_th, p_th, n3, seed=base + 2, size_fn=lambda c: c["m"] * c["r"] + c["r"])
    sm = r2.smallest or {}
    hnorm = float(np.linalg.norm(sm["h"])) if sm else 0.0
    ev = _ev(
        logits_fail_rate=r1.fail_rate,
        max_eig_logits_K2_near_uniform=float(max_lam),
        W_smoothness_fail_rate=r2.fail_rate,
        W_smallest_counterexample_h_norm=hnorm,
        W_worst_excess=r2.worst_margin,
        factors_nonconvex_rate=r3.fail_rate,
        factors_most_negative_eig=-r3.worst_margin,
    )
    v = _v_smooth_ce(ev)
    e = ev
    text = (
        f"W.r.t. the logits the Hessian diag(p) - p p^T is PSD with largest eigenvalue <= 1/2 except in "
        f"{e['logits_fail_rate']:.1%} of {n1} draws (near-uniform K = 2: "
        f"{e['max_eig_logits_K2_near_uniform']:.6g}).  But the loss is optimised w.r.t. parameters: w.r.t. a "
        f"linear layer's W its Hessian is "
        f"(diag(p) - p p^T) (x) h h^T, whose smoothness constant scales with ||h||^2; the claimed constant fails "
        f"in {e['W_smoothness_fail_rate']:.1%} of {n2} draws"
        + (
            f" (smallest counterexample ||h|| = {e['W_smallest_counterexample_h_norm']:.3g}, largest excess "
            f"{e['W_worst_excess']:.3g})"
            if sm
            else ""
        )
        + f"; and w.r.t. {'the SVD factors (U, s)' if convex_in == 'factors' else 'W'} the Hessian has a negative "
        f"eigenvalue in {e['factors_nonconvex_rate']:.1%} of {n3} draws"
        + (f" (most negative {e['factors_most_negative_eig']:.3g}): not convex" if r3.fails else "")
        + f" (a claim is refuted above {CLAIM_FAIL_RATE:.0%} of draws)."
    )
    return Outcome(v, text, ev, "W_smoothness_fail_rate")


def _v_smooth_align(ev):
    convex = ev["min_eig"] >= -HESS_TOL
    smooth = ev["max_eig"] <= ev["claimed_smoothness"] + HESS_TOL
    return HOLDS if convex and smooth else UNJ


@item(
    "smooth-align",
    "5.1",
    [8, 15],
    "L_align is convex and 2-smooth",
    "as printed (a sum of squared distances)",
    "none",
    judge=_v_smooth_align,
)
def _smooth_align(ctx, smoothness=2.0, grad=lambda X, B: 2 * (X - B)):
    """``smoothness``: the claimed constant (2 as printed); ``grad(X, B)``: the gradient of ||X - B||^2 whose
    finite-difference Hessian is measured."""
    rng = ctx.rng("smooth-align")
    m, n, r = 3, 4, 2
    U, s, V = T.generic_factors(rng, m, n, r)
    tg = {"BU": rng.standard_normal((m, r)), "Bs": rng.standard_normal(r), "BV": rng.standard_normal((n, r))}

    def g(th):
        Uv, sv, Vv = th[: m * r].reshape(m, r), th[m * r : m * r + r], th[m * r + r :].reshape(n, r)
        return np.concatenate([grad(Uv, tg["BU"]).ravel(), grad(sv, tg["Bs"]), grad(Vv, tg["BV"]).ravel()])

    lam = np.linalg.eigvalsh(_fd_hessian(g, np.concatenate([U.ravel(), s, V.ravel()])))
    ev = _ev(min_eig=float(lam.min()), max_eig=float(lam.max()), claimed_smoothness=float(smoothness))
    v = _v_smooth_align(ev)
    text = (
        "A sum of squared Frobenius distances to fixed targets: the Hessian in (U, S, V^T) (and in W for eq. (15)) "
        f"has eigenvalues from {ev['min_eig']:.6g} to {ev['max_eig']:.6g}, so it is "
        f"{'convex' if ev['min_eig'] >= -HESS_TOL else 'not convex'} and "
        f"{'' if ev['max_eig'] <= ev['claimed_smoothness'] + HESS_TOL else 'not '}"
        f"{ev['claimed_smoothness']:g}-smooth (slack {HESS_TOL:g})."
    )
    return Outcome(v, text, ev, "max_eig")


def _ortho_loss_printed(X):
    """Eq. (9)'s ||X^T X - I||^2."""
    return float(np.sum((X.T @ X - np.eye(X.shape[1])) ** 2))


def _v_nonconvex(ev):
    # non-convexity is shown by a chord above the function or by a negative Hessian eigenvalue
    chord = ev["f_at_midpoint"] > ev["f_at_endpoints"] + ROUND_RTOL
    return HOLDS if chord or ev["min_hessian_eig_at_0"] < -HESS_TOL else UNJ


@item("nonconvex-ortho", "5.1", [9], "L_ortho (quartic) is non-convex", "as printed", "none", judge=_v_nonconvex)
def _nonconvex(ctx, loss=_ortho_loss_printed, grad=T.ortho_grad):
    """``loss(X)``: L_ortho as transcribed; ``grad(X)``: its gradient (for the Hessian at 0)."""
    rng = ctx.rng("nonconvex-ortho")
    r, m = 2, 4
    Q = np.linalg.qr(rng.standard_normal((m, r)))[0]
    mid = loss(0.5 * Q + 0.5 * (-Q))
    ends = 0.5 * (loss(Q) + loss(-Q))
    lam = np.linalg.eigvalsh(_fd_hessian(lambda x: grad(x.reshape(m, r)).ravel(), np.zeros(m * r)))
    ev = _ev(f_at_midpoint=mid, f_at_endpoints=ends, min_hessian_eig_at_0=float(lam.min()))
    v = _v_nonconvex(ev)
    text = (
        f"At an orthonormal Q ({m} x {r}) and -Q the loss is {ev['f_at_endpoints']:.4g} on average, at their "
        f"midpoint 0 it is {ev['f_at_midpoint']:.4g}; the smallest Hessian eigenvalue at 0 is "
        f"{ev['min_hessian_eig_at_0']:.4g}: "
        + ("non-convex, as claimed." if v == HOLDS else "no sign of non-convexity.")
    )
    return Outcome(v, text, ev, "min_hessian_eig_at_0")
