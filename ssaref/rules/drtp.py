"""Direct random target projection (Frenkel, Lefebvre & Bol 2021).

DFA (eq. (3)) with the output error replaced by the one-hot target: each hidden layer receives a fixed
random projection of ``y*`` instead of ``B_i e``, so no error needs to travel back and a layer can be updated
as soon as its forward pass is done:
``delta W_i = [(B_i y*) o f_i'(a_i)] h_{i-1}^T``.

Sign: as in the authors' code (``grad_output_est = labels.mm(B)``), the projected vector is ``+y*``, not
``-y*`` (B is zero-mean, so the sign only flips which way the network aligns).  The output layer is trained
with ``e`` exactly as BP (their output block runs in "BP" mode).  Scale: ssaref's ``e`` is a batch mean
(eq. (7), decisions D2), so by default the target is divided by the batch size too (``drtp_reduction=mean``);
``sum`` is the authors' literal per-example ``y*`` (a learning-rate factor of B on the hidden layers).
B_i is ``kaiming_uniform`` (U(+-sqrt(6/d_i))) as in their code.  Segments, injection point, output-layer,
residual-block and BatchNorm options are DFA's (see ``dfa.py``), under the ``drtp_`` prefix (``drtp_residual``
= ``block`` | ``layer``, ``drtp_bn`` = ``local`` | ``frozen``).
"""

from __future__ import annotations

import numpy as np

from ..ops.losses import one_hot
from .feedback import check_choice
from .dfa import DFA

__all__ = ["DRTP"]


class DRTP(DFA):
    name = "drtp"
    SUMMARY = "direct random target projection (Frenkel et al. 2021)"
    GOLDEN_VARIANTS = {"default": ({}, 0, {"models": ("mlp", "conv", "res")})}
    OPTIONS = {
        "drtp_init": (
            str,
            "kaiming_uniform",
            "DRTP's B_i: kaiming_uniform (U(+-sqrt(6/d_i)), the authors' code), unit_col or gaussian",
        ),
        "drtp_inject": (
            str,
            "segment",
            "where B_i y* enters a segment: segment (its output) or before_pool "
            "(after the activation, as the authors' code)",
        ),
        "drtp_output": (str, "e", "output layer: e (trained with e as in BP) or frozen"),
        "drtp_residual": DFA.OPTIONS["dfa_residual"],  # segments as DFA's (dfa.py)
        "drtp_bn": DFA.OPTIONS["dfa_bn"],
        "drtp_reduction": (
            str,
            "mean",
            "target projected per example divided by the batch size (mean, as "
            "ssaref's e) or not (sum, the authors' code)",
        ),
    }
    ROLES = {
        "init": "drtp_init",
        "inject": "drtp_inject",
        "output": "drtp_output",
        "residual": "drtp_residual",
        "bn": "drtp_bn",
    }

    def __init__(self, **options):
        super().__init__(**options)
        check_choice(self.name, "drtp_reduction", self.options["drtp_reduction"], ("mean", "sum"))

    def projected(self, e, batch):
        """The one-hot target ``y*`` (B, K) of ``batch.y`` (divided by B for ``drtp_reduction=mean``)."""
        target = one_hot(batch.y, e.shape[1], e.dtype, check_labels=isinstance(batch.y, np.ndarray))
        if self.options["drtp_reduction"] == "mean":
            target = target / e.shape[0]
        return target
