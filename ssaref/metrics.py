"""Alignment between a learning rule and BP (paper section 5, eq. (4), Figures 2-3).

* ``angle_deg``: the gradient-alignment angle of eq. (4), ``arccos(<a, b> / (|a|_F |b|_F))`` in degrees, on the
  flattened arrays (``linalg.angle_deg``, the one implementation, re-exported here).
* ``principal_angles_deg``: principal angles between two column spaces (QR, then SVD of ``Q_A^T Q_B``).
* ``matrix_alignment``: section 5.5's "matrix alignment angle" made well defined for each rule (see
  docs/decisions.md, D3), from the pairs the rule declares (``Rule.alignment_pairs``): FA-type rules compare the
  feedback ``B`` with the weight it replaces; DFA/DRTP compare
  ``B_i`` (d_i x d_N) with the transposed product of the downstream weights ``(W_N ... W_{i+1})^T``;
  PEPITA compares ``F`` (d_0 x K) with ``(W_N ... W_1)^T``; SSA compares its ``B_i`` like DFA, with the
  downstream weights rebuilt from their SVD factors (``W = U diag(s) V^T``).  Two variants per weight key:
  ``flat/<key>`` (the flattened-cosine angle) and ``principal/<key>`` (mean principal angle between the two
  column spaces); for SSA the key is the SVD layer's prefix.
* ``AlignmentTracker``: runs BP alongside the rule every ``every`` steps and summarises per epoch.  Dense weight
  layers are compared parameter by parameter; SVD-space layers by the change of ``W`` the rule's factor updates
  induce, ``dU S V^T + U dS V^T + U S dV^T`` (``weight_change`` of the SVD layer), against BP's gradient of ``W``.
"""

from __future__ import annotations

import warnings

import numpy as np

from .backend import asnumpy
from .linalg import angle_deg
from .nn.svd_layers import svd_layers_of

__all__ = ["angle_deg", "principal_angles_deg", "matrix_alignment", "AlignmentTracker"]


def principal_angles_deg(A, B) -> np.ndarray:
    """Principal angles (degrees, ascending) between the column spaces of ``A`` (n, p) and ``B`` (n, q).

    ``Q_A, Q_B`` orthonormal bases by QR; the cosines are the singular values of ``Q_A^T Q_B`` (angles
    below 45 degrees come from the sines, the singular values of ``Q_B - Q_A Q_A^T Q_B``, for precision).
    Returns ``min(p, q)`` angles.
    """
    A = np.asarray(asnumpy(A), dtype=np.float64)
    B = np.asarray(asnumpy(B), dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(
            f"principal_angles_deg: need 2-D arrays with the same number of rows, got {A.shape} and {B.shape}"
        )
    if A.shape[1] < B.shape[1]:  # the angles are symmetric; let A have the more columns
        A, B = B, A
    qa, _ = np.linalg.qr(A)
    qb, _ = np.linalg.qr(B)
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)  # descending cosines -> ascending angles
    # small angles from the sines (singular values of the part of Q_B outside col(A)), as scipy does
    sin = np.sort(np.linalg.svd(qb - qa @ (qa.T @ qb), compute_uv=False))
    ang = np.where(cos**2 >= 0.5, np.arcsin(np.clip(sin, 0.0, 1.0)), np.arccos(np.clip(cos, -1.0, 1.0)))
    return np.degrees(ang)


def _subspace_angle(F, M):
    """Mean principal angle between col(F) and col(M) (both (n, r)); nan if they fill the space (r >= n)."""
    if F.shape[1] >= F.shape[0]:
        return float("nan")
    return float(np.mean(principal_angles_deg(F, M)))


def _dense_weight(layer):
    """Host float64 weight matrix (m, n) of a Linear layer, or ``U diag(s) V^T`` of an SVDLinear (eq. (5))."""
    p = layer.params
    if layer.kind == "svd_linear":
        U, s, V = (np.asarray(asnumpy(p[k]), dtype=np.float64) for k in ("U", "s", "V"))
        return (U * s) @ V.T
    return np.asarray(asnumpy(p["W"]), dtype=np.float64)


def _downstream_product(model, start):
    """``W_N ... W_j`` over the layers after ``start`` (K x d), or None if any is not Linear (dense or SVD)
    or elementwise."""
    P = None
    for layer in model.layers[start + 1 :]:
        if layer.kind in ("linear", "svd_linear"):
            W = _dense_weight(layer)
            P = W if P is None else W @ P
        elif layer.kind not in ("relu", "tanh", "sigmoid", "flatten"):
            return None
    return P


def matrix_alignment(rule, model) -> dict:
    """The rule's matrix alignment angle per compared matrix: ``{"flat/<key>": deg, "principal/<key>": deg}``.

    The rule says what it compares (``rule.alignment_pairs(model)``, rules/base.py); a rule with no feedback
    (BP, SVD-BP) has no entries.  For each ``AlignmentPair``:

    * ``against="weight"`` (FA, KP, uSF, brSF, frSF): ``B`` (W's shape, used in place of W) against ``W``; flat
      angle on the arrays, principal angles between the row spaces (col(B^T), col(W^T)) when W is wide, the
      column spaces when it is tall, nan when square (both spaces are the whole space).  Conv kernels are read
      as (C_out, C_in*kh*kw).
    * ``against="downstream"`` (DFA, DRTP, SSA, PEPITA): ``B_i`` (d_i x d_N) against ``(W_N ... W_{i+1})^T``, the
      transposed product of the weights after the injection point (SVD layers rebuilt from their factors,
      ``W = U diag(s) V^T``); nan where anything but Linear and elementwise layers lies downstream (always for
      injection points inside a residual block).
    """
    out = {}
    params = dict(model.named_params())
    for pair in rule.alignment_pairs(model):
        key = pair.key
        B = np.asarray(asnumpy(pair.feedback), dtype=np.float64)
        if pair.against == "weight":
            W = np.asarray(asnumpy(params[key]), dtype=np.float64)
            W2, B2 = W.reshape(W.shape[0], -1), B.reshape(B.shape[0], -1)
            m, n = W2.shape
            out[f"flat/{key}"] = angle_deg(B, W)
            if m < n:
                out[f"principal/{key}"] = float(np.mean(principal_angles_deg(B2.T, W2.T)))
            elif n < m:
                out[f"principal/{key}"] = float(np.mean(principal_angles_deg(B2, W2)))
            else:
                out[f"principal/{key}"] = float("nan")
            continue
        if pair.against != "downstream":
            raise ValueError(f"alignment pair {key!r}: unknown comparison {pair.against!r}")
        P = _downstream_product(model, pair.inject) if pair.inject is not None else None  # (d_N, d_i)
        if P is None or P.shape[1] != B.shape[0]:
            out[f"flat/{key}"] = out[f"principal/{key}"] = float("nan")
            continue
        out[f"flat/{key}"] = angle_deg(B, P.T)
        out[f"principal/{key}"] = _subspace_angle(B, P.T)
    return out


def _nan_stats(rows, fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(np.asarray(rows, dtype=np.float64), axis=0)


class AlignmentTracker:
    """Angles between a rule's updates/signals and BP's on the same batch, every ``every`` steps.

    Call ``maybe_record`` after ``rule.step`` and *before* the optimiser step, so BP sees the same parameters; for
    the signal angles, the step must have kept its signals: set ``rule.keep_signals = tracker.due(step)`` before it
    (the training loop does).

    Columns (``layer_keys``, forward order): every dense weight key (``"1.W"``, ``"4.main.0.W"``) and every
    SVD-space layer's prefix (``"1"``).  For an SVD layer the update angle is between the rule's induced change
    of ``W`` (``dU S V^T + U dS V^T + U S dV^T``) and BP's gradient of ``W`` (``dense_grad``), the same function
    as SSA's ``svd_angle`` metric; it is nan for SVD layers inside residual blocks (no per-layer BP signal is
    kept there) and for layers whose factors got no update.

    Parameters
    ----------
    model : Sequential
    every : int, record when ``every > 0 and step % every == 0``; 0 disables recording.
    """

    def __init__(self, model, every: int):
        every = int(every)
        if every < 0:
            raise ValueError(f"align every must be >= 0, got {every}")
        self.every = every
        self.model = model
        self.rule = None
        svd = {p for p, _ in svd_layers_of(model)}
        self.layer_keys: list = []
        self._svd: set = set()
        for k, _ in model.named_params():
            if k == "W" or k.endswith(".W"):
                self.layer_keys.append(k)
            elif "." in k and k.rsplit(".", 1)[0] in svd and k.rsplit(".", 1)[0] not in self._svd:
                self._svd.add(k.rsplit(".", 1)[0])
                self.layer_keys.append(k.rsplit(".", 1)[0])
        self._layer_index = [int(k.split(".")[0]) for k in self.layer_keys]
        self._grad: list = []
        self._signal: list = []
        self._events: dict = {"align_step/step": [], "align_step/grad_deg": [], "align_step/signal_deg": []}
        self._last = None

    def due(self, step: int) -> bool:
        """Whether ``maybe_record`` records at ``step`` (so the rule's step there must keep its signals)."""
        return self.every > 0 and step % self.every == 0

    def maybe_record(self, step: int, model, rule, x, y, result) -> None:
        """BP on batch ``(x, y)`` with the current parameters; angles per weight key (eq. (4))."""
        self.model, self.rule = model, rule
        if not self.due(step):
            return
        from .rules.bp import BP  # noqa: PLC0415  (the reference rule)

        saved = {k: v.copy() for k, v in model.buffers.items()}
        bp = BP()
        bp.keep_signals = True  # its signals and caches are read below (a plain list: none is released)
        try:
            _, caches, _, e = bp.forward_loss(model, x, y)
            bp_updates, bp_signals = bp.updates(model, caches, e, None)  # = BP().step, keeping the caches
        finally:
            for k, v in model.buffers.items():  # BP leaves no trace in the BN running statistics
                v[...] = saved[k]
        n = len(self.layer_keys)
        g = np.full(n, np.nan)
        s = np.full(n, np.nan)
        for j, (key, k) in enumerate(zip(self.layer_keys, self._layer_index)):
            if key in self._svd:
                fac = [result.updates.get(f"{key}.{f}") for f in ("U", "s", "V")]
                if "." not in key and all(u is not None for u in fac):  # top-level SVD layer
                    layer = model.layers[k]
                    G = layer.dense_grad(bp_signals[k], caches[k])  # BP's dL/dW (m, n)
                    g[j] = angle_deg(layer.weight_change(*fac), G)  # eq. (4) on the induced dW
            else:
                upd = result.updates.get(key)
                if upd is not None and key in bp_updates:
                    g[j] = angle_deg(upd, bp_updates[key])
            sig = (result.signals or {}).get(k)
            if sig is not None and k in bp_signals and sig.shape == bp_signals[k].shape:
                s[j] = angle_deg(sig, bp_signals[k])
        self._grad.append(g)
        self._signal.append(s)
        self._events["align_step/step"].append(int(step))
        self._events["align_step/grad_deg"].append(g)
        self._events["align_step/signal_deg"].append(s)

    def _summary(self):
        n = len(self.layer_keys)
        nan = np.full(n, np.nan)
        out = {}
        if self._grad:
            G, S = np.asarray(self._grad), np.asarray(self._signal)
            out["align/grad_mean"] = _nan_stats(G, np.nanmean)
            out["align/grad_std"] = _nan_stats(G, np.nanstd)
            valid = np.isfinite(G)
            cnt = valid.sum(axis=0)
            gt = np.where(valid, G > 90.0, False).sum(axis=0)
            out["align/grad_frac_gt90"] = np.where(cnt > 0, gt / np.maximum(cnt, 1), np.nan)
            out["align/signal_mean"] = _nan_stats(S, np.nanmean)
            out["align/signal_std"] = _nan_stats(S, np.nanstd)
        else:
            for k in ("grad_mean", "grad_std", "grad_frac_gt90", "signal_mean", "signal_std"):
                out[f"align/{k}"] = nan.copy()
        flat, princ = nan.copy(), nan.copy()
        if self.rule is not None:
            ma = matrix_alignment(self.rule, self.model)
            for j, key in enumerate(self.layer_keys):
                flat[j] = ma.get(f"flat/{key}", np.nan)
                princ[j] = ma.get(f"principal/{key}", np.nan)
        out["align/matrix_flat"] = flat
        out["align/matrix_principal"] = princ
        return out

    def epoch_metrics(self) -> dict:
        """Summary of the records since the last call (then reset); arrays of ``len(layer_keys)``."""
        out = self._summary()
        self._last = out
        self._grad, self._signal = [], []
        return out

    def pop_events(self) -> dict:
        """Per-record rows since the last call: step, grad angles, signal angles."""
        ev = self._events
        self._events = {k: [] for k in ev}
        return ev

    def summary_line(self) -> str:
        """``"align(deg) 1.W=45.1 3.W=30.2"`` from pending records, else from the last epoch summary."""
        if self._grad:
            means = _nan_stats(np.asarray(self._grad), np.nanmean)
        elif self._last is not None:
            means = self._last["align/grad_mean"]
        else:
            return ""
        return "align(deg) " + " ".join(f"{k}={v:.1f}" for k, v in zip(self.layer_keys, means))
