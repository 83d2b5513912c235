"""Rank schedule (ssaref.rank) properties and the truncation of model, optimiser state and targets together."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssaref.linalg import retained_energy, retract
from ssaref.nn import build_model
from ssaref.optim import build_optimizer
from ssaref.rank import RankSchedule, keep_indices, parity_rank
from ssaref.rules import build_rule


@given(m=st.integers(2, 60), n=st.integers(2, 60), E=st.integers(1, 30),
       kind=st.sampled_from(["hybrid", "epoch", "energy", "none"]), parity=st.booleans(),
       energy=st.floats(0.5, 1.0), reduce_to=st.floats(0.3, 1.0), min_frac=st.floats(0.05, 0.6),
       seed=st.integers(0, 10 ** 6))
def test_schedule_properties(m, n, E, kind, parity, energy, reduce_to, min_frac, seed):
    rng = np.random.default_rng(seed)
    sch = RankSchedule(kind=kind, energy=energy, reduce_to=reduce_to, min_rank_frac=min_frac, parity=parity)
    r0 = min(m, n)
    s = np.sort(rng.uniform(0, 1, r0) ** rng.uniform(1, 6))[::-1] + 1e-3
    floor = sch.floor(r0, m, n)
    r = r0
    T1 = sch.phase1_epochs(E)
    for epoch in range(1, E + 1):
        s = s * rng.uniform(0.8, 1.2, len(s))                # training moves the spectrum
        new = sch.new_rank(s, r0, m, n, epoch, E)
        assert new <= r                                       # never increases
        assert new >= min(r, floor)                           # never below its floor
        if parity:
            assert new < m * n / (m + n) or new == 1          # parameter parity
        in_energy_phase = kind == "energy" or (kind == "hybrid" and epoch > T1)
        if in_energy_phase and new < r and not (parity and new == parity_rank(m, n)):
            assert retained_energy(s, keep_indices(s, new)) >= energy - 1e-9   # keeps >= threshold
        if kind in ("hybrid", "epoch") and epoch == T1 and not parity:
            assert new <= max(math.ceil(reduce_to * r0 - 1e-9), floor)         # reached reduce_to * r0
        s = s[keep_indices(s, new)]
        r = new


def test_schedule_paper_defaults_and_hoyer_epochs():
    sch = RankSchedule()
    assert (sch.reduce_to, sch.reduce_frac, sch.energy, sch.min_rank_frac, sch.hoyer_every) == \
        (0.7, 0.3, 0.95, 0.3, 10)
    assert sch.phase1_epochs(10) == 3 and sch.phase1_epochs(100) == 30 and sch.phase1_epochs(2) == 1
    s = np.ones(100)
    assert [sch.new_rank(s[:100], 100, 100, 200, e, 10) for e in (1, 2, 3)] == [90, 80, 70]
    assert [e for e in range(1, 101) if sch.hoyer_active(e, 100)] == [1, 11, 21]
    assert parity_rank(100, 100) == 49 and parity_rank(3, 6) == 1


def test_keep_indices_top_magnitude_in_order():
    np.testing.assert_array_equal(keep_indices(np.array([0.1, -3.0, 2.0, 0.5]), 2), [1, 2])


@pytest.mark.parametrize("bad", [dict(kind="x"), dict(energy=0.0), dict(reduce_to=1.5), dict(hoyer_every=0)])
def test_schedule_bad_options(bad):
    with pytest.raises(ValueError):
        RankSchedule(**bad)


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_truncation_moves_model_optimizer_and_targets_together(opt_name, rng):
    model = build_model("mlp", (1, 5, 5), 3, xp=np, dtype=np.float64, seed=0, hidden=(12,))
    rule = build_rule("ssa", align_target="weight", rank_schedule="epoch", reduce_to=0.5, reduce_frac=1.0)
    model = rule.prepare_model(model)
    rule.init_state(model, np.random.default_rng(1))
    kw = {"momentum": 0.9} if opt_name == "sgd" else {}
    opt = build_optimizer(opt_name, model.named_params(), 1e-2, **kw)
    x, y = rng.standard_normal((6, 1, 5, 5)), rng.integers(0, 3, 6)
    for _ in range(3):
        opt.step(rule.step(model, x, y).updates)
    layer = model.layers[1]
    s_before = layer.params["s"].copy()
    U_before, TU_before = layer.params["U"].copy(), rule.state["TU/1"].copy()
    st_before = opt.state_dict()
    metrics = rule.on_epoch_end(model, opt, 1, 1)
    keep = keep_indices(s_before, 6)
    assert layer.rank == 6 and metrics["svd_rank"][0] == 6
    np.testing.assert_allclose(layer.params["U"], retract(U_before)[:, keep], atol=1e-12)  # retract, then cut
    np.testing.assert_array_equal(rule.state["TU/1"], TU_before[:, keep])
    st = opt.state_dict()
    for name in (["m", "v"] if opt_name == "adam" else ["buf"]):
        np.testing.assert_array_equal(st[f"{name}/1.U"], st_before[f"{name}/1.U"][:, keep])
        np.testing.assert_array_equal(st[f"{name}/1.s"], st_before[f"{name}/1.s"][keep])
    assert opt.param("1.U") is layer.params["U"] and dict(model.named_params())["1.U"] is layer.params["U"]
    assert metrics["svd_params"][0] == 6 * (12 + 25 + 1) + 12 and metrics["svd_flops"][0] == 6 * (12 + 25 + 1)
    assert metrics["svd_energy_kept"][0] == pytest.approx(retained_energy(s_before, keep))
    # the output layer keeps its rank by default (reduce_last=False)
    assert model.layers[3].rank == 3
    opt.step(rule.step(model, x, y).updates)  # training continues at the new shapes


def test_adapt_to_checkpoint_truncates_fresh_model(rng):
    model = build_model("mlp", (1, 4, 4), 3, xp=np, dtype=np.float32, seed=0, hidden=(10,))
    rule = build_rule("svd-bp")
    model = rule.prepare_model(model)
    rule.init_state(model, np.random.default_rng(1))
    opt = build_optimizer("adam", model.named_params(), 1e-3)
    shapes = {k: tuple(v.shape) for k, v in model.named_params()}
    shapes.update({"1.U": (10, 4), "1.s": (4,), "1.V": (16, 4)})
    rule.adapt_to_checkpoint(model, opt, shapes)
    assert {k: tuple(v.shape) for k, v in model.named_params()} == shapes
    assert set(opt.state_dict()) == set(opt.state_dict_keys())
    with pytest.raises(ValueError, match="exceeds"):
        rule.adapt_to_checkpoint(model, opt, {**shapes, "1.s": (9,)})
