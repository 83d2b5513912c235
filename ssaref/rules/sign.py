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
``sign(W)`` here is the same matrix.  The first weight layer transports no error and gets no B.  brSF's draw
``t`` (the step count) of the ``l``-th transporting weight is the counter-based stream
``ssaref.rng.stream_key(seed, t, l)``, drawn on the model's device (``brsf_rng device``, the default since
ssaref 0.2.0: no host array, no copy per step, the same bits on CPU and GPU), or ``default_rng([seed, t])`` on
the host and copied (``brsf_rng host``, 0.1.0's draws); ``seed`` is drawn once and ``t`` counted, both kept in
the state, so a resumed run redraws exactly the same R_t.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import asnumpy, get_array_module
from ..rng import stream_key
from .feedback import (
    check_choice,
    draw,
    draw_on,
    draw_weight_shaped,
    fan_in_out,
    place,
    require_model,
    transport_keys,
)
from .base import AlignmentPair, FeedbackExport, Option, Rule, chain_updates

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

    ERROR_TRANSPORT = "chain"
    RELEASES_CACHES = True  # each cache is read by its layer's backward only (base.py)
    SUMMARY = "sign-concordant feedback (Liao et al.; Sanfiz & Akrout)"

    # conv2: a conv layer above the first, so a conv-shaped B carries the error (docs/golden-vectors.md)
    GOLDEN_VARIANTS = {"default": ({}, 0, {"models": ("mlp", "conv", "conv2")})}

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
        return chain_updates(  # B in place of W in eq. (2)
            model, caches, e, self.feedback(model), keep_signals=self.keep_signals
        )

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
    OPTIONS = {
        "sf_init": _SF_INIT,
        "brsf_rng": Option(
            str,
            "device",
            "where brSF draws |R_t|: device (a counter-based stream in xp, the same bits on CPU and GPU, no copy) "
            "or host (numpy default_rng([seed, t]) copied to the device every step: the draws of ssaref 0.1.0)",
            before={"0.2.0": "host"},
        ),
    }

    def __init__(self, **options):
        super().__init__(**options)
        check_choice(self.name, "brsf_rng", self.options["brsf_rng"], ("device", "host"))

    def init_state(self, model, rng):
        require_model(model, self.name)
        self._seed, self._t = int(rng.integers(0, 2**62)), 0  # host copies: no device read per step
        self.state = {
            "brsf_seed": np.asarray([self._seed], dtype=np.int64),
            "brsf_draws": np.asarray([0], dtype=np.int64),
        }

    def load_state_dict(self, d, xp):
        super().load_state_dict(d, xp)
        self._seed = int(np.asarray(asnumpy(self.state["brsf_seed"])).reshape(-1)[0])  # one read, at the resume
        self._t = int(np.asarray(asnumpy(self.state["brsf_draws"])).reshape(-1)[0])

    def magnitudes(self, model):
        """``|R_t|`` of draw ``t`` = the number of steps taken, one array per weight in ``transport_keys`` order:
        stream ``stream_key(seed, t, j)`` of the ``j``-th weight on its device, or ``default_rng([seed, t])`` on the
        host (``brsf_rng``)."""
        t, seed = self._t, self._seed
        params = dict(model.named_params())
        dist = self.options["sf_init"]
        out = {}
        if self.options["brsf_rng"] == "host":
            rng = np.random.default_rng([seed, t])
            for key, _, _ in transport_keys(model):
                fi, fo = fan_in_out(params[key].shape)
                out[key] = place(model, np.abs(draw(rng, params[key].shape, dist, fi, fo)))
            return out
        for j, (key, _, _) in enumerate(transport_keys(model)):  # stream (seed, t, j), drawn where W lives
            W = params[key]
            fi, fo = fan_in_out(W.shape)
            out[key] = abs(draw_on(get_array_module(W), stream_key(seed, t, j), W.shape, dist, fi, fo, W.dtype))
        return out

    def feedback(self, model):
        params = dict(model.named_params())
        return {
            key: R * get_array_module(R).sign(params[key])  # B = |R_t| o sign(W)
            for key, R in self.magnitudes(model).items()
        }

    def updates(self, model, caches, e, batch):
        out = super().updates(model, caches, e, batch)  # with draw t
        self._t += 1  # the next step redraws
        self.state["brsf_draws"] = np.asarray([self._t], dtype=np.int64)  # a new host array (state_dict holds the old)
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
