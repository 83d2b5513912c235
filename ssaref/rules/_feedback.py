"""Shared machinery of the feedback-alignment family (FA, DFA, sign-concordant FA, DRTP, PEPITA).

Two things live here:

* **drawing** fixed random arrays on the host from the run's generator and placing them on the model's
  device in the model's dtype, so CPU and GPU runs of one seed use the same feedback;
* the **segment decomposition** used by the direct rules (DFA, DRTP).  A *segment* is a weight layer
  (``Linear``, ``Conv2d`` or a whole ``ResidualBlock``) together with the parameter-free layers and
  ``BatchNorm`` layers that follow it up to the next weight layer.  A direct rule injects its signal at
  one point of the segment (its output, or just before its pooling/flatten layers) and carries it back
  to the weight layer through the segment's own layers, which gives ``(B_i delta a_N) o f'(a_i)`` for an
  MLP (eq. (3)) and the local gradient of BN's gamma/beta from the injected signal.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module

__all__ = [
    "WEIGHT_KINDS", "POOL_KINDS", "ACT_KINDS", "draw", "place", "first_param_layer",
    "weight_names", "fan_in_out", "Segment", "segments", "layer_output_shapes", "require_model", "direct_updates",
    "check_choice", "transport_keys", "chain_updates",
]

WEIGHT_KINDS = ("linear", "conv2d", "residual")
POOL_KINDS = ("maxpool2d", "avgpool2d", "global_avgpool", "flatten")
ACT_KINDS = ("relu", "tanh", "sigmoid")


def check_choice(rule, opt, value, choices):
    """Raise ValueError unless ``value`` is one of ``choices`` (names the rule and the option)."""
    if value not in choices:
        raise ValueError(f"method {rule!r}: option {opt}={value!r} is not one of {', '.join(choices)}")


def require_model(model, rule):
    """The model must be an ssaref ``Sequential`` ending in a ``Linear`` classifier."""
    layers = getattr(model, "layers", None)
    if not layers or getattr(layers[-1], "kind", None) != "linear":
        raise ValueError(f"method {rule!r} needs a Sequential model whose last layer is Linear, "
                         f"got {type(model).__name__}")


def place(model, host_array):
    """Put a host array on the model's device in the dtype of its parameters."""
    key, p = next(iter(model.named_params()))
    xp = get_array_module(p)
    return xp.asarray(np.asarray(host_array, dtype=p.dtype))


def fan_in_out(shape):
    """PyTorch's fan-in / fan-out of a weight of ``shape`` ((m, n) or (C_out, C_in, kh, kw))."""
    rf = int(math.prod(shape[2:])) if len(shape) > 2 else 1
    return int(shape[1]) * rf, int(shape[0]) * rf


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
    if dist == "torch_default":
        b = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-b, b, size=shape)
    if dist == "xavier_uniform":
        b = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-b, b, size=shape)
    if dist == "kaiming_uniform":
        b = math.sqrt(6.0 / fan_in)
        return rng.uniform(-b, b, size=shape)
    if dist == "gaussian":
        return rng.standard_normal(shape)
    if dist == "unit_col":
        a = rng.standard_normal(shape)
        return a / np.linalg.norm(a, axis=0, keepdims=True)
    raise ValueError(f"unknown feedback distribution {dist!r}")


def weight_names(layer):
    """Names of the weight matrices/kernels of a layer that transport error ("W", "main.0.W", ...)."""
    return [k for k in layer.params if k == "W" or k.endswith(".W")]


def first_param_layer(model):
    """Index of the first top-level layer holding parameters (the error need not go below it)."""
    for i, layer in enumerate(model.layers):
        if layer.params:
            return i
    return len(model.layers)


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

    ``inject``: index of the layer at whose output a direct rule delivers its signal.
    """

    def __init__(self, lead, end, inject):
        self.lead, self.end, self.inject = lead, end, inject

    def __repr__(self):
        return f"Segment(lead={self.lead}, end={self.end}, inject={self.inject})"


def segments(model, rule, inject="segment"):
    """Hidden segments of ``model`` (the output Linear is not one) for a direct rule.

    ``inject="segment"`` delivers the signal at the segment's last layer;
    ``inject="before_pool"`` at the last layer that is not a pooling or flatten layer (for a conv
    layer followed by ReLU and max-pool: the ReLU output, as in Frenkel et al.'s code).

    Raises ValueError when a layer with parameters precedes every weight layer (it could not be trained).
    """
    require_model(model, rule)
    layers = model.layers
    n = len(layers)
    leads = [i for i in range(n - 1) if layers[i].kind in WEIGHT_KINDS]
    for i in range(n - 1):
        if layers[i].params and layers[i].kind not in WEIGHT_KINDS and (not leads or i < leads[0]):
            raise ValueError(f"method {rule!r}: layer {i} ({type(layers[i]).__name__}) has parameters but "
                             f"no weight layer before it, so no segment can train it (model "
                             f"{getattr(model, 'name', type(model).__name__)!r})")
    segs = []
    for j, s in enumerate(leads):
        end = (leads[j + 1] - 1) if j + 1 < len(leads) else n - 2
        inj = end
        if inject == "before_pool":
            while inj > s and layers[inj].kind in POOL_KINDS:
                inj -= 1
        segs.append(Segment(s, end, inj))
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


def chain_updates(model, caches, e, feedback):
    """BP's chain (eq. (2)) with each transported weight replaced by ``feedback[key]`` (FA-type rules).

    Parameters
    ----------
    model : Sequential
    caches : list, one forward cache per layer.
    e : array (B, K), ``dL/da_N`` (eq. (7)).
    feedback : dict[str, array], flat weight key -> matrix of that weight's shape used in its place.

    Returns
    -------
    (updates, signals) : the local gradients of every parameter given the error each layer received, and the
        error delivered to each layer's output.
    """
    updates, signals = {}, {}
    first = first_param_layer(model)
    delta = e  # delta a_N
    for k in range(len(model.layers) - 1, first - 1, -1):
        signals[k] = delta
        p = f"{k}."
        fb = {key[len(p):]: B for key, B in feedback.items() if key.startswith(p)} or None
        # dW_k = delta_k h_{k-1}^T (true local gradient); delta_{k-1} = (B_k delta_k) o f'(a_{k-1})
        delta, grads = model.layers[k].backward(delta, caches[k], need_dx=k > first, feedback=fb)
        updates.update({p + name: g for name, g in grads.items()})
    return updates, signals


def direct_updates(model, caches, e, src, segs, feedback, shapes, train_output=True):
    """DFA's pass (eq. (3)): the output layer from ``e``, every hidden segment from ``B_i src``.

    Parameters
    ----------
    model : Sequential
    caches : list, one forward cache per layer.
    e : array (B, K), ``dL/da_N`` (eq. (7)); trains the output layer when ``train_output``.
    src : array (B, K), what the feedback projects (``e`` for DFA and SSA, the one-hot target for DRTP).
    segs : iterable of ``(lead, inject)``: a segment's first layer and the layer whose output receives the signal.
    feedback : dict[int, array], ``lead -> B_i`` of shape (d_i, K), d_i = size of the injection point's output.
    shapes : list of per-example output shapes of every layer (``layer_output_shapes``).

    Returns
    -------
    (updates, signals) : local gradients of every parameter given the signal its segment received, and the
        signal delivered to each layer's output.
    """
    updates, signals = {}, {}
    N = len(model.layers) - 1
    if train_output:  # output layer: delta W_N = e h_{N-1}^T, as BP
        signals[N] = e
        _, grads = model.layers[N].backward(e, caches[N], need_dx=False)
        updates.update({f"{N}.{k}": g for k, g in grads.items()})
    for lead, inject in segs:
        delta = src @ feedback[lead].T  # B_i delta a_N for every example: (B, d_i)
        delta = delta.reshape((delta.shape[0],) + tuple(shapes[inject]))
        for k in range(inject, lead - 1, -1):
            signals[k] = delta
            # carried back locally; at the weight layer: delta W_i = [(B_i e) o f'(a_i)] h_{i-1}^T, eq. (3)
            delta, grads = model.layers[k].backward(delta, caches[k], need_dx=k > lead)
            updates.update({f"{k}.{name}": g for name, g in grads.items()})
    return updates, signals
