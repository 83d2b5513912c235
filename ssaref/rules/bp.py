"""Backpropagation (paper section 2, eq. (2)).

The error at the output, ``delta a_N = e`` (eq. (7)), travels down the chain:
each layer turns the error at its output into the error at its input with the
transpose of its own weights, ``delta a_i = (W_{i+1}^T delta a_{i+1}) o f_i'(a_i)``,
and its weight update is ``delta W_i = delta a_i h_{i-1}^T``.
"""

from __future__ import annotations

from .base import Rule, chain_updates

__all__ = ["BP"]


class BP(Rule):
    name = "bp"
    SUMMARY = "backpropagation, eq. (2)"
    ERROR_TRANSPORT = "chain"
    RELEASES_CACHES = True  # each cache is read by its layer's backward only (base.py)
    GOLDEN_VARIANTS = {
        "default": ({}, 0, {"models": ("mlp", "conv", "res")}),
        "momentum3": ({}, 0, {"optimizer": "momentum", "steps": 3}),
        "adam3": ({}, 0, {"optimizer": "adam", "steps": 3}),
    }

    def updates(self, model, caches, e, batch):
        # eq. (2): dW_k = delta_k h_{k-1}^T ; delta_{k-1} = (W_k^T delta_k) o f'(a_{k-1}), from delta a_N = e
        return chain_updates(model, caches, e, keep_signals=self.keep_signals)
