"""SVD-Space Alignment (SSA), paper sections 4 and 5.

Every ``Linear`` / ``Conv2d`` of the model becomes an SVD-space layer (``ssaref.nn.svd_layers``, eq. (5))
initialised at full rank from the dense layer's SVD.  Each layer ``i`` minimises the local loss (eq. (6))

    LL_i = alpha L_CE + beta L_align + gamma L_ortho (+ hoyer * ||s||_1/||s||_2 while the rank schedule asks)

* task term (eq. (7)): the DFA signal.  The output layer gets ``e = dL/da_N``; every hidden segment (an SVD
  layer and the activation / BatchNorm / pool / flatten layers up to the next weight layer, as in
  ``rules/dfa.py``) gets ``B_i e`` at its output, carried back through the segment's own layers (eq. (3)).
  Its gradients w.r.t. ``U, s, V, b`` are the layer's true gradients for that signal;
* alignment (eq. (8)): ``||U - T_U||^2 + ||s - T_s||^2 + ||V - T_V||^2`` against targets from the truncated
  randomized SVD of a fixed feedback matrix (``align_target`` says which matrix and which factors, below);
* orthogonality (eq. (9)): ``||U^T U - I||^2 + ||V^T V - I||^2``, gradient ``4 U (U^T U - I)`` etc.

Variants (``ssa_variant``):

``default``
    Euclidean gradients of ``LL_i`` (``dU = alpha G V S + 2 beta (U - T_U)`` ...) -- the task part is the true
    gradient of the local surrogate, *not* the printed ``G V S^-1`` -- projected onto the tangent space of the
    Stiefel manifold, ``P_U(X) = X - U sym(U^T X)``; the orthogonality gradient is added *after* the projection
    (the tangent projection annihilates it to first order, so projecting it would switch it off); after each
    optimiser step ``U`` and ``V`` are retracted onto the manifold (polar factor), which together with the
    tangent projection is Riemannian gradient descent (Absil et al. 2008) for SGD.
``paper``
    Eqs. (11)-(13) as printed: ``ds = diag(U^T G V) + 2 beta (s - T_s)``;
    ``dU = (I - U U^T)[G V S^-1 + 2 beta (U - T_U) + 4 gamma U (U^T U - I)]``;
    ``dV^T = (I_r - V^T V)[S^-1 U^T G + 2 beta (V^T - T_V^T) + 4 gamma V^T (V V^T - I)]`` where the printed first
    term ``G^T U S^-1`` (n x r) is transposed to fit the r x n bracket (the nearest evaluable reading); no
    retraction (section 5.2 "avoids costly retractions").  ``alpha`` does not appear in eqs. (11)-(13) and has
    no effect in this variant.

``G`` is ``dL_CE/dW`` for the task signal; ``G V`` and ``G^T U`` come from the layer without forming ``G``.

Where the projection happens: ``updates`` returns the projected direction; the optimiser (SGD or Adam) applies
its own transformation to it (momentum, Adam's per-entry scaling -- which leaves the tangent space); the
retraction then runs at the start of the next ``step`` (before the forward pass) and in ``on_epoch_end``, so every
forward pass, evaluation and checkpoint sees orthonormal ``U``, ``V``.

Alignment targets (``align_target``): ``B_i`` is ``d_i x d_N`` (d_i = size of the segment's output), so its rank-k
factors are ``B_U`` (d_i x k), ``B_s`` (k), ``B_V`` (d_N x k) with ``k = min(d_i, d_N)``, while the layer has
``U`` (m x r), ``V`` (n x r), n = d_{i-1}.

* ``feedback``: ``B_i``'s factors.  ``U[:, :k] <- B_U`` and ``s[:k] <- B_s`` where ``d_i == m`` (Linear layers);
  ``V`` is never aligned (``B_V`` has d_N rows, ``V`` has n); conv layers (d_i = C H W != N kw) get none.
* ``weight``: a second fixed matrix of the layer's own shape (m x n, for a conv layer the kernel matrix
  N kw x C kh: "we form our feedback matrices to be of the same dimensions as our convolutional kernels"),
  column-normalised Gaussian, whose rank-r0 factors are targets for all of ``U``, ``s``, ``V``.
* ``auto`` (default): ``feedback`` where ``d_i == m``, ``weight`` elsewhere (conv layers).

The output layer's ``B_N`` (d_N x d_N) is drawn only as an alignment target; its task signal is ``e``.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import asnumpy, get_array_module
from ..linalg import (complement_project, hoyer, hoyer_grad, orthogonality_error, orthogonality_errors,
                      randomized_svd, retract, retained_energy, tangent_project)
from ..nn.svd_layers import SVD_KINDS, to_svd_layer
from ..rank import RankSchedule, keep_indices
from ._feedback import check_choice, direct_updates, draw, layer_output_shapes, place
from .base import Rule, StepResult

__all__ = ["SSA", "SVDRuleBase", "svd_layers_of", "convert_model", "RANK_OPTIONS", "svd_weight_change",
           "svd_update_angle"]


# ---------------------------------------------------------------------------------------------------
# model surgery
# ---------------------------------------------------------------------------------------------------
def _recollect(layer):
    """Rebuild the flat param/buffer views of every composite layer, bottom-up."""
    children = getattr(layer, "children", None)
    if children:
        for c in children.values():
            _recollect(c)
        layer.params = {f"{n}.{k}": v for n, c in children.items() for k, v in c.params.items()}
        layer.buffers = {f"{n}.{k}": v for n, c in children.items() for k, v in c.buffers.items()}


def _convert(layer):
    children = getattr(layer, "children", None)
    if not children:
        return
    for name, child in list(children.items()):
        new = to_svd_layer(child)
        if new is None:
            _convert(child)
            continue
        children[name] = new
        if hasattr(layer, "layers"):  # Sequential: keep ``layers`` and ``children`` in step
            layer.layers[int(name)] = new
        elif hasattr(layer, name):    # ResidualBlock-style attribute children
            setattr(layer, name, new)


def convert_model(model):
    """Replace every ``Linear`` / ``Conv2d`` of ``model`` (recursively) by its full-rank SVD layer, in place."""
    _convert(model)
    _recollect(model)
    return model


def svd_layers_of(model, prefix=""):
    """``[(key prefix, layer)]`` of every SVD-space layer in forward order (``"3"``, ``"4.main.0"``)."""
    out = []
    for name, child in getattr(model, "children", {}).items():
        p = f"{prefix}{name}"
        if getattr(child, "kind", None) in SVD_KINDS:
            out.append((p, child))
        else:
            out += svd_layers_of(child, p + ".")
    return out


def _as_host_index(keep):
    return np.asarray(keep, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# the shared base of SSA and SVD-BP: model conversion, rank schedule, truncation, metrics, resume
# ---------------------------------------------------------------------------------------------------
RANK_OPTIONS = {
    "gamma": (float, 1e-2, "weight of the orthogonality regulariser ||U^T U - I||^2 + ||V^T V - I||^2 (eq. (9))"),
    "hoyer": (float, 1e-3, "weight of the Hoyer regulariser ||s||_1/||s||_2 on singular values (section 4.4)"),
    "hoyer_every": (int, 10, "Hoyer term active in epochs e of the epoch-based phase with (e-1) % N == 0"),
    "rank_schedule": (str, "hybrid", "rank reduction: hybrid (section 4.4), epoch, energy or none"),
    "reduce_to": (float, 0.7, "epoch-based phase reduces the rank linearly to this fraction of r0"),
    "reduce_frac": (float, 0.3, "fraction of the epochs spent in the epoch-based phase"),
    "energy": (float, 0.95, "threshold phase keeps the top singular values holding this share of sum s^2"),
    "min_rank_frac": (float, 0.3, "the rank never drops below this fraction of r0"),
    "parity": (bool, False, "at every epoch end cap the rank of every SVD layer, the classifier included "
                            "(whatever reduce_last says), so the factored layer holds fewer numbers than the dense "
                            "one (section 4.4; parity_count says what is counted); takes precedence over "
                            "min_rank_frac"),
    "parity_count": (str, "factors", "what parity counts: factors (r(m+n) < mn, the paper's printed rule "
                                     "r < mn/(m+n)) or with_s (r(m+n+1) < mn, the singular values counted too)"),
    "reduce_last": (bool, False, "also run the rank schedule on the output (classifier) layer; without it the "
                                 "classifier keeps its rank, except for the parity cap when parity is on"),
}


class SVDRuleBase(Rule):
    """Common machinery of the rules that train SVD-space layers."""

    name = "svd-base"
    OPTIONS = dict(RANK_OPTIONS)
    retracts = False  # whether U, V are retracted after the optimiser step

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        for k in ("gamma", "hoyer"):
            if not (o[k] >= 0.0 and math.isfinite(o[k])):
                raise ValueError(f"method {self.name!r}: option {k}={o[k]!r} must be a finite number >= 0")
        self.schedule = RankSchedule(kind=o["rank_schedule"], reduce_to=o["reduce_to"],
                                     reduce_frac=o["reduce_frac"], energy=o["energy"],
                                     min_rank_frac=o["min_rank_frac"], parity=o["parity"],
                                     hoyer_every=o["hoyer_every"], parity_count=o["parity_count"])
        self._acc = {}
        self._upd = {}             # "<p>/upd_<name>" -> [sum of the update norms (0-d device array), count]
        self._steps = 0
        self._epoch, self._num_epochs = 1, 0   # host copies of "meta/epoch", "meta/num_epochs"

    # -- model ------------------------------------------------------------------------------------
    def prepare_model(self, model):
        convert_model(model)
        self.layers = svd_layers_of(model)
        if not self.layers:
            raise ValueError(f"method {self.name!r}: model has no Linear or Conv2d layer to hold in SVD space")
        self.r0 = {p: l.full_rank for p, l in self.layers}
        return model

    def metric_layers(self):
        """Prefixes of the SVD layers in forward order (``"1"``, ``"4.main.0"``): they index the per-layer
        ``svd_*`` metrics of ``on_epoch_end``; empty before ``prepare_model``/``init_state``."""
        return [p for p, _ in (getattr(self, "layers", None) or [])]

    def _layers(self, model):
        if getattr(self, "layers", None) is None:
            self.layers = svd_layers_of(model)
            self.r0 = {p: l.full_rank for p, l in self.layers}
        return self.layers

    def _is_last(self, model, prefix):
        return prefix == str(len(model.layers) - 1)

    def _init_meta(self, model):
        """The epoch now running and the run length live in the state, so a resumed run knows them; the rule
        reads its host copies ``_epoch``, ``_num_epochs`` (kept in step with the state here, in ``on_epoch_end``
        and in ``load_state_dict``), never the arrays, which may sit on the device."""
        self.state["meta/epoch"] = place(model, np.ones(1))
        self.state["meta/num_epochs"] = place(model, np.zeros(1))
        self._epoch, self._num_epochs = 1, 0

    @property
    def epoch(self):
        """The epoch now running (1-based); a host int (no device->host transfer: read once per layer per step)."""
        return self._epoch

    @property
    def num_epochs(self):
        """Run length, learnt at the first ``on_epoch_end`` (0 before: epoch 1 is in every schedule's phase 1)."""
        return self._num_epochs

    def load_state_dict(self, d, xp):
        """Restore the state arrays (``Rule.load_state_dict``) and refresh the host epoch counters from them."""
        super().load_state_dict(d, xp)
        self._epoch = int(np.asarray(asnumpy(self.state["meta/epoch"])).reshape(-1)[0]) \
            if "meta/epoch" in self.state else 1
        self._num_epochs = int(np.asarray(asnumpy(self.state["meta/num_epochs"])).reshape(-1)[0]) \
            if "meta/num_epochs" in self.state else 0

    # -- per-step pieces ----------------------------------------------------------------------------
    def hoyer_on(self):
        return self.options["hoyer"] > 0.0 and self.schedule.hoyer_active(self.epoch, self.num_epochs or 10 ** 9)

    def _ortho_grads(self, layer):
        """``4 gamma U (U^T U - I)``, ``4 gamma V (V^T V - I)`` (gradients of eq. (9) times gamma)."""
        g = self.options["gamma"]
        out = []
        for name in ("U", "V"):
            X = layer.params[name]
            xp = get_array_module(X)
            M = X.T @ X
            M[xp.diag_indices(M.shape[0])] -= 1.0
            out.append((4.0 * g) * (X @ M))
        return out

    def _hoyer_term(self, s):
        return self.options["hoyer"] * hoyer_grad(s) if self.hoyer_on() else None

    def _retract_all(self, model):
        """Retract every tall ``U``, ``V`` onto the Stiefel manifold.  One device->host transfer in all: the
        errors ``||X^T X - I||_F`` of all factors are read back together (``orthogonality_errors``) and passed to
        ``retract``, which then predicts the Newton-Schulz convergence instead of measuring it
        (``check_every=None``; the exact eigh fallback, far from the manifold, still measures)."""
        if not self.retracts:
            return
        todo = [(p, name, layer.params[name]) for p, layer in self._layers(model) for name in ("U", "V")
                if layer.params[name].shape[0] >= layer.params[name].shape[1]]
        errs = orthogonality_errors([X for _, _, X in todo])
        for (p, name, X), e in zip(todo, errs):
            Y, err = retract(X, self._retraction, return_error=True, check_every=None, error=e)
            key = f"{p}/drift_{name}"
            self._acc[key] = max(self._acc.get(key, 0.0), err)
            if Y is not X:
                X[...] = Y

    def _record(self, p, name, value):
        self._acc.setdefault(f"{p}/{name}", []).append(float(value))

    def _record_updates(self, updates):
        """Accumulate ``||update||_F`` per factor on the device (read back once, in ``_epoch_metrics``)."""
        for p, _ in self.layers:
            for name in ("U", "s", "V"):
                u = updates.get(f"{p}.{name}")
                if u is not None:
                    xp = get_array_module(u)
                    acc = self._upd.setdefault(f"{p}/upd_{name}", [0.0, 0])
                    acc[0] = acc[0] + xp.linalg.norm(u).astype(xp.float64)
                    acc[1] += 1

    def step(self, model, x, y):
        self._retract_all(model)  # after the previous optimiser step, before this forward pass
        logits, caches, loss, e = self.forward_loss(model, x, y)
        updates, signals = self.updates(model, caches, e)
        self._record_updates(updates)
        self._steps += 1
        return StepResult(loss, logits, updates, signals)

    # -- rank schedule ------------------------------------------------------------------------------
    def _state_slices(self, prefix, keep):
        """Rule-state arrays that follow a layer's rank: name -> axis of the rank."""
        return {}

    def truncate_layer(self, model, optimizer, prefix, layer, keep):
        """Keep the singular triplets ``keep`` (ascending indices) of ``layer`` in the model, the optimiser state
        and the rule state (alignment targets) together."""
        keep = _as_host_index(keep)
        xp = get_array_module(layer.params["s"])
        kd = xp.asarray(keep)
        layer.truncate(kd)
        if optimizer is not None:
            for name, slicer in (("U", (slice(None), kd)), ("s", (kd,)), ("V", (slice(None), kd))):
                key = f"{prefix}.{name}"
                optimizer.replace_param(key, layer.params[name])
                optimizer.resize(key, slicer)
        for key, axis in self._state_slices(prefix, keep).items():
            a = self.state[key]
            self.state[key] = xp.ascontiguousarray(a[kd] if axis == 0 else a[:, kd])
        _recollect(model)

    def _reduce_ranks(self, model, optimizer, epoch, num_epochs):
        energy = {}
        for p, layer in self.layers:
            s = layer.params["s"]
            m, n = layer.dims
            if self._is_last(model, p) and not self.options["reduce_last"]:
                r_new = self.schedule.capped_rank(layer.rank, m, n)   # parity binds the classifier too
            else:
                r_new = self.schedule.new_rank(asnumpy(s), self.r0[p], m, n, epoch, num_epochs)
            if r_new < layer.rank:
                keep = keep_indices(s, r_new)
                energy[p] = retained_energy(asnumpy(s).astype(np.float64), keep)
                self.truncate_layer(model, optimizer, p, layer, keep)
        return energy

    def on_epoch_end(self, model, optimizer, epoch, num_epochs):
        self._layers(model)
        if "meta/epoch" not in self.state:
            self._init_meta(model)
        self.state["meta/num_epochs"][...] = int(num_epochs)
        self._retract_all(model)
        self._num_epochs = int(num_epochs)
        energy = self._reduce_ranks(model, optimizer, int(epoch), int(num_epochs))
        metrics = self._epoch_metrics(model, energy)
        self.state["meta/epoch"][...] = int(epoch) + 1
        self._epoch = int(epoch) + 1
        self._acc, self._upd, self._steps = {}, {}, 0
        return metrics

    def _epoch_metrics(self, model, energy):
        rows = {k: [] for k in ("rank", "params", "flops", "ortho_U", "ortho_V", "upd_U", "upd_s", "upd_V",
                                 "hoyer", "energy_kept")}
        extra = self._extra_metric_names()
        if self.retracts:
            extra = extra + ["drift_U", "drift_V"]
        rows.update({k: [] for k in extra})
        keys = list(self._upd)
        if keys:   # the accumulated update norms: one device->host transfer
            xp = get_array_module(self._upd[keys[0]][0])
            sums = asnumpy(xp.stack([xp.asarray(self._upd[k][0], dtype=xp.float64) for k in keys]))
            upd = {k: float(v) / self._upd[k][1] for k, v in zip(keys, np.asarray(sums).reshape(-1))}
        else:
            upd = {}
        for p, layer in self.layers:
            s = layer.params["s"]
            rows["rank"].append(layer.rank)
            rows["params"].append(layer.param_count())
            rows["flops"].append(layer.flops())
            rows["ortho_U"].append(orthogonality_error(layer.params["U"]))
            rows["ortho_V"].append(orthogonality_error(layer.params["V"]))
            rows["hoyer"].append(hoyer(s) if float(get_array_module(s).abs(s).sum()) > 0 else float("nan"))
            rows["energy_kept"].append(energy.get(p, 1.0))
            for name in ["upd_U", "upd_s", "upd_V"] + extra:
                v = upd.get(f"{p}/{name}", self._acc.get(f"{p}/{name}"))
                if isinstance(v, list):
                    v = float(np.mean(v)) if v else float("nan")
                rows[name].append(float("nan") if v is None else float(v))
        out = {f"svd_{k}": np.asarray(v, dtype=np.float64) for k, v in rows.items()}
        out["svd_total_params"] = float(sum(l.param_count() for _, l in self.layers))
        out["svd_total_flops"] = float(sum(l.flops() for _, l in self.layers))
        return out

    def _extra_metric_names(self):
        return []

    # -- resume ---------------------------------------------------------------------------------------
    def adapt_to_checkpoint(self, model, optimizer, shapes):
        """Truncate a fresh full-rank model (optimiser state, alignment targets) to the checkpoint's ranks."""
        for p, layer in self._layers(model):
            key = f"{p}.s"
            if key not in shapes:
                raise ValueError(f"method {self.name!r}: checkpoint has no parameter {key!r}; was it written "
                                 f"by an SVD-space rule?")
            r = int(shapes[key][0])
            if r > layer.rank:
                raise ValueError(f"method {self.name!r}: checkpoint rank {r} of layer {p} exceeds the model's "
                                 f"rank {layer.rank}")
            if r < layer.rank:  # the values are overwritten by the checkpoint; only the shapes matter here
                self.truncate_layer(model, optimizer, p, layer, np.arange(r))


# ---------------------------------------------------------------------------------------------------
# SSA
# ---------------------------------------------------------------------------------------------------
_VARIANTS = ("default", "paper")
_PROJECTIONS = ("auto", "tangent", "paper", "complement", "none")
_RETRACTIONS = ("auto", "polar", "qr", "none")
_TARGETS = ("auto", "feedback", "weight")
_YESNO = ("auto", "true", "false")


class SSA(SVDRuleBase):
    name = "ssa"
    OPTIONS = {
        "alpha": (float, 1.0, "weight of the task (DFA cross-entropy) term of the local loss, eq. (6)"),
        "beta": (float, 1e-3, "weight of the alignment loss, eq. (8)"),
        **RANK_OPTIONS,
        "ssa_variant": (str, "default", "default (sound gradients, tangent projection, retraction) or paper "
                                        "(eqs. (11)-(13) as printed)"),
        "projection": (str, "auto", "U/V projection: tangent (X - U sym(U^T X)), paper (as printed), complement "
                                    "((I - XX^T) X for U and V), none; auto: tangent (default), paper (paper)"),
        "project_ortho": (str, "auto", "project the orthogonality gradient too: true, false; auto: false "
                                       "(default), true (paper)"),
        "retraction": (str, "auto", "after the optimiser step map U, V back to the Stiefel manifold: polar, qr, "
                                    "none; auto: polar (default), none (paper)"),
        "align_target": (str, "auto", "alignment targets: feedback (factors of B_i where shapes fit), weight "
                                      "(layer-shaped feedback), auto (feedback for Linear, weight for conv)"),
        "angle_every": (int, 50, "every N steps log the eq. (4) angle between SSA's change of W and BP's "
                                 "gradient (0: off)"),
        "rsvd_oversample": (int, 10, "randomized SVD oversampling (section 4.3)"),
        "rsvd_iters": (int, 4, "randomized SVD power iterations"),
    }

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        check_choice(self.name, "ssa_variant", o["ssa_variant"], _VARIANTS)
        check_choice(self.name, "projection", o["projection"], _PROJECTIONS)
        check_choice(self.name, "project_ortho", str(o["project_ortho"]).lower(), _YESNO)
        check_choice(self.name, "retraction", o["retraction"], _RETRACTIONS)
        check_choice(self.name, "align_target", o["align_target"], _TARGETS)
        for k in ("alpha", "beta"):
            if not (o[k] >= 0.0 and math.isfinite(o[k])):
                raise ValueError(f"method {self.name!r}: option {k}={o[k]!r} must be a finite number >= 0")
        if o["angle_every"] < 0:
            raise ValueError(f"method {self.name!r}: option angle_every={o['angle_every']} must be >= 0")
        paper = o["ssa_variant"] == "paper"
        self._projection = o["projection"] if o["projection"] != "auto" else ("paper" if paper else "tangent")
        po = str(o["project_ortho"]).lower()
        self._project_ortho = (po == "true") if po != "auto" else paper
        self._retraction = o["retraction"] if o["retraction"] != "auto" else ("none" if paper else "polar")
        self.retracts = self._retraction != "none"

    # -- feedback and targets ----------------------------------------------------------------------
    def _segments(self, model):
        """``[(lead, inject)]`` for every hidden top-level weight layer: the signal ``B_i e`` enters at the
        output of layer ``inject`` (the last layer before the next weight layer) and is carried back to ``lead``."""
        layers = model.layers
        if getattr(layers[-1], "kind", None) != "svd_linear":
            raise ValueError(f"method {self.name!r} needs a Sequential model ending in a Linear classifier")
        leads = [i for i in range(len(layers) - 1)
                 if layers[i].kind in SVD_KINDS or layers[i].kind in ("residual", "linear", "conv2d")]
        for i in range(len(layers) - 1):
            if layers[i].params and i not in leads and (not leads or i < leads[0]):
                raise ValueError(f"method {self.name!r}: layer {i} ({type(layers[i]).__name__}) has parameters "
                                 f"but no weight layer before it")
        return [(s, (leads[j + 1] - 1) if j + 1 < len(leads) else len(layers) - 2) for j, s in enumerate(leads)]

    def init_state(self, model, rng):
        """Draw ``B_i`` (d_i, d_N), unit-norm columns (section 4.3), per hidden segment ("B/<lead>"), and the
        alignment targets "TU/<p>" (m, r), "Ts/<p>" (r,), "TV/<p>" (n, r) with masks "mU/<p>", "mV/<p>" (r,)."""
        layers = self._layers(model)
        self.segs = self._segments(model)
        self._shapes = layer_output_shapes(model)
        K = int(model.layers[-1].dims[0])
        self.state = {}
        self._init_meta(model)
        dims = {}
        for lead, inj in self.segs:
            d = int(math.prod(self._shapes[inj]))
            dims[str(lead)] = d
            self.state[f"B/{lead}"] = place(model, draw(rng, (d, K), "unit_col"))
        last = str(len(model.layers) - 1)
        dims[last] = K
        if self.paper and any("." in p for p, _ in layers):
            raise ValueError(f"method {self.name!r}: ssa_variant=paper needs per-layer error signals, so it "
                             f"supports models without residual blocks only")
        o = self.options
        for p, layer in layers:
            m, n = layer.dims
            r = layer.rank
            mode = o["align_target"]
            d = dims.get(p)
            if mode == "auto":
                mode = "feedback" if d == m else "weight"
            TU = np.zeros((m, r)); Ts = np.zeros(r); TV = np.zeros((n, r))
            mU = np.zeros(r); mV = np.zeros(r)
            if mode == "feedback" and d == m:
                Bh = asnumpy(self.state[f"B/{p}"]) if p != last else draw(rng, (K, K), "unit_col")
                k = min(r, Bh.shape[1])
                bu, bs, _ = randomized_svd(np.asarray(Bh, dtype=np.float64), k, rng=rng,
                                           oversample=o["rsvd_oversample"], n_iter=o["rsvd_iters"])
                TU[:, :k], Ts[:k], mU[:k] = bu, bs, 1.0   # V: B_V has d_N rows, V has n -- no target
            elif mode == "weight":
                Bw = draw(rng, (m, n), "unit_col")
                bu, bs, bv = randomized_svd(Bw, r, rng=rng, oversample=o["rsvd_oversample"],
                                            n_iter=o["rsvd_iters"])
                TU[:], Ts[:], TV[:], mU[:], mV[:] = bu, bs, bv, 1.0, 1.0
            for key, arr in (("TU", TU), ("Ts", Ts), ("TV", TV), ("mU", mU), ("mV", mV)):
                self.state[f"{key}/{p}"] = place(model, arr)

    @property
    def paper(self):
        return self.options["ssa_variant"] == "paper"

    def _state_slices(self, prefix, keep):
        return {f"TU/{prefix}": 1, f"Ts/{prefix}": 0, f"TV/{prefix}": 1, f"mU/{prefix}": 0, f"mV/{prefix}": 0}

    # -- update directions --------------------------------------------------------------------------
    def _project(self, X, G, which):
        proj = self._projection
        if proj == "tangent":
            return tangent_project(X, G)
        if proj == "complement" or (proj == "paper" and which == "U"):
            return complement_project(X, G)             # (I - X X^T) G, eq. (12) / section 5.2
        if proj == "paper":                              # V as printed in eq. (13): (I_r - V^T V) on V^T
            xp = get_array_module(X)
            M = -(X.T @ X)
            M[xp.diag_indices(M.shape[0])] += 1.0
            return G @ M                                 # dV = [(I_r - V^T V) dV^T]^T = dV (I_r - V^T V)
        return G

    def task_signals(self, model, caches, e):
        """DFA pass: ``(task grads of every parameter, signal at every top-level layer's output)``."""
        feedback = {lead: self.state[f"B/{lead}"] for lead, _ in self.segs}
        return direct_updates(model, caches, e, e, self.segs, feedback, self._shapes)  # eq. (3), (7)

    def layer_update(self, p, layer, task, dy=None, cache=None):
        """Update directions of one SVD layer.

        Parameters
        ----------
        p : str, the layer's key prefix.
        task : dict with "U" (m, r), "s" (r,), "V" (n, r): the layer's true gradients for its task signal.
        dy, cache : the signal at the layer's output and its forward cache (paper variant only).
        """
        P = layer.params
        U, s, V = P["U"], P["s"], P["V"]
        o, st = self.options, self.state
        a, b = o["alpha"], o["beta"]
        mU, mV = st[f"mU/{p}"], st[f"mV/{p}"]
        alU = (2.0 * b) * ((U - st[f"TU/{p}"]) * mU)     # d/dU  beta ||U - B_U||^2 (eq. (8))
        als = (2.0 * b) * ((s - st[f"Ts/{p}"]) * mU)
        alV = (2.0 * b) * ((V - st[f"TV/{p}"]) * mV)
        oU, oV = self._ortho_grads(layer)                # d/dU gamma ||U^T U - I||^2 = 4 gamma U (U^T U - I)
        if self.paper:
            GV, GtU = layer.dense_products(dy, cache)
            gs = (U * GV).sum(axis=0) + als              # eq. (11): diag(U^T G V) + 2 beta (S - B_S)
            gU = GV / s + alU                            # eq. (12): G V S^-1 + 2 beta (U - B_U)
            gV = GtU / s + alV                           # eq. (13), transposed: G^T U S^-1 + 2 beta (V - B_V)
        else:
            gs = a * task["s"] + als                     # alpha diag(U^T G V) + 2 beta (s - B_s)
            gU = a * task["U"] + alU                     # alpha G V S + 2 beta (U - B_U)
            gV = a * task["V"] + alV                     # alpha G^T U S + 2 beta (V - B_V)
        if self._project_ortho:
            dU, dV = self._project(U, gU + oU, "U"), self._project(V, gV + oV, "V")
        else:
            dU, dV = self._project(U, gU, "U") + oU, self._project(V, gV, "V") + oV
        h = self._hoyer_term(s)
        if h is not None:
            gs = gs + h                                  # hoyer * d(||s||_1/||s||_2)/ds (section 4.4)
        return {"U": dU, "s": gs, "V": dV}

    def updates(self, model, caches, e):
        """Update directions of every parameter: ``dU``, ``ds``, ``dV`` (``layer_update``) and ``alpha`` times the
        task gradient of ``b``.  The optimiser applies eq. (10) with them, ``U <- U - eta dU``,
        ``S <- S - eta dS``, ``V <- V - eta dV`` (SGD; momentum/Adam transform the direction first), and the
        default variant retracts ``U``, ``V`` at the next ``step``."""
        if getattr(self, "segs", None) is None:
            raise RuntimeError("SSA.init_state must run before training")
        updates, signals = self.task_signals(model, caches, e)
        a = self.options["alpha"]
        top = {str(k) for k in range(len(model.layers))}
        for p, layer in self.layers:
            task = {n: updates[f"{p}.{n}"] for n in ("U", "s", "V")}
            dy = cache = None
            if self.paper:
                k = int(p)
                dy, cache = signals[k], caches[k]
            upd = self.layer_update(p, layer, task, dy, cache)
            for n, v in upd.items():
                updates[f"{p}.{n}"] = v
            if "b" in layer.params and not self.paper:
                updates[f"{p}.b"] = a * updates[f"{p}.b"]
        every = self.options["angle_every"]
        if every and self._steps % every == 0:
            self._angles(model, caches, e, updates, signals, top)
        return updates, signals  # eq. (10): the optimiser steps U, S, V (and b) along these directions

    # -- eq. (4) angle between SSA's induced change of W and the BP gradient ----------------------------
    def _angles(self, model, caches, e, updates, signals, top):
        bp_sig = {}
        delta = e
        for k in range(len(model.layers) - 1, -1, -1):
            bp_sig[k] = delta
            if k == 0:
                break
            delta, _ = model.layers[k].backward(delta, caches[k], need_dx=True)
        for p, layer in self.layers:
            if p not in top:
                continue
            k = int(p)
            G = layer.dense_grad(bp_sig[k], caches[k])
            self._record(p, "angle", svd_update_angle(layer, *(updates[f"{p}.{n}"] for n in ("U", "s", "V")), G))
            if not self.paper:
                Gt = layer.dense_grad(signals[k], caches[k])       # the DFA (task) gradient alone
                self._record(p, "angle_task", _angle_deg(Gt, G))

    def _extra_metric_names(self):
        return ["angle", "angle_task"]


def svd_weight_change(layer, dU, ds, dV):
    """First-order change of ``W = U diag(s) V^T`` along the directions of the factors.

    Parameters
    ----------
    layer : SVDLinear or SVDConv2d, holding ``U`` (m, r), ``s`` (r,), ``V`` (n, r).
    dU : array (m, r); ds : array (r,); dV : array (n, r).

    Returns
    -------
    array (m, n): ``dW = dU S V^T + U dS V^T + U S dV^T`` (for a conv layer, in kernel-matrix form ``K'``).
    """
    U, s, V = (layer.params[n] for n in ("U", "s", "V"))
    return (dU * s) @ V.T + (U * ds) @ V.T + (U * s) @ dV.T


def svd_update_angle(layer, dU, ds, dV, G):
    """Eq. (4) angle (degrees) between the rule's induced change of ``W`` (``svd_weight_change``) and ``G``.

    Parameters
    ----------
    layer : SVD layer; dU (m, r), ds (r,), dV (n, r): the rule's update directions of its factors.
    G : array (m, n), BP's gradient w.r.t. the reconstructed ``W`` (``layer.dense_grad(delta_bp, cache)``).

    Returns
    -------
    float in [0, 180]; NaN if either is zero.  The ``svd_angle`` metric and ``metrics.AlignmentTracker``
    both call this, so the two report the same number for the same step.
    """
    return _angle_deg(svd_weight_change(layer, dU, ds, dV), G)


def _angle_deg(a, b):
    """Eq. (4): angle in degrees between two arrays of one shape (NaN if either is zero)."""
    xp = get_array_module(a, b)
    na, nb = float(xp.linalg.norm(a)), float(xp.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return float("nan")
    c = float((a * b).sum()) / (na * nb)
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))
