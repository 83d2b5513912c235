"""Audit items of the paper's section 5.3."""

from __future__ import annotations


import math

import numpy as np

from .. import transcribe as T
from ..checks import GradResult, claim_search, cosine, gradient_check
from .core import (
    AMB,
    CLAIM_FAIL_RATE,
    COS_AGREE,
    GRAD_RTOL,
    HOLDS,
    Outcome,
    UNJ,
    WRONG,
    _defined,
    _ev,
    _matches,
    _refuted,
    _shape_rows,
    _table,
    _where,
    item,
)


# ---------------------------------------------------------------------------------------------------
# section 5.3
# ---------------------------------------------------------------------------------------------------
def _eq14_grad_printed(G, W, B, alpha, beta):
    """Eq. (14) with eq. (15) substituted, as printed: grad L_CE + 2 beta * 2 (W - B) (alpha dropped)."""
    return G + 2 * beta * 2 * (W - B)


def _v_eq14(ev):
    return HOLDS if _matches(ev["rel_err_alpha1"], ev["rel_err_alpha07"]) else WRONG


@item(
    "eq14-ssa-grad",
    "5.3",
    [14, 6],
    "grad_W L_SSA = grad_W L_CE + 2 beta grad_W L_align + 4 gamma grad_W L_ortho",
    "alpha grad L_CE + beta grad L_align + gamma grad L_ortho, each gradient with its own factor 2 or 4 once",
    "none (a derivation step; no engine option)",
    judge=_v_eq14,
)
def _eq14(ctx, grad=_eq14_grad_printed):
    """``grad(G, W, B, alpha, beta)``: grad_W of alpha L_CE + beta ||W - B||^2 as transcribed."""
    rng = ctx.rng("eq14-ssa-grad")
    m, n = 4, 5
    W = rng.standard_normal((m, n))
    Bm = rng.standard_normal((m, n))
    X, y = rng.standard_normal((6, n)), rng.integers(0, m, 6)
    res: dict[float | tuple[str, float], GradResult] = {}  # alpha -> the claimed gradient; ("ok", alpha) -> correct
    beta = 0.3
    for alpha in (1.0, 0.7):
        f = lambda w: alpha * T.linear_ce(w, X, y) + beta * np.sum((w - Bm) ** 2)
        G = T.linear_ce_grad(W, X, y)
        res[alpha] = gradient_check(f, grad(G, W, Bm, alpha, beta), W)
        res[("ok", alpha)] = gradient_check(f, alpha * G + 2 * beta * (W - Bm), W)
    ev = _ev(
        rel_err_alpha1=res[1.0].rel_err,
        rel_err_alpha07=res[0.7].rel_err,
        rel_err_correct_alpha1=res[("ok", 1.0)].rel_err,
        cos_alpha1=res[1.0].cosine,
    )
    v = _v_eq14(ev)
    text = (
        "With LL = alpha L_CE + beta L_align + gamma L_ortho (eq. (6)) the gradient is alpha grad L_CE + beta "
        "grad L_align + gamma grad L_ortho, each gradient carrying its own factor 2 or 4 once.  The formula under "
        f"test has relative error {ev['rel_err_alpha1']:.4g} at alpha = 1 (cosine {ev['cos_alpha1']:.4f}) and "
        f"{ev['rel_err_alpha07']:.4g} at alpha = 0.7 against finite differences (a match is <= {GRAD_RTOL:g}; the "
        f"sound formula: {ev['rel_err_correct_alpha1']:.2g})"
        + (
            ": eq. (14) puts the factors 2 and 4 of the squared norms on the coefficients and eq. (15) puts them "
            "in grad L_align again (2 beta * 2 (W - B) = 4 beta (W - B) instead of 2 beta (W - B)), and alpha is "
            "dropped."
            if v == WRONG
            else "."
        )
    )
    return Outcome(v, text, ev, "rel_err_alpha1")


def _v_eq15(ev):
    return _defined(
        ev["configs_defined_W_minus_B"], ev["configs"], HOLDS if _matches(ev["grad_rel_err_same_shape_B"]) else WRONG
    )


@item(
    "eq15-align-grad",
    "5.3",
    [15],
    "grad_W L_align = 2 (W - B), with 'B approximating W^T'",
    "alignment acts on the factors (eq. (8)), never on W",
    "none",
    judge=_v_eq15,
)
def _eq15(ctx, targets="feedback", grad=lambda W, B: 2 * (W - B)):
    """``targets``: B's shape, "feedback" (B_i, d_i x d_N, as printed) or "layer" (W's shape); ``grad(W, B)``: the
    gradient of ||W - B||^2."""
    ok, tot, rows, first = _shape_rows("W - B", targets)
    ok2, tot2, rows2, _ = _shape_rows("W.T - B", targets)
    rng = ctx.rng("eq15-align-grad")
    W, Bm = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    g = gradient_check(lambda w: np.sum((w - Bm) ** 2), grad(W, Bm), W)
    ev = _ev(
        configs_defined_W_minus_B=ok, configs=tot, configs_defined_Wt_minus_B=ok2, grad_rel_err_same_shape_B=g.rel_err
    )
    v = _v_eq15(ev)
    text = (
        f"2(W - B) as transcribed is the gradient of ||W - B||^2 for B of W's shape to a relative error of "
        f"{ev['grad_rel_err_same_shape_B']:.2g} (a match is <= {GRAD_RTOL:g}).  With B of the shape under test "
        f"({targets}) W - B is defined on {ev['configs_defined_W_minus_B']} of {ev['configs']} layers"
        + (f"{_where(first)}: B_i is d_i x d_N and W_i is d_i x d_{{i-1}}" if ok < tot else "")
        + f", and 'B approximates W^T' (W^T - B) on {ev['configs_defined_Wt_minus_B']} of {tot2}."
    )
    return Outcome(
        v, text, ev, "configs_defined_W_minus_B", _table("W - B", "W - B", rows) + _table("W^T - B", "W.T - B", rows2)
    )


def _two_layer_case(rng, small=True):
    d0, d1, K = int(rng.integers(2, 7)), int(rng.integers(2, 7)), int(rng.integers(2, 5))
    Bn = int(rng.integers(1, 9))
    W1 = rng.uniform(-1, 1, (d1, d0)) / math.sqrt(d0)
    W2 = rng.uniform(-1, 1, (K, d1)) / math.sqrt(d1)
    return {
        "d0": d0,
        "d1": d1,
        "K": K,
        "B": Bn,
        "W1": W1,
        "W2": W2,
        "X": rng.standard_normal((Bn, d0)),
        "y": rng.integers(0, K, Bn),
    }


def _eq16_dW_printed(U, s, V):
    """The W-space change U S V^T undergoes along the orthogonality gradient (eq. (16)'s grad_W L_ortho, factor
    space pushed through W = U S V^T)."""
    return T.ortho_grad(U) * s @ V.T + (U * s) @ T.ortho_grad(V).T


def _v_eq16(ev):
    return UNJ if _refuted(ev["tangent_share_ge_half_fail_rate"], ev["abs_cos_gt_0p1_fail_rate"]) else HOLDS


@item(
    "eq16-ortho-inner",
    "5.3",
    [16],
    "grad of L_ortho is tangent to the Stiefel manifold, so <grad_W L_true, grad_W L_ortho> ~ 0",
    "the orthogonality gradient is added after the tangent projection (it is normal to the manifold, so projecting "
    "would remove it)",
    "--project-ortho true",
    judge=_v_eq16,
)
def _eq16(ctx, space="tangent", ortho_dW=_eq16_dW_printed):
    """``space``: where the claim puts grad L_ortho, "tangent" (as printed) or "normal"; ``ortho_dW(U, s, V)``:
    grad_W L_ortho, the W-space direction whose inner product with grad_W L_true is claimed ~ 0."""
    base = int(ctx.rng("eq16-ortho-inner").integers(2**31))
    eps_lo, eps_hi = 1e-4, 0.3  # distance of the tangent-share draws from orthonormal (log-uniform)
    off = 0.1  # distance of the inner-product draws' factors from orthonormal
    small = 0.1  # "~ 0": |cos| at most this

    def s_tan(rng):
        m = int(rng.integers(2, 9))
        r = int(rng.integers(1, m + 1))
        eps = math.exp(rng.uniform(math.log(eps_lo), math.log(eps_hi)))
        U = np.linalg.qr(rng.standard_normal((m, r)))[0] + eps * rng.standard_normal((m, r))
        return {"m": m, "r": r, "eps": eps, "U": U}

    def p_tan(c):
        g = T.ortho_grad(c["U"])
        t = T.tangent(c["U"], g)
        frac = float(np.linalg.norm(t if space == "tangent" else g - t) / np.linalg.norm(g))
        return frac >= 0.5, 0.5 - frac

    n1 = n2 = 500
    r1 = claim_search(s_tan, p_tan, n1, seed=base, size_fn=lambda c: c["m"])

    def s_in(rng):
        c = _two_layer_case(rng)
        r = min(c["d0"], c["d1"])
        U, s, V = T.generic_factors(rng, c["d1"], c["d0"], r, off=off)
        c.update(U=U, s=s, V=V)
        c["W1"] = (U * s) @ V.T
        return c

    def p_in(c):
        G = T.mlp_bp([c["W1"], c["W2"]], c["X"], c["y"])[0]
        dW = ortho_dW(c["U"], c["s"], c["V"])
        cs = cosine(G, dW) if np.any(dW) else 0.0  # a zero direction has a zero inner product
        return abs(cs) <= small, abs(cs) - small

    r2 = claim_search(s_in, p_in, n2, seed=base + 1, size_fn=lambda c: c["d0"] + c["d1"] + c["K"])
    sm = r2.smallest or {}
    ev = _ev(
        tangent_share_ge_half_fail_rate=r1.fail_rate,
        abs_cos_gt_0p1_fail_rate=r2.fail_rate,
        max_abs_cos=small + r2.worst_margin,
        smallest_d0=sm.get("d0", 0),
        smallest_d1=sm.get("d1", 0),
    )
    v = _v_eq16(ev)
    e = ev
    text = (
        f"The gradient 4 U (U^T U - I) = 4 U E (E symmetric) lies in the normal space {{U Sym}} of the Stiefel "
        f"manifold, not the tangent space; its share in the {space} space is below 1/2 in "
        f"{e['tangent_share_ge_half_fail_rate']:.1%} of {n1} draws (factors {eps_lo:g} to {eps_hi:g} off "
        f"orthonormal).  The inner product of grad_W L_true with the grad_W L_ortho under test (2-layer tanh "
        f"nets, factors {off:g} off orthonormal) has |cos| > {small:g} in {e['abs_cos_gt_0p1_fail_rate']:.1%} of "
        f"{n2} draws ("
        + (f"largest |cos| {e['max_abs_cos']:.3g}; " if r2.fails else "")
        + f"a claim is refuted above {CLAIM_FAIL_RATE:.0%})"
        + (
            ".  (As a function of W through its SVD, L_ortho is identically 0, so 'grad_W L_ortho' is only "
            "meaningful in factor space.)"
            if v == UNJ
            else "."
        )
    )
    return Outcome(v, text, ev, "abs_cos_gt_0p1_fail_rate")


def _eq17_task_dfa(Ws, Bs, X, y):
    """The task term of grad L_SSA for SSA: DFA's signal (B_1 e through the segment)."""
    return T.mlp_dfa(Ws, Bs, X, y)


def _v_eq17(ev):
    return (
        UNJ
        if _refuted(ev["inner_W_minus_B_negative_rate"], ev["cos_le_0_rate_dfa_task"], ev["cos_le_0_rate_true_task"])
        else HOLDS
    )


@item(
    "eq17-18-positivity",
    "5.3",
    [17, 18],
    "<grad L_true, grad L_SSA> = ||grad L_true||^2 + 2 beta <grad L_true, "
    "W - B> is positive because <grad L_true, W - B> > 0; hence cos > 0 and SSA descends",
    "no guarantee is assumed; the engine logs the eq. (4) angle of SSA's update with BP (angle_every)",
    "--angle-every 50 (measurement only)",
    judge=_v_eq17,
)
def _eq17(ctx, task=_eq17_task_dfa, premise=None):
    """``task(Ws, Bs, X, y)``: the task term of grad L_SSA (SSA's DFA signal by default); ``premise(g, W, B)``: the
    condition under which positivity is asserted (None: asserted for every B, as printed)."""
    base = int(ctx.rng("eq17-18-positivity").integers(2**31))
    lo_beta, hi_beta = 1e-3, 1.0

    def sample(rng):
        c = _two_layer_case(rng)
        c["Bw"] = T.unit_col(rng, (c["d1"], c["d0"]))  # B of W's shape (the only reading where W - B is defined)
        c["Bd"] = T.unit_col(rng, (c["d1"], c["K"]))  # DFA's B_1 (d_1 x d_N)
        c["beta"] = math.exp(rng.uniform(math.log(lo_beta), math.log(hi_beta)))
        return c

    def grads(c):
        Ws = [c["W1"], c["W2"]]
        g = T.mlp_bp(Ws, c["X"], c["y"])[0]
        gd = task(Ws, [c["Bd"]], c["X"], c["y"])[0]
        return g, gd

    def asserted(c, g):
        return premise is None or bool(premise(g, c["W1"], c["Bw"]))

    def p_inner(c):
        g, _ = grads(c)
        if not asserted(c, g):
            return True, 0.0
        v = float(np.sum(g * (c["W1"] - c["Bw"])))
        return v > 0, -v

    def p_cos_dfa(c):
        g, gd = grads(c)
        if not asserted(c, g):
            return True, 0.0
        v = cosine(g, gd + 4 * c["beta"] * (c["W1"] - c["Bw"]))  # eqs. (14) + (15), ortho term dropped (eq. (16))
        return v > 0, -v

    def p_cos_exact(c):
        g, _ = grads(c)
        if not asserted(c, g):
            return True, 0.0
        v = cosine(g, g + 4 * c["beta"] * (c["W1"] - c["Bw"]))  # even granting grad L_CE = grad L_true
        return v > 0, -v

    size = lambda c: c["d0"] + c["d1"] + c["K"]
    n = 1000
    r1 = claim_search(sample, p_inner, n, seed=base, size_fn=size)
    r2 = claim_search(sample, p_cos_dfa, n, seed=base, size_fn=size)
    r3 = claim_search(sample, p_cos_exact, n, seed=base, size_fn=size)
    sm = r1.smallest or {}
    det = []
    if sm:
        det = [
            "Smallest counterexample to <grad L_true, W - B> > 0 (2-layer tanh net):",
            "",
            f"d0={sm['d0']}, d1={sm['d1']}, K={sm['K']}, batch={sm['B']}, <g, W - B> = {-sm['margin']:.4g}",
            "",
            f"W1 = {sm['W1']}",
            "",
            f"B = {sm['Bw']}",
            "",
            f"X = {sm['X']}, y = {sm['y']}",
            "",
        ]
    ev = _ev(
        inner_W_minus_B_negative_rate=r1.fail_rate,
        cos_le_0_rate_dfa_task=r2.fail_rate,
        cos_le_0_rate_true_task=r3.fail_rate,
        smallest_inner=-sm.get("margin", 0.0),
    )
    v = _v_eq17(ev)
    e = ev
    text = (
        f"<grad L_true, W - B> is <= 0 in {e['inner_W_minus_B_negative_rate']:.0%} of {n} draws"
        + (" (nothing ties a random B to the loss gradient)" if premise is None else " where asserted")
        + f".  With the task term under test the cosine of eq. (18) is <= 0 in "
        f"{e['cos_le_0_rate_dfa_task']:.0%} of draws (beta log-uniform in [{lo_beta:g}, {hi_beta:g}]); with "
        f"grad L_CE = grad L_true it is in {e['cos_le_0_rate_true_task']:.0%} (a claim is refuted above "
        f"{CLAIM_FAIL_RATE:.0%})"
        + (
            ".  Eq. (17) also uses 2 beta where eqs. (14)-(15) give 4 beta, and replaces the DFA term by the true "
            "gradient."
            if v == UNJ
            else "."
        )
    )
    return Outcome(v, text, ev, "inner_W_minus_B_negative_rate", det)


def _v_dfa_true(ev):
    return UNJ if _refuted(ev["frac_cos_le_0"]) or ev["mean_cos"] < COS_AGREE else HOLDS


@item(
    "dfa-true-grad",
    "5.3",
    [14],
    "grad_W L_CE (the DFA feedback error) matches grad_W L_true",
    "the task term is DFA's signal (B_i e through the segment)",
    "none",
    judge=_v_dfa_true,
)
def _dfa_true(ctx, feedback=T.mlp_dfa):
    """``feedback(Ws, Bs, X, y)``: the updates the claim calls grad_W L_CE (DFA's, eq. (3))."""
    rng = ctx.rng("dfa-true-grad")
    draws = []
    n_draws = 300
    for _ in range(n_draws):
        d = [int(rng.integers(3, 9)) for _ in range(3)] + [int(rng.integers(2, 5))]
        Ws = [rng.uniform(-1, 1, (d[i + 1], d[i])) / math.sqrt(d[i]) for i in range(3)]
        Bs = [T.unit_col(rng, (d[i + 1], d[3])) for i in range(2)]
        X, y = rng.standard_normal((8, d[0])), rng.integers(0, d[3], 8)
        draws.append(cosine(feedback(Ws, Bs, X, y)[0], T.mlp_bp(Ws, X, y)[0]))
    cs = np.asarray(draws)
    ev = _ev(
        mean_cos=float(cs.mean()), frac_cos_le_0=float(np.mean(cs <= 0)), frac_cos_ge_0p9=float(np.mean(cs >= 0.9))
    )
    v = _v_dfa_true(ev)
    text = (
        f"At initialisation the cosine of the update under test with BP's (first layer of {n_draws} random "
        f"3-hidden-layer tanh MLPs) has mean {ev['mean_cos']:.3g}, is <= 0 in {ev['frac_cos_le_0']:.0%} and "
        f">= 0.9 in {ev['frac_cos_ge_0p9']:.0%} of draws (a match needs a mean >= {COS_AGREE} and <= 0 in at most "
        f"{CLAIM_FAIL_RATE:.0%})"
        + (
            ".  Alignment is something training may produce, not an identity the derivation can use."
            if v == UNJ
            else "."
        )
    )
    return Outcome(v, text, ev, "frac_cos_le_0")


def _v_angle_sign(ev):
    share = ev["frac_random_pairs_angle_gt_0"]
    if share >= 1 - CLAIM_FAIL_RATE or share <= CLAIM_FAIL_RATE:
        return AMB  # met by (nearly) every pair or none: it cannot single out the better approximations
    return HOLDS if ev["frac_condition_agrees_with_cos_gt_0"] >= 1 - CLAIM_FAIL_RATE else UNJ


@item(
    "angle-sign",
    "5.3",
    [4],
    "High alignment (alignment angle > 0 degrees) suggests a better approximation",
    "metrics report angles in degrees, smaller = better aligned (as Figures 2-3)",
    "none",
    judge=_v_angle_sign,
)
def _angle_sign(ctx, condition=lambda ang: ang > 0):
    """``condition(angle_deg)``: the alignment condition as stated ("angle > 0 degrees")."""
    rng = ctx.rng("angle-sign")
    angles, cosines = [], []
    n_pairs = 1000
    for _ in range(n_pairs):
        a, b = rng.standard_normal(20), rng.standard_normal(20)
        c = cosine(a, b)
        cosines.append(c)
        angles.append(math.degrees(math.acos(np.clip(c, -1, 1))))
    ang, cos = np.asarray(angles), np.asarray(cosines)
    met = np.asarray([bool(condition(x)) for x in ang])
    ev = _ev(
        frac_random_pairs_angle_gt_0=float(np.mean(met)),
        frac_random_pairs_angle_gt_90=float(np.mean(ang > 90)),
        frac_condition_agrees_with_cos_gt_0=float(np.mean(met == (cos > 0))),
    )
    v = _v_angle_sign(ev)
    e = ev
    text = (
        f"The stated condition holds for {e['frac_random_pairs_angle_gt_0']:.1%} of {n_pairs} random pairs of "
        f"vectors ({e['frac_random_pairs_angle_gt_90']:.1%} of them are more than 90 degrees apart) and agrees "
        f"with cos > 0 (eq. (18), and lower angle = better in Figures 2-3) on "
        f"{e['frac_condition_agrees_with_cos_gt_0']:.1%}"
        + (
            ": true of almost every pair, anti-aligned ones included, so it cannot be what is meant; presumably "
            "angle < 90 degrees (cos > 0)."
            if v == AMB
            else "."
        )
    )
    return Outcome(v, text, ev, "frac_random_pairs_angle_gt_0")
