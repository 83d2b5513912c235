"""SVD-BP (Yang et al. 2020, "Learning low-rank deep neural networks via singular vector orthogonality
regularization and singular value sparsification"): backpropagation through the same SVD-space layers as SSA.

The loss is ``L_CE + gamma * sum_i (||U_i^T U_i - I||^2 + ||V_i^T V_i - I||^2) + hoyer * sum_i ||s_i||_1/||s_i||_2``
(the Hoyer term on the epochs the rank schedule says, as for SSA), its gradient is plain BP through the factored
layers (their ``backward`` returns the true gradients w.r.t. ``U``, ``s``, ``V``, ``b``) plus the regularisers'
gradients; no projection, no retraction.  The rank schedule, its options, the truncation of the optimiser state and
the per-epoch metrics are those of SSA (``rules/svd_rule.py``: ``SVDRule``).
"""

from __future__ import annotations

from .base import chain_updates
from .svd_rule import RANK_OPTIONS, SVDRule

__all__ = ["SVDBP"]


class SVDBP(SVDRule):
    name = "svd-bp"
    SUMMARY = "BP on SVD-factored layers + orthogonality and Hoyer terms (Yang et al. 2020)"
    ERROR_TRANSPORT = "chain"
    RELEASES_CACHES = True  # each cache is read by its layer's backward only (base.py)
    OPTIONS = dict(RANK_OPTIONS)
    GOLDEN_VARIANTS = {"sgd1": ({}, 1)}  # one SGD step off the exact SVD: the orthogonality term shows

    def init_state(self, model, rng):
        self._layers(model)
        self.state = {}
        self._init_meta(model)

    def svd_updates(self, model, caches, e, batch):
        # BP's chain (eq. (2)) through the factored layers
        updates, signals = chain_updates(model, caches, e, keep_signals=self.keep_signals)
        for p, layer in self._layers(model):
            oU, oV = self._ortho_grads(layer)  # 4 gamma U (U^T U - I), 4 gamma V (V^T V - I)
            updates[f"{p}.U"] = updates[f"{p}.U"] + oU
            updates[f"{p}.V"] = updates[f"{p}.V"] + oV
            h = self._hoyer_term(layer.params["s"])  # hoyer * d(||s||_1/||s||_2)/ds
            if h is not None:
                updates[f"{p}.s"] = updates[f"{p}.s"] + h
        return updates, signals
