"""Dynamic rank reduction of SVD-space layers (paper section 4.4).

The hybrid schedule:

* **epoch-based phase**, epochs ``1 .. T1`` with ``T1 = max(1, ceil(reduce_frac * num_epochs))`` (paper: the
  first 30% of the epochs): at the end of epoch ``t`` the rank is cut to
  ``ceil(r0 * (1 - (1 - reduce_to) * t / T1))``, reaching ``ceil(reduce_to * r0)`` (paper: 0.7 r0) at ``T1``;
  the Hoyer regulariser ``||s||_1 / ||s||_2`` is added to the singular values' loss during the epochs
  ``t`` of this phase with ``(t - 1) % hoyer_every == 0`` (paper: "applied every 10 epochs");
* **threshold phase**, epochs after ``T1``: at the end of every epoch the rank becomes the smallest one whose
  top singular values hold ``energy`` (paper: 95%) of ``sum s_j^2``.

**Readings of the threshold rule** (``reading``; section 4.4 does not say whether the 95% rule is re-applied to
an already-truncated spectrum; docs/decisions.md D4.9):

* ``"every"`` (default, the literal reading): at every epoch end of the threshold phase the rank becomes the
  smallest one holding ``energy`` of the *current* spectrum's ``sum s_j^2``, so the loss compounds (about 5% of
  the remaining energy per epoch) until the floor stops it;
* ``"once"``: the rule is applied at the first epoch end of the threshold phase only (epoch ``T1 + 1``; epoch 1
  for ``"energy"``), and the rank is kept afterwards: "every" without the compounding;
* ``"relative"``: at every epoch end of the threshold phase the energy is measured against a fixed reference,
  the ``sum s_j^2`` of the spectrum at the start of the threshold phase (after the cut of epoch ``T1``; the
  initial spectrum for ``"energy"``): the rank is the smallest whose top values hold ``energy`` of the
  reference, so it does not compound while the spectrum keeps its energy;
* ``"none"``: no threshold phase: after the epoch-based phase the rank stays (``"energy"`` then never cuts).

``"epoch"`` runs the first phase only, ``"energy"`` the threshold rule from the first epoch (Hoyer as in the
first phase throughout), ``"none"`` keeps full rank (Hoyer every ``hoyer_every`` epochs, as for ``"energy"``).
Every rule obeys: the rank never increases, never drops below ``floor = max(1, ceil(min_rank_frac * r0))``
(paper: "reducing the rank below 30% of r0 often destabilizes training"), and with ``parity`` it stays below
the parity bound (the factored layer then has fewer numbers than the dense one), which takes precedence over
the floor.  ``parity_count`` says what is counted: ``"factors"`` (the paper's printed rule ``r (m + n) < m n``,
i.e. ``r < m n / (m + n)``) or ``"with_s"`` (``r (m + n + 1) < m n``: the singular values counted too, as the
paper's own inference cost ``r (m + n + 1)`` does).  The retained singular triplets are those with the largest
``|s_j|``, kept in their current order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backend import asnumpy
from .linalg import energy_rank

__all__ = ["RankSchedule", "SCHEDULES", "PARITY_COUNTS", "READINGS", "parity_rank", "keep_indices"]

SCHEDULES = ("hybrid", "epoch", "energy", "none")
READINGS = ("every", "once", "relative", "none")  # of the threshold rule (module doc, D4.9)
PARITY_COUNTS = ("factors", "with_s")


def _ceil(x):
    return int(math.ceil(x - 1e-9))  # 0.3 * 10 is 3.0000000000000004 in floating point


def parity_rank(m, n, count="factors"):
    """Largest integer rank whose factored layer holds fewer numbers than the dense ``m x n`` one (at least 1).

    Parameters
    ----------
    m, n : int, the dense matrix's shape (for a conv layer the kernel matrix, m = N kw, n = C kh).
    count : ``"factors"`` -- ``r (m + n) < m n`` (the paper's rule ``r < m n / (m + n)``, section 4.4) -- or
        ``"with_s"`` -- ``r (m + n + 1) < m n`` (U, s and V all counted, the paper's ``r (m + n + 1)``).

    Returns
    -------
    int, ``max(1, (m n - 1) // d)`` with ``d = m + n`` or ``m + n + 1`` (exact integer arithmetic).
    """
    if count not in PARITY_COUNTS:
        raise ValueError(f"parity_count={count!r} is not one of {', '.join(PARITY_COUNTS)}")
    m, n = int(m), int(n)
    if m < 1 or n < 1:
        raise ValueError(f"parity_rank: layer shape must be positive, got m={m}, n={n}")
    d = m + n + (1 if count == "with_s" else 0)
    return max(1, (m * n - 1) // d)  # largest integer r with r d < m n


def keep_indices(s, r):
    """Indices (ascending) of the ``r`` largest ``|s_j|`` of ``s`` (r0,) (ties: lower index first)."""
    a = np.abs(np.asarray(asnumpy(s), dtype=np.float64))
    order = np.argsort(-a, kind="stable")
    return np.sort(order[: int(r)])


@dataclass
class RankSchedule:
    """Section 4.4's rank schedule; every number a parameter with the paper's value as default."""

    kind: str = "hybrid"
    reduce_to: float = 0.7
    reduce_frac: float = 0.3
    energy: float = 0.95
    min_rank_frac: float = 0.3
    parity: bool = False
    hoyer_every: int = 10
    parity_count: str = "factors"
    reading: str = "every"

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"rank_schedule={self.kind!r} is not one of {', '.join(SCHEDULES)}")
        if self.reading not in READINGS:
            raise ValueError(f"rank_reading={self.reading!r} is not one of {', '.join(READINGS)}")
        for name in ("reduce_to", "reduce_frac", "energy", "min_rank_frac"):
            v = float(getattr(self, name))
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
            setattr(self, name, v)
        if self.parity_count not in PARITY_COUNTS:
            raise ValueError(f"parity_count={self.parity_count!r} is not one of {', '.join(PARITY_COUNTS)}")
        if int(self.hoyer_every) < 1:
            raise ValueError(f"hoyer_every must be >= 1, got {self.hoyer_every!r}")
        self.hoyer_every = int(self.hoyer_every)

    def phase1_epochs(self, num_epochs):
        """``T1``: number of epochs of the epoch-based phase."""
        return max(1, _ceil(self.reduce_frac * int(num_epochs)))

    def parity_cap(self, m, n):
        """The largest rank ``parity`` allows for an (m, n) layer, or None when ``parity`` is off."""
        return parity_rank(m, n, self.parity_count) if self.parity else None

    def floor(self, r0, m, n):
        f = max(1, _ceil(self.min_rank_frac * r0))
        return min(f, self.parity_cap(m, n)) if self.parity else f

    def hoyer_active(self, epoch, num_epochs):
        """Whether the Hoyer term is on during ``epoch`` (1-based)."""
        if (int(epoch) - 1) % self.hoyer_every:
            return False
        if self.kind in ("hybrid", "epoch"):
            return int(epoch) <= self.phase1_epochs(num_epochs)
        return True

    def threshold_start(self, num_epochs):
        """The last epoch before the threshold phase (``T1`` for ``"hybrid"``, 0 for ``"energy"``), or None for
        the schedules without one (``"epoch"``, ``"none"``)."""
        if self.kind == "hybrid":
            return self.phase1_epochs(num_epochs)
        return 0 if self.kind == "energy" else None

    def needs_reference(self, epoch, num_epochs):
        """Whether the reference energy of the ``"relative"`` reading is taken at the end of ``epoch`` (after its
        cut): the end of epoch ``T1`` for ``"hybrid"`` (for ``"energy"`` the initial spectrum is the reference)."""
        return self.reading == "relative" and self.kind == "hybrid" and int(epoch) == self.phase1_epochs(num_epochs)

    def new_rank(self, s, r0, m, n, epoch, num_epochs, ref_energy=None, parity=None):
        """Rank to keep at the end of ``epoch`` (1-based) for singular values ``s`` (r,) of a layer (m, n).

        Never above the current rank ``len(s)``, never below the floor (unless the current rank already is).
        ``ref_energy``: the reference ``sum s_j^2`` of the ``"relative"`` reading (needed in its threshold
        phase).  ``parity``: override of ``self.parity`` for this layer (False: the classifier exempted).
        """
        parity = self.parity if parity is None else bool(parity)
        r = int(len(s))
        target = r
        T1 = self.phase1_epochs(num_epochs)
        start = self.threshold_start(num_epochs)
        if self.kind in ("hybrid", "epoch") and epoch <= T1:
            target = _ceil(r0 * (1.0 - (1.0 - self.reduce_to) * min(epoch, T1) / T1))
        elif start is not None and epoch > start:
            if self.reading == "every" or (self.reading == "once" and epoch == start + 1):
                target = energy_rank(s, self.energy)  # of the current spectrum
            elif self.reading == "relative":
                if ref_energy is None:
                    raise ValueError("rank_reading=relative needs the reference energy of the threshold phase")
                target = energy_rank(s, self.energy, total=ref_energy)
        f = max(1, _ceil(self.min_rank_frac * r0))
        if parity:
            cap = parity_rank(m, n, self.parity_count)
            target = min(max(target, min(f, cap)), cap)
        else:
            target = max(target, f)
        return max(1, min(r, target))

    def capped_rank(self, r, m, n, parity=None):
        """Rank of a layer the schedule does not reduce (the classifier unless ``reduce_last``): ``r``, or the
        parity cap when ``parity`` is on and ``r`` exceeds it (parity binds every layer, section 4.4, unless the
        caller exempts this one with ``parity=False``)."""
        parity = self.parity if parity is None else bool(parity)
        return min(int(r), parity_rank(m, n, self.parity_count)) if parity else int(r)
