"""Timing of one training step: torch BP and ssaref with every rule, in turns of a block of steps on the same batch
(``bench_config``), and the limit column (``add_limits``)."""

from __future__ import annotations

import statistics

import numpy as np

from ..backend import resolve_backend
from ..cost import roofline, step_cost, step_flops
from ..nn import build_model
from ..nn.containers import leaf_shapes
from .blocks import time_blocks
from .engines import _batch, _torch_engine, method_spec, ssaref_engine, torch_device


def bench_config(
    name,
    shape,
    rules=("bp",),
    *,
    batch=128,
    repeats=20,
    warmup=3,
    backend="numpy",
    seed=0,
    log=None,
    statistic="median",
    conv_save=None,
    also_save=(),
    conv_chunk=None,
    block=5,
    block_warmup=2,
    settle=0.25,
):
    """Median seconds of one training step (Adam) of ``name`` on input ``shape``: torch BP and ssaref with every
    rule of ``rules`` (BP always included, first), taking turns a block of steps at a time (``blocks.time_blocks``:
    each turn ``settle`` seconds idle, ``block_warmup`` untimed steps, ``block`` timed ones).

    Returns ``{"model", "input", "params", "torch_ms", "rows": [{"method", "ssaref_ms", "ratio", "vs_bp",
    "status", "flops", "bytes", "cost_ops", "aux_params"}]}`` (``params``: the model's; ``aux_params``: the
    rule's auxiliary networks'; ``flops``, ``bytes``: ``step_cost`` of the rule's step); a rule that cannot train
    this model gets ``status`` "not supported: ..." and no times.  ``add_limits`` adds the limit column.
    ``conv_save``: what the convolutions keep (``ops.conv.SAVE_MODES``; None: the current mode); every mode of
    ``also_save`` adds a row per rule, ``"<rule>@<mode>"`` (``rule``, ``conv_save`` keys), timed in the same
    turns, its ``vs_bp`` against the primary BP row (models with a convolution only).  ``conv_chunk``: the
    bound on the convolutions' transient column matrices (MiB, ``ops.conv.set_conv_chunk``; None: the current one).
    """
    xp = resolve_backend(backend)
    k = 10
    dense = build_model(name, shape, k, xp=np, dtype=np.float32, seed=seed)  # raises ValueError if it does not fit
    x_h, y_h = _batch(shape, batch, k, seed)
    x, y = xp.asarray(x_h), xp.asarray(y_h)
    rules = ["bp"] + [m for m in rules if m != "bp"]
    engines, rows = {}, {}
    for m in rules:
        try:
            run, engines[m] = ssaref_engine(
                name, shape, m, x, y, xp=xp, seed=seed, conv_save=conv_save, conv_chunk=conv_chunk
            )
            ops = step_cost(run.model, method_spec(m)[0], batch, shape, rule=run.rule)  # counted, for the limit column
            rows[m] = {
                "method": m,
                "status": "ok",
                "flops": sum(o["flops"] for o in ops),
                "bytes": sum(o["bytes"] for o in ops),
                "cost_ops": ops,
                # the auxiliary networks' parameters (PredSim, AugLocal), apart from the model's
                "aux_params": int(sum(v.size for a in run.rule.aux_networks() for _, v in a.net.named_params())),
            }
        except (ValueError, NotImplementedError) as exc:
            if m == "bp":
                raise
            rows[m] = {
                "method": m,
                "status": f"not supported: {exc}".splitlines()[0][:160],
                "ssaref_ms": None,
                "ratio": None,
                "vs_bp": None,
            }
    extra = []
    if any(layer.kind == "conv2d" for _, layer, _, _ in leaf_shapes(dense, shape)):
        for mode in (mm for mm in also_save if mm != conv_save):
            for m in [mm for mm in rules if mm in engines]:
                label = f"{m}@{mode}"
                run, engines[label] = ssaref_engine(
                    name, shape, m, x, y, xp=xp, seed=seed, conv_save=mode, conv_chunk=conv_chunk
                )
                rows[label] = dict(rows[m], method=label, rule=m, conv_save=mode)
                extra.append(label)
    for m in rules:
        rows[m].setdefault("conv_save", conv_save)
    _, engines["torch"] = _torch_engine(dense, x_h, y_h, torch_device(backend))
    order = ["bp", "torch"] + [m for m in rules[1:] if m in engines] + extra
    times = time_blocks(
        {m: engines[m] for m in order},
        repeats=repeats,
        warmup=warmup,
        block=block,
        block_warmup=block_warmup,
        settle=settle,
    )
    # the median by default; "mean" counts every timed step (a rule's periodic work, which a median skips, in its
    # true proportion where the timed steps cover whole periods: --block-warmup 0, or blocks that line up with it)
    stat = statistics.mean if statistic == "mean" else statistics.median
    med = {m: stat(v) for m, v in times.items()}
    for m in order:
        if m == "torch":
            continue
        rows[m].update({"ssaref_ms": 1e3 * med[m], "ratio": med[m] / med["torch"], "vs_bp": med[m] / med["bp"]})
    out = {
        "model": name,
        "input": "x".join(map(str, shape)),
        "params": int(sum(v.size for _, v in dense.named_params())),
        "torch_ms": 1e3 * med["torch"],
        "flops": step_flops(dense, batch, shape),
        "rows": [rows[m] for m in rules + extra],
    }
    if xp is not np:  # peak device memory of one step of each engine, above what it holds between steps
        import torch

        for m in order:
            mib = device_step_mib(engines[m], torch if m == "torch" else None, xp)
            if m == "torch":
                out["torch_dev_mib"] = mib
            else:
                rows[m]["ssaref_dev_mib"] = mib
    return out


def add_limits(config, limits):
    """The limit column of a ``bench_config`` result, in place: for every timed row ``bound_ms`` (the roofline
    bound ``max(FLOPs / sgemm rate, bytes / bandwidth)`` of its counted step, ``roofline``), ``bound_ops_ms``
    (the same bound op by op, summed) and ``limit`` = ``bound_ms / ssaref_ms``, the fraction of the machine's
    limit the step reaches (1 = at the bound); the torch side against BP's counts (``torch_limit``)."""
    peak, bw = limits["sgemm_gflops"], limits["stream_gbs"]
    for r in config["rows"]:
        if r.get("ssaref_ms") is None:
            continue
        rf = roofline(r["cost_ops"], peak, bw)
        r.update(
            {
                "bound_ms": rf["bound_ms"],
                "bound_ops_ms": rf["bound_ops_ms"],
                "intensity": rf["intensity"],
                "limit": rf["bound_ms"] / r["ssaref_ms"],
            }
        )
        if r["method"] == "bp":
            config["torch_limit"] = rf["bound_ms"] / config["torch_ms"]
    return config


def device_step_mib(step, torch_mod, xp):
    """MiB one call of ``step`` needs on the GPU above the memory held before it: torch through its allocator's
    peak (``max_memory_allocated`` after ``reset_peak_memory_stats``), CuPy through its memory pool (emptied of
    cached blocks first, so the pool grows to the step's high-water mark: ``total_bytes() - used_bytes()`` before).
    """
    if torch_mod is not None:
        torch_mod.cuda.synchronize()
        before = torch_mod.cuda.memory_allocated()
        torch_mod.cuda.reset_peak_memory_stats()
        step()
        return (torch_mod.cuda.max_memory_allocated() - before) / 2**20
    pool = xp.get_default_memory_pool()
    xp.cuda.Device().synchronize()
    pool.free_all_blocks()
    before = pool.used_bytes()
    step()
    return (pool.total_bytes() - before) / 2**20
