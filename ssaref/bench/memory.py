"""Peak training memory of a step, measured in a fresh process per engine and configuration (``measure_memory``;
the child runs ``_probe_main``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from ..nn import build_model
from ..threads import apply_threads
from .engines import LR, _batch, bench_run
from .mirror import torch_mirror


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
        from ..ops.conv import set_conv_save

        set_conv_save(spec["conv_save"])
    if spec.get("conv_chunk") is not None:
        from ..ops.conv import set_conv_chunk

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
        run = bench_run(dense, engine)

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
    code = "import sys; from ssaref.bench.memory import _probe_main; sys.exit(_probe_main(sys.argv[1]))"
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
