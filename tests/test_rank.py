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
       count=st.sampled_from(["factors", "with_s"]),
       energy=st.floats(0.5, 1.0), reduce_to=st.floats(0.3, 1.0), min_frac=st.floats(0.05, 0.6),
       seed=st.integers(0, 10 ** 6))
def test_schedule_properties(m, n, E, kind, parity, count, energy, reduce_to, min_frac, seed):
    rng = np.random.default_rng(seed)
    sch = RankSchedule(kind=kind, energy=energy, reduce_to=reduce_to, min_rank_frac=min_frac, parity=parity,
                       parity_count=count)
    extra = 1 if count == "with_s" else 0
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
            assert new * (m + n + extra) < m * n or new == 1  # parameter parity (r(m+n) or r(m+n+1) < mn)
        in_energy_phase = kind == "energy" or (kind == "hybrid" and epoch > T1)
        if in_energy_phase and new < r and not (parity and new == parity_rank(m, n, count)):
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


@given(m=st.integers(1, 400), n=st.integers(1, 400), count=st.sampled_from(["factors", "with_s"]))
def test_parity_rank_is_the_largest_rank_below_the_dense_count(m, n, count):
    d = m + n + (1 if count == "with_s" else 0)     # numbers per rank: U and V columns (+ one s)
    r = parity_rank(m, n, count)
    assert r >= 1
    assert r * d < m * n or r == 1                   # parity holds (rank 1 is the least a layer can keep)
    assert (r + 1) * d >= m * n                      # and r is the largest such rank
    assert parity_rank(m, n, "with_s") <= parity_rank(m, n, "factors") == parity_rank(m, n)
    assert r == parity_rank(n, m, count)             # symmetric in the layer's shape


def test_parity_counts_differ_where_s_tips_the_balance():
    # 8 x 9: mn = 72; factors: 4 * 17 = 68 < 72 -> 4; with s: 4 * 18 = 72 is not < 72 -> 3
    assert parity_rank(8, 9) == 4 and parity_rank(8, 9, "with_s") == 3
    # the audit's smallest counterexample to the printed rule with s counted: m=2, n=3
    assert parity_rank(2, 3) == 1 and 1 * (2 + 3 + 1) >= 2 * 3
    # the paper's layers: 256 x 256 (127 both ways), classifier 10 x 256 (9 both ways), 576 x 288
    assert parity_rank(256, 256) == 127 and parity_rank(256, 256, "with_s") == 127
    assert parity_rank(10, 256) == 9 and parity_rank(576, 288) == 191 and parity_rank(576, 288, "with_s") == 191
    with pytest.raises(ValueError, match="'sum'"):
        parity_rank(4, 4, "sum")
    with pytest.raises(ValueError, match="m=0"):
        parity_rank(0, 4)


@pytest.mark.parametrize("bad", [dict(kind="x"), dict(energy=0.0), dict(reduce_to=1.5), dict(hoyer_every=0),
                                 dict(parity_count="both")])
def test_schedule_bad_options(bad):
    with pytest.raises(ValueError):
        RankSchedule(**bad)


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_truncation_moves_model_optimizer_and_targets_together(opt_name, rng):
    model = build_model("mlp", (1, 5, 5), 3, xp=np, dtype=np.float64, seed=0, hidden=(12,))
    rule = build_rule("ssa", align_target="weight", rank_schedule="epoch", reduce_to=0.5, reduce_frac=1.0,
                      orthogonality="retract", parity=False)   # retracted at the epoch end, then cut
    model = rule.setup(model, np.random.default_rng(1))
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
    model = rule.setup(model, np.random.default_rng(1))
    opt = build_optimizer("adam", model.named_params(), 1e-3)
    shapes = {k: tuple(v.shape) for k, v in model.named_params()}
    shapes.update({"1.U": (10, 4), "1.s": (4,), "1.V": (16, 4)})
    rule.adapt_to_checkpoint(model, opt, shapes)
    assert {k: tuple(v.shape) for k, v in model.named_params()} == shapes
    assert set(opt.state_dict()) == set(opt.state_dict_keys())
    with pytest.raises(ValueError, match="exceeds"):
        rule.adapt_to_checkpoint(model, opt, {**shapes, "1.s": (9,)})


def _svd_mlp(method, hidden=(9,), K=8, **opts):
    """8 classes on a (1, 4, 4) input: layers 1 (9 x 16) and 3, the classifier (8 x 9)."""
    model = build_model("mlp", (1, 4, 4), K, xp=np, dtype=np.float64, seed=0, hidden=hidden)
    rule = build_rule(method, **opts)
    model = rule.setup(model, np.random.default_rng(1))
    return model, rule


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
@pytest.mark.parametrize("count", ["factors", "with_s"])
@pytest.mark.parametrize("reduce_last", [False, True])
def test_parity_caps_every_layer_including_the_classifier(method, count, reduce_last, rng):
    model, rule = _svd_mlp(method, parity=True, parity_count=count, reduce_last=reduce_last,
                           rank_schedule="none")
    opt = build_optimizer("adam", model.named_params(), 1e-3)
    x, y = rng.standard_normal((6, 1, 4, 4)), rng.integers(0, 8, 6)
    opt.step(rule.step(model, x, y).updates)
    assert model.layers[3].rank == 8                            # full rank until the first epoch end
    m = rule.on_epoch_end(model, opt, 1, 3)
    extra = 1 if count == "with_s" else 0
    cls_cap = 4 if count == "factors" else 3                   # 8 x 9 classifier (see parity_rank above)
    assert model.layers[3].rank == cls_cap and m["svd_rank"][1] == cls_cap
    assert model.layers[1].rank == 5                            # 9 x 16: 144/25 and 144/26 both give 5
    for p, layer in rule.layers:
        (mm, nn), r = layer.dims, layer.rank
        assert r * (mm + nn + extra) < mm * nn                  # every layer, the classifier included
    opt.step(rule.step(model, x, y).updates)                    # training goes on at the capped shapes
    rule.on_epoch_end(model, opt, 2, 3)
    assert model.layers[3].rank == cls_cap                      # the cap is stable


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
def test_classifier_keeps_rank_without_parity_or_reduce_last(method):
    model, rule = _svd_mlp(method, rank_schedule="epoch", reduce_to=0.5, reduce_frac=1.0, parity=False)
    rule.on_epoch_end(model, None, 1, 1)
    assert model.layers[1].rank == 5 and model.layers[3].rank == 8      # schedule: 9 -> ceil(4.5); classifier kept
    model, rule = _svd_mlp(method, rank_schedule="epoch", reduce_to=0.5, reduce_frac=1.0, reduce_last=True,
                           parity=False)
    rule.on_epoch_end(model, None, 1, 1)
    assert model.layers[3].rank == 4                                     # reduce_last: ceil(0.5 * 8)


def test_parity_count_option_validation_and_help():
    with pytest.raises(ValueError, match="'both'"):
        build_rule("ssa", parity_count="both")
    assert build_rule("svd-bp").options["parity_count"] == "factors"
    from ssaref.train import build_parser
    h = " ".join(build_parser().format_help().split())
    assert "--parity-count" in h and "with_s" in h
    assert "classifier included" in h and "except for the parity cap" in h   # parity / reduce_last interplay


# ------------------------------------------------------------------------------------------ readings (D4.9)
# A constructed spectrum: s^2 = BASE (sum 100), r0 = 10 on a 10 x 30 layer, 8 epochs (T1 = ceil(2.4) = 3), floor 1;
# from epoch 6 on the spectrum's energy grows by 10% (s^2 * 1.1).  Worked out by hand:
#   epoch phase: ceil(10 (1 - 0.3 t / 3)) = 9, 8, 7; after epoch 3 the top 7 hold 98 (the reference of "relative").
#   every:    epoch 4: 95% of 98 = 93.1 -> 6 (50+20+10+8+5 = 93 < 93.1); 5: 95% of 96 = 91.2 -> 5; then 5 stays
#             (95% of 93 = 88.35 > 88), the 10% growth does not matter (scale-free);
#   once:     epoch 4 -> 6, kept;
#   relative: 93.1 of the reference 98: epochs 4, 5 -> 6; epoch 6: 1.1 * (50+20+10+8) = 96.8 >= 93.1 -> 4;
#   none:     7 after the epoch phase.
BASE = np.array([50.0, 20.0, 10.0, 8.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.5])
EXPECTED = {"every": [9, 8, 7, 6, 5, 5, 5, 5], "once": [9, 8, 7, 6, 6, 6, 6, 6],
            "relative": [9, 8, 7, 6, 6, 4, 4, 4], "none": [9, 8, 7, 7, 7, 7, 7, 7]}
# kind "energy" (threshold rule from epoch 1; reference of "relative": the initial spectrum, 100)
EXPECTED_ENERGY = {"every": [6, 5, 5, 5, 5, 5, 5, 5], "once": [6] * 8, "relative": [6, 6, 6, 6, 6, 4, 4, 4],
                   "none": [10] * 8}


def _spectrum(epoch, r):
    return np.sqrt(BASE * (1.1 if epoch >= 6 else 1.0))[:r]


@pytest.mark.parametrize("kind, expected", [("hybrid", EXPECTED), ("energy", EXPECTED_ENERGY)])
@pytest.mark.parametrize("reading", ["every", "once", "relative", "none"])
def test_rank_readings_on_a_constructed_spectrum(kind, expected, reading):
    sch = RankSchedule(kind=kind, reading=reading, min_rank_frac=0.1)
    r, ranks, ref = 10, [], 100.0
    for epoch in range(1, 9):
        s = _spectrum(epoch, r)
        r = sch.new_rank(s, 10, 10, 30, epoch, 8, ref_energy=ref)
        if sch.needs_reference(epoch, 8):
            ref = float((s[keep_indices(s, r)] ** 2).sum())
        ranks.append(r)
    assert ranks == expected[reading]


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
@pytest.mark.parametrize("reading", ["every", "once", "relative", "none"])
def test_rank_readings_through_the_rule(method, reading):
    """The same sequences through the rule's epoch end (reference taken by the rule itself after the cut of
    epoch T1, kept in its state as ``Eref/<layer>``), logged as ``svd_rank``."""
    model = build_model("mlp", (1, 5, 6), 4, xp=np, dtype=np.float64, seed=0, hidden=(10,))
    rule = build_rule(method, rank_reading=reading, min_rank_frac=0.1, parity=False)   # parity would cap at 7
    model = rule.setup(model, np.random.default_rng(1))
    layer = model.layers[1]
    assert layer.dims == (10, 30)
    ranks = []
    for epoch in range(1, 9):
        layer.params["s"][...] = _spectrum(epoch, layer.rank)
        m = rule.on_epoch_end(model, None, epoch, 8)
        ranks.append(int(m["svd_rank"][0]))
        assert model.layers[3].rank == 4                     # the classifier is not reduced
    assert ranks == EXPECTED[reading]
    assert ("Eref/1" in rule.state) == (reading == "relative")
    if reading == "relative":
        assert float(rule.state["Eref/1"][0]) == pytest.approx(98.0)


def test_relative_reading_needs_its_reference():
    with pytest.raises(ValueError, match="reference"):
        RankSchedule(reading="relative").new_rank(np.ones(5), 5, 5, 9, 9, 10)
    with pytest.raises(ValueError, match="rank_reading"):
        RankSchedule(reading="twice")
    with pytest.raises(ValueError, match="rank_reading"):
        build_rule("svd-bp", rank_reading="twice")


@pytest.mark.parametrize("method", ["ssa", "svd-bp"])
def test_parity_with_the_classifier_exempt(method, rng):
    """--parity-last false: parity caps the hidden layers but not the classifier (8 x 9, cap 4 / 3 with s)."""
    model, rule = _svd_mlp(method, parity=True, parity_last=False, rank_schedule="none")
    rule.on_epoch_end(model, None, 1, 3)
    assert model.layers[1].rank == 5 and model.layers[3].rank == 8
    # with reduce_last the classifier follows the schedule, ceil(0.5 * 8) = 4, capped at 3 unless exempt
    for parity_last, want in ((True, 3), (False, 4)):
        model, rule = _svd_mlp(method, parity=True, parity_count="with_s", parity_last=parity_last,
                               reduce_last=True, rank_schedule="epoch", reduce_to=0.5, reduce_frac=1.0)
        rule.on_epoch_end(model, None, 1, 1)
        assert model.layers[3].rank == want, parity_last
