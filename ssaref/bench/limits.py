"""The machine's limits, measured: float32 GEMM rate (of given shapes, or one large square GEMM) and copy
bandwidth, on the engines' device; the peaks the benchmark's "% of peak" and limit column divide by."""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..nn import build_model


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
