"""The audit's common ground: verdicts, the thresholds every verdict uses, the paper's configurations, the
``Item`` record and its registry (``item``, ``get_items``), and the helpers the sections share."""

from __future__ import annotations


import zlib
from typing import Any
from dataclasses import dataclass, field

import numpy as np

from ...atomic import atomic_path
from .. import transcribe as T
from ..checks import shape_check


HOLDS, SHAPE, WRONG, UNJ, AMB = "holds", "shape error", "wrong gradient", "unjustified claim", "ambiguous"
VERDICTS = (HOLDS, SHAPE, WRONG, UNJ, AMB)

# ---------------------------------------------------------------------------------------------------
# verdict thresholds: stated once, used by every item's ``_v_<item>`` function
# ---------------------------------------------------------------------------------------------------
#: a claimed gradient matches the float64 central finite differences of the loss it claims to differentiate when
#: its relative error is at most this (an exact gradient agrees to ~1e-9; a wrong factor or term is off by > 1e-2)
GRAD_RTOL = 1e-6
#: two computations of one quantity agree to rounding (a reconstruction, a forward pass, a quantity that should
#: vanish: a projection, an off-diagonal share, a drift off the manifold) when they differ by at most this
ROUND_RTOL = 1e-9
#: two angles agree, or an angle is zero, within this many degrees
ANGLE_TOL_DEG = 1e-6
#: slack on the eigenvalues of a finite-difference Hessian (differences of an exact gradient, step 1e-5)
HESS_TOL = 1e-6
#: slack on a bound evaluated in closed form (a few float64 operations of rounding)
EXACT_TOL = 1e-12
#: a claim checked on seeded random draws (or on the steps of a training run) is refuted when it fails in more
#: than this share of them: a noticeable share, not a boundary case decided by rounding
CLAIM_FAIL_RATE = 0.01
#: a direction is the gradient it stands for (or two signals match) when their cosine is at least this
COS_AGREE = 0.99
#: after training, ||U^T U - I||_F or ||V^T V - I||_F above this means orthogonality was not preserved
ORTHO_TOL = 1e-6
#: a factor is frozen when its median applied change per step is below this fraction of the engine default's
FROZEN_RATIO = 1e-3

THRESHOLDS = {
    "GRAD_RTOL": (
        GRAD_RTOL,
        "largest relative error of a claimed gradient vs finite differences that counts as a match",
    ),
    "ROUND_RTOL": (ROUND_RTOL, "largest relative difference that counts as agreement to rounding (or as zero)"),
    "ANGLE_TOL_DEG": (ANGLE_TOL_DEG, "angles (degrees) this close are equal; an angle this small is zero"),
    "HESS_TOL": (HESS_TOL, "eigenvalue slack of finite-difference Hessians"),
    "EXACT_TOL": (EXACT_TOL, "slack of a bound evaluated in closed form"),
    "CLAIM_FAIL_RATE": (
        CLAIM_FAIL_RATE,
        "a claim failing in more than this share of seeded draws (or training steps) is refuted",
    ),
    "COS_AGREE": (COS_AGREE, "smallest cosine at which a direction is the gradient it stands for"),
    "ORTHO_TOL": (ORTHO_TOL, "largest ||U^T U - I||, ||V^T V - I|| after training that counts as orthogonal"),
    "FROZEN_RATIO": (
        FROZEN_RATIO,
        "a factor whose median change per step is below this fraction of the default's is frozen",
    ),
}

D_N = 10  # CIFAR-10 classes

#: the paper's configurations: the 3-layer MLP of Figures 2/4 on CIFAR-10-shaped input (hidden widths 256, 256,
#: docs/decisions.md D1) and the second SmallConv layer (conv96 -> conv192, 3x3, on 16x16 maps, pooled to 8x8).
#: ``m, n``: rows of U and of V (K' = NW x CH for the conv layer); ``d_i``: size of the layer's DFA injection
#: point (None for the output layer, which receives e).
CONFIGS: list[dict[str, Any]] = [
    {"name": "mlp.W1 3072->256", "m": 256, "n": 3072, "d_i": 256, "kind": "linear"},
    {"name": "mlp.W2 256->256", "m": 256, "n": 256, "d_i": 256, "kind": "linear"},
    {"name": "mlp.W3 256->10 (output)", "m": 10, "n": 256, "d_i": None, "kind": "linear"},
    {
        "name": "smallconv.conv2 96->192 3x3 (K' 576x288)",
        "m": 576,
        "n": 288,
        "d_i": 192 * 8 * 8,
        "kind": "conv",
        "N": 192,
        "C": 96,
        "kh": 3,
        "kw": 3,
    },
]
for _c in CONFIGS:
    _c["r"] = min(_c["m"], _c["n"])
#: the paper's MLP widths d_0 -> d_1 -> d_2 -> d_3 (3072 -> 256 -> 256 -> 10)
MLP_DIMS = [CONFIGS[0]["n"]] + [c["m"] for c in CONFIGS[:3]]


@dataclass
class Outcome:
    verdict: str
    explanation: str
    evidence: dict
    key: str  # name of the key figure in ``evidence``
    details: list = field(default_factory=list)  # markdown lines
    figures: list = field(default_factory=list)  # file names written next to report.md


@dataclass
class Item:
    id: str
    section: str
    equations: list
    statement: str
    engine_default: str
    literal_option: str
    run: object = None
    judge: object = None  # evidence dict -> verdict (the item's ``_v_<item>``)


class Context:
    """What an item may use: the base seed, the output folder for figures (None: no figures), the array
    module for engine runs, and a cache of engine runs shared between items."""

    def __init__(self, seed=0, out=None, xp=np):
        self.seed, self.out, self.xp = int(seed), out, xp
        self._cache = {}

    def rng(self, item_id, sub=0):
        return np.random.default_rng([self.seed, zlib.crc32(item_id.encode()), sub])

    def cached(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def figure(self, name, draw):
        """Draw with ``draw(fig)`` and save ``out/name`` (Agg backend); returns the name, or None without out."""
        if self.out is None:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(7, 4))
        draw(fig)
        fig.tight_layout()
        try:
            with atomic_path(self.out / name) as tmp:  # written aside, then renamed: never a half-written figure
                fig.savefig(tmp, dpi=90, format="png")
        finally:
            plt.close(fig)
        return name


ITEMS: list = []


def item(id, section, equations, statement, engine_default, literal_option, judge):
    """Register ``fn(ctx, **transcriptions) -> Outcome``; ``judge(evidence) -> verdict`` is the function its
    verdict is derived with."""

    def deco(fn):
        ITEMS.append(Item(id, section, list(equations), statement, engine_default, literal_option, fn, judge))
        return fn

    return deco


def get_items(ids=None):
    """Items in registry order; ``ids`` restricts them (ValueError naming the bad id and the valid ones)."""
    if not ids:
        return list(ITEMS)
    known = {it.id: it for it in ITEMS}
    bad = [i for i in ids if i not in known]
    if bad:
        raise ValueError(f"unknown audit item(s) {', '.join(bad)}; valid ids: {', '.join(known)}")
    return [known[i] for i in dict.fromkeys(ids)]


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _shapes(cfg, targets="feedback"):
    """Shapes of every symbol at a configuration.  ``targets="feedback"``: B_i (d_i x d_N), its best rank-k
    factors (k = min(r, d_i, d_N)) and the downstream product W_N ... W_{i+1} (d_N x d_i) as ``Wabove``;
    ``"layer"``: feedback of the layer's own shape (m x n) and rank-r factors."""
    m, n, r = cfg["m"], cfg["n"], cfg["r"]
    sh = {
        "U": (m, r),
        "S": (r, r),
        "s": (r, 1),
        "V": (n, r),
        "Vt": (r, n),
        "G": (m, n),
        "W": (m, n),
        "m": m,
        "n": n,
        "r": r,
        "beta": 1,
        "gamma": 1,
        "eta": 1,
    }
    if targets == "layer":
        sh.update(B=(m, n), BU=(m, r), BS=(r, r), BVt=(r, n))
    elif cfg["d_i"] is not None:
        di = cfg["d_i"]
        k = min(r, di, D_N)
        sh.update(B=(di, D_N), BU=(di, k), BS=(k, k), BVt=(k, D_N), Wabove=(D_N, di))
    return sh


def _shape_rows(expr, targets="feedback", cfgs=None, skip_output=True):
    """Run ``shape_check(expr)`` on every configuration; returns (n_defined, n_checked, markdown rows, first
    failure as "configuration: operation: why", "" when every configuration is defined)."""
    rows, ok, tot, first = [], 0, 0, ""
    for cfg in cfgs or CONFIGS:
        if targets == "feedback" and cfg["d_i"] is None and skip_output and "B" in expr:
            rows.append(f"| {cfg['name']} | n/a | the output layer has no B_N in the paper (it receives e) |")
            continue
        res = shape_check(expr, _shapes(cfg, targets))
        tot += 1
        ok += res.defined
        if not res.defined and not first:
            first = f"{cfg['name']}: {res.first_failure()}"
        rows.append(
            f"| {cfg['name']} | {'yes' if res.defined else 'NO'} | "
            f"{res.shape if res.defined else res.first_failure()} |"
        )
    return ok, tot, rows, first


def _table(title, expr, rows):
    return [
        f"**{title}**: `{expr}`",
        "",
        "| configuration | defined | result shape / first failing operation |",
        "| --- | --- | --- |",
        *rows,
        "",
    ]


def _ev(**kw):
    return dict(kw)


def _defined(ok, tot, then=HOLDS):
    """The verdict of a shape reading: every configuration defined -> ``then``, else shape error."""
    return then if ok == tot else SHAPE


def _matches(*rel_errs):
    """Every claimed gradient matches its finite differences (relative error <= GRAD_RTOL)."""
    return all(e <= GRAD_RTOL for e in rel_errs)


def _refuted(*fail_rates):
    """Some claim fails in a noticeable share of its draws (> CLAIM_FAIL_RATE)."""
    return any(r > CLAIM_FAIL_RATE for r in fail_rates)


def _where(first):
    return f" (first failure: {first})" if first else ""


def _single_layer_case(rng, m=4, n=5, r=3, B=6, off=0.05):
    U, s, V = T.generic_factors(rng, m, n, r, off=off)
    X = rng.standard_normal((B, n))
    y = rng.integers(0, m, B)
    tg = {"BU": rng.standard_normal((m, r)), "Bs": rng.standard_normal(r), "BV": rng.standard_normal((n, r))}
    return U, s, V, X, y, tg


def _LL(U, s, V, X, y, tg, alpha, beta, gamma):
    """Eq. (6) for one linear classifier layer: alpha CE + beta L_align (eq. (8)) + gamma L_ortho (eq. (9))."""
    W = (U * s) @ V.T
    r = len(s)
    align = np.sum((U - tg["BU"]) ** 2) + np.sum((s - tg["Bs"]) ** 2) + np.sum((V - tg["BV"]) ** 2)
    ortho = np.sum((U.T @ U - np.eye(r)) ** 2) + np.sum((V.T @ V - np.eye(r)) ** 2)
    return alpha * T.linear_ce(W, X, y) + beta * align + gamma * ortho
