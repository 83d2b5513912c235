"""Audit items of the paper's section 4.3: updates."""

from __future__ import annotations


import numpy as np

from .. import transcribe as T
from ..checks import gradient_check, rel_error, shape_check
from .core import (
    AMB,
    CONFIGS,
    GRAD_RTOL,
    HOLDS,
    Outcome,
    ROUND_RTOL,
    SHAPE,
    UNJ,
    WRONG,
    _LL,
    _defined,
    _ev,
    _matches,
    _shape_rows,
    _shapes,
    _single_layer_case,
    _table,
    _where,
    item,
)


# ---------------------------------------------------------------------------------------------------
# section 4.3: updates
# ---------------------------------------------------------------------------------------------------
#: eq. (10)'s V line as printed: V^T minus eta times the gradient w.r.t. V (n x r)
EQ10_PRINTED = "Vt - eta * gV"


def _v_eq10(ev):
    return _defined(ev["configs_defined"], ev["configs"])


@item(
    "eq10-update",
    "4.3",
    [10],
    "V_i^{T(t+1)} = V_i^{T(t)} - eta grad_{V_i} LL_i (and likewise U, S)",
    "every factor is updated with the gradient of its own shape (V (n, r) with dV)",
    "none (transposition)",
    judge=_v_eq10,
)
def _eq10(ctx, expr=EQ10_PRINTED):
    rows, ok, tot, first = [], 0, 0, ""
    for cfg in CONFIGS:
        sh = {"Vt": (cfg["r"], cfg["n"]), "gV": (cfg["n"], cfg["r"]), "eta": 1}
        res = shape_check(expr, sh)
        ok, tot = ok + res.defined, tot + 1
        first = first or (f"{cfg['name']}: {res.first_failure()}" if not res.defined else "")
        rows.append(f"| {cfg['name']} | {'yes' if res.defined else 'NO'} | {res.shape or res.first_failure()} |")
    ev = _ev(configs_defined=ok, configs=tot)
    v = _v_eq10(ev)
    text = f"The V line `{expr}` is defined on {ev['configs_defined']} of {ev['configs']} configurations" + (
        f"{_where(first)}: it subtracts the gradient w.r.t. V (n x r) from V^T (r x n), defined only for "
        "square V.  Trivially resolved (transpose, or write grad_{V^T}), which is what both engine variants "
        "do."
        if v == SHAPE
        else "."
    )
    return Outcome(v, text, ev, "configs_defined", _table("eq. (10), V line", expr, rows))


def _eq11_task_printed(U, G, V, alpha):
    """Eq. (11)'s task term as printed: the r x r matrix U^T grad_W L_CE V (alpha of eq. (6) dropped)."""
    return U.T @ G @ V


#: eq. (11)'s step on the singular values as printed (an r x r matrix subtracted from the vector s)
EQ11_STEP_PRINTED = "s - eta * (U.T @ G @ V + 2 * beta * (S - BS))"


def _v_eq11(ev):
    if not _matches(ev["rel_err_diag_alpha1"]):
        return WRONG  # not even the diagonal reading at alpha = 1 is the gradient
    # two readings (an r x r matrix that would make S non-diagonal vs a step on the vector s) while the printed
    # matrix has an off-diagonal part or its step on s is undefined
    if ev["offdiag_share_of_UtGV"] > ROUND_RTOL or not ev["step_on_vector_s_defined"]:
        return AMB
    return HOLDS if _matches(ev["rel_err_diag_alpha07"]) else WRONG


@item(
    "eq11-grad-S",
    "4.3",
    [11, 6],
    "grad_S LL = U^T grad_W L_CE V + 2 beta (S - B_S)",
    "alpha diag(U^T G V) + 2 beta (s - T_s) on the vector s (the true gradient for diagonal S)",
    "--ssa-variant paper (diag(U^T G V) + 2 beta (s - T_s), alpha dropped)",
    judge=_v_eq11,
)
def _eq11(ctx, task=_eq11_task_printed, step_expr=EQ11_STEP_PRINTED):
    """``task(U, G, V, alpha)``: the task term of grad_S LL (an r x r matrix); ``step_expr``: the step on s
    (shape reading; ``Bs`` is the target vector, ``alpha`` a scalar)."""
    rng = ctx.rng("eq11-grad-S")
    U, s, V, X, y, tg = _single_layer_case(rng)
    W = (U * s) @ V.T
    G = T.linear_ce_grad(W, X, y)
    beta, gamma = 0.3, 0.2
    res = {}
    for alpha in (1.0, 0.7):
        f = lambda sv: _LL(U, sv, V, X, y, tg, alpha, beta, gamma)
        paper_diag = np.diag(task(U, G, V, alpha)) + 2 * beta * (s - tg["Bs"])
        res[alpha] = gradient_check(f, paper_diag, s)
    # full-matrix reading: the gradient w.r.t. an unconstrained r x r S
    BS = np.diag(tg["Bs"])
    fS = lambda Sm: T.linear_ce(U @ Sm @ V.T, X, y) + beta * np.sum((Sm - BS) ** 2)
    M = task(U, G, V, 1.0)
    full = M + 2 * beta * (np.diag(s) - BS)
    gfull = gradient_check(fS, full, np.diag(s))
    off = float(np.linalg.norm(M - np.diag(np.diag(M))) / np.linalg.norm(M))
    r = CONFIGS[0]["r"]
    sh = shape_check(step_expr, dict(_shapes(CONFIGS[0], "layer"), Bs=(r, 1), alpha=1))
    ev = _ev(
        rel_err_diag_alpha1=res[1.0].rel_err,
        rel_err_diag_alpha07=res[0.7].rel_err,
        rel_err_full_matrix_reading=gfull.rel_err,
        offdiag_share_of_UtGV=off,
        step_on_vector_s_defined=int(sh.defined),
    )
    v = _v_eq11(ev)
    text = (
        f"Read on the diagonal, the task term under test gives the gradient w.r.t. the singular values with "
        f"relative error {ev['rel_err_diag_alpha1']:.2g} at alpha = 1 and {ev['rel_err_diag_alpha07']:.2g} at "
        f"alpha = 0.7 (a match is <= {GRAD_RTOL:g})"
        + (
            "; so alpha of eq. (6) is missing and for alpha != 1 it is not the gradient of LL_i"
            if not _matches(ev["rel_err_diag_alpha07"])
            else ""
        )
        + f".  As a full r x r matrix its relative error against the gradient w.r.t. an unconstrained S is "
        f"{ev['rel_err_full_matrix_reading']:.2g}; {ev['offdiag_share_of_UtGV']:.1%} of its norm lies off the "
        f"diagonal (zero is <= {ROUND_RTOL:g}), which would make S non-diagonal, and the step on the vector s "
        f"`{step_expr}` is {'defined' if ev['step_on_vector_s_defined'] else 'undefined'}"
        + (": which of the two readings is meant is what is ambiguous." if v == AMB else ".")
    )
    return Outcome(v, text, ev, "offdiag_share_of_UtGV")


def _eq12_task_printed(G, V, s, alpha):
    """Eq. (12)'s task term as printed: grad_W L_CE V S^-1 (alpha of eq. (6) dropped)."""
    return G @ V / s


#: eq. (12) as printed, on the paper's shapes
EQ12_EXPR = "(I(m) - U @ U.T) @ (G @ V @ inv(S) + 2*beta*(U - BU) + 4*gamma*U @ (U.T @ U - I(r)))"


def _v_eq12(ev):
    if ev["configs_defined_layer_targets"] < ev["configs"]:
        return SHAPE
    if not _matches(ev["rel_err_task_GVSinv"], ev["rel_err_bracket_vs_fd"]):
        return WRONG
    if ev["projection_norm_ratio_square_U"] <= ROUND_RTOL and ev["mlp_layers_with_square_U"] > 0:
        return UNJ  # the projection annihilates every update on the paper's square layers
    return HOLDS


@item(
    "eq12-grad-U",
    "4.3",
    [12, 6],
    "grad_U LL = (I - U U^T)[grad_W L_CE V S^-1 + 2 beta (U - B_U) + 4 gamma U (U^T U - I)]",
    "alpha G V S + 2 beta (U - T_U), Stiefel tangent projection G - U sym(U^T G), orthogonality gradient added "
    "after the projection, polar retraction after the step",
    "--ssa-variant paper (or --projection paper --project-ortho true --retraction none)",
    judge=_v_eq12,
)
def _eq12(ctx, task=_eq12_task_printed, project=T.complement):
    """``task(G, V, s, alpha)``: the bracket's task term; ``project(U, X)``: the projection applied to it."""
    rng = ctx.rng("eq12-grad-U")
    U, s, V, X, y, tg = _single_layer_case(rng)
    W = (U * s) @ V.T
    G = T.linear_ce_grad(W, X, y)
    alpha, beta, gamma = 0.7, 0.3, 0.2
    f = lambda Uv: _LL(Uv, s, V, X, y, tg, alpha, beta, gamma)
    ortho = T.ortho_grad(U)
    bracket = task(G, V, s, alpha) + 2 * beta * (U - tg["BU"]) + gamma * ortho
    g_br = gradient_check(f, bracket, U)
    g_true = gradient_check(f, alpha * G @ V * s + 2 * beta * (U - tg["BU"]) + gamma * ortho, U)
    fce = lambda Uv: T.linear_ce((Uv * s) @ V.T, X, y)
    t1 = task(G, V, s, 1.0)
    g_task = gradient_check(fce, t1, U)
    precond = rel_error(t1, g_task.fd / s**2)
    descent = float(np.sum(t1 * g_task.fd))
    # the projection: (I - U U^T) is zero at square orthonormal U (every MLP layer at full rank)
    Q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    Xr = rng.standard_normal((6, 6))
    kill = float(np.linalg.norm(project(Q, Xr)) / np.linalg.norm(Xr))
    sq = sum(cfg["m"] == cfg["r"] for cfg in CONFIGS[:3])
    # the projected orthogonality term is second order
    Qt = np.linalg.qr(rng.standard_normal((8, 3)))[0]
    off = 1e-3
    Ue = Qt + off * rng.standard_normal((8, 3))
    og = T.ortho_grad(Ue)
    proj_ratio = float(np.linalg.norm(project(Ue, og)) / np.linalg.norm(og))
    ok, tot, rows, _ = _shape_rows(EQ12_EXPR, "layer")
    okf, totf, rowsf, firstf = _shape_rows(EQ12_EXPR, "feedback")
    ev = _ev(
        rel_err_bracket_vs_fd=g_br.rel_err,
        cos_bracket_vs_fd=g_br.cosine,
        rel_err_task_GVSinv=g_task.rel_err,
        cos_task_GVSinv=g_task.cosine,
        rel_err_as_S2_preconditioned=precond,
        descent_inner_product=descent,
        rel_err_correct_formula=g_true.rel_err,
        projection_norm_ratio_square_U=kill,
        mlp_layers_with_square_U=sq,
        projected_ortho_norm_ratio_eps1e3=proj_ratio,
        configs_defined_layer_targets=ok,
        configs_defined_Bi_factors=okf,
        configs=tot,
    )
    v = _v_eq12(ev)
    e = ev
    text = (
        f"The task term under test has relative error {e['rel_err_task_GVSinv']:.4g} (cosine "
        f"{e['cos_task_GVSinv']:.4f}) against the gradient of L_CE w.r.t. U, and the whole bracket "
        f"{e['rel_err_bracket_vs_fd']:.4g} against that of LL_i with alpha = {alpha} (a match is <= "
        f"{GRAD_RTOL:g}; alpha G V S + 2 beta (U - B_U) + 4 gamma U (U^T U - I) is off by "
        f"{e['rel_err_correct_formula']:.2g})"
        + (
            f".  It equals the gradient preconditioned by S^-2 (each column scaled by 1/s_j^2) to "
            f"{e['rel_err_as_S2_preconditioned']:.2g}: G V S^-1 = (G V S) S^-2 is still a descent direction "
            f"(inner product with the gradient {e['descent_inner_product']:.3g} > 0) but with a wrong magnitude "
            "per column, and alpha is dropped"
            if e["rel_err_as_S2_preconditioned"] <= GRAD_RTOL
            else ""
        )
        + f".  The projection under test keeps {e['projection_norm_ratio_square_U']:.2g} of the norm at a square "
        f"orthonormal U, which {e['mlp_layers_with_square_U']} of the paper's MLP layers have at full rank "
        f"(m <= n), and {e['projected_ortho_norm_ratio_eps1e3']:.2g} of the orthogonality term {off:g} off the "
        f"manifold.  The bracket's shapes fit on {e['configs_defined_layer_targets']} of {e['configs']} "
        f"configurations with layer-shaped targets; with B_i's factors on {e['configs_defined_Bi_factors']} "
        f"of {totf}{_where(firstf)} (eq. (8))."
    )
    return Outcome(
        v,
        text,
        ev,
        "rel_err_task_GVSinv",
        _table("eq. (12), layer-shaped targets", "(I - U U^T)[...]", rows)
        + _table("eq. (12), B_i's factors", "(I - U U^T)[...]", rowsf),
    )


#: eq. (13) as printed, on the paper's shapes
EQ13_PRINTED = "(I(r) - Vt @ Vt.T) @ (G.T @ U @ inv(S) + 2*beta*(Vt - BVt) + 4*gamma*Vt @ (Vt.T @ Vt - I(n)))"


def _eq13_task_printed(G, U, s):
    """Eq. (13)'s task term grad_W L_CE^T U S^-1, read transposed (S^-1 U^T G) to fit the r x n bracket."""
    return (G.T @ U / s).T


def _eq13_proj_printed(V):
    """Eq. (13)'s projection (I - V^T V), r x r, applied on the left of V^T."""
    return np.eye(V.shape[1]) - V.T @ V


def _eq13_ortho_printed(V):
    """Eq. (13)'s orthogonality term 4 V^T (V V^T - I)."""
    return 4 * V.T @ (V @ V.T - np.eye(V.shape[0]))


def _v_eq13(ev):
    if ev["configs_defined"] < ev["configs"]:
        return SHAPE
    if not _matches(ev["rel_err_task_transposed"], ev["rel_err_ortho_term"]):
        return WRONG
    if ev["projection_norm_at_orthonormal_V"] <= ROUND_RTOL:
        return UNJ  # the projection vanishes on the manifold: V never moves
    return HOLDS


@item(
    "eq13-grad-V",
    "4.3",
    [13, 6],
    "grad_{V^T} LL = (I - V^T V)[grad_W L_CE^T U S^-1 + 2 beta (V^T - B_{V^T}) + 4 gamma V^T (V V^T - I)]",
    "alpha G^T U S + 2 beta (V - T_V), tangent projection at V, orthogonality added after it, polar retraction",
    "--ssa-variant paper (first term transposed to S^-1 U^T G to fit the r x n bracket; projection "
    "(I_r - V^T V) applied on the left of V^T)",
    judge=_v_eq13,
)
def _eq13(ctx, expr=EQ13_PRINTED, task=_eq13_task_printed, proj=_eq13_proj_printed, ortho=_eq13_ortho_printed):
    """``expr``: eq. (13) (shape reading); ``task(G, U, s)``: its task term as an r x n matrix; ``proj(V)``: the
    projection's matrix; ``ortho(V)``: the orthogonality term (r x n)."""
    ok, tot, rows, first = _shape_rows(expr, "layer")
    rng = ctx.rng("eq13-grad-V")
    Q = np.linalg.qr(rng.standard_normal((7, 3)))[0]  # V (n, r) orthonormal
    zero_at_orthonormal = float(np.linalg.norm(proj(Q)))
    off = 0.05
    Qe = Q + off * rng.standard_normal((7, 3))
    near = float(np.linalg.norm(proj(Qe)))
    U, s, V, X, y, tg = _single_layer_case(rng)
    G = T.linear_ce_grad((U * s) @ V.T, X, y)
    fce = lambda Vt: T.linear_ce((U * s) @ Vt, X, y)
    g_task = gradient_check(fce, task(G, U, s), V.T)
    r = V.shape[1]
    f9 = lambda Vt: np.sum((Vt @ Vt.T - np.eye(r)) ** 2)
    g_or = gradient_check(f9, ortho(V), V.T)
    ev = _ev(
        configs_defined=ok,
        configs=tot,
        projection_norm_at_orthonormal_V=zero_at_orthonormal,
        projection_norm_at_off_0p05=near,
        rel_err_task_transposed=g_task.rel_err,
        rel_err_ortho_term=g_or.rel_err,
    )
    v = _v_eq13(ev)
    e = ev
    text = (
        f"Eq. (13) as transcribed is defined on {e['configs_defined']} of {e['configs']} configurations"
        + (
            f"{_where(first)}: the bracket adds grad_W L^T U S^-1 (n x r) to terms of V^T's shape (r x n), "
            "defined only when n = r"
            if e["configs_defined"] < e["configs"]
            else ""
        )
        + f".  The projection's norm is {e['projection_norm_at_orthonormal_V']:.2g} at an orthonormal V "
        f"(zero is <= {ROUND_RTOL:g}"
        + (
            "; so the update of V vanishes on the manifold for every layer"
            if e["projection_norm_at_orthonormal_V"] <= ROUND_RTOL
            else ""
        )
        + f") and {e['projection_norm_at_off_0p05']:.3g} at a V {off:g} off it.  The task term (read transposed, "
        f"S^-1 U^T G in the printed formula) has relative error {e['rel_err_task_transposed']:.4g} against the "
        f"gradient of L_CE w.r.t. V^T, and the orthogonality term {e['rel_err_ortho_term']:.2g} against that "
        f"of eq. (9)'s ||V^T V - I||^2 (a match is <= {GRAD_RTOL:g})."
    )
    return Outcome(v, text, ev, "configs_defined", _table("eq. (13)", expr, rows))
