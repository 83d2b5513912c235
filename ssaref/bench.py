"""``python -m ssaref.bench``: one training step, ssaref against PyTorch CPU, same process.

For each model and input shape the engines take turns (ssaref BP, torch BP, ssaref with each further rule of
``--method``, then again, ...) on the same batch (float32) from the same initial weights, with the same
optimiser (Adam, lr 1e-4); the median over ``--repeats`` steps of each is printed with the ratios ssaref/torch
(the torch side is always BP) and rule/BP (each rule's step against ssaref's own BP step).  Alternating keeps a
noisy machine's drift out of the ratios.  Peak memory of a step is measured in a fresh subprocess per engine
and configuration (``--no-memory`` skips it): the resident-set high-water mark (``VmHWM``, reset after the
model is built) above the resident set after building the model and the batch, i.e. what training adds
(optimiser and rule state, activations, gradients, workspace), over ``--memory-steps`` steps; for ssaref also
the tracemalloc peak of one step (the arrays a step allocates beyond what persists).  The machine's sgemm rate
is measured on the float32 GEMMs of SmallConv's convolutions (the shapes its step runs) and SmallConv's step
FLOP/s is reported against it.  The limit column: every rule's step is counted from the layer shapes, op by op
(``step_cost``: FLOPs and bytes moved), the machine's float32 GEMM rate (one ``--limit-gemm`` square GEMM) and
copy bandwidth (a ``--limit-stream-mib`` array copy) are measured at the start of the run, and each step is shown
as a fraction of its roofline bound ``max(FLOPs / GEMM rate, bytes / bandwidth)`` (``roofline``, ``add_limits``;
the counting convention is ``step_cost``'s docstring and docs/internals.md, "Cost model").  Nothing here is
asserted: speed is measured, not tested.

    python -m ssaref.bench                                   # BP, the four small models, input of each model's data set
    python -m ssaref.bench --models all --method all --json bench.json --markdown validation/results/bench_cpu.md
    python -m ssaref.bench --models smallconv --input 1x28x28,3x32x32 --threads 1
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from .atomic import write_text
from .backend import asnumpy, keep_large_allocations, resolve_backend
from .cli import OneLineParser, check_output_path, count, nonnegative_float, run_main
from .cost import roofline, step_cost, step_flops, weight_macs
from .nn.containers import leaf_shapes
from .nn import build_model
from .run import build_run
from .threads import apply_threads, blas_info, default_threads, threads_arg

__all__ = [
    "torch_mirror",
    "bench_config",
    "ssaref_engine",
    "op_profile",
    "weight_macs",
    "step_flops",
    "sgemm_peak",
    "step_cost",
    "roofline",
    "stream_bandwidth",
    "machine_limits",
    "add_limits",
    "measure_memory",
    "DEFAULT_MODELS",
    "DATASET_INPUT",
    "main",
]

DEFAULT_MODELS = ("mlp", "lenet", "convnet", "smallconv")
# the input shape of the data set each model is trained on in the paper (Fashion-MNIST, CIFAR)
DATASET_INPUT = {"mlp": (1, 28, 28), "lenet": (1, 28, 28), "convnet": (1, 28, 28)}
CIFAR_INPUT = (3, 32, 32)
LR = 1e-4


# --------------------------------------------------------------------------------------------- torch mirror
def torch_mirror(model):
    """A ``torch.nn.Module`` with the same graph, weights and BatchNorm buffers as an ssaref (dense) model, in the
    model's dtype (float32 or float64).

    Layer kinds: sequential, linear, conv2d, max/avg pooling, global average pooling, relu/tanh/sigmoid,
    flatten, batchnorm (1-D or 2-D by the input it sees) and residual blocks (``relu(main(x) + shortcut(x))``).
    """
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, main, shortcut):
            super().__init__()
            self.main, self.shortcut = main, shortcut

        def forward(self, x):
            return torch.relu(self.main(x) + self.shortcut(x))

    class GlobalAvgPool(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    class BatchNorm(nn.BatchNorm2d):
        """BatchNorm over (N,) of 2-D or (N, H, W) of 4-D input, like ssaref's."""

        def _check_input_dim(self, x):
            if x.dim() not in (2, 4):
                raise ValueError(f"expected 2-D or 4-D input, got {x.dim()}-D")

    first = next(iter(model.params.values()), None)
    dtype = torch.float64 if first is not None and first.dtype == np.float64 else torch.float32

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(asnumpy(a)))

    def build(layer):
        kind = layer.kind
        if kind == "sequential":
            return nn.Sequential(*[build(l) for l in layer.layers])
        if kind == "residual":
            return Residual(build(layer.main), build(layer.shortcut))
        if kind == "maxpool2d":
            return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
        if kind == "avgpool2d":
            return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding)
        if kind == "global_avgpool":
            return GlobalAvgPool()
        if kind in ("relu", "tanh", "sigmoid"):
            return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[kind]()
        if kind == "flatten":
            return nn.Flatten()
        if kind == "batchnorm":
            m = BatchNorm(layer.params["gamma"].shape[0], eps=layer.eps, momentum=layer.momentum).to(dtype)
            with torch.no_grad():
                m.weight.copy_(t(layer.params["gamma"]))
                m.bias.copy_(t(layer.params["beta"]))
                m.running_mean.copy_(t(layer.buffers["running_mean"]))
                m.running_var.copy_(t(layer.buffers["running_var"]))
            return m
        if kind == "linear":
            W = layer.params["W"]
            m = nn.Linear(W.shape[1], W.shape[0], bias="b" in layer.params)
        elif kind == "conv2d":
            W = layer.params["W"]
            m = nn.Conv2d(
                W.shape[1],
                W.shape[0],
                tuple(W.shape[2:]),
                stride=layer.stride,
                padding=layer.padding,
                bias="b" in layer.params,
            )
        else:
            raise NotImplementedError(f"bench mirrors no {kind!r} layer")
        m = m.to(dtype)
        with torch.no_grad():
            m.weight.copy_(t(layer.params["W"]))
            if "b" in layer.params:
                m.bias.copy_(t(layer.params["b"]))
        return m

    return build(model)


def smallconv_gemms(input_shape, batch):
    """``[(C_out, K, M)]``: the forward GEMMs ``(C_out, K) @ (K, M)`` of SmallConv's convolutions (im2col form)."""
    model = build_model("smallconv", input_shape, 10, seed=0)
    out = []
    shape = tuple(input_shape)
    for layer in model.layers:
        new = tuple(layer.output_shape(shape))
        if layer.kind == "conv2d":
            co, ci, kh, kw = layer.params["W"].shape
            out.append((int(co), int(ci * kh * kw), int(new[1] * new[2] * batch)))
        shape = new
    return out


def sgemm_peak(shapes, repeats=5, xp=np):
    """Measured float32 GEMM rate ``C = A @ B`` (``out=`` preallocated) for each ``(m, k, n)`` in ``shapes``:
    ``[{"m", "k", "n", "ms", "gflops"}]`` (median of ``repeats`` after one warm-up), on the device of ``xp``: the
    peak the benchmark's "% of peak" divides by must be the one of the engines' own device (with ``--tf32`` the
    cuBLAS math mode the step's float32 GEMMs use too).  On a device each timing waits for the GEMM to finish."""
    sync = _device_sync(xp)
    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in shapes:
        A = xp.asarray(rng.standard_normal((m, k), dtype=np.float32))
        B = xp.asarray(rng.standard_normal((k, n), dtype=np.float32))
        C = xp.empty((m, n), dtype=np.float32)
        xp.matmul(A, B, out=C)
        ts = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            xp.matmul(A, B, out=C)
            sync()
            ts.append(time.perf_counter() - t0)
        t = statistics.median(ts)
        rows.append({"m": m, "k": k, "n": n, "ms": 1e3 * t, "gflops": 2.0 * m * k * n / t / 1e9})
    return rows


def _device_sync(xp):
    """A function that waits for every kernel queued on ``xp``'s current device (a no-op for NumPy): CuPy
    launches are asynchronous, so a host timer around a call measures its launch, not its work, without it."""
    if xp is np:
        return lambda: None
    return lambda: xp.cuda.Device().synchronize()


def stream_bandwidth(mib=256, repeats=5, xp=np):
    """Measured memory bandwidth (GB/s) of a large float32 copy ``b[...] = a`` (``mib`` MiB each): 2 x the array's
    bytes (one read, one write) over the median time of ``repeats`` copies after one warm-up."""
    sync = _device_sync(xp)
    n = int(mib) * 2**20 // 4
    a = xp.ones(n, dtype=np.float32)
    b = xp.empty_like(a)
    b[...] = a
    ts = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        b[...] = a
        sync()
        ts.append(time.perf_counter() - t0)
    return 2.0 * a.nbytes / statistics.median(ts) / 1e9


def machine_limits(xp=np, gemm_n=2048, stream_mib=256, repeats=5):
    """``{"sgemm_gflops", "stream_gbs", "gemm_n", "stream_mib"}``: the measured float32 rate of one large square
    GEMM (``gemm_n``) and the copy bandwidth (``stream_bandwidth``), on ``xp``'s device."""
    g = sgemm_peak([(gemm_n, gemm_n, gemm_n)], repeats=repeats, xp=xp)[0]["gflops"]
    return {
        "sgemm_gflops": g,
        "stream_gbs": stream_bandwidth(stream_mib, repeats, xp),
        "gemm_n": gemm_n,
        "stream_mib": stream_mib,
    }


# --------------------------------------------------------------------------------------------- timing
def _input_for(name, inputs):
    return DATASET_INPUT.get(name, CIFAR_INPUT) if inputs is None else inputs


def _batch(shape, batch, k, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch,) + tuple(shape)).astype(np.float32), rng.integers(0, k, size=batch)


def ssaref_engine(name, shape, method, x, y, *, xp=np, seed=0, conv_save=None, conv_chunk=None, **options):
    """``(run, step)``: model ``name`` (``build_model`` ``options``) trained by ``method`` with Adam (lr 1e-4);
    ``step()`` is one ``Run.train_step(x, y)`` (synchronised on a GPU), with ``conv_save`` (``ops.conv.SAVE_MODES``;
    None: the current mode) what its convolutions keep for the backward and ``conv_chunk`` (MiB,
    ``ops.conv.set_conv_chunk``; None: the current bound) the bound on their transient column matrices."""
    from .ops.conv import set_conv_chunk, set_conv_save

    model = build_model(name, shape, 10, xp=xp, dtype=np.float32, seed=seed, **options)
    run = build_run(model, method, np.random.default_rng(seed + 2), optimizer="adam", lr=LR)

    def step():
        old = set_conv_save(conv_save) if conv_save else None
        old_chunk = set_conv_chunk(conv_chunk) if conv_chunk is not None else ()  # (): left as it was
        try:
            run.train_step(x, y)
        finally:
            if old:
                set_conv_save(old)
            if old_chunk != ():
                set_conv_chunk(old_chunk)
        if xp is not np:
            xp.cuda.Device().synchronize()  # every stream of the device: the step's kernels have finished

    return run, step


def torch_device(backend) -> str:
    """The torch side's device: ``"cuda"`` when ssaref runs on CuPy (a fair GPU comparison), else ``"cpu"``."""
    return "cuda" if backend == "cupy" else "cpu"


def set_tf32(enabled: bool, torch_side: bool = True) -> dict:
    """TF32 for float32 GEMMs and convolutions, the same on both sides, before any GPU work: CuPy reads
    ``CUPY_TF32`` (cuBLAS math mode) lazily at its first float32 matmul and caches it (batched matmul ignores it),
    torch its ``allow_tf32`` switches (``torch_side``).
    Returns what was set (recorded in the results)."""
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    out = {"CUPY_TF32": os.environ["CUPY_TF32"]}
    if torch_side:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)
        out.update(
            {"torch.backends.cuda.matmul.allow_tf32": bool(enabled), "torch.backends.cudnn.allow_tf32": bool(enabled)}
        )
    return out


def _torch_engine(model, x_h, y_h, device="cpu"):
    import torch

    tmodel = torch_mirror(model).to(device)
    tmodel.train()
    tx = torch.from_numpy(x_h).to(device)
    ty = torch.from_numpy(np.asarray(y_h, dtype=np.int64)).to(device)
    topt = torch.optim.Adam(tmodel.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    cuda = str(device).startswith("cuda")

    def step():
        topt.zero_grad(set_to_none=True)
        loss_fn(tmodel(tx), ty).backward()
        topt.step()
        if cuda:
            torch.cuda.synchronize()

    return tmodel, step


def bench_config(
    name,
    shape,
    methods=("bp",),
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
):
    """Median seconds of one training step (Adam) of ``name`` on input ``shape``: torch BP and ssaref with every
    rule of ``methods`` (BP always included, first), alternating step by step.

    Returns ``{"model", "input", "params", "torch_ms", "rows": [{"method", "ssaref_ms", "ratio", "vs_bp",
    "status", "flops", "bytes", "cost_ops", "aux_params"}]}`` (``params``: the model's; ``aux_params``: the
    rule's auxiliary networks'; ``flops``, ``bytes``: ``step_cost`` of the rule's step); a rule that cannot train
    this model gets ``status`` "not supported: ..." and no times.  ``add_limits`` adds the limit column.
    ``conv_save``: what the convolutions keep (``ops.conv.SAVE_MODES``; None: the current mode); every mode of
    ``also_save`` adds a row per rule, ``"<rule>@<mode>"`` (``rule``, ``conv_save`` keys), timed in the same
    alternation, its ``vs_bp`` against the primary BP row (models with a convolution only).  ``conv_chunk``: the
    bound on the convolutions' transient column matrices (MiB, ``ops.conv.set_conv_chunk``; None: the current one).
    """
    xp = resolve_backend(backend)
    k = 10
    dense = build_model(name, shape, k, xp=np, dtype=np.float32, seed=seed)  # raises ValueError if it does not fit
    x_h, y_h = _batch(shape, batch, k, seed)
    x, y = xp.asarray(x_h), xp.asarray(y_h)
    methods = ["bp"] + [m for m in methods if m != "bp"]
    engines, rows = {}, {}
    for m in methods:
        try:
            run, engines[m] = ssaref_engine(
                name, shape, m, x, y, xp=xp, seed=seed, conv_save=conv_save, conv_chunk=conv_chunk
            )
            ops = step_cost(run.model, m, batch, shape, rule=run.rule)  # counted, for the limit column
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
            for m in [mm for mm in methods if mm in engines]:
                label = f"{m}@{mode}"
                run, engines[label] = ssaref_engine(
                    name, shape, m, x, y, xp=xp, seed=seed, conv_save=mode, conv_chunk=conv_chunk
                )
                rows[label] = dict(rows[m], method=label, rule=m, conv_save=mode)
                extra.append(label)
    for m in methods:
        rows[m].setdefault("conv_save", conv_save)
    _, engines["torch"] = _torch_engine(dense, x_h, y_h, torch_device(backend))
    order = ["bp", "torch"] + [m for m in methods[1:] if m in engines] + extra
    times = {m: [] for m in order}
    for i in range(warmup + repeats):
        for label in order:
            t0 = time.perf_counter()
            engines[label]()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[label].append(dt)
    # the median by default; "mean" counts every step (SSA's retraction on every 10th step, which a median skips)
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
        "rows": [rows[m] for m in methods + extra],
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


# --------------------------------------------------------------------------------------------- per-op profile
def _op_targets():
    """``[(owner, attribute, label)]``: every op function the engine calls, where its callers look it up."""
    from .nn import layers as L
    from .ops import activations, conv, linear, norm, pool
    from .rules import base as rule_base

    out = []
    for mod in (conv, pool, activations, norm, linear):
        out += [
            (mod, n, f"{mod.__name__.rsplit('.', 1)[-1]}.{n}")
            for n in mod.__all__
            if callable(getattr(mod, n, None))
            and not isinstance(getattr(mod, n), type)
            and n not in ("set_conv_save", "conv_save", "set_conv_chunk", "conv_chunk")
        ]  # settings, not ops
    out.append((conv, "im2col", "  im2col (inside conv2d_forward)"))
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


def op_profile(name, shape, method="bp", *, batch=128, steps=3, seed=0, backend="numpy", **options):
    """Where one ssaref training step of ``method`` on ``name`` goes: ``(step_ms, [(label, ms, fraction)])``.

    Every op function (ops.conv, pool, activations, norm, linear, the loss) and the optimiser's ``step`` are
    wrapped with a timer (inclusive wall time, mean over ``steps`` steps after one warm-up step); ``im2col`` is
    also shown inside ``conv2d_forward``; the rest of the step (the rule's own code, containers, Python) is the
    last row.  The wrappers are removed afterwards.  On a device (CuPy) each timer synchronises the device before
    it starts and before it stops, so an op's row holds its kernels' run time, not only their launch (the
    synchronisations make the profiled step slower than an unprofiled one: the rows are where the time goes,
    ``step_ms`` is the profiled step's).
    """
    import functools

    from .optim import Optimizer

    xp = resolve_backend(backend)
    x_h, y_h = _batch(shape, batch, 10, seed)
    _, step = ssaref_engine(name, shape, method, xp.asarray(x_h), xp.asarray(y_h), xp=xp, seed=seed, **options)
    acc: dict = {}
    saved = []
    sync = _device_sync(xp)

    def wrap(fn, label):
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
        Optimizer.step = wrap(Optimizer.__dict__["step"], "optimiser step (Adam)")
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


# --------------------------------------------------------------------------------------------- memory
def _proc_status():
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _exact_malloc():
    """Make the resident set follow the live arrays: glibc serves every block above 64 KiB with its own ``mmap``
    and unmaps it when freed (a fixed threshold also switches off glibc's dynamic threshold, which would keep
    freed large blocks in the heap).  Both engines allocate their arrays through malloc, so the high-water mark is
    then the peak of live memory.  False where ``mallopt`` is not available."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 64 << 10) == 1 and mallopt(M_TRIM_THRESHOLD, 128 << 10) == 1)


def _probe(spec):
    """The memory probe (runs in a fresh process): see ``measure_memory``."""
    import gc
    import tracemalloc

    exact = _exact_malloc()
    engine, name, shape, batch = spec["engine"], spec["model"], tuple(spec["input"]), int(spec["batch"])
    if engine == "torch":
        import torch  # noqa: F401  (loaded before the thread limits are applied)
    apply_threads(spec.get("threads"))
    if spec.get("conv_save"):
        from .ops.conv import set_conv_save

        set_conv_save(spec["conv_save"])
    if spec.get("conv_chunk") is not None:
        from .ops.conv import set_conv_chunk

        set_conv_chunk(spec["conv_chunk"])
    dense = build_model(name, shape, 10, dtype=np.float32, seed=0, **spec.get("options", {}))
    x, y = _batch(shape, batch, 10, 0)
    if engine == "torch":
        import torch

        tmodel = torch_mirror(dense)
        tx, ty = torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
        del dense
    gc.collect()
    base = _proc_status().get("VmRSS")
    reset = _reset_hwm()
    if engine == "torch":
        topt = torch.optim.Adam(tmodel.parameters(), lr=LR)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            topt.zero_grad(set_to_none=True)
            loss_fn(tmodel(tx), ty).backward()
            topt.step()
    else:
        run = build_run(dense, engine, np.random.default_rng(2), optimizer="adam", lr=LR)

        def step():
            run.train_step(x, y)

    step()  # warm-up: optimiser state, lazy initialisation
    gc.collect()
    settled = _proc_status().get("VmRSS")
    hwm_first = _proc_status().get("VmHWM") if reset else None
    reset = reset and _reset_hwm()
    for _ in range(int(spec.get("steps", 2))):
        step()
    hwm = _proc_status().get("VmHWM") if reset else None
    mib = lambda v: None if v is None else v / 2**20
    out = {
        "exact_malloc": exact,
        "base_rss": base,
        "settled_rss": settled,
        "hwm": hwm,
        # set-up + warm-up + steps above the built model: the training run's peak
        "peak_mib": mib(None if hwm is None else max(hwm, hwm_first or 0) - base),
        # what persists between steps (optimiser and rule state, lazily initialised libraries)
        "state_mib": mib(settled - base),
        # what one step adds on top of that (activations, caches, gradients, workspace)
        "step_mib": mib(None if hwm is None else hwm - settled),
    }
    if engine != "torch":
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        step()
        out["traced_mib"] = (tracemalloc.get_traced_memory()[1] - before) / 2**20
        tracemalloc.stop()
    return out


def _probe_main(arg):
    """Entry of the probe subprocess: JSON spec in, one JSON line out (exit 2 with one line on a failure)."""
    try:
        print(json.dumps(_probe(json.loads(arg))))
        return 0
    except (ValueError, NotImplementedError, MemoryError) as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2


def measure_memory(
    engine, name, shape, *, batch=128, threads=None, steps=2, options=None, timeout=900, conv_save=None, conv_chunk=None
):
    """Peak training memory of ``engine`` ("torch" = PyTorch BP, or an ssaref rule name) on model ``name``,
    input ``shape`` (``build_model`` ``options``), in a fresh Python process whose malloc returns every freed
    block above 64 KiB to the kernel
    (so the resident set follows the live arrays; ``_exact_malloc``).

    Returns a dict (MiB): ``peak_mib``, the resident-set high-water mark over optimiser/rule set-up, one warm-up
    step and ``steps`` steps, above the resident set after the model and the batch were built (the training
    run's peak); ``state_mib``, what persists after the warm-up step (optimiser and rule state, and for torch its
    lazily initialised autograd machinery); ``step_mib``, the high-water mark of the further steps above that
    (activations, caches, gradients, workspace of one step); for ssaref ``traced_mib``, the tracemalloc peak of
    one more step (the arrays it allocates).  ``None`` where ``/proc/self/clear_refs`` cannot reset the mark;
    ``{"error": line}`` when the probe failed.  ``conv_save``: what ssaref's convolutions keep for the backward
    (``ops.conv.set_conv_save``; None: the default); ``conv_chunk``: the bound on their transient column matrices
    (MiB, ``ops.conv.set_conv_chunk``; None: the default).
    """
    spec = {
        "engine": engine,
        "model": name,
        "input": list(shape),
        "batch": batch,
        "threads": threads,
        "steps": steps,
        "options": dict(options or {}),
        "conv_save": conv_save,
        "conv_chunk": conv_chunk,
    }
    code = "import sys; from ssaref.bench import _probe_main; sys.exit(_probe_main(sys.argv[1]))"
    try:
        p = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout} s"}
    if p.returncode != 0:
        lines = [l for l in (p.stderr or "").splitlines() if l.strip()]
        return {"error": lines[-1] if lines else f"memory probe exited {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- report
def machine_info(threads):
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores_available": default_threads(),
        "threads": threads,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "blas": blas_info(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": load,
        "openblas_num_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def _mem(peak, step):
    return "—" if peak is None else f"{peak:.0f}/{_fmt(step, '.0f')}"


def _dev_or_host(dev, peak, step):
    """The memory column: a GPU step's device MiB (``dev``), else the host's ``peak/step``."""
    return f"{dev:.0f} dev" if dev is not None else _mem(peak, step)


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def _blas_line(info):
    parts = []
    for p in info.get("blas", []):
        if p.get("user_api") != "blas":
            continue
        s = f"{p.get('internal_api', '?')} {p.get('version', '')}".strip()
        extra = ", ".join(str(p[k]) for k in ("architecture", "threading_layer") if p.get(k))
        parts.append(f"{s} ({extra}, {p.get('num_threads')} threads)" if extra else s)
    omp = [
        f"{p.get('prefix', p.get('internal_api', '?'))} ({p.get('num_threads')} threads)"
        for p in info.get("blas", [])
        if p.get("user_api") == "openmp"
    ]
    return ("; ".join(parts) or "unknown") + (f"; OpenMP: {', '.join(omp)}" if omp else "")


def markdown(result):
    """The short markdown table of a benchmark ``result`` (what ``--markdown`` writes)."""
    info, s = result["machine"], result["settings"]
    lines = [
        "# ssaref vs PyTorch, CPU training step",
        "",
        f"Machine: {info['cpu']}, {info['cores_available']} cores available; threads {info['threads']} "
        f"(BLAS and torch); BLAS: {_blas_line(info)}; numpy {info['numpy']}, torch {info['torch']}, "
        f"Python {info['python']}.  Load average (1, 5, 15 min) at start "
        f"{_fmt_load(info.get('loadavg_start'))}, at end {_fmt_load(info.get('loadavg_end'))}.",
        "",
        f"Batch {s['batch']}, float32, Adam, {s.get('statistic', 'median')} of {s['repeats']} steps after "
        f"{s['warmup']} warm-up steps, "
        f"engines alternating step by step in one process (ssaref {s['backend']}); the torch side is always BP.  "
        "`ratio` = ssaref step / torch BP step; `vs BP` = the rule's step / ssaref's BP step.  Memory (MiB, "
        "a fresh process per engine, malloc returning freed blocks to the kernel): `peak` = resident-set "
        f"high-water mark over optimiser set-up, one warm-up step and {s['memory_steps']} steps above the "
        "resident set of the built model; `step` = the high-water mark of the later steps above the resident "
        "set between steps (activations, caches, gradients, workspace).",
        "",
    ]
    if result.get("sgemm"):
        g = result["sgemm"]
        lines += [
            f"sgemm peak (float32 `A @ B` on {'the GPU (CuPy)' if g.get('backend') == 'cupy' else 'the CPU'}, "
            f"SmallConv's conv GEMM shapes at {g['input']}, batch {s['batch']}): "
            f"**{g['peak_gflops']:.0f} GFLOP/s** ("
            + ", ".join(f"{r['m']}x{r['k']} @ {r['k']}x{r['n']}: {r['gflops']:.0f}" for r in g["shapes"])
            + ")."
        ]
        if g.get("smallconv"):
            c = g["smallconv"]
            lines += [
                f"SmallConv BP step ({c['input']}): {c['gflop']:.1f} GFLOP of GEMMs; ssaref "
                f"{c['ssaref_gflops']:.0f} GFLOP/s ({100 * c['ssaref_frac']:.0f} % of peak), torch "
                f"{c['torch_gflops']:.0f} GFLOP/s ({100 * c['torch_frac']:.0f} % of peak)."
            ]
        lines.append("")
    lim = result.get("limits")
    if lim:
        lines += [
            f"Limit column: the machine measured at the start of this run, float32 GEMM {lim['gemm_n']}^3 "
            f"**{lim['sgemm_gflops']:.1f} GFLOP/s**, copy bandwidth ({lim['stream_mib']} MiB, read + write) "
            f"**{lim['stream_gbs']:.1f} GB/s**.  Each step's FLOPs and bytes are counted from the layer "
            'shapes, op by op (`ssaref.cost.step_cost`, convention in docs/internals.md "Cost model"); '
            "`bound` = max(FLOPs / GEMM rate, bytes / bandwidth) of the step; `limit` = bound / measured step "
            "(100 % = at the machine's limit for that arithmetic and traffic; torch against BP's counts).",
            "",
        ]
    lines += [
        "| model | input | params | ssaref BP ms | torch BP ms | ratio | ssaref MiB peak / step | "
        "torch MiB peak / step | BP GFLOP | BP MB | bound ms | ssaref limit | torch limit |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in result["configs"]:
        bp = c["rows"][0]
        lines.append(
            f"| {c['model']} | {c['input']} | {c['params']:,} | {_fmt(bp['ssaref_ms'], '.1f')} | "
            f"{c['torch_ms']:.1f} | **{_fmt(bp['ratio'], '.2f')}** | "
            f"{_mem(bp.get('ssaref_mib'), bp.get('step_mib'))} | "
            f"{_mem(c.get('torch_mib'), c.get('torch_step_mib'))} | "
            f"{_fmt(_scaled(bp.get('flops'), 1e9), '.3f')} | {_fmt(_scaled(bp.get('bytes'), 1e6), '.1f')} | "
            f"{_fmt(bp.get('bound_ms'), '.2f')} | {_pct(bp.get('limit'))} | {_pct(c.get('torch_limit'))} |"
        )
    profiled = [c for c in result["configs"] if c.get("profile")]
    for c in profiled:
        pr = c["profile"]
        lines += [
            "",
            f"Where ssaref's BP step goes, {c['model']} {c['input']} (ratio {c['rows'][0]['ratio']:.2f}; "
            f"per-op timers, {pr['step_ms']:.0f} ms a step): "
            + ", ".join(
                f"{o['op'].strip()} {o['ms']:.0f} ms ({100 * o['fraction']:.0f} %)"
                for o in pr["ops"]
                if o["fraction"] >= 0.01
            )
            + ".",
        ]
    saved = [(c, r) for c in result["configs"] for r in c["rows"] if r.get("rule") and r.get("ssaref_ms")]
    if saved:
        lines += [
            "",
            "What a convolution keeps for its weight gradient (`--conv-save`): `columns` (the forward's "
            "im2col matrix) or `input` (the backward rebuilds the columns a kernel offset at a time); the same "
            "gradients up to round-off.  `vs columns` = step time / the same rule's step in columns mode "
            "(timed in the same alternation); memory MiB peak/step.",
            "",
            "| model | input | rule | columns ms | input ms | vs columns | columns MiB | input MiB | torch MiB |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c, r in saved:
            base = next(x for x in c["rows"] if x["method"] == r["rule"])
            lines.append(
                f"| {c['model']} | {c['input']} | {r['rule']} | {base['ssaref_ms']:.1f} | "
                f"{r['ssaref_ms']:.1f} | {r['ssaref_ms'] / base['ssaref_ms']:.2f} | "
                f"{_mem(base.get('ssaref_mib'), base.get('step_mib'))} | "
                f"{_mem(r.get('ssaref_mib'), r.get('step_mib'))} | "
                f"{_mem(c.get('torch_mib'), c.get('torch_step_mib'))} |"
            )
    methods = [m for m in result["settings"]["methods"] if m != "bp"]
    if methods:
        lines += [
            "",
            "Each rule's step relative to ssaref's BP step (`vs BP`; ms and peak MiB in brackets); "
            "— = the rule does not train this model.",
            "",
            "| model | input | " + " | ".join(methods) + " |",
            "| --- | --- | " + " | ".join("---:" for _ in methods) + " |",
        ]
        for c in result["configs"]:
            by = {r["method"]: r for r in c["rows"]}
            cells = []
            for m in methods:
                r = by.get(m)
                if r is None or r.get("vs_bp") is None:
                    cells.append("—")
                else:
                    cells.append(f"{r['vs_bp']:.2f} ({r['ssaref_ms']:.0f} ms, {_fmt(r.get('ssaref_mib'), '.0f')})")
            lines.append(f"| {c['model']} | {c['input']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Each rule's counted step (`step_cost`): GFLOP, MB moved, the roofline bound (ms) and the "
            "limit column (bound / measured step); auxiliary-network parameters (PredSim, AugLocal) apart from "
            "the model's (the `params` column above counts the model only).",
            "",
            "| model | input | method | GFLOP | MB | bound ms | step ms | limit | aux params |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in result["configs"]:
            for r in c["rows"]:
                if r.get("flops") is None:
                    continue
                lines.append(
                    f"| {c['model']} | {c['input']} | {r['method']} | {r['flops'] / 1e9:.3f} | "
                    f"{r['bytes'] / 1e6:.1f} | {_fmt(r.get('bound_ms'), '.2f')} | "
                    f"{_fmt(r.get('ssaref_ms'), '.1f')} | {_pct(r.get('limit'))} | "
                    f"{r.get('aux_params', 0):,} |"
                )
    return "\n".join(lines) + "\n"


def _scaled(v, unit):
    return None if v is None else v / unit


def _pct(v):
    return "—" if v is None else f"{100 * v:.0f} %"


def _loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def _fmt_load(load):
    return "unknown" if not load else ", ".join(f"{v:.2f}" for v in load)


# --------------------------------------------------------------------------------------------- command line
# Upper bounds of the integer options: what one benchmark run can do (a bound of its loop or its memory), so a
# typo such as --repeats 1000000000 is refused before the first step instead of running for days.
MAX_BATCH, MAX_REPEATS, MAX_WARMUP, MAX_MEMORY_STEPS, MAX_INPUT_SIDE = 65536, 100_000, 10_000, 1000, 4096
MAX_LIMIT_GEMM, MAX_LIMIT_STREAM_MIB = 16384, 16384  # a 16384^2 float32 GEMM is 3 GiB; 16 GiB of copy


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input: expected CxHxW (e.g. 3x32x32), got {text!r}")
    if max(shape) > MAX_INPUT_SIDE:
        raise ValueError(f"--input {text}: channels, height and width must each be at most {MAX_INPUT_SIDE}")
    return shape


def _parse(argv):
    from .nn import MODELS
    from .rules import RULES

    p = OneLineParser(prog="python -m ssaref.bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma list or 'all' ({', '.join(MODELS)})")
    p.add_argument(
        "--input",
        default="auto",
        help="comma list of CxHxW input shapes, or 'auto': each model on its paper data set's shape "
        "(1x28x28 for mlp, lenet, convnet; 3x32x32 for the others)",
    )
    p.add_argument(
        "--method", default="bp", help=f"comma list of rules or 'all' ({', '.join(RULES)}); the torch side is BP"
    )
    p.add_argument("--batch-size", type=count(MAX_BATCH, "one batch must fit in memory"), default=128)
    p.add_argument("--repeats", type=count(MAX_REPEATS, "timed steps per rule and model"), default=20)
    p.add_argument("--warmup", type=count(MAX_WARMUP, "untimed steps per rule and model"), default=3)
    p.add_argument(
        "--statistic",
        default="median",
        choices=("median", "mean"),
        help="per-step statistic: median (default) or mean (every step counted: rules whose cost varies "
        "by step, e.g. SSA's retraction every 10th step, need --repeats a multiple of that period)",
    )
    p.add_argument(
        "--threads",
        type=threads_arg,
        default=None,
        help="BLAS/OpenMP/torch threads (default: the cores this process may use, "
        f"here {default_threads()}); on a shared machine give the free cores",
    )
    p.add_argument("--backend", default="numpy")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--markdown", default=None, help="also write a short markdown table to this file")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --markdown files")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-steps", type=count(MAX_MEMORY_STEPS, "steps of each peak-memory subprocess"), default=2)
    p.add_argument("--no-sgemm", action="store_true", help="skip the sgemm peak measurement")
    p.add_argument(
        "--conv-save",
        default="auto",
        choices=("auto", "columns", "input", "both"),
        help="what ssaref's convolutions keep for the weight gradient (ssaref.train --conv-save; default "
        "auto, its default); both: every rule timed and its memory measured in columns and input "
        "mode (conv models; the input-mode rows labelled <rule>@input)",
    )
    p.add_argument(
        "--conv-chunk",
        type=nonnegative_float,
        default=None,
        metavar="MIB",
        help="bound on a convolution's transient column matrix, made a band of output rows at a time above it "
        "(ops.conv.set_conv_chunk; 0: always whole; default: 8 on NumPy, 0 on a GPU; docs/decisions.md D9)",
    )
    p.add_argument(
        "--no-limit",
        action="store_true",
        help="skip the limit column (the machine's GEMM rate and bandwidth, measured at the start)",
    )
    p.add_argument(
        "--limit-gemm",
        type=count(MAX_LIMIT_GEMM, "three n x n float32 matrices"),
        default=2048,
        help="size n of the square float32 GEMM whose rate is the limit column's peak (default 2048)",
    )
    p.add_argument(
        "--limit-stream-mib",
        type=count(MAX_LIMIT_STREAM_MIB, "two arrays of it"),
        default=256,
        help="MiB of the float32 copy whose rate is the limit column's bandwidth (default 256)",
    )
    p.add_argument(
        "--profile",
        default="auto",
        choices=("auto", "all", "none"),
        help="per-op profile of ssaref's BP step: auto = where ssaref/torch > 1 (default), all, none",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="with --backend cupy: allow TF32 in float32 GEMMs and convolutions on both sides (CuPy's "
        "CUPY_TF32, torch's allow_tf32); off by default, recorded in --json",
    )
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's mmap threshold alone (ssaref.train raises it, see backend.keep_large_allocations)",
    )
    args = p.parse_args(argv)
    if args.json and args.markdown and os.path.realpath(args.json) == os.path.realpath(args.markdown):
        raise ValueError(
            f"--json {args.json} and --markdown {args.markdown} are the same file; one would overwrite the other"
        )
    for path, flag in ((args.json, "--json"), (args.markdown, "--markdown")):
        if path:  # before the benchmark runs, not after
            check_output_path(path, flag=flag, overwrite=args.overwrite)
    set_tf32(args.tf32, torch_side=False)  # before CuPy's first float32 matmul, which reads CUPY_TF32 once
    resolve_backend(args.backend)
    names = list(MODELS) if args.models.strip() == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise ValueError(
            f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(sorted(MODELS))} or all"
        )
    methods = list(RULES) if args.method.strip() == "all" else [m.strip() for m in args.method.split(",") if m.strip()]
    bad = [m for m in methods if m not in RULES]
    if bad or not methods:
        raise ValueError(
            f"--method: unknown rule(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(RULES)} or all"
        )
    args.names, args.methods = names, ["bp"] + [m for m in dict.fromkeys(methods) if m != "bp"]
    args.inputs = None if args.input.strip() == "auto" else [_shape(s) for s in args.input.split(",") if s.strip()]
    if args.inputs == []:
        raise ValueError("--input: no shape given")
    return args


def _main(argv):
    args = _parse(argv)
    tuned = False if args.default_malloc else keep_large_allocations()
    try:
        import torch
    except ImportError:
        print("error: the benchmark compares against PyTorch; pip install torch==2.13.0", file=sys.stderr)
        return 2
    tf32 = set_tf32(args.tf32)
    if torch_device(args.backend) == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--backend cupy compares with PyTorch on CUDA, but this torch has no CUDA device "
            f"(torch {torch.__version__}); install a CUDA build of torch"
        )
    threads = apply_threads(args.threads)
    info = machine_info(threads["threads"])
    print(
        f"numpy {np.__version__}, torch {info['torch']}, threads {threads['threads']} "
        f"({', '.join(threads['pools'])}), "
        f"BLAS {_blas_line(info)}, backend {args.backend}, batch {args.batch_size}, float32, Adam, "
        f"{args.statistic} of {args.repeats}, large-block reuse {'on' if tuned else 'off'}, "
        f"load {_fmt_load(info['loadavg_start'])}"
    )
    configs = []
    for name in args.names:
        for shape in [_input_for(name, None)] if args.inputs is None else args.inputs:
            configs.append((name, tuple(shape)))
    result = {
        "machine": info,
        "settings": {
            "batch": args.batch_size,
            "repeats": args.repeats,
            "statistic": args.statistic,
            "tf32": tf32,
            "torch_device": torch_device(args.backend),
            "warmup": args.warmup,
            "backend": args.backend,
            "methods": args.methods,
            "memory_steps": args.memory_steps,
            "tuned_malloc": tuned,
            "conv_save": args.conv_save,
            "conv_chunk": args.conv_chunk,
            "threads": threads,
        },
        "configs": [],
    }
    memory = not args.no_memory and args.backend == "numpy"
    limits = None
    if not args.no_limit:  # measured before the steps, in this run, on the engines' device
        limits = machine_limits(resolve_backend(args.backend), gemm_n=args.limit_gemm, stream_mib=args.limit_stream_mib)
        result["limits"] = limits
        print(
            f"limits: sgemm {limits['sgemm_gflops']:.1f} GFLOP/s (n = {limits['gemm_n']}), copy bandwidth "
            f"{limits['stream_gbs']:.1f} GB/s ({limits['stream_mib']} MiB); load {_fmt_load(_loadavg())}",
            flush=True,
        )
    print(
        f"{'model':<10} {'input':<8} {'method':<7} {'params':>9} {'ssaref ms':>10} {'torch ms':>9} {'ratio':>6} "
        f"{'vs BP':>6} {'MiB peak/step':>13} {'torch MiB':>11} {'limit':>6}",
        flush=True,
    )
    for name, shape in configs:
        try:
            primary = "columns" if args.conv_save == "both" else args.conv_save  # both: input rows beside
            c = bench_config(
                name,
                shape,
                args.methods,
                batch=args.batch_size,
                repeats=args.repeats,
                warmup=args.warmup,
                backend=args.backend,
                statistic=args.statistic,
                conv_save=primary,
                also_save=("input",) if args.conv_save == "both" else (),
                conv_chunk=args.conv_chunk,
            )
        except ValueError as exc:
            if len(configs) > 1 and "does not fit" in str(exc):
                print(f"{name:<10} {'x'.join(map(str, shape)):<8} skipped: {exc}", flush=True)
                continue
            raise
        except NotImplementedError as exc:
            raise ValueError(str(exc)) from None
        if limits:
            add_limits(c, limits)
        bp = c["rows"][0]
        if args.profile == "all" or (args.profile == "auto" and bp["ratio"] > 1.0):
            ms, rows = op_profile(
                name, shape, "bp", batch=args.batch_size, backend=args.backend, conv_chunk=args.conv_chunk
            )
            c["profile"] = {"step_ms": ms, "ops": [{"op": k, "ms": v, "fraction": f} for k, v, f in rows]}
            print(
                f"{name} {c['input']}: where ssaref's BP step goes ({ms:.1f} ms, per-op timers): "
                + ", ".join(f"{k.strip()} {v:.1f} ms ({100 * f:.0f} %)" for k, v, f in rows[:8]),
                flush=True,
            )
        if memory:
            t = measure_memory(
                "torch", name, shape, batch=args.batch_size, threads=threads["threads"], steps=args.memory_steps
            )
            c["torch_mib"], c["torch_step_mib"], c["torch_memory"] = t.get("peak_mib"), t.get("step_mib"), t
        for r in c["rows"]:
            if memory and r["status"] == "ok":
                mm = measure_memory(
                    r.get("rule", r["method"]),
                    name,
                    shape,
                    batch=args.batch_size,
                    threads=threads["threads"],
                    steps=args.memory_steps,
                    conv_save=r.get("conv_save"),
                    conv_chunk=args.conv_chunk,
                )
                r.update(
                    {
                        "ssaref_mib": mm.get("peak_mib"),
                        "step_mib": mm.get("step_mib"),
                        "traced_mib": mm.get("traced_mib"),
                        "memory": mm,
                    }
                )
            if r["status"] != "ok":
                print(f"{name:<10} {c['input']:<8} {r['method']:<7} {r['status']}", flush=True)
                continue
            print(
                f"{name:<10} {c['input']:<8} {r['method']:<7} {c['params']:>9} {r['ssaref_ms']:>10.2f} "
                f"{c['torch_ms']:>9.2f} {r['ratio']:>6.2f} {r['vs_bp']:>6.2f} "
                f"{_dev_or_host(r.get('ssaref_dev_mib'), r.get('ssaref_mib'), r.get('step_mib')):>13} "
                f"{_dev_or_host(c.get('torch_dev_mib'), c.get('torch_mib'), c.get('torch_step_mib')):>11} "
                f"{_pct(r.get('limit')):>6}" + (f"  (+{r['aux_params']:,} aux params)" if r.get("aux_params") else ""),
                flush=True,
            )
        result["configs"].append(c)
    if not result["configs"]:
        raise ValueError("no model fits any --input shape")
    if not args.no_sgemm:
        sc = next((c for c in result["configs"] if c["model"] == "smallconv"), None)
        shape = tuple(int(v) for v in sc["input"].split("x")) if sc else CIFAR_INPUT
        # conv1 (K = 27) is no GEMM-peak shape; on the engines' device (CuPy's GEMMs for --backend cupy)
        g = sgemm_peak(smallconv_gemms(shape, args.batch_size)[1:], xp=resolve_backend(args.backend))
        peak = max(r["gflops"] for r in g)
        result["sgemm"] = {
            "input": "x".join(map(str, shape)),
            "shapes": g,
            "peak_gflops": peak,
            "backend": args.backend,
        }
        line = (
            f"sgemm peak {peak:.0f} GFLOP/s ("
            + ", ".join(f"{r['m']}x{r['k']}x{r['n']}: {r['gflops']:.0f}" for r in g)
            + ")"
        )
        if sc:
            gf, s_ms, t_ms = sc["flops"], sc["rows"][0]["ssaref_ms"], sc["torch_ms"]
            result["sgemm"]["smallconv"] = {
                "input": sc["input"],
                "gflop": gf / 1e9,
                "ssaref_gflops": gf / s_ms / 1e6,
                "torch_gflops": gf / t_ms / 1e6,
                "ssaref_frac": gf / s_ms / 1e6 / peak,
                "torch_frac": gf / t_ms / 1e6 / peak,
            }
            d = result["sgemm"]["smallconv"]
            line += (
                f"; smallconv {sc['input']} step {d['gflop']:.1f} GFLOP: ssaref {d['ssaref_gflops']:.0f} GFLOP/s "
                f"({100 * d['ssaref_frac']:.0f} %), torch {d['torch_gflops']:.0f} GFLOP/s "
                f"({100 * d['torch_frac']:.0f} %)"
            )
        print(line, flush=True)
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        info["loadavg_end"] = None
    if args.json:
        write_text(args.json, json.dumps(result, indent=1, default=_json_default))
    if args.markdown:
        write_text(args.markdown, markdown(result))
    return 0


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(type(o).__name__)


def main(argv=None):
    """``python -m ssaref.bench``: 0 done, 2 bad input (one ``error:`` line), 1 a bug."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
