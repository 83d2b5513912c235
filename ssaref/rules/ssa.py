"""SVD-Space Alignment (SSA), paper sections 4 and 5.

Every ``Linear`` / ``Conv2d`` of the model becomes an SVD-space layer (``ssaref.nn.svd_layers``, eq. (5))
initialised at full rank from the dense layer's SVD.  Each layer ``i`` minimises the local loss (eq. (6))

    LL_i = alpha L_CE + beta L_align + gamma L_ortho (+ hoyer * ||s||_1/||s||_2 while the rank schedule asks)

* task term (eq. (7)): the DFA signal.  The output layer gets ``e = dL/da_N``; every hidden segment (an SVD
  layer and the activation / BatchNorm / pool / flatten layers up to the next weight layer, as in
  ``rules/dfa.py``) gets ``B_i e`` at its output, carried back through the segment's own layers (eq. (3)).
  Its gradients w.r.t. ``U, s, V, b`` are the layer's true gradients for that signal;
* alignment (eq. (8)): ``||U - T_U||^2 + ||s - T_s||^2 + ||V - T_V||^2`` against targets from the truncated
  randomized SVD of a fixed feedback matrix (``align_target`` says which matrix and which factors, below);
* orthogonality (eq. (9)): ``||U^T U - I||^2 + ||V^T V - I||^2``, gradient ``4 U (U^T U - I)`` etc.

Variants (``ssa_variant``):

``default``
    Euclidean gradients of ``LL_i`` (``dU = alpha G V S + 2 beta (U - T_U)`` ...) -- the task part is the true
    gradient of the local surrogate, *not* the printed ``G V S^-1`` -- projected onto the tangent space of the
    Stiefel manifold, ``P_U(X) = X - U sym(U^T X)``; the orthogonality gradient is added *after* the projection
    (the tangent projection annihilates it to first order, so projecting it would switch it off); by default
    (``orthogonality penalty``, section 5.2's own handling) nothing else holds ``U``, ``V`` near the manifold: no
    retraction.  ``orthogonality retract`` retracts them after every optimiser step (polar factor; with the
    tangent projection this is Riemannian gradient descent, Absil et al. 2008, for SGD), ``retract-every`` after
    every ``retract_every`` (10) steps.  Defaults (chosen on validation splits): ``gamma`` 0.1 and ``rank_reading
    none`` (D4.15, the MLP); ``parity`` true (D4.17, since 0.3.0: section 4.4's ``r < mn/(m+n)`` caps every
    layer's rank at every epoch end, the classifier included; ``parity false`` is the uncompressed reading); and
    (D4.18, since 0.4.0, re-selected under that constraint on LeNet) ``beta`` 0.001 and ``orthogonality
    penalty`` (0.2.0-0.3.x: ``beta`` 0.01, ``orthogonality retract-every``).
``paper``
    Eqs. (11)-(13) as printed: ``ds = diag(U^T G V) + 2 beta (s - T_s)``;
    ``dU = (I - U U^T)[G V S^-1 + 2 beta (U - T_U) + 4 gamma U (U^T U - I)]``;
    ``dV^T = (I_r - V^T V)[S^-1 U^T G + 2 beta (V^T - T_V^T) + 4 gamma V^T (V V^T - I)]`` where the printed first
    term ``G^T U S^-1`` (n x r) is transposed to fit the r x n bracket (the nearest evaluable reading); no
    retraction (section 5.2 "avoids costly retractions").  ``alpha`` does not appear in eqs. (11)-(13) and has
    no effect in this variant.  Options left unset take the engine's defaults from before the study
    (``DEFAULTS_OF``: beta 0.001, gamma 0.01, orthogonality retract, rank_reading every, parity false), so
    this variant runs as it always did.

``G`` is ``dL_CE/dW`` for the task signal; ``G V`` and ``G^T U`` come from the layer without forming ``G``.

Where the projection happens: ``updates`` returns the projected direction; the optimiser (SGD or Adam) applies
its own transformation to it (momentum, Adam's per-entry scaling -- which leaves the tangent space); the
retraction, where there is one, then runs in ``after_step`` (right after the optimiser step): with ``orthogonality
retract`` after every step and again in ``on_epoch_end``, so every forward pass, evaluation and checkpoint sees
orthonormal ``U``, ``V``; with ``retract-every`` after every ``retract_every``-th step only, so the factors in
between (and at an epoch end) are near-orthonormal (``svd_drift_U/V`` logs how far they get); with the default
``penalty`` never (``svd_ortho_U/V`` logs the epoch-end ``||X^T X - I||_F``).

Orthogonality handling (``orthogonality``, docs/decisions.md D4.12, D4.18): ``penalty`` (the default since
D4.18: the tangent projection and eq. (9)'s penalty only, as section 5.2 has it; ``retraction`` must be auto or
none), ``retract`` (the above), ``retract-every`` (the default of 0.2.0-0.3.x, D4.15: the retraction after every
``retract_every``-th optimiser step only, none at the epoch end) or
``landing`` (Ablin & Peyre 2022; Gao et al. 2022 for the Stiefel manifold): the direction of ``U`` / ``V`` is
the landing field ``skew(G X^T) X + 4 gamma X (X^T X - I)`` (``projection`` auto -> ``relative``; ``G`` the
Euclidean gradient of the task and alignment terms; eq. (9)'s unprojected gradient as the normal term, i.e.
``lambda = 4 gamma``), no retraction, and ``after_step`` shrinks each realised step so that
``||X^T X - I||_F <= landing_eps`` (the step-size safeguard).  ``transport`` (D4.16, issue 21; with
``orthogonality retract`` or ``retract-every``): after every retraction the optimiser's first moment of ``U``,
``V`` is projected onto the tangent space at the retracted point; with ``retract`` this makes Adam the Riemannian
Adam of Becigneul & Ganea (2019) (per-entry second moments, as geoopt's).  ``align_last`` (D4.13) switches the
classifier's alignment target off.

Alignment targets (``align_target``): ``B_i`` is ``d_i x d_N`` (d_i = size of the segment's output), so its rank-k
factors are ``B_U`` (d_i x k), ``B_s`` (k), ``B_V`` (d_N x k) with ``k = min(d_i, d_N)``, while the layer has
``U`` (m x r), ``V`` (n x r), n = d_{i-1}.

* ``feedback``: ``B_i``'s factors.  ``U[:, :k] <- B_U`` and ``s[:k] <- B_s`` where ``d_i == m`` (Linear layers);
  ``V`` is never aligned (``B_V`` has d_N rows, ``V`` has n); conv layers (d_i = C H W != N kw) get none.
* ``weight``: a second fixed matrix of the layer's own shape (m x n, for a conv layer the kernel matrix
  N kw x C kh: "we form our feedback matrices to be of the same dimensions as our convolutional kernels"),
  column-normalised Gaussian, whose rank-r0 factors are targets for all of ``U``, ``s``, ``V``.
* ``auto`` (default): ``feedback`` where ``d_i == m``, ``weight`` elsewhere (conv layers).

The output layer's ``B_N`` (d_N x d_N) is drawn only as an alignment target; its task signal is ``e``.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import asnumpy, get_array_module
from ..linalg import (
    angle_deg,
    complement_project,
    gram,
    landing_step_fraction,
    orthogonality_error,
    orthogonality_errors,
    randomized_svd,
    relative_project,
    retract,
    tangent_project,
    worth_fewer_flops,
)
from .feedback import (
    Segment,
    check_choice,
    direct_updates,
    draw,
    layer_output_shapes,
    num_classes,
    place,
    segment_dim,
    segments,
)
from .base import AlignmentPair, FeedbackExport, Option, chain_updates
from .svd_rule import RANK_OPTIONS, SVDRule

__all__ = ["SSA"]


_VARIANTS = ("default", "paper")
_PROJECTIONS = ("auto", "tangent", "relative", "paper", "complement", "none")
_ORTHOGONALITY = ("penalty", "retract", "landing", "retract-every")  # D4.12, D4.18
_RETRACTIONS = ("auto", "polar", "qr", "none")
_TARGETS = ("auto", "feedback", "weight")
_YESNO = ("auto", "true", "false")


#: with ``orthogonality retract`` (a retraction after every step) ``svd_retract_jump`` is measured at every
#: JUMP_EVERY-th step of the epoch; ``retract-every`` measures each of its retractions (D4.7)
JUMP_EVERY = 10


class SSA(SVDRule):
    name = "ssa"
    SUMMARY = "SVD-space alignment, eqs. (5)-(13), rank schedule of section 4.4"
    ERROR_TRANSPORT = "direct"
    # paper-sgd1 starts one SGD step away from the exact SVD, where U^T U != I and eq. (9)'s term shows
    GOLDEN_VARIANTS = {
        "paper": ({"ssa_variant": "paper"}, 0),
        "paper-sgd1": ({"ssa_variant": "paper"}, 1),
        "sgd1": ({"retraction": "none"}, 1),
        "coef": ({"alpha": 0.5, "beta": 0.05, "gamma": 0.1, "hoyer": 0.05, "retraction": "none"}, 1),
        "paper-coef": (
            {"ssa_variant": "paper", "alpha": 0.5, "beta": 0.05, "gamma": 0.1, "hoyer": 0.05},
            1,
            {"warmup_options": {"alpha": 0.5, "beta": 0.05, "gamma": 0.1, "hoyer": 0.05, "retraction": "none"}},
        ),
        # the multi-step cases pin the per-step retraction (orthogonality retract); every2 pins retract-every's
        # schedule (a retraction after step 2 only)
        "momentum3": ({"orthogonality": "retract"}, 0, {"optimizer": "momentum", "steps": 3}),
        "adam3": ({"orthogonality": "retract"}, 0, {"optimizer": "adam", "steps": 3}),
        "every2": ({"orthogonality": "retract-every", "retract_every": 2}, 0, {"optimizer": "adam", "steps": 3}),
        # the paper variant over ten SGD-momentum steps (conv only: at the mlp's exact SVD its factors are frozen,
        # so a retraction there moves nothing; not Adam, which rescales the round-off-sized directions of the
        # frozen square factors to lr-sized steps that no other implementation reproduces): at its own defaults
        # (orthogonality retract, retraction auto -> none) it never retracts, not even after step 10 where
        # retract-every's default K would; with orthogonality retract-every (retraction auto -> polar) it
        # retracts after step 10 only
        "paper-momentum10": ({"ssa_variant": "paper"}, 0, {"optimizer": "momentum", "steps": 10, "models": ("conv",)}),
        "paper-every10": (
            {"ssa_variant": "paper", "orthogonality": "retract-every"},
            0,
            {"optimizer": "momentum", "steps": 10, "models": ("conv",)},
        ),
    }
    # D4.15: the defaults chosen by the study (validation/results/ssa_study.md, on validation accuracy); the paper
    # variant keeps the engine's earlier defaults (DEFAULTS_OF), so ``--ssa-variant paper`` runs as before
    OPTIONS = {
        "alpha": (float, 1.0, "weight of the task (DFA cross-entropy) term of the local loss, eq. (6)"),
        # D4.18 (0.4.0): beta 1e-3 and orthogonality penalty, chosen under the rank constraint on LeNet
        "beta": Option(
            float,
            1e-3,
            "weight of the alignment loss, eq. (8) (0.01 in 0.2.0-0.3.x; ssa_variant paper: 0.001)",
            before={"0.2.0": 1e-3, "0.4.0": 1e-2},
        ),
        **RANK_OPTIONS,
        "gamma": Option(
            float,
            1e-1,
            "weight of the orthogonality regulariser ||U^T U - I||^2 + ||V^T V - I||^2 (eq. (9)) "
            "(ssa_variant paper: 0.01)",
            before={"0.2.0": 1e-2},
        ),
        "rank_reading": Option(
            str,
            "none",
            RANK_OPTIONS["rank_reading"][2] + " (ssa_variant paper: every)",
            before={"0.2.0": "every"},
            added="0.2.0",
        ),
        # D4.17 (0.3.0): section 4.4's r < mn/(m+n) for every layer is part of the method, not a knob
        "parity": Option(
            bool,
            True,
            RANK_OPTIONS["parity"][2] + " (default true since 0.3.0, D4.17; ssa_variant paper: false; "
            "false is the uncompressed reading of 0.2.0)",
            before={"0.3.0": False},
        ),
        "ssa_variant": (
            str,
            "default",
            "default (sound gradients, tangent projection; orthogonality handling as chosen) or paper (eqs. "
            "(11)-(13) as printed)",
        ),
        "projection": (
            str,
            "auto",
            "U/V projection: tangent (X - U sym(U^T X)), relative (skew(G U^T) U, the landing field's "
            "relative gradient, Ablin & Peyre 2022), paper (as printed), complement "
            "((I - XX^T) X for U and V), none; auto: tangent (default), relative (orthogonality landing), "
            "paper (paper)",
        ),
        "project_ortho": (
            str,
            "auto",
            "project the orthogonality gradient too: true, false; auto: false (default), true (paper)",
        ),
        "retraction": (
            str,
            "auto",
            "after the optimiser step map U, V back to the Stiefel manifold: polar, qr, "
            "none; auto: polar with orthogonality retract or retract-every, none with orthogonality penalty "
            "(the default) or landing, and in the paper variant with orthogonality retract",
        ),
        # D4.12: section 5.2 "avoids costly retractions" and cites the landing method [1]; eq. (9) is a penalty
        "orthogonality": Option(
            str,
            "penalty",
            "orthogonality handling of U, V: penalty (the paper's, section 5.2: the tangent projection and eq. "
            "(9)'s penalty, no retraction; default since 0.4.0, D4.18), retract (retraction after every optimiser "
            "step), landing (the "
            "landing field of Ablin & Peyre 2022: relative gradient of the task and alignment terms plus eq. "
            "(9)'s unprojected penalty gradient 4 gamma X (X^T X - I), i.e. lambda = 4 gamma; no retraction; "
            "every step shrunk so that ||X^T X - I||_F stays <= landing_eps), retract-every (the retraction "
            "after every retract_every-th optimiser step only) (ssa_variant paper: retract)",
            before={"0.2.0": "retract", "0.4.0": "retract-every"},
            added="0.2.0",
        ),
        # D4.12: the retraction of section 5.2's "costly retractions", applied every K-th step only
        "retract_every": Option(
            int, 10, "with orthogonality retract-every: retract after every K-th optimiser step", added="0.2.0"
        ),
        # D4.16 (issue 21): with Adam and orthogonality retract, Riemannian Adam (Becigneul & Ganea 2019)
        "transport": (
            bool,
            False,
            "with orthogonality retract or retract-every: after every retraction project the optimiser's first "
            "moment of U, V (Adam's m, SGD's momentum buffer) onto the tangent space at the retracted point "
            "(vector transport); with Adam and orthogonality retract this is Riemannian Adam (Becigneul & Ganea "
            "2019, per-entry second moments as geoopt's)",
        ),
        # D4.12: the eps of Ablin & Peyre's safe step (their section 3; Stiefel form D4.12)
        "landing_eps": Option(
            float,
            0.5,
            "with orthogonality landing: the safeguard's bound eps on ||X^T X - I||_F (Ablin & Peyre 2022; in (0, 1))",
            added="0.2.0",
        ),
        # D4.13: the classifier's B_N (d_N x d_N) is defined nowhere in the paper
        "align_last": Option(
            bool,
            True,
            "give the output (classifier) layer an alignment target (the factors of a drawn d_N x d_N B_N, "
            "eq. (8)); false: the classifier has no alignment term",
            added="0.2.0",
        ),
        "align_target": (
            str,
            "auto",
            "alignment targets: feedback (factors of B_i where shapes fit), weight "
            "(layer-shaped feedback), auto (feedback for Linear, weight for conv)",
        ),
        "angle_every": (
            int,
            50,
            "every N steps log the eq. (4) angle between SSA's change of W and BP's gradient (0: off)",
        ),
        "rsvd_oversample": (int, 10, "randomized SVD oversampling (section 4.3)"),
        "rsvd_iters": (int, 4, "randomized SVD power iterations"),
    }

    # D4.15: with ssa_variant paper an option left unset takes the engine's defaults before the study (0.2.0) and
    # before the rank constraint became the default (0.3.0, D4.17): those of 0.1.0 (beta 0.001, gamma 0.01,
    # orthogonality retract, rank_reading every, parity false; the history declared with each Option above)
    DEFAULTS_OF = {("ssa_variant", "paper"): "0.1.0"}

    def __init__(self, **options):
        super().__init__(**options)
        # orthogonality handling of U, V (D4.12), set below from the options: "retract" (after every optimiser
        # step, with ``retraction``), "retract-every" (every ``retract_every`` optimiser steps) or "landing" (no
        # retraction, the landing safeguard of ``landing_eps`` on every step)
        self._prev: dict = {}  # landing: (prefix, name) -> the factor before the optimiser step
        self._opt_steps = 0  # retract-every: optimiser steps of the run (host copy of "meta/step")
        o = self.options
        check_choice(self.name, "ssa_variant", o["ssa_variant"], _VARIANTS)
        check_choice(self.name, "projection", o["projection"], _PROJECTIONS)
        check_choice(self.name, "project_ortho", str(o["project_ortho"]).lower(), _YESNO)
        check_choice(self.name, "retraction", o["retraction"], _RETRACTIONS)
        check_choice(self.name, "align_target", o["align_target"], _TARGETS)
        check_choice(self.name, "orthogonality", o["orthogonality"], _ORTHOGONALITY)
        if o["retract_every"] < 1:
            raise ValueError(f"method {self.name!r}: option retract_every={o['retract_every']} must be >= 1")
        if o["retract_every"] != self.OPTIONS["retract_every"][1] and o["orthogonality"] != "retract-every":
            raise ValueError(
                f"method {self.name!r}: option retract_every={o['retract_every']} has no effect with "
                f"orthogonality={o['orthogonality']} (it sets the period of orthogonality retract-every)"
            )
        if not 0.0 < o["landing_eps"] < 1.0:
            raise ValueError(f"method {self.name!r}: option landing_eps={o['landing_eps']!r} must be in (0, 1)")
        for k in ("alpha", "beta"):
            if not (o[k] >= 0.0 and math.isfinite(o[k])):
                raise ValueError(f"method {self.name!r}: option {k}={o[k]!r} must be a finite number >= 0")
        if o["angle_every"] < 0:
            raise ValueError(f"method {self.name!r}: option angle_every={o['angle_every']} must be >= 0")
        paper = o["ssa_variant"] == "paper"
        self.orthogonality = o["orthogonality"]
        self.retract_every = int(o["retract_every"])
        self.landing_eps = float(o["landing_eps"])
        landing = self.orthogonality == "landing"
        unretracted = landing or self.orthogonality == "penalty"  # no retraction by definition
        if unretracted and o["retraction"] not in ("auto", "none"):
            raise ValueError(
                f"method {self.name!r}: orthogonality={self.orthogonality} does no retraction; "
                f"retraction={o['retraction']!r} contradicts it (use orthogonality retract or retract-every)"
            )
        # the resolved choices (``auto`` -> the variant's own); golden vectors record them (resolved_options)
        auto_proj = "paper" if paper else ("relative" if landing else "tangent")
        self.projection = o["projection"] if o["projection"] != "auto" else auto_proj
        po = str(o["project_ortho"]).lower()
        self.project_ortho = (po == "true") if po != "auto" else paper
        if o["retraction"] != "auto":
            self.retraction = o["retraction"]
        else:  # the paper variant has no retraction (eq. (9) is a soft penalty) unless retract-every asks for one
            self.retraction = "none" if unretracted or (paper and self.orthogonality == "retract") else "polar"
        self.transport = bool(o["transport"])
        if self.transport and (self.orthogonality not in ("retract", "retract-every") or self.retraction == "none"):
            raise ValueError(
                f"method {self.name!r}: transport=true transports the momentum after every retraction; it needs "
                f"orthogonality retract or retract-every with a retraction (got orthogonality={self.orthogonality!r}, "
                f"retraction={self.retraction!r})"
            )
        self.segments: list[Segment] = []  # hidden segments (``feedback.segments``), found at init_state
        self.shapes = None  # per-example output shape of every top-level layer

    # -- feedback and targets ----------------------------------------------------------------------
    def init_state(self, model, rng):
        """Draw ``B_i`` (d_i, d_N), unit-norm columns (section 4.3), per hidden segment ("B/<lead>"), and the
        alignment targets "TU/<p>" (m, r), "Ts/<p>" (r,), "TV/<p>" (n, r) with masks "mU/<p>", "mV/<p>" (r,)."""
        layers = self._layers(model)
        self.segments = segments(model, self.name)  # one segment per hidden top-level weight layer (or block)
        self.shapes = layer_output_shapes(model)
        K = num_classes(model)
        self.state = {}
        self._init_meta(model)
        dims = {}
        for seg in self.segments:
            d = segment_dim(seg, self.shapes)
            dims[seg.key] = d
            self.state[f"B/{seg.key}"] = place(model, draw(rng, (d, K), "unit_col"))
        last = str(len(model.layers) - 1)
        dims[last] = K
        if self.paper and any("." in p for p, _ in layers):
            raise ValueError(
                f"method {self.name!r}: ssa_variant=paper needs per-layer error signals, so it "
                f"supports models without residual blocks only"
            )
        o = self.options
        for p, layer in layers:
            m, n = layer.dims
            r = layer.rank
            mode = o["align_target"]
            d = dims.get(p)
            if mode == "auto":
                mode = "feedback" if d == m else "weight"
            TU = np.zeros((m, r))
            Ts = np.zeros(r)
            TV = np.zeros((n, r))
            mU = np.zeros(r)
            mV = np.zeros(r)
            if mode == "feedback" and d == m:
                Bh = asnumpy(self.state[f"B/{p}"]) if p != last else draw(rng, (K, K), "unit_col")
                k = min(r, Bh.shape[1])
                bu, bs, _ = randomized_svd(
                    np.asarray(Bh, dtype=np.float64),
                    k,
                    rng=rng,
                    oversample=o["rsvd_oversample"],
                    n_iter=o["rsvd_iters"],
                )
                TU[:, :k], Ts[:k], mU[:k] = bu, bs, 1.0  # V: B_V has d_N rows, V has n -- no target
            elif mode == "weight":
                Bw = draw(rng, (m, n), "unit_col")
                bu, bs, bv = randomized_svd(Bw, r, rng=rng, oversample=o["rsvd_oversample"], n_iter=o["rsvd_iters"])
                TU[:], Ts[:], TV[:], mU[:], mV[:] = bu, bs, bv, 1.0, 1.0
            if p == last and not o["align_last"]:  # D4.13: no alignment target for the classifier (drawn all
                TU[:], Ts[:], TV[:], mU[:], mV[:] = 0.0, 0.0, 0.0, 0.0, 0.0  # the same, so rng stays in step)
            for key, arr in (("TU", TU), ("Ts", Ts), ("TV", TV), ("mU", mU), ("mV", mV)):
                self.state[f"{key}/{p}"] = place(model, arr)
            self._note_zero_masks({f"mU/{p}": mU, f"mV/{p}": mV})

    @property
    def paper(self):
        return self.options["ssa_variant"] == "paper"

    def _state_slices(self, prefix, keep):
        return {f"TU/{prefix}": 1, f"Ts/{prefix}": 0, f"TV/{prefix}": 1, f"mU/{prefix}": 0, f"mV/{prefix}": 0}

    # -- update directions --------------------------------------------------------------------------
    def _project(self, X, G, which):
        proj = self.projection
        if proj == "tangent":
            return tangent_project(X, G)
        if proj == "relative":
            return relative_project(X, G)  # skew(G X^T) X: the landing field's first term (Ablin & Peyre 2022)
        if proj == "complement" or (proj == "paper" and which == "U"):
            return complement_project(X, G)  # (I - X X^T) G, eq. (12) / section 5.2
        if proj == "paper":  # V as printed in eq. (13): (I_r - V^T V) on V^T
            xp = get_array_module(X)
            M = -gram(X)
            M[xp.diag_indices(M.shape[0])] += 1.0
            return G @ M  # dV = [(I_r - V^T V) dV^T]^T = dV (I_r - V^T V)
        return G

    def _tangent_plus_ortho(self, X, G, XtG=None):
        """``P_X(G) + 4 gamma X (X^T X - I)`` (``linalg.tangent_project`` plus the gradient of eq. (9) times
        gamma) in the form ``G - X (sym(X^T G) - 4 gamma (X^T X - I))``: the two terms share one product with
        ``X``, so three (m, r, r) GEMMs instead of four (the same sums up to rounding), the Gram ``X^T X`` a
        symmetric rank-k update (``linalg.gram``).  ``XtG``: ``X^T G`` when the caller has it cheaper
        (``_batch_VtG``)."""
        xp = get_array_module(X)
        M = gram(X)
        M[xp.diag_indices(M.shape[0])] -= 1.0  # X^T X - I
        K = X.T @ G if XtG is None else XtG
        K = K + K.T  # 2 sym(X^T G)
        K -= (8.0 * self.options["gamma"]) * M  # 2 (sym(X^T G) - 4 gamma (X^T X - I))
        K *= -0.5  # on the (r, r) factor: one (m, r) pass instead of two (a power of two: the same bits)
        out = X @ K
        out += G
        return out  # G - 0.5 X K

    def _batch_VtG(self, p, layer, dy, cache):
        """``V^T g_V`` for the tangent step of eq. (9)/(10) from the batch (or None where that is not cheaper): with
        ``g_V = alpha x^T dz`` (eq. (13)'s task gradient of ``V``, ``dz = dy U S`` the gradient at the forward's
        ``z = x V``) and no alignment term on ``V`` (mask ``mV`` all zero, or beta = 0),
        ``V^T g_V = alpha (x V)^T dz = alpha z^T dz``: ``B m r + B r^2`` multiply-adds (``dy U``, ``z^T dz``)
        instead of ``n r^2``, chosen by shape (an SVDLinear whose ``B (m + r) < n r``, e.g. mlp's first layer, the
        classifier input of SmallConv).  The same sums as ``V^T g_V`` in another order (round-off)."""
        if (
            dy is None
            or cache is None
            or not self.takes_VtG_from_batch(p, layer, int(dy.shape[0]), get_array_module(dy))
        ):
            return None
        P = layer.params
        dz = (dy @ P["U"]) * P["s"]  # (B, r): the gradient at z = x V (SVDLinear.backward's dz)
        K = cache[1].T @ dz
        a = self.options["alpha"]
        if a != 1.0:
            K *= a
        return K

    def takes_VtG_from_batch(self, p, layer, B, xp=np):
        """Whether the step takes ``V^T g_V`` of layer ``p`` from the batch (``_batch_VtG``) at batch size ``B`` on
        array module ``xp``: an SVDLinear where that is fewer multiply-adds (``B (m + r) r < n r^2``, worth its two
        launches on a device) and ``V`` has no alignment term.  The one place of this choice (the bench's cost
        model asks it too)."""
        if layer.kind != "svd_linear":
            return False
        (m, n), r = layer.dims, layer.rank
        return worth_fewer_flops(xp, n * r * r - B * (m + r) * r, launches=2) and not (
            self.options["beta"] != 0 and self._has_target(p, "V")
        )

    def _has_target(self, p, name):
        """Whether the alignment mask ``m<name>/<p>`` may have a non-zero entry, without a host read: False for a
        mask array known to be all zero where it was made on the host (``_note_zero_masks``: ``init_state``,
        ``load_state_dict``, a rank cut of such a mask), a NumPy mask is looked at, any other device array counts as
        a target (the direct product, always right)."""
        arr = self.state[f"m{name}/{p}"]
        if arr is self.__dict__.get("_zero_masks", {}).get((p, name)):
            return False
        if get_array_module(arr) is np:
            return bool(arr.any())
        return True

    def _note_zero_masks(self, host):
        """Remember which mask arrays of ``self.state`` are all zero, from their host copies ``host`` (key ->
        array)."""
        zm = self.__dict__.setdefault("_zero_masks", {})
        for key, a in host.items():
            if key.startswith(("mU/", "mV/")) and key in self.state:
                p, name = key[3:], key[1]
                if not np.any(np.asarray(asnumpy(a)) != 0):
                    zm[(p, name)] = self.state[key]
                else:
                    zm.pop((p, name), None)

    def truncate_layer(self, model, optimizer, prefix, layer, keep):
        """``SVDRule.truncate_layer``; a cut of an all-zero mask is noted as all zero."""
        zero = {
            n: self.state[f"m{n}/{prefix}"] is self.__dict__.get("_zero_masks", {}).get((prefix, n)) for n in ("U", "V")
        }
        super().truncate_layer(model, optimizer, prefix, layer, keep)
        for n, z in zero.items():
            if z:
                self.__dict__.setdefault("_zero_masks", {})[(prefix, n)] = self.state[f"m{n}/{prefix}"]

    def task_signals(self, model, caches, e, keep_signals=True):
        """DFA pass: ``(task grads of every parameter, signal at the top-level layers' outputs)``: every one, or
        the indices in ``keep_signals``."""
        feedback = {seg.lead: self.state[f"B/{seg.key}"] for seg in self.segments}
        # eq. (3), (7): the DFA pass
        return direct_updates(model, caches, e, e, self.segments, feedback, self.shapes, keep_signals=keep_signals)

    def _reads_every_layer(self):
        """Whether this step reads every layer's signal and cache after the pass: the paper variant (eqs. (11)-(13)
        from each layer's ``G``) and the steps that measure eq. (4)'s angle (``angle_every``)."""
        every = self.options["angle_every"]
        return self.paper or bool(every and self._steps % every == 0)

    def _batch_layers(self, B, xp):
        """Top-level indices of the layers whose ``V^T g_V`` this step takes from the batch (``_batch_VtG``): the
        only signals and caches the default variant reads after the pass."""
        return frozenset(
            int(p) for p, layer in self.layers if p.isdigit() and self.takes_VtG_from_batch(p, layer, B, xp)
        )

    def caches_read_after(self, model, x):
        if self._reads_every_layer():
            return None
        return self._batch_layers(int(x.shape[0]), get_array_module(x))

    def layer_update(self, p, layer, task, dy=None, cache=None):
        """Update directions of one SVD layer.

        Parameters
        ----------
        p : str, the layer's key prefix.
        task : dict with "U" (m, r), "s" (r,), "V" (n, r): the layer's true gradients for its task signal.
        dy, cache : the signal at the layer's output and its forward cache (paper variant only).
        """
        P = layer.params
        U, s, V = P["U"], P["s"], P["V"]
        o, st = self.options, self.state
        a, b = o["alpha"], o["beta"]
        mU, mV = st[f"mU/{p}"], st[f"mV/{p}"]
        alU = (2.0 * b) * ((U - st[f"TU/{p}"]) * mU)  # d/dU  beta ||U - B_U||^2 (eq. (8))
        als = (2.0 * b) * ((s - st[f"Ts/{p}"]) * mU)
        alV = (2.0 * b) * ((V - st[f"TV/{p}"]) * mV)
        if self.paper:
            GV, GtU = layer.dense_products(dy, cache)
            gs = (U * GV).sum(axis=0) + als  # eq. (11): diag(U^T G V) + 2 beta (S - B_S)
            gU = GV / s + alU  # eq. (12): G V S^-1 + 2 beta (U - B_U)
            gV = GtU / s + alV  # eq. (13), transposed: G^T U S^-1 + 2 beta (V - B_V)
        else:
            gs = a * task["s"] + als  # alpha diag(U^T G V) + 2 beta (s - B_s)
            gU = a * task["U"] + alU  # alpha G V S + 2 beta (U - B_U)
            gV = a * task["V"] + alV  # alpha G^T U S + 2 beta (V - B_V)
        if self.projection == "tangent" and not self.project_ortho:  # the default: P_X(g) + 4 gamma X (X^T X - I)
            VtG = None if self.paper else self._batch_VtG(p, layer, dy, cache)
            dU, dV = self._tangent_plus_ortho(U, gU), self._tangent_plus_ortho(V, gV, VtG)
        else:
            oU, oV = self._ortho_grads(layer)  # d/dU gamma ||U^T U - I||^2 = 4 gamma U (U^T U - I)
            if self.project_ortho:
                dU, dV = self._project(U, gU + oU, "U"), self._project(V, gV + oV, "V")
            else:
                dU, dV = self._project(U, gU, "U") + oU, self._project(V, gV, "V") + oV
        h = self._hoyer_term(s)
        if h is not None:
            gs = gs + h  # hoyer * d(||s||_1/||s||_2)/ds (section 4.4)
        return {"U": dU, "s": gs, "V": dV}

    def svd_updates(self, model, caches, e, batch):
        """Update directions of every parameter: ``dU``, ``ds``, ``dV`` (``layer_update``) and ``alpha`` times the
        task gradient of ``b``.  The optimiser applies eq. (10) with them, ``U <- U - eta dU``,
        ``S <- S - eta dS``, ``V <- V - eta dV`` (SGD; momentum/Adam transform the direction first), and the
        default variant retracts ``U``, ``V`` in ``after_step``."""
        if self.shapes is None:
            raise RuntimeError("SSA.setup must run before training")
        every_layer = self.keep_signals or self._reads_every_layer()
        keep = True if every_layer else self._batch_layers(int(e.shape[0]), get_array_module(e))
        updates, signals = self.task_signals(model, caches, e, keep)
        a = self.options["alpha"]
        top = {str(k) for k in range(len(model.layers))}
        for p, layer in self.layers:
            task = {n: updates[f"{p}.{n}"] for n in ("U", "s", "V")}
            dy = cache = None
            if self.paper or p in top:  # the signal at the layer's output and its forward cache
                k = int(p)
                dy, cache = signals.get(k), caches[k]  # None unless read here (caches_read_after)
            upd = self.layer_update(p, layer, task, dy, cache)
            for n, v in upd.items():
                updates[f"{p}.{n}"] = v
            if "b" in layer.params and not self.paper:
                updates[f"{p}.b"] = a * updates[f"{p}.b"]
        every = self.options["angle_every"]
        if every and self._steps % every == 0:
            self._angles(model, caches, e, updates, signals, top)
        return updates, signals  # eq. (10): the optimiser steps U, S, V (and b) along these directions

    # -- eq. (4) angle between SSA's induced change of W and the BP gradient ----------------------------
    def _angles(self, model, caches, e, updates, signals, top):
        _, bp_sig = chain_updates(model, caches, e)  # BP's signals on the same forward pass
        for p, layer in self.layers:
            if p not in top:
                continue
            k = int(p)
            G = layer.dense_grad(bp_sig[k], caches[k])
            dW = layer.weight_change(*(updates[f"{p}.{n}"] for n in ("U", "s", "V")))
            self._record(p, "angle", angle_deg(dW, G))  # eq. (4)
            if not self.paper:
                Gt = layer.dense_grad(signals[k], caches[k])  # the DFA (task) gradient alone
                self._record(p, "angle_task", angle_deg(Gt, G))

    def _extra_metric_names(self):
        return ["angle", "angle_task"]

    # -- orthogonality of U, V (D4.12): retraction, retract-every, landing ---------------------------------
    @property
    def retracts(self):
        """Whether ``after_step`` retracts ``U``, ``V`` (after every step, or every ``retract_every`` steps)."""
        return self.retraction != "none" and self.orthogonality in ("retract", "retract-every")

    @property
    def landing(self):
        """Whether ``U``, ``V`` follow the landing field (no retraction, the step safeguard in ``after_step``)."""
        return self.orthogonality == "landing"

    def _retract_all(self, model, measure_jump=True):
        """Retract every tall ``U``, ``V`` onto the Stiefel manifold.  One device->host transfer in all: the
        errors ``||X^T X - I||_F`` of all factors are read back together (``orthogonality_errors``) and passed to
        ``retract``, which then predicts the Newton-Schulz convergence instead of measuring it
        (``check_every=None``; the exact eigh fallback, far from the manifold, still measures).
        ``measure_jump``: also record the retraction's change of ``W`` (``_record_jumps``: a copy of each factor
        and a few (r, r) products; ``after_step`` asks for it at sampled steps only with ``retract``)."""
        if not self.retracts:
            return
        todo = [
            (p, name, layer.params[name])
            for p, layer in self._layers(model)
            for name in ("U", "V")
            if layer.params[name].shape[0] >= layer.params[name].shape[1]
        ]
        errs = orthogonality_errors([X for _, _, X in todo])
        before = {}
        for (p, name, X), e in zip(todo, errs):
            Y, err = retract(X, self.retraction, return_error=True, check_every=None, error=e)
            key = f"{p}/drift_{name}"
            self._acc[key] = max(self._acc.get(key, 0.0), err)
            if Y is not X:
                if measure_jump:
                    before[(p, name)] = X.copy()
                X[...] = Y
        self._record_jumps(before)

    def _record_jumps(self, before):
        """Keep, per layer, the largest relative change of ``W = U diag(s) V^T`` a retraction made in this epoch,
        ``||W' - W||_F / ||W||_F`` (``svd_retract_jump``; issue 21: a retraction far from the manifold changes the
        network's function).  ``before``: ``(prefix, "U"|"V")`` -> the factor before the retraction.  With
        ``dU = U' - U``, ``dV = V' - V``: ``W' - W = dU S V'^T + U S dV^T``, whose squared norm is a sum of
        (r, r) Gram products (no m x n matrix, no cancellation); the maximum stays on the device."""
        for p, layer in self.layers:
            if (p, "U") not in before and (p, "V") not in before:
                continue
            P = layer.params
            s = P["s"]
            xp = get_array_module(s)
            U1, V1 = P["U"], P["V"]
            U0, V0 = before.get((p, "U"), U1), before.get((p, "V"), V1)
            dU, dV = U1 - U0, V1 - V0
            ss = s[:, None] * s[None, :]
            d2 = (
                (ss * (dU.T @ dU) * (V1.T @ V1)).sum()
                + (ss * (U0.T @ U0) * (dV.T @ dV)).sum()
                + 2.0 * (ss * (dU.T @ U0) * (V1.T @ dV)).sum()
            )
            w2 = (ss * (U0.T @ U0) * (V0.T @ V0)).sum()
            jump = xp.sqrt(xp.maximum(d2.astype(xp.float64), 0.0) / xp.maximum(w2.astype(xp.float64), 1e-300))
            key = f"{p}/retract_jump"
            prev = self._jump.get(key)
            self._jump[key] = jump if prev is None else xp.maximum(prev, jump)

    def after_step(self, model, optimizer):
        """Orthogonality handling after the optimiser step (D4.12): ``retract`` -- retract ``U``, ``V`` onto the
        Stiefel manifold (when ``retraction`` is not "none"), so the next forward pass, evaluation and
        checkpoint see orthonormal factors; ``retract-every`` -- the same after every ``retract_every``-th
        optimiser step of the run; ``landing`` -- no retraction: the step safeguard (``_landing_guard``)."""
        if self.orthogonality == "retract":
            # a retraction every step moves W by the drift of one step: its jump is sampled every JUMP_EVERY-th
            # step (the launches of a per-step measurement cost a third of the step on a GPU)
            self._retract_all(model, measure_jump=self._steps % JUMP_EVERY == 0)
            if self.transport:
                self._transport_moments(optimizer)
        elif self.orthogonality == "retract-every":
            self._opt_steps += 1
            if "meta/step" in self.state:
                self.state["meta/step"][...] = self._opt_steps
            if self._opt_steps % self.retract_every == 0:
                self._retract_all(model)
                if self.transport:
                    self._transport_moments(optimizer)
        elif self.landing:
            self._landing_guard(model)

    def _transport_moments(self, optimizer):
        """Vector transport of the optimiser's first moment (Adam's ``m``, SGD's momentum buffer) of every tall
        ``U``, ``V`` to the tangent space at the retracted point, by projection, ``M <- M - X sym(X^T M)``
        (``linalg.tangent_project``; Absil et al. 2008, section 8.1.3).  With ``orthogonality retract`` and the
        tangent projection of the direction this makes Adam the Riemannian Adam of Becigneul & Ganea (ICLR
        2019), with geoopt's per-entry second moments (issue 21, D4.16): the next step starts from a momentum that
        lies in the tangent space instead of one that kept the normal components the retractions removed."""
        if optimizer is None or not hasattr(optimizer, "first_moment"):
            return
        for p, layer in self.layers:
            for name in ("U", "V"):
                X = layer.params[name]
                if X.shape[0] < X.shape[1]:
                    continue
                M = optimizer.first_moment(f"{p}.{name}")
                if M is not None:
                    M[...] = tangent_project(X, M)

    def _keep_previous(self):
        """Landing: remember every ``U``, ``V`` before the optimiser moves them (the safeguard scales the step)."""
        if self.landing:
            self._prev = {(p, n): layer.params[n].copy() for p, layer in self.layers for n in ("U", "V")}

    def _landing_guard(self, model):
        """The landing step-size safeguard on the realised step (Ablin & Peyre 2022, section 3.2; D4.12): every
        ``U``, ``V`` whose step took ``||X^T X - I||_F`` above ``max(landing_eps, its distance before)`` is put
        back to ``X0 + t (X - X0)`` with the largest safe ``t`` (``linalg.landing_step_fraction``).  One
        device->host transfer of the distances per step; the per-factor quartic only where the bound is
        crossed.  Records the largest distance of the epoch (``drift_*``) and the share of guarded steps
        (``guard_*``)."""
        todo = [(p, n, layer.params[n]) for p, layer in self._layers(model) for n in ("U", "V")]
        prev = self._prev
        self._prev = {}
        errs = orthogonality_errors([X for _, _, X in todo])
        eps = self.landing_eps
        for (p, n, X), d in zip(todo, errs):
            X0 = prev.get((p, n))
            clipped = 0.0
            if d > eps and X0 is not None and X0.shape == X.shape:
                d0 = orthogonality_error(X0)
                bound = max(eps, d0)
                if d > bound:
                    t = landing_step_fraction(X0, X - X0, bound)
                    X[...] = X0 + t * (X - X0)
                    d = orthogonality_error(X)
                    clipped = 1.0
            key = f"{p}/drift_{n}"
            self._acc[key] = max(self._acc.get(key, 0.0), float(d))
            self._record(p, f"guard_{n}", clipped)

    def _init_step_count(self, model):
        if self.orthogonality == "retract-every":  # the step count decides when to retract; a resume keeps it
            self.state["meta/step"] = place(model, np.zeros(1))
            self._opt_steps = 0

    def _before_step(self):
        self._keep_previous()

    def _before_rank_schedule(self, model):
        if self.orthogonality == "retract":  # retract-every and landing leave the factors as trained
            self._retract_all(model)

    def load_state_dict(self, d, xp):
        """``SVDRule.load_state_dict``, then the host copy of the optimiser step count (retract-every) and the
        zero masks noted again (arrays may be overwritten in place)."""
        super().load_state_dict(d, xp)
        if "meta/step" in self.state:
            self._opt_steps = int(np.asarray(asnumpy(self.state["meta/step"])).reshape(-1)[0])
        self._note_zero_masks(d)

    # -- measurement and export --------------------------------------------------------------------------
    def resolved_options(self, model):
        out = dict(
            super().resolved_options(model),
            projection=self.projection,
            project_ortho=bool(self.project_ortho),
            retraction=self.retraction,
        )
        if not out.get("transport", False):  # added in 0.2.x (D4.16): absent means no transport, as before
            out.pop("transport", None)
        return out

    def alignment_pairs(self, model):
        """``B_i`` (d_i x d_N) against ``(W_N ... W_{i+1})^T`` as DFA, keyed by the segment's first SVD layer."""
        if not self.state or not self.segments:
            return []
        prefixes = [p for p, _ in self.layers]
        out = []
        for seg in self.segments:
            key = next(p for p in prefixes if p == seg.key or p.startswith(f"{seg.key}."))
            out.append(AlignmentPair(key, self.state[f"B/{seg.key}"], "downstream", seg.inject))
        return out

    def feedback_export(self, model):
        """``B`` per hidden segment (with ``inject``) and the alignment targets ``B_U``, ``B_S``, ``B_V`` (the
        masked-in prefix of the targets)."""
        out = FeedbackExport()
        st = self.state
        for seg in self.segments:
            out.put(seg.lead, "B", st[f"B/{seg.key}"])
            out.layer_attrs.setdefault(seg.lead, {})["inject"] = int(seg.inject)
        for p, _ in self.layers:
            if "." in p:
                raise ValueError(f"golden vectors describe top-level SVD layers only, not {p!r}")
            kU = _prefix_count(asnumpy(st[f"mU/{p}"]), f"layer {p} U")
            kV = _prefix_count(asnumpy(st[f"mV/{p}"]), f"layer {p} V")
            if kU:
                out.put(p, "B_U", st[f"TU/{p}"][:, :kU])
                out.put(p, "B_S", st[f"Ts/{p}"][:kU])
            if kV:
                out.put(p, "B_V", st[f"TV/{p}"][:, :kV])
        return out


def _prefix_count(mask, what):
    """Number of leading ones of a 0/1 mask; ValueError unless the mask is exactly a prefix of ones."""
    m = np.asarray(mask, dtype=np.float64)
    k = int(m.sum())
    if not (np.all(m[:k] == 1.0) and np.all(m[k:] == 0.0)):
        raise ValueError(f"{what}: alignment mask {m.tolist()} is not a prefix of ones")
    return k
