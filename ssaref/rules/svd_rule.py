"""The shared base of the rules that train SVD-space layers (SSA, SVD-BP): model conversion, the rank schedule of
section 4.4 with the truncation of the optimiser and rule state, the orthogonality (eq. (9)) and Hoyer terms, the
per-epoch ``svd_*`` metrics, and resume across rank cuts.

A subclass implements ``svd_updates(model, caches, e, batch)``; ``updates`` wraps it to accumulate the update norms.
The orthogonality handling of ``U``, ``V`` (retraction, retract-every, landing; D4.12) is SSA's (rules/ssa.py); it
reaches this base through the hooks ``_init_step_count``, ``_before_step``, ``_before_rank_schedule`` and the
flags ``retracts`` / ``landing`` (SVD-BP keeps the factors as the optimiser leaves them).
Shared options added for issue 10: ``rank_reading`` (D4.9), ``parity_last`` (D4.10), ``svd_init`` /
``bias_init`` (D4.11).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import asnumpy, get_array_module
from ..linalg import (
    factor_condition,
    gram,
    hoyer,
    hoyer_grad,
    orthogonality_error,
    retained_energy,
)
from ..nn.models import BIAS_INITS, WEIGHT_INITS, reinitialise
from ..nn.containers import collect
from ..nn.svd_layers import convert_model, svd_layers_of
from ..rank import RankSchedule, keep_indices, parity_rank
from .feedback import check_choice, place
from ..options import first_defaults
from .base import Option, Rule

__all__ = ["SVDRule", "RANK_OPTIONS"]


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
    # D4.9: readings of section 4.4's threshold rule (the paper does not say whether it is re-applied)
    "rank_reading": Option(
        str,
        "every",
        "threshold rule of the rank schedule (section 4.4): every (95% energy rule re-applied at every epoch "
        "end of the threshold phase, compounding), once (applied at the first epoch end of the threshold phase "
        "only), relative (energy measured against the spectrum at the start of the threshold phase), none (no "
        "threshold phase)",
        added="0.2.0",
    ),
    # D4.10: section 4.4 states r < mn/(m+n) for every layer; false exempts the classifier
    "parity_last": Option(
        bool,
        True,
        "with parity on, cap the classifier too (section 4.4's rule for every layer); false: the classifier "
        "is exempt from parity (it then keeps its rank, or follows the schedule without the cap with reduce_last)",
        added="0.2.0",
    ),
    # D4.11: the dense initialisation the factors are the SVD of (section 4.1 starts from the usual one)
    "svd_init": Option(
        str,
        "default",
        "dense initialisation the SVD factors are taken from (section 4.1): default (the model's own draw, "
        "U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is torch's default), kaiming_uniform_a5 (the same "
        "distribution, torch's kaiming_uniform_(a=sqrt(5)), drawn afresh from a generator jumped off the "
        "rule's), orthogonal (torch's orthogonal_, gain 1, on the weight viewed as (out, fan_in))",
        added="0.2.0",
    ),
    # D4.11: the bias of eq. (1)'s layers, drawn as the dense layer's (the paper is silent)
    "bias_init": Option(
        str,
        "uniform",
        "bias initialisation of the SVD layers: uniform (the model's own draw, U(-1/sqrt(fan_in), "
        "1/sqrt(fan_in)), torch's default) or zero",
        added="0.2.0",
    ),
}

SVD_INITS = WEIGHT_INITS  # ("default", "kaiming_uniform_a5", "orthogonal")


class SVDRule(Rule):
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
            reading=o["rank_reading"],
        )
        check_choice(self.name, "svd_init", o["svd_init"], SVD_INITS)
        check_choice(self.name, "bias_init", o["bias_init"], BIAS_INITS)
        self.layers: list[tuple[str, Any]] = []  # [(prefix, SVD layer)] in forward order, set by prepare_model
        self.r0 = {}  # prefix -> full rank at conversion
        self._acc = {}
        self._upd = {}  # "<p>/upd_<name>" -> [sum of the update norms (0-d device array), count]
        self._jump = {}  # "<p>/retract_jump" -> largest relative change of W by a retraction (0-d device array)
        self._steps = 0
        self._epoch, self._num_epochs = 1, 0  # host copies of "meta/epoch", "meta/num_epochs"

    # the orthogonality handling of U, V (SSA's, rules/ssa.py, D4.12) reaches the shared machinery through these
    @property
    def retracts(self):
        """Whether ``after_step`` retracts ``U``, ``V`` (the svd_drift_* and svd_retract_jump metrics); SSA's."""
        return False

    @property
    def landing(self):
        """Whether ``U``, ``V`` follow the landing field (the svd_drift_* and svd_guard_* metrics); SSA's."""
        return False

    def _init_step_count(self, model):
        """Hook of ``_init_meta``: state that counts optimiser steps (SSA's retract-every)."""

    def _before_step(self):
        """Hook of ``updates``, before the subclass's directions (SSA's landing keeps the factors)."""

    def _before_rank_schedule(self, model):
        """Hook of ``on_epoch_end``, before the rank schedule (SSA's retraction)."""

    # -- model ------------------------------------------------------------------------------------
    def setup(self, model, rng):
        """``Rule.setup`` after redrawing the dense initialisation when ``svd_init`` / ``bias_init`` ask for it
        (D4.11); the defaults draw nothing, so the rule's generator ``rng`` (feedback) is untouched either way:
        a new draw comes from a generator jumped off it."""
        o = self.options
        if o["svd_init"] != "default" or o["bias_init"] != "uniform":
            bg = rng.bit_generator
            init_rng = np.random.Generator(bg.jumped()) if hasattr(bg, "jumped") else np.random.default_rng(0)
            reinitialise(model, weight=o["svd_init"], bias=o["bias_init"], rng=init_rng)
        return super().setup(model, rng)

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
        self._init_step_count(model)
        if self.schedule.reading == "relative":
            # reference energy of the "relative" reading: the initial spectrum (the reference of "energy"); the
            # hybrid schedule replaces it at the end of epoch T1 (``_reduce_ranks``)
            for p, layer in self._layers(model):
                s = asnumpy(layer.params["s"]).astype(np.float64)
                self.state[f"Eref/{p}"] = place(model, np.array([float((s * s).sum())]))

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
            M = gram(X)
            M[xp.diag_indices(M.shape[0])] -= 1.0
            out.append((4.0 * g) * (X @ M))
        return out

    def _hoyer_term(self, s):
        return self.options["hoyer"] * hoyer_grad(s) if self.hoyer_on() else None

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
        """``svd_updates`` (the subclass's update directions), with the norms of the factor updates accumulated
        (landing: the factors are remembered first, for the step safeguard of ``after_step``)."""
        self._before_step()
        updates, signals = self.svd_updates(model, caches, e, batch)
        self._record_updates(updates)
        self._steps += 1
        return updates, signals

    def svd_updates(self, model, caches, e, batch):
        """The rule's ``(updates, signals)``; see ``Rule.updates``."""
        raise NotImplementedError

    def resolved_options(self, model):
        out = dict(self.options, hoyer_active=bool(self.hoyer_on()))
        # options added after golden-vector schema 1 (``Option.added``) are listed (all of them) only when one
        # differs from what ssaref 0.1.0 ran, so files whose steps they do not change stay byte-identical and a
        # reader may take an absent option to mean that value; SSA's defaults since 0.2.0 (D4.15) differ, so SSA's
        # default golden files list them all
        later = first_defaults(self.OPTIONS)
        if all(out[k] == v for k, v in later.items()):
            for k in later:
                del out[k]
        return out

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
        collect(model)

    def _reduce_ranks(self, model, optimizer, epoch, num_epochs):
        energy = {}
        o = self.options
        for p, layer in self.layers:
            s = layer.params["s"]
            m, n = layer.dims
            last = self._is_last(model, p)
            parity = None if not last or o["parity_last"] else False  # parity_last=false: classifier exempt
            ref = self.state.get(f"Eref/{p}")
            ref = None if ref is None else float(np.asarray(asnumpy(ref)).reshape(-1)[0])
            if last and not o["reduce_last"]:
                r_new = self.schedule.capped_rank(layer.rank, m, n, parity=parity)  # parity binds it too
            else:
                r_new = self.schedule.new_rank(
                    asnumpy(s), self.r0[p], m, n, epoch, num_epochs, ref_energy=ref, parity=parity
                )
            if r_new < layer.rank:
                keep = keep_indices(s, r_new)
                energy[p] = retained_energy(asnumpy(s).astype(np.float64), keep)
                self.truncate_layer(model, optimizer, p, layer, keep)
            if self.schedule.needs_reference(epoch, num_epochs):  # the spectrum the threshold phase starts with
                sk = asnumpy(layer.params["s"]).astype(np.float64)
                self.state[f"Eref/{p}"] = place(model, np.array([float((sk * sk).sum())]))
        return energy

    def on_epoch_end(self, model, optimizer, epoch, num_epochs):
        self._layers(model)
        if "meta/epoch" not in self.state:
            self._init_meta(model)
        self.state["meta/num_epochs"][...] = int(num_epochs)
        self._before_rank_schedule(model)
        self._num_epochs = int(num_epochs)
        energy = self._reduce_ranks(model, optimizer, int(epoch), int(num_epochs))
        metrics = self._epoch_metrics(model, energy)
        self.state["meta/epoch"][...] = int(epoch) + 1
        self._epoch = int(epoch) + 1
        self._acc, self._upd, self._jump, self._steps = {}, {}, {}, 0
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
                "s_max",
                "s_min",
                "cond_U",
                "cond_V",
                "rank_bound",
                "rank_ok",
            )
        }
        extra = self._extra_metric_names()
        if self.retracts or self.landing:
            extra = extra + ["drift_U", "drift_V"]
        if self.retracts:
            extra = extra + ["retract_jump"]
        if self.landing:
            extra = extra + ["guard_U", "guard_V"]
        rows.update({k: [] for k in extra})
        keys = list(self._upd)
        if keys:  # the accumulated update norms: one device->host transfer
            xp = get_array_module(self._upd[keys[0]][0])
            sums = asnumpy(xp.stack([xp.asarray(self._upd[k][0], dtype=xp.float64) for k in keys]))
            upd = {k: float(v) / self._upd[k][1] for k, v in zip(keys, np.asarray(sums).reshape(-1))}
        else:
            upd = {}
        jkeys = list(self._jump)
        if jkeys:  # the largest retraction jumps: one device->host transfer
            xp = get_array_module(self._jump[jkeys[0]])
            vals = np.asarray(asnumpy(xp.stack([xp.asarray(self._jump[k], dtype=xp.float64) for k in jkeys])))
            upd.update({k: float(v) for k, v in zip(jkeys, vals.reshape(-1))})
        count = self.schedule.parity_count
        for p, layer in self.layers:
            s = layer.params["s"]
            rows["rank"].append(layer.rank)
            rows["params"].append(layer.param_count())
            rows["flops"].append(layer.flops())
            rows["ortho_U"].append(orthogonality_error(layer.params["U"]))
            rows["ortho_V"].append(orthogonality_error(layer.params["V"]))
            rows["hoyer"].append(hoyer(s) if float(get_array_module(s).abs(s).sum()) > 0 else float("nan"))
            rows["energy_kept"].append(energy.get(p, 1.0))
            sa = np.abs(np.asarray(asnumpy(s), dtype=np.float64))
            rows["s_max"].append(float(sa.max()))
            rows["s_min"].append(float(sa.min()))
            rows["cond_U"].append(factor_condition(layer.params["U"]))
            rows["cond_V"].append(factor_condition(layer.params["V"]))
            m, n = layer.dims
            bound = parity_rank(m, n, count)  # section 4.4: r < mn/(m+n) (parity_count says what is counted)
            rows["rank_bound"].append(bound)
            rows["rank_ok"].append(float(layer.rank <= bound))
            for name in ["upd_U", "upd_s", "upd_V"] + extra:
                v = upd.get(f"{p}/{name}", self._acc.get(f"{p}/{name}"))
                if isinstance(v, list):
                    v = float(np.mean(v)) if v else float("nan")
                rows[name].append(float("nan") if v is None else float(v))
        out: dict[str, Any] = {f"svd_{k}": np.asarray(v, dtype=np.float64) for k, v in rows.items()}
        out["svd_total_params"] = float(sum(l.param_count() for _, l in self.layers))
        out["svd_total_flops"] = float(sum(l.flops() for _, l in self.layers))
        out["svd_rank_ok_all"] = float(all(v == 1.0 for v in rows["rank_ok"]))
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
