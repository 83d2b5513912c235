"""Tests of ``validation.conv_claims`` (the conv-net sweep of issue 21), ``validation.claims`` (the claims ledger)
and ``validation.table3_ablation --model lenet``: ``--quick`` smoke runs on synthetic data and on fabricated
CIFAR-10 tarballs (seconds), the learning-rate choice on validation accuracy only, resume, and a planted-number
test that flips every verdict of the ledger."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ssaref.rules import RULES
from validation import claims as cl
from validation import conv_claims as cc
from validation import table3_ablation

TINY = ["--", "--train-limit", "32", "--test-limit", "16"]
METHODS = "bp,fa,dfa,usf,brsf,ssa"


def _table(text, header_start, after=None):
    lines = text.splitlines()
    start = 0 if after is None else next(k for k, ln in enumerate(lines) if ln.startswith(after))
    i = next(k for k, ln in enumerate(lines) if k >= start and ln.startswith(header_start))
    rows = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv_claims")
    argv = ["--quick", "--dataset", "synthetic", "--out-dir", str(out), "--final-seeds", "0,1", "--convnet-seeds",
            "0,1", "--methods", METHODS, "--threads", "1"] + TINY
    assert cc.main(argv) == 0
    return out, argv


def test_quick_sweep_tables(sweep):
    out, _ = sweep
    text = (out / "results.md").read_text(encoding="utf-8")
    sel = _table(text, "| rule | val acc, lr 0.0001")
    by = {r[0]: r for r in sel}
    for k in METHODS.split(","):
        row = by[cc.LABELS[k]]
        assert all(re.fullmatch(r"\d+\.\d+", c) for c in row[1:4]), row
        assert row[4] in {"0.0001 (edge of the grid)", "0.0003", "0.001 (edge of the grid)"}
    assert "excluded by --methods" in by["KP"][1]
    for k in cc.NEW_BASELINES:   # rows say "not implemented" until the registry has the rule
        assert (k in RULES) or cc.NOT_IMPLEMENTED in by[cc.LABELS[k]][1]
    lenet = {r[0]: r for r in _table(text, "| rule | lr | seeds", after="## lenet")}
    for k in METHODS.split(","):
        r = lenet[cc.LABELS[k]]
        assert r[2] == "0,1" and re.fullmatch(r"\d+\.\d+ ± \d+\.\d+", r[3]), r    # mean ± std over 2 seeds
        assert int(r[5]) > 0 and int(r[6]) > 0                                   # params, FLOPs
    assert lenet["BP"][8].startswith("84.08 (Table 4")                             # 100 - 15.92, CIFAR-10
    assert lenet["KP"][3] == "not run (excluded by --methods)"
    conv = {r[0]: r for r in _table(text, "| rule | lr | seeds", after="## convnet")}
    assert set(conv) >= {cc.LABELS[k] for k in cc.CONVNET_RULES}
    assert conv["BP"][1] == lenet["BP"][1]                                         # LeNet's rate
    assert "eq. (4) angle" in text
    assert (out / "fig2_angles.png").stat().st_size > 0 and (out / "fig3_matrix.png").stat().st_size > 0


def test_resume_leaves_finished_runs_alone(sweep):
    out, argv = sweep
    files = sorted(out.rglob("*.h5"))
    before = {p: p.stat().st_mtime_ns for p in files}
    i = argv.index("--")
    assert cc.main(argv[:i] + ["--no-plot"] + argv[i:]) == 0
    assert {p: p.stat().st_mtime_ns for p in files} == before


def _r(seed, val, test):
    return cc.RunResult(seed, test, val, 1.0, 1.0, 1.0, {}, {}, Path("x"))


def test_rate_chosen_on_validation_accuracy_ties_to_the_smaller_rate():
    lo, mid, hi = cc.LRS
    # the best test accuracy is at `hi`, the best validation accuracy at `mid`: the choice follows validation
    by = {lo: [_r(0, 80, 80), _r(1, 80, 80)], mid: [_r(0, 90, 70), _r(1, 88, 70)], hi: [_r(0, 85, 99), _r(1, 85, 99)]}
    assert cc.pick_rate(by, 2) == mid
    tie = {lo: [_r(0, 80, 0), _r(1, 90, 0)], mid: [_r(0, 85, 0), _r(1, 85, 0)], hi: [_r(0, 50, 0), _r(1, 50, 0)]}
    assert cc.pick_rate(tie, 2) == lo
    assert cc.pick_rate({**by, hi: [_r(0, 99, 99)]}, 2) is None             # a seed still missing: no choice yet


def test_claims_ledger_from_the_quick_runs(sweep, tmp_path):
    out, _ = sweep
    ab = tmp_path / "ab"
    assert table3_ablation.main(["--quick", "--model", "lenet", "--seeds", "0,1", "--rows", "full,no-align,no-ortho",
                                 "--out-dir", str(ab), "--threads", "1"] + TINY) == 0
    t3 = (ab / "results.md").read_text(encoding="utf-8")
    rows = _table(t3, "| component removed |")
    assert len(rows) == 3 and rows[0][-2:] == ["92.70", "0.14"] and rows[0][-3] == "85.93 ± 0.85"  # mlp column
    ledger = tmp_path / "claims.md"
    assert cl.main(["--runs", str(out), "--dataset", "synthetic", "--final-epochs", "1", "--final-seeds", "0,1",
                    "--convnet-seeds", "0,1", "--select-epochs", "1", "--select-seeds", "0", "--ablation", str(ab),
                    "--ablation-epochs", "1", "--ablation-seeds", "0,1", "--out", str(ledger)]) == 0
    rows = _table(ledger.read_text(encoding="utf-8"), "| # | claim |")
    assert len(rows) == len(cl.CLAIMS) >= 10
    verdicts = {r[1]: r[5].strip("*") for r in rows}
    assert set(verdicts.values()) <= {cl.SUPPORTED, cl.NOT_SUPPORTED, cl.NOT_TESTABLE}
    # every claim whose runs exist is measured; SmallConv was not run: not testable
    assert verdicts["SSA far above DFA on conv nets (smallconv)"] == cl.NOT_TESTABLE
    for r in rows:
        if "smallconv" not in r[1]:
            assert r[5].strip("*") != cl.NOT_TESTABLE, r
            assert r[3] != "—"


# ------------------------------------------------------------------------------------------ planted numbers
def _paired(d, name_x="x", name_y="y"):
    """x - y = d per seed (seeds 0..n-1), y = 50."""
    return cl.Paired({s: 50.0 + v for s, v in enumerate(d)}, {s: 50.0 for s in range(len(d))}, name_x, name_y)


def _planted(support: bool) -> dict:
    """A measurement for every claim that supports it (``support``) or refutes it."""
    out = {}
    for c in cl.CLAIMS:
        if c.kind == "above":
            out[c.key] = _paired([c.threshold + 3.0, c.threshold + 3.2, c.threshold + 2.9] if support else
                                 [c.threshold + 3.0, c.threshold - 3.0, c.threshold + 0.5])
        elif c.kind == "below":
            out[c.key] = _paired([c.threshold - 1.0, c.threshold - 1.1, c.threshold - 0.9] if support else
                                 [c.threshold + 1.0, c.threshold + 1.1, c.threshold + 0.9])
        elif c.kind == "majority":
            good, bad = [1.0, 1.2, 0.9], [-1.0, -1.2, -0.9]
            out[c.key] = cl.Majority({"FA": _paired(good), "DFA": _paired(good), "uSF": _paired(good if support
                                                                                                   else bad),
                                      "brSF": _paired(bad)})
        else:
            out[c.key] = cl.Count(0 if support else 1, 15)
    return out


def test_planted_numbers_flip_every_verdict():
    yes = dict((c.key, v[2]) for c, v in cl.ledger(_planted(True)))
    no = dict((c.key, v[2]) for c, v in cl.ledger(_planted(False)))
    assert set(yes.values()) == {cl.SUPPORTED}, yes
    assert set(no.values()) == {cl.NOT_SUPPORTED}, no
    missing = dict((c.key, v) for c, v in cl.ledger({}))
    assert {v[2] for v in missing.values()} == {cl.NOT_TESTABLE}
    assert all(v[3] for v in missing.values())                                   # each says why


def test_verdict_details():
    above = next(c for c in cl.CLAIMS if c.key == "dfa-gap-lenet")               # threshold 5 points
    # mean 6 > 5 but the interval reaches below 5: not supported
    assert cl.judge(above, _paired([6.0, 9.0, 3.0]))[2] == cl.NOT_SUPPORTED
    assert cl.judge(above, _paired([6.0, 6.1, 5.9]))[2] == cl.SUPPORTED
    assert cl.judge(above, _paired([6.0]))[2] == cl.NOT_TESTABLE                 # one seed: no interval
    below = next(c for c in cl.CLAIMS if c.key == "bp-gap-lenet")                # BP - SSA below 1.4 points
    assert cl.judge(below, _paired([0.5, 2.5, 0.2]))[2] == cl.NOT_SUPPORTED      # mean 1.07, interval past 1.4
    assert cl.judge(below, _paired([1.0, 1.1, 0.9]))[2] == cl.SUPPORTED
    # seeds are paired: only the seeds both sides have count
    p = cl.Paired({0: 60.0, 1: 61.0, 2: 70.0}, {0: 50.0, 1: 51.0, 3: 0.0})
    seeds, m, *_ = cl.paired_stats(p)
    assert seeds == [0, 1] and m == pytest.approx(10.0)
    # the 95 % t interval: n = 3, t(0.975, 2) = 4.303
    _, m, sd, lo, hi, *_ = cl.paired_stats(_paired([1.0, 2.0, 3.0]))
    assert (m, sd) == (pytest.approx(2.0), pytest.approx(1.0))
    assert lo == pytest.approx(2.0 - 4.3027 / 3 ** 0.5, abs=1e-3) and hi == pytest.approx(2.0 + 4.3027 / 3 ** 0.5,
                                                                                          abs=1e-3)
    maj = next(c for c in cl.CLAIMS if c.kind == "majority")
    half = cl.Majority({"a": _paired([1.0, 1.1, 0.9]), "b": _paired([1.0, 1.1, 0.9]), "c": _paired([-1.0, -1.1, -0.9]),
                        "d": _paired([-1.0, -1.1, -0.9])})
    assert cl.judge(maj, half)[2] == cl.NOT_SUPPORTED                            # 2 of 4 is not "most"
    assert cl.judge(maj, cl.Majority({"a": _paired([1.0, 1.1, 0.9]), "b": cl.Missing("no runs")}))[2] == \
        cl.NOT_TESTABLE


# ------------------------------------------------------------------------------------------ CIFAR-10, arguments
def test_cifar10_end_to_end_on_fabricated_tarballs(tmp_path, monkeypatch):
    from test_validation import _make_cifar

    from ssaref.data import download as dl

    def refuse(url, dest):
        raise RuntimeError(f"network access attempted in a test: {url}")

    monkeypatch.setattr(dl, "_fetch", refuse)
    monkeypatch.delenv("SSAREF_DATA", raising=False)
    root = tmp_path / "data"
    _make_cifar(root / "cifar10", "cifar10", per_batch=20, seed=0)   # 100 train, 20 test
    out = tmp_path / "cifar"
    assert cc.main(["--quick", "--dataset", "cifar10", "--data-dir", str(root), "--backend", "numpy", "--out-dir",
                    str(out), "--methods", "bp,dfa,ssa", "--threads", "1", "--", "--train-limit", "100",
                    "--test-limit", "8", "--no-download", "--width-mult", "0.0625"]) == 0
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "## lenet" in text and "## smallconv" in text and "## convnet" not in text
    lenet = {r[0]: r for r in _table(text, "| rule | lr | seeds", after="## lenet")}
    small = {r[0]: r for r in _table(text, "| rule | lr | seeds", after="## smallconv")}
    assert re.fullmatch(r"\d+\.\d+", lenet["DFA"][3]) and lenet["DFA"][8].startswith("62.41 (Table 4")
    assert re.fullmatch(r"\d+\.\d+", small["SSA (default)"][3])
    assert small["SSA (default)"][8].startswith("86.21 ± 0.10 (Table 1")
    assert small["DRTP"][3] == "not run (excluded by --methods)"
    assert len(list((out / "final").glob("cifar10-smallconv-*.h5"))) == 3


@pytest.mark.parametrize("argv, match", [
    (["--models", "lenet,nope"], "unknown model"),
    (["--methods", "bp,nope"], "unknown method"),
    (["--dataset", "nope"], "unknown data set"),
    (["--phase", "later"], "invalid choice"),
    (["--final-seeds", "3-1"], "--final-seeds: expected"),
])
def test_bad_arguments_exit_2_before_any_run(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cc.main(["--quick", "--out-dir", str(tmp_path / "o")] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err
    assert not (tmp_path / "o").exists()


def test_table3_model_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        table3_ablation.main(["--quick", "--model", "nope", "--out-dir", str(tmp_path / "t")])
    assert exc.value.code == 2 and "unknown model" in capsys.readouterr().err


def test_failed_run_is_reported_and_exits_1(tmp_path, capsys):
    out = tmp_path / "f"
    assert cc.main(["--quick", "--dataset", "synthetic", "--out-dir", str(out), "--methods", "bp", "--models",
                    "lenet", "--", "--train-limit", "5"]) == 1          # 5 examples leave no validation split
    err = capsys.readouterr().err
    assert "3 runs failed: select/lenet-bp-lr0.0001/0" in err
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "Failed runs: select/lenet-bp-lr0.0001 seed 0: error: --val-split" in text
    lenet = {r[0]: r for r in _table(text, "| rule | lr | seeds", after="## lenet")}
    assert lenet["BP"][3].startswith("not run: learning rate not chosen yet")


def test_phases_run_only_their_own_runs(tmp_path):
    out = tmp_path / "p"
    base = ["--quick", "--dataset", "synthetic", "--out-dir", str(out), "--methods", "bp", "--models", "lenet",
            "--no-plot"] + TINY
    assert cc.main(base[:-len(TINY)] + ["--phase", "final"] + TINY) == 0     # no rate chosen yet: nothing to run
    assert not list(out.rglob("*.h5"))
    assert "learning rate not chosen yet" in (out / "results.md").read_text(encoding="utf-8")
    assert cc.main(base[:-len(TINY)] + ["--phase", "select"] + TINY) == 0
    assert len(list((out / "select").glob("*.h5"))) == 3 and not (out / "final").exists()
    assert cc.main(base[:-len(TINY)] + ["--phase", "final", "--report-only"] + TINY) == 0   # trains nothing
    assert not (out / "final").exists()
    assert cc.main(base[:-len(TINY)] + ["--phase", "final"] + TINY) == 0
    assert len(list((out / "final").glob("*.h5"))) == 1


def test_the_ablation_row_says_when_its_full_ssa_is_not_todays_default(monkeypatch, tmp_path):
    """Table 3's "full SSA" is meant to be the default SSA; runs made before a default changed are named so."""
    from ssaref.rules import build_rule

    cfg = {"method": "ssa", "ssaref_version": "0.4.0",
           **{f"rule_{k}": v for k, v in build_rule("ssa").options.items()}}
    monkeypatch.setattr("ssaref.runlog.read_run", lambda path: (cfg, {}, None))
    assert cl._not_todays_defaults(tmp_path / "full-seed0.h5") == {}
    cfg.update(rule_beta=0.01, rule_orthogonality="retract-every")
    assert cl._not_todays_defaults(tmp_path / "full-seed0.h5") == {"beta": 0.01, "orthogonality": "retract-every"}
