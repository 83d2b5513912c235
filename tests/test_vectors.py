"""Golden vectors (ssaref/vectors.py, docs/golden-vectors.md): export, schema, determinism, checker.

The candidates in ``tests/_torch_rules.py`` are independent PyTorch implementations written from the formulas;
they read only the golden files.  They must pass the checker, and a candidate with one wrong coefficient must
fail it on the fields that coefficient touches.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssaref import vectors as V

sys.path.insert(0, os.path.dirname(__file__))
import _torch_rules as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _names(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".h5"))


def _candidates(golden, out, wrong=None, select=lambda name: True):
    out.mkdir(exist_ok=True)
    for n in _names(golden):
        if select(n):
            T.write_candidate(str(golden / n), str(out / n), wrong=wrong)
    return out


def _subset(golden, out, select):
    out.mkdir(exist_ok=True)
    for n in _names(golden):
        if select(n):
            shutil.copy(golden / n, out / n)
    return out


def _run_check(gold, cand, capsys, *extra):
    rc = V.main(["check", str(gold), str(cand), *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _fail_rows(text):
    return {(m.group(1), m.group(2)) for m in re.finditer(r"^(\S+)\s+(\S+)\s+\S+\s+\S+\s+FAIL", text, re.M)}


# ------------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------------
def test_every_rule_on_both_models(golden):
    """Every registered rule (no list to keep: a new rule is covered by its registry line) has its default case on
    the MLP, and on the conv net unless it cannot be set up there (PEPITA is MLP-only, rules/pepita.py)."""
    from ssaref.rules import RULES

    names = set(_names(golden))
    assert len(RULES) >= 13
    for rule in RULES:
        assert f"{rule}__mlp__default.h5" in names, rule
        assert (f"{rule}__conv__default.h5" in names) == V.supports(rule, "conv"), rule
    assert "pepita__conv__default.h5" not in names and "kp__conv__default.h5" in names
    assert {"ssa__mlp__paper.h5", "ssa__conv__paper.h5"} <= names
    assert names == {V.case_name(r, m, v) + ".h5" for r, m, v, _ in V.cases()}


def test_every_registered_rule_has_a_torch_oracle():
    """The oracle's dispatch (``_torch_rules.ORACLES``, one line per rule) covers the registry: a new rule without its
    oracle fails here, not silently in a candidate check that skips it."""
    from ssaref.rules import RULES

    assert set(T.ORACLES) == set(RULES) and T.SUPPORTED == tuple(T.ORACLES)


def test_export_is_deterministic(golden, tmp_path):
    again = tmp_path / "again"
    V.export(str(again))
    assert _names(again) == _names(golden)
    for n in _names(golden):
        a_attrs, a_ds, a_g = V.read_file(golden / n)
        b_attrs, b_ds, b_g = V.read_file(again / n)
        assert a_attrs == b_attrs and a_g.keys() == b_g.keys()
        assert list(a_ds) == list(b_ds)
        for p in a_ds:
            assert a_ds[p].dtype == b_ds[p].dtype and a_ds[p].tobytes() == b_ds[p].tobytes(), (n, p)
        # no timestamps anywhere: the files themselves are byte-identical
        assert (golden / n).read_bytes() == (again / n).read_bytes(), n
    assert not [n for n in os.listdir(again) if not n.endswith(".h5")]  # no temporary files left


def test_files_validate_against_schema(golden):
    for n in _names(golden):
        assert V.validate_file(golden / n) == [], n
        with h5py.File(golden / n, "r") as f:
            assert f.attrs["schema"] == V.SCHEMA == "ssaref-golden/2"
            rule, model, variant = n[:-3].split("__")
            assert (f.attrs["rule"], f.attrs["model"], f.attrs["variant"]) == (rule, model, variant)
            assert isinstance(json.loads(f.attrs["coverage"]), list)
            assert f["input/y"].dtype == np.int64 and f["input/x"].dtype == np.float64
            assert f["input/x"].shape[0] == 6
            kinds = [f[f"layers/{k}"].attrs["kind"] for k in range(len(f["layers"]))]
            svd = rule in ("ssa", "svd-bp")
            lin, conv = ("svd_linear", "svd_conv2d") if svd else ("linear", "conv2d")
            if model == "mlp":
                assert kinds == [lin, "relu", lin, "relu", lin]
            elif model == "conv":
                assert kinds == [conv, "relu", "maxpool2d", "flatten", lin]
            elif model == "conv2":
                assert kinds == [conv, "relu", conv, "relu", "maxpool2d", "flatten", lin]
            else:
                assert kinds == [conv, "relu", "residual", "maxpool2d", "flatten", lin]
                assert [f[f"layers/2/main/{j}"].attrs["kind"] for j in range(3)] == [conv, "relu", conv]
                assert f["layers/2/shortcut/0"].attrs["kind"] == conv and len(f["layers/2/shortcut"]) == 1
                assert list(f["layers/2/shortcut/0"].attrs["kernel"]) == [1, 1]
            if model != "mlp":
                g = f["layers/0"].attrs
                assert list(g["kernel"]) == [3, 3] and list(g["padding"]) == [1, 1] and list(g["stride"]) == [1, 1]

            def same_shapes(name, obj):
                if isinstance(obj, h5py.Dataset) and name.split("/")[-1] in V.PARAM_NAMES:
                    assert f[f"update/{name}"].shape == obj.shape, (n, name)
            f["layers"].visititems(same_shapes)
            assert f["forward/logits"].shape == (6, 5)


# the rules of schema 1's time (a fixed, historical set: a rule added later needs no edit here)
SCHEMA_1_RULES = ("bp", "fa", "kp", "dfa", "usf", "brsf", "frsf", "drtp", "pepita", "ssa", "svd-bp")


def test_existing_cases_only_gain_schema_2_and_coverage(golden):
    """The 29 cases of schema 1 keep every dataset, group attribute and root attribute (but ``schema``), and gain
    only ``coverage`` (byte-identity of the data is pinned by the datasets' equality with a rerun of the same
    export, test_export_is_deterministic)."""
    v1 = {V.case_name(r, m, v) for r, m, v, _ in V.cases()
          if (v in ("default", "paper", "paper-sgd1") or (r, v) in (("svd-bp", "sgd1"), ("kp", "decay")))
          and m in ("mlp", "conv") and r in SCHEMA_1_RULES}
    assert len(v1) == 29
    for n in v1:
        attrs, _, _ = V.read_file(golden / f"{n}.h5")
        assert set(attrs) == {"schema", "rule", "model", "variant", "dtype", "seed", "ssaref_version", "options",
                              "coverage"}, n


def test_schema_1_files_are_still_read_and_checked(golden, tmp_path, capsys):
    """A schema-1 file (the same case without ``coverage``, schema ``ssaref-golden/1``) validates and is checked
    against candidates of either schema."""
    sel = lambda n: n.startswith(("dfa__mlp__default.", "ssa__conv__paper."))  # noqa: E731
    old = _subset(golden, tmp_path / "old", sel)
    for n in _names(old):
        with h5py.File(old / n, "a") as f:
            f.attrs["schema"] = "ssaref-golden/1"
            del f.attrs["coverage"]
        assert V.validate_file(old / n) == [], n
    cand = _candidates(golden, tmp_path / "cand", select=sel)          # schema-2 candidates
    rc, out, err = _run_check(old, cand, capsys)
    assert rc == 0 and "cases: 2 passed / 0 failed" in out, out + err
    for n in _names(cand):
        with h5py.File(cand / n, "a") as f:
            f.attrs["schema"] = "ssaref-golden/1"
    rc, out, err = _run_check(old, cand, capsys)  # schema-1 candidates
    assert rc == 0, out + err
    rc, out, err = _run_check(_subset(golden, tmp_path / "new", sel), cand, capsys)
    assert rc == 0, out + err
    # schema 1 has no residual layers or /steps
    bad = _subset(golden, tmp_path / "bad", lambda n: n.startswith(("bp__res__default.", "bp__mlp__momentum3.")))
    for n in _names(bad):
        with h5py.File(bad / n, "a") as f:
            f.attrs["schema"] = "ssaref-golden/1"
    assert any("need schema" in e for e in V.validate_file(bad / "bp__res__default.h5"))
    assert any("unexpected dataset /steps" in e for e in V.validate_file(bad / "bp__mlp__momentum3.h5"))


def test_feedback_arrays_present(golden):
    def names(n, k):
        with h5py.File(golden / n, "r") as f:
            return set(f[f"layers/{k}"])
    assert {"B"} <= names("fa__mlp__default.h5", 2) and "B" not in names("fa__mlp__default.h5", 0)
    assert {"B", "R"} <= names("brsf__conv__default.h5", 4)
    assert {"B", "R"} <= names("frsf__mlp__default.h5", 4)
    assert {"B", "B_U", "B_S"} <= names("ssa__mlp__default.h5", 0)
    assert {"B", "B_U", "B_S", "B_V"} <= names("ssa__conv__default.h5", 0)
    with h5py.File(golden / "dfa__conv__default.h5", "r") as f:
        assert f["layers/0/B"].shape == (64, 5) and f["layers/0"].attrs["inject"] == 3
    with h5py.File(golden / "pepita__mlp__default.h5", "r") as f:
        assert f["feedback/F"].shape == (12, 5)


def test_validator_catches_broken_files(golden, tmp_path):
    p = tmp_path / "broken.h5"
    shutil.copy(golden / "fa__conv__default.h5", p)
    with h5py.File(p, "a") as f:
        del f["update/0/W"]
        del f["layers/0"].attrs["stride"]
        f["layers/2/W"] = np.zeros(3)
        y = f["input/y"][()]
        del f["input/y"]
        f["input/y"] = y.astype(np.int32)
    errs = "\n".join(V.validate_file(p))
    assert "missing /update/0/W" in errs
    assert "lacks geometry attribute 'stride'" in errs
    assert "/layers/2 (maxpool2d) has parameters" in errs
    assert "/input/y has dtype int32" in errs


def test_brsf_records_the_draw_of_this_step(golden):
    with h5py.File(golden / "brsf__mlp__default.h5", "r") as f:
        for k in (2, 4):
            R, W, B = f[f"layers/{k}/R"][()], f[f"layers/{k}/W"][()], f[f"layers/{k}/B"][()]
            assert (R >= 0).all() and np.array_equal(B, R * np.sign(W))


# ------------------------------------------------------------------------------------------------------
# independent PyTorch candidates
# ------------------------------------------------------------------------------------------------------
def test_torch_candidates_pass(golden, tmp_path, capsys):
    cand = _candidates(golden, tmp_path / "cand")
    rc, out, err = _run_check(golden, cand, capsys)
    assert rc == 0, out + err
    assert "FAIL" not in out
    n = len(_names(golden))
    assert f"cases: {n} passed / 0 failed" in out
    # every required field of every case was compared
    for name in _names(golden):
        _, ds, _ = V.read_file(golden / name)
        for p in ds:
            if p.startswith("update/"):
                assert re.search(rf"^{re.escape(name[:-3])}\s+{re.escape(p)}\s.*pass$", out, re.M), (name, p)


@pytest.mark.parametrize("wrong, prefix, failing, passing", [
    # eq. (8): beta (U - B_U) instead of 2 beta (U - B_U)
    ("ssa_align", "ssa__mlp__default", {"update/0/U", "update/0/s", "update/4/U"}, {"update/0/b", "update/0/V"}),
    # eq. (7): output error without the batch mean in DFA's projection (the output layer still uses e)
    ("dfa_scale", "dfa__mlp__default", {"update/0/W", "update/2/b", "signal/1"}, {"update/4/W", "forward/loss"}),
    # eq. (9): 2 gamma instead of 4 gamma, visible one SGD step away from the exact SVD
    ("ortho", "svd-bp__mlp__sgd1", {"update/0/U", "update/2/V"}, {"update/0/s", "update/0/b"}),
])
def test_wrong_coefficient_fails_naming_the_field(golden, tmp_path, capsys, wrong, prefix, failing, passing):
    sel = lambda n: n.startswith(prefix + ".")  # noqa: E731
    gold = _subset(golden, tmp_path / "gold", sel)
    cand = _candidates(golden, tmp_path / "cand", wrong=wrong, select=sel)
    rc, out, _ = _run_check(gold, cand, capsys)
    assert rc == 1
    fails = {f for c, f in _fail_rows(out) if c == prefix}
    assert failing <= fails, out
    assert not (passing & fails), out
    assert "cases: 0 passed / 1 failed" in out
    # and the same candidate without the mistake passes
    _candidates(golden, cand, select=sel)
    assert _run_check(gold, cand, capsys)[0] == 0


def test_ortho_coefficient_is_invisible_at_an_exact_svd(golden, tmp_path, capsys):
    # at a fresh full-rank SVD U^T U = I, so eq. (9)'s gradient vanishes: why the sgd1 variants exist
    sel = lambda n: n.startswith("svd-bp__mlp__default.")  # noqa: E731
    gold = _subset(golden, tmp_path / "gold", sel)
    cand = _candidates(golden, tmp_path / "cand", wrong="ortho", select=sel)
    assert _run_check(gold, cand, capsys)[0] == 0


# ------------------------------------------------------------------------------------------------------
# schema 2: warm-up, multi-step and residual cases
# ------------------------------------------------------------------------------------------------------
def _ds(golden, case):
    return V.read_file(golden / f"{case}.h5")


@pytest.mark.parametrize("warm, base, off", [("ssa__mlp__sgd1", "ssa__mlp__default", True),
                                             ("ssa__conv__sgd1", "ssa__conv__default", True),
                                             ("ssa__mlp__paper-sgd1", "ssa__mlp__paper", False),
                                             ("svd-bp__conv__sgd1", "svd-bp__conv__default", True)])
def test_warmup_is_one_sgd_step_of_the_cases_own_rule(golden, warm, base, off):
    """The ``*sgd1`` parameters are the exact SVD minus warmup_lr times the same rule's own first direction
    (its ``default``/``paper`` case), with no retraction after it.  The printed projection freezes the MLP's
    square U and its V at an exact SVD, so paper-sgd1 on the MLP is still on the manifold (why paper-coef
    exists)."""
    wa, wd, _ = _ds(golden, warm)
    ba, bd, _ = _ds(golden, base)
    opts = json.loads(wa["options"])
    assert opts["warmup_sgd_steps"] == 1 and opts["warmup_lr"] == V.WARMUP_LR
    assert opts["ssa_variant" if "ssa" in warm else "gamma"] == json.loads(ba["options"])[
        "ssa_variant" if "ssa" in warm else "gamma"]
    for p in bd:
        if p.startswith("layers/") and p.split("/")[-1] in V.PARAM_NAMES:
            upd = bd["update/" + p[len("layers/"):]]
            np.testing.assert_allclose(wd[p], bd[p] - V.WARMUP_LR * upd, rtol=0, atol=1e-15, err_msg=p)
    for X in (wd["layers/0/U"], wd["layers/0/V"]):
        assert bool(np.linalg.norm(X.T @ X - np.eye(X.shape[1])) > 1e-3) is off   # off the manifold: gamma shows


def test_paper_coef_starts_where_coef_does(golden):
    """paper-coef's warm-up is made by the default variant with the same coefficients (warmup_options)."""
    for m in ("mlp", "conv"):
        ca, cd, _ = _ds(golden, f"ssa__{m}__coef")
        pa, pd, _ = _ds(golden, f"ssa__{m}__paper-coef")
        po, co = json.loads(pa["options"]), json.loads(ca["options"])
        assert po["ssa_variant"] == "paper" and co["ssa_variant"] == "default"
        # the warm-up rule's options, every one resolved (its variant included): coef's, the warm-up steps aside
        assert po["warmup_options"] == {k: v for k, v in co.items()
                                        if k not in ("loss", "loss_reduction", "warmup_sgd_steps", "warmup_lr")}
        assert po["warmup_options"]["ssa_variant"] == "default"
        for p in cd:
            if p.startswith("layers/"):
                assert np.array_equal(cd[p], pd[p]), p
        assert co["alpha"] != 1.0 and co["hoyer_active"] and po["hoyer_active"]


@pytest.mark.parametrize("rule", ["bp", "dfa", "ssa"])
@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_multistep_cases_record_every_step(golden, rule, model):
    for variant, preset in (("momentum3", "momentum"), ("adam3", "adam")):
        attrs, ds, _ = _ds(golden, f"{rule}__{model}__{variant}")
        opt = json.loads(attrs["optimizer"])
        assert attrs["steps"] == 3 and opt == V.OPTIMIZER_PRESETS[preset]
        params = [p[len("layers/"):] for p in ds if p.startswith("layers/") and p.split("/")[-1] in V.PARAM_NAMES]
        assert params
        assert float(ds["steps/1/loss"]) == float(ds["forward/loss"])
        for t in (1, 2, 3):
            for p in params:
                assert ds[f"steps/{t}/params/{p}"].shape == ds[f"layers/{p}"].shape
                assert ds[f"steps/{t}/update/{p}"].shape == ds[f"layers/{p}"].shape
        for p in params:
            assert np.array_equal(ds[f"steps/1/update/{p}"], ds[f"update/{p}"])
            p0, d, p1 = ds[f"layers/{p}"], ds[f"update/{p}"], ds[f"steps/1/params/{p}"]
            if rule == "ssa" and p.split("/")[-1] in ("U", "V"):
                X = p1                                        # retracted after every step
                for t in (1, 2, 3):
                    X = ds[f"steps/{t}/params/{p}"]
                    np.testing.assert_allclose(X.T @ X, np.eye(X.shape[1]), atol=1e-12)
                continue
            if preset == "momentum":                         # buf = d at the first step
                np.testing.assert_allclose(p1, p0 - opt["lr"] * d, rtol=0, atol=1e-15)
            else:                                            # m_hat = d, v_hat = d^2
                np.testing.assert_allclose(p1, p0 - opt["lr"] * d / (np.abs(d) + opt["eps"]), rtol=0, atol=1e-15)
        assert float(ds["steps/3/loss"]) < float(ds["steps/1/loss"])


def test_residual_cases_describe_the_block(golden):
    for rule in ("bp", "dfa", "drtp"):
        attrs, ds, ga = _ds(golden, f"{rule}__res__default")
        assert ga["layers/2"]["kind"] == "residual"
        assert {"update/2/main/0/W", "update/2/main/2/b", "update/2/shortcut/0/W"} <= set(ds)
        if rule != "bp":
            assert ga["layers/0"]["inject"] == 1 and ga["layers/2"]["inject"] == 4
            assert ds["layers/2/B"].shape == (96, 5) and ds["layers/0/B"].shape == (256, 5)
            assert json.loads(attrs["options"])[f"{rule}_residual"] == "block"
    names = set(_names(golden))
    # what the exporter cannot describe (docs/golden-vectors.md): SSA's, FA-type rules' and dfa_residual=layer
    # feedback inside a block
    assert not {f"{r}__res__default.h5" for r in ("ssa", "fa", "kp", "usf", "brsf", "frsf", "svd-bp",
                                                    "pepita")} & names
    assert not V.supports("dfa", "res", {"dfa_residual": "layer"})
    assert not V.supports("drtp", "res", {"drtp_residual": "layer"})
    assert not V.supports("ssa", "res")


def test_report_is_a_per_case_per_field_table(golden, tmp_path, capsys):
    sel = lambda n: n.startswith(("dfa__mlp__default.", "bp__mlp__adam3."))  # noqa: E731
    gold = _subset(golden, tmp_path / "gold", sel)
    cand = _candidates(golden, tmp_path / "cand", select=sel)
    with h5py.File(cand / "bp__mlp__adam3.h5", "a") as f:
        f["steps/2/params/0/b"][0] += 1e-3
    rep = tmp_path / "conformance.md"
    rc, out, _ = _run_check(gold, cand, capsys, "--report", str(rep))
    assert rc == 1
    text = rep.read_text()
    assert text.startswith("# Golden-vector conformance report")
    assert "| `dfa__mlp__default` | " in text and "| `bp__mlp__adam3` | " in text
    table_rows = [l for l in out.splitlines()[1:-1]]
    md_rows = re.findall(r"^\| `([^`]+)` \| (\S+) \| (\S+) \| (pass|FAIL[^|]*) \|$", text, re.M)
    assert len(md_rows) == len(table_rows)          # every field of every case, once
    assert ("steps/2/params/0/b", "FAIL") in {(r[0], r[3].strip()) for r in md_rows}
    assert "**FAIL**" in text and "rtol = 1e-07, atol = 1e-10" in text
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".report-")]


# ------------------------------------------------------------------------------------------------------
# checker behaviour
# ------------------------------------------------------------------------------------------------------
def test_check_golden_against_itself(golden, capsys):
    rc, out, _ = _run_check(golden, golden, capsys)
    assert rc == 0 and "0 failed" in out
    assert out.splitlines()[0].split() == ["case", "field", "max", "abs", "err", "max", "rel", "err", "result"]


def test_missing_case_and_field_fail(golden, tmp_path, capsys):
    sel = lambda n: n.startswith(("bp__mlp__default.", "fa__mlp__default."))  # noqa: E731
    gold = _subset(golden, tmp_path / "gold", sel)
    cand = _candidates(golden, tmp_path / "cand", select=sel)
    os.remove(cand / "fa__mlp__default.h5")
    with h5py.File(cand / "bp__mlp__default.h5", "a") as f:
        del f["update/2/b"]
        del f["signal/3"]          # optional: not compared when absent
    rc, out, _ = _run_check(gold, cand, capsys)
    assert rc == 1
    assert re.search(r"^fa__mlp__default\s+\(case file\).*FAIL \(missing\)", out, re.M)
    assert re.search(r"^bp__mlp__default\s+update/2/b\s.*FAIL \(missing\)", out, re.M)
    assert ("bp__mlp__default", "signal/3") not in _fail_rows(out)
    assert "cases: 0 passed / 2 failed" in out


def test_shape_mismatch_and_nan_fail(golden, tmp_path, capsys):
    sel = lambda n: n.startswith("bp__mlp__")  # noqa: E731
    gold = _subset(golden, tmp_path / "gold", sel)
    cand = _subset(golden, tmp_path / "cand", sel)
    with h5py.File(cand / "bp__mlp__default.h5", "a") as f:
        w = f["update/0/W"][()]
        del f["update/0/W"]
        f["update/0/W"] = w.T
        f["update/2/b"][0] = np.nan
    rc, out, _ = _run_check(gold, cand, capsys)
    assert rc == 1
    assert re.search(r"update/0/W\s.*FAIL \(shape", out)
    assert ("bp__mlp__default", "update/2/b") in _fail_rows(out)


def test_tolerances_are_applied(golden, tmp_path, capsys):
    sel = lambda n: n.startswith("bp__mlp__")  # noqa: E731
    gold = _subset(golden, tmp_path / "gold", sel)
    cand = _subset(golden, tmp_path / "cand", sel)
    with h5py.File(cand / "bp__mlp__default.h5", "a") as f:
        f["update/0/W"][...] = f["update/0/W"][()] * (1 + 1e-6)
    assert _run_check(gold, cand, capsys)[0] == 1
    assert _run_check(gold, cand, capsys, "--rtol", "1e-5")[0] == 0


def _one_error_line(err):
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_checker_refuses_bad_inputs(golden, tmp_path, capsys):
    rc, out, err = _run_check(tmp_path / "nope", golden, capsys)
    assert rc == 2 and "does not exist" in _one_error_line(err)
    rc, out, err = _run_check(golden, tmp_path / "nope", capsys)
    assert rc == 2 and "candidate directory" in _one_error_line(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = _run_check(empty, golden, capsys)
    assert rc == 2 and "no .h5 files" in _one_error_line(err)

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.h5").write_text("not hdf5")
    rc, out, err = _run_check(junk, golden, capsys)
    assert rc == 2 and "not an HDF5 file" in _one_error_line(err)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with h5py.File(foreign / "bp__mlp__default.h5", "w") as f:
        f["data"] = np.zeros(3)
    rc, out, err = _run_check(foreign, golden, capsys)
    assert rc == 2 and "not a golden-vector file" in _one_error_line(err)

    old = _subset(golden, tmp_path / "old", lambda n: n.startswith("bp__mlp__"))
    with h5py.File(old / "bp__mlp__default.h5", "a") as f:
        f.attrs["schema"] = "ssaref-golden/0"
    rc, out, err = _run_check(old, golden, capsys)
    assert rc == 2 and "ssaref-golden/0" in _one_error_line(err)

    # a candidate of the wrong schema, or answering another case, is refused too
    gold = _subset(golden, tmp_path / "gold", lambda n: n.startswith("bp__mlp__"))
    cand = _subset(golden, tmp_path / "cand", lambda n: n.startswith("bp__mlp__"))
    with h5py.File(cand / "bp__mlp__default.h5", "a") as f:
        f.attrs["rule"] = "fa"
    rc, out, err = _run_check(gold, cand, capsys)
    assert rc == 2 and "rule='fa'" in _one_error_line(err)


def test_cli_export_then_check(tmp_path):
    out = tmp_path / "golden"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "ssaref.vectors", "export", "--out", str(out),
                        "--only", "bp__mlp__default", "ssa__conv__default"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _names(out) == ["bp__mlp__default.h5", "ssa__conv__default.h5"]
    r = subprocess.run([sys.executable, "-m", "ssaref.vectors", "check", str(out), str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cases: 2 passed / 0 failed" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ssaref.vectors", "export", "--out", str(out), "--only", "zz"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "unknown case" in r.stderr


# ------------------------------------------------------------------------------------------------------
# the worked example of docs/golden-vectors.md runs as written
# ------------------------------------------------------------------------------------------------------
def test_doc_worked_example_runs(golden, tmp_path, monkeypatch, capsys):
    doc = (ROOT / "docs" / "golden-vectors.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    example = [b for b in blocks if "torch" in b]
    assert example, "docs/golden-vectors.md has no PyTorch example"
    monkeypatch.chdir(tmp_path)
    os.symlink(golden, tmp_path / "golden")
    for code in example:
        exec(compile(code, "golden-vectors.md", "exec"), {"__name__": "__doc_example__"})
    assert (tmp_path / "mine" / "dfa__mlp__default.h5").exists()
    # the example's file is a valid candidate: its W updates pass, the biases it left out are reported missing
    gold = _subset(golden, tmp_path / "one", lambda n: n.startswith("dfa__mlp__default."))
    rc, out, _ = _run_check(gold, tmp_path / "mine", capsys)
    assert rc == 1
    assert _fail_rows(out) == {("dfa__mlp__default", f"update/{k}/b") for k in (0, 2, 4)}, out
    for k in (0, 2, 4):
        assert re.search(rf"update/{k}/W\s.*pass$", out, re.M)
