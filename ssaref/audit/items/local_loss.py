"""Audit items of the paper's section 4.2: the local loss."""

from __future__ import annotations


import math

import numpy as np

from .. import transcribe as T
from ..checks import cosine, gradient_check, numerical_grad, shape_check
from .core import (
    AMB,
    CONFIGS,
    COS_AGREE,
    D_N,
    GRAD_RTOL,
    HOLDS,
    Outcome,
    SHAPE,
    WRONG,
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
# section 4.2: the local loss
# ---------------------------------------------------------------------------------------------------
def _eq6_signal_dfa(e, B1, W2, a1, X):
    """The task signal SSA's L_CE(theta_i) stands for: DFA's dL/dW1 surrogate (eq. (3)), B_1 e o f'(a_1) x^T."""
    return ((e @ B1.T) * (1 - np.tanh(a1) ** 2)).T @ X


def _v_eq6(ev):
    # ambiguous while the only gradient the term can have (the surrogate's) is not the gradient of L_CE w.r.t. the
    # layer's own factors: "L_CE(theta_i)" then names no function SSA differentiates
    cos_min = min(ev["mean_cos_surrogate_vs_true_dU"], ev["mean_cos_surrogate_vs_true_ds"])
    return HOLDS if cos_min >= COS_AGREE else AMB


@item(
    "eq6-local-loss",
    "4.2",
    [6],
    "LL_i(theta_i) = alpha L_CE(theta_i) + beta L_align + gamma L_ortho, theta_i = (U_i, S_i, V_i^T)",
    "task term = the surrogate alpha <B_i e o f'(a_i), a_i(theta_i)> whose gradient is the DFA signal "
    "(rules/ssa.py); alpha multiplies it",
    "--ssa-variant paper (alpha has no effect there, as in eqs. (11)-(13))",
    judge=_v_eq6,
)
def _eq6(ctx, signal=_eq6_signal_dfa):
    """``signal(e, B1, W2, a1, X)``: the layer's dL/dW1 that the task term of LL_1 differentiates to."""
    rng = ctx.rng("eq6-local-loss")
    cos_U, cos_s = [], []
    n_draws = 60
    d0, d1, K, Bn = 5, 4, 3, 6
    for _ in range(n_draws):
        W1 = rng.uniform(-1, 1, (d1, d0)) / math.sqrt(d0)
        W2 = rng.uniform(-1, 1, (K, d1)) / math.sqrt(d1)
        B1 = T.unit_col(rng, (d1, K))
        X, y = rng.standard_normal((Bn, d0)), rng.integers(0, K, Bn)
        U, s, Vt = np.linalg.svd(W1, full_matrices=False)
        V = Vt.T
        as_, hs = T.mlp_forward([W1, W2], X)
        e = T.ce_grad_logits(hs[-1], y)
        Gd = signal(e, B1, W2, as_[0], X)
        fU = lambda Uv: T.mlp_loss([(Uv * s) @ V.T, W2], X, y)
        fs = lambda sv: T.mlp_loss([(U * sv) @ V.T, W2], X, y)
        cos_U.append(cosine(Gd @ V * s, numerical_grad(fU, U)))
        cos_s.append(cosine(np.sum(U * (Gd @ V), axis=0), numerical_grad(fs, s)))
    ev = _ev(
        mean_cos_surrogate_vs_true_dU=float(np.mean(cos_U)),
        mean_cos_surrogate_vs_true_ds=float(np.mean(cos_s)),
        frac_cos_negative_dU=float(np.mean(np.asarray(cos_U) <= 0)),
    )
    v = _v_eq6(ev)
    measured = (
        f"its cosine with the true gradient of L_CE (2-layer tanh MLP {d0}-{d1}-{K}, at the SVD of a random "
        f"init, {n_draws} draws) has mean {ev['mean_cos_surrogate_vs_true_dU']:.3g} for U and "
        f"{ev['mean_cos_surrogate_vs_true_ds']:.3g} for s (<= 0 in {ev['frac_cos_negative_dU']:.0%} of the "
        f"draws for U)"
    )
    if v == AMB:
        text = (
            "In DFA no function L_CE(theta_i) of the layer's own factors has the DFA signal as its gradient: the "
            "true gradient of the cross-entropy w.r.t. a hidden layer's U, S runs through the layers above.  The "
            "term is only meaningful as the surrogate <B_i e o f'(a_i), a_i(theta_i)>, whose gradient w.r.t. U, "
            f"S, V is the DFA signal pushed through W = U S V^T; {measured}, below the {COS_AGREE} at which it "
            "would be that gradient: what the term means is left open.  Eqs. (11)-(13) also drop alpha."
        )
    else:
        text = (
            f"The task signal under test is the gradient of L_CE w.r.t. the layer's factors: {measured}, at "
            f"least {COS_AGREE}."
        )
    return Outcome(v, text, ev, "mean_cos_surrogate_vs_true_dU")


def _v_eq7(ev):
    return HOLDS if _matches(ev["max_rel_err_ce"], ev["rel_err_half_mse"]) else WRONG


@item(
    "eq7-output-error",
    "4.2",
    [7],
    "Delta L_CE = y_predict - y_label is the gradient of the cross-entropy",
    "e = (softmax(a_N) - onehot(y)) / B, the batch mean (docs/decisions.md D2)",
    "none (a sum reduction rescales lr)",
    judge=_v_eq7,
)
def _eq7(ctx, grad_logits=T.ce_grad_logits, mse_grad=lambda z, yh: z - yh):
    """``grad_logits(Z, y)``: eq. (7) for softmax cross-entropy (batch mean); ``mse_grad(z, y)``: section 2's MSE
    case, the gradient of 0.5 ||z - y||^2."""
    rng = ctx.rng("eq7-output-error")
    errs = []
    n_cases = 20
    for _ in range(n_cases):
        Bn, K = int(rng.integers(1, 5)), int(rng.integers(2, 7))
        Z = rng.standard_normal((Bn, K)) * 3
        y = rng.integers(0, K, Bn)
        errs.append(gradient_check(lambda z: T.ce(z, y), grad_logits(Z, y), Z).rel_err)
    Z = rng.standard_normal((1, 4))
    yh = rng.standard_normal((1, 4))
    mse = gradient_check(lambda z: 0.5 * np.sum((z - yh) ** 2), mse_grad(Z, yh), Z).rel_err
    ev = _ev(max_rel_err_ce=max(errs), rel_err_half_mse=mse)
    v = _v_eq7(ev)
    text = (
        f"softmax - onehot against the finite-difference gradient of softmax cross-entropy w.r.t. the logits: "
        f"largest relative error {ev['max_rel_err_ce']:.2g} over {n_cases} cases; z - y against that of "
        f"0.5 ||z - y||^2 (section 2's MSE case, with the 1/2): {ev['rel_err_half_mse']:.2g} (a match is <= "
        f"{GRAD_RTOL:g})" + (".  With a batch the mean divides it by B." if v == HOLDS else ": not the gradient.")
    )
    return Outcome(v, text, ev, "max_rel_err_ce")


#: eq. (8) as printed; ``targets="feedback"``: the factors of B_i (d_i x d_N), as section 4.3 says
EQ8_PRINTED = "frob(U - BU) + frob(S - BS) + frob(Vt - BVt)"


def _v_eq8(ev):
    return _defined(
        ev["configs_defined_Bi_factors"], ev["configs_Bi"], HOLDS if _matches(ev["grad_rel_err"]) else WRONG
    )


@item(
    "eq8-align",
    "4.2, 4.3",
    [8],
    "L_align = ||U - B_U||^2 + ||S - B_S||^2 + ||V^T - B_{V^T}||^2 with "
    "(B_U, B_S, B_V) the rank-r truncated SVD of B_i in R^{d_i x d_N}",
    "align_target=auto: B_i's factors for U and s where d_i = m (Linear layers; rank k = min(r, d_N), the rest of "
    "U unmasked), V never aligned; conv layers: a feedback matrix of the kernel's own shape",
    "--align-target feedback (as printed, where shapes allow) or --align-target weight (layer-shaped feedback)",
    judge=_v_eq8,
)
def _eq8(ctx, targets="feedback", grad=lambda U, BU: 2 * (U - BU)):
    """``targets``: what the targets are the factors of, "feedback" (B_i, as printed) or "layer" (a feedback matrix
    of the layer's own shape); ``grad(U, B_U)``: the gradient of ||U - B_U||^2."""
    expr = EQ8_PRINTED
    ok, tot, rows, first = _shape_rows(expr, targets)
    ok2, tot2, rows2, _ = _shape_rows(expr, "layer")
    rng = ctx.rng("eq8-align")
    U, s, V, X, y, tg = _single_layer_case(rng)
    f = lambda Uv: np.sum((Uv - tg["BU"]) ** 2)
    g = gradient_check(f, grad(U, tg["BU"]), U)
    ev = _ev(configs_defined_Bi_factors=ok, configs_Bi=tot, configs_defined_layer_shaped=ok2, grad_rel_err=g.rel_err)
    v = _v_eq8(ev)
    text = (
        f"With the targets under test ({targets}) eq. (8) is defined on {ev['configs_defined_Bi_factors']} of "
        f"{ev['configs_Bi']} configurations{_where(first)}"
        + (
            f": with B_i of {D_N} columns, B_{{V^T}} is k x d_N = k x {D_N} while V^T is r x n "
            f"(n = d_{{i-1}} != d_N), and B_i has rank at most d_N = {D_N} < r, so B_U is d_i x {D_N} against U's "
            f"d_i x r"
            if targets == "feedback" and ok < tot
            else ""
        )
        + f".  With a feedback matrix of the layer's own shape (what 4.1 says for conv layers) it is defined on "
        f"{ev['configs_defined_layer_shaped']} of {tot2}, and the gradient of ||U - B_U||^2 as transcribed "
        f"has relative error {ev['grad_rel_err']:.2g} (a match is <= {GRAD_RTOL:g})."
    )
    return Outcome(
        v,
        text,
        ev,
        "configs_defined_Bi_factors",
        _table(f"targets: {targets}", expr, rows) + _table("layer-shaped feedback", expr, rows2),
    )


def _vvt_grad_printed(Vt):
    """Gradient of section 5.2's ||V V^T - I_n||^2 w.r.t. V^T as written in eq. (13): 4 V^T (V V^T - I)."""
    return 4 * Vt @ (Vt.T @ Vt - np.eye(Vt.shape[1]))


def _v_eq9(ev):
    if not ev["shape_defined"]:
        return SHAPE
    return HOLDS if _matches(ev["grad_rel_err"], ev["grad_rel_err_VVt_form"]) else WRONG


@item(
    "eq9-ortho",
    "4.2, 5.2",
    [9],
    "L_ortho = ||U^T U - I||^2 + ||V^T V - I||^2 (5.2: ||V V^T - I||^2); "
    "its gradient is 4 U (U^T U - I) (eqs. (12), (13))",
    "gamma (||U^T U - I_r||^2 + ||V^T V - I_r||^2), gradient 4 gamma U (U^T U - I)",
    "none",
    judge=_v_eq9,
)
def _eq9(ctx, ortho_grad=T.ortho_grad, vvt_grad=_vvt_grad_printed):
    """``ortho_grad(U)``: the gradient of ||U^T U - I||^2; ``vvt_grad(V^T)``: that of ||V V^T - I||^2 w.r.t. V^T."""
    rng = ctx.rng("eq9-ortho")
    U = T.generic_factors(rng, 6, 5, 3)[0]
    r = U.shape[1]
    f = lambda X: np.sum((X.T @ X - np.eye(r)) ** 2)
    g = gradient_check(f, ortho_grad(U), U)
    Vt = U.T
    n = Vt.shape[1]
    f2 = lambda Y: np.sum((Y.T @ Y - np.eye(n)) ** 2)  # ||V V^T - I_n||^2 with Y = V^T
    g2 = gradient_check(f2, vvt_grad(Vt), Vt)
    Q = np.linalg.qr(rng.standard_normal((n, r)))[0]
    floor = float(np.sum((Q @ Q.T - np.eye(n)) ** 2))
    sh = shape_check("frob(U.T @ U - I(r)) + frob(V.T @ V - I(r))", _shapes(CONFIGS[0]))
    ev = _ev(
        grad_rel_err=g.rel_err,
        grad_rel_err_VVt_form=g2.rel_err,
        VVt_penalty_at_orthonormal=floor,
        n_minus_r=n - r,
        shape_defined=int(sh.defined),
    )
    v = _v_eq9(ev)
    text = (
        f"4 U (U^T U - I) as transcribed has relative error {ev['grad_rel_err']:.2g} against finite differences, "
        f"and eq. (13)'s 4 V^T (V V^T - I) {ev['grad_rel_err_VVt_form']:.2g} as the gradient of section 5.2's "
        f"||V V^T - I_n||^2 (a match is <= {GRAD_RTOL:g}; that gradient equals the one of ||V^T V - I_r||^2)"
        + (": both are exact" if v == HOLDS else "")
        + f".  As a penalty ||V V^T - I_n||^2 can never vanish: at orthonormal V it equals "
        f"{ev['VVt_penalty_at_orthonormal']:.4g} (n - r = {ev['n_minus_r']})."
    )
    return Outcome(v, text, ev, "grad_rel_err")


def _feedback_shape_printed(cfg):
    """Section 4.3's B_i: d_i x d_N."""
    return cfg["d_i"], D_N


def _v_feedback(ev):
    fit = ev["configs_rank_r_feasible"] == ev["configs"] and ev["configs_factor_rows_fit"] == ev["configs"]
    return HOLDS if fit else SHAPE


@item(
    "feedback-factors",
    "4.3",
    [],
    "B_i in R^{d_i x d_N}, columns unit norm; truncated randomized SVD "
    "B_i ~ B_U B_S B_V^T with the retained rank r matching the forward decomposition",
    "B_i's rank-min(r, d_N) factors as targets where d_i = m; linalg.randomized_svd (Halko et al.)",
    "--align-target feedback",
    judge=_v_feedback,
)
def _feedback(ctx, feedback_shape=_feedback_shape_printed):
    """``feedback_shape(cfg) -> (rows, cols)``: the shape of the matrix whose rank-r factors are the targets."""
    from ...linalg import LinalgError, randomized_svd

    rows, feasible, fit, tot, ranks = [], 0, 0, 0, []
    for cfg in CONFIGS:
        if cfg["d_i"] is None:
            continue
        tot += 1
        br, bc = feedback_shape(cfg)
        maxr = min(br, bc)
        feasible += cfg["r"] <= maxr
        fit += br == cfg["m"] and bc == cfg["n"]
        ranks.append((cfg["r"], maxr))
        rows.append(
            f"| {cfg['name']} | {cfg['r']} | {br} x {bc} | {maxr} | "
            f"B_U {br}x{maxr} vs U {cfg['m']}x{cfg['r']}; "
            f"B_V {bc}x{maxr} vs V {cfg['n']}x{cfg['r']} |"
        )
    rng = ctx.rng("feedback-factors")
    B = T.unit_col(rng, (32, D_N))
    try:
        randomized_svd(B, 32, rng=rng)
        engine_refuses = 0
    except LinalgError:
        engine_refuses = 1
    ev = _ev(
        configs_rank_r_feasible=feasible,
        configs=tot,
        engine_rsvd_refuses_rank_above_dN=engine_refuses,
        configs_factor_rows_fit=fit,
    )
    v = _v_feedback(ev)
    text = (
        f"A rank-r truncation of the feedback matrix under test exists on {ev['configs_rank_r_feasible']} of "
        f"{ev['configs']} layers with a B_i (forward rank r vs the matrix's largest rank: "
        + ", ".join(f"{a} vs {b}" for a, b in ranks)
        + "), and its factors have U's and V's row counts on "
        f"{ev['configs_factor_rows_fit']} of {ev['configs']}"
        + (
            f": B_i has d_N = {D_N} columns, so its rank is at most {D_N} while r starts at min(m, n); even at a "
            "matching rank B_V has d_N rows against V's d_{i-1}, and for the conv layer B_U has its d_i = "
            f"{CONFIGS[3]['d_i']} rows (the layer's output, channels x height x width) against U's N kw = "
            f"{CONFIGS[3]['m']}"
            if feedback_shape is _feedback_shape_printed and v == SHAPE
            else ""
        )
        + f".  The engine's randomized SVD refuses a rank above the matrix's size: "
        f"{'yes' if ev['engine_rsvd_refuses_rank_above_dN'] else 'no'}."
    )
    return Outcome(
        v,
        text,
        ev,
        "configs_rank_r_feasible",
        ["| configuration | r | B_i | max rank | factor shapes |", "| --- | --- | --- | --- | --- |", *rows, ""],
    )
