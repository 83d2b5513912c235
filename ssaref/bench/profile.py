"""Where one ssaref training step goes: per-op timers around every op function the engine calls (``op_profile``)."""

from __future__ import annotations

import time

from ..backend import resolve_backend
from .engines import _batch, ssaref_engine
from .limits import _device_sync


def _op_targets():
    """``[(owner, attribute, label)]``: every op function the engine calls, where its callers look it up."""
    from ..nn import layers as L
    from ..ops import activations, conv, linear, norm, pool
    from ..rules import base as rule_base

    out: list = []
    for mod in (conv, pool, activations, norm, linear):
        out += [
            (mod, n, f"{mod.__name__.rsplit('.', 1)[-1]}.{n}")
            for n in mod.__all__
            if callable(getattr(mod, n, None))
            and not isinstance(getattr(mod, n), type)
            and n not in ("set_conv_save", "conv_save", "set_conv_chunk", "conv_chunk")
        ]  # settings, not ops
    out.append((conv, "im2col", "  im2col (inside the conv ops)"))
    out.append((conv, "im2col_bands", "  im2col (inside the conv ops)"))  # banded: its bands are timed (op_profile)
    out += [
        (rule_base, n, f"losses.{n}")
        for n in ("softmax_cross_entropy", "softmax_cross_entropy_backward")
        if hasattr(rule_base, n)
    ]
    for cls in vars(L).values():  # the layers' static op references (ReLU._fwd, MaxPool2d._bwd, ...)
        if isinstance(cls, type) and issubclass(cls, L.Layer):
            for attr in ("_fwd", "_bwd"):
                f = cls.__dict__.get(attr)
                if isinstance(f, staticmethod) and f.__func__ is not None:
                    fn = f.__func__
                    out.append((cls, attr, f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"))
    return out


def op_profile(name, shape, rule="bp", *, batch=128, steps=3, seed=0, backend="numpy", **options):
    """Where one ssaref training step of ``rule`` on ``name`` goes: ``(step_ms, [(label, ms, fraction)])``.

    Every op function (ops.conv, pool, activations, norm, linear, the loss) and the optimiser's ``step`` are
    wrapped with a timer (inclusive wall time, mean over ``steps`` steps after one warm-up step); ``im2col`` (the
    whole column matrix, or each band of it: ``ops.conv.set_conv_chunk``) is also shown inside the conv ops that
    build columns (the forward, and the backward of input mode); the rest of the step (the rule's own code,
    containers, Python) is the last row.  The wrappers are removed afterwards.  On a device (CuPy) each timer
    synchronises the device before it starts and before it stops, so an op's row holds its kernels' run time, not
    only their launch (the synchronisations make the profiled step slower than an unprofiled one: the rows are
    where the time goes, ``step_ms`` is the profiled step's).
    """
    import functools

    from ..optim import Optimizer

    xp = resolve_backend(backend)
    x_h, y_h = _batch(shape, batch, 10, seed)
    _, step = ssaref_engine(name, shape, rule, xp.asarray(x_h), xp.asarray(y_h), xp=xp, seed=seed, **options)
    acc: dict = {}
    saved = []
    sync = _device_sync(xp)

    def wrap(fn, label):
        if fn.__name__ == "im2col_bands":  # returns (Ho, Wo, band): the time is in the band calls

            @functools.wraps(fn)
            def banded(*a, **k):
                Ho, Wo, band = fn(*a, **k)
                return Ho, Wo, wrap(band, label)

            return banded

        @functools.wraps(fn)
        def timed(*a, **k):
            sync()  # the work queued before this op is not its time
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()  # this op's kernels have run
                acc[label] = acc.get(label, 0.0) + time.perf_counter() - t0

        return timed

    try:
        for owner, attr, label in _op_targets():
            raw = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            saved.append((owner, attr, raw))
            fn = raw.__func__ if isinstance(raw, staticmethod) else raw
            setattr(owner, attr, staticmethod(wrap(fn, label)) if isinstance(raw, staticmethod) else wrap(fn, label))
        saved.append((Optimizer, "step", Optimizer.__dict__["step"]))
        setattr(Optimizer, "step", wrap(Optimizer.__dict__["step"], "optimiser step (Adam)"))
        step()
        acc.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - t0) / steps
    finally:
        for owner, attr, raw in reversed(saved):
            setattr(owner, attr, raw)
    rows = sorted(((k, 1e3 * v / steps) for k, v in acc.items() if v > 0), key=lambda r: -r[1])
    top = sum(ms for k, ms in rows if not k.startswith("  "))
    rows.append(("rest of the step (rule, containers, Python)", max(0.0, 1e3 * total - top)))
    return 1e3 * total, [(k, ms, ms / (1e3 * total)) for k, ms in rows]
