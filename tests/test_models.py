"""Whole-model BP: torch oracle (float64) and directional finite differences for every named model."""
import copy

import numpy as np
import pytest

from ssaref.nn import MODELS, build_model
from ssaref.ops.losses import softmax_cross_entropy
from ssaref.rules import build_rule

from _torch_models import torch_bp_grads

# small but structurally complete versions of every model
CASES = {
    "mlp": ((1, 6, 6), {"hidden": (16, 12)}),
    "lenet": ((1, 12, 12), {"width_mult": 0.5}),
    "smallconv": ((1, 8, 8), {"width_mult": 1 / 16}),
    "convnet": ((1, 8, 8), {"width_mult": 0.25}),
    "vgg13": ((3, 32, 32), {"width_mult": 1 / 16}),
    "resnet20": ((3, 8, 8), {"width_mult": 0.25}),
    "resnet32": ((3, 8, 8), {"width_mult": 0.25}),
    "resnet56": ((3, 4, 4), {"width_mult": 0.25}),
    "resnet18": ((3, 8, 8), {"width_mult": 1 / 16}),
}


def test_every_model_has_a_case():
    assert set(CASES) == set(MODELS)


def _setup(name, seed=0, batch=4, k=5):
    shape, opts = CASES[name]
    model = build_model(name, shape, k, dtype=np.float64, seed=seed, **opts)
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal((batch,) + shape)
    y = rng.integers(0, k, size=batch)
    return model, x, y


@pytest.mark.parametrize("name", sorted(CASES))
def test_bp_matches_torch_autograd(name):
    model, x, y = _setup(name)
    ref_model = copy.deepcopy(model)  # BN running stats before the step, for the oracle
    res = build_rule("bp").step(model, x, y)
    t_loss, t_logits, t_grads = torch_bp_grads(ref_model, x, y)
    assert abs(res.loss - t_loss) <= 1e-12 * max(1.0, abs(t_loss))
    np.testing.assert_allclose(res.logits, t_logits, rtol=1e-10, atol=1e-12)
    assert set(res.updates) == set(t_grads)
    for key, g in t_grads.items():
        np.testing.assert_allclose(res.updates[key], g, rtol=1e-9, atol=1e-11, err_msg=key)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bp_directional_finite_difference(name):
    model, x, y = _setup(name, seed=1)
    grads = build_rule("bp").step(model, x, y).updates
    params = dict(model.named_params())
    rng = np.random.default_rng(7)
    d = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    norm = np.sqrt(sum(float((v * v).sum()) for v in d.values()))
    d = {k: v / norm for k, v in d.items()}  # unit direction: tiny per-entry steps keep clear of ReLU kinks
    eps = 1e-6

    def loss_at(t):
        saved = {k: v.copy() for k, v in params.items()}
        for k, v in params.items():
            v += t * d[k]
        logits, _ = model.forward(x, train=True)
        val = float(softmax_cross_entropy(logits, y)[0])
        for k, v in params.items():
            v[...] = saved[k]
        return val

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum(float((grads[k] * d[k]).sum()) for k in params)
    assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic)), (numeric, analytic)


def test_unknown_model_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="vgg13.*does not fit input shape"):
        build_model("vgg13", (3, 8, 8), 10)
    model = build_model("mlp", (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"Linear expects input \(B, 784\)"):
        model.forward(np.zeros((2, 1, 27, 27), np.float32))


def test_init_is_seeded_and_dtype_respected():
    a = build_model("lenet", (1, 28, 28), 10, seed=3)
    b = build_model("lenet", (1, 28, 28), 10, seed=3)
    c = build_model("lenet", (1, 28, 28), 10, seed=4)
    for (ka, va), (_, vb), (_, vc) in zip(a.named_params(), b.named_params(), c.named_params()):
        assert va.dtype == np.float32
        np.testing.assert_array_equal(va, vb)
        assert not np.array_equal(va, vc) or va.size == 0 or ka.endswith("beta") or ka.endswith("gamma")
