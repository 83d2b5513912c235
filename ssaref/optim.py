"""Optimisers (SGD, Adam, AdamW) and learning-rate schedules.

The optimiser owns no copy of the parameters: it holds the very array objects the model holds (the
``(key, array)`` pairs of ``Sequential.named_params()``) and updates them in place.  A learning rule hands it
``updates: dict[key, array]``, the direction plain SGD subtracts times the learning rate (for BP the
gradient); keys absent from the dict (or mapped to ``None``) are left untouched that step, exactly as
PyTorch skips a parameter whose ``.grad`` is ``None`` (its Adam step counter does not advance either).

Arithmetic follows ``torch.optim.SGD`` / ``torch.optim.Adam`` / ``torch.optim.AdamW`` (single-tensor
implementation) term by term, and is written once: each update is a body of ``ssaref.ops.kernels`` (``adam``,
``sgd``), which a device (CuPy) runs as one fused elementwise kernel per parameter (one launch instead of up to
thirteen, no scratch at all) and NumPy as ufuncs with ``out=`` into per-parameter scratch buffers
(``kernels.evaluate``), so a step allocates no temporary the size of a parameter.  The parameters' array module
and dtype are kept throughout.

Checkpoints use ``state_dict()``: a flat dict of host NumPy arrays and Python ints,

* ``"step"``: number of ``step`` calls so far;
* ``"t/<key>"``: number of steps that updated parameter ``key`` (Adam's bias correction uses it; for SGD it
  marks whether the momentum buffer has been initialised);
* ``"buf/<key>"`` (SGD with momentum), ``"m/<key>"`` and ``"v/<key>"`` (Adam): the moment buffers.

Hyperparameters are not part of the state (a resumed run may change them on purpose).
"""

from __future__ import annotations

from typing import Any

import math
import numbers
from typing import Callable

import numpy as np

from .backend import asnumpy, get_array_module
from .ops import kernels

__all__ = ["Optimizer", "SGD", "Adam", "build_optimizer", "build_schedule", "Schedule", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


# ----------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------
def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _positive(name, value):
    v = _real(name, value)
    if v <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def _nonneg(name, value):
    v = _real(name, value)
    if v < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def _unit_interval(name, value, closed_right=False):
    v = _real(name, value)
    ok = 0.0 <= v <= 1.0 if closed_right else 0.0 <= v < 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if closed_right else ')'}, got {value!r}")
    return v


def _as_int(name, value, minimum=None):
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# optimisers
# ----------------------------------------------------------------------------------------------------
class Optimizer:
    """Base class: parameter bookkeeping, update validation, state (de)serialisation, resizing.

    Parameters
    ----------
    params : list of (str, array) or dict[str, array]
        The model's parameters, each array of any shape ``(...)``, floating dtype, all from one array module.
        They are updated in place.
    lr : float
        Default learning rate (> 0), used when ``step`` gets no ``lr``.

    Subclasses list their per-parameter state buffers in ``_state_names`` (zero-initialised, param-shaped) and
    implement ``_update(key, p, g, lr)``, which hands a ``kernels`` update to ``_run``.
    """

    _state_names: tuple[str, ...] = ()
    _nonnegative_states: tuple[str, ...] = ()  # state names whose values are never negative (checked on load)

    def __init__(self, params, lr):
        self.lr = _positive("lr", lr)
        items = list(params.items()) if hasattr(params, "items") else list(params)
        if not items:
            raise ValueError("params is empty: nothing to optimise")
        self._params: dict[str, Any] = {}
        for item in items:
            try:
                key, arr = item
            except (TypeError, ValueError):
                raise ValueError(f"params must be (key, array) pairs, got {item!r}") from None
            if not isinstance(key, str) or not key:
                raise ValueError(f"parameter key must be a non-empty str, got {key!r}")
            if key in self._params:
                raise ValueError(f"duplicate parameter key {key!r}")
            self._check_param(key, arr)
            self._params[key] = arr
        self.xp = get_array_module(*self._params.values())  # refuses a NumPy/CuPy mix
        self._fused = kernels.enabled(self.xp)  # a device: one fused kernel per parameter update, no scratch
        self.step_count = 0
        self._t = {k: 0 for k in self._params}
        self._state = {name: {k: self.xp.zeros_like(p) for k, p in self._params.items()} for name in self._state_names}
        self._scratch: dict[str, list] = {}  # key -> the NumPy path's scratch arrays (made on first use)

    # -- parameters ------------------------------------------------------------------------------
    @staticmethod
    def _check_param(key, arr):
        dtype = getattr(arr, "dtype", None)
        if dtype is None or not hasattr(arr, "shape"):
            raise ValueError(f"parameter {key!r} is not an array (got {type(arr).__name__})")
        if np.dtype(dtype).kind != "f":
            raise ValueError(f"parameter {key!r} has dtype {dtype}; a floating dtype is required")

    @property
    def keys(self) -> list[str]:
        """Parameter keys in the order given."""
        return list(self._params)

    def param(self, key):
        """The array currently registered for ``key``."""
        return self._params[self._known(key)]

    def _known(self, key):
        if key not in self._params:
            raise ValueError(f"unknown parameter key {key!r}; known keys: {self.keys}")
        return key

    def replace_param(self, key, new_array) -> None:
        """Register ``new_array`` (shape ``(...)``) as the parameter ``key`` from now on.

        Used when a rank change replaces a parameter array by a truncated copy; call ``resize`` with the same
        slicer so the state buffers follow.  The dtype and array module must stay the same.
        """
        old = self._params[self._known(key)]
        self._check_param(key, new_array)
        if get_array_module(new_array) is not self.xp:
            raise ValueError(
                f"replacement for {key!r} is a {type(new_array).__name__}, "
                f"the optimiser works on {self.xp.__name__} arrays"
            )
        if new_array.dtype != old.dtype:
            raise ValueError(f"replacement for {key!r} has dtype {new_array.dtype}, expected {old.dtype}")
        self._params[key] = new_array

    def resize(self, key, slicer) -> None:
        """Apply the index ``slicer`` (e.g. ``(slice(None), slice(0, r))``) to every state array of ``key``.

        The sliced state is copied (contiguous, no view keeping the old buffer alive); scratch buffers are
        dropped (made again, of the new shape, at the next step).
        """
        self._known(key)
        for name in self._state_names:
            self._state[name][key] = self._state[name][key][slicer].copy()
        self._scratch.pop(key, None)

    _moment_name: str | None = None  # the state buffer holding the first moment (momentum), if any

    def first_moment(self, key):
        """The state array holding the first moment of ``key`` (Adam's ``m``, SGD's momentum ``buf``; the
        parameter's shape), for a rule that transports it after moving the parameter itself (SSA's Riemannian
        options, issue 21), or ``None`` when the optimiser keeps none (plain SGD).  Writes go into the state."""
        name = self._moment_name
        if name is None or name not in self._state_names:
            return None
        return self._state[name][self._known(key)]

    # -- stepping --------------------------------------------------------------------------------
    def _run(self, key, update: kernels.Kernel, *args) -> None:
        """Apply ``update`` (a ``kernels`` body; ``args``: its inputs, then its outputs, parameter ``key``'s
        arrays) in place: one fused kernel on a device, its ufunc program on NumPy."""
        if self._fused:
            kernels.launch(self.xp, update, *args)
            return
        need = kernels.program(update).n_scratch
        p = self._params[key]
        bufs = self._scratch.get(key, [])
        if len(bufs) < need or any(b.shape != p.shape or b.dtype != p.dtype for b in bufs):  # first use, resize
            bufs = self._scratch[key] = [self.xp.empty_like(p) for _ in range(max(need, len(bufs)))]
        kernels.evaluate(self.xp, update, args, bufs)

    def step(self, updates: dict, lr: float | None = None) -> None:
        """Apply one update to every parameter named in ``updates``.

        Parameters
        ----------
        updates : dict[str, array]
            Direction per parameter key, each of the parameter's shape ``(...)`` and dtype (for BP the
            gradient).  Missing keys (or ``None`` values) leave their parameter and its state untouched.
        lr : float, optional
            Learning rate for this step (>= 0, e.g. from a schedule); defaults to ``self.lr``.
        """
        lr = self.lr if lr is None else _nonneg("lr", lr)
        if not hasattr(updates, "items"):
            raise ValueError(f"updates must be a dict key -> array, got {type(updates).__name__}")
        todo = []
        for key, g in updates.items():  # validate everything before touching anything
            if g is None:
                continue
            if key not in self._params:
                raise ValueError(f"update for unknown parameter key {key!r}; known keys: {self.keys}")
            p = self._params[key]
            if getattr(g, "shape", None) != p.shape:
                raise ValueError(
                    f"update for {key!r} has shape {getattr(g, 'shape', None)}, parameter has shape {p.shape}"
                )
            if g.dtype != p.dtype:
                raise ValueError(f"update for {key!r} has dtype {g.dtype}, parameter has dtype {p.dtype}")
            get_array_module(p, g)  # refuses a NumPy/CuPy mix
            for name in self._state_names:
                if self._state[name][key].shape != p.shape:
                    raise ValueError(
                        f"state {name}/{key} has shape {self._state[name][key].shape} but the "
                        f"parameter has shape {p.shape}; call resize() and replace_param() together"
                    )
            todo.append((key, p, g))
        for key, p, g in todo:
            self._t[key] += 1
            self._update(key, p, g, lr)
        self.step_count += 1

    def _update(self, key, p, g, lr):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Snapshot of the optimiser state: flat dict of host NumPy arrays (copies) and Python ints."""
        d: dict = {"step": int(self.step_count)}
        for k in self._params:
            d[f"t/{k}"] = int(self._t[k])
        for name in self._state_names:
            for k, a in self._state[name].items():
                h = asnumpy(a)
                d[f"{name}/{k}"] = h.copy() if h is a else h
        return d

    def load_state_dict(self, d) -> None:
        """Restore a ``state_dict()`` exactly; arrays are placed with the parameters' module and dtype.

        Raises ``ValueError`` naming missing or unexpected keys, or a key whose shape does not match.
        """
        if not hasattr(d, "items"):
            raise ValueError(f"state dict must be a dict, got {type(d).__name__}")
        expected = set(self.state_dict_keys())
        missing = sorted(expected - set(d))
        unexpected = sorted(set(d) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__} state dict does not match: missing keys {missing}, unexpected keys {unexpected}"
            )
        step = _as_int("state 'step'", d["step"], minimum=0)
        ts = {k: _as_int(f"state 't/{k}'", d[f"t/{k}"], minimum=0) for k in self._params}
        arrays = {}
        for name in self._state_names:
            for k, p in self._params.items():
                a = d[f"{name}/{k}"]
                shape = tuple(getattr(a, "shape", ()))
                if shape != tuple(p.shape):
                    raise ValueError(f"state {name}/{k} has shape {shape}, parameter {k!r} has shape {p.shape}")
                if np.dtype(getattr(a, "dtype", np.float64)).kind not in "fiu":
                    raise ValueError(f"state {name}/{k} has non-numeric dtype {a.dtype}")
                if not bool(self.xp.isfinite(self.xp.asarray(a)).all()):
                    raise ValueError(f"state {name}/{k} holds NaN or inf")
                if name in self._nonnegative_states and bool((self.xp.asarray(a) < 0).any()):
                    raise ValueError(f"state {name}/{k} holds negative values (a second moment is >= 0)")
                arrays[(name, k)] = self.xp.asarray(a, dtype=p.dtype)
        self.step_count = step
        self._t.update(ts)
        for (name, k), a in arrays.items():
            self._state[name][k] = a.copy() if a is d[f"{name}/{k}"] else a  # never alias the caller's array

    def state_dict_keys(self) -> list[str]:
        """The keys ``state_dict()`` produces (and ``load_state_dict`` requires)."""
        return (
            ["step"] + [f"t/{k}" for k in self._params] + [f"{n}/{k}" for n in self._state_names for k in self._params]
        )

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr}, params={len(self._params)})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov, weight decay and dampening (``torch.optim.SGD``).

    The update (``d = g + weight_decay p``; the momentum buffer; ``p = p - lr d``) is written once, with its
    equations, as the bodies of ``ssaref.ops.kernels.sgd``, which both array modules run.

    Parameters
    ----------
    params : list of (str, array (...))
    lr : float
        > 0.
    momentum : float, default 0
        >= 0.
    nesterov : bool, default False
        Needs ``momentum > 0`` and ``dampening == 0`` (as PyTorch).
    weight_decay : float, default 0
        L2 penalty coefficient, >= 0.
    dampening : float, default 0
        In [0, 1].
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
        self.momentum = _nonneg("momentum", momentum)
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        self.dampening = _unit_interval("dampening", dampening, closed_right=True)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"nesterov must be a bool, got {nesterov!r}")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ValueError(
                f"nesterov momentum requires momentum > 0 and dampening == 0, "
                f"got momentum={momentum!r}, dampening={dampening!r}"
            )
        self._state_names = ("buf",) if self.momentum != 0.0 else ()
        self._moment_name = "buf"
        super().__init__(params, lr)

    def _update(self, key, p, g, lr):
        wd = self.weight_decay
        if self.momentum == 0.0:
            self._run(key, kernels.sgd(wd != 0.0, None, "plain"), g, wd, lr, p)
            return
        if self._t[key] == 1:
            buf = "first"
        else:
            buf = "later" if (self.nesterov or self.dampening == 0.0) else "damped"
        update = kernels.sgd(wd != 0.0, buf, "nesterov" if self.nesterov else "momentum")
        mom = self.momentum
        self._run(key, update, g, wd, mom, 1.0 - self.dampening, lr, lr * mom, p, self._state["buf"][key])

    def __repr__(self):
        return (
            f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
            f"weight_decay={self.weight_decay}, dampening={self.dampening}, params={len(self._params)})"
        )


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``) and, with ``decoupled=True``, AdamW (``torch.optim.AdamW``).

    The update (the moments ``m``, ``v``, their bias corrections by each parameter's own step count, and the
    weight decay: none, L2 or decoupled) is written once, with its equations, as the bodies of
    ``ssaref.ops.kernels.adam``, which both array modules run.

    Parameters
    ----------
    params : list of (str, array (...))
    lr : float
        > 0.
    betas : (float, float), default (0.9, 0.999)
        Each in [0, 1).
    eps : float, default 1e-8
        >= 0.
    weight_decay : float, default 0
        >= 0.
    decoupled : bool, default False
        True applies the weight decay to the weights directly (AdamW) instead of adding it to the gradient.
    """

    _state_names = ("m", "v")
    _nonnegative_states = ("v",)  # a second-moment estimate: a negative one makes sqrt(v) NaN
    _moment_name = "m"

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_unit_interval("betas[0]", b1), _unit_interval("betas[1]", b2))
        self.eps = _nonneg("eps", eps)
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        if not isinstance(decoupled, (bool, np.bool_)):
            raise ValueError(f"decoupled must be a bool, got {decoupled!r}")
        self.decoupled = bool(decoupled)
        super().__init__(params, lr)

    def _update(self, key, p, g, lr):
        b1, b2 = self.betas
        t = self._t[key]
        consts = (1.0 - b1, b2, 1.0 - b2, math.sqrt(1.0 - b2**t), self.eps, lr / (1.0 - b1**t))
        m, v = self._state["m"][key], self._state["v"][key]
        if self.weight_decay == 0.0:
            self._run(key, kernels.adam("none"), g, *consts, p, m, v)
        elif self.decoupled:
            self._run(key, kernels.adam("decoupled"), g, 1.0 - lr * self.weight_decay, *consts, p, m, v)
        else:
            self._run(key, kernels.adam("l2"), g, self.weight_decay, *consts, p, m, v)

    def __repr__(self):
        name = "AdamW" if self.decoupled else "Adam"
        return (
            f"{name}(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay}, "
            f"params={len(self._params)})"
        )


def build_optimizer(name: str, params, lr, **kw) -> Optimizer:
    """Build an optimiser by name.

    Parameters
    ----------
    name : str
        "sgd", "adam" or "adamw" (AdamW: decoupled weight decay, default ``weight_decay=1e-2`` as
        ``torch.optim.AdamW``).
    params : list of (str, array (...))
    lr : float
    **kw
        Hyperparameters of ``SGD`` or ``Adam``; an unknown keyword raises ``ValueError`` naming it.
    """
    key = name.lower() if isinstance(name, str) else name
    cls: type[Optimizer]
    allowed: tuple[str, ...]
    extra: dict[str, Any]
    if key == "sgd":
        cls, allowed, extra = SGD, ("momentum", "nesterov", "weight_decay", "dampening"), {}
    elif key == "adam":
        cls, allowed, extra = Adam, ("betas", "eps", "weight_decay", "decoupled"), {}
    elif key == "adamw":
        cls, allowed, extra = Adam, ("betas", "eps", "weight_decay"), {"decoupled": True}
        kw = {"weight_decay": 1e-2, **kw}
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for optimizer {key!r}; accepted: {', '.join(allowed)}")
    return cls(params, lr, **kw, **extra)


# ----------------------------------------------------------------------------------------------------
# learning-rate schedules
# ----------------------------------------------------------------------------------------------------
class Schedule:
    """Learning rate as a function of the global optimiser step (0-based): ``schedule(step) -> float``.

    ``epoch = step // steps_per_epoch``.  Warm-up (``warmup_steps = round(warmup_epochs * steps_per_epoch)``)
    multiplies the rate by ``(step + 1) / warmup_steps`` during the first ``warmup_steps`` steps.

    * "constant": ``base_lr``.
    * "step": ``base_lr * gamma ** (number of milestones <= epoch)`` (``torch.optim.lr_scheduler.MultiStepLR``).
    * "cosine": ``min_lr + (base_lr - min_lr) * (1 + cos(pi * u)) / 2`` with
      ``u = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1] and
      ``total_steps = epochs * steps_per_epoch`` (``CosineAnnealingLR`` with ``T_max = total_steps``, stepped
      per batch): ``base_lr`` at the first step after warm-up, ``min_lr`` from ``total_steps`` on.
    """

    def __init__(self, name, base_lr, epochs, steps_per_epoch, milestones, gamma, min_lr, warmup_steps):
        self.name = name
        self.base_lr = base_lr
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.milestones = milestones
        self.gamma = gamma
        self.min_lr = min_lr
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        step = _as_int("schedule step", step, minimum=0)
        if self.name == "constant":
            lr = self.base_lr
        elif self.name == "step":
            epoch = step // self.steps_per_epoch
            lr = self.base_lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        else:  # cosine
            span = self.total_steps - self.warmup_steps
            u = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
            lr = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * u))
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return float(lr)

    def __repr__(self):
        return (
            f"Schedule({self.name!r}, base_lr={self.base_lr}, epochs={self.epochs}, "
            f"steps_per_epoch={self.steps_per_epoch}, milestones={self.milestones}, gamma={self.gamma}, "
            f"min_lr={self.min_lr}, warmup_steps={self.warmup_steps})"
        )


def build_schedule(
    name: str,
    base_lr: float,
    *,
    epochs: int,
    steps_per_epoch: int,
    milestones=None,
    gamma=0.1,
    min_lr=0.0,
    warmup_epochs=0,
) -> Callable[[int], float]:
    """Learning-rate schedule by name: "constant", "step" or "cosine" (see ``Schedule``).

    Parameters
    ----------
    name : str
    base_lr : float
        > 0.
    epochs, steps_per_epoch : int
        >= 1.
    milestones : sequence of int, optional
        Epochs (>= 1) at whose start "step" multiplies the rate by ``gamma``; default
        ``[max(1, int(0.5 * epochs)), max(1, int(0.75 * epochs))]``.
    gamma : float, default 0.1
        > 0.
    min_lr : float, default 0
        Final rate of "cosine", in [0, base_lr].
    warmup_epochs : float, default 0
        Linear warm-up length in epochs (may be fractional), >= 0 and < ``epochs``.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    base_lr = _positive("base_lr", base_lr)
    epochs = _as_int("epochs", epochs, minimum=1)
    steps_per_epoch = _as_int("steps_per_epoch", steps_per_epoch, minimum=1)
    gamma = _positive("gamma", gamma)
    min_lr = _nonneg("min_lr", min_lr)
    if min_lr > base_lr:
        raise ValueError(f"min_lr must be <= base_lr ({base_lr}), got {min_lr!r}")
    warmup_epochs = _nonneg("warmup_epochs", warmup_epochs)
    if warmup_epochs > 0 and warmup_epochs >= epochs:
        raise ValueError(f"warmup_epochs must be < epochs ({epochs}), got {warmup_epochs!r}")
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if milestones is None:
        milestones = [max(1, int(0.5 * epochs)), max(1, int(0.75 * epochs))]
    else:
        try:
            milestones = list(milestones)
        except TypeError:
            raise ValueError(f"milestones must be a sequence of epochs, got {milestones!r}") from None
        milestones = [_as_int("milestone", m, minimum=1) for m in milestones]
    return Schedule(key, base_lr, epochs, steps_per_epoch, sorted(milestones), gamma, min_lr, warmup_steps)
