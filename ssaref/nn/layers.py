"""Layers: parameters + initialisation around the pure ops.

A layer holds its parameters (``params``) and non-trainable state (``buffers``)
and nothing else: ``forward`` returns the output and the cache that
``backward`` needs; the caller keeps the cache.  ``backward`` returns the input
gradient and the parameter gradients.  Its ``feedback`` argument replaces a
weight by another matrix *only* for transporting the error to the input, which
is all that feedback-alignment rules need from a layer (see docs/internals.md);
layers know nothing about rules.
"""

from __future__ import annotations

from typing import Any

import math

from ..ops import activations as act
from ..ops import conv as conv_ops
from ..ops import linear as lin
from ..ops import norm
from ..ops import pool

__all__ = [
    "Layer",
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool",
    "ReLU",
    "Tanh",
    "Sigmoid",
    "Flatten",
    "BatchNorm",
]


def _pair(v):
    return (int(v), int(v)) if not isinstance(v, (tuple, list)) else (int(v[0]), int(v[1]))


def _uniform(rng, xp, dtype, shape, bound):
    return rng.uniform(-bound, bound, size=shape).astype(dtype, copy=False)


class Layer:
    """Base layer: no parameters, identity."""

    kind = "layer"

    def __init__(self):
        self.params: dict = {}
        self.buffers: dict = {}

    def forward(self, x, train=True):
        """Return ``(y, cache)``."""
        raise NotImplementedError

    def backward(self, dy, cache, need_dx=True, feedback=None):
        """Return ``(dx or None, {param name: gradient})``."""
        raise NotImplementedError

    def output_shape(self, in_shape):
        """Per-example output shape for a per-example input shape (no batch axis)."""
        return in_shape

    def geometry(self) -> dict:
        """Hyper-parameters needed to rebuild the layer (kernel, stride, ...)."""
        return {}

    def __repr__(self):
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"


class Linear(Layer):
    """``y = x W^T + b`` with ``W`` of shape (m, n) = (d_i, d_{i-1}) as in eq. (1).

    Initialised like ``torch.nn.Linear``: U(-1/sqrt(n), 1/sqrt(n)) for W and b.
    """

    kind = "linear"

    def __init__(self, n_in, n_out, *, bias=True, xp, dtype, rng):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.params["W"] = xp.asarray(_uniform(rng, xp, dtype, (n_out, n_in), bound))
        if bias:
            self.params["b"] = xp.asarray(_uniform(rng, xp, dtype, (n_out,), bound))

    def forward(self, x, train=True):
        if x.ndim != 2 or x.shape[1] != self.params["W"].shape[1]:
            raise ValueError(f"Linear expects input (B, {self.params['W'].shape[1]}), got {tuple(x.shape)}")
        return lin.linear_forward(x, self.params["W"], self.params.get("b")), x

    def backward(self, dy, cache, need_dx=True, feedback=None):
        x = cache
        dW, db = lin.linear_backward_params(dy, x, has_bias="b" in self.params)
        grads = {"W": dW}
        if db is not None:
            grads["b"] = db
        dx = None
        if need_dx:
            W_t = self.params["W"] if not feedback or "W" not in feedback else feedback["W"]
            dx = lin.linear_backward_input(dy, W_t)
        return dx, grads

    def output_shape(self, in_shape):
        return (self.params["W"].shape[0],)


class Conv2d(Layer):
    """2-D convolution, NCHW, weights (C_out, C_in, kh, kw); torch.nn.Conv2d init."""

    kind = "conv2d"

    def __init__(self, c_in, c_out, kernel, *, stride=1, padding=0, bias=True, xp, dtype, rng):
        super().__init__()
        kh, kw = _pair(kernel)
        self.stride, self.padding = _pair(stride), _pair(padding)
        bound = 1.0 / math.sqrt(c_in * kh * kw)
        self.params["W"] = xp.asarray(_uniform(rng, xp, dtype, (c_out, c_in, kh, kw), bound))
        if bias:
            self.params["b"] = xp.asarray(_uniform(rng, xp, dtype, (c_out,), bound))

    def forward(self, x, train=True):
        W = self.params["W"]
        if x.ndim != 4 or x.shape[1] != W.shape[1]:
            raise ValueError(f"Conv2d expects input (N, {W.shape[1]}, H, W), got {tuple(x.shape)}")
        return conv_ops.conv2d_forward(x, W, self.params.get("b"), self.stride, self.padding)

    def backward(self, dy, cache, need_dx=True, feedback=None):
        if dy.ndim == 4:
            dy = conv_ops.batch_innermost(dy)  # one layout copy (if any) for both GEMMs below
        dW, db = conv_ops.conv2d_backward_params(dy, cache)
        grads = {"W": dW}
        if db is not None:
            grads["b"] = db
        dx = None
        if need_dx:
            W_t = self.params["W"] if not feedback or "W" not in feedback else feedback["W"]
            dx = conv_ops.conv2d_backward_input(dy, W_t, cache)
        return dx, grads

    def output_shape(self, in_shape):
        c, h, w = in_shape
        co, _, kh, kw = self.params["W"].shape
        (sy, sx), (py, px) = self.stride, self.padding
        return (co, (h + 2 * py - kh) // sy + 1, (w + 2 * px - kw) // sx + 1)

    def geometry(self):
        return {"stride": self.stride, "padding": self.padding, "kernel": tuple(self.params["W"].shape[2:])}


class _Pool(Layer):
    _fwd: Any = None
    _bwd: Any = None

    def __init__(self, kernel, stride=None, padding=0):
        super().__init__()
        self.kernel = _pair(kernel)
        self.stride = _pair(stride) if stride is not None else self.kernel
        self.padding = _pair(padding)

    def forward(self, x, train=True):
        return type(self)._fwd(x, self.kernel, self.stride, self.padding)

    def backward(self, dy, cache, need_dx=True, feedback=None):
        return (type(self)._bwd(dy, cache) if need_dx else None), {}

    def output_shape(self, in_shape):
        c, h, w = in_shape
        (kh, kw), (sy, sx), (py, px) = self.kernel, self.stride, self.padding
        return (c, (h + 2 * py - kh) // sy + 1, (w + 2 * px - kw) // sx + 1)

    def geometry(self):
        return {"kernel": self.kernel, "stride": self.stride, "padding": self.padding}


class MaxPool2d(_Pool):
    kind = "maxpool2d"
    _fwd = staticmethod(pool.maxpool2d_forward)
    _bwd = staticmethod(pool.maxpool2d_backward)


class AvgPool2d(_Pool):
    kind = "avgpool2d"
    _fwd = staticmethod(pool.avgpool2d_forward)
    _bwd = staticmethod(pool.avgpool2d_backward)


class _Elementwise(Layer):
    """A parameter-free layer given by a forward/backward pair of ops."""

    _fwd: Any = None
    _bwd: Any = None

    def forward(self, x, train=True):
        return type(self)._fwd(x)

    def backward(self, dy, cache, need_dx=True, feedback=None):
        return (type(self)._bwd(dy, cache) if need_dx else None), {}


class GlobalAvgPool(_Elementwise):
    """(N, C, H, W) -> (N, C)."""

    kind = "global_avgpool"
    _fwd = staticmethod(pool.global_avgpool_forward)
    _bwd = staticmethod(pool.global_avgpool_backward)

    def output_shape(self, in_shape):
        return (in_shape[0],)


class ReLU(_Elementwise):
    kind = "relu"
    _fwd = staticmethod(act.relu_forward)
    _bwd = staticmethod(act.relu_backward)


class Tanh(_Elementwise):
    kind = "tanh"
    _fwd = staticmethod(act.tanh_forward)
    _bwd = staticmethod(act.tanh_backward)


class Sigmoid(_Elementwise):
    kind = "sigmoid"
    _fwd = staticmethod(act.sigmoid_forward)
    _bwd = staticmethod(act.sigmoid_backward)


class Flatten(_Elementwise):
    kind = "flatten"
    _fwd = staticmethod(act.flatten_forward)
    _bwd = staticmethod(act.flatten_backward)

    def output_shape(self, in_shape):
        return (int(math.prod(in_shape)),)


class BatchNorm(Layer):
    """Batch normalisation over (N,) for 2-D input or (N, H, W) for 4-D input.

    ``gamma`` = 1, ``beta`` = 0 at initialisation; running statistics are buffers
    replaced (not mutated) after each training forward pass.
    """

    kind = "batchnorm"

    def __init__(self, num_features, *, momentum=0.1, eps=1e-5, xp, dtype, rng=None):
        super().__init__()
        self.momentum, self.eps = float(momentum), float(eps)
        self.params["gamma"] = xp.ones(num_features, dtype=dtype)
        self.params["beta"] = xp.zeros(num_features, dtype=dtype)
        self.buffers["running_mean"] = xp.zeros(num_features, dtype=dtype)
        self.buffers["running_var"] = xp.ones(num_features, dtype=dtype)
        self.group = None  # cross-replica statistics (--sync-bn), see ops.norm.batchnorm_forward

    def forward(self, x, train=True):
        C = self.params["gamma"].shape[0]
        if x.ndim not in (2, 4) or x.shape[1] != C:
            raise ValueError(f"BatchNorm expects (N, {C}) or (N, {C}, H, W), got {tuple(x.shape)}")
        y, cache, mean, var = norm.batchnorm_forward(
            x,
            self.params["gamma"],
            self.params["beta"],
            self.buffers["running_mean"],
            self.buffers["running_var"],
            train=train,
            momentum=self.momentum,
            eps=self.eps,
            group=self.group,
        )
        if train:
            self.buffers["running_mean"][...] = mean
            self.buffers["running_var"][...] = var
        return y, cache

    def backward(self, dy, cache, need_dx=True, feedback=None):
        dx, dgamma, dbeta = norm.batchnorm_backward(dy, cache, need_dx)  # one pass for both (same numbers)
        return dx, {"gamma": dgamma, "beta": dbeta}

    def geometry(self):
        return {"momentum": self.momentum, "eps": self.eps}
