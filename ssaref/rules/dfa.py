"""Direct feedback alignment (Nøkland 2016), paper section 2, eq. (3).

Each hidden layer receives the output error through its own fixed random matrix instead of the chain:
``delta W_i = [(B_i delta a_N) o f_i'(a_i)] h_{i-1}^T`` (eq. (3)) with ``delta a_N = e`` (eq. (7)).

On networks that are not plain MLPs ssaref applies eq. (3) per *segment* (see ``feedback.segments``): a
weight layer (Linear, Conv2d, or a whole ResidualBlock) and the BatchNorm/activation/pool/flatten layers up
to the next weight layer.  ``B_i`` (d_i x d_N, d_i = size of the injection point's output, e.g. C*H*W)
maps ``e`` to the injection point; the signal is then carried back to the weight layer through the
segment's own layers, which for Linear-ReLU is exactly ``(B_i e) o f'(a_i)``, for a conv layer ends in the
layer's own weight-gradient op, gives BN's gamma/beta their local gradient from the injected signal, and for a
residual block is local BP inside the block (both branches) from the signal at the block's output.

Options (defaults first):

* ``dfa_init``: ``unit_col`` -- N(0, 1) then columns normalised to unit l2 norm (the paper's section 4.3);
  ``gaussian`` -- N(0, 1); ``kaiming_uniform`` -- U(+-sqrt(6/d_i)) (Frenkel et al.'s DFA code).
* ``dfa_inject``: ``segment`` -- at the segment's last layer (after pooling/flatten); ``before_pool`` -- at
  the last layer before the segment's pooling/flatten layers (Frenkel et al.: after the activation).
* ``dfa_output``: ``e`` -- the output layer is trained with ``e`` as in BP; ``frozen`` -- not trained.
* ``dfa_residual``: ``block`` -- a ResidualBlock is one segment, trained by local BP inside it from the
  signal at its output; ``layer`` -- every weight layer inside a block gets its own ``B_i`` as in a plain conv
  net: each weight layer of a branch with its BN/ReLU up to the next weight layer is a segment (``B_i e`` at
  its end); the last weight layer of each branch (main and projection shortcut, with their BNs) feeds the
  residual add and receives ``B_i e`` injected at the block output, carried back through the block's final
  ReLU and the add (the same ``dz`` to both branches).  State keys ``B/<lead>`` with dotted leads
  (``B/4.main.0``, ``B/4.main.3`` for the add).  No error passes between segments in either mode.
* ``dfa_bn``: ``local`` -- BatchNorm gamma/beta get their local gradient from the signal carried through
  their segment; ``frozen`` -- they get no update (absent from ``updates``); the signal still passes through
  BN's backward to reach the weight layer.
"""

from __future__ import annotations

from .feedback import (
    check_choice,
    direct_updates,
    draw,
    layer_output_shapes,
    num_classes,
    param_keys_of_kind,
    place,
    segment_dim,
    segments,
)
from .base import AlignmentPair, FeedbackExport, Rule

__all__ = ["DFA"]


class DFA(Rule):
    name = "dfa"
    SUMMARY = "direct feedback alignment, eq. (3)"
    ERROR_TRANSPORT = "direct"
    RELEASES_CACHES = True  # each cache is read by its layer's backward only (base.py)
    GOLDEN_VARIANTS = {
        "default": ({}, 0, {"models": ("mlp", "conv", "res")}),
        "momentum3": ({}, 0, {"optimizer": "momentum", "steps": 3}),
        "adam3": ({}, 0, {"optimizer": "adam", "steps": 3}),
        "before-pool": ({"dfa_inject": "before_pool"}, 0, {"models": ("conv",)}),
    }
    OPTIONS = {
        "dfa_init": (str, "unit_col", "DFA's B_i: unit_col (N(0,1), unit-norm columns), gaussian or kaiming_uniform"),
        "dfa_inject": (str, "segment", "where B_i e enters a segment: segment (its output) or before_pool"),
        "dfa_output": (str, "e", "output layer: e (trained with e as in BP) or frozen"),
        "dfa_residual": (
            str,
            "block",
            "residual blocks: block (one segment, local BP inside) or layer (a B_i per weight layer inside the block)",
        ),
        "dfa_bn": (str, "local", "BatchNorm gamma/beta: local (gradient from the segment's signal) or frozen"),
    }
    # the option of each role (DRTP shares this class with its own option names)
    ROLES = {
        "init": "dfa_init",
        "inject": "dfa_inject",
        "output": "dfa_output",
        "residual": "dfa_residual",
        "bn": "dfa_bn",
    }

    def __init__(self, **options):
        super().__init__(**options)
        for role, choices in (
            ("init", ("unit_col", "gaussian", "kaiming_uniform")),
            ("inject", ("segment", "before_pool")),
            ("output", ("e", "frozen")),
            ("residual", ("block", "layer")),
            ("bn", ("local", "frozen")),
        ):
            check_choice(self.name, self.ROLES[role], self._opt(role), choices)
        self.segments = None  # the model's hidden segments, found at init_state (or at the first step of a
        self.shapes = None  # rule restored from a checkpoint) with the per-example output shapes
        self.frozen = ()  # BatchNorm parameter keys that get no update (dfa_bn=frozen)

    def _opt(self, role):
        return self.options[self.ROLES[role]]

    def init_state(self, model, rng):
        """Draw ``B_i`` (d_i, d_N) per hidden segment, in forward order; state key ``"B/<lead>"`` with lead the
        segment's lead layer index (``"B/3"``) or, inside a residual block with ``residual=layer``, its dotted
        path (``"B/4.main.0"``; the residual add's segment is keyed by the main branch's last weight layer)."""
        self.segments = None
        segs = self._segments(model)
        K = num_classes(model)
        self.state = {}
        for seg in segs:
            d = segment_dim(seg, self.shapes)
            self.state[f"B/{seg.key}"] = place(model, draw(rng, (d, K), self._opt("init"), fan_in=d))

    def _segments(self, model):
        if self.segments is None:
            self.segments = segments(model, self.name, self._opt("inject"), self._opt("residual"))
            self.shapes = layer_output_shapes(model)
            self.frozen = tuple(param_keys_of_kind(model, ("batchnorm",))) if self._opt("bn") == "frozen" else ()
        return self.segments

    def projected(self, e, batch):
        """What ``B_i`` projects: ``delta a_N = e`` for DFA (eq. (3))."""
        return e

    def updates(self, model, caches, e, batch):
        """Output layer from ``e``; every hidden segment from ``B_i src`` injected at its injection point, with
        ``src = projected(e, batch)`` (``e`` for DFA, the target for DRTP)."""
        segs = self._segments(model)
        feedback = {seg.lead: self.state[f"B/{seg.key}"] for seg in segs}
        return direct_updates(
            model,
            caches,
            e,
            self.projected(e, batch),
            segs,
            feedback,
            self.shapes,
            train_output=self._opt("output") == "e",
            frozen=self.frozen,
            keep_signals=self.keep_signals,
        )

    def alignment_pairs(self, model):
        if not self.state:
            return []
        out = []
        for seg in self._segments(model):
            key = seg.weight_key
            if key is None:
                lead = model.layers[seg.lead]
                key = f"{seg.lead}." + next(k for k in lead.params if k == "W" or k.endswith(".W"))
            # injection inside a residual block (dfa_residual=layer): conv/BN downstream, undefined
            inject = seg.inject if isinstance(seg.inject, int) else None
            out.append(AlignmentPair(key, self.state[f"B/{seg.key}"], "downstream", inject))
        return out

    def feedback_export(self, model):
        out = FeedbackExport()
        for seg in self._segments(model):
            if not isinstance(seg.lead, int):
                raise ValueError(
                    f"golden vectors describe top-level segments only, not {seg.lead!r} "
                    f"({self.ROLES['residual']}=layer)"
                )
            out.put(seg.lead, "B", self.state[f"B/{seg.key}"])
            out.layer_attrs.setdefault(seg.lead, {})["inject"] = int(seg.inject)
        return out
