"""Shared machinery of the feedback-alignment family (FA, KP, DFA, sign-concordant FA, DRTP, PEPITA, SSA).

Two things live here:

* **drawing** fixed random arrays on the host from the run's generator and placing them on the model's
  device in the model's dtype, so CPU and GPU runs of one seed use the same feedback;
* the **segment decomposition** used by the direct rules (DFA, DRTP).  A *segment* is a weight layer
  (``Linear``, ``Conv2d`` or a whole ``ResidualBlock``) together with the parameter-free layers and
  ``BatchNorm`` layers that follow it up to the next weight layer.  A direct rule injects its signal at
  one point of the segment (its output, or just before its pooling/flatten layers) and carries it back
  to the weight layer through the segment's own layers, which gives ``(B_i delta a_N) o f'(a_i)`` for an
  MLP (eq. (3)) and the local gradient of BN's gamma/beta from the injected signal.

With ``residual="layer"`` a ``ResidualBlock`` is not one segment: every weight layer inside it leads its own
segment (see ``segments``), addressed by a dotted path (``"4.main.0"``) and carried back along a *route*
through the nested containers.  ``direct_updates`` is the one injection pass for both forms.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from .. import rng as rng_mod
from ..backend import get_array_module
from ..nn.containers import ReleasableCaches
from .base import first_param_layer

__all__ = [
    "WEIGHT_KINDS",
    "POOL_KINDS",
    "ACT_KINDS",
    "draw",
    "place",
    "first_param_layer",
    "weight_names",
    "fan_in_out",
    "Segment",
    "segments",
    "layer_output_shapes",
    "require_model",
    "direct_updates",
    "local_updates",
    "check_choice",
    "transport_keys",
    "param_keys_of_kind",
    "num_classes",
    "segment_dim",
    "draw_weight_shaped",
]

WEIGHT_KINDS = ("linear", "conv2d", "residual", "svd_linear", "svd_conv2d")
POOL_KINDS = ("maxpool2d", "avgpool2d", "global_avgpool", "flatten")
ACT_KINDS = ("relu", "tanh", "sigmoid")


def check_choice(rule, opt, value, choices):
    """Raise ValueError unless ``value`` is one of ``choices`` (names the rule and the option)."""
    if value not in choices:
        raise ValueError(f"method {rule!r}: option {opt}={value!r} is not one of {', '.join(choices)}")


def require_model(model, rule):
    """The model must be an ssaref ``Sequential`` ending in a ``Linear`` (or ``SVDLinear``) classifier."""
    layers = getattr(model, "layers", None)
    if not layers or getattr(layers[-1], "kind", None) not in ("linear", "svd_linear"):
        raise ValueError(
            f"method {rule!r} needs a Sequential model whose last layer is Linear, got {type(model).__name__}"
        )


def num_classes(model):
    """``d_N``: the number of outputs of the classifier (a Linear or SVDLinear last layer)."""
    last = model.layers[-1]
    return int(last.dims[0]) if last.kind == "svd_linear" else int(last.params["W"].shape[0])


def segment_dim(seg, shapes):
    """``d_i``: the size of a segment's injection point (per example), the rows of its ``B_i``."""
    return int(math.prod(seg.shape if seg.shape is not None else shapes[seg.inject]))


def place(model, host_array):
    """Put a host array on the model's device in the dtype of its parameters."""
    key, p = next(iter(model.named_params()))
    xp = get_array_module(p)
    return xp.asarray(np.asarray(host_array, dtype=p.dtype))


def fan_in_out(shape):
    """PyTorch's fan-in / fan-out of a weight of ``shape`` ((m, n) or (C_out, C_in, kh, kw))."""
    rf = int(math.prod(shape[2:])) if len(shape) > 2 else 1
    return int(shape[1]) * rf, int(shape[0]) * rf


# the half-widths b of the uniform laws U(-b, b), from (fan_in, fan_out)
_UNIFORM_BOUND = {
    "torch_default": lambda fi, fo: 1.0 / math.sqrt(fi),
    "xavier_uniform": lambda fi, fo: math.sqrt(6.0 / (fi + fo)),
    "kaiming_uniform": lambda fi, fo: math.sqrt(6.0 / fi),
}


def draw(rng, shape, dist, fan_in=None, fan_out=None):
    """Draw a host float64 array.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
    dist : str
        ``"torch_default"``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (ssaref's and PyTorch's weight init);
        ``"xavier_uniform"``: U(+-sqrt(6/(fan_in+fan_out)));
        ``"kaiming_uniform"``: U(+-sqrt(6/fan_in)) (``torch.nn.init.kaiming_uniform_`` with a=0, as in
        Frenkel et al.'s DFA/DRTP code); ``"gaussian"``: N(0, 1);
        ``"unit_col"``: N(0, 1) then every column (axis 0 of a 2-D array) scaled to unit l2 norm
        (the paper's section 4.3 for B_i in R^{d_i x d_N}).
    """
    shape = tuple(int(s) for s in shape)
    bound = _UNIFORM_BOUND.get(dist)
    if bound is not None:
        b = bound(fan_in, fan_out)
        return rng.uniform(-b, b, size=shape)
    if dist == "gaussian":
        return rng.standard_normal(shape)
    if dist == "unit_col":
        a = rng.standard_normal(shape)
        return a / np.linalg.norm(a, axis=0, keepdims=True)
    raise ValueError(f"unknown feedback distribution {dist!r}")


def draw_on(xp, key, shape, dist, fan_in=None, fan_out=None, dtype=None):
    """``draw``'s distributions, drawn where ``xp``'s arrays live from the counter-based stream ``key``
    (``ssaref.rng``): no host array, no host->device copy, the same bits on every backend for the uniform
    distributions (the Gaussian ones through ``log``/``cos`` may differ in the last ulp)."""
    shape = tuple(int(s) for s in shape)
    bound = _UNIFORM_BOUND.get(dist)
    if bound is not None:
        b = bound(fan_in, fan_out)
        return rng_mod.uniform(xp, key, shape, -b, b, dtype=dtype)
    if dist == "gaussian":
        return rng_mod.normal(xp, key, shape, dtype=dtype)
    if dist == "unit_col":
        a = rng_mod.normal(xp, key, shape)
        a /= xp.sqrt((a * a).sum(axis=0, keepdims=True))
        return a if dtype is None else a.astype(dtype)
    raise ValueError(f"unknown feedback distribution {dist!r}")


def weight_names(layer):
    """Names of the weight matrices/kernels of a layer that transport error ("W", "main.0.W", ...)."""
    return [k for k in layer.params if k == "W" or k.endswith(".W")]


def layer_output_shapes(model):
    """Per-example output shape of every top-level layer (needs ``model.input_shape``)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("model has no input_shape; build it with ssaref.nn.build_model")
    out = []
    for layer in model.layers:
        shape = tuple(layer.output_shape(tuple(shape)))
        out.append(shape)
    return out


class Segment:
    """A weight layer ``lead`` and the layers after it up to ``end`` (inclusive).

    ``inject``: the layer at whose output a direct rule delivers its signal.

    Top-level segments (the default) have integer ``lead``/``end``/``inject`` (layer indices of the model).
    Segments inside a residual block (``residual="layer"``) are addressed by dotted paths: ``lead``
    ``"4.main.0"`` is layer 0 of block 4's main branch.  Further attributes:

    ``key``: ``str(lead)``, the state key suffix (``"B/<key>"``);
    ``weight_key``: the flat parameter key of the lead's weight (``"1.W"``, ``"4.main.3.W"``);
    ``shape``: per-example shape of the injection point's output, or None (then ``shapes[inject]``);
    ``route``: ``(path, hi, lo, enter)``, how the signal is carried back (see ``direct_updates``).
    """

    def __init__(self, lead, end, inject, *, shape=None, route=None, weight_key=None):
        self.lead, self.end, self.inject = lead, end, inject
        self.key = str(lead)
        self.shape = None if shape is None else tuple(int(d) for d in shape)
        self.route = route if route is not None else ((), inject, lead, None)
        self.weight_key = weight_key

    def __repr__(self):
        return f"Segment(lead={self.lead!r}, end={self.end!r}, inject={self.inject!r})"


def _spans(kinds, inject, what, rule, params, where=""):
    """``[(lead, end, inject)]`` over a list of layer kinds, the last segment ending at the list's end.

    ``params[i]``: whether layer i has parameters; one before the first weight layer raises ValueError
    naming ``what(i)``.
    """
    n = len(kinds)
    leads = [i for i in range(n) if kinds[i] in WEIGHT_KINDS]
    for i in range(n):
        if params[i] and kinds[i] not in WEIGHT_KINDS and (not leads or i < leads[0]):
            raise ValueError(
                f"method {rule!r}: {what(i)} has parameters but no weight layer before it, so no "
                f"segment can train it{where}"
            )
    out = []
    for j, s in enumerate(leads):
        end = (leads[j + 1] - 1) if j + 1 < len(leads) else n - 1
        inj = end
        if inject == "before_pool":
            while inj > s and kinds[inj] in POOL_KINDS:
                inj -= 1
        out.append((s, end, inj))
    return out


def _branch_segments(model, b, shapes, rule, inject):
    """Per-layer segments of residual block ``b`` (``residual="layer"``).

    Inside each branch (``main``, ``shortcut``) every weight layer but the last leads a segment up to the next
    weight layer (signal injected at its end, or before its pooling); the last weight layer of each branch
    and what follows it to the branch's end feed the residual add and are routed from the block output:
    returns ``(inner segments, [(branch, lo, hi)] of those tails)``.
    """
    block = model.layers[b]
    in_shape = tuple(model.input_shape) if b == 0 else tuple(shapes[b - 1])
    inner, tails = [], []
    for br in ("main", "shortcut"):
        seq = getattr(block, br)
        lay = list(seq.layers)
        if not lay:
            continue  # identity shortcut: nothing to train
        for i, l in enumerate(lay):
            if l.kind == "residual":
                raise ValueError(
                    f"method {rule!r}: residual block {b} holds a nested residual block at "
                    f"{b}.{br}.{i}; {rule}_residual=layer does not support nesting"
                )
        kinds = [l.kind for l in lay]
        params = [bool(l.params) for l in lay]
        sub = (
            []
            if not any(k in WEIGHT_KINDS for k in kinds)
            else _spans(kinds, inject, lambda i: f"layer {b}.{br}.{i} ({type(lay[i]).__name__})", rule, params)
        )
        sh, out_shapes = in_shape, []
        for l in lay:
            sh = tuple(l.output_shape(sh))
            out_shapes.append(sh)
        for s, end, inj in sub[:-1]:
            name = next(k for k in lay[s].params if k == "W" or k.endswith(".W"))
            inner.append(
                Segment(
                    f"{b}.{br}.{s}",
                    f"{b}.{br}.{end}",
                    f"{b}.{br}.{inj}",
                    shape=out_shapes[inj],
                    route=((b, br), inj, s, None),
                    weight_key=f"{b}.{br}.{s}.{name}",
                )
            )
        lo = sub[-1][0] if sub else 0
        if sub or any(params):  # a parameter-free branch without weights needs no route
            tails.append((br, lo, len(lay) - 1))
    return inner, tails


def segments(model, rule, inject="segment", residual="block"):
    """Hidden segments of ``model`` (the output Linear is not one) for a direct rule.

    ``inject="segment"`` delivers the signal at the segment's last layer;
    ``inject="before_pool"`` at the last layer that is not a pooling or flatten layer (for a conv
    layer followed by ReLU and max-pool: the ReLU output, as in Frenkel et al.'s code).

    ``residual="block"`` makes a ``ResidualBlock`` one segment (local BP inside it from the block output).
    ``residual="layer"`` splits it as a plain net: in each branch every weight layer with the BN/activation
    layers after it up to the next weight layer is a segment (lead ``"<b>.<branch>.<i>"``, signal injected
    at its end); the last weight layer of each branch (with its BN) feeds the residual add, so those form one
    segment keyed by the main branch's last weight layer (``"<b>.main.<i>"``), whose signal enters at the
    block output (or after the pooling/flatten layers that follow the block, as a top-level segment) and is
    carried back through the block's final ReLU and the add (the same ``dz`` to both branches).  The identity
    shortcut has no parameters.  Segments are listed in forward order.

    Raises ValueError when a layer with parameters precedes every weight layer (it could not be trained), in
    the model or (``residual="layer"``) in a branch of a block.
    """
    require_model(model, rule)
    check_choice(rule, "residual", residual, ("block", "layer"))
    layers = model.layers
    n = len(layers)
    kinds = [l.kind for l in layers[: n - 1]]
    params = [bool(l.params) for l in layers[: n - 1]]
    top = _spans(
        kinds,
        inject,
        lambda i: f"layer {i} ({type(layers[i]).__name__})",
        rule,
        params,
        f" (model {getattr(model, 'name', type(model).__name__)!r})",
    )
    if residual == "block" or not any(layers[s].kind == "residual" for s, _, _ in top):
        return [Segment(s, end, inj) for s, end, inj in top]
    shapes = layer_output_shapes(model)
    segs = []
    for s, end, inj in top:
        if layers[s].kind != "residual":
            segs.append(Segment(s, end, inj))
            continue
        inner, tails = _branch_segments(model, s, shapes, rule, inject)
        segs += inner
        if not tails:  # a block without parameters: nothing inside to route to
            segs.append(Segment(s, end, inj))
            continue
        br, lo, _ = next((t for t in tails if t[0] == "main"), tails[0])
        lead = f"{s}.{br}.{lo}"
        wname = next((k for k in getattr(layers[s], br).layers[lo].params if k == "W" or k.endswith(".W")), None)
        enter = tuple(((s, b), hi, l, None) for b, l, hi in tails)
        segs.append(
            Segment(
                lead,
                end,
                inj,
                shape=shapes[inj],
                route=((), inj, s, enter),
                weight_key=f"{lead}.{wname}" if wname else None,
            )
        )
    return segs


def transport_keys(model):
    """``[(flat key, layer index, name in layer)]`` of every weight that carries error to its input.

    The weight of the first parametric layer carries none when that layer is a Linear or Conv2d (BP stops
    there), so FA-type rules draw no feedback for it.
    """
    first = first_param_layer(model)
    out = []
    for k, layer in enumerate(model.layers):
        if k == first and layer.kind in ("linear", "conv2d"):
            continue
        out += [(f"{k}.{name}", k, name) for name in weight_names(layer)]
    return out


def draw_weight_shaped(model, rng, dist, transform=None):
    """``{weight key: array of the weight's shape}`` for every weight that transports error (``transport_keys``),
    drawn in that order from ``rng`` with law ``dist`` (``draw``; fans from the weight's shape), optionally passed
    through ``transform`` on the host (frSF: ``np.abs``), then placed on the model's device and dtype."""
    params = dict(model.named_params())
    out = {}
    for key, _, _ in transport_keys(model):
        shape = params[key].shape
        fi, fo = fan_in_out(shape)
        a = draw(rng, shape, dist, fi, fo)
        out[key] = place(model, transform(a) if transform is not None else a)
    return out


def param_keys_of_kind(model, kinds):
    """Flat keys of the parameters of every layer (nested ones included) whose kind is in ``kinds``."""
    out: list[str] = []

    def walk(layer, prefix):
        if layer.kind in kinds:
            out.extend(prefix + k for k in layer.params)
            return
        for name, child in (getattr(layer, "children", None) or {}).items():
            walk(child, f"{prefix}{name}.")

    walk(model, "")
    return out


# ResidualBlock.forward's cache is (c_main, c_short, c_relu) (nn/containers.py)
_BRANCH_CACHE = {"main": 0, "shortcut": 1}


def _container(model, caches, path):
    """The Sequential at ``path`` (e.g. ``(4, "main")``; ``()`` is the model) and its list of caches."""
    seq, cs = model, caches
    for p in path:
        if isinstance(p, str):  # a branch of the residual block reached so far
            seq, cs = getattr(seq, p), cs[_BRANCH_CACHE[p]]
        else:
            seq, cs = seq.layers[p], cs[p]
    return seq, cs


def _carry(model, caches, delta, route, updates, signals, frozen, wanted=None):
    """Carry ``delta`` (at the output of layer ``hi`` of the container at ``path``) back to layer ``lo``.

    ``route = (path, hi, lo, enter)``.  Every layer from ``hi`` down to ``lo`` runs its own backward (the
    weight layer ``lo`` without an input gradient: no error passes between segments).  When ``enter`` is not
    None, layer ``lo`` is a ResidualBlock entered instead: the block's final ReLU, then the add hands the
    same ``dz`` to every sub-route in ``enter`` (one per branch, each with its path inside the block).
    Only top-level layers get an entry in ``signals``, and with ``wanted`` (a set of indices) only those.
    """
    path, hi, lo, enter = route
    seq, cs = _container(model, caches, path)
    prefix = "".join(f"{p}." for p in path)
    release = not path and isinstance(caches, ReleasableCaches)  # top-level caches, each used by one segment
    for k in range(hi, lo - 1, -1):
        layer, cache = seq.layers[k], cs[k]
        if not path and signals is not None and (wanted is None or k in wanted):
            signals[k] = delta
        if k == lo and enter is not None:
            # y = relu(main(x) + shortcut(x)): dz = dy o relu'(z), passed unchanged to both branches
            dz, _ = layer.relu.backward(delta, cache[2])
            del cache
            for sub in enter:
                _carry(model, caches, dz, sub, updates, signals, frozen, wanted)
            if release:
                caches.release(k)
            return
        if release:
            caches.release(k)  # read by this layer's backward only (Rule.caches_read_after)
        # carried back locally; at the weight layer: delta W_i = [(B_i e) o f'(a_i)] h_{i-1}^T, eq. (3)
        delta, grads = layer.backward(delta, cache, need_dx=k > lo)
        del cache
        updates.update(
            {key: g for key, g in ((f"{prefix}{k}.{name}", g) for name, g in grads.items()) if key not in frozen}
        )


def direct_updates(
    model,
    caches,
    e,
    src,
    segs,
    feedback,
    shapes,
    train_output=True,
    frozen=(),
    *,
    keep_signals: bool | Collection[int] = True,
):
    """DFA's pass (eq. (3)): the output layer from ``e``, every hidden segment from ``B_i src``.

    Parameters
    ----------
    model : Sequential
    caches : list, one forward cache per layer.
    e : array (B, K), ``dL/da_N`` (eq. (7)); trains the output layer when ``train_output``.
    src : array (B, K), what the feedback projects (``e`` for DFA and SSA, the one-hot target for DRTP).
    segs : list of ``Segment`` (``segments``; nested ones carry a route).
    feedback : dict, ``lead -> B_i`` of shape (d_i, K), d_i = size of the injection point's output.
    shapes : list of per-example output shapes of every top-level layer (``layer_output_shapes``).
    frozen : collection of flat parameter keys that get no update (their keys are absent from ``updates``);
        the signal still passes through their layers' backward.
    keep_signals : collect ``signals`` (else it is empty, and each signal is freed once carried on); a set of
        top-level layer indices: collect those only.

    Returns
    -------
    (updates, signals) : local gradients of every parameter given the signal its segment received, and the
        signal delivered to each top-level layer's output.
    """

    def signal(seg):
        shape = seg.shape if seg.shape is not None else shapes[seg.inject]
        delta = src @ feedback[seg.lead].T  # B_i delta a_N for every example: (B, d_i)
        return delta.reshape((delta.shape[0],) + tuple(shape))

    return local_updates(model, caches, e, segs, signal, train_output, frozen, keep_signals=keep_signals)


def local_updates(
    model, caches, e, segs, signal, train_output=True, frozen=(), *, keep_signals: bool | Collection[int] = True
):
    """The one injection pass of the direct and local rules: the output layer from ``e`` (when ``train_output``),
    every hidden segment from ``signal(seg)``, an array of the batch's shape at the segment's injection point
    (DFA: ``B_i e``; PredSim/AugLocal: the gradient of the segment's own local loss), carried back through the
    segment's own layers only (no error passes between segments).  ``frozen``, ``keep_signals``: as
    ``direct_updates``.  ``caches`` a ``nn.containers.ReleasableCaches``: each top-level cache is dropped once
    its layer's backward has run.

    Returns ``(updates, signals)`` as ``direct_updates``.
    """
    updates: dict = {}
    wanted = None if isinstance(keep_signals, bool) else frozenset(keep_signals)  # None: all or none
    collect = keep_signals if wanted is None else bool(wanted)
    signals: dict | None = {} if collect else None
    frozen = frozenset(frozen)
    N = len(model.layers) - 1
    if train_output:  # output layer: delta W_N = e h_{N-1}^T, as BP
        if signals is not None and (wanted is None or N in wanted):
            signals[N] = e
        _, grads = model.layers[N].backward(e, caches[N], need_dx=False)
        if isinstance(caches, ReleasableCaches):
            caches.release(N)
        updates.update({f"{N}.{k}": g for k, g in grads.items()})
    for seg in segs:
        _carry(model, caches, signal(seg), seg.route, updates, signals, frozen, wanted)
    return updates, signals or {}
