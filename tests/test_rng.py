"""ssaref.rng: the counter-based generator brSF draws with on the device (issue 13, point 2)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _strictxp as S
from ssaref import rng
from ssaref.nn import build_model
from ssaref.rules import build_rule
from ssaref.rules.feedback import draw_on

M64 = (1 << 64) - 1


def splitmix64_reference(key, n):
    """Steele et al.'s SplitMix64 written from the paper's pseudo-code, one Python integer at a time."""
    out, state = [], key
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        out.append(z ^ (z >> 31))
    return out


@settings(max_examples=40, deadline=None)
@given(key=st.integers(0, M64), n=st.integers(1, 50))
def test_bits_are_splitmix64(key, n):
    assert [int(v) for v in rng._bits(np, key, n)] == splitmix64_reference(key, n)


def test_uniform_moments_and_bins():
    u = rng.uniform(np, rng.stream_key(1, 2, 3), (400_000,))
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 3e-3 and abs(u.var() - 1 / 12) < 2e-3
    counts = np.bincount((u * 20).astype(int), minlength=20)
    chi2 = float(((counts - len(u) / 20) ** 2 / (len(u) / 20)).sum())
    assert chi2 < 45.3   # chi-square, 19 degrees of freedom, p = 0.999


def test_streams_of_neighbouring_words_are_unrelated():
    a = rng.uniform(np, rng.stream_key(7, 0, 0), (100_000,))
    b = rng.uniform(np, rng.stream_key(7, 0, 1), (100_000,))
    c = rng.uniform(np, rng.stream_key(7, 1, 0), (100_000,))
    for x, y in ((a, b), (a, c), (b, c)):
        assert abs(np.corrcoef(x, y)[0, 1]) < 0.015
    assert not np.array_equal(a, rng.uniform(np, rng.stream_key(8, 0, 0), (100_000,)))
    np.testing.assert_array_equal(a, rng.uniform(np, rng.stream_key(7, 0, 0), (100_000,)))   # a pure function


def test_normal_moments():
    z = rng.normal(np, rng.stream_key(3), (200_000,))
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.015 and abs((z ** 3).mean()) < 0.03
    assert abs(float(np.mean(np.abs(z) < 1.0)) - 0.6827) < 0.005


def test_stream_key_refuses_negative_words():
    with pytest.raises(ValueError, match="-1"):
        rng.stream_key(1, -1)


@pytest.mark.parametrize("dist", ["torch_default", "xavier_uniform", "kaiming_uniform", "gaussian", "unit_col"])
def test_device_draws_are_the_host_bits_with_no_copy(dist):
    """Through the strict CuPy stand-in: the same bits as on NumPy, no host->device copy, no host read."""
    key, shape = rng.stream_key(5, 9), (6, 40)
    want = draw_on(np, key, shape, dist, 40, 6, np.float32)
    S.reset()
    with S.no_sync():
        got = draw_on(S.xp, key, shape, dist, 40, 6, np.float32)
    assert S.COUNT.h2d == 0
    np.testing.assert_array_equal(got.get(), want)
    if dist in ("torch_default", "xavier_uniform", "kaiming_uniform"):
        b = {"torch_default": 1 / math.sqrt(40), "xavier_uniform": math.sqrt(6 / 46),
             "kaiming_uniform": math.sqrt(6 / 40)}[dist]
        assert np.abs(want).max() <= b and np.abs(want).max() > 0.9 * b
    if dist == "unit_col":
        np.testing.assert_allclose(np.linalg.norm(want.astype(np.float64), axis=0), 1.0, rtol=1e-6)


def _brsf_magnitudes(option, steps=2):
    model = build_model("mlp", (1, 4, 4), 3, dtype=np.float64, seed=0, hidden=(8, 6))
    rule = build_rule("brsf", **({} if option is None else {"brsf_rng": option}))
    model = rule.setup(model, np.random.default_rng(4))
    x, y = np.random.default_rng(0).standard_normal((5, 1, 4, 4)), np.arange(5) % 3
    out = []
    for _ in range(steps):
        out.append({k: np.asarray(v) for k, v in rule.magnitudes(model).items()})
        rule.step(model, x, y)
    return rule, model, out


def test_brsf_host_option_keeps_the_old_draws_and_device_is_the_default():
    rule, model, host = _brsf_magnitudes("host")
    assert build_rule("brsf").options["brsf_rng"] == "device"
    params = dict(model.named_params())
    seed = int(rule.state["brsf_seed"][0])
    from ssaref.rules.feedback import draw, fan_in_out, transport_keys
    for t in range(2):
        g = np.random.default_rng([seed, t])
        for key, _, _ in transport_keys(model):
            fi, fo = fan_in_out(params[key].shape)
            np.testing.assert_array_equal(host[t][key], np.abs(draw(g, params[key].shape, "torch_default", fi, fo)))
    _, _, dev = _brsf_magnitudes(None)
    for t in range(2):
        for k in dev[t]:
            assert dev[t][k].shape == host[t][k].shape and not np.array_equal(dev[t][k], host[t][k])
            assert 0.0 <= dev[t][k].min() and dev[t][k].max() <= 1 / math.sqrt(params[k].shape[1])
        assert all(not np.array_equal(dev[0][k], dev[1][k]) for k in dev[0])   # redrawn every step


def test_brsf_rng_option_is_checked():
    with pytest.raises(ValueError, match="brsf_rng"):
        build_rule("brsf", brsf_rng="gpu")
