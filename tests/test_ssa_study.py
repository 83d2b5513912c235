"""Smoke tests of ``validation.ssa_study`` and ``validation.table3_ablation`` (their ``--quick`` modes: synthetic
data, tiny runs, seconds), the study's selection on validation accuracy only, resume, and the argument errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from validation import ssa_study, table3_ablation


def _table(text, header_start):
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert ssa_study.main(["--quick", "--out-dir", str(out)]) == 0
    return out


def test_study_quick_runs_every_stage(study):
    text = (study / "results.md").read_text(encoding="utf-8")
    screen = _table(text, "| rank | orthogonality | rank_reading | beta | gamma | seeds")
    assert len(screen) == 12                                           # 3 orthogonality x 4 readings (quick)
    assert {r[1] for r in screen} == {"retract", "landing", "retract-every"}
    assert {r[2] for r in screen} == {"every", "once", "relative", "none"}
    assert all(re.fullmatch(r"\d+\.\d+", r[-1]) for r in screen)
    init = _table(text, "| rank | orthogonality | rank_reading | beta | gamma | svd_init")
    assert len(init) == 12 and {r[5] for r in init} == {"default", "kaiming_uniform_a5", "orthogonal"}
    # stage 2 is the best screened setting with the init options
    best = screen[0][1:5]
    assert all(r[1:5] == best for r in init)
    assert "Chosen settings" in text
    final = _table(text, "| setting | seeds | test acc (%)")
    labels = [r[0] for r in final]
    assert [lab.split(":")[0] for lab in labels[:3]] == ["SSA #1", "SSA #2", "SSA #3"]
    assert {"BP", "DFA", "SVD-BP", "FA", "uSF"} <= set(labels)
    for r in final:
        assert r[1] == "0,1" and re.fullmatch(r"\d+\.\d+ ± \d+\.\d+", r[2]), r       # mean ± std of 2 seeds
    assert (study / "accuracy_vs_params.png").stat().st_size > 0
    assert (study / "final_curves.png").stat().st_size > 0
    assert "test acc (%)" not in text.split("## Stage 3")[0]                         # no test column before


def test_study_resumes_and_leaves_finished_runs_alone(study):
    files = sorted((study / "screen").glob("*.h5"))
    before = {p: p.stat().st_mtime_ns for p in files}
    assert ssa_study.main(["--quick", "--out-dir", str(study), "--no-plot"]) == 0
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_a_file_made_with_other_settings_is_not_read_as_this_setting(study):
    """A name leaves out the options at their default, so after a default changes an old file can sit under a
    setting's name; the tables do not count it (``launch`` refuses to run over it)."""
    args = ssa_study.parse_args(["--quick", "--out-dir", str(study)])
    s = ssa_study.screen_settings(args)[0]
    assert ssa_study.results_of([s], args.screen_seeds, args.screen_epochs, study / "screen", args)[s.name]
    args.lrs = [0.5]   # the same name, another learning rate (not part of the name with one --lrs value)
    assert ssa_study.results_of([s], args.screen_seeds, args.screen_epochs, study / "screen", args)[s.name] == []


def test_selection_uses_validation_accuracy_only():
    a, b = ssa_study.ssa(beta=1e-2), ssa_study.ssa(gamma=1e-1)
    R = ssa_study.Result
    res = {a.name: [R(0, 80.0, 99.0, 1, 1, 1, 3, Path("x")), R(1, 81.0, 99.0, 1, 1, 1, 3, Path("x"))],
           b.name: [R(0, 85.0, 10.0, 1, 1, 1, 3, Path("x"))]}
    assert [s.name for s in ssa_study.rank_settings([a, b], res)] == [b.name, a.name]
    assert ssa_study.ssa(orthogonality="penalty", beta=1e-3).name == "ssa"  # defaults: same run files
    assert ssa_study.ssa(orthogonality="landing").flags() == ["--orthogonality", "landing"]


def test_study_on_lenet_with_the_constrained_grid(tmp_path):
    """The conv re-selection of issue 21: LeNet, the handlings of D4.16 (Riemannian Adam, the paper's penalty
    only), two readings, no stage 2, no baselines, and the engine's defaults as a paired reference."""
    out = tmp_path / "lenet"
    argv = ["--quick", "--model", "lenet", "--orthogonalities", "retract-every,retract+transport,penalty",
            "--readings", "none,relative", "--no-init", "--baselines", "none", "--compare-default", "--top", "1",
            "--out-dir", str(out), "--no-plot"]
    assert ssa_study.main(argv) == 0
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "synthetic, lenet, Adam" in text and "Stage 2" not in text
    screen = _table(text, "| rank | orthogonality | transport | rank_reading | beta | gamma | seeds")
    assert len(screen) == 6                                            # 3 handlings x 2 readings (quick)
    assert {(r[1], r[2]) for r in screen} == {("retract-every", "false"), ("retract", "true"), ("penalty", "false")}
    final = _table(text, "| setting | seeds | test acc (%)")
    labels = [r[0] for r in final]
    best = screen[0]
    reference = "SSA at the engine's defaults (reference)"
    if (best[1], best[3], best[4]) == ("penalty", "none", "0.001"):    # the defaults won: no second row
        assert labels == ["SSA #1: engine default"]
    else:
        assert labels[0].startswith("SSA #1:") and labels[1] == reference and len(labels) == 2
        paired = _table(text, "| setting | seeds | Δ val acc")
        assert len(paired) == 1 and paired[0][0] == labels[0]
        assert re.fullmatch(r"[+-]\d+\.\d+ ± \d+\.\d+", paired[0][2])
    runs = sorted(p.name for p in (out / "screen").glob("*.h5"))
    assert "ssa-o_retract-r_relative-tr_true-seed0.h5" in runs
    assert "ssa-o_retract-every-r_relative-seed0.h5" in runs


@pytest.mark.parametrize("argv, match", [
    (["--orthogonalities", "retract,nope"], "--orthogonalities: unknown 'nope'"),
    (["--readings", "none,none"], "--readings: repeated"),
    (["--baselines", "bp,xx"], "--baselines: unknown 'xx'"),
    (["--val-split", "0"], "val-split"),
    (["--lrs", "abc"], "lrs"),
    (["--screen-seeds", "1,1"], "repeated"),
    (["--dataset", "nope"], "unknown data set"),
])
def test_study_argument_errors(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ssa_study.main(["--quick", "--out-dir", str(tmp_path / "s")] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0]
    assert not (tmp_path / "s").exists()


def test_table3_quick(tmp_path):
    out = tmp_path / "t3"
    assert table3_ablation.main(["--quick", "--out-dir", str(out), "--val-split", "0.25",
                                 "--base", "--orthogonality landing --gamma 0.1"]) == 0
    text = (out / "results.md").read_text(encoding="utf-8")
    rows = _table(text, "| component removed |")
    assert [r[0].split(" (")[0] for r in rows] == [
        "full SSA", "no cross-entropy term", "no alignment term", "no orthogonality term",
        "no orthogonality term, retraction or landing", "no Hoyer term", "no rank reduction",
        "no tangent projection"]
    assert rows[0][-2:] == ["92.70", "0.14"] and rows[1][-2:] == ["27.05", "0.133"]
    assert rows[5][-2:] == ["—", "—"]
    assert "landing safeguard" in rows[3][0]
    assert all(re.fullmatch(r"\d+\.\d+", r[3]) for r in rows)
    assert int(rows[6][5]) > int(rows[0][5])          # no rank reduction: more parameters
    assert len(list(out.glob("*.h5"))) == 8


@pytest.mark.parametrize("argv, match", [
    (["--rows", "full,nope"], "unknown row"),
    (["--base", "--method bp"], "SSA flags only"),
    (["--val-split", "1"], "val-split"),
])
def test_table3_argument_errors(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        table3_ablation.main(["--quick", "--out-dir", str(tmp_path / "t")] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
