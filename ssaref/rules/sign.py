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
from ._feedback import chain_updates, check_choice, draw, fan_in_out, place, require_model, transport_keys
from .base import Rule

__all__ = ["USF", "BRSF", "FRSF"]

_INITS = ("torch_default", "xavier_uniform")
_SF_INIT = (str, "torch_default",
            "distribution of the sign-concordant magnitudes |R| and scale of uSF: torch_default or "
            "xavier_uniform (biotorch's 'kaiming' and 'xavier' options)")


def _init_std(shape, dist):
    """Standard deviation of the initialisation ``dist`` for a weight of ``shape`` (biotorch's scale)."""
    fi, fo = fan_in_out(shape)
    return 1.0 / math.sqrt(3.0 * fi) if dist == "torch_default" else math.sqrt(2.0 / (fi + fo))


class _SignConcordant(Rule):
    """Shared walk: BP's chain with ``B(W)`` in place of every transported weight."""

    def _check(self, model):
        check_choice(self.name, "sf_init", self.options["sf_init"], _INITS)
        require_model(model, self.name)

    def feedback(self, model, advance=False):
        """``{weight key: B}`` for the current weights (``advance``: brSF moves to its next draw)."""
        raise NotImplementedError

    def updates(self, model, caches, e):
        return chain_updates(model, caches, e, self.feedback(model, advance=True))


class USF(_SignConcordant):
    name = "usf"
    OPTIONS = {
        "sf_init": _SF_INIT,
        "usf_scaled": (bool, True, "uSF: multiply sign(W) by the init std as biotorch does (false: sign(W))"),
    }

    def init_state(self, model, rng):
        self._check(model)
        self.state = {}  # nothing drawn: B is a function of W

    def feedback(self, model, advance=False):
        params = dict(model.named_params())
        out = {}
        for key, _, _ in transport_keys(model):
            W = params[key]
            xp = get_array_module(W)
            s = _init_std(W.shape, self.options["sf_init"]) if self.options["usf_scaled"] else 1.0
            out[key] = xp.sign(W) * s
        return out


class BRSF(_SignConcordant):
    name = "brsf"
    OPTIONS = {"sf_init": _SF_INIT}

    def init_state(self, model, rng):
        self._check(model)
        self.state = {"brsf_seed": np.asarray([int(rng.integers(0, 2**62))], dtype=np.int64),
                      "brsf_draws": np.asarray([0], dtype=np.int64)}
        self._last = None

    def feedback(self, model, advance=False):
        if not advance and getattr(self, "_last", None) is not None:
            return self._last  # the B of the most recent step
        t = int(self.state["brsf_draws"][0])
        rng = np.random.default_rng([int(self.state["brsf_seed"][0]), t])
        params = dict(model.named_params())
        out = {}
        for key, _, _ in transport_keys(model):
            W = params[key]
            fi, fo = fan_in_out(W.shape)
            R = place(model, np.abs(draw(rng, W.shape, self.options["sf_init"], fi, fo)))
            out[key] = R * get_array_module(W).sign(W)  # B = |R_t| o sign(W)
        if advance:
            self.state["brsf_draws"] = self.state["brsf_draws"] + 1
            self._last = out
        return out


class FRSF(_SignConcordant):
    name = "frsf"
    OPTIONS = {"sf_init": _SF_INIT}

    def init_state(self, model, rng):
        """Draw the fixed magnitudes ``|R|`` (state key ``"R/<param key>"``)."""
        self._check(model)
        params = dict(model.named_params())
        self.state = {}
        for key, _, _ in transport_keys(model):
            shape = params[key].shape
            fi, fo = fan_in_out(shape)
            self.state["R/" + key] = place(model, np.abs(draw(rng, shape, self.options["sf_init"], fi, fo)))

    def feedback(self, model, advance=False):
        params = dict(model.named_params())
        return {k[2:]: R * get_array_module(R).sign(params[k[2:]])  # B = |R| o sign(W)
                for k, R in self.state.items() if k.startswith("R/")}
