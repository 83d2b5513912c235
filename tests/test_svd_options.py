"""Options of the SVD rules added for issue 10 (docs/decisions.md D4.9-D4.13), besides orthogonality handling
(tests/test_landing.py) and the rank readings (tests/test_rank.py):

* ``--align-last {true,false}``: the classifier's alignment target B_N (SSA);
* ``--svd-init {default,kaiming_uniform_a5,orthogonal}`` and ``--bias-init {uniform,zero}`` (SSA, SVD-BP);
* every new option recorded in the run file, absent from ``resolved_options`` at its default (golden vectors
  unchanged) and present when set.
"""

import math

import numpy as np
import pytest
import torch

from ssaref import train as train_mod
from ssaref.nn import build_model
from ssaref.nn.models import dense_layers, reinitialise
from ssaref.rules import build_rule
from ssaref.options import first_defaults
from ssaref.runlog import read_run


def _model(seed=0, hidden=(12, 10), shape=(1, 6, 6), name="mlp", **kw):
    return build_model(name, shape, 10, xp=np, dtype=np.float64, seed=seed, hidden=hidden, **kw)


def _setup(method="ssa", **opts):
    rule = build_rule(method, **opts)
    model = rule.setup(_model(), np.random.default_rng(2))
    return model, rule


# ------------------------------------------------------------------------------------------ align_last
def test_align_last_false_removes_the_classifier_target_only():
    m_on, r_on = _setup(beta=0.3)
    m_off, r_off = _setup(beta=0.3, align_last=False)
    last = str(len(m_on.layers) - 1)
    assert r_on.state[f"mU/{last}"].sum() == 10                          # B_N's factors: a full target
    for k, v in r_on.state.items():
        if k.endswith(f"/{last}") and k.split("/")[0] in ("TU", "Ts", "TV", "mU", "mV"):
            assert np.all(r_off.state[k] == 0.0), k
        else:
            np.testing.assert_array_equal(v, r_off.state[k], err_msg=k)  # the same draws everywhere else
    # the classifier's update no longer carries 2 beta (U - B_U): it is the beta = 0 update
    x = np.random.default_rng(0).standard_normal((8, 1, 6, 6))
    y = np.arange(8) % 10
    u_on, u_off = r_on.step(m_on, x, y).updates, r_off.step(m_off, x, y).updates
    m0, r0 = _setup(beta=0.0)
    ref = r0.step(m0, x, y).updates
    for n in ("U", "s", "V"):
        np.testing.assert_allclose(u_off[f"{last}.{n}"], ref[f"{last}.{n}"], rtol=1e-12, atol=1e-14)
    assert not np.allclose(u_on[f"{last}.s"], ref[f"{last}.s"])
    for n in ("U", "s"):   # hidden layers keep their alignment
        np.testing.assert_array_equal(u_on[f"1.{n}"], u_off[f"1.{n}"])
    exp = r_off.feedback_export(m_off)
    assert "B_U" not in exp.layers.get(int(last), {}) and "B_U" in exp.layers[1]


# ------------------------------------------------------------------------------------------ initialisation
def test_default_init_is_torch_kaiming_uniform_a5_in_distribution():
    """Today's dense init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is exactly torch's default
    kaiming_uniform_(a=sqrt(5)) bound; the option redraws it from another generator."""
    gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    for fan_in in (36, 784, 3 * 5 * 5):
        assert gain * math.sqrt(3.0 / fan_in) == pytest.approx(1.0 / math.sqrt(fan_in), rel=1e-12)
    m = _model(hidden=(300,), shape=(1, 20, 20))
    W_default = m.layers[1].params["W"].copy()
    reinitialise(m, weight="kaiming_uniform_a5", rng=np.random.default_rng(5))
    W = m.layers[1].params["W"]
    bound = 1.0 / math.sqrt(400)
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound
    assert not np.allclose(W, W_default)
    assert abs(W.std() - bound / math.sqrt(3)) < 0.02 * bound            # uniform std


@pytest.mark.parametrize("name, kw", [("mlp", {"hidden": (12, 40)}), ("lenet", {"width_mult": 0.5})])
def test_orthogonal_init_is_torch_orthogonal(name, kw):
    """torch.nn.init.orthogonal_ semantics: the weight viewed as (out, fan_in) has orthonormal rows or columns
    (gain 1), and with torch's own algorithm fed the same Gaussian draw the results agree."""
    shape = (1, 28, 28) if name == "lenet" else (1, 6, 6)
    m = build_model(name, shape, 10, xp=np, dtype=np.float64, seed=0, **kw)
    reinitialise(m, weight="orthogonal", rng=np.random.default_rng(3))
    for layer in dense_layers(m):
        W = layer.params["W"].reshape(layer.params["W"].shape[0], -1)
        G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
        np.testing.assert_allclose(G, np.eye(G.shape[0]), atol=1e-12)
    # same algorithm as torch (QR of the draw, columns signed by diag(R), transposed when rows < cols)
    from ssaref.nn.models import _orthogonal

    for shape in ((5, 9), (9, 5), (4, 3, 2, 2)):
        g = np.random.default_rng(7)
        ours = _orthogonal(g, shape)
        flat = np.random.default_rng(7).standard_normal((shape[0], int(np.prod(shape[1:]))))
        t = torch.tensor(flat.T if shape[0] < flat.shape[1] else flat)
        q, r = torch.linalg.qr(t)
        q = q * torch.sign(torch.diag(r))
        if shape[0] < flat.shape[1]:
            q = q.T
        np.testing.assert_allclose(ours, q.numpy().reshape(shape), atol=1e-12)


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
def test_svd_init_and_bias_init_through_the_rule(method):
    """The factors are the SVD of the chosen dense init; the feedback draw is the default run's (the new
    weights come from a generator jumped off the rule's, which is left untouched)."""
    m_def, r_def = _setup(method)
    m_orth, r_orth = _setup(method, svd_init="orthogonal", bias_init="zero")
    m_k, r_k = _setup(method, svd_init="kaiming_uniform_a5")
    for k, v in r_def.state.items():
        if k.startswith("B/"):
            np.testing.assert_array_equal(v, r_orth.state[k])
            np.testing.assert_array_equal(v, r_k.state[k])
    for p, layer in r_orth.layers:
        np.testing.assert_allclose(layer.params["s"], 1.0, atol=1e-12)           # orthogonal: all s = 1
        assert np.all(layer.params["b"] == 0.0)
    for (p, a), (_, b) in zip(r_def.layers, r_k.layers):
        m, n = a.dims
        assert np.abs(b.matrix()).max() <= 1.0 / math.sqrt(n) + 1e-12
        assert not np.allclose(a.matrix(), b.matrix())                          # another draw
        np.testing.assert_array_equal(a.params["b"], b.params["b"])             # uniform bias: the model's own
    # same function as the re-initialised dense model
    dense = _model()
    bg = np.random.default_rng(2).bit_generator
    reinitialise(dense, weight="orthogonal", bias="zero", rng=np.random.Generator(bg.jumped()))
    x = np.random.default_rng(0).standard_normal((5, 1, 6, 6))
    np.testing.assert_allclose(m_orth.forward(x, train=False)[0], dense.forward(x, train=False)[0], atol=1e-12)


def test_init_option_validation():
    with pytest.raises(ValueError, match="svd_init"):
        build_rule("ssa", svd_init="xavier")
    with pytest.raises(ValueError, match="bias_init"):
        build_rule("svd-bp", bias_init="ones")
    with pytest.raises(ValueError, match="weight initialisation"):
        reinitialise(_model(), weight="xavier")


# ------------------------------------------------------------------------------------------ recording
# the options added after golden-vector schema 1, with what a golden file without them describes (ssaref 0.1.0)
LATER_OPTIONS = {"rank_reading": "every", "parity_last": True, "svd_init": "default", "bias_init": "uniform",
                 "orthogonality": "retract", "retract_every": 10, "landing_eps": 0.5, "align_last": True}


def test_later_options_derive_from_the_declared_history():
    """The 0.1.0 behaviour of the options added since is read off their declarations (``Option.added`` and
    ``before``), the same for SSA and SVD-BP."""
    from ssaref.rules import RULES

    assert first_defaults(RULES["ssa"].OPTIONS) == LATER_OPTIONS
    assert first_defaults(RULES["svd-bp"].OPTIONS) == {k: v for k, v in LATER_OPTIONS.items()
                                                       if k in RULES["svd-bp"].OPTIONS}


def test_new_options_absent_from_resolved_options_at_default_present_when_set():
    """Absent = ssaref 0.1.0's behaviour (``LATER_OPTIONS``): SVD-BP's defaults and SSA at 0.1.0's values leave them
    out; SSA's defaults since 0.2.0 (D4.15) differ, so they are all listed."""
    old = {"beta": 1e-3, "gamma": 1e-2, "orthogonality": "retract", "rank_reading": "every"}
    for method, opts in (("svd-bp", {}), ("ssa", old), ("ssa", {"ssa_variant": "paper"})):
        model, rule = _setup(method, **opts)
        assert not (set(LATER_OPTIONS) & set(rule.resolved_options(model))), (method, opts)
    model, rule = _setup("ssa")
    got = rule.resolved_options(model)
    assert set(LATER_OPTIONS) <= set(got)
    assert (got["orthogonality"], got["retraction"], got["rank_reading"]) == ("penalty", "none", "none")
    model, rule = _setup("ssa", orthogonality="landing", rank_reading="once", align_last=False,
                         svd_init="orthogonal", bias_init="zero", parity_last=False)
    got = rule.resolved_options(model)
    assert got["orthogonality"] == "landing" and got["projection"] == "relative" and got["retraction"] == "none"
    assert got["rank_reading"] == "once" and got["align_last"] is False and got["svd_init"] == "orthogonal"
    assert got["bias_init"] == "zero" and got["parity_last"] is False
    assert got["landing_eps"] == 0.5 and got["retract_every"] == 10          # the rest listed too, at defaults


def test_options_are_recorded_in_the_run_file(tmp_path, capsys):
    out = tmp_path / "r.h5"
    argv = ["--dataset", "synthetic", "--train-limit", "64", "--test-limit", "32", "--batch-size", "32",
            "--hidden", "12,10", "--epochs", "1", "--no-progress", "--method", "ssa", "--out", str(out),
            "--orthogonality", "landing", "--landing-eps", "0.3", "--rank-reading", "relative", "--align-last",
            "false", "--svd-init", "orthogonal", "--bias-init", "zero", "--parity-last", "false"]
    assert train_mod.main(argv) == 0, capsys.readouterr().err
    config, metrics, _ = read_run(out)
    want = {"orthogonality": "landing", "landing_eps": 0.3, "rank_reading": "relative", "align_last": "false",
            "svd_init": "orthogonal", "bias_init": "zero", "parity_last": "false"}
    for k, v in want.items():
        assert config[f"rule_{k}"] == v, k
    assert {"svd_drift_U", "svd_guard_U", "svd_ortho_U", "svd_rank"} <= set(metrics)
