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


def test_selection_uses_validation_accuracy_only():
    a, b = ssa_study.ssa(beta=1e-2), ssa_study.ssa(gamma=1e-1)
    R = ssa_study.Result
    res = {a.name: [R(0, 80.0, 99.0, 1, 1, 1, 3, Path("x")), R(1, 81.0, 99.0, 1, 1, 1, 3, Path("x"))],
           b.name: [R(0, 85.0, 10.0, 1, 1, 1, 3, Path("x"))]}
    assert [s.name for s in ssa_study.rank_settings([a, b], res)] == [b.name, a.name]
    assert ssa_study.ssa(orthogonality="retract-every", beta=1e-2).name == "ssa"  # defaults: same run files
    assert ssa_study.ssa(orthogonality="landing").flags() == ["--orthogonality", "landing"]


@pytest.mark.parametrize("argv, match", [
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
