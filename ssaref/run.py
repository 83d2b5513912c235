"""``build_run``: the one place where a model, a learning rule and an optimiser are put together.

train, bench, vectors, the audit and the tests all start a run here, so the set-up order is written once::

    model = rule.setup(model, rng)                      # conversion + drawn feedback (rules/base.py)
    optimizer over model.named_params() + rule.learnable(model)

and one training step is ``Run.train_step`` (its ``between`` hook where the caller looks at the result before the
update, as the training loop does): the rule's directions, the optimiser step, the rule's ``after_step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .optim import Optimizer, build_optimizer
from .rules import Rule, StepResult, build_rule

__all__ = ["Run", "build_run"]


@dataclass
class Run:
    """A model, its rule and (optionally) the optimiser over the model's parameters and the rule's learnables."""

    model: Any
    rule: Rule
    optimizer: Optimizer | None

    def step(self, x, y) -> StepResult:
        """The rule's update directions for one batch (nothing is changed yet)."""
        return self.rule.step(self.model, x, y)

    def apply(self, result: StepResult, lr: float | None = None) -> None:
        """The optimiser step along ``result.updates``, then the rule's ``after_step``."""
        if self.optimizer is None:
            raise ValueError("this run was built without an optimiser")
        self.optimizer.step(result.updates, lr=lr)
        self.rule.after_step(self.model, self.optimizer)

    def train_step(self, x, y, lr: float | None = None, between=None) -> StepResult:
        """``step`` then ``apply``; returns the step's result (loss and logits from before the update).  A caller that
        looks at the result before the update (the training loop: alignment angles, the allreduce over ranks, the
        loss window) passes ``between(result)``, called in between."""
        result = self.step(x, y)
        if between is not None:
            between(result)
        self.apply(result, lr)
        return result

    def params(self) -> list:
        """``[(key, array)]`` the optimiser updates: the model's parameters, then the rule's learnables."""
        return list(self.model.named_params()) + [(item.key, item.array) for item in self.rule.learnable(self.model)]


def build_run(
    model, rule, rng, *, options=None, optimizer: str | None = "adam", lr: float = 1e-3, **optimizer_kw
) -> Run:
    """Set up ``rule`` on ``model`` and build the optimiser.

    Parameters
    ----------
    model : a dense ssaref model (``nn.build_model``); the rule may convert it (the converted one is ``Run.model``).
    rule : a rule name (built with ``options``) or a ``Rule`` instance.
    rng : numpy.random.Generator, the run's generator for the rule's drawn arrays (feedback matrices).
    optimizer : "sgd", "adam", "adamw" or None (no optimiser: ``Run.apply`` refuses).
    lr, optimizer_kw : passed to ``optim.build_optimizer`` (momentum, nesterov, weight_decay, ...).
    """
    if isinstance(rule, str):
        rule = build_rule(rule, **(options or {}))
    elif options:
        raise ValueError("options are given with a rule name, not with a built rule")
    model = rule.setup(model, rng)
    run = Run(model, rule, None)
    if optimizer is not None:
        run.optimizer = build_optimizer(optimizer, run.params(), lr, **optimizer_kw)
    return run
