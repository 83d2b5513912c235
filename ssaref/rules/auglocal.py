"""AugLocal: local learning with augmented auxiliary networks (Ma, Wu, Sun, Tan & Qiao, "Scaling supervised local
learning with augmented auxiliary networks", ICLR 2024; reference code ChenxiangMA/AugLocal).

The primary network's hidden *layers* are its hidden segments (``feedback.segments``: a weight layer or a residual
block with the BN/activation/pooling layers after it), ``n`` of them.  Hidden layer ``i < n - 1`` is trained by the
cross-entropy of its own auxiliary network ``A_i`` applied to its output ``h_i``; the last hidden layer and the
output layer form the last module, trained by the task loss (the reference's last local module: the last block and
the classifier, BP between them).  No gradient crosses modules.

``A_i`` (the reference's ``unifSamp`` auxiliary network): ``d_i`` layers uniformly selected from the primary
layers after ``i`` (indices ``round(i + t (n - 1 - i) / d_i)``, ``t = 1..d_i``; every later layer when
``d_i >= n - 1 - i``), each a fresh copy (own weights, ssaref's default initialisation) of the selected layer's type
and width, fed by the previous aux layer; then global average pooling (4-D), a BatchNorm of the features when
``d_i = 1`` (the reference's ``BatchNorm1d``), and a linear classifier.  The depth
follows the pyramidal schedule of the code::

    d_i = max(1, round(d (1 - c i / (n - 2)) + c i / (n - 2)))       d = aux_depth, c = pyramid_coeff, i = 0..n-2

(deeper auxiliary networks for earlier layers; ``c = 0``: depth ``d`` everywhere).  The aux copy keeps the primary
network's spatial resolution at every selected layer: a skipped layer's downsampling is applied too (plain nets:
its pooling layers, before the copy; residual nets: a stride-2 first convolution, as the reference's
``num_pool`` count).  A dense copy after a 4-D input gets a flatten.
"""

from __future__ import annotations

import math

from ..nn.containers import ResidualBlock, Sequential
from ..nn.layers import AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d
from ..ops.losses import softmax_cross_entropy, softmax_cross_entropy_backward
from .feedback import num_classes
from ._local import LocalLossRule, aux_context, run_head

__all__ = ["AugLocal", "pyramid_depths", "selected_layers"]


def pyramid_depths(n, depth, coeff):
    """``[d_0, ..., d_{n-2}]``: the auxiliary depth of every hidden layer but the last (module docstring)."""
    out = []
    for i in range(n - 1):
        r = i * coeff / (n - 2) if n > 2 else 0.0
        out.append(max(1, round(depth * (1 - r) + r)))
    return out


def selected_layers(i, n, d):
    """Indices of the primary hidden layers copied into layer ``i``'s auxiliary network of depth ``d``."""
    if d >= n - 1 - i:
        return list(range(i + 1, n))
    return [round(i + (n - i - 1) / d * t) for t in range(1, d + 1)]


def _stride2(layer):
    """Whether a residual block downsamples (its first convolution has stride 2)."""
    return layer.kind == "residual" and max(layer.main.layers[0].stride) > 1


def _copy_plain(layer, c_in, stride, ctx):
    """A fresh layer of ``layer``'s type and geometry taking ``c_in`` channels (a conv: the given stride)."""
    if layer.kind == "conv2d":
        g = layer.geometry()
        return Conv2d(
            c_in,
            int(layer.params["W"].shape[0]),
            g["kernel"],
            stride=stride,
            padding=g["padding"],
            bias="b" in layer.params,
            **ctx,
        )
    if layer.kind == "batchnorm":
        return BatchNorm(
            int(layer.params["gamma"].shape[0]),
            momentum=layer.momentum,
            eps=layer.eps,
            xp=ctx["xp"],
            dtype=ctx["dtype"],
        )
    return type(layer)()


def _copy_block(block, c_in, stride, ctx):
    """A fresh residual block of ``block``'s layers on ``c_in`` input channels, its first convolution (and the
    shortcut's) with ``stride``; a projection shortcut (1x1 conv, + BN when the main branch has BN) where the copy's
    shapes need one and the original has the identity."""
    main, c = [], c_in
    for j, layer in enumerate(block.main.layers):
        main.append(_copy_plain(layer, c, stride if j == 0 else 1, ctx))
        if layer.kind == "conv2d":
            c = int(layer.params["W"].shape[0])
    short = [_copy_plain(l, c_in, stride, ctx) for l in block.shortcut.layers]
    if not short and (stride != 1 or c_in != c):
        short = [Conv2d(c_in, c, 1, stride=stride, bias=False, **ctx)]
        if any(l.kind == "batchnorm" for l in block.main.layers):
            short.append(BatchNorm(c, xp=ctx["xp"], dtype=ctx["dtype"]))
    return ResidualBlock(Sequential(main), Sequential(short) if short else None)


class AugLocal(LocalLossRule):
    """AugLocal (module docstring): each hidden layer learns from its own auxiliary network's cross-entropy."""

    name = "auglocal"
    SUMMARY = (
        "every hidden layer trained by the cross-entropy of an auxiliary net of uniformly selected copies of later "
        "layers, pyramidal depth (`--aux-depth 2 --pyramid-coeff 0.5`; Ma et al. 2024)"
    )
    INJECT = "auglocal_inject"
    GOLDEN_VARIANTS = {"default": ({}, 0, {"models": ("mlp", "conv", "res")})}  # res: a residual block copied
    OPTIONS = {
        "aux_depth": (
            int,
            2,
            "AugLocal: depth d of the first hidden layer's auxiliary network (the reference's --aux_net_depth)",
        ),
        "pyramid_coeff": (
            float,
            0.5,
            "AugLocal: pyramidal depth coefficient c (0: depth d for every layer; the reference's --pyramid_coeff)",
        ),
        "auglocal_inject": (
            str,
            "segment",
            "AugLocal: a layer's output is its segment's end, pooling included "
            "(segment, as the reference's blocks) or before its pooling layers "
            "(before_pool)",
        ),
    }

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["aux_depth"] < 1:
            raise ValueError(f"method 'auglocal': option aux_depth={self.options['aux_depth']!r} must be >= 1")
        c = self.options["pyramid_coeff"]
        if not (0.0 <= c <= 1.0):
            raise ValueError(f"method 'auglocal': option pyramid_coeff={c!r} must lie in [0, 1]")

    def depths(self, model=None):
        return pyramid_depths(len(self._segs), self.options["aux_depth"], self.options["pyramid_coeff"])

    def build_aux(self, model, seg, shape, rng):
        i = next(j for j, s in enumerate(self._segs) if s is seg)
        n = len(self._segs)
        if i == n - 1:
            return {}  # the last hidden layer learns with the output layer from the task loss
        d = self.depths()[i]
        ctx = aux_context(model, rng)
        layers, sh, prev = [], tuple(shape), i
        for j in selected_layers(i, n, d):
            skipped = [self._segs[k] for k in range(prev + 1, j)]
            new, sh = self._copy(model, skipped, self._segs[j], sh, ctx)
            layers += new
            prev = j
        if len(sh) == 3:
            layers.append(GlobalAvgPool())
            sh = (sh[0],)
        if d <= 1:  # the reference normalises the pooled features of a depth-1 auxiliary network (BatchNorm1d)
            layers.append(BatchNorm(int(math.prod(sh)), xp=ctx["xp"], dtype=ctx["dtype"]))
        layers.append(Linear(int(math.prod(sh)), num_classes(model), **ctx))
        return {"aux": Sequential(layers)}

    def _copy(self, model, skipped, seg, shape, ctx):
        """Fresh layers of segment ``seg``'s types and widths on input ``shape`` (after the downsampling of the
        ``skipped`` segments); returns ``(layers, output shape)``."""
        out = []
        lay = model.layers
        primary = [lay[k] for k in range(seg.lead, seg.end + 1)]
        if lay[seg.lead].kind == "residual":
            down = sum(_stride2(lay[s.lead]) for s in skipped) + _stride2(lay[seg.lead])
            pools = []
        else:
            down = 0
            pools = [
                lay[k] for s in skipped for k in range(s.lead, s.end + 1) if lay[k].kind in ("maxpool2d", "avgpool2d")
            ]
        for p in pools:  # a skipped segment's pooling, to keep the primary's resolution
            new = type(p)(p.kernel, p.stride, p.padding)
            if len(shape) == 3 and min(new.output_shape(shape)[1:]) >= 1:
                out.append(new)
                shape = tuple(new.output_shape(shape))
        for layer in primary:
            kind = layer.kind
            if kind == "linear":
                if len(shape) != 1:
                    out.append(Flatten())
                    shape = (int(math.prod(shape)),)
                new = Linear(shape[0], int(layer.params["W"].shape[0]), bias="b" in layer.params, **ctx)
            elif kind == "conv2d":
                g = layer.geometry()
                new = Conv2d(
                    shape[0],
                    int(layer.params["W"].shape[0]),
                    g["kernel"],
                    stride=g["stride"],
                    padding=g["padding"],
                    bias="b" in layer.params,
                    **ctx,
                )
            elif kind == "residual":
                stride = 2 if down >= 1 else 1  # the reference's num_pool: one stride-2 block per pending halving
                down = max(0, down - 1)
                new = _copy_block(layer, shape[0], stride, ctx)
            elif kind == "batchnorm":
                new = BatchNorm(shape[0], momentum=layer.momentum, eps=layer.eps, xp=ctx["xp"], dtype=ctx["dtype"])
            elif kind in ("maxpool2d", "avgpool2d"):
                new = (MaxPool2d if kind == "maxpool2d" else AvgPool2d)(layer.kernel, layer.stride, layer.padding)
                if len(shape) != 3 or min(new.output_shape(shape)[1:]) < 1:
                    continue
            elif kind == "flatten" and len(shape) == 1:
                continue
            elif kind in ("global_avgpool",) and len(shape) == 1:
                continue
            else:  # activations, flatten, global average pooling: parameter-free, shape-generic
                new = type(layer)()
            out.append(new)
            shape = tuple(new.output_shape(shape))
        return out, shape

    def local_loss(self, seg, h, batch, ctx):
        """``(L_i, dL_i/dh_i, {"aux": {param key: gradient}})``: the auxiliary network's cross-entropy."""

        def ce(logits):
            loss, c = softmax_cross_entropy(logits, batch.y, as_array=True, check_labels=False)
            return loss, softmax_cross_entropy_backward(c)

        loss, dh, g = run_head(self.heads[seg.key]["aux"], h, ce)
        return loss, dh, {"aux": g}

    def segment_signal(self, model, seg, rec, e, batch, ctx, aux_updates):
        if seg is self._segs[-1]:  # the last module: the output layer's error carried into the last hidden layer
            N = len(model.layers) - 1
            dx, _ = model.layers[N].backward(e, rec.caches[N], need_dx=True)
            return dx.reshape(rec.outs[N - 1].shape)
        return super().segment_signal(model, seg, rec, e, batch, ctx, aux_updates)

    def segments_of(self, model):
        segs = super().segments_of(model)
        if segs:  # the last hidden layer's signal enters at its end (the output layer's input)
            last = segs[-1]
            segs[-1] = type(last)(last.lead, last.end, last.end)
        return segs
