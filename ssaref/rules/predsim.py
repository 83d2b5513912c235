"""PredSim: local prediction and similarity-matching losses (Nokland & Eidnes 2019, "Training neural networks
with local error signals", ICML; reference code anokland/local-loss).

Every hidden segment (block) ``i`` is trained by its own loss on its block output ``h_i`` only::

    L_i = (1 - beta) L_pred,i + beta L_sim,i                                   (beta = predsim_beta = 0.99)
    L_pred,i = CE(W_d,i pool(h_i) + b_d,i, y)         prediction loss: a linear classifier of the block output,
                                                      average-pooled (4-D) so that it has at most
                                                      ``predsim_dim_decoder`` features (the code's
                                                      --dim-in-decoder rule; the classifier's weight starts at 0)
    L_sim,i  = mean_{b,b'} (S(T_i h_i) - S(y*))^2     similarity matching: S the adjusted cosine-similarity matrix
                                                      (ops/similarity.py: per-channel std over space for 4-D
                                                      input), T_i a learned 3x3 convolution C -> C (4-D) or a
                                                      linear map d -> d (2-D) without bias, y* the one-hot labels

with the batch means of the code (``F.cross_entropy``, ``F.mse_loss``).  ``dL_i/dh_i`` is carried back through the
segment's own layers (no gradient crosses blocks); the classifier ``W_d,i``, ``b_d,i`` and the transform ``T_i``
are the rule's auxiliary parameters (``learnable``) and learn from the same ``L_i``.  The output layer learns from
the task loss, ``e`` (eq. (7)), as in BP.  Dropout (the code's default is none) is not implemented.
"""

from __future__ import annotations

import math

from ..nn.containers import Sequential
from ..nn.layers import AvgPool2d, Conv2d, Flatten, Layer, Linear
from ..ops.losses import one_hot, softmax_cross_entropy, softmax_cross_entropy_backward
from ..ops.similarity import similarity_forward, similarity_matching, similarity_matching_backward
from .feedback import check_choice, num_classes
from ._local import LocalLossRule, aux_context, labels_checked, run_head

__all__ = ["PredSim", "decoder_pool"]


def decoder_pool(shape, dim_decoder):
    """The reference code's average pooling before a conv block's classifier: ``(kernel, padding)`` per axis, the
    kernel doubled (height first, then width) until ``C * ceil(H / k_h) * ceil(W / k_w) <= dim_decoder`` or
    ``k_h >= H``; ``None`` when no pooling is needed."""
    C, H, W = shape
    kh = kw = 1
    oh, ow = H, W
    dim = C * oh * ow
    while dim > dim_decoder and kh < H:
        kh *= 2
        oh = math.ceil(H / kh)
        dim = C * oh * ow
        if dim > dim_decoder:
            kw *= 2
            ow = math.ceil(W / kw)
            dim = C * oh * ow
    if kh == 1 and kw == 1:
        return None
    return (kh, kw), ((kh * (oh - H // kh)) // 2, (kw * (ow - W // kw)) // 2)


class PredSim(LocalLossRule):
    """PredSim (module docstring): every hidden block learns from its own prediction + similarity-matching loss."""

    name = "predsim"
    SUMMARY = (
        "every hidden block trained by its own prediction + similarity-matching loss, beta 0.99 (Nokland & "
        "Eidnes 2019), mlp and conv nets"
    )
    INJECT = "predsim_inject"
    # the classifiers start at zero: after two warm-up steps the prediction loss reaches the blocks too
    GOLDEN_VARIANTS = {"warm2": ({}, 2)}
    OPTIONS = {
        "predsim_beta": (
            float,
            0.99,
            "PredSim: weight beta of the similarity-matching loss, (1 - beta) on the "
            "prediction loss (0: pred only, 1: sim only)",
        ),
        "predsim_dim_decoder": (
            int,
            2048,
            "PredSim: at most this many features reach a conv block's local "
            "classifier (average pooling, the reference's --dim-in-decoder)",
        ),
        "predsim_channel_std": (
            bool,
            True,
            "PredSim: a 4-D block output enters the similarity matrix as its "
            "per-channel std over space (false: flattened; --no-similarity-std)",
        ),
        "predsim_sim_transform": (
            str,
            "learned",
            "PredSim: the similarity loss sees a learned 3x3 conv (4-D) or "
            "linear map (2-D) of the block output (learned, the reference), "
            "or the block output itself (none)",
        ),
        "predsim_inject": (
            str,
            "before_pool",
            "PredSim: the block output is the segment's output before its "
            "pooling/flatten layers (before_pool, the reference) or its end "
            "(segment)",
        ),
    }

    def __init__(self, **options):
        super().__init__(**options)
        beta = self.options["predsim_beta"]
        if not (0.0 <= beta <= 1.0):
            raise ValueError(f"method 'predsim': option predsim_beta={beta!r} must lie in [0, 1]")
        if self.options["predsim_dim_decoder"] < 1:
            raise ValueError(
                f"method 'predsim': option predsim_dim_decoder={self.options['predsim_dim_decoder']!r} must be >= 1"
            )
        check_choice(self.name, "predsim_sim_transform", self.options["predsim_sim_transform"], ("learned", "none"))

    def build_aux(self, model, seg, shape, rng):
        ctx = aux_context(model, rng)
        K = num_classes(model)
        pred: list[Layer]
        sim: list[Layer]
        if len(shape) == 3:
            pool = decoder_pool(shape, self.options["predsim_dim_decoder"])
            pred = [AvgPool2d(pool[0], padding=pool[1])] if pool else []
            sh = pred[0].output_shape(shape) if pred else shape
            pred += [Flatten(), Linear(int(math.prod(sh)), K, **ctx)]
            sim = [Conv2d(shape[0], shape[0], 3, padding=1, bias=False, **ctx)]
        else:
            d = int(math.prod(shape))
            pred = [Flatten(), Linear(d, K, **ctx)]
            sim = [Flatten(), Linear(d, d, bias=False, **ctx)]
        pred[-1].params["W"][...] = 0  # the reference code zeroes the local classifier's weight
        if self.options["predsim_sim_transform"] == "none":
            sim = []
        return {"pred": Sequential(pred), "sim": Sequential(sim)}

    def step_context(self, model, e, batch):
        K = num_classes(model)
        _, p = next(iter(model.named_params()))
        Y = one_hot(batch.y, K, p.dtype, check_labels=labels_checked(batch.y))
        gather = None if self.group is None else self.group.gather_rows
        R_y, _ = similarity_forward(Y, gather=gather)  # S(y*): the target similarity matrix, a constant
        # several ranks: this rank's rows of the global batch's matrices, gradients in this rank's units
        return {"R_y": R_y, "gather": gather, "unit": 1.0 if self.group is None else 1.0 / self.group.weight}

    def local_loss(self, seg, h, batch, ctx):
        """``(L_i, dL_i/dh_i, {head: {param key: gradient}})`` of the module docstring's local loss."""
        beta = self.options["predsim_beta"]
        heads = self.heads[seg.key]

        def pred_loss(logits):
            loss, c = softmax_cross_entropy(logits, batch.y, as_array=True, check_labels=False)
            return loss, (1.0 - beta) * softmax_cross_entropy_backward(c)

        def sim_loss(t):
            loss, c = similarity_matching(t, ctx["R_y"], self.options["predsim_channel_std"], ctx["gather"])
            return loss, (beta * ctx["unit"]) * similarity_matching_backward(c)

        lp, dh_p, gp = run_head(heads["pred"], h, pred_loss)
        ls, dh_s, gs = run_head(heads["sim"], h, sim_loss)
        return (1.0 - beta) * lp + beta * ls, dh_p + dh_s, {"pred": gp, "sim": gs}
