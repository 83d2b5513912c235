"""Sign-concordant feedback (Liao, Leibo & Poggio 2016), as implemented by Sanfiz & Akrout 2021 (biotorch).

FA-type rules (layer to layer, BP's chain with ``W`` replaced by ``B`` in the error transport, eq. (2)) whose
B shares the sign of the current forward weight, recomputed from W at every step:

* **uSF** (uniform): ``B = s * sign(W)``, with biotorch's scale ``s`` = the standard deviation of the weight
  initialisation (torch_default: ``1/sqrt(3 fan_in)``; xavier_uniform: ``sqrt(2/(fan_in+fan_out))``), used
  there "to avoid exploding gradients"; ``--usf-scaled false`` gives the paper-literal ``sign(W)``.
* **brSF** (batchwise random magnitude): ``B = |R_t| o sign(W)``, ``R_t`` redrawn from the weight
  initialisation distribution at every step (biotorch redraws it in every forward pass).
* **frSF** (fixed random magnitude): ``B = |R| o sign(W)``, ``R`` drawn once.

In the paper's notation ``B_i = sign(W_i^T)``; ssaref stores B in W's own shape (``dx = dy @ B``), so
``sign(W)`` here is the same matrix.  The first weight layer transports no error and gets no B.  brSF's draws
come from ``default_rng([seed, t])`` with ``seed`` drawn once and ``t`` the step count, both kept in the
state, so a resumed run redraws exactly the same R_t.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ._feedback import check_choice, draw, draw_weight_shaped, fan_in_out, place, require_model, transport_keys
from .base import AlignmentPair, FeedbackExport, Rule, chain_updates

__all__ = ["USF", "BRSF", "FRSF", "init_std"]

_INITS = ("torch_default", "xavier_uniform")
_SF_INIT = (
    str,
    "torch_default",
    "distribution of the sign-concordant magnitudes |R| and scale of uSF: torch_default or "
    "xavier_uniform (biotorch's 'kaiming' and 'xavier' options)",
)


def init_std(shape, dist):
    """Standard deviation of the initialisation ``dist`` for a weight of ``shape`` (biotorch's scale)."""
    fi, fo = fan_in_out(shape)
    return 1.0 / math.sqrt(3.0 * fi) if dist == "torch_default" else math.sqrt(2.0 / (fi + fo))


class _SignConcordant(Rule):
    """Shared walk: BP's chain with ``B(W)`` in place of every transported weight."""

    def __init__(self, **options):
        super().__init__(**options)
        check_choice(self.name, "sf_init", self.options["sf_init"], _INITS)

    def feedback(self, model):
        """``{weight key: B}`` the coming step uses, for the current weights."""
        raise NotImplementedError

    def magnitudes(self, model):
        """``{weight key: |R|}`` of the coming step (brSF, frSF), or None (uSF)."""
        return None

    def updates(self, model, caches, e, batch):
        return chain_updates(model, caches, e, self.feedback(model))  # B in place of W in eq. (2)

    def alignment_pairs(self, model):
        return [AlignmentPair(key, B, "weight") for key, B in self.feedback(model).items()]

    def feedback_export(self, model):
        out = FeedbackExport()
        R, B = self.magnitudes(model), self.feedback(model)
        for key, k, _ in transport_keys(model):
            if R is not None:
                out.put(k, "R", R[key])
            out.put(k, "B", B[key])
        return out


class USF(_SignConcordant):
    name = "usf"
    OPTIONS = {
        "sf_init": _SF_INIT,
        "usf_scaled": (bool, True, "uSF: multiply sign(W) by the init std as biotorch does (false: sign(W))"),
    }

    def init_state(self, model, rng):
        require_model(model, self.name)
        self.state = {}  # nothing drawn: B is a function of W

    def scale(self, shape):
        """``s`` of ``B = s sign(W)``: the init std (``usf_scaled``) or 1."""
        return init_std(shape, self.options["sf_init"]) if self.options["usf_scaled"] else 1.0

    def feedback(self, model):
        params = dict(model.named_params())
        out = {}
        for key, _, _ in transport_keys(model):
            W = params[key]
            out[key] = get_array_module(W).sign(W) * self.scale(W.shape)  # B = s sign(W)
        return out

    def resolved_options(self, model):
        params = dict(model.named_params())
        return dict(self.options, usf_scale={key: self.scale(params[key].shape) for key, _, _ in transport_keys(model)})


class BRSF(_SignConcordant):
    name = "brsf"
    OPTIONS = {"sf_init": _SF_INIT}

    def init_state(self, model, rng):
        require_model(model, self.name)
        self.state = {
            "brsf_seed": np.asarray([int(rng.integers(0, 2**62))], dtype=np.int64),
            "brsf_draws": np.asarray([0], dtype=np.int64),
        }

    def magnitudes(self, model):
        """``|R_t|`` of draw ``t`` = the number of steps taken: ``default_rng([seed, t])``, one array per weight
        in ``transport_keys`` order."""
        t = int(self.state["brsf_draws"][0])
        rng = np.random.default_rng([int(self.state["brsf_seed"][0]), t])
        params = dict(model.named_params())
        out = {}
        for key, _, _ in transport_keys(model):
            shape = params[key].shape
            fi, fo = fan_in_out(shape)
            out[key] = place(model, np.abs(draw(rng, shape, self.options["sf_init"], fi, fo)))
        return out

    def feedback(self, model):
        params = dict(model.named_params())
        return {
            key: R * get_array_module(R).sign(params[key])  # B = |R_t| o sign(W)
            for key, R in self.magnitudes(model).items()
        }

    def updates(self, model, caches, e, batch):
        out = super().updates(model, caches, e, batch)  # with draw t
        self.state["brsf_draws"] = self.state["brsf_draws"] + 1  # the next step redraws
        return out


class FRSF(_SignConcordant):
    name = "frsf"
    OPTIONS = {"sf_init": _SF_INIT}

    def init_state(self, model, rng):
        """Draw the fixed magnitudes ``|R|`` (state key ``"R/<param key>"``)."""
        require_model(model, self.name)
        drawn = draw_weight_shaped(model, rng, self.options["sf_init"], transform=np.abs)
        self.state = {"R/" + key: R for key, R in drawn.items()}

    def magnitudes(self, model):
        return {k[2:]: R for k, R in self.state.items() if k.startswith("R/")}

    def feedback(self, model):
        params = dict(model.named_params())
        return {
            key: R * get_array_module(R).sign(params[key])  # B = |R| o sign(W)
            for key, R in self.magnitudes(model).items()
        }
