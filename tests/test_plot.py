"""``python -m ssaref.plot`` on run files written by short synthetic trainings (``ssaref.train --dataset
synthetic``): grouping of runs that differ only in seed, the mean line and band, the panels, and the one-line
errors (exit 2) for a missing or foreign run file and an existing ``--out``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ssaref import plot as plot_mod
from ssaref import train as train_mod
from ssaref.runlog import read_run

COMMON = ["--dataset", "synthetic", "--train-limit", "256", "--test-limit", "64", "--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    specs = {
        "ssa0": ["--method", "ssa", "--seed", "0", "--val-split", "0.25", "--align-every", "4"],
        "ssa1": ["--method", "ssa", "--seed", "1", "--val-split", "0.25", "--align-every", "4"],
        "land": ["--method", "ssa", "--seed", "0", "--val-split", "0.25", "--align-every", "4",
                 "--orthogonality", "landing"],
        "bp": ["--method", "bp", "--seed", "0"],
    }
    out = {}
    for name, flags in specs.items():
        p = d / f"{name}.h5"
        assert train_mod.main(COMMON + flags + ["--out", str(p)]) == 0
        out[name] = p
    return out


def test_runs_differing_only_in_seed_form_one_group(runs):
    groups = plot_mod.group_runs(plot_mod.load_runs([runs[k] for k in ("ssa0", "land", "ssa1", "bp")]))
    assert [len(g.runs) for g in groups] == [2, 1, 1]
    assert sorted(groups[0].seeds) == [0, 1]
    assert groups[0].label.startswith("ssa") and "(2 seeds)" in groups[0].label
    assert "orthogonality=penalty" in groups[0].label and "orthogonality=landing" in groups[1].label
    assert groups[2].label.startswith("bp") and "orthogonality" not in groups[2].label
    # an option given explicitly at its default value is the same setting as leaving it out
    c, m, _ = read_run(runs["ssa1"])
    c2 = dict(c, rule_orthogonality="penalty", rule_align_last="true", rule_gamma="0.1", seed=7, out="o.h5")
    assert plot_mod.Run("x", c2, m).settings == plot_mod.Run("y", c, m).settings


def test_figure_panels_mean_line_and_band(runs):
    groups = plot_mod.group_runs(plot_mod.load_runs([runs[k] for k in ("ssa0", "ssa1", "land", "bp")]))
    fig, panels = plot_mod.make_figure(groups)
    titles = set(panels)
    for want in ("loss", "accuracy", "rank per SVD layer (svd_rank)", "eq. (4) angle with BP (align.grad_mean)",
                 "eq. (4) angle, SSA update vs BP (svd_angle)", "orthogonality error ||U^T U - I||_F (svd_ortho_U)",
                 "orthogonality error ||V^T V - I||_F (svd_ortho_V)"):
        assert want in titles, want
    acc = panels["accuracy"]
    lines = {ln.get_label(): ln for ln in acc.lines}
    g = groups[0]
    test_acc = np.mean([read_run(runs[k])[1]["test_acc"] for k in ("ssa0", "ssa1")], axis=0) * 100
    np.testing.assert_allclose(lines[f"{g.label}: test"].get_ydata(), test_acc)
    val = np.mean([read_run(runs[k])[1]["val_acc"] for k in ("ssa0", "ssa1")], axis=0) * 100
    np.testing.assert_allclose(lines[f"{g.label}: val"].get_ydata(), val)
    assert f"{groups[2].label}: val" not in lines                         # the BP run has no validation split
    assert len(acc.collections) >= 3                                      # bands: train/test/val of the 2 seeds
    rank = panels["rank per SVD layer (svd_rank)"]
    r = read_run(runs["land"])[1]["svd_rank"]
    lab = {ln.get_label(): ln for ln in rank.lines}
    np.testing.assert_array_equal(lab[f"{groups[1].label}: layer 1"].get_ydata(), r[:, 0])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_cli_writes_the_figure_and_refuses_an_existing_out(runs, tmp_path, capsys):
    out = tmp_path / "fig.png"
    args = [str(runs["ssa0"]), str(runs["ssa1"]), str(runs["bp"]), "--out", str(out)]
    assert plot_mod.main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = out.read_bytes()
    capsys.readouterr()
    assert plot_mod.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--overwrite" in err[0]
    assert out.read_bytes() == before
    assert plot_mod.main(args + ["--overwrite", "--title", "t"]) == 0


@pytest.mark.parametrize("what", ["missing", "text", "foreign-hdf5", "suffix"])
def test_cli_one_line_errors(what, runs, tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    out = tmp_path / "fig.png"
    if what == "text":
        bad.write_text("not a run\n")
    elif what == "foreign-hdf5":
        with h5py.File(bad, "w") as f:
            f["x"] = np.arange(3)
    elif what == "suffix":
        bad, out = runs["bp"], tmp_path / "fig.txt"
    assert plot_mod.main([str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_a_users_files_beside_out_survive(runs, tmp_path, capsys, suffix):
    """issue 24: the temporary figure has a unique name; a user's ``fig.png.tmp.png`` (the old fixed name) and
    every other file in the folder are left alone, and no temporary file stays behind."""
    out = tmp_path / f"fig{suffix}"
    mine = {tmp_path / f"fig{suffix}.tmp{suffix}": b"mine", tmp_path / f".fig{suffix}.tmp{suffix}": b"also mine"}
    for p, data in mine.items():
        p.write_bytes(data)
    assert plot_mod.main([str(runs["bp"]), "--out", str(out)]) == 0
    assert all(p.read_bytes() == data for p, data in mine.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name] + [p.name for p in mine])


def test_cli_requires_a_run(capsys):
    with pytest.raises(SystemExit) as exc:
        plot_mod.main(["--out", "x.png"])
    assert exc.value.code == 2


def test_a_run_of_ssaref_0_1_0_is_grouped_by_the_defaults_it_ran_with(runs):
    """A 0.1.0 file left unset options null: they mean 0.1.0's defaults (beta 1e-3 for SSA), not today's."""
    c, m, _ = read_run(runs["ssa0"])
    old = dict({k: (None if k.startswith("rule_") else v) for k, v in c.items()}, ssaref_version="0.1.0")
    new_style = dict(c, rule_beta=1e-3, rule_gamma=1e-2, rule_orthogonality="retract", rule_rank_reading="every",
                     rule_parity=False)
    assert plot_mod.Run("a", old, m).settings == plot_mod.Run("b", new_style, m).settings
    assert plot_mod.Run("a", old, m).settings != plot_mod.Run("c", c, m).settings
    assert plot_mod.Run("d", dict(c, data_on_device="off", threads=1), m).settings == plot_mod.Run("c", c, m).settings
