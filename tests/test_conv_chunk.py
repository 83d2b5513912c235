"""A convolution's transient column matrices made a band of output rows at a time (``ops.conv.set_conv_chunk``):
the forward's (save mode "input"), the weight gradient's rebuilt one and the input gradient's blocks.  With banding
forced (a bound below one row), the numbers are the unbanded ones to round-off, PyTorch's to 1e-10, and the
finite differences'; below the bound nothing changes, bit for bit; the temporary is smaller."""
import contextlib
import tracemalloc

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _gradcheck import FD_TOL, fd_error, torch_vjp
from _strategies import conv_geometries, finite_arrays
from ssaref.nn import build_model
from ssaref.ops import conv
from ssaref.run import build_run

ORACLE = dict(rtol=1e-10, atol=1e-10)
ONE_ROW = 1e-12  # MiB: below any row, so every band is one output row


@contextlib.contextmanager
def chunk(mib, mode=None):
    """Run with ``set_conv_chunk(mib)`` (and ``set_conv_save(mode)``), counting the banded calls."""
    old, old_mode = conv.set_conv_chunk(mib), conv.conv_save()
    if mode:
        conv.set_conv_save(mode)
    calls = []
    real = conv._bands
    conv._bands = lambda *args: calls.append(real(*args)) or calls[-1]
    try:
        yield calls
    finally:
        conv._bands = real
        conv.set_conv_chunk(old)
        conv.set_conv_save(old_mode)


def _op(x, W, b, R, g, mode, B=None):
    y, cache = conv.conv2d_forward(x, W, b, g.stride, g.padding, save=mode)
    dW, db = conv.conv2d_backward_params(R, cache)
    return y, conv.conv2d_backward_input(R, W if B is None else B, cache), dW, db


def _draw(g, data, bias=True):
    x, W = data.draw(finite_arrays(g.x_shape)), data.draw(finite_arrays(g.w_shape))
    b = data.draw(finite_arrays((g.C_out,))) if bias else None
    return x, W, b, data.draw(finite_arrays((g.N, g.C_out) + g.out_hw))


@pytest.mark.parametrize("mode", ["input", "columns"])
@given(g=conv_geometries(max_channels=4, max_size=9), bias=st.booleans(), rows=st.integers(1, 3),
       data=st.data())
def test_banded_conv_matches_unbanded_and_torch(mode, g, bias, rows, data):
    x, W, b, R = _draw(g, data, bias)
    with chunk(0):
        whole = _op(x, W, b, R, g, mode)
    # bands of ``rows`` output rows (the last one shorter where they do not divide Ho)
    mib = rows * g.C_in * g.kh * g.kw * g.out_hw[1] * g.N * 8 / 2**20
    with chunk(mib * (1 + 1e-9)) as calls:
        banded = _op(x, W, b, R, g, mode)
    if mode == "input" and g.out_hw[0] > rows:  # more than one band: the banded paths ran
        assert any(c is not None for c in calls)
    for got, want in zip(banded, whole):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(want).max())))
    y_t, (dx_t, dW_t, db_t) = torch_vjp(
        lambda x_, W_, b_: F.conv2d(x_, W_, b_, stride=g.stride, padding=g.padding), (x, W, b), R)
    for got, want in zip(banded, (y_t, dx_t, dW_t, db_t if bias else None)):
        if want is not None:
            np.testing.assert_allclose(got, want, **ORACLE)


@given(g=conv_geometries(), data=st.data())
def test_banded_conv_gradients_finite_differences(g, data):
    x, W, b, R = _draw(g, data)
    with chunk(ONE_ROW, "input"):
        _, dx, dW, db = _op(x, W, b, R, g, "input")

        def loss(x_=x, W_=W, b_=b):  # L = sum(y * R), y banded too
            return np.sum(conv.conv2d_forward(x_, W_, b_, g.stride, g.padding)[0] * R)

        assert fd_error(dx, lambda v: loss(x_=v), x) < FD_TOL
        assert fd_error(dW, lambda v: loss(W_=v), W) < FD_TOL
        assert fd_error(db, lambda v: loss(b_=v), b) < FD_TOL


@pytest.mark.parametrize("c_in", [3, conv.BY_OFFSET_MIN_CHANNELS])  # the unbanded rebuild: whole; by offset
@pytest.mark.parametrize("layout", ["nchw", "batch_innermost"])
def test_every_band_size_and_geometry(c_in, layout):
    """Strides, paddings wider than the kernel, rectangular kernels; bands of 1..Ho rows; a feedback matrix."""
    rng = np.random.default_rng(c_in)
    for kernel, stride, padding in [((3, 3), 1, 1), ((3, 2), (2, 1), (1, 2)), ((5, 5), 2, 4), ((1, 1), 1, 0),
                                    ((1, 3), (3, 1), (0, 1))]:
        x = rng.standard_normal((3, c_in, 9, 8))
        if layout == "batch_innermost":
            x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
        W, B, b = rng.standard_normal((5, c_in) + kernel), rng.standard_normal((5, c_in) + kernel), None
        y0, _ = conv.conv2d_forward(x, W, b, stride, padding)
        R = rng.standard_normal(y0.shape)
        g = type("G", (), {"stride": stride, "padding": padding})
        with chunk(0):
            whole = _op(x, W, b, R, g, "input", B)
        row = c_in * kernel[0] * kernel[1] * y0.shape[3] * 3 * 8 / 2**20
        for rows in range(1, y0.shape[2] + 1):
            with chunk(rows * row * (1 + 1e-9)):
                banded = _op(x, W, b, R, g, "input", B)
            for got, want in zip(banded[:3], whole[:3]):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_below_the_bound_nothing_changes():
    """The default bound leaves a small convolution on the unbanded path: bit for bit the chunk-0 numbers."""
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((4, 16, 8, 8)), rng.standard_normal((6, 16, 3, 3)), rng.standard_normal(6)
    R = rng.standard_normal((4, 6, 8, 8))
    g = type("G", (), {"stride": 1, "padding": 1})
    for mode in ("input", "columns"):
        with chunk(conv.DEFAULT_CHUNK_MIB) as calls:
            default = _op(x, W, b, R, g, mode)
        assert calls and all(c is None for c in calls)
        with chunk(0):
            whole = _op(x, W, b, R, g, mode)
        for got, want in zip(default, whole):
            np.testing.assert_array_equal(got, want)


def _peak(fn):
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = fn()
        return tracemalloc.get_traced_memory()[1] - before, out
    finally:
        tracemalloc.stop()


def test_the_transient_is_bounded():
    """Each op's peak above its inputs and outputs: about the column matrix (K x Ho Wo N) unbanded, about one
    band (a bound of 1 MiB) banded."""
    rng = np.random.default_rng(0)
    inner = lambda a: np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)  # as a layer's arrays
    x = inner(rng.standard_normal((16, 32, 16, 16)).astype(np.float32))  # column matrix 288 x 4096: 4.5 MiB
    W = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    R = inner(rng.standard_normal((16, 32, 16, 16)).astype(np.float32))
    col_bytes = 32 * 9 * 16 * 16 * 16 * 4
    out_bytes = R.nbytes
    peaks = {}
    for mib in (0, 1):
        with chunk(mib, "input"):
            pf, (y, cache) = _peak(lambda: conv.conv2d_forward(x, W, None, 1, 1))
            pw, _ = _peak(lambda: conv.conv2d_backward_params(R, cache))
            pi, _ = _peak(lambda: conv.conv2d_backward_input(R, W, cache))
        peaks[mib] = (pf - out_bytes, pw, pi - out_bytes)
    assert peaks[0][0] >= col_bytes and peaks[0][2] >= col_bytes // 3  # the whole matrix; a kernel row's block
    for p in peaks[1]:
        assert p < 1.3 * 2**20, peaks


@pytest.mark.parametrize("name,shape,opts", [("smallconv", (3, 32, 32), {"width_mult": 0.25}),
                                             ("resnet20", (3, 32, 32), {"width_mult": 0.25})])
@pytest.mark.parametrize("method", ["bp", "fa"])
def test_a_training_step_is_the_same_banded(name, shape, opts, method):
    def updates(mib):
        with chunk(mib, "input"):
            run = build_run(build_model(name, shape, 10, dtype=np.float64, seed=0, **opts), method,
                            np.random.default_rng(0), optimizer=None)
            rng = np.random.default_rng(1)
            return run.step(rng.standard_normal((4,) + shape), rng.integers(0, 10, 4)).updates

    a, b = updates(0), updates(ONE_ROW)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14 * max(1.0, float(np.abs(a[k]).max())),
                                   err_msg=k)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "8", True])
def test_bad_bounds_are_refused(bad):
    with pytest.raises(ValueError, match="conv chunk must be a number of MiB >= 0"):
        conv.set_conv_chunk(bad)
    assert conv.conv_chunk() is None  # the default, unchanged


def test_the_default_bound_is_per_backend():
    """None: ``DEFAULT_CHUNK_MIB`` on NumPy, whole on a device (docs/decisions.md D9)."""
    import _strictxp as S

    row = 2**20  # one MiB a row
    rows = int(conv.DEFAULT_CHUNK_MIB) + 1
    assert conv.conv_chunk() is None
    assert conv._bands(rows, row) == [(0, rows - 1), (rows - 1, rows)]
    assert conv._bands(rows - 1, row) is None
    assert conv._bands(rows, row, S.xp) is None
    with chunk(1):
        assert conv._bands(3, row, S.xp) == [(0, 1), (1, 2), (2, 3)]


def test_device_path_banded_matches_numpy():
    """The device branches (window-view im2col of a band, the transposed convolution's bands, the GEMMs into
    slices of the output) on the strict CuPy stand-in give the NumPy numbers."""
    import _strictxp as S

    S.install()
    rng = np.random.default_rng(3)
    for kernel, stride, padding in [((3, 3), 1, 1), ((3, 2), (2, 1), (1, 2)), ((5, 5), 2, 4), ((1, 1), 2, 0)]:
        x = rng.standard_normal((3, 4, 9, 8))
        W, b = rng.standard_normal((5, 4) + kernel), rng.standard_normal(5)
        g = type("G", (), {"stride": stride, "padding": padding})
        y0, _ = conv.conv2d_forward(x, W, b, stride, padding)
        R = rng.standard_normal(y0.shape)
        with chunk(0):
            want = _op(x, W, b, R, g, "input")
        for mode in ("input", "columns"):
            with chunk(ONE_ROW) as calls:
                got = _op(S.device(x), S.device(W), S.device(b), S.device(R), g, mode)
            assert any(c is not None for c in calls)
            for d, h in zip(got, want):
                np.testing.assert_allclose(S.xp.asnumpy(d), h, rtol=1e-12, atol=1e-12)


def test_the_validation_script_measures_a_table(tmp_path, capsys):
    from validation import conv_chunk as vc

    out = tmp_path / "t.md"
    assert vc.main(["--models", "resnet20", "--chunks", "0.01", "--rounds", "2", "--batch-size", "4",
                    "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| resnet20 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 1 + 4 + 1 and all(c[0].isdigit() for c in cells[1:]), cells   # 4 memory columns, a ratio
    for argv, needle in ((["--chunks", "0"], "--chunks"), (["--chunks", "-1"], "--chunks"),
                         (["--models", "mlp"], "--models")):
        with pytest.raises(SystemExit) as exc:
            vc.main(argv)
        assert exc.value.code == 2 and needle in capsys.readouterr().err
