"""The PyTorch mirror of an ssaref model: the torch side of the benchmark and of the memory probe."""

from __future__ import annotations

import numpy as np

from ..backend import asnumpy


def torch_mirror(model):
    """A ``torch.nn.Module`` with the same graph, weights and BatchNorm buffers as an ssaref (dense) model, in the
    model's dtype (float32 or float64).

    Layer kinds: sequential, linear, conv2d, max/avg pooling, global average pooling, relu/tanh/sigmoid,
    flatten, batchnorm (1-D or 2-D by the input it sees) and residual blocks (``relu(main(x) + shortcut(x))``).
    """
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, main, shortcut):
            super().__init__()
            self.main, self.shortcut = main, shortcut

        def forward(self, x):
            return torch.relu(self.main(x) + self.shortcut(x))

    class GlobalAvgPool(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    class BatchNorm(nn.BatchNorm2d):
        """BatchNorm over (N,) of 2-D or (N, H, W) of 4-D input, like ssaref's."""

        def _check_input_dim(self, x):
            if x.dim() not in (2, 4):
                raise ValueError(f"expected 2-D or 4-D input, got {x.dim()}-D")

    first = next(iter(model.params.values()), None)
    dtype = torch.float64 if first is not None and first.dtype == np.float64 else torch.float32

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(asnumpy(a)))

    def build(layer):
        kind = layer.kind
        if kind == "sequential":
            return nn.Sequential(*[build(l) for l in layer.layers])
        if kind == "residual":
            return Residual(build(layer.main), build(layer.shortcut))
        if kind == "maxpool2d":
            return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
        if kind == "avgpool2d":
            return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding)
        if kind == "global_avgpool":
            return GlobalAvgPool()
        if kind in ("relu", "tanh", "sigmoid"):
            return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[kind]()
        if kind == "flatten":
            return nn.Flatten()
        if kind == "batchnorm":
            bn = BatchNorm(layer.params["gamma"].shape[0], eps=layer.eps, momentum=layer.momentum).to(dtype)
            with torch.no_grad():
                bn.weight.copy_(t(layer.params["gamma"]))
                bn.bias.copy_(t(layer.params["beta"]))
                bn.get_buffer("running_mean").copy_(t(layer.buffers["running_mean"]))
                bn.get_buffer("running_var").copy_(t(layer.buffers["running_var"]))
            return bn
        if kind == "linear":
            W = layer.params["W"]
            m: nn.Linear | nn.Conv2d = nn.Linear(W.shape[1], W.shape[0], bias="b" in layer.params)
        elif kind == "conv2d":
            W = layer.params["W"]
            m = nn.Conv2d(
                W.shape[1],
                W.shape[0],
                tuple(W.shape[2:]),
                stride=layer.stride,
                padding=layer.padding,
                bias="b" in layer.params,
            )
        else:
            raise NotImplementedError(f"bench mirrors no {kind!r} layer")
        m = m.to(dtype)
        with torch.no_grad():
            m.weight.copy_(t(layer.params["W"]))
            if "b" in layer.params:
                m.get_parameter("bias").copy_(t(layer.params["b"]))
        return m

    return build(model)
