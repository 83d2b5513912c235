"""The counted cost of a training step: FLOPs and bytes moved, op by op, from the layer shapes alone.

``step_cost(model, rule_name, batch)`` lists every op of one step of a rule (its docstring is the counting
convention; docs/internals.md, "Cost model"); ``roofline(ops, peak, bandwidth)`` turns the counts into the step's
lower bound on a machine; ``weight_macs`` and ``step_flops`` are the inference and BP-step GEMM counts that
Figure 5 and the bench report.  Nothing here runs a step or times anything: ``ssaref.bench`` measures, this
module counts.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module
from .nn.containers import leaf_shapes

__all__ = ["weight_macs", "step_flops", "step_cost", "roofline"]


# --------------------------------------------------------------------------------------------- FLOPs
def weight_macs(model, input_shape=None):
    """``[(key prefix, kind, multiply-adds per example)]`` of every weight layer of ``model`` in forward order.

    Linear ``m n``; Conv2d ``C_out C_in kh kw Ho Wo``; SVDLinear ``r (m + n)``; SVDConv2d (the two-convolution
    form) ``r C_in kh Ho W + C_out r kw Ho Wo``.  Element-wise layers, pooling and BatchNorm are not counted
    (they are a few per cent of a conv net's arithmetic and no GEMM).  ``input_shape`` defaults to
    ``model.input_shape``.
    """
    out = []
    for key, layer, shape, new in leaf_shapes(model, input_shape if input_shape is not None else model.input_shape):
        kind = layer.kind
        if kind == "linear":
            m, n = layer.params["W"].shape
            out.append((key, kind, int(m) * int(n)))
        elif kind == "conv2d":
            co, ci, kh, kw = layer.params["W"].shape
            out.append((key, kind, int(co * ci * kh * kw) * int(new[1] * new[2])))
        elif kind == "svd_linear":
            m, n = layer.dims
            out.append((key, kind, layer.rank * (m + n)))
        elif kind == "svd_conv2d":
            (kh, kw), r = layer.kernel, layer.rank
            out.append((key, kind, r * layer.c_in * kh * new[1] * shape[2] + layer.c_out * r * kw * new[1] * new[2]))
    return out


def step_flops(model, batch, input_shape=None):
    """FLOPs of one BP training step's GEMMs: ``2 * MACs * batch`` for the forward pass, the weight gradient and
    the input gradient of every weight layer, except the input gradient of the first (nothing needs it; neither
    engine computes it): the GEMM rows of ``step_cost(model, "bp", batch)``."""
    return sum(o["flops"] for o in step_cost(model, "bp", batch, input_shape) if o["kind"] == "gemm")


# --------------------------------------------------------------------------------------------- step cost (roofline)
# how a rule moves the error between weight layers (``step_cost``): each rule class declares one
# (``Rule.ERROR_TRANSPORT``): "chain" (dx of every weight layer past the first), "direct" (e B_l projected to every
# hidden layer), "local" (local losses of auxiliary networks), "two_forwards" (standard and modulated forward, no
# backward)
TRANSPORTS = ("chain", "direct", "local", "two_forwards")


def error_transport(rule_name):
    """The ``ERROR_TRANSPORT`` the registered rule ``rule_name`` declares (ValueError for an unknown rule or a rule
    that declares none of ``TRANSPORTS``)."""
    from .rules import RULES

    cls = RULES.get(rule_name)
    if cls is None:
        raise ValueError(f"unknown method {rule_name!r}; choose one of {', '.join(sorted(RULES))}")
    if cls.ERROR_TRANSPORT not in TRANSPORTS:
        raise ValueError(
            f"rule {rule_name!r} declares ERROR_TRANSPORT {cls.ERROR_TRANSPORT!r}, not one of {TRANSPORTS}"
        )
    return cls.ERROR_TRANSPORT


# per-factor projection GEMMs of the SVD rules, in units of m r^2 multiply-adds (X of shape (m, r)): SSA's
# P_X(G) + 4 gamma X (X^T X - I) = G - X (sym(X^T G) - 4 gamma (X^T X - I)): Gram X^T X (half of a GEMM with
# syrk: r (r + 1) / 2 per row), X^T G, X K; SVD-BP's 4 gamma X (X^T X - I): Gram, X M.
_PROJ_GEMMS = {"ssa": ("gram", "XtG", "XK"), "svd-bp": ("gram", "XM")}


def _gemm(op, m, k, n, size, count=1):
    """One ``(m, k) @ (k, n)`` GEMM: ``2 m k n`` FLOPs; bytes = each operand read once, the result written once."""
    return {
        "op": op,
        "kind": "gemm",
        "flops": 2.0 * m * k * n * count,
        "bytes": float(size * (m * k + k * n + m * n) * count),
    }


def _stream(op, elements_read, elements_written, size, flops_per_element=1.0):
    """An element-wise pass: ``flops_per_element`` FLOPs per element written; bytes = reads + writes."""
    return {
        "op": op,
        "kind": "stream",
        "flops": float(flops_per_element * elements_written),
        "bytes": float(size * (elements_read + elements_written)),
    }


def _conv_ops(key, B, cin, hw, cout, kernel, out_hw, size, passes):
    """A convolution by im2col + GEMM: ``im2col`` (read the input, write the (C kh kw, B Ho Wo) column matrix),
    the forward GEMM ``W' (C_out, K) @ cols``, the weight gradient ``dy' @ cols^T`` (the columns kept from the
    forward), the input gradient ``W'^T @ dy'`` then ``col2im`` (read the column gradient, write ``dx``)."""
    (H, W), (kh, kw), (Ho, Wo) = hw, kernel, out_hw
    K, P, a = cin * kh * kw, B * Ho * Wo, B * cin * H * W
    out = []
    if "fwd" in passes:
        out += [_stream(f"{key} im2col", a, K * P, size, 0.0), _gemm(f"{key} forward", cout, K, P, size)]
    if "wgrad" in passes:
        out.append(_gemm(f"{key} weight gradient", cout, P, K, size))
    if "dgrad" in passes:
        out += [_gemm(f"{key} input gradient", K, cout, P, size), _stream(f"{key} col2im", K * P, a, size)]
    return out


def _layer_ops(key, layer, shape, new, B, size, passes):
    """The counted ops of one leaf layer for ``passes`` (a set of "fwd", "wgrad", "dgrad", "bwd")."""
    kind = layer.kind
    a, o = B * math.prod(shape), B * math.prod(new)
    if kind == "linear":
        m, n = (int(v) for v in layer.params["W"].shape)
        out = []
        if "fwd" in passes:
            out.append(_gemm(f"{key} forward", B, n, m, size))
        if "wgrad" in passes:
            out.append(_gemm(f"{key} weight gradient", m, B, n, size))
        if "dgrad" in passes:
            out.append(_gemm(f"{key} input gradient", B, m, n, size))
        return out
    if kind == "svd_linear":  # z = x V, y = z (U S)^T; GV = dy^T z, dz = dy U S, dV = x^T dz, dx = dz V^T
        (m, n), r = layer.dims, layer.rank
        out = []
        if "fwd" in passes:
            out += [_gemm(f"{key} forward x V", B, n, r, size), _gemm(f"{key} forward z (US)^T", B, r, m, size)]
        if "wgrad" in passes:
            out += [
                _gemm(f"{key} dy^T z", m, B, r, size),
                _gemm(f"{key} dy U", B, m, r, size),
                _gemm(f"{key} x^T dz", n, B, r, size),
            ]
        if "dgrad" in passes:
            out.append(_gemm(f"{key} input gradient", B, r, n, size))
        return out
    if kind == "conv2d":
        co, ci, kh, kw = (int(v) for v in layer.params["W"].shape)
        return _conv_ops(key, B, ci, shape[1:], co, (kh, kw), new[1:], size, passes)
    if kind == "svd_conv2d":  # the height pass K1 (r, C, kh, 1) on x, then the width pass K2 (N, r, 1, kw)
        (kh, kw), r = layer.kernel, layer.rank
        mid = (new[1], shape[2])  # the width pass's input gradient feeds the height pass's weight gradient
        return _conv_ops(f"{key}.height", B, layer.c_in, shape[1:], r, (kh, 1), mid, size, passes) + _conv_ops(
            f"{key}.width",
            B,
            r,
            mid,
            layer.c_out,
            (1, kw),
            new[1:],
            size,
            passes | ({"dgrad"} if "wgrad" in passes else set()),
        )
    out = []  # element-wise layers, pooling, BatchNorm: one read of the input, one write of the output a pass
    if "fwd" in passes:
        out.append(_stream(f"{key} {kind} forward", a, o, size))
    if "bwd" in passes:  # read the output's gradient and the cache (the input), write the input's gradient
        out.append(_stream(f"{key} {kind} backward", o + a, a, size))
    return out


_WEIGHT_KINDS = ("linear", "conv2d", "svd_linear", "svd_conv2d")


def _net_ops(model, in_shape, B, size, *, backward=True, dgrad="chain", prefix=""):
    """Forward and, with ``backward``, the weight gradients and the element-wise backward passes of every leaf
    layer of ``model``; input gradients of weight layers: ``dgrad`` "chain" (past the first), "all" or "none"."""
    ops, seen_weight = [], False
    for key, layer, shape, new in leaf_shapes(model, in_shape):
        weight = layer.kind in _WEIGHT_KINDS
        passes = {"fwd"}
        if backward:
            passes |= {"wgrad"} if weight else {"bwd"}
            if weight and (dgrad == "all" or (dgrad == "chain" and seen_weight)):
                passes.add("dgrad")
        seen_weight = seen_weight or weight
        ops += _layer_ops(prefix + key, layer, shape, new, B, size, passes)
    return ops


def step_cost(model, rule_name, batch, input_shape=None, rule=None):
    """The counted ops of one training step of ``rule_name`` on ``model`` (the model the rule trains: factored for
    SSA / SVD-BP): ``[{"op", "flops", "bytes"}]``, from the layer shapes alone.

    Counting convention (the roofline's numerator; docs/internals.md, "Cost model"):

    * a GEMM ``(m, k) @ (k, n)`` is ``2 m k n`` FLOPs and moves ``(m k + k n + m n)`` elements (each operand read
      once, the result written once: the least traffic any implementation of that product has);
    * Linear (m, n) at batch B: forward ``x W^T``, weight gradient ``dy^T x``, input gradient ``dy W`` (each
      ``2 B m n``); SVDLinear: ``x V``, ``z (U S)^T``; ``dy^T z``, ``dy U``, ``x^T dz``; ``dz V^T``;
    * Conv2d by im2col: ``im2col`` (reads the input, writes the (C kh kw) x (B Ho Wo) column matrix, no FLOPs),
      the forward, weight-gradient and input-gradient GEMMs of the column matrix, ``col2im`` (reads the column
      gradient, writes ``dx``); SVDConv2d: two such convolutions (height pass, width pass);
    * element-wise layers, pooling, BatchNorm: one FLOP per element written; forward reads the input and writes
      the output, backward reads the output gradient and the input and writes the input gradient;
    * error transport by rule: BP, SVD-BP and the FA family (``dy B`` has ``dy W``'s shape) compute the input
      gradient of every weight layer past the first; DFA, DRTP and SSA none, but ``e B_l`` (``2 B K d_l``) for
      every hidden weight layer; PEPITA two forward passes (standard, modulated) and the weight updates;
      PredSim and AugLocal no input gradient between blocks but the forward, weight and input gradients of
      every auxiliary network (``rule.aux_networks()``; PredSim's B x B similarity matrices are not counted);
    * the SVD rules' per-factor products (X = U or V, (m, r)): SSA's tangent step with eq. (9) three
      ``(m, r) x (r, r)``-sized GEMMs (the Gram ``X^T X`` through ``syrk`` counted as half; ``V^T g_V`` as
      ``dy U`` and ``z^T dz`` where the rule takes it from the batch, ``SSA._batch_VtG``), SVD-BP's ``4 gamma
      X (X^T X - I)`` two;
    * the optimiser (Adam): 12 FLOPs a parameter, reading parameter, gradient and both moments and writing
      parameter and both moments (7 elements);
    * not counted: the loss (B x K), layout copies and reshapes, container glue (a residual add), the SSA
      retraction (every ``retract_every`` steps) and metric bookkeeping.

    Bytes are elements x the model's itemsize.
    """
    in_shape = tuple(input_shape if input_shape is not None else model.input_shape)
    params = dict(model.named_params())
    size = int(np.dtype(next(iter(params.values())).dtype).itemsize) if params else 4
    B = int(batch)
    ops = []
    transport = error_transport(rule_name)
    if transport == "two_forwards":
        ops += _net_ops(model, in_shape, B, size, backward=False)
        ops += [dict(o, op=o["op"] + " (modulated)") for o in _net_ops(model, in_shape, B, size, backward=False)]
        for key, layer, shape, new in leaf_shapes(model, in_shape):
            if layer.kind == "linear":
                m, n = (int(v) for v in layer.params["W"].shape)
                ops.append(_gemm(f"{key} weight update", m, B, n, size))
    elif transport in ("direct", "local"):
        ops += _net_ops(model, in_shape, B, size, backward=True, dgrad="none")
        if transport == "direct":
            K = int(math.prod(leaf_shapes(model, in_shape)[-1][3]))
            weights = [(k, new) for k, l, s, new in leaf_shapes(model, in_shape) if l.kind in _WEIGHT_KINDS]
            for key, new in weights[:-1]:
                ops.append(_gemm(f"{key} feedback e B", B, K, math.prod(new), size))
        if rule is not None and transport == "local":
            for aux in rule.aux_networks():
                ops += _net_ops(
                    aux.net, aux.in_shape, B, size, backward=True, dgrad="all", prefix=f"aux {aux.layer}.{aux.name} "
                )
    else:
        ops += _net_ops(model, in_shape, B, size, backward=True)
    for key, layer, _, _ in leaf_shapes(model, in_shape):
        if layer.kind in ("svd_linear", "svd_conv2d") and rule_name in _PROJ_GEMMS:
            r = layer.rank
            for name in ("U", "V"):
                m = int(layer.params[name].shape[0])
                for g in _PROJ_GEMMS[rule_name]:
                    if g == "XtG" and name == "V" and _batch_VtG_taken(rule, key, layer, B):
                        # V^T g_V = z^T (dy U S) (SSA._batch_VtG): dy U (B, m, r), then z^T dz (r, B, r)
                        ops += [
                            _gemm(f"{key}.V dy U (for V^T G)", B, layer.dims[0], r, size),
                            _gemm(f"{key}.V z^T dz", r, B, r, size),
                        ]
                        continue
                    if g == "gram":  # syrk: one triangle, r (r + 1) / 2 dot products of length m
                        ops.append(
                            {
                                "op": f"{key}.{name} Gram (syrk)",
                                "kind": "gemm",
                                "flops": float(m * r * (r + 1)),
                                "bytes": float(size * (m * r + r * r)),
                            }
                        )
                    else:
                        ops.append(_gemm(f"{key}.{name} {g}", m, r, r, size))
    n_params = sum(int(v.size) for v in params.values())
    if rule is not None:  # rule-owned arrays the optimiser updates (KP's B, the auxiliary networks)
        n_params += sum(int(l.array.size) for l in rule.learnable(model))
    ops.append(
        {"op": "optimiser (Adam)", "kind": "stream", "flops": 12.0 * n_params, "bytes": float(7 * size * n_params)}
    )
    return ops


def _batch_VtG_taken(rule, key, layer, B):
    """Whether SSA's step takes ``V^T g_V`` from the batch for this layer (the rule's own choice, on the array
    module the layer lives on: a device takes it only where the saving outweighs the extra launches)."""
    choose = getattr(rule, "takes_VtG_from_batch", None)
    return choose is not None and choose(key, layer, B, get_array_module(layer.params["V"]))


def roofline(ops, peak_gflops, bandwidth_gbs):
    """``{"flops", "bytes", "bound_ms", "bound_ops_ms", "intensity"}`` of counted ``ops``: the step bound
    ``max(FLOPs / peak, bytes / bandwidth)`` of the totals, and the tighter per-op sum of the same bound."""
    F = sum(o["flops"] for o in ops)
    Q = sum(o["bytes"] for o in ops)
    bound = max(F / (peak_gflops * 1e9), Q / (bandwidth_gbs * 1e9))
    per_op = sum(max(o["flops"] / (peak_gflops * 1e9), o["bytes"] / (bandwidth_gbs * 1e9)) for o in ops)
    return {
        "flops": F,
        "bytes": Q,
        "bound_ms": 1e3 * bound,
        "bound_ops_ms": 1e3 * per_op,
        "intensity": F / Q if Q else math.inf,
    }
