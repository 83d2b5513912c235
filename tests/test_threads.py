"""ssaref.threads: the default, the limits it sets (and reports), the op-level split, and that the split never
changes a result (every op bit for bit the same on 1 and on 2 threads)."""
import os

import numpy as np
import pytest

from ssaref import threads
from ssaref.ops import activations as act
from ssaref.ops import conv, norm, pool
from ssaref.ops.im2col import col2im, im2col


@pytest.fixture
def restore_threads():
    yield
    threads.apply_threads(None, ops_threads=1)


def test_default_is_the_cores_this_process_may_use():
    assert threads.default_threads() == len(os.sched_getaffinity(0)) >= 1


def test_apply_threads_limits_blas_and_reports_what_was_set(restore_threads):
    info = threads.apply_threads(1)
    assert info["threads"] == 1 and info["threadpoolctl"] is True
    assert info["pools"] and all(p.endswith("=1") for p in info["pools"])
    assert all(p["num_threads"] == 1 for p in threads.blas_info())
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1" and threads.ops_threads() == 1 == info["ops_threads"]
    back = threads.apply_threads(None)
    assert back["threads"] == threads.default_threads() and back["ops_threads"] == 1   # the split is opt-in
    assert threads.apply_threads(None, ops_threads=2)["ops_threads"] == 2 == threads.ops_threads()
    threads.apply_threads(None, ops_threads=1)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            threads.apply_threads(bad)
        with pytest.raises(ValueError, match="ops_threads"):
            threads.apply_threads(1, ops_threads=bad)


def test_threads_arg():
    import argparse

    assert threads.threads_arg("3") == 3
    for bad in ("0", "x", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            threads.threads_arg(bad)


@pytest.mark.parametrize("n, k", [(0, 2), (1, 2), (7, 2), (100, 3), (5, 8)])
def test_parallel_ranges_covers_the_range_once(n, k):
    seen = []
    threads.parallel_ranges(n, lambda lo, hi: seen.append((lo, hi)), threads=k)
    covered = sorted(i for lo, hi in seen for i in range(lo, hi))
    assert covered == list(range(n)) and len(seen) <= max(1, k)


def test_parallel_ranges_runs_inline_on_one_thread_and_reraises():
    calls = []
    threads.parallel_ranges(10, lambda lo, hi: calls.append((lo, hi)), threads=1)
    assert calls == [(0, 10)]

    def boom(lo, hi):
        if lo > 0:
            raise RuntimeError("part failed")

    with pytest.raises(RuntimeError, match="part failed"):
        threads.parallel_ranges(10, boom, threads=2)


def _ops(seed):
    """Every op that splits its work, on arrays large enough to be split, in both memory layouts."""
    rng = np.random.default_rng(seed)
    out = []
    for dt in (np.float32, np.float64):
        x0 = rng.standard_normal((32, 8, 18, 18)).astype(dt)
        for x in (x0, np.ascontiguousarray(x0.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)):
            W = rng.standard_normal((12, 8, 3, 3)).astype(dt)
            b = rng.standard_normal(12).astype(dt)
            y, cache = conv.conv2d_forward(x, W, b, 1, 1)
            dy = rng.standard_normal(y.shape).astype(dt)
            out += [y, conv.conv2d_backward_input(dy, W, cache), *conv.conv2d_backward_params(dy, cache)]
            out += [im2col(x, 3, 3, 2, 2, 1, 1), col2im(cache[0], 1, 1, 1, 1, 18, 18)]
            for fwd, bwd in ((pool.maxpool2d_forward, pool.maxpool2d_backward),
                             (pool.avgpool2d_forward, pool.avgpool2d_backward)):
                for k, s, p in ((2, 2, 0), (3, 2, 1)):
                    yp, pc = fwd(x, k, s, p)
                    out += [yp, bwd(rng.standard_normal(yp.shape).astype(dt), pc)]
            yr, cr = act.relu_forward(x)
            out += [yr, act.relu_backward(rng.standard_normal(x.shape).astype(dt), cr)]
            g, be = rng.standard_normal(8).astype(dt), rng.standard_normal(8).astype(dt)
            yb, cb, m, v = norm.batchnorm_forward(x, g, be, np.zeros(8, dt), np.ones(8, dt), train=True)
            out += [yb, m, v, *norm.batchnorm_backward(rng.standard_normal(x.shape).astype(dt), cb)]
    return out


def test_ops_give_the_same_bits_on_one_and_two_threads(restore_threads, monkeypatch):
    import ssaref.ops.im2col as i2c

    monkeypatch.setattr(i2c, "PARALLEL_MIN", 1024)   # split even these small arrays
    monkeypatch.setitem(conv._SAVE, "mode", "columns")  # the convolution keeps its columns: col2im of them below
    threads.apply_threads(1)                          # BLAS on one thread throughout (its own results depend
    one = _ops(5)                                     # on its thread count); ssaref's op threads 1, then 2
    monkeypatch.setattr(threads, "_OPS_THREADS", 2)
    assert threads.ops_threads() == 2
    two = _ops(5)
    assert len(one) == len(two)
    for a, b in zip(one, two):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_fused_batchnorm_backward_is_the_two_calls():
    rng = np.random.default_rng(2)
    for x in (rng.standard_normal((16, 4, 6, 6)), rng.standard_normal((16, 4, 6, 6)).transpose(1, 2, 3, 0).copy()
              .transpose(3, 0, 1, 2), rng.standard_normal((16, 5))):
        C = x.shape[1]
        for train in (True, False):
            _, cache, _, _ = norm.batchnorm_forward(x, rng.random(C) + 0.5, rng.standard_normal(C), np.zeros(C),
                                                    np.ones(C), train=train)
            dy = rng.standard_normal(x.shape)
            dx, dg, db = norm.batchnorm_backward(dy, cache)
            assert norm.batchnorm_backward_input(dy, cache).tobytes() == dx.tobytes()
            g2, b2 = norm.batchnorm_backward_params(dy, cache)
            assert g2.tobytes() == dg.tobytes() and b2.tobytes() == db.tobytes()
            assert norm.batchnorm_backward(dy, cache, need_dx=False)[0] is None
