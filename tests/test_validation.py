"""Smoke tests of the validation scripts (package ``validation``) on fabricated CIFAR tarballs, plus the shared driver.

Every script runs with ``--quick --seeds 0`` and still smaller limits passed after ``--``; the tests check the
exit code, that ``results.md`` has one row per configuration with a finite measured number next to the paper's
value, that ``paper − ssaref`` is the difference of the two, the figures, the seed mean ± std, resuming and the
"not run" / "failed" rows.  No network: downloads are refused and ``--no-download`` is passed.
"""
from __future__ import annotations

import ast
import importlib
import io
import math
import os
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssaref.data import download as dl
from ssaref.runlog import read_run
from validation import _sweep as sw

VALIDATION = Path(__file__).resolve().parents[1] / "validation"
SCRIPTS = ["table1_smallconv", "table2_deep", "table4_dfa_variants", "fig2_gradient_alignment",
           "fig3_matrix_alignment", "fig4_error_curves", "fmnist_mlp_methods"]

# tiny runs: 16 training images (one step), 8 test images, conv nets at 1/16 width, MLP 3072-16-16-10
TINY = ["--", "--train-limit", "16", "--test-limit", "8", "--width-mult", "0.0625", "--no-download"]
TINY_MLP = ["--", "--train-limit", "16", "--test-limit", "8", "--hidden", "16,16", "--no-download"]
MLP_SCRIPTS = {"fig2_gradient_alignment", "fig4_error_curves"}   # ssaref.train refuses --width-mult on mlp


def _failing(monkeypatch, method):
    """``ssaref.train.main`` as it is, but every run of ``method`` diverges (exit 3 with its error line): a run that
    fails after its arguments were accepted."""
    from ssaref import train as train_mod

    real = train_mod.main

    def main(argv):
        if argv[argv.index("--method") + 1] == method:
            print("error: loss is nan at epoch 1, step 1 (simulated)", file=sys.stderr)
            return 3
        return real(argv)
    monkeypatch.setattr(train_mod, "main", main)


# ------------------------------------------------------------------------------------------ fabricated data
def _cifar_pickle(data, labels: dict) -> bytes:
    batch = {b"batch_label": b"fabricated", b"data": data, b"filenames": [b"f%d.png" % i for i in range(len(data))]}
    batch.update({k.encode(): [int(v) for v in vals] for k, vals in labels.items()})
    return pickle.dumps(batch, protocol=2)


def _make_cifar_local(folder: Path, variant: str, per_batch: int, seed: int):
    """The official "python version" tarball layout, written from the format description."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        top, tarname, nc = "cifar-10-batches-py", "cifar-10-python.tar.gz", 10
        members, keys = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], ("labels",)
    else:
        top, tarname, nc = "cifar-100-python", "cifar-100-python.tar.gz", 100
        members, keys = ["train", "test"], ("fine_labels", "coarse_labels")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / tarname, "w:gz") as tf:
        for m in members:
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = {k: rng.integers(0, nc if k != "coarse_labels" else 20, size=per_batch) for k in keys}
            payload = _cifar_pickle(data, labels)
            info = tarfile.TarInfo(f"{top}/{m}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))


def _make_cifar(folder: Path, variant: str, per_batch: int, seed: int):
    try:  # the data tests' helper, when importable
        from test_data import make_cifar
    except ImportError:
        return _make_cifar_local(folder, variant, per_batch, seed)
    make_cifar(folder, variant, per_batch=per_batch, seed=seed)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    _make_cifar(root / "cifar10", "cifar10", per_batch=4, seed=0)      # 20 train, 4 test images
    _make_cifar(root / "cifar100", "cifar100", per_batch=20, seed=1)   # 20 train, 20 test images
    return root


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    def refuse(url, dest):
        raise RuntimeError(f"network access attempted in a test: {url}")
    monkeypatch.setattr(dl, "_fetch", refuse)
    monkeypatch.delenv("SSAREF_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


def _script(name):
    return importlib.import_module(f"validation.{name}")


def _run(name, data_dir, out, *flags, tiny=None):
    tiny = tiny if tiny is not None else TINY_MLP if name in MLP_SCRIPTS else TINY
    rc = _script(name).main(["--quick", "--data-dir", str(data_dir), "--out-dir", str(out), *flags, *tiny])
    assert rc == 0
    text = (out / "results.md").read_text(encoding="utf-8")
    return text


# ------------------------------------------------------------------------------------------ reading results.md
def _rows(text):
    """Rows of the main results table as dicts keyed by its header."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| data set |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    out = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        out.append(dict(zip(head, [c.strip() for c in ln.strip("|").split("|")])))
    return out


def _num(cell):
    m = re.fullmatch(r"(-?\d+\.\d+)(?: ± (\d+\.\d+))?", cell)
    return (float(m.group(1)), float(m.group(2)) if m.group(2) else None) if m else None


def _check_rows(text, configs, qty="accuracy"):
    """One row per configuration; run rows carry a finite number; paper − ssaref = paper − measured."""
    rows = _rows(text)
    assert len(rows) == len(configs)
    mcol, pcol = f"ssaref test {qty} (%)", f"paper test {qty} (%)"
    for cfg, row in zip(configs, rows):
        assert row["method"] == cfg.label and row["data set"] == cfg.dataset and row["model"] == cfg.model
        if cfg.skip is not None:
            assert row[mcol].startswith("not run"), row
            continue
        got = _num(row[mcol])
        assert got is not None and math.isfinite(got[0]) and 0.0 <= got[0] <= 100.0, row
        paper = _num(row[pcol])
        if paper is not None:
            assert abs(float(row["paper − ssaref"]) - (paper[0] - got[0])) <= 0.011, row
        else:
            assert row["paper − ssaref"] == "—"
    return rows


# ------------------------------------------------------------------------------------------ the scripts
def test_table1(data_dir, tmp_path):
    mod = _script("table1_smallconv")
    out = tmp_path / "t1"
    text = _run("table1_smallconv", data_dir, out, "--seeds", "0")
    args = sw.parse_args(sw.build_parser(mod.SCRIPT, "", dataset="cifar10,cifar100", epochs=1, seeds="0",
                                         methods=mod.METHODS), ["--quick"])
    rows = _check_rows(text, mod.configs(args))
    assert {r["data set"] for r in rows} == {"cifar10", "cifar100"}
    pep = [r for r in rows if r["method"] == "PEPITA"]
    assert len(pep) == 2 and all("MLP-only" in r["ssaref test accuracy (%)"] for r in pep)
    assert "87.57 ± 0.14" in text and "60.72 ± 0.15" in text
    drtp100 = next(r for r in rows if r["method"] == "DRTP" and r["data set"] == "cifar100")
    assert drtp100["paper test accuracy (%)"] == "NA"
    # the measured number is the run file's final test accuracy
    _, m, _ = read_run(out / "cifar10-smallconv-ssa-seed0.h5")
    ssa = next(r for r in rows if r["method"] == "SSA" and r["data set"] == "cifar10")
    assert _num(ssa["ssaref test accuracy (%)"])[0] == pytest.approx(100 * m["test_acc"][-1], abs=0.006)
    assert "--quick smoke test" in text


def test_table1_two_seeds_mean_std_and_no_retraining(data_dir, tmp_path):
    out = tmp_path / "t1s"
    _run("table1_smallconv", data_dir, out, "--seeds", "0", "--dataset", "cifar10", "--methods", "bp")
    f0 = out / "cifar10-smallconv-bp-seed0.h5"
    stamp = f0.stat().st_mtime_ns
    text = _run("table1_smallconv", data_dir, out, "--seeds", "0,1", "--dataset", "cifar10", "--methods", "bp")
    assert f0.stat().st_mtime_ns == stamp                 # complete run left alone
    accs = [100 * read_run(out / f"cifar10-smallconv-bp-seed{s}.h5")[1]["test_acc"][-1] for s in (0, 1)]
    rows = {r["method"]: r for r in _rows(text)}
    mean, std = _num(rows["BP"]["ssaref test accuracy (%)"])
    assert std is not None
    assert mean == pytest.approx(np.mean(accs), abs=0.006) and std == pytest.approx(np.std(accs, ddof=1), abs=0.006)
    assert rows["BP"]["seeds"] == "0,1"
    assert rows["SSA"]["ssaref test accuracy (%)"] == "not run (excluded by --methods)"
    assert not (out / "cifar10-smallconv-ssa-seed0.h5").exists()


def test_table2(data_dir, tmp_path):
    mod = _script("table2_deep")
    text = _run("table2_deep", data_dir, tmp_path / "t2", "--seeds", "0")
    args = sw.parse_args(sw.build_parser(mod.SCRIPT, "", dataset="cifar10", epochs=1, seeds="0",
                                         methods=mod.METHODS), ["--quick"])
    args.models = mod.MODELS
    rows = _check_rows(text, mod.configs(args))
    assert {r["model"] for r in rows} == {"vgg13", "resnet32"}
    assert sum(r["method"] == "DFA" for r in rows) == 2
    assert "93.75 ± 0.12" in text and "88.02 ± 0.18" in text


def test_table4(data_dir, tmp_path):
    mod = _script("table4_dfa_variants")
    text = _run("table4_dfa_variants", data_dir, tmp_path / "t4", "--seeds", "0")
    args = sw.parse_args(sw.build_parser(mod.SCRIPT, "", dataset="cifar10", epochs=1, seeds="0",
                                         methods=mod.METHODS), ["--quick"])
    args.models = mod.MODELS
    rows = _check_rows(text, mod.configs(args), qty="error")
    assert len(rows) == 18
    lenet_bp = next(r for r in rows if r["model"] == "lenet" and r["method"] == "BP")
    assert lenet_bp["paper test error (%)"] == "15.92"


def test_fig2(data_dir, tmp_path):
    out = tmp_path / "f2"
    text = _run("fig2_gradient_alignment", data_dir, out, "--seeds", "0", "--align-every", "1")
    mod = _script("fig2_gradient_alignment")
    args = sw.parse_args(sw.build_parser(mod.SCRIPT, "", dataset="cifar10", epochs=1, seeds="0",
                                         methods=mod.METHODS), ["--quick"])
    args.align_every = 1
    _check_rows(text, mod.configs(args))
    assert (out / "fig2_gradient_alignment.png").stat().st_size > 1000
    # the angle table: three layers, finite angles, matching the run files
    angle_rows = [ln for ln in text.splitlines() if re.match(r"\| \d \(`", ln)]
    assert len(angle_rows) == 3
    _, m, _ = read_run(out / "cifar10-mlp-dfa-seed0.h5")
    for j, ln in enumerate(angle_rows):
        cells = [c.strip() for c in ln.strip("|").split("|")]
        vals = [float(c) for c in cells[1:5]]
        assert all(0.0 <= v <= 180.0 for v in vals)
        assert vals[3] == pytest.approx(m["align.grad_mean"][-1][j], abs=0.051)   # DFA, last epoch
    assert cells[-1] in ("yes", "no")


def test_fig3(data_dir, tmp_path):
    out = tmp_path / "f3"
    text = _run("fig3_matrix_alignment", data_dir, out, "--seeds", "0")
    mod = _script("fig3_matrix_alignment")
    args = sw.parse_args(sw.build_parser(mod.SCRIPT, "", dataset="cifar10", epochs=1, seeds="0",
                                         methods=mod.METHODS), ["--quick"])
    args.model, args.align_every = "resnet32", 390
    _check_rows(text, mod.configs(args))
    assert (out / "fig3_matrix_alignment.png").stat().st_size > 1000
    assert "undefined (nan)" in text
    defined = [ln for ln in text.splitlines() if ln.endswith("| defined |")]
    assert {ln.split("|")[1].strip().split()[0] for ln in defined} == {"SSA", "DFA"}
    for ln in defined:
        v = float(ln.split("|")[3])
        assert 0.0 <= v <= 180.0


def test_fig4_and_resume(data_dir, tmp_path):
    out = tmp_path / "f4"
    text = _run("fig4_error_curves", data_dir, out, "--seeds", "0")
    mod = _script("fig4_error_curves")
    args = sw.parse_args(sw.build_parser(mod.SCRIPT, "", dataset="cifar10", epochs=1, seeds="0",
                                         methods=mod.METHODS), ["--quick"])
    _check_rows(text, mod.configs(args), qty="error")
    assert (out / "fig4_error_curves.png").stat().st_size > 1000
    # a second call with more epochs resumes the run files rather than starting over
    f = out / "cifar10-mlp-bp-seed0.h5"
    first = read_run(f)[1]["test_acc"].copy()
    text = _run("fig4_error_curves", data_dir, out, "--seeds", "0", "--epochs", "2", "--methods", "bp")
    m = read_run(f)[1]
    assert len(m["test_acc"]) == 2 and m["test_acc"][0] == first[0]
    bp = next(r for r in _rows(text) if r["method"] == "BP")
    assert bp["epochs"] == "2"


# ------------------------------------------------------------------------------------------ the driver
def test_mean_std_formatting():
    assert sw.fmt_mean_std([1.0, 2.0]) == "1.50 ± 0.71"
    assert sw.fmt_mean_std([87.5]) == "87.50"
    assert sw.fmt_mean_std([]) == "not run"
    assert sw.fmt_mean_std([float("nan"), 3.0, 5.0]) == "4.00 ± 1.41"
    m, s, n = sw.mean_std([3.0, 5.0, 10.0])
    assert (m, n) == (6.0, 3) and s == pytest.approx(np.std([3.0, 5.0, 10.0], ddof=1))


def test_seed_parsing_and_defaults():
    assert sw.parse_seeds("0,1,2") == [0, 1, 2]
    assert sw.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    for bad in ("", "a", "1,1", "3-1"):
        with pytest.raises(Exception, match="--seeds"):
            sw.parse_seeds(bad)
    mod = _script("table1_smallconv")
    p = sw.build_parser(mod.SCRIPT, "", dataset="cifar10,cifar100", epochs=100, seeds="0,1,2,3,4",
                        methods=mod.METHODS)
    full = sw.parse_args(p, [])
    assert (full.epochs, full.seeds, full.out_dir) == (100, [0, 1, 2, 3, 4], "runs/table1_smallconv")
    quick = sw.parse_args(p, ["--quick", "--", "--dtype", "float64"])
    assert (quick.epochs, quick.seeds, quick.out_dir) == (1, [0], "runs/table1_smallconv_quick")
    assert quick.extra == ["--dtype", "float64"]
    cfg = sw.Config("x", "SSA", "ssa", "smallconv", "cifar10", flags=["--align-every", "5"])
    argv = sw.train_flags(cfg, 3, quick)
    assert argv[-2:] == ["--dtype", "float64"]               # pass-through flags come last (they win)
    assert argv[argv.index("--width-mult") + 1] == "0.125" and argv[argv.index("--seed") + 1] == "3"
    assert argv[argv.index("--lr") + 1] == "0.0005" and argv[argv.index("--batch-size") + 1] == "128"
    with pytest.raises(SystemExit):
        sw.parse_args(p, ["--methods", "bp,nope"])


def test_failed_run_is_reported_not_invented(data_dir, tmp_path, monkeypatch):
    p = sw.build_parser("t", "", dataset="cifar10", epochs=1, seeds="0", methods=["bp"])
    args = sw.parse_args(p, ["--quick", "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "o"), *TINY_MLP])
    cfgs = [sw.Config("bad", "BP", "bp", "mlp", "cifar10"),
            sw.Config("skipped", "X", "bp", "mlp", "cifar10", skip="not run: no such rule")]
    _failing(monkeypatch, "bp")
    status = sw.run_sweep(cfgs, args, log=lambda *a: None)
    assert status[("bad", 0)].rc == 3 and "simulated" in status[("bad", 0)].error
    results = sw.summarise(cfgs, args, status)
    text, measured = sw.results_table(cfgs, results, args, paper={"bad": (1.0, 0.1), "skipped": 2.0})
    rows = _rows(text)
    assert rows[0]["ssaref test accuracy (%)"].startswith("failed: seed 0: error:")
    assert rows[0]["paper − ssaref"] == "—" and rows[1]["ssaref test accuracy (%)"] == "not run: no such rule"
    assert measured == {}
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path / "o"))


# ------------------------------------------------------------------------------------------ exit codes, argument checks
FM_TINY = ["--", "--train-limit", "32", "--test-limit", "16", "--hidden", "16,16"]


def _fm_rows(text):
    """Rows of fmnist_mlp_methods' method table: label -> [epochs, final acc, best acc, s/epoch]."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| method | epochs |"))
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_fmnist_mlp_methods_synthetic(tmp_path):
    mod = _script("fmnist_mlp_methods")
    out = tmp_path / "fm"
    rc = mod.main(["--dataset", "synthetic", "--epochs", "1", "--methods", "bp,dfa,ssa", "--align-every", "1",
                   "--out-dir", str(out), *FM_TINY])
    assert rc == 0
    text = (out / "results.md").read_text(encoding="utf-8")
    rows = _fm_rows(text)
    assert list(rows) == ["BP", "DFA", "SSA (default)"]
    for name, label in (("bp", "BP"), ("dfa", "DFA"), ("ssa", "SSA (default)")):
        _, m, ck = read_run(out / f"{name}.h5")
        assert int(ck["epoch"]) == 1
        ep, final, best, _ = rows[label]
        assert ep == "1"
        acc = float(final)
        assert math.isfinite(acc) and 0.0 <= acc <= 100.0
        assert acc == pytest.approx(100 * m["test_acc"][-1], abs=0.006) and float(best) >= acc - 0.006
    # alignment tables for DFA and SSA only, SVD table for SSA only
    assert "**DFA: eq. (4) angle" in text and "**SSA (default): eq. (4) angle" in text and "**BP: eq." not in text
    assert "**SSA (default): last epoch, per SVD layer**" in text and "**BP: last epoch" not in text
    assert "extra flags: `--train-limit 32" in text
    assert (out / "error_curves.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["fmnist_mlp_methods", "fig4_error_curves", "table1_smallconv"])
@pytest.mark.parametrize("bad", [["--dataset", "nope"], ["--epochs", "0"], ["--epochs", "-3"],
                                 ["--methods", "bp,nope"], ["--methods", ","], ["SEED", "-1"], ["SEED", "1,x"]])
def test_bad_arguments_exit_2_before_any_run(name, bad, tmp_path, capsys):
    if bad[0] == "SEED":
        if name == "fmnist_mlp_methods" and "," in bad[1]:
            bad = ["--seed", "x"]
        else:
            bad = ["--seed" if name == "fmnist_mlp_methods" else "--seeds", bad[1]]
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        _script(name).main(["--out-dir", str(out), *bad, "--", "--train-limit", "8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert bad[1].strip(",").split(",")[-1] in err or "no method" in err
    assert not out.exists()                                  # no run started, no file written


def test_failed_run_makes_script_exit_1(tmp_path, capsys, monkeypatch):
    mod = _script("fmnist_mlp_methods")
    out = tmp_path / "fmf"
    _failing(monkeypatch, "bp")   # the BP run diverges, the SSA run trains
    rc = mod.main(["--dataset", "synthetic", "--epochs", "1", "--methods", "bp,ssa", "--align-every", "0",
                   "--out-dir", str(out), *FM_TINY])
    assert rc == 1
    err = capsys.readouterr().err
    assert "1 runs failed: bp/0" in err.splitlines()
    rows = _fm_rows((out / "results.md").read_text(encoding="utf-8"))
    assert rows["BP"][1].startswith("failed: error:") and "simulated" in rows["BP"][1]
    assert math.isfinite(float(rows["SSA (default)"][1]))
    assert not (out / "bp.h5").exists() and (out / "ssa.h5").exists()


# issue 24: a run's arguments that ssaref.train refuses stop the script before its first run (exit 2, one line)
@pytest.mark.parametrize("name, argv, word", [
    ("fmnist_mlp_methods", ["--dataset", "synthetic", "--epochs", "1", "--methods", "bp,ssa", "--", "--lr", "nan"],
     "--lr"),
    ("fmnist_mlp_methods", ["--dataset", "synthetic", "--epochs", "1", "--methods", "bp,ssa", "--", "--ssa-variant",
                            "paper"], "--ssa-variant"),   # an SSA option: BP takes none
    ("fmnist_mlp_methods", ["--dataset", "synthetic", "--data-dir", "/nonexistent"], "/nonexistent"),
    ("table1_smallconv", ["--quick", "--methods", "bp", "--", "--lr", "nan"], "--lr"),
    ("table1_smallconv", ["--quick", "--methods", "bp", "--", "--hidden", "8"], "--hidden"),
    ("fig4_error_curves", ["--quick", "--methods", "bp", "--", "--width-mult", "0.5"], "--width-mult"),
])
def test_runs_refused_by_train_stop_the_script_before_the_first_run(name, argv, word, tmp_path, monkeypatch, capsys):
    from ssaref import train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "main", lambda a: calls.append(a) or 0)
    out = tmp_path / "o"
    rc = _script(name).main(["--out-dir", str(out), *argv])
    assert rc == 2 and calls == []
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run ") and len(err.splitlines()) == 1 and word in err, err
    assert "no run was started" in err
    assert not out.exists() or not any(out.iterdir())


def test_sweep_script_exits_1_on_failed_run(data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "f4f"
    _failing(monkeypatch, "bp")
    rc = _script("fig4_error_curves").main(["--quick", "--data-dir", str(data_dir), "--out-dir", str(out),
                                            "--methods", "bp", "--no-plot", *TINY_MLP])
    assert rc == 1
    assert "1 runs failed: cifar10-mlp-bp/0" in capsys.readouterr().err.splitlines()
    bp = next(r for r in _rows((out / "results.md").read_text(encoding="utf-8")) if r["method"] == "BP")
    assert bp["ssaref test error (%)"].startswith("failed: seed 0: error:")


def test_crash_inside_training_is_a_failed_run(tmp_path, monkeypatch, capsys):
    from ssaref import train as train_mod

    calls = []

    def boom(argv):
        calls.append(argv)
        raise TypeError("simulated crash")
    monkeypatch.setattr(train_mod, "main", boom)
    p = sw.build_parser("t", "", dataset="synthetic", epochs=1, seeds="0", methods=["bp", "dfa"])
    args = sw.parse_args(p, ["--seeds", "0,1", "--out-dir", str(tmp_path / "o")])
    cfgs = [sw.Config(f"synthetic-mlp-{m}", m.upper(), m, "mlp", "synthetic") for m in ("bp", "dfa")]
    status = sw.run_sweep(cfgs, args, log=lambda *a: None)
    assert len(calls) == 4                                   # the sweep went on after the first crash
    assert all(st.rc == 1 and st.error == "error: TypeError: simulated crash" for st in status.values())
    assert sw.exit_code(status) == 1
    assert capsys.readouterr().err.splitlines()[-1] == ("4 runs failed: synthetic-mlp-bp/0, synthetic-mlp-bp/1, "
                                                        "synthetic-mlp-dfa/0, synthetic-mlp-dfa/1")
    assert sw.exit_code({}) == 0 and sw.exit_code({("a", 0): sw.RunStatus(Path("x"), 0)}) == 0
    # ssaref.train's argparse exits (SystemExit 2) on a bad pass-through flag: a failed run with that code
    def reject(argv):
        print("error: argument --lr: must be > 0, got -1", file=sys.stderr)
        raise SystemExit(2)
    monkeypatch.setattr(train_mod, "main", reject)
    st = sw.run_one(cfgs[0], 0, args, log=lambda *a: None)
    assert (st.rc, st.error) == (2, "error: argument --lr: must be > 0, got -1")


# ------------------------------------------------------------------------------------------ the package
def _sys_path_edits(tree):
    """``sys.path.<method>(...)`` calls and assignments to ``sys.path`` in a parsed module."""
    hits = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        if (isinstance(target, ast.Attribute) and target.attr == "path" and isinstance(target.value, ast.Name)
                and target.value.id == "sys"):
            hits.append(node.lineno)
    return hits


def test_no_sys_path_hacks_in_validation():
    """The scripts import the package (``from validation import _sweep``), never by patching sys.path."""
    files = [f for f in sorted(VALIDATION.rglob("*")) if f.is_file() and f.suffix in (".py", ".sh", ".md")]
    assert (VALIDATION / "__init__.py") in files
    bad = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        if "sys.path.insert" in text or "sys.path.append" in text:
            bad.append(f"{f.relative_to(VALIDATION)}: mentions sys.path.insert/append")
        if f.suffix == ".py":
            bad += [f"{f.relative_to(VALIDATION)}:{ln}: edits sys.path" for ln in _sys_path_edits(ast.parse(text))]
    assert not bad, bad


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_run_as_modules_from_any_directory(name, tmp_path):
    """``python -m validation.<name>`` works outside the checkout (the package is installed with ssaref);
    a bad argument is still exit 2 with one ``error:`` line naming that invocation, before any run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", f"validation.{name}", "--epochs", "0", "--out-dir", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert f"python -m validation.{name} --help" in err
    assert not out.exists()


def test_fmnist_mlp_methods_over_seeds_reports_mean_and_std(tmp_path):
    mod = _script("fmnist_mlp_methods")
    out = tmp_path / "fm"
    rc = mod.main(["--dataset", "synthetic", "--epochs", "1", "--methods", "bp,dfa", "--seeds", "0-2",
                   "--align-every", "0", "--out-dir", str(out), *FM_TINY])
    assert rc == 0
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "seeds 0,1,2" in text and "mean ± std over seeds" in text
    for name in ("bp", "dfa"):
        accs = [100 * read_run(out / f"{name}-seed{s}.h5")[1]["test_acc"][-1] for s in range(3)]
        assert f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f}" in text


def test_a_cached_run_file_of_ssaref_0_1_0_is_recognised(tmp_path, capsys):
    """Sweep caches: a 0.1.0 run file (unset rule options null, no data_on_device) matches the same flags today for
    a rule whose defaults did not change; an SSA file of 0.1.0 ran with other defaults and is told apart."""
    import json

    import h5py

    from ssaref import train as train_mod
    from validation import _sweep as sw

    argv = ["--method", "dfa", "--dataset", "synthetic", "--train-limit", "64", "--test-limit", "32",
            "--batch-size", "32", "--hidden", "8", "--epochs", "1", "--no-progress"]
    out = tmp_path / "r.h5"
    assert train_mod.main(argv + ["--out", str(out)]) == 0
    assert sw.settings_mismatch(out, argv) is None
    with h5py.File(out, "r+") as f:
        c = json.loads(f.attrs["config"])
        new_keys = ("data_on_device", "conv_save")   # settings added since 0.1.0
        c = {k: (None if k.startswith("rule_") else v) for k, v in c.items() if k not in new_keys}
        f.attrs["config"] = json.dumps(dict(c, ssaref_version="0.1.0"))
    assert sw.settings_mismatch(out, argv) is None
    assert sw.settings_mismatch(out, argv + ["--data-on-device", "off"]) is None   # the same numbers either way
    ssa = tmp_path / "s.h5"
    sargv = [a if a != "dfa" else "ssa" for a in argv]
    assert train_mod.main(sargv + ["--out", str(ssa)]) == 0
    with h5py.File(ssa, "r+") as f:
        c = json.loads(f.attrs["config"])
        f.attrs["config"] = json.dumps(dict({k: (None if k.startswith("rule_") else v) for k, v in c.items()},
                                            ssaref_version="0.1.0"))
    assert "rule_gamma" in sw.settings_mismatch(ssa, sargv)   # 0.1.0's gamma 0.01, today's 0.1
    capsys.readouterr()


def _gpu_check(tmp_path, *args):
    """Run validation/gpu_check.sh with fake ``python`` and ``nvidia-smi`` on PATH that log their arguments and
    succeed (no GPU here): what the script would run, and its folder handling."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    for tool in ("python", "nvidia-smi"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\ncat > /dev/null\n')
        (bin_dir / tool).chmod(0o755)
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", str(root / "validation" / "gpu_check.sh"), *args], capture_output=True, text=True,
                       env=env, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return r, calls


def test_gpu_check_is_rerunnable_with_overwrite_into_its_own_folder(tmp_path):
    out = tmp_path / "check"
    r, calls = _gpu_check(tmp_path, str(out))
    assert r.returncode == 0, r.stderr
    assert (out / ".gpu_check").exists() and not any("--overwrite" in c for c in calls)
    assert any("tests/test_kernels_nvrtc.py" in c for c in calls) and any("-m gpu" in c for c in calls)
    assert sum(c.startswith("python -m ssaref.train --backend cupy") for c in calls) == 2
    (out / "bench_cupy.json").write_text("{}")
    r, calls = _gpu_check(tmp_path, str(out))                      # again, without --overwrite: refused
    assert r.returncode == 2 and calls == [] and "--overwrite" in r.stderr and r.stderr.count("\n") == 1
    r, calls = _gpu_check(tmp_path, "--overwrite", str(out))       # with it: bench and train overwrite
    assert r.returncode == 0, r.stderr
    bench_train = [c for c in calls if "ssaref.bench" in c or "ssaref.train" in c]
    assert len(bench_train) == 4 and all(c.endswith("--overwrite") for c in bench_train)  # 2 bench, 2 train
    assert sum("ssaref.bench" in c for c in bench_train) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.txt").write_text("not a gpu check")
    r, calls = _gpu_check(tmp_path, "--overwrite", str(other))      # never into a folder that is not its own
    assert r.returncode == 2 and calls == [] and "not a gpu_check folder" in r.stderr
    assert (other / "results.txt").read_text() == "not a gpu check"
