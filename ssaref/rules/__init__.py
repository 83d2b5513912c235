"""Learning rules, one file each (the interface: ``base.py``); ``build_rule(name, **options)`` selects one.

Adding a rule: its file, one entry in ``RULES`` below, its oracle test; then ``python -m tests.gen_tables``
regenerates the tables derived from the registry (docs/internals.md, "Adding a rule")."""

from __future__ import annotations

from .auglocal import AugLocal
from .base import Rule, StepResult
from .bp import BP
from .dfa import DFA
from .drtp import DRTP
from .fa import FA
from .kp import KP
from .pepita import PEPITA
from .predsim import PredSim
from .sign import BRSF, FRSF, USF
from .ssa import SSA
from .svd_bp import SVDBP

RULES = {
    "bp": BP,
    "fa": FA,
    "kp": KP,
    "dfa": DFA,
    "usf": USF,
    "brsf": BRSF,
    "frsf": FRSF,
    "drtp": DRTP,
    "pepita": PEPITA,
    "ssa": SSA,
    "svd-bp": SVDBP,
    "predsim": PredSim,
    "auglocal": AugLocal,
}


def build_rule(name, **options) -> Rule:
    """Instantiate rule ``name``; unknown names get a ValueError listing the choices."""
    if name not in RULES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(RULES))}")
    return RULES[name](**options)


__all__ = ["Rule", "StepResult", "RULES", "build_rule"]
