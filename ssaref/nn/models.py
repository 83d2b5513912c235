"""Models by name.  Every model is a ``Sequential`` whose last layer is a ``Linear`` producing logits.

Architecture choices the paper leaves open are recorded in docs/decisions.md
("Model definitions").  ``width_mult`` scales every channel count (tests use
narrow versions of the same graphs).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .containers import ResidualBlock, Sequential
from .layers import BatchNorm, Conv2d, Flatten, GlobalAvgPool, Layer, Linear, MaxPool2d, ReLU, Sigmoid, Tanh

__all__ = ["MODELS", "build_model", "WEIGHT_INITS", "BIAS_INITS", "reinitialise", "dense_layers"]

_ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}


def _ch(c, width_mult):
    return max(1, int(round(c * width_mult)))


def _mlp(in_shape, k, ctx, hidden=(256, 256), activation="relu", **_):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
    layers: list[Layer] = [Flatten()]
    d = int(math.prod(in_shape))
    for h in hidden:
        layers += [Linear(d, int(h), **ctx), _ACTIVATIONS[activation]()]
        d = int(h)
    return layers


def _conv_stack(spec, c, ctx, *, kernel=3, batchnorm=False, width_mult=1.0):
    """spec: channel counts and 'M' (2x2 max-pool)."""
    layers: list[Layer] = []
    for s in spec:
        if s == "M":
            layers.append(MaxPool2d(2))
            continue
        co = _ch(s, width_mult)
        layers.append(Conv2d(c, co, kernel, padding=kernel // 2, bias=not batchnorm, **ctx))
        if batchnorm:
            layers.append(BatchNorm(co, xp=ctx["xp"], dtype=ctx["dtype"]))
        layers.append(ReLU())
        c = co
    return layers


def _lenet(in_shape, k, ctx, width_mult=1.0, **_):
    c1, c2 = _ch(6, width_mult), _ch(16, width_mult)
    return [
        Conv2d(in_shape[0], c1, 5, padding=2, **ctx),
        ReLU(),
        MaxPool2d(2),
        Conv2d(c1, c2, 5, **ctx),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        "fc",
        _ch(120, width_mult),
        _ch(84, width_mult),
    ]


def _smallconv(in_shape, k, ctx, width_mult=1.0, kernel=3, **_):
    # conv96-pool-conv192-pool-conv512-pool-fc1024 (paper section 6)
    return _conv_stack([96, "M", 192, "M", 512, "M"], in_shape[0], ctx, kernel=kernel, width_mult=width_mult) + [
        Flatten(),
        "fc",
        _ch(1024, width_mult),
    ]


def _convnet(in_shape, k, ctx, width_mult=1.0, **_):
    # a small Fashion-MNIST conv net: conv32-pool-conv64-pool-fc128
    return _conv_stack([32, "M", 64, "M"], in_shape[0], ctx, width_mult=width_mult) + [
        Flatten(),
        "fc",
        _ch(128, width_mult),
    ]


def _vgg13(in_shape, k, ctx, width_mult=1.0, batchnorm=True, **_):
    spec = [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    return _conv_stack(spec, in_shape[0], ctx, batchnorm=batchnorm, width_mult=width_mult) + [Flatten()]


def _basic_block(c_in, c_out, stride, ctx):
    xp, dtype = ctx["xp"], ctx["dtype"]
    main = Sequential(
        [
            Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, **ctx),
            BatchNorm(c_out, xp=xp, dtype=dtype),
            ReLU(),
            Conv2d(c_out, c_out, 3, padding=1, bias=False, **ctx),
            BatchNorm(c_out, xp=xp, dtype=dtype),
        ]
    )
    shortcut = None
    if stride != 1 or c_in != c_out:  # projection shortcut (option B of He et al.)
        shortcut = Sequential(
            [Conv2d(c_in, c_out, 1, stride=stride, bias=False, **ctx), BatchNorm(c_out, xp=xp, dtype=dtype)]
        )
    return ResidualBlock(main, shortcut)


def _resnet(in_shape, ctx, stages, blocks, width_mult):
    xp, dtype = ctx["xp"], ctx["dtype"]
    c = _ch(stages[0], width_mult)
    layers = [Conv2d(in_shape[0], c, 3, padding=1, bias=False, **ctx), BatchNorm(c, xp=xp, dtype=dtype), ReLU()]
    for si, s in enumerate(stages):
        co = _ch(s, width_mult)
        for bi in range(blocks):
            layers.append(_basic_block(c, co, 2 if (si > 0 and bi == 0) else 1, ctx))
            c = co
    return layers + [GlobalAvgPool()]


def _cifar_resnet(depth):
    def build(in_shape, k, ctx, width_mult=1.0, **_):
        return _resnet(in_shape, ctx, (16, 32, 64), (depth - 2) // 6, width_mult)

    return build


def _resnet18(in_shape, k, ctx, width_mult=1.0, **_):
    return _resnet(in_shape, ctx, (64, 128, 256, 512), 2, width_mult)


MODELS = {
    "mlp": _mlp,
    "lenet": _lenet,
    "smallconv": _smallconv,
    "convnet": _convnet,
    "vgg13": _vgg13,
    "resnet20": _cifar_resnet(20),
    "resnet32": _cifar_resnet(32),
    "resnet56": _cifar_resnet(56),
    "resnet18": _resnet18,
}


def build_model(name, input_shape, num_classes, *, xp=np, dtype=np.float32, seed=0, rng=None, **options):
    """Build model ``name`` for per-example ``input_shape`` (C, H, W) and ``num_classes``.

    Parameters are drawn on the host from ``rng`` (or ``np.random.default_rng(seed)``)
    and then placed with ``xp``, so CPU and GPU runs start from identical weights.
    The final layer is always ``Linear(features, num_classes)``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    ctx = {"xp": xp, "dtype": np.dtype(dtype), "rng": rng}
    spec = MODELS[name](input_shape, int(num_classes), ctx, **options)
    layers, shape = [], input_shape
    for i, item in enumerate(spec):
        if item == "fc":  # the remaining ints are hidden widths of a ReLU MLP head
            for h in spec[i + 1 :]:
                layers += [Linear(shape[0], int(h), **ctx), ReLU()]
                shape = (int(h),)
            break
        try:
            shape = item.output_shape(shape)
        except Exception as exc:  # pragma: no cover - defensive
            raise ValueError(f"model {name!r} does not fit input shape {input_shape}: {exc}") from None
        if min(shape) < 1:
            raise ValueError(
                f"model {name!r} does not fit input shape {input_shape}: "
                f"layer {i} ({type(item).__name__}) would output {shape}"
            )
        layers.append(item)
    if len(shape) != 1:
        raise ValueError(f"model {name!r}: features before the classifier have shape {shape}, expected 1-D")
    model = Sequential(layers + [Linear(shape[0], int(num_classes), **ctx)])
    model.name, model.input_shape, model.num_classes = name, input_shape, int(num_classes)
    return model


# ---------------------------------------------------------------------------------------------------
# initialisation options (the SVD rules' ``svd_init`` / ``bias_init``, docs/decisions.md D4.11)
# ---------------------------------------------------------------------------------------------------
WEIGHT_INITS = ("default", "kaiming_uniform_a5", "orthogonal")
BIAS_INITS = ("uniform", "zero")


def dense_layers(layer):
    """Every ``Linear`` / ``Conv2d`` under ``layer`` (recursively), in forward order."""
    out = []
    for child in getattr(layer, "children", {}).values():
        if getattr(child, "kind", None) in ("linear", "conv2d") and "W" in child.params:
            out.append(child)
        else:
            out += dense_layers(child)
    return out


def _kaiming_uniform_a5(rng, shape):
    """torch.nn.init.kaiming_uniform_(W, a=sqrt(5)) (torch's default for Linear / Conv2d weights): gain
    sqrt(2 / (1 + a^2)) = sqrt(1/3), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in), fan_in = prod(shape[1:])."""
    fan_in = int(math.prod(shape[1:]))
    gain = math.sqrt(2.0 / (1.0 + 5.0))
    bound = gain * math.sqrt(3.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape)


def _orthogonal(rng, shape, gain=1.0):
    """torch.nn.init.orthogonal_(W, gain): QR of a standard normal (rows, cols) matrix, rows = shape[0],
    cols = prod(shape[1:]) (transposed when rows < cols), columns signed by diag(R); all singular values ``gain``."""
    rows, cols = int(shape[0]), int(math.prod(shape[1:]))
    flat = rng.standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))
    if rows < cols:
        q = q.T
    return gain * q.reshape(shape)


def reinitialise(model, *, weight="default", bias="uniform", rng=None):
    """Redraw the dense weights and biases of ``model`` in place (before an SVD rule converts it).

    Parameters
    ----------
    weight : ``"default"`` -- keep the model's own draw, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (which *is* torch's
        default init); ``"kaiming_uniform_a5"`` -- torch's ``kaiming_uniform_(a=sqrt(5))`` drawn afresh from
        ``rng`` (the same distribution as ``default``, another draw); ``"orthogonal"`` -- torch's
        ``orthogonal_`` (gain 1) on the weight viewed as (out, fan_in).
    bias : ``"uniform"`` -- keep the model's own draw; ``"zero"`` -- zeros.
    rng : numpy.random.Generator for the new weights (host float64 draws, cast to the model's dtype), in forward
        order of the layers.

    The arrays are overwritten in place, so the containers' flat views stay valid.
    """
    if weight not in WEIGHT_INITS:
        raise ValueError(f"unknown weight initialisation {weight!r}; choose one of {', '.join(WEIGHT_INITS)}")
    if bias not in BIAS_INITS:
        raise ValueError(f"unknown bias initialisation {bias!r}; choose one of {', '.join(BIAS_INITS)}")
    if weight != "default" and rng is None:
        raise ValueError("reinitialise: a new weight draw needs a generator (rng)")
    for layer in dense_layers(model):
        W = layer.params["W"]
        if weight != "default":
            new = _kaiming_uniform_a5(rng, W.shape) if weight == "kaiming_uniform_a5" else _orthogonal(rng, W.shape)
            W[...] = get_array_module(W).asarray(new.astype(W.dtype))
        if bias == "zero" and "b" in layer.params:
            layer.params["b"][...] = 0
    return model
