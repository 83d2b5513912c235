"""What a convolution keeps for its weight gradient (``ops.conv.set_conv_save``, ``--conv-save``): the column
matrix, the input, or (recompute) the input of a factorised convolution only.  The gradients agree to round-off
(recompute: bit for bit with input); input mode holds less memory during a step, recompute less again for the
SVD rules."""
import tracemalloc

import numpy as np
import pytest

from ssaref.nn import build_model
from ssaref.ops import conv
from ssaref.run import build_run


@pytest.fixture(autouse=True)
def _restore_mode():
    old = conv.conv_save()
    yield
    conv.set_conv_save(old)


def _updates(name, shape, method, mode, opts, batch=4, rule_opts=None):
    conv.set_conv_save(mode)
    run = build_run(build_model(name, shape, 10, dtype=np.float64, seed=0, **opts), method,
                    np.random.default_rng(0), options=rule_opts, optimizer=None)
    rng = np.random.default_rng(1)
    return run.step(rng.standard_normal((batch,) + shape), rng.integers(0, 10, batch)).updates


@pytest.mark.parametrize("name,shape,opts", [("lenet", (1, 28, 28), {}),
                                             ("smallconv", (3, 32, 32), {"width_mult": 0.25}),
                                             ("resnet20", (3, 32, 32), {"width_mult": 0.25})])
@pytest.mark.parametrize("method", ["bp", "ssa", "fa", "dfa", "predsim", "auglocal"])
def test_both_modes_give_the_same_updates(name, shape, opts, method):
    a = _updates(name, shape, method, "columns", opts)
    b = _updates(name, shape, method, "input", opts)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14 * max(1.0, float(np.abs(a[k]).max())),
                                   err_msg=k)


@pytest.mark.parametrize("c_in", [4, conv.BY_OFFSET_MIN_CHANNELS])   # the whole rebuild; one offset at a time
def test_the_op_with_stride_and_padding(c_in, monkeypatch):
    calls = []
    real = conv._backward_params_by_offset
    monkeypatch.setattr(conv, "_backward_params_by_offset", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, c_in, 9, 8))
    W = rng.standard_normal((5, c_in, 3, 2))
    b = rng.standard_normal(5)
    y, cache_c = conv.conv2d_forward(x, W, b, stride=(2, 1), padding=(1, 2), save="columns")
    y2, cache_i = conv.conv2d_forward(x, W, b, stride=(2, 1), padding=(1, 2), save="input")
    assert np.array_equal(y, y2) and isinstance(cache_i[0], conv.SavedInput)
    assert cache_i[0].shape == cache_c[0].shape and np.array_equal(cache_i[0].columns(), cache_c[0])
    dy = rng.standard_normal(y.shape)
    dW_c, db_c = conv.conv2d_backward_params(dy, cache_c)
    dW_i, db_i = conv.conv2d_backward_params(dy, cache_i)
    np.testing.assert_allclose(dW_i, dW_c, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(db_i, db_c)
    assert len(calls) == (c_in >= conv.BY_OFFSET_MIN_CHANNELS)
    np.testing.assert_array_equal(conv.conv2d_backward_input(dy, W, cache_i), conv.conv2d_backward_input(dy, W,
                                                                                                          cache_c))
    # auto: input on NumPy
    assert isinstance(conv.conv2d_forward(x, W, b, save="auto")[1][0], conv.SavedInput)
    with pytest.raises(ValueError, match="auto, columns, input"):
        conv.set_conv_save("both")


_NETS = {"lenet": ((1, 28, 28), {}), "smallconv": ((3, 32, 32), {"width_mult": 0.25}),
         "resnet20": ((3, 32, 32), {"width_mult": 0.25})}


@pytest.mark.parametrize("name,method,rule_opts,chunk", [
    *[(n, m, {}, None) for n in _NETS for m in ("ssa", "svd-bp")],
    *[(n, "ssa", {"ssa_variant": "paper"}, None) for n in ("lenet", "smallconv")],  # dense_products (no residual
    *[(n, "ssa", {}, 0.001) for n in _NETS],                                          # blocks); banded columns
])
def test_recompute_gives_the_updates_of_input_mode_bit_for_bit(name, method, rule_opts, chunk):
    """Save mode "recompute": a factorised convolution keeps only its input and the backward runs its height pass
    again, the same op on the same ``x`` and ``V``: every update equal to input mode's to the last bit, also
    through the paper variant's ``dense_products`` and with the column matrices made in bands."""
    shape, opts = _NETS[name]
    old = conv.set_conv_chunk(chunk) if chunk is not None else ()
    try:
        a = _updates(name, shape, method, "input", opts, rule_opts=rule_opts)
        b = _updates(name, shape, method, "recompute", opts, rule_opts=rule_opts)
    finally:
        if old != ():
            conv.set_conv_chunk(old)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def test_recompute_keeps_no_intermediate_and_makes_the_same_one_again():
    from ssaref.nn.svd_layers import SVDConv2d

    layer = SVDConv2d.from_dense(build_model("lenet", (1, 28, 28), 10, dtype=np.float64, seed=0).layers[0])
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    conv.set_conv_save("input")
    y, cache = layer.forward(x)
    conv.set_conv_save("recompute")
    y2, cache2 = layer.forward(x)
    assert np.array_equal(y, y2) and cache2[1] is None and cache2[2] is None and cache2[3] is x
    remade = layer._width_cache(cache2)
    assert np.array_equal(remade[0].x, cache[2]) and remade[1:] == cache[1][1:]
    assert np.array_equal(remade[0].columns(), cache[1][0].columns())
    dy = np.random.default_rng(1).standard_normal(y.shape)
    (dx, g), (dx2, g2) = layer.backward(dy, cache), layer.backward(dy, cache2)
    assert np.array_equal(dx, dx2) and all(np.array_equal(g[k], g2[k]) for k in g)
    assert all(np.array_equal(a, b) for a, b in zip(layer.dense_products(dy, cache), layer.dense_products(dy, cache2)))


def _step_peak(mode, method="bp"):
    """tracemalloc peak (bytes) of one training step of a small conv net above what it holds before."""
    conv.set_conv_save(mode)
    model = build_model("smallconv", (3, 32, 32), 10, dtype=np.float32, seed=0, width_mult=0.25)
    run = build_run(model, method, np.random.default_rng(0), optimizer="adam", lr=1e-4)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 32)
    run.train_step(x, y)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run.train_step(x, y)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_input_mode_holds_less_memory_in_a_step():
    cols, inp = _step_peak("columns"), _step_peak("input")
    assert inp < 0.8 * cols, (inp, cols)


def test_recompute_holds_less_memory_in_an_ssa_step():
    inp, rec = _step_peak("input", "ssa"), _step_peak("recompute", "ssa")
    assert rec < 0.9 * inp, (rec, inp)


def test_train_cli_takes_the_mode(capsys):
    from ssaref import train

    with pytest.raises(SystemExit) as exc:
        train.main(["--conv-save", "bad", "--epochs", "1"])
    assert exc.value.code == 2 and "conv-save" in capsys.readouterr().err
    assert train.parse_args(["--model", "lenet", "--conv-save", "input"]).conv_save == "input"
    assert train.parse_args(["--model", "lenet", "--conv-save", "recompute"]).conv_save == "recompute"
    with pytest.raises(SystemExit) as exc:   # no convolution to save for: refused like every flag without effect
        train.parse_args(["--conv-save", "input"])
    assert exc.value.code == 2 and "--conv-save has no effect with --model mlp" in capsys.readouterr().err
    assert train.parse_args([]).conv_save == conv.DEFAULT_SAVE == "auto"
