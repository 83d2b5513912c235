"""The learning-rule interface: everything the rest of the engine knows about a rule.

A rule turns one batch into one update direction per parameter (what plain SGD subtracts times the learning
rate).  The engine (``ssaref.run.build_run``, which train, bench, vectors, the audit and the tests all use)
drives every rule through the same calls, in this order::

    model = rule.setup(model, rng)          # once: model conversion (prepare_model), feedback drawn (init_state)
    optimizer over model.named_params() + rule.learnable(model)
    for each batch (x, y):
        result = rule.step(model, x, y)     # forward(), loss and e = dL/da_N (eq. (7)), then
                                            #   updates(model, caches, e, Batch(x, y))
        optimizer.step(result.updates, lr)
        rule.after_step(model, optimizer)   # what runs after the optimiser step (SSA: orthogonality handling)
    rule.on_epoch_end(model, optimizer, epoch, num_epochs)   # rank schedule and per-epoch metrics

**Where a rule's feedback enters.**  Always in ``updates``, the one method every rule implements:

* BP (eq. (2)): ``chain_updates(model, caches, e)`` below -- the error travels down the chain, each layer
  transposing its own weight (``Sequential.backward``, the one chain of the engine).
* FA, uSF, brSF, frSF, KP: the same chain with ``feedback={weight key: B}``: each layer carries the error to
  its input with ``B`` in place of its weight (``chain_updates(model, caches, e, feedback)``).
* DFA, DRTP, SSA (eq. (3)): ``feedback.direct_updates``: the output layer gets ``e``; every hidden segment gets
  ``B_i e`` (DRTP: ``B_i y*`` from ``batch.y``) injected at the segment's output and carried back through the
  segment's own layers.
* PEPITA: ``forward`` also keeps every layer's output; ``updates`` runs the second, modulated forward pass on
  ``batch.x + F e``.

**What a step holds.**  ``caches_read_after(model, x)`` says which top-level forward caches a rule's ``updates``
reads after that layer's backward: none for a rule that declares ``RELEASES_CACHES`` (BP, SVD-BP, the FA family,
DFA, DRTP), SSA's batch ``V^T G`` layers (all of them on its angle steps and in its paper variant), None ("any",
the default otherwise).  ``step`` then hands ``updates`` the caches as ``nn.containers.ReleasableCaches(caches,
keep)``, and the chain / injection pass frees every other one once its layer has run; a plain list (the
alignment tracker's BP pass, a rule that may read any cache) is left whole (docs/decisions.md D10).

**What runs after the optimiser step.**  ``after_step(model, optimizer)``: nothing by default; SSA retracts
``U``, ``V`` onto the Stiefel manifold there when its orthogonality handling asks for it (``retract`` after every
step, ``retract-every``; not at its default ``penalty``, D4.18), or applies the landing safeguard.
``on_epoch_end`` runs after the epoch's last ``after_step``.

**What a rule exposes for measurement and export** (``metrics``, ``vectors`` and the audit use only these,
never a rule's name or private attributes):

* ``alignment_pairs(model)``: ``AlignmentPair`` per compared matrix (matrix alignment of section 5.5);
* ``feedback_export(model)``: the feedback arrays of the coming step, per layer (golden vectors; brSF's
  per-step draw included);
* ``resolved_options(model)``: every option that affects a step, ``auto`` values resolved;
* ``GOLDEN_VARIANTS``: golden-vector cases beyond the default options;
* ``ERROR_TRANSPORT``: how the rule moves the error between weight layers (the step cost model, ``cost.py``);
* ``SUMMARY``: its line in README's table of rules (generated: ``python -m tests.gen_tables --docs``);
* ``learnable(model)``: rule-owned arrays the optimiser updates like parameters (KP's B, the auxiliary networks of
  PredSim and AugLocal); ``updates`` returns a direction for each of their keys;
* ``aux_networks()``: ``AuxNetwork`` per rule-owned layer graph (PredSim's and AugLocal's auxiliary networks,
  whose arrays are ``learnable`` under the names ``aux.<name>.<param key>``) that the engine treats like the
  model's layers where it walks them (``--sync-bn``'s BatchNorm statistics, golden vectors, Figure 5's costs);
* ``metric_layers()``: names indexing the per-layer metric columns ``on_epoch_end`` returns;
* ``keep_signals`` (set by the reader): the step returns the per-layer error signals ``StepResult.signals``; off
  by default, so a training step holds none (the alignment tracker sets it on its recording steps, the golden
  export on its step);
* ``state`` / ``state_dict`` / ``load_state_dict`` / ``adapt_to_checkpoint``: drawn arrays and resume.

**Data-parallel runs.**  Each rank's ``step`` sees its shard of the global batch and the ranks average their
directions (``distributed.average_step``), which is the global batch's update for every loss that is a mean over
examples.  ``group`` is None, or (a run over several ranks) the ``distributed.BatchGroup`` through which a rule
whose loss couples the examples of a batch (PredSim's similarity matrix) gathers the global batch's rows.

A new rule is one file here, one line in ``rules/__init__.py``'s registry and its oracle test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..backend import asnumpy, get_array_module
from ..nn.containers import ReleasableCaches
from ..ops.losses import softmax_cross_entropy, softmax_cross_entropy_backward
from ..options import Option, coerce, resolve

__all__ = [
    "Rule",
    "Option",
    "StepResult",
    "Batch",
    "AlignmentPair",
    "FeedbackExport",
    "Learnable",
    "AuxNetwork",
    "chain_updates",
    "first_param_layer",
]


class Batch(NamedTuple):
    """The batch a step trains on: inputs ``x`` (B, ...) and integer labels ``y`` (B,), on the model's device."""

    x: Any
    y: Any


@dataclass
class StepResult:
    """What one rule step produced.

    loss_value : the mean softmax cross-entropy of the batch before the update, as computed: a 0-d array on the
        model's device (or a float); ``loss`` reads it as a float (one device->host transfer on a GPU), so a
        training loop that reads losses every K steps (``--log-every``) uses ``loss_value``.
    logits : array (B, K).
    updates : dict[key, array], one direction per parameter (keys as ``model.named_params()``) and per
        ``learnable`` array of the rule (its key).
    signals : dict[int, array], the error signal the rule delivered to layer k's output (may be empty).
    """

    loss_value: Any
    logits: Any
    updates: dict
    signals: dict = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """The loss as a Python float."""
        return float(self.loss_value)

    @loss.setter
    def loss(self, value) -> None:
        self.loss_value = value


@dataclass(frozen=True)
class AlignmentPair:
    """One matrix a rule uses in place of part of BP, and what section 5.5's matrix alignment compares it with.

    key : str, the metric column: a weight key (``"3.W"``) or an SVD layer's prefix (``"3"``).
    feedback : array, the rule's matrix.
    against : ``"weight"`` -- the weight ``key`` itself (FA-type rules: B in W's shape replaces W);
        ``"downstream"`` -- ``(W_N ... W_{j+1})^T``, the transposed product of the weights after the output of
        top-level layer ``inject`` (direct rules: ``B_i`` maps ``e`` to that point).
    inject : int or None, for ``"downstream"``; None where the point lies inside a block (undefined: nan).
    """

    key: str
    feedback: Any
    against: str = "weight"
    inject: int | None = None


@dataclass
class FeedbackExport:
    """The feedback a rule's coming step uses, for golden vectors.

    layers : {top-level layer index: {name: array}}, names among ``B``, ``R``, ``B_U``, ``B_S``, ``B_V``.
    layer_attrs : {layer index: {attribute: int}} (``inject``: where a direct rule's ``B_i e`` enters).
    arrays : {name: array} not tied to one layer (PEPITA's ``F``).
    """

    layers: dict = field(default_factory=dict)
    layer_attrs: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)

    def put(self, k, name, a):
        self.layers.setdefault(int(k), {})[name] = a


class Learnable(NamedTuple):
    """A rule-owned array the optimiser updates (``key``: its optimiser/update key, also its ``state`` key);
    ``layer``, ``name``: where golden vectors file it (``update/<layer>/<name>``)."""

    key: str
    array: Any
    layer: int
    name: str


class AuxNetwork(NamedTuple):
    """A rule-owned layer graph run in training only: ``net`` (a ``Sequential``) attached to top-level layer
    ``layer`` under ``name``, reading a per-example input of shape ``in_shape``; its arrays are the rule's
    ``learnable`` ``aux.<name>.<param key>`` of that layer."""

    layer: int
    name: str
    net: Any
    in_shape: tuple = ()


def first_param_layer(model) -> int:
    """Index of the first top-level layer holding parameters (the error need not go below it)."""
    for i, layer in enumerate(model.layers):
        if layer.params:
            return i
    return len(model.layers)


def chain_updates(model, caches, e, feedback=None, *, keep_signals=True):
    """BP's chain (eq. (2)) from ``delta a_N = e`` down to the first layer with parameters.

    ``feedback`` (FA-type rules): flat weight key -> matrix of that weight's shape used in its place when the
    error is carried to the layer's input: ``delta a_{i-1} = (B_i delta a_i) o f'(a_{i-1})``; the parameter
    gradients stay the true local ones, ``delta W_i = delta a_i h_{i-1}^T``.

    Returns ``(updates, signals)``: every parameter's gradient given the error its layer received, and the error
    delivered to each top-level layer's output -- empty unless ``keep_signals`` (a rule passes its
    ``keep_signals``: each layer's error is then freed once the layer below has its own).
    """
    signals: dict | None = {} if keep_signals else None
    _, updates = model.backward(
        e, caches, need_dx=False, feedback=feedback or None, stop=first_param_layer(model), signals=signals
    )
    return updates, signals or {}


class Rule:
    """Base class; see the module docstring for the calls and their order.

    Subclasses set ``name``, declare ``OPTIONS`` (``name -> Option(type, default, help)`` or a plain tuple; the
    configuration module ``ssaref.config`` turns each into a flag ``--name`` and a TOML key) and implement
    ``updates``; they may override the other hooks.
    ``step`` is not overridden: it is the same for every rule.
    """

    name = "base"
    OPTIONS: dict = {}
    # golden-vector cases beyond "default" (ssaref.vectors exports every registered rule's default): variant name ->
    # (rule options, plain-SGD warm-up steps on the batch before the recorded step[, {"models", "warmup_options",
    # "optimizer", "steps"}]); a "default" entry may only set the models (docs/golden-vectors.md)
    GOLDEN_VARIANTS: dict = {}
    # {(option, value): "X.Y.Z"}: with ``option`` at ``value`` the unset options take the defaults of version X.Y.Z
    # (their history is declared with each ``Option``; ssaref/options.py)
    DEFAULTS_OF: dict = {}
    # how the rule moves the error between weight layers, for the step cost model (ssaref/cost.py, ``TRANSPORTS``):
    # "chain" (an input gradient through every weight layer past the first: BP, SVD-BP, the FA family), "direct"
    # (``e B_l`` to every hidden layer: DFA, DRTP, SSA), "local" (the local losses of ``aux_networks()``: PredSim,
    # AugLocal) or "two_forwards" (PEPITA); a rule must declare it
    ERROR_TRANSPORT = ""
    # one line for README's table of rules (``python -m tests.gen_tables --docs`` writes it), declared in the rule's
    # own module (rules that share a module and a summary share a row)
    SUMMARY = ""
    # the rule's ``updates`` reads each forward cache only in that layer's backward (the chain, the injection pass),
    # so ``step`` hands it ``nn.containers.ReleasableCaches`` and each cache is freed once its layer's backward has
    # run (issue 26, docs/decisions.md D10); a rule that reads caches afterwards (SSA, PEPITA, the local-loss rules)
    # leaves it False
    RELEASES_CACHES = False
    # whether ``step`` returns the per-layer error signals (``StepResult.signals``).  Off for training, where nothing
    # reads them and each one would be held to the end of the backward (D10); whoever reads them sets it on the
    # rule first: the alignment tracker on its recording steps, the golden-vector export, tests.  A rule whose
    # own updates use some signals (SSA) collects those either way, and the rest only when this is set.
    keep_signals = False

    def __init__(self, **options):
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(
                f"method {self.name!r} takes no option(s) {sorted(unknown)}; "
                f"its options are {sorted(self.OPTIONS) or 'none'}"
            )
        given = {}
        for k, v in options.items():
            typ = self.OPTIONS[k][0]
            try:
                given[k] = coerce(typ, v)
            except (TypeError, ValueError):
                raise ValueError(
                    f"method {self.name!r}: option {k}={v!r} is not a valid {getattr(typ, '__name__', typ)}"
                ) from None
        self.options = resolve(self.OPTIONS, given, defaults_of=self.DEFAULTS_OF)
        self.state: dict = {}  # drawn arrays (feedback matrices); saved in checkpoints
        self.group = None  # distributed.BatchGroup in a run over several ranks (module docstring)

    # -- set-up ------------------------------------------------------------------------------------
    def setup(self, model, rng):
        """The one set-up call: convert the model (``prepare_model``) and draw the rule's fixed arrays from the
        run's generator ``rng`` (``init_state``).  Returns the model to train (SSA/SVD-BP: a converted one)."""
        model = self.prepare_model(model)
        self.init_state(model, rng)
        return model

    def prepare_model(self, model):
        """Hook of ``setup``: the model this rule trains (SSA/SVD-BP swap dense layers for SVD-space ones)."""
        return model

    def init_state(self, model, rng) -> None:
        """Hook of ``setup``: draw whatever the rule fixes at initialisation (nothing for BP)."""

    def learnable(self, model) -> list[Learnable]:
        """Rule-owned arrays the optimiser updates like parameters (none by default; KP's ``B``)."""
        return []

    def aux_networks(self) -> list[AuxNetwork]:
        """Rule-owned layer graphs run in training only (none by default; PredSim's and AugLocal's auxiliary
        networks), their arrays among ``learnable``."""
        return []

    # -- one step ------------------------------------------------------------------------------------
    def forward(self, model, x):
        """Training-mode forward pass: ``(logits, caches)``, one cache per top-level layer.  A rule that needs
        more of the forward pass (PEPITA: every layer's output) keeps it in its caches."""
        return model.forward(x, train=True)

    def forward_loss(self, model, x, y):
        """``forward``, the mean cross-entropy (a 0-d array: no host read) and ``e = dL/da_N = (softmax -
        onehot)/B`` (eq. (7)).  Labels on the host are checked here; device labels were checked on the host before
        they were copied (the training loop), so no read-back is spent on them."""
        logits, caches = self.forward(model, x)
        loss, lcache = softmax_cross_entropy(
            logits, y, as_array=True, check_labels=isinstance(y, np.ndarray) or not hasattr(y, "dtype")
        )
        e = softmax_cross_entropy_backward(lcache)  # eq. (7)
        return logits, caches, loss, e

    def step(self, model, x, y) -> StepResult:
        """One step's update directions (the parameters are not changed; the optimiser applies them)."""
        logits, caches, loss, e = self.forward_loss(model, x, y)
        keep = self.caches_read_after(model, x)
        if keep is not None:  # every other cache is freed once its layer's backward has used it
            caches = ReleasableCaches(caches, keep)
        updates, signals = self.updates(model, caches, e, Batch(x, y))
        return StepResult(loss, logits, updates, signals if self.keep_signals else {})

    def caches_read_after(self, model, x):
        """The top-level layer indices whose forward caches ``updates`` reads after that layer's backward has run
        (kept to the step's end; every other cache is freed once used), or None: it may read any of them (a plain
        list, nothing freed).  Here: none for a rule that declares ``RELEASES_CACHES``, else None."""
        return frozenset() if self.RELEASES_CACHES else None

    def updates(self, model, caches, e, batch):
        """Return ``(updates, signals)`` (see ``StepResult``) from the forward ``caches``, the output error
        ``e`` (eq. (7)) and the ``batch`` (``batch.y``: the labels, for rules that use the target).  ``signals``
        may be empty unless ``keep_signals`` (the chain and the injection pass take it as ``keep_signals=``)."""
        raise NotImplementedError

    def after_step(self, model, optimizer) -> None:
        """Called right after every optimiser step (``optimizer`` may be None for a hand-applied update)."""

    def on_epoch_end(self, model, optimizer, epoch, num_epochs) -> dict:
        """Called after each epoch (``epoch`` counts from 1): rank changes and the like.

        Returns per-epoch metrics to log (name -> float or array); nothing by default.
        """
        return {}

    # -- measurement and export -------------------------------------------------------------------------
    def metric_layers(self) -> list[str]:
        """Names of the layers that index the columns of the per-layer (array) metrics ``on_epoch_end``
        returns, in column order; ``[]`` when the rule logs none (the training loop stores it in the run file's
        config).  SSA/SVD-BP: the key prefixes of the SVD layers in forward order."""
        return []

    def alignment_pairs(self, model) -> list[AlignmentPair]:
        """The matrices the rule uses in place of BP's, with what each is compared with (none by default)."""
        return []

    def feedback_export(self, model) -> FeedbackExport:
        """The feedback arrays the coming step uses (for golden vectors); none by default."""
        return FeedbackExport()

    def resolved_options(self, model) -> dict:
        """Every option that affects a step, ``auto`` values resolved (golden vectors record it)."""
        return dict(self.options)

    # -- checkpointing of drawn state -------------------------------------------------------
    def adapt_to_checkpoint(self, model, optimizer, shapes) -> None:
        """Before a resume: reshape the model (e.g. truncate ranks) to the checkpoint's parameter
        ``shapes`` (key -> tuple).  Nothing by default: shapes must then match exactly."""

    def state_dict(self) -> dict:
        return {k: asnumpy(v) for k, v in self.state.items()}

    def load_state_dict(self, d, xp) -> None:
        """Restore the state arrays; an array of the same shape is overwritten in place, so an optimiser that
        holds a ``learnable`` array keeps updating the restored one."""
        missing = set(self.state) - set(d)
        if missing:
            raise ValueError(f"rule {self.name!r}: checkpoint lacks feedback arrays {sorted(missing)}")
        for k, v in d.items():
            kind = np.dtype(getattr(v, "dtype", np.float64)).kind
            want = np.dtype(self.state[k].dtype).kind if k in self.state else kind
            if kind not in "iuf" or (kind == "f") != (want == "f"):
                raise ValueError(
                    f"rule {self.name!r}: state {k!r} has dtype {getattr(v, 'dtype', type(v))}, "
                    f"expected {self.state[k].dtype if k in self.state else 'a real number type'}"
                )
            if kind == "f" and not bool(np.isfinite(asnumpy(v)).all()):
                raise ValueError(f"rule {self.name!r}: state {k!r} holds NaN or inf")
        for k, v in d.items():
            if k in self.state and tuple(self.state[k].shape) != tuple(v.shape):
                raise ValueError(
                    f"rule {self.name!r}: feedback {k!r} has shape {tuple(v.shape)} in the "
                    f"checkpoint, expected {tuple(self.state[k].shape)}"
                )
            if k in self.state and get_array_module(self.state[k]) is xp:
                self.state[k][...] = xp.asarray(v, dtype=self.state[k].dtype)
            else:
                dtype = self.state[k].dtype if k in self.state else v.dtype
                self.state[k] = xp.asarray(v, dtype=dtype)
