"""Kolen-Pollack learning (Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, "Deep learning without weight
transport"; Kolen & Pollack 1994).

FA's chain (eq. (2) with ``B`` in place of each transported weight, ``rules/fa.py``), but the feedback weights
learn: every ``B`` receives the same update as the forward weight it stands in for, and the same weight decay.
In Akrout et al.'s notation, with ``B_l`` carrying the error from layer l to l-1 (``B_l`` shaped like
``W_l^T``)::

    delta W_l = -eta delta_l h_{l-1}^T - lambda W_l
    delta B_l = -eta h_{l-1} delta_l^T - lambda B_l      (the transpose of W's update)

so ``B_l - W_l^T`` decays by ``(1 - eta lambda)`` at every step and ``B`` converges to ``W^T``: the rule
becomes BP without transporting weights.  ssaref stores ``B`` in ``W``'s own shape (``dx = dy @ B`` for a
Linear layer, a kernel of W's shape for a Conv2d), so "the transpose of W's update" is W's update itself: the
direction for ``B`` is the very array returned for ``W``.

``B`` is a rule-owned array that the optimiser updates like a parameter (``learnable``), so it gets the same
learning rate, momentum or Adam moments, and weight decay (``--weight-decay``) as ``W``.  ``kp_decay`` adds
Akrout et al.'s ``lambda`` explicitly to the directions of both ``W`` and ``B`` (``dW + lambda W``,
``dB + lambda B``), for optimisers without decoupled decay.  Without any decay ``B - W`` is invariant under any
optimiser (both receive identical directions), so KP then behaves as FA; see docs/decisions.md D9.

The first weight layer transports no error and has no ``B``; the output layer receives ``e`` itself (as BP).
"""

from __future__ import annotations

import math

from .feedback import transport_keys
from .base import Learnable, chain_updates
from .fa import FA

__all__ = ["KP"]


class KP(FA):
    """Kolen-Pollack: FA whose ``B`` gets ``W``'s update (and decay), so ``B -> W^T``."""

    name = "kp"
    SUMMARY = "Kolen-Pollack: FA whose B learns W's update and decay, so B -> W^T (Akrout et al. 2019)"
    GOLDEN_VARIANTS = {
        "default": FA.GOLDEN_VARIANTS["default"],
        "decay": ({"kp_decay": 0.1}, 0),
    }  # pins lambda on W and on B
    OPTIONS = {
        "kp_init": (
            str,
            "torch_default",
            "distribution of KP's initial B: torch_default (U(+-1/sqrt(fan_in))), xavier_uniform or kaiming_uniform",
        ),
        "kp_decay": (
            float,
            0.0,
            "KP: weight decay lambda added to the directions of W and of B (Akrout et al.); "
            "the optimiser's --weight-decay applies to both as well",
        ),
    }

    init_option = "kp_init"  # B is drawn as FA's: init_state, feedback, alignment pairs and export are FA's

    def __init__(self, **options):
        super().__init__(**options)
        lam = self.options["kp_decay"]
        if not (lam >= 0.0 and math.isfinite(lam)):
            raise ValueError(f"method 'kp': option kp_decay={lam!r} must be a finite number >= 0")

    def learnable(self, model):
        return [Learnable("B/" + key, self.state["B/" + key], k, "B") for key, k, _ in transport_keys(model)]

    def updates(self, model, caches, e, batch):
        B = self.feedback(model)
        updates, signals = chain_updates(model, caches, e, B, keep_signals=self.keep_signals)  # FA's chain, eq. (2)
        lam = self.options["kp_decay"]
        params = dict(model.named_params())
        for key, W in params.items():
            if not (key == "W" or key.endswith(".W")):
                continue
            g = updates[key]  # delta_l h_{l-1}^T, the true local gradient
            if key in B:
                updates["B/" + key] = g + lam * B[key] if lam else g  # delta B = W's update + lambda B
            if lam:
                updates[key] = g + lam * W  # delta W = delta_l h_{l-1}^T + lambda W
        return updates, signals
