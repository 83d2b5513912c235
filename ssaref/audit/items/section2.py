"""Audit items of the paper's section 2."""

from __future__ import annotations


import math

import numpy as np

from .. import transcribe as T
from ..checks import claim_search, cosine, gradient_check, shape_check
from .core import (
    AMB,
    ANGLE_TOL_DEG,
    CONFIGS,
    D_N,
    EXACT_TOL,
    GRAD_RTOL,
    HOLDS,
    MLP_DIMS,
    Outcome,
    SHAPE,
    WRONG,
    _defined,
    _ev,
    _matches,
    _refuted,
    _table,
    _where,
    item,
)


# ---------------------------------------------------------------------------------------------------
# section 2
# ---------------------------------------------------------------------------------------------------
#: eq. (1)'s product as printed (W_i (d_i x d_{i-1}) times the column h_{i-1})
EQ1_PRINTED = "W @ h"


def _v_eq1(ev):
    return _defined(ev["configs_defined"], ev["configs"])


@item(
    "eq1-forward",
    "2",
    [1],
    "a_i = W_i h_{i-1}, h_i = f_i(a_i), W_i in R^{d_i x d_{i-1}}",
    "ssaref.nn Sequential (Linear: y = x W^T + b, batch rows)",
    "none (no alternative)",
    judge=_v_eq1,
)
def _eq1(ctx, expr=EQ1_PRINTED):
    rows, ok, tot, first = [], 0, 0, ""
    for cfg in CONFIGS[:3]:
        res = shape_check(expr, {"W": (cfg["m"], cfg["n"]), "h": (cfg["n"], 1)})
        ok, tot = ok + res.defined, tot + 1
        first = first or (f"{cfg['name']}: {res.first_failure()}" if not res.defined else "")
        rows.append(f"| {cfg['name']} | {'yes' if res.defined else 'NO'} | {res.shape or res.first_failure()} |")
    ev = _ev(configs_defined=ok, configs=tot)
    v = _v_eq1(ev)
    text = (
        f"The forward recursion `{expr}` is defined on {ev['configs_defined']} of the {ev['configs']} layers of "
        f"the paper's MLP ({' -> '.join(map(str, MLP_DIMS))})"
        + (": each W_i h_{i-1} has inner dimension d_{i-1}." if v == HOLDS else f"{_where(first)}.")
    )
    return Outcome(v, text, ev, "configs_defined", _table("eq. (1)", expr, rows))


#: eq. (2)'s product as printed, minus W_i (the result must have W_i's shape)
EQ2_PRINTED = "((Wn.T @ dan) * fp) @ hp.T - W"


def _v_eq2(ev):
    return _defined(ev["shape_configs_defined"], ev["shape_configs"], HOLDS if _matches(ev["max_rel_err"]) else WRONG)


@item(
    "eq2-bp",
    "2",
    [2],
    "dW_i = -[(W_{i+1}^T da_{i+1}) o f'(a_i)] h_{i-1}^T is minus the gradient of L",
    "rules/bp.py (the chain through every layer's backward)",
    "none (no alternative)",
    judge=_v_eq2,
)
def _eq2(ctx, expr=EQ2_PRINTED, bp=T.mlp_bp):
    """``bp(Ws, X, y)``: eq. (2)'s gradients of every layer (the transcription under test)."""
    rows, ok, tot, first = [], 0, 0, ""
    dims = MLP_DIMS
    for i in (1, 2):
        sh = {
            "Wn": (dims[i + 1], dims[i]),
            "dan": (dims[i + 1], 1),
            "fp": (dims[i], 1),
            "hp": (dims[i - 1], 1),
            "W": (dims[i], dims[i - 1]),
        }
        res = shape_check(expr, sh)
        ok, tot = ok + res.defined, tot + 1
        first = first or (f"mlp layer {i}: {res.first_failure()}" if not res.defined else "")
        rows.append(f"| mlp layer {i} | {'yes' if res.defined else 'NO'} | {res.shape or res.first_failure()} |")
    rng = ctx.rng("eq2-bp")
    dims_s = [5, 4, 3, 3]
    Ws = [rng.standard_normal((dims_s[i + 1], dims_s[i])) * 0.8 for i in range(3)]
    X, y = rng.standard_normal((1, 5)), rng.integers(0, 3, 1)
    G = bp(Ws, X, y)
    errs, coss = [], []
    for i in range(3):

        def f(Wi, i=i):
            W2 = list(Ws)
            W2[i] = Wi
            return T.mlp_loss(W2, X, y)

        g = gradient_check(f, G[i], Ws[i])
        errs.append(g.rel_err)
        coss.append(g.cosine)
    ev = _ev(max_rel_err=max(errs), min_cosine=min(coss), shape_configs_defined=ok, shape_configs=tot)
    v = _v_eq2(ev)
    text = (
        f"Eq. (2) (per example, tanh MLP {'-'.join(map(str, dims_s))}, float64) against the finite-difference "
        f"gradient of the cross-entropy: largest relative error over the {len(Ws)} layers "
        f"{ev['max_rel_err']:.2g} (a match is <= {GRAD_RTOL:g}), smallest cosine {ev['min_cosine']:.6f}"
        + ("; it is the gradient" if _matches(ev["max_rel_err"]) else "; it is not the gradient")
        + f".  The product has W_i's shape on {ev['shape_configs_defined']} of {ev['shape_configs']} hidden "
        f"layers of the paper's MLP{_where(first)}."
    )
    return Outcome(v, text, ev, "max_rel_err", _table("eq. (2), result minus W_i (same shape required)", expr, rows))


#: eq. (3)'s product as printed, minus W_i
EQ3_PRINTED = "((B @ daN) * fp) @ hp.T - W"


def _v_eq3(ev):
    return _defined(ev["shape_configs_defined"], ev["shape_configs"])


@item(
    "eq3-dfa",
    "2",
    [3],
    "DFA: dW_i = -[(B_i da_N) o f'(a_i)] h_{i-1}^T with B_i in R^{d_i x d_N}",
    "rules/dfa.py (segments; B_i unit-norm columns, docs/decisions.md D3)",
    "--method dfa --dfa-init unit_col",
    judge=_v_eq3,
)
def _eq3(ctx, expr=EQ3_PRINTED):
    rows, ok, tot, first = [], 0, 0, ""
    dims = MLP_DIMS
    for i in (1, 2):
        sh = {
            "B": (dims[i], D_N),
            "daN": (D_N, 1),
            "fp": (dims[i], 1),
            "hp": (dims[i - 1], 1),
            "W": (dims[i], dims[i - 1]),
        }
        res = shape_check(expr, sh)
        ok, tot = ok + res.defined, tot + 1
        first = first or (f"mlp layer {i}: {res.first_failure()}" if not res.defined else "")
        rows.append(f"| mlp layer {i} | {'yes' if res.defined else 'NO'} | {res.shape or res.first_failure()} |")
    rng = ctx.rng("eq3-dfa")
    cs = []
    d = [6, 5, 4, 3]
    for _ in range(200):
        Ws = [rng.uniform(-1, 1, (d[i + 1], d[i])) / math.sqrt(d[i]) for i in range(3)]
        Bs = [T.unit_col(rng, (d[i + 1], 3)) for i in range(2)]
        X, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)
        cs.append(cosine(T.mlp_dfa(Ws, Bs, X, y)[0], T.mlp_bp(Ws, X, y)[0]))
    ev = _ev(
        shape_configs_defined=ok,
        shape_configs=tot,
        mean_cos_dfa_bp_init=float(np.mean(cs)),
        frac_cos_negative_init=float(np.mean(np.asarray(cs) <= 0)),
    )
    v = _v_eq3(ev)
    text = (
        f"Eq. (3) is a definition (a pseudo-gradient, not the gradient of any loss); `{expr}` is defined, with "
        f"W_i's shape, on {ev['shape_configs_defined']} of {ev['shape_configs']} hidden layers of the paper's "
        f"MLP{_where(first)}.  For reference, at initialisation its cosine with BP's gradient of the first layer "
        f"of a {'-'.join(map(str, d))} tanh MLP has mean {ev['mean_cos_dfa_bp_init']:.3f} and is <= 0 in "
        f"{ev['frac_cos_negative_init']:.0%} of {len(cs)} draws."
    )
    return Outcome(v, text, ev, "shape_configs_defined", _table("eq. (3), result minus W_i", expr, rows))


def _v_eq4(ev):
    if not ev["gradients_same_shape"]:
        return SHAPE
    # a formula that breaks Cauchy-Schwarz, or that the engine's angle does not reproduce, is not the one cosine
    # the paper's angles (Figures 2-3) are read with: two readings of "the angle"
    if _refuted(ev["cos_bound_fail_rate"]) or ev["engine_max_abs_diff_deg"] > ANGLE_TOL_DEG:
        return AMB
    return HOLDS


@item(
    "eq4-cosine",
    "2",
    [4],
    "cos angle(grad_BP, grad_DFA) = <a, b> / (||a||_F ||b||_F)",
    "ssaref.metrics.angle_deg (arccos of the flattened cosine, degrees)",
    "none (definition)",
    judge=_v_eq4,
)
def _eq4(ctx, cos_fn=cosine):
    """``cos_fn(a, b)``: eq. (4) as transcribed (default: <a, b> / (||a|| ||b||) of the flattened arrays)."""
    from ...metrics import angle_deg

    rng = ctx.rng("eq4-cosine")
    n_bound, n_angle = 500, 200
    res = claim_search(
        lambda r: {"a": r.standard_normal((3, 4)), "b": r.standard_normal((3, 4)) * r.uniform(0.1, 9)},
        lambda c: (abs(cos_fn(c["a"], c["b"])) <= 1 + EXACT_TOL, abs(cos_fn(c["a"], c["b"])) - 1),
        n_bound,
        seed=int(rng.integers(2**31)),
    )
    diffs = []
    for _ in range(n_angle):
        a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
        diffs.append(abs(angle_deg(a, b) - math.degrees(math.acos(np.clip(cos_fn(a, b), -1, 1)))))
    sh = shape_check("frob(Gbp - Gdfa)", {"Gbp": (256, 3072), "Gdfa": (256, 3072)})
    ev = _ev(
        cos_bound_fail_rate=res.fail_rate, engine_max_abs_diff_deg=max(diffs), gradients_same_shape=int(sh.defined)
    )
    v = _v_eq4(ev)
    text = (
        f"A definition: both gradients have W_i's shape ({'yes' if ev['gradients_same_shape'] else 'no'}); the "
        f"cosine as transcribed leaves [-1, 1] in {ev['cos_bound_fail_rate']:.1%} of {n_bound} draws "
        f"(Cauchy-Schwarz allows none) and the engine's angle_deg differs from arccos of it by at most "
        f"{ev['engine_max_abs_diff_deg']:.2g} degrees over {n_angle} pairs (agreement: <= {ANGLE_TOL_DEG:g})"
        + (
            "."
            if v == HOLDS
            else "; so the formula is not the cosine the engine's and the figures' angles are read with."
        )
    )
    return Outcome(v, text, ev, "engine_max_abs_diff_deg")
