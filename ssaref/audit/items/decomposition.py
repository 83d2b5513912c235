"""Audit items of the paper's section 4.1: decomposition."""

from __future__ import annotations


import numpy as np

from .. import transcribe as T
from ..checks import rel_error, shape_check
from .core import CONFIGS, HOLDS, Outcome, ROUND_RTOL, SHAPE, UNJ, _defined, _ev, _shape_rows, _table, _where, item


# ---------------------------------------------------------------------------------------------------
# section 4.1: decomposition
# ---------------------------------------------------------------------------------------------------
#: eq. (5) as printed, minus W (the product must have W's shape)
EQ5_PRINTED = "U @ S @ V.T - W"


def _v_eq5(ev):
    # the reading "orthogonal = orthonormal columns" and the engine's reconstruction are reported, not judged:
    # the statement is the factorisation's shapes (the engine's layer is tested in tests/test_svd_layers.py)
    return _defined(ev["configs_defined"], ev["configs"])


@item(
    "eq5-svd",
    "4.1",
    [5],
    "W_i = U_i S_i V_i^T, U in R^{m x r}, V in R^{n x r} orthogonal, r <= min(m, n)",
    "nn/svd_layers.py SVDLinear (U (m,r), s (r,), V (n,r)), initialised from the dense layer's SVD",
    "none (no alternative)",
    judge=_v_eq5,
)
def _eq5(ctx, expr=EQ5_PRINTED):
    ok, tot, rows, first = _shape_rows(expr, targets="none")
    from ...nn.layers import Linear
    from ...nn.svd_layers import SVDLinear

    rng = ctx.rng("eq5-svd")
    lin = Linear(7, 5, xp=np, dtype=np.float64, rng=rng)
    svd = SVDLinear.from_dense(lin)
    err = rel_error(svd.matrix(), lin.params["W"])
    U, V = svd.params["U"], svd.params["V"]
    ev = _ev(
        configs_defined=ok,
        configs=tot,
        engine_reconstruction_rel_err=err,
        VVt_minus_I_at_r_lt_n=float(np.linalg.norm(V @ V.T - np.eye(V.shape[0]))),
        UtU_minus_I=float(np.linalg.norm(U.T @ U - np.eye(U.shape[1]))),
    )
    v = _v_eq5(ev)
    text = (
        f"`{expr}` is defined on {ev['configs_defined']} of {ev['configs']} configurations{_where(first)}.  "
        f"'Orthogonal' must be read as orthonormal columns (U^T U = I_r: ||U^T U - I|| = "
        f"{ev['UtU_minus_I']:.1e} for the engine's {U.shape[0]} x {U.shape[1]} U): V (n x r) with r < n is not "
        f"an orthogonal matrix (||V V^T - I_n|| = {ev['VVt_minus_I_at_r_lt_n']:.4g} for its {V.shape[0]} x "
        f"{V.shape[1]} V).  The engine's full-rank SVD layer reproduces the dense weight to a relative error of "
        f"{ev['engine_reconstruction_rel_err']:.1e}."
    )
    return Outcome(v, text, ev, "configs_defined", _table("eq. (5)", expr, rows))


def _kmat(K):
    N, C, kh, kw = K.shape
    return K.transpose(0, 3, 1, 2).reshape(N * kw, C * kh)  # K'[n*kw + w, c*kh + h] = K[n, c, h, w]


def _two_pass(x, K1, K2, pad):
    z = T.conv2d(x, K1, pad=(pad, 0))
    return T.conv2d(z, K2, pad=(0, pad))


#: section 4.1's assignment as printed: U sqrt(S) -> K1 (r, C, H, 1), sqrt(S) V^T -> K2 (N, r, 1, W)
CONV_K1_PRINTED = "reshape(U @ sqrt(S), (r, C, H, 1))"
CONV_K2_PRINTED = "reshape(sqrt(S) @ V.T, (N, r, 1, Wd))"


def _conv_build_printed(U, s, Vt, N, C, k):
    """The printed assignment in numbers (evaluable where N kw == C kh): K1 from U sqrt(S), K2 from sqrt(S) V^T."""
    r = len(s)
    K1 = (U * np.sqrt(s)).T.reshape(r, C, k, 1)
    K2 = (np.sqrt(s)[:, None] * Vt).reshape(r, N, k).transpose(1, 0, 2).reshape(N, r, 1, k)
    return K1, K2


def _conv_build_swapped(U, s, Vt, N, C, k):
    """The swapped assignment (the engine's): K1 (r, C, kh, 1) from sqrt(S) V^T, K2 (N, r, 1, kw) from U sqrt(S)."""
    r = len(s)
    K1 = (np.sqrt(s)[:, None] * Vt).reshape(r, C, k, 1)
    K2 = (U * np.sqrt(s)).reshape(N, k, r).transpose(0, 2, 1).reshape(N, r, 1, k)
    return K1, K2


def _v_conv(ev):
    if ev["printed_reshapes_defined"] < 2:
        return SHAPE
    # defined, so a claim: the two convolutions compute the layer
    return HOLDS if ev["printed_rel_err_where_defined"] <= ROUND_RTOL else UNJ


@item(
    "conv-svd",
    "4.1",
    [],
    "K (N,C,H,W) -> K' (NW x CH) = U S V^T; U sqrt(S) -> K1 (r,C,H,1), "
    "sqrt(S) V^T -> K2 (N,r,1,W); two consecutive convolutions",
    "nn/svd_layers.py SVDConv2d: K1 from V^T (r,C,kh,1), K2 from U diag(s) (N,r,1,kw) (the swapped assignment)",
    "none (the printed assignment is not evaluable)",
    judge=_v_conv,
)
def _conv(ctx, k1_expr=CONV_K1_PRINTED, k2_expr=CONV_K2_PRINTED, build=_conv_build_printed):
    """``k1_expr``, ``k2_expr``: the assignment's reshapes (shape reading); ``build(U, s, Vt, N, C, k) -> (K1, K2)``:
    the same assignment in numbers."""
    c = CONFIGS[3]
    N, C, H, W, r = c["N"], c["C"], c["kh"], c["kw"], c["r"]
    sh = {"U": (N * W, r), "S": (r, r), "V": (C * H, r), "r": r, "N": N, "C": C, "H": H, "Wd": W}
    lit1 = shape_check(k1_expr, sh)
    lit2 = shape_check(k2_expr, sh)
    sw1 = shape_check("reshape(sqrt(S) @ V.T, (r, C, H, 1))", sh)
    sw2 = shape_check("reshape(U @ sqrt(S), (N, r, 1, Wd))", sh)
    rng = ctx.rng("conv-svd")
    # swapped assignment on a small kernel: must reproduce the dense convolution
    Nn, Cc, k, pad = 3, 2, 3, 1
    K = rng.standard_normal((Nn, Cc, k, k))
    x = rng.standard_normal((2, Cc, 6, 6))
    U, s, Vt = np.linalg.svd(_kmat(K), full_matrices=False)
    K1, K2 = _conv_build_swapped(U, s, Vt, Nn, Cc, k)
    dense = T.conv2d(x, K, pad=(pad, pad))
    err_sw = rel_error(_two_pass(x, K1, K2, pad), dense)
    # the assignment under test where the printed one is evaluable (N W == C H): N = C = 2, square kernel
    Ne = 2
    K = rng.standard_normal((Ne, Ne, k, k))
    U, s, Vt = np.linalg.svd(_kmat(K), full_matrices=False)
    K1l, K2l = build(U, s, Vt, Ne, Ne, k)
    err_lit = rel_error(_two_pass(x, K1l, K2l, pad), T.conv2d(x, K, pad=(pad, pad)))
    # the engine's SVDConv2d
    from ...nn.layers import Conv2d
    from ...nn.svd_layers import SVDConv2d

    conv = Conv2d(Cc, Nn, k, padding=pad, xp=np, dtype=np.float64, rng=rng)
    sconv = SVDConv2d.from_dense(conv)
    err_eng = rel_error(sconv.forward(x)[0], conv.forward(x)[0])
    rows = [
        f"| under test: `{k1_expr}` -> K1 | {'yes' if lit1.defined else 'NO'} | "
        f"{lit1.shape if lit1.defined else lit1.first_failure()} |",
        f"| under test: `{k2_expr}` -> K2 | {'yes' if lit2.defined else 'NO'} | "
        f"{lit2.shape if lit2.defined else lit2.first_failure()} |",
        f"| swapped: sqrt(S) V^T -> K1 | {'yes' if sw1.defined else 'NO'} | {sw1.shape} |",
        f"| swapped: U sqrt(S) -> K2 | {'yes' if sw2.defined else 'NO'} | {sw2.shape} |",
    ]
    ev = _ev(
        printed_reshapes_defined=int(lit1.defined) + int(lit2.defined),
        swapped_reshapes_defined=int(sw1.defined) + int(sw2.defined),
        swapped_rel_err=err_sw,
        printed_rel_err_where_defined=err_lit,
        engine_rel_err=err_eng,
    )
    v = _v_conv(ev)
    fails = "; ".join(
        f"`{e}`: {res.first_failure()}" for e, res in ((k1_expr, lit1), (k2_expr, lit2)) if not res.defined
    )
    text = (
        f"On the SmallConv layer (N={N}, C={C}, {H}x{W}: K' is {N * W} x {C * H}, r = {r}) "
        f"{ev['printed_reshapes_defined']} of the 2 reshapes of the assignment under test are defined"
        + (f" ({fails}): the printed reshape is undefined unless N W = C H" if fails else "")
        + f".  Where it is evaluable (N = C = {Ne}, {k}x{k} kernel) the two convolutions it builds differ from "
        f"the dense convolution by a relative error of {ev['printed_rel_err_where_defined']:.4g} (rounding: "
        f"<= {ROUND_RTOL:g}); the swapped assignment (V side -> the height kernel K1, U side -> the width "
        f"kernel K2) reproduces it to {ev['swapped_rel_err']:.1e}, and so does the engine "
        f"({ev['engine_rel_err']:.1e})."
    )
    return Outcome(
        v,
        text,
        ev,
        "printed_rel_err_where_defined",
        ["| reading | defined | first failing operation / shape |", "| --- | --- | --- |", *rows, ""],
    )
