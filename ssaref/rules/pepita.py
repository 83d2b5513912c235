"""PEPITA: present the error as an input perturbation (Dellaferrera & Kreiman 2022).

Two forward passes and no backward pass:

1. standard pass: ``h_0 = x``, ``h_l = f(W_l h_{l-1})``, output error ``e = softmax(a_N) - y*``;
2. modulated pass on ``h_0^err = x + F e`` (F fixed, d_0 x K), giving ``h_l^err``.

Updates (the paper's Algorithm 1; batch mean as in the authors' code, which divides by the batch size):

* first layer ``delta W_1 = (h_1 - h_1^err) (h_0^err)^T`` -- it sees the *modulated* input;
* hidden layers ``delta W_l = (h_l - h_l^err) (h_{l-1}^err)^T``;
* output layer ``delta W_N = e (h_{N-1}^err)^T``;
* biases (the authors' networks have none): ``delta b_l = h_l - h_l^err`` and ``delta b_N = e``.

``h_l`` is the post-activation output of block l (what the next Linear layer reads).  F is drawn once:
``F_ij ~ pepita_F_scale * U(-sqrt(6/d_0), sqrt(6/d_0))`` with ``d_0`` the input size (0.05 in the paper).
The modulation uses the per-example error ``softmax - y*`` (not ssaref's batch-mean ``e``).  Dropout (10 % in
the paper) is not part of ssaref's models.  Defined on MLP-like models only (Linear layers, elementwise
activations, Flatten); anything else raises ValueError at ``init_state``.
"""

from __future__ import annotations

import math

from .feedback import ACT_KINDS, draw, num_classes, place, require_model
from .base import AlignmentPair, FeedbackExport, Rule

__all__ = ["PEPITA"]


class PEPITA(Rule):
    name = "pepita"
    SUMMARY = "two forward passes, input modulated by F e (Dellaferrera & Kreiman 2022), MLPs"
    ERROR_TRANSPORT = "two_forwards"
    OPTIONS = {
        "pepita_F_scale": (float, 0.05, "PEPITA: F ~ scale * U(+-sqrt(6/d_in)), d_in the input size"),
    }

    def __init__(self, **options):
        super().__init__(**options)
        scale = float(self.options["pepita_F_scale"])
        if not 0 <= scale < float("inf"):
            raise ValueError(f"method 'pepita': option pepita_F_scale={scale!r} must be a finite number >= 0")

    def init_state(self, model, rng):
        """Check the model is an MLP; draw ``F`` (d_0, K), state key ``"F"``."""
        require_model(model, self.name)
        for i, layer in enumerate(model.layers):
            if layer.kind not in ("linear", "flatten") + ACT_KINDS:
                raise ValueError(
                    f"method 'pepita' is defined for MLPs only; model "
                    f"{getattr(model, 'name', type(model).__name__)!r} has layer {i} "
                    f"({type(layer).__name__})"
                )
        scale = float(self.options["pepita_F_scale"])
        d0 = int(math.prod(model.input_shape))
        K = num_classes(model)
        self.state = {"F": place(model, scale * draw(rng, (d0, K), "kaiming_uniform", fan_in=d0))}

    def forward(self, model, x):
        """``(logits, [h after layer 0, ..., logits])``: PEPITA keeps every layer's output, not the caches."""
        outs = []
        for layer in model.layers:
            x, _ = layer.forward(x, True)
            outs.append(x)
        return x, outs

    def updates(self, model, caches, e, batch):
        layers = model.layers
        N = len(layers) - 1
        h = caches  # pass 1, from forward
        x = batch.x
        Bsz = x.shape[0]
        F = self.state["F"]
        x_err = x + ((e * Bsz) @ F.T).reshape(x.shape)  # h_0^err = x + F e, per example
        _, h_err = self.forward(model, x_err)  # pass 2
        lin = [k for k in range(N + 1) if layers[k].kind == "linear"]
        updates, signals = {}, {}
        for j, k in enumerate(lin):
            inp_err = h_err[k - 1] if k > 0 else x_err  # h_{l-1}^err (modulated input for the first layer)
            if k == N:
                d = e  # delta W_N = e (h_{N-1}^err)^T
            else:
                out = lin[j + 1] - 1  # block output h_l = input of the next Linear layer
                d = (h[out] - h_err[out]) / Bsz  # delta W_l = (h_l - h_l^err)(h_{l-1}^err)^T, batch mean
            signals[k] = d
            updates[f"{k}.W"] = d.T @ inp_err
            if "b" in layers[k].params:
                updates[f"{k}.b"] = d.sum(axis=0)
        return updates, signals

    def alignment_pairs(self, model):
        """``F`` (d_0 x K) against ``(W_N ... W_1)^T``: what maps the output error back to the input."""
        if not self.state:
            return []
        first = next(k for k, l in enumerate(model.layers) if l.kind == "linear")
        return [AlignmentPair(f"{first}.W", self.state["F"], "downstream", first - 1)]

    def feedback_export(self, model):
        return FeedbackExport(arrays={"F": self.state["F"]})
