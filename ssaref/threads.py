"""Thread control for the BLAS and OpenMP pools that NumPy, SciPy and PyTorch run on.

On a machine shared with other busy processes, more BLAS threads than free cores make every GEMM wait for a
descheduled thread: a 1-epoch BP MLP run on this project's 2-core machine took 41.3 s with two OpenBLAS threads
next to one busy process and 1.3 s with one.  Every entry point takes ``--threads N`` and calls
:func:`apply_threads` once, before any work; the default is :func:`default_threads`, the cores this process may
run on.  On a shared machine pass the number of cores that are actually free (``--threads 1`` when in doubt).

::

    from ssaref.threads import apply_threads, default_threads
    info = apply_threads(args.threads)      # None -> default_threads()
    config["threads"] = info["threads"]     # what the run file records
    config["thread_pools"] = info["pools"]

The limits are process-wide and last for the life of the process (``threadpoolctl.threadpool_limits`` without a
context).  Pools of libraries loaded *after* the call (e.g. ``import torch`` later) are not limited by it: call
it after the imports, or again.  PyTorch's intra-op pool is set too when torch is already imported.

ssaref's own element-wise work (im2col copies, col2im adds, pooling, ReLU, BatchNorm on the NumPy backend) can be
split over threads too (:func:`parallel_ranges`; NumPy releases the GIL inside its loops); the split never changes a
result (each part computes the same elements with the same operations in the same order as the whole).  It is **off
by default** (:func:`ops_threads` is 1 unless ``apply_threads(n, ops_threads=k)`` or ``SSAREF_OP_THREADS=k``):
OpenBLAS's idle workers busy-wait about 0.1 s after every GEMM (measured: 0.11 s of CPU during a 0.2 s sleep after
one), so on a machine whose cores all run BLAS threads a second op thread only competes with a spinning worker
(measured on this project's 2-core machine, ssaref BP steps with BLAS on 2 threads, op threads 1 vs 2: ResNet-20
833 vs 855 ms, SmallConv 845 vs 918 ms).  It pays where BLAS has fewer threads than there are cores.
"""

from __future__ import annotations

import os
import sys

from .cli import count

__all__ = ["default_threads", "apply_threads", "blas_info", "threads_arg", "ops_threads", "parallel_ranges"]


def default_threads() -> int:
    """The number of CPU cores this process may run on (``len(os.sched_getaffinity(0))``; ``os.cpu_count()``
    where the affinity call does not exist), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    return max(1, int(n))


#: the most threads ``--threads`` takes (a fixed bound, not this machine's cores: a run file written on a large node
#: must resume on a small one; OpenBLAS and OpenMP are capped at their own build limits below it)
MAX_THREADS = 1024


#: argparse type of ``--threads``: an int in [1, ``MAX_THREADS``]
threads_arg = count(MAX_THREADS, "a fixed bound, so that a run file from a large node resumes on a small one")


def blas_info() -> list[dict]:
    """``threadpoolctl.threadpool_info()`` reduced to what a report needs: per loaded pool its ``user_api``
    (``blas`` / ``openmp``), ``internal_api`` (``openblas``, ``mkl``, ``libgomp``, ...), version, architecture,
    threading layer and current ``num_threads``.  ``[]`` when threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer", "num_threads")
    return [{k: p.get(k) for k in keys if p.get(k) is not None} for p in threadpool_info()]


_LIMITER = None  # the process-wide limits (kept referenced for the life of the process)
_OPS_THREADS = None  # threads for ssaref's element-wise work; None: default_threads()
_POOL = None  # (size, ThreadPoolExecutor) of the workers beside the calling thread


def ops_threads() -> int:
    """Threads ssaref's own element-wise work is split over: ``apply_threads``'s ``ops_threads``, else
    ``$SSAREF_OP_THREADS``, else 1 (see the module docstring for why the split is off by default)."""
    if _OPS_THREADS is not None:
        return _OPS_THREADS
    try:
        return max(1, int(os.environ.get("SSAREF_OP_THREADS", "1")))
    except ValueError:
        return 1


def _current_ops_threads() -> int:
    return ops_threads()


def _reset_pool_in_child():
    global _POOL
    _POOL = None  # a forked child has none of the parent's worker threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_in_child)


def _workers(k):
    global _POOL
    if _POOL is None or _POOL[0] != k:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        if _POOL is not None:
            _POOL[1].shutdown(wait=False)
        _POOL = (k, ThreadPoolExecutor(max_workers=k, thread_name_prefix="ssaref-ops"))
    return _POOL[1]


def parallel_ranges(n, fn, *, min_chunk=1, threads=None) -> None:
    """Call ``fn(lo, hi)`` on contiguous parts ``[lo, hi)`` covering ``range(n)``, in parallel.

    At most ``threads`` (default :func:`ops_threads`) parts, each at least ``min_chunk`` long; the calling thread
    runs the first part, pool workers the others.  Returns when every part is done; the first exception raised
    by a part is re-raised.  With one part (one thread, or ``n < 2 * min_chunk``) this is ``fn(0, n)``.  ``fn``
    must write disjoint outputs per part (and release the GIL, as NumPy's loops do, to gain anything).
    """
    k = min(int(threads or ops_threads()), max(1, n // max(1, int(min_chunk))))
    if k <= 1 or n <= 1:
        fn(0, n)
        return
    bounds = [n * i // k for i in range(k + 1)]
    pool = _workers(k - 1)
    futures = [pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, k)]
    try:
        fn(bounds[0], bounds[1])
    finally:
        errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e


def apply_threads(n=None, ops_threads=None) -> dict:
    """Limit every BLAS and OpenMP thread pool loaded in this process (and PyTorch's, when imported) to ``n``.

    Parameters
    ----------
    n : int >= 1, or None for :func:`default_threads`.
    ops_threads : int >= 1 or None: threads for ssaref's own element-wise split (:func:`parallel_ranges`); None
        leaves it as it is (1 unless ``$SSAREF_OP_THREADS`` says otherwise).

    Returns
    -------
    dict, for a run file's config: ``{"threads": n, "pools": ["openblas=2", "libgomp=2", ...],
    "threadpoolctl": bool}``.  ``pools`` lists each limited pool as ``<internal_api>=<num_threads>`` after the
    call (what was actually set); ``threadpoolctl`` is False when the package is missing, in which case only the
    environment variables below are set, which reach libraries loaded later but not pools already running.

    ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` are also set to ``n`` so that child
    processes (the validation scripts' training runs, the benchmark's memory probes) inherit the limit.
    Raises ValueError for ``n < 1``.
    """
    global _LIMITER, _OPS_THREADS
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    n = int(n)
    if ops_threads is not None:
        if isinstance(ops_threads, bool) or int(ops_threads) != ops_threads or int(ops_threads) < 1:
            raise ValueError(f"ops_threads must be an integer >= 1, got {ops_threads!r}")
        _OPS_THREADS = int(ops_threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        have = False
    else:
        have = True
        _LIMITER = threadpool_limits(limits=n)
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(n)
        except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the call
            pass
    pools = [f"{p.get('internal_api', p.get('prefix', '?'))}={p.get('num_threads')}" for p in blas_info()]
    if torch is not None and hasattr(torch, "get_num_threads"):
        pools.append(f"torch={torch.get_num_threads()}")
    return {"threads": n, "pools": pools, "threadpoolctl": have, "ops_threads": _current_ops_threads()}
