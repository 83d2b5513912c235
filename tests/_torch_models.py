"""An independent PyTorch (float64, autograd) evaluation of an ssaref model graph.

The graph's *structure* (which layer follows which, strides, paddings) is read
from the ssaref model; every number is computed by torch.nn.functional from the
same parameter values.  No ssaref op is called here.
"""
import numpy as np
import torch
import torch.nn.functional as F


def torch_params(model):
    """{key: leaf tensor with requires_grad} copied from the model's parameters."""
    return {k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True)
            for k, v in model.named_params()}


def _run(layer, x, P, prefix, train):
    kind = layer.kind
    p = lambda name: P[prefix + name]  # noqa: E731
    if kind == "sequential":
        for i, sub in enumerate(layer.layers):
            x = _run(sub, x, P, f"{prefix}{i}.", train)
        return x
    if kind == "residual":
        h = _run(layer.main, x, P, prefix + "main.", train)
        s = _run(layer.shortcut, x, P, prefix + "shortcut.", train)
        return F.relu(h + s)
    if kind == "linear":
        return F.linear(x, p("W"), P.get(prefix + "b"))
    if kind == "conv2d":
        return F.conv2d(x, p("W"), P.get(prefix + "b"), stride=layer.stride, padding=layer.padding)
    if kind == "maxpool2d":
        return F.max_pool2d(x, layer.kernel, layer.stride, layer.padding)
    if kind == "avgpool2d":
        return F.avg_pool2d(x, layer.kernel, layer.stride, layer.padding)
    if kind == "global_avgpool":
        return x.mean(dim=(2, 3))
    if kind == "relu":
        return F.relu(x)
    if kind == "tanh":
        return torch.tanh(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "flatten":
        return x.flatten(1)
    if kind == "batchnorm":
        rm = torch.tensor(np.asarray(layer.buffers["running_mean"]), dtype=torch.float64)
        rv = torch.tensor(np.asarray(layer.buffers["running_var"]), dtype=torch.float64)
        return F.batch_norm(x, rm, rv, p("gamma"), p("beta"), training=train,
                            momentum=layer.momentum, eps=layer.eps)
    raise NotImplementedError(kind)


def torch_forward(model, x, P, train=True):
    return _run(model, torch.as_tensor(np.asarray(x), dtype=torch.float64), P, "", train)


def torch_bp_grads(model, x, y, train=True):
    """(loss, logits, {key: dL/dparam}) by torch autograd, mean cross-entropy."""
    P = torch_params(model)
    logits = torch_forward(model, x, P, train)
    loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(y), dtype=torch.int64))
    loss.backward()
    return float(loss.detach()), logits.detach().numpy(), {k: t.grad.numpy() for k, t in P.items()}
