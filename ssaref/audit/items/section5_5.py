"""Audit items of the paper's section 5.5."""

from __future__ import annotations


import numpy as np

from .. import transcribe as T
from .core import AMB, ANGLE_TOL_DEG, HOLDS, Outcome, SHAPE, _ev, _shape_rows, _table, _where, item


# ---------------------------------------------------------------------------------------------------
# section 5.5
# ---------------------------------------------------------------------------------------------------
#: section 5.5's matrix alignment angle as printed: column spaces of W_i^T and B_i
MATRIX_ANGLE_PRINTED = "colspace_angle(W.T, B)"


def _v_matrix_angle(ev):
    if ev["configs_defined"] < ev["configs"]:
        return SHAPE
    # defined everywhere, but an angle that is zero whatever B is measures nothing
    return AMB if ev["max_principal_angle_square_layer_deg"] <= ANGLE_TOL_DEG else HOLDS


@item(
    "matrix-angle",
    "5.5",
    [],
    "matrix alignment angle = the angle between the column spaces of W^T and B",
    "metrics.matrix_alignment: DFA/DRTP's B_i against (W_N ... W_{i+1})^T (docs/decisions.md D3); for SSA the "
    "same comparison with each W rebuilt from its factors, U diag(s) V^T (D4; evidence "
    "engine_ssa_matrix_alignment_entries)",
    "none",
    judge=_v_matrix_angle,
)
def _matrix_angle(ctx, expr=MATRIX_ANGLE_PRINTED, compare=lambda W, Wabove: W.T):
    """``expr``: the comparison (shape reading; ``Wabove`` is W_N ... W_{i+1}, d_N x d_i); ``compare(W, Wabove)``:
    the matrix whose column space is compared with B's."""
    ok, tot, rows, first = _shape_rows(expr, "feedback")
    from ...metrics import principal_angles_deg

    rng = ctx.rng("matrix-angle")
    W = rng.standard_normal((32, 32))
    Bm = T.unit_col(rng, (32, 10))
    Wabove = rng.standard_normal((10, 32))
    triv = float(np.max(principal_angles_deg(compare(W, Wabove), Bm)))
    from ...metrics import matrix_alignment
    from ...nn import build_model
    from ...run import build_run
    from ..dynamics import IN_SHAPE, MLP_HIDDEN

    model = build_model("mlp", IN_SHAPE, 10, dtype=np.float64, seed=ctx.seed, hidden=MLP_HIDDEN)
    run = build_run(model, "ssa", np.random.default_rng(ctx.seed + 2), options={"angle_every": 0}, optimizer=None)
    n_eng = len(matrix_alignment(run.rule, run.model))
    ev = _ev(
        configs_defined=ok,
        configs=tot,
        max_principal_angle_square_layer_deg=triv,
        engine_ssa_matrix_alignment_entries=n_eng,
    )
    v = _v_matrix_angle(ev)
    e = ev
    text = (
        f"`{expr}` is defined on {e['configs_defined']} of {e['configs']} layers with a B_i{_where(first)}"
        + (
            ": col(W_i^T) lies in R^{d_{i-1}}, col(B_i) in R^{d_i}, so the angle is undefined unless d_{i-1} = d_i"
            if e["configs_defined"] < e["configs"]
            else ""
        )
        + f".  On a square 32 x 32 layer with a random 32 x 10 B the largest principal angle is "
        f"{e['max_principal_angle_square_layer_deg']:.3g} degrees"
        + (
            ": W^T has full rank, its column space is the whole space and every principal angle is 0 whatever B "
            "is, so the measure carries no information"
            if e["max_principal_angle_square_layer_deg"] <= ANGLE_TOL_DEG
            else ""
        )
        + f".  The engine's SSA matrix alignment has {e['engine_ssa_matrix_alignment_entries']} entries."
    )
    return Outcome(v, text, ev, "configs_defined", _table("angle(col W^T, col B)", expr, rows))
