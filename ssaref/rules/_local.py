"""Shared machinery of the local-loss rules (PredSim, AugLocal): rules whose hidden segments learn from a loss of
their own, computed by auxiliary networks the rule owns.

* The hidden segments are DFA's (``feedback.segments``: a weight layer and the layers after it up to the next
  weight layer; a residual block is one segment).  Each segment's *block output* is the output of its injection
  point (``inject="before_pool"``: before its pooling/flatten layers, as the reference codes' blocks end before
  the pooling layer that follows them).
* ``AuxNet``: an auxiliary network, a ``Sequential`` of ordinary ssaref layers whose arrays are the rule's state
  (``"aux/<segment>/<head>.<param key>"``) and its ``learnable`` arrays: the run's optimiser updates them like
  parameters, checkpoints save them with the rule state, MPI ranks average their directions like every update.
* ``LocalLossRule.updates``: the output layer learns from ``e`` (eq. (7)) as in BP; every hidden segment receives
  ``dL_i/dh_i``, the gradient of its own local loss at its block output, carried back through the segment's own
  layers only (``feedback.local_updates``), so no gradient crosses segments; the auxiliary networks get the
  gradient of the same local loss.  A subclass builds the auxiliary networks (``build_aux``) and defines the
  local loss (``local_loss``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from ..nn.containers import Sequential, collect
from .feedback import check_choice, layer_output_shapes, local_updates, require_model, segments
from .base import AuxNetwork, FeedbackExport, Learnable, Rule

__all__ = ["ForwardRecord", "LocalLossRule", "aux_context"]


class ForwardRecord(NamedTuple):
    """What a local-loss rule's forward pass keeps: one cache per top-level layer and every layer's output."""

    caches: list
    outs: list


def aux_context(model, rng):
    """Layer-constructor context for auxiliary layers: the model's array module and dtype, drawn from ``rng`` on the
    host (so CPU and GPU runs of one seed start from the same auxiliary weights)."""
    _, p = next(iter(model.named_params()))
    return {"xp": get_array_module(p), "dtype": p.dtype, "rng": rng}


class LocalLossRule(Rule):
    """Base of PredSim and AugLocal (module docstring).  Subclasses set ``INJECT`` (the name of their inject option) and
    implement ``build_aux(model, seg, shape, rng)`` -> ``{head name: Sequential}`` and
    ``local_loss(seg, h, batch, ctx)`` -> ``(loss, dL/dh, {head: {param key: gradient}})``."""

    ERROR_TRANSPORT = "local"

    INJECT = "local_inject"

    def __init__(self, **options):
        super().__init__(**options)
        check_choice(self.name, self.INJECT, self.options[self.INJECT], ("before_pool", "segment"))
        self.heads: dict = {}  # segment key -> {head name: Sequential}
        self._segs: list = []
        self._in_shapes: dict = {}  # segment key -> per-example shape of its block output

    # -- set-up ----------------------------------------------------------------------------------------
    def segments_of(self, model):
        """The hidden segments this rule trains (``feedback.segments``, residual blocks whole)."""
        return segments(model, self.name, inject=self.options[self.INJECT], residual="block")

    def init_state(self, model, rng):
        require_model(model, self.name)
        self._segs = self.segments_of(model)
        shapes = layer_output_shapes(model)
        self.heads, self.state, self._in_shapes = {}, {}, {}
        for seg in self._segs:
            self._in_shapes[seg.key] = tuple(int(d) for d in shapes[seg.inject])
            heads = self.build_aux(model, seg, tuple(shapes[seg.inject]), rng)
            self.heads[seg.key] = heads
            for hname, net in heads.items():
                for pkey, a in net.named_params():
                    self.state[f"aux/{seg.key}/{hname}.{pkey}"] = a

    def build_aux(self, model, seg, shape, rng) -> dict:
        raise NotImplementedError

    def learnable(self, model):
        out = []
        for seg in self._segs:
            for hname, net in self.heads[seg.key].items():
                for pkey, _ in net.named_params():
                    key = f"aux/{seg.key}/{hname}.{pkey}"
                    out.append(Learnable(key, self.state[key], int(seg.lead), f"aux.{hname}.{pkey}"))
        return out

    def aux_networks(self):
        return [
            AuxNetwork(int(seg.lead), hname, net, self._in_shapes[seg.key])
            for seg in self._segs
            for hname, net in self.heads[seg.key].items()
            if net.layers
        ]

    def feedback_export(self, model):
        """No feedback arrays; ``inject`` of every layer whose segment has a local loss (golden vectors: the block
        output its auxiliary networks read)."""
        out = FeedbackExport()
        for seg in self._segs:
            if self.heads[seg.key]:
                out.layer_attrs[int(seg.lead)] = {"inject": int(seg.inject)}
        return out

    def load_state_dict(self, d, xp) -> None:
        super().load_state_dict(d, xp)
        self._bind()

    def _bind(self):
        """Point every auxiliary layer (nested ones included) at its state array (a restore onto another device
        replaces the arrays), then rebuild the containers' flat views bottom-up."""
        for seg in self._segs:
            for hname, net in self.heads[seg.key].items():
                _rebind(net, "", lambda key, s=seg.key, h=hname: self.state[f"aux/{s}/{h}.{key}"])
                collect(net)

    # -- one step --------------------------------------------------------------------------------------
    def forward(self, model, x):
        """``(logits, ForwardRecord)``: the caches and every top-level layer's output (the block outputs)."""
        caches, outs = [], []
        for layer in model.layers:
            x, c = layer.forward(x, True)
            caches.append(c)
            outs.append(x)
        return x, ForwardRecord(caches, outs)

    def step_context(self, model, e, batch) -> dict:
        """Per-step values every segment's local loss shares (PredSim: the labels' similarity matrix)."""
        return {}

    def local_loss(self, seg, h, batch, ctx):
        raise NotImplementedError

    def updates(self, model, caches, e, batch):
        rec = caches
        ctx = self.step_context(model, e, batch)
        aux_updates: dict = {}

        def signal(seg):
            return self.segment_signal(model, seg, rec, e, batch, ctx, aux_updates)

        updates, signals = local_updates(model, rec.caches, e, self._segs, signal, keep_signals=self.keep_signals)
        updates.update(aux_updates)
        return updates, signals

    def segment_signal(self, model, seg, rec, e, batch, ctx, aux_updates):
        """The signal at ``seg``'s injection point: the gradient of its local loss (whose auxiliary gradients go
        into ``aux_updates``).  AugLocal's last hidden layer overrides it with the output layer's error."""
        _, dh, grads = self.local_loss(seg, rec.outs[seg.inject], batch, ctx)
        for hname, g in grads.items():
            aux_updates.update({f"aux/{seg.key}/{hname}.{k}": v for k, v in g.items()})
        return dh

    def local_losses(self, model, x, y) -> list:
        """Every segment's local loss on a batch (a float each, in forward order); for diagnostics and tests."""
        _, rec = self.forward(model, x)
        ctx = self.step_context(model, None, _Batch(x, y))
        return [
            float(self.local_loss(seg, rec.outs[seg.inject], _Batch(x, y), ctx)[0])
            for seg in self._segs
            if self.heads[seg.key]
        ]


def _rebind(layer, prefix, array_of):
    """Set every leaf layer's parameter ``name`` under ``layer`` to ``array_of(prefix + name)`` (the containers'
    flat views are stale until ``collect``)."""
    children = getattr(layer, "children", None)
    if not children:
        for name in layer.params:
            layer.params[name] = array_of(prefix + name)
        return
    for cname, child in children.items():
        _rebind(child, f"{prefix}{cname}.", array_of)


class _Batch(NamedTuple):
    x: object
    y: object


def labels_checked(y):
    """Whether labels still need their range check (host arrays; device labels were checked on the host)."""
    return isinstance(y, np.ndarray)


def run_head(net: Sequential, h, dscale_fn):
    """Forward ``h`` through an auxiliary ``net``, let ``dscale_fn(out)`` give ``(loss, dL/dout)``, and return
    ``(loss, dL/dh, {param key: gradient})``."""
    out, c = net.forward(h, True)
    loss, dout = dscale_fn(out)
    dh, grads = net.backward(dout, c, need_dx=True)
    return loss, dh, grads
