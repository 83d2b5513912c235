"""The audit items: one small declarative record per equation or structural statement of sections 2, 4 and 5.

One module per part of the paper (``section2``, ``decomposition`` (4.1), ``local_loss`` (4.2), ``updates``
(4.3), ``rank`` (4.4), ``section5_1`` ... ``section5_5``, ``dynamics`` (engine runs)); ``core`` holds what they
share (verdicts, thresholds, configurations, the registry).  Importing this package registers every item,
in the paper's order.

Every item is an :class:`Item` (id, section, equations, the paper's statement, the engine's default resolution,
the option giving the paper-literal behaviour) and a function ``run(ctx, **transcriptions) -> Outcome`` that
calls the check primitives of :mod:`ssaref.audit.checks` on the paper's own configurations (:data:`CONFIGS`) and
on small generic cases.  Items draw from their own generator (``ctx.rng(item_id)``), so ``--only ID`` reproduces
the evidence of the full run.

Every verdict is a function of the item's evidence:

* the thresholds are stated once, below (:data:`GRAD_RTOL`, :data:`ROUND_RTOL`, :data:`CLAIM_FAIL_RATE`, ...;
  :data:`THRESHOLDS` lists them for the report);
* each item first measures its evidence dict, then derives its verdict from that dict alone with a small
  ``_v_<item>(ev)`` function, and fills its explanation from the same dict (no typed-in figures);
* each item function takes the transcription(s) it judges as keyword parameters -- the printed formula, shape
  reading or claim by default -- so that feeding the sound formula flips the verdict (tests/test_audit.py).
"""

from __future__ import annotations

from . import (  # noqa: F401  (each registers its items in ITEMS, in this order)
    section2,
    decomposition,
    local_loss,
    updates,
    rank,
    section5_1,
    section5_2,
    section5_3,
    section5_5,
    dynamics,
)
from .core import CONFIGS, D_N, GRAD_RTOL, ITEMS, THRESHOLDS, VERDICTS, Context, Item, Outcome, get_items
from .local_loss import _v_eq6
from .rank import _v_params
from .updates import _v_eq12

__all__ = [
    "Item",
    "Outcome",
    "Context",
    "ITEMS",
    "CONFIGS",
    "VERDICTS",
    "THRESHOLDS",
    "get_items",
    "GRAD_RTOL",
    "D_N",
    "_v_eq6",
    "_v_eq12",
    "_v_params",
]
