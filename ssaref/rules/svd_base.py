"""The shared base of the rules that train SVD-space layers (SSA, SVD-BP): model conversion, the rank schedule of
section 4.4 with the truncation of the optimiser and rule state, the orthogonality (eq. (9)) and Hoyer terms, the
per-epoch ``svd_*`` metrics, and resume across rank cuts.

A subclass implements ``svd_updates(model, caches, e, batch)``; ``updates`` wraps it to accumulate the update norms.
``after_step`` retracts ``U``, ``V`` onto the Stiefel manifold when the subclass sets ``retraction`` (SSA's default).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import asnumpy, get_array_module
from ..linalg import hoyer, hoyer_grad, orthogonality_error, orthogonality_errors, retained_energy, retract
from ..nn.svd_layers import convert_model, recollect, svd_layers_of
from ..rank import RankSchedule, keep_indices
from ._feedback import place
from .base import Rule

__all__ = ["SVDRuleBase", "RANK_OPTIONS"]


def _as_host_index(keep):
    return np.asarray(keep, dtype=np.int64)


RANK_OPTIONS = {
    "gamma": (float, 1e-2, "weight of the orthogonality regulariser ||U^T U - I||^2 + ||V^T V - I||^2 (eq. (9))"),
    "hoyer": (float, 1e-3, "weight of the Hoyer regulariser ||s||_1/||s||_2 on singular values (section 4.4)"),
    "hoyer_every": (int, 10, "Hoyer term active in epochs e of the epoch-based phase with (e-1) % N == 0"),
    "rank_schedule": (str, "hybrid", "rank reduction: hybrid (section 4.4), epoch, energy or none"),
    "reduce_to": (float, 0.7, "epoch-based phase reduces the rank linearly to this fraction of r0"),
    "reduce_frac": (float, 0.3, "fraction of the epochs spent in the epoch-based phase"),
    "energy": (float, 0.95, "threshold phase keeps the top singular values holding this share of sum s^2"),
    "min_rank_frac": (float, 0.3, "the rank never drops below this fraction of r0"),
    "parity": (
        bool,
        False,
        "at every epoch end cap the rank of every SVD layer, the classifier included "
        "(whatever reduce_last says), so the factored layer holds fewer numbers than the dense "
        "one (section 4.4; parity_count says what is counted); takes precedence over "
        "min_rank_frac",
    ),
    "parity_count": (
        str,
        "factors",
        "what parity counts: factors (r(m+n) < mn, the paper's printed rule "
        "r < mn/(m+n)) or with_s (r(m+n+1) < mn, the singular values counted too)",
    ),
    "reduce_last": (
        bool,
        False,
        "also run the rank schedule on the output (classifier) layer; without it the "
        "classifier keeps its rank, except for the parity cap when parity is on",
    ),
}


class SVDRuleBase(Rule):
    """Common machinery of the rules that train SVD-space layers."""

    name = "svd-base"
    OPTIONS = dict(RANK_OPTIONS)

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        for k in ("gamma", "hoyer"):
            if not (o[k] >= 0.0 and math.isfinite(o[k])):
                raise ValueError(f"method {self.name!r}: option {k}={o[k]!r} must be a finite number >= 0")
        self.schedule = RankSchedule(
            kind=o["rank_schedule"],
            reduce_to=o["reduce_to"],
            reduce_frac=o["reduce_frac"],
            energy=o["energy"],
            min_rank_frac=o["min_rank_frac"],
            parity=o["parity"],
            hoyer_every=o["hoyer_every"],
            parity_count=o["parity_count"],
        )
        self.retraction = "none"  # after_step maps U, V back to the Stiefel manifold unless "none" (SSA sets it)
        self.layers: list[tuple[str, Any]] = []  # [(prefix, SVD layer)] in forward order, set by prepare_model
        self.r0 = {}  # prefix -> full rank at conversion
        self._acc = {}
        self._upd = {}  # "<p>/upd_<name>" -> [sum of the update norms (0-d device array), count]
        self._steps = 0
        self._epoch, self._num_epochs = 1, 0  # host copies of "meta/epoch", "meta/num_epochs"

    @property
    def retracts(self):
        """Whether ``after_step`` retracts ``U``, ``V``."""
        return self.retraction != "none"

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
        return [p for p, _ in self.layers]

    def _layers(self, model):
        if not self.layers:
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
        self._epoch = (
            int(np.asarray(asnumpy(self.state["meta/epoch"])).reshape(-1)[0]) if "meta/epoch" in self.state else 1
        )
        self._num_epochs = (
            int(np.asarray(asnumpy(self.state["meta/num_epochs"])).reshape(-1)[0])
            if "meta/num_epochs" in self.state
            else 0
        )

    # -- per-step pieces ----------------------------------------------------------------------------
    def hoyer_on(self):
        return self.options["hoyer"] > 0.0 and self.schedule.hoyer_active(self.epoch, self.num_epochs or 10**9)

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
        todo = [
            (p, name, layer.params[name])
            for p, layer in self._layers(model)
            for name in ("U", "V")
            if layer.params[name].shape[0] >= layer.params[name].shape[1]
        ]
        errs = orthogonality_errors([X for _, _, X in todo])
        for (p, name, X), e in zip(todo, errs):
            Y, err = retract(X, self.retraction, return_error=True, check_every=None, error=e)
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

    def updates(self, model, caches, e, batch):
        """``svd_updates`` (the subclass's update directions), with the norms of the factor updates accumulated."""
        updates, signals = self.svd_updates(model, caches, e, batch)
        self._record_updates(updates)
        self._steps += 1
        return updates, signals

    def svd_updates(self, model, caches, e, batch):
        """The rule's ``(updates, signals)``; see ``Rule.updates``."""
        raise NotImplementedError

    def after_step(self, model, optimizer):
        """Retract ``U``, ``V`` onto the Stiefel manifold (when ``retraction`` is not "none"), so the next forward
        pass, evaluation and checkpoint see orthonormal factors."""
        self._retract_all(model)

    def resolved_options(self, model):
        return dict(self.options, hoyer_active=bool(self.hoyer_on()))

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
        recollect(model)

    def _reduce_ranks(self, model, optimizer, epoch, num_epochs):
        energy = {}
        for p, layer in self.layers:
            s = layer.params["s"]
            m, n = layer.dims
            if self._is_last(model, p) and not self.options["reduce_last"]:
                r_new = self.schedule.capped_rank(layer.rank, m, n)  # parity binds the classifier too
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
        rows: dict[str, list[Any]] = {
            k: []
            for k in (
                "rank",
                "params",
                "flops",
                "ortho_U",
                "ortho_V",
                "upd_U",
                "upd_s",
                "upd_V",
                "hoyer",
                "energy_kept",
            )
        }
        extra = self._extra_metric_names()
        if self.retracts:
            extra = extra + ["drift_U", "drift_V"]
        rows.update({k: [] for k in extra})
        keys = list(self._upd)
        if keys:  # the accumulated update norms: one device->host transfer
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
        out: dict[str, Any] = {f"svd_{k}": np.asarray(v, dtype=np.float64) for k, v in rows.items()}
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
                raise ValueError(
                    f"method {self.name!r}: checkpoint has no parameter {key!r}; was it written by an SVD-space rule?"
                )
            r = int(shapes[key][0])
            if r > layer.rank:
                raise ValueError(
                    f"method {self.name!r}: checkpoint rank {r} of layer {p} exceeds the model's rank {layer.rank}"
                )
            if r < layer.rank:  # the values are overwritten by the checkpoint; only the shapes matter here
                self.truncate_layer(model, optimizer, p, layer, np.arange(r))
