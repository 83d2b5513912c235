"""Feedback alignment (Lillicrap et al. 2016).

BP's chain, eq. (2), with the transpose of each downstream weight replaced by a fixed random matrix:
``delta a_i = (B_{i+1} delta a_{i+1}) o f_i'(a_i)`` and ``delta W_i = delta a_i h_{i-1}^T``.  ``B_{i+1}`` is
stored in the shape of ``W_{i+1}`` (``dx = dy @ B`` for a Linear layer; for a Conv2d a fixed random kernel of
W's shape used in the transposed convolution) and handed to the layer through its ``feedback`` hook, so
the parameter gradients stay the true local ones.  The first weight layer sends no error further down and
gets no B.  The output layer receives ``e`` itself, so its update equals BP's.
"""

from __future__ import annotations

from .feedback import check_choice, draw_weight_shaped, require_model, transport_keys
from .base import AlignmentPair, FeedbackExport, Rule, chain_updates

__all__ = ["FA"]


class FA(Rule):
    """Feedback alignment: fixed random B of each weight's shape, drawn once from the run's seed."""

    name = "fa"
    SUMMARY = "feedback alignment (Lillicrap et al. 2016)"
    ERROR_TRANSPORT = "chain"
    RELEASES_CACHES = True  # each cache is read by its layer's backward only (base.py)
    # conv2: a conv layer above the first, so a conv-shaped B carries the error (docs/golden-vectors.md)
    GOLDEN_VARIANTS = {"default": ({}, 0, {"models": ("mlp", "conv", "conv2")})}
    OPTIONS = {
        "fa_init": (
            str,
            "torch_default",
            "distribution of FA's fixed B: torch_default (U(+-1/sqrt(fan_in)), like the forward "
            "weights), xavier_uniform or kaiming_uniform",
        ),
    }

    init_option = "fa_init"  # the option naming B's law (KP, which subclasses FA, has its own)

    def __init__(self, **options):
        super().__init__(**options)
        check_choice(
            self.name,
            self.init_option,
            self.options[self.init_option],
            ("torch_default", "xavier_uniform", "kaiming_uniform"),
        )

    def init_state(self, model, rng):
        """Draw ``B`` for every weight that transports error (state key ``"B/<param key>"``)."""
        require_model(model, self.name)
        drawn = draw_weight_shaped(model, rng, self.options[self.init_option])
        self.state = {"B/" + key: B for key, B in drawn.items()}

    def feedback(self, model):
        """``{weight key: B}`` used in place of each weight when transporting the error."""
        return {k[2:]: v for k, v in self.state.items() if k.startswith("B/")}

    def updates(self, model, caches, e, batch):
        return chain_updates(  # B_k in place of W_k in eq. (2)
            model, caches, e, self.feedback(model), keep_signals=self.keep_signals
        )

    def alignment_pairs(self, model):
        return [AlignmentPair(key, B, "weight") for key, B in self.feedback(model).items()]

    def feedback_export(self, model):
        out = FeedbackExport()
        for key, k, _ in transport_keys(model):
            out.put(k, "B", self.state["B/" + key])
        return out
