"""The learning-rule interface.

A rule receives the model, the forward caches and the output error
``e = dL/da_N`` (eq. (7)) and returns one update direction per parameter: the
quantity plain SGD subtracts times the learning rate.  Rules differ only where
the paper says they differ; ``diff rules/bp.py rules/dfa.py`` shows where.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..backend import asnumpy
from ..ops.losses import softmax_cross_entropy, softmax_cross_entropy_backward

__all__ = ["Rule", "StepResult"]


@dataclass
class StepResult:
    """What one rule step produced.

    loss : float, the mean softmax cross-entropy of the batch before the update.
    logits : array (B, K).
    updates : dict[key, array], one direction per parameter, keys as ``model.named_params()``.
    signals : dict[int, array], the error signal the rule delivered to layer k's output (may be empty).
    """

    loss: float
    logits: object
    updates: dict
    signals: dict = field(default_factory=dict)


def _coerce(typ, v):
    """Convert a flag or TOML value to the option's type ('true'/'false' for bools)."""
    if v is None:
        return None
    if typ is bool and isinstance(v, str):
        low = v.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(v)
        return low in ("true", "1", "yes", "on")
    if typ is str and not isinstance(v, str):
        raise ValueError(v)
    return typ(v)


class Rule:
    """Base class.  Subclasses implement ``updates`` (or override ``step``).

    ``OPTIONS`` declares the rule's hyper-parameters as ``name -> (type, default, help)``;
    the training CLI turns each into a flag ``--name`` (underscores as dashes) and a TOML key.
    """

    name = "base"
    OPTIONS: dict = {}

    def __init__(self, **options):
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"method {self.name!r} takes no option(s) {sorted(unknown)}; "
                             f"its options are {sorted(self.OPTIONS) or 'none'}")
        self.options = {k: spec[1] for k, spec in self.OPTIONS.items()}
        for k, v in options.items():
            typ = self.OPTIONS[k][0]
            try:
                self.options[k] = _coerce(typ, v)
            except (TypeError, ValueError):
                raise ValueError(f"method {self.name!r}: option {k}={v!r} is not a valid "
                                 f"{getattr(typ, '__name__', typ)}") from None
        self.state: dict = {}  # drawn arrays (feedback matrices); saved in checkpoints

    def prepare_model(self, model):
        """Return the model this rule trains (SSA/SVD-BP swap dense layers for SVD-space ones)."""
        return model

    def init_state(self, model, rng) -> None:
        """Draw whatever the rule fixes at initialisation (nothing for BP)."""

    def adapt_to_checkpoint(self, model, optimizer, shapes) -> None:
        """Before a resume: reshape the model (e.g. truncate ranks) to the checkpoint's parameter
        ``shapes`` (key -> tuple).  Nothing by default: shapes must then match exactly."""

    def on_epoch_end(self, model, optimizer, epoch, num_epochs) -> dict:
        """Called after each epoch (``epoch`` counts from 1): rank changes and the like.

        Returns per-epoch metrics to log (name -> float or array); nothing by default.
        """
        return {}

    def metric_layers(self) -> list[str]:
        """Names of the layers that index the columns of the per-layer (array) metrics ``on_epoch_end``
        returns, in column order; ``[]`` when the rule logs none (the training loop stores it in the run file's
        config).  SSA/SVD-BP: the key prefixes of the SVD layers in forward order."""
        return []

    def forward_loss(self, model, x, y):
        """Forward pass, mean cross-entropy and ``e = dL/da_N = (softmax - onehot)/B`` (eq. (7))."""
        logits, caches = model.forward(x, train=True)
        loss, lcache = softmax_cross_entropy(logits, y)
        e = softmax_cross_entropy_backward(lcache)  # eq. (7)
        return logits, caches, float(loss), e

    def step(self, model, x, y) -> StepResult:
        logits, caches, loss, e = self.forward_loss(model, x, y)
        updates, signals = self.updates(model, caches, e)
        return StepResult(loss, logits, updates, signals)

    def updates(self, model, caches, e):
        """Return ``(updates, signals)``; see ``StepResult``."""
        raise NotImplementedError

    # -- checkpointing of drawn state -------------------------------------------------------
    def state_dict(self) -> dict:
        return {k: asnumpy(v) for k, v in self.state.items()}

    def load_state_dict(self, d, xp) -> None:
        missing = set(self.state) - set(d)
        if missing:
            raise ValueError(f"rule {self.name!r}: checkpoint lacks feedback arrays {sorted(missing)}")
        for k, v in d.items():
            if k in self.state and tuple(self.state[k].shape) != tuple(v.shape):
                raise ValueError(f"rule {self.name!r}: feedback {k!r} has shape {tuple(v.shape)} in the "
                                 f"checkpoint, expected {tuple(self.state[k].shape)}")
            dtype = self.state[k].dtype if k in self.state else v.dtype
            self.state[k] = xp.asarray(v, dtype=dtype)
