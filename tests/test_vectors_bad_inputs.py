"""Bad inputs to ``python -m ssaref.vectors`` and to the standalone checker (issue 12's golden-vector items).

Every row of ``BAD`` builds one bad input in a fresh folder and runs the command; it must exit 2 with exactly
one line ``error: ...`` on stderr (no traceback, nothing on stdout) and leave every file as it was (no report,
golden file or temporary file created, changed or removed).  ``check``/``validate`` rows run through both
``ssaref.vectors.main`` and ``ssaref.golden.check.main``; a few rows also run as real processes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssaref import vectors as V
from ssaref.golden import check as C
from _cli import run_main as _run

ROOT = Path(__file__).resolve().parents[1]
CASE = "bp__mlp__default"
H5 = CASE + ".h5"


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden")
    V.export(str(d), only=[CASE, "ssa__mlp__paper", "bp__mlp__momentum3"])
    return d


def _copy(golden, d, names=(H5,)):
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(golden / n, d / n)
    return d


def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def _replace(f, name, data):
    del f[name]
    f[name] = data


def _snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.join(dirpath, n)] = "dir"
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.stat(p)
            out[p] = (Path(p).read_bytes(), st.st_mtime_ns)
    return out


# --- the bad inputs: (id, command, setup(tmp, golden) -> argv, substring of the error line) -----------------
def _gold_cand(tmp, golden, edit_cand=None, edit_gold=None):
    g, c = _copy(golden, tmp / "g"), _copy(golden, tmp / "c")
    if edit_cand:
        _edit(c / H5, edit_cand)
    if edit_gold:
        _edit(g / H5, edit_gold)
    return [str(g), str(c)]


def _compound(f):
    a = np.zeros(3, dtype=[("x", "f8"), ("y", "i4")])
    _replace(f, "update/0/W", a)


BAD = [
    ("check-missing-golden", "check", lambda t, g: [str(t / "nope"), str(_copy(g, t / "c"))], "does not exist"),
    ("check-missing-candidate", "check", lambda t, g: [str(_copy(g, t / "g")), str(t / "nope")],
     "candidate directory"),
    ("check-empty-golden", "check", lambda t, g: [str(_mkdir(t / "e")), str(_copy(g, t / "c"))], "no .h5 files"),
    ("check-golden-not-hdf5", "check", lambda t, g: [str(_text(t / "g" / H5)), str(_copy(g, t / "c"))],
     "not an HDF5 file"),
    ("check-candidate-not-hdf5", "check", lambda t, g: [str(_copy(g, t / "g")), str(_text(t / "c" / H5).parent)],
     "not an HDF5 file"),
    ("check-golden-file-not-hdf5", "check", lambda t, g: [str(_text(t / "x.txt")), str(_copy(g, t / "c"))],
     "not an HDF5 file"),
    ("check-truncated-golden", "check", lambda t, g: [str(_truncated(g, t / "g")), str(_copy(g, t / "c"))],
     H5),
    ("check-candidate-is-folder", "check", lambda t, g: [str(_copy(g, t / "g")), str(_mkdir(t / "c" / H5).parent)],
     "not a regular file"),
    ("check-candidate-string-dataset", "check",
     lambda t, g: _gold_cand(t, g, lambda f: _replace(f, "update/0/W", np.bytes_("abc"))), "not a real number"),
    ("check-candidate-string-array", "check",
     lambda t, g: _gold_cand(t, g, lambda f: _replace(f, "forward/loss", np.array([b"a", b"b"]))),
     "not a real number"),
    ("check-candidate-compound-dataset", "check", lambda t, g: _gold_cand(t, g, _compound), "not a real number"),
    ("check-candidate-complex-dataset", "check",
     lambda t, g: _gold_cand(t, g, lambda f: _replace(f, "update/0/b", np.zeros(10, complex))), "not a real number"),
    ("check-golden-string-dataset", "check",
     lambda t, g: _gold_cand(t, g, edit_gold=lambda f: _replace(f, "update/2/b", np.bytes_("x"))),
     "not a real number"),
    ("check-candidate-array-rule-attr", "check",
     lambda t, g: _gold_cand(t, g, lambda f: f.attrs.__setitem__("rule", np.array(["bp", "fa"], dtype="S2"))),
     "'rule' must be a single string"),
    ("check-candidate-array-schema-attr", "check",
     lambda t, g: _gold_cand(t, g, lambda f: f.attrs.__setitem__("schema", np.arange(3))),
     "'schema' must be a single string"),
    ("check-candidate-numeric-variant-attr", "check",
     lambda t, g: _gold_cand(t, g, lambda f: f.attrs.__setitem__("variant", 3)), "'variant' must be a single string"),
    ("check-candidate-no-schema", "check", lambda t, g: _gold_cand(t, g, lambda f: f.attrs.__delitem__("schema")),
     "no schema attribute"),
    ("check-candidate-other-schema", "check",
     lambda t, g: _gold_cand(t, g, lambda f: f.attrs.__setitem__("schema", "ssaref-golden/9")), "not supported"),
    ("check-candidate-other-case", "check",
     lambda t, g: _gold_cand(t, g, lambda f: f.attrs.__setitem__("model", "conv")), "does not match"),
    ("check-golden-old-schema", "check",
     lambda t, g: _gold_cand(t, g, edit_gold=lambda f: f.attrs.__setitem__("schema", "ssaref-golden/0")),
     "ssaref-golden/0"),
    ("check-golden-foreign", "check", lambda t, g: [str(_foreign(t / "g" / H5).parent), str(_copy(g, t / "c"))],
     "not a golden-vector file"),
    ("check-negative-rtol", "check", lambda t, g: _gold_cand(t, g) + ["--rtol", "-1"], "--rtol"),
    ("check-nan-atol", "check", lambda t, g: _gold_cand(t, g) + ["--atol", "nan"], "--atol"),
    ("check-word-rtol", "check", lambda t, g: _gold_cand(t, g) + ["--rtol", "abc"], "--rtol"),
    ("check-report-missing-folder", "check", lambda t, g: _gold_cand(t, g) + ["--report", str(t / "no" / "r.md")],
     "does not exist"),
    ("check-report-is-folder", "check", lambda t, g: _gold_cand(t, g) + ["--report", str(_mkdir(t / "r.md"))],
     "is a folder"),
    # issue 24: the report never replaces an input, nor an existing file without --overwrite
    ("check-report-is-golden-file", "check",
     lambda t, g: [str(_copy(g, t / "g") / H5), str(_copy(g, t / "c") / H5), "--report", str(t / "g" / H5)],
     "golden input"),
    ("check-report-is-candidate-file", "check",
     lambda t, g: [str(_copy(g, t / "g") / H5), str(_copy(g, t / "c") / H5), "--report", str(t / "c" / H5)],
     "candidate input"),
    ("check-report-is-golden-folder-file", "check",
     lambda t, g: _gold_cand(t, g) + ["--report", str(t / "g" / H5)], "golden input"),
    ("check-report-is-candidate-folder-file", "check",
     lambda t, g: _gold_cand(t, g) + ["--report", str(t / "c" / H5)], "candidate input"),
    ("check-report-inside-candidate", "check",
     lambda t, g: _gold_cand(t, g) + ["--report", str(t / "c" / "report.md")], "inside the candidate input"),
    ("check-report-via-dotdot", "check",
     lambda t, g: _gold_cand(t, g) + ["--report", str(t / "c" / ".." / "g" / H5)], "golden input"),
    ("check-report-hard-link-to-golden", "check",
     lambda t, g: [str(_copy(g, t / "g") / H5), str(_copy(g, t / "c") / H5), "--report",
                   str(_link(t / "g" / H5, t / "r.md"))], "golden input"),
    ("check-report-exists", "check", lambda t, g: _gold_cand(t, g) + ["--report", str(_text(t / "r.md"))],
     "--overwrite"),
    ("check-no-arguments", "check", lambda t, g: [], "required"),
    ("validate-missing", "validate", lambda t, g: [str(t / "nope.h5")], "does not exist"),
    ("validate-not-hdf5", "validate", lambda t, g: [str(_text(t / "x.h5"))], "not an HDF5 file"),
    ("validate-empty-folder", "validate", lambda t, g: [str(_mkdir(t / "e"))], "no .h5 files"),
    ("validate-string-dataset", "validate",
     lambda t, g: [str(_edit(_copy(g, t / "g") / H5, lambda f: _replace(f, "input/x", np.bytes_("x"))))],
     "not a real number"),
    ("validate-compound-dataset", "validate", lambda t, g: [str(_edit(_copy(g, t / "g") / H5, _compound))],
     "not a real number"),
    ("export-onto-file", "export", lambda t, g: ["--out", str(_text(t / "out"))], "not a folder"),
    ("export-onto-golden-folder", "export", lambda t, g: ["--out", str(_copy(g, t / "out")), "--only", CASE],
     "--overwrite"),
    ("export-onto-folder-with-other-h5", "export", lambda t, g: ["--out", str(_text(t / "out" / "mine.h5").parent)],
     "--overwrite"),
    ("export-unknown-case", "export", lambda t, g: ["--out", str(t / "out"), "--only", "zz__mlp__default"],
     "unknown case"),
    ("export-empty-only", "export", lambda t, g: ["--out", str(t / "out"), "--only"], "unknown case"),
    ("export-negative-seed", "export", lambda t, g: ["--out", str(t / "out"), "--seed", "-1"], "--seed"),
    ("export-word-seed", "export", lambda t, g: ["--out", str(t / "out"), "--seed", "x"], "--seed"),
    ("no-command", None, lambda t, g: [], "required"),
    ("unknown-command", None, lambda t, g: ["frobnicate"], "invalid choice"),
]


def _link(target, p):
    os.link(target, p)
    return p


def _mkdir(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


def _text(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("not hdf5\n")
    return p


def _foreign(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(p, "w") as f:
        f["data"] = np.zeros(3)
    return p


def _truncated(golden, d):
    d.mkdir(parents=True, exist_ok=True)
    (d / H5).write_bytes((golden / H5).read_bytes()[:3000])
    return d


def _assert_one_error(rc, out, err, needle):
    assert rc == 2, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == "", (out, err)
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("name, cmd, setup, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_error_line_and_changes_nothing(golden, tmp_path, capsys, name, cmd, setup, needle):
    work = tmp_path / "w"
    work.mkdir()
    args = setup(work, golden)
    argv = ([cmd] if cmd else []) + args
    before = _snapshot(work)
    rc, out, err = _run(V.main, argv, capsys)
    _assert_one_error(rc, out, err, needle)
    assert _snapshot(work) == before
    if cmd in ("check", "validate"):   # the standalone checker answers the same
        rc, out, err = _run(lambda a: C.main(a, prog="check.py"), argv, capsys)
        _assert_one_error(rc, out, err, needle)
        assert _snapshot(work) == before


@pytest.mark.parametrize("name", ["check-candidate-compound-dataset", "check-candidate-array-rule-attr",
                                  "export-onto-golden-folder", "check-word-rtol", "check-report-is-golden-file"])
def test_bad_input_in_a_real_process(golden, tmp_path, name):
    _, cmd, setup, needle = next(b for b in BAD if b[0] == name)
    work = tmp_path / "w"
    work.mkdir()
    argv = [cmd] + setup(work, golden)
    before = _snapshot(work)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "ssaref.vectors", *argv], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    _assert_one_error(r.returncode, r.stdout, r.stderr, needle)
    assert _snapshot(work) == before


# --- what is not an error ------------------------------------------------------------------------------
@pytest.mark.parametrize("main", [V.main, lambda a: C.main(a, prog="check.py")], ids=["vectors", "check.py"])
def test_report_overwrite_replaces_an_existing_report(golden, tmp_path, capsys, main):
    g, c = _gold_cand(tmp_path, golden)
    rep = _text(tmp_path / "r.md")
    rc, _, err = _run(main, ["check", g, c, "--report", str(rep), "--overwrite"], capsys)
    assert rc == 0, err
    assert "**PASS**" in rep.read_text() and sorted(os.listdir(tmp_path)) == ["c", "g", "r.md"]


def test_infinite_tolerances_are_defined(golden, tmp_path, capsys):
    """``--rtol inf`` passes identical zero fields and any finite value where gold != 0, judges gold's zeros by
    atol alone, and never passes NaN."""
    g = _copy(golden, tmp_path / "g")
    z, nz = "update/2/b", "update/4/b"
    _edit(g / H5, lambda f: f[z].write_direct(np.zeros(f[z].shape)))      # a field of exact zeros
    assert _run(V.main, ["check", str(g), str(g), "--rtol", "inf"], capsys)[0] == 0
    assert _run(V.main, ["check", str(g), str(g), "--rtol", "inf", "--atol", "inf"], capsys)[0] == 0
    assert _run(V.main, ["check", str(g), str(g), "--rtol", "0", "--atol", "0"], capsys)[0] == 0
    c = _copy(g, tmp_path / "c")
    _edit(c / H5, lambda f: f[nz].write_direct(np.asarray(f[nz][()] * 3.0 + 1e-3)))
    assert not np.any(V.read_file(g / H5)[1][nz] == 0)
    assert _run(V.main, ["check", str(g), str(c), "--rtol", "inf"], capsys)[0] == 0       # finite, gold != 0
    _edit(c / H5, lambda f: f[z].write_direct(np.full(f[z].shape, 1e-3)))
    rc, out, _ = _run(V.main, ["check", str(g), str(c), "--rtol", "inf"], capsys)
    assert rc == 1
    assert {l.split()[1] for l in out.splitlines() if "FAIL" in l} == {z}                # zeros: atol alone
    assert _run(V.main, ["check", str(g), str(c), "--rtol", "inf", "--atol", "inf"], capsys)[0] == 0
    _edit(c / H5, lambda f: f[nz].write_direct(np.full(f[nz].shape, np.nan)))
    assert _run(V.main, ["check", str(g), str(c), "--rtol", "inf", "--atol", "inf"], capsys)[0] == 1
    for cand, gold, ok in [(0.0, 0.0, True), (np.inf, np.inf, True), (np.inf, 1.0, False), (np.nan, np.nan, False),
                           (1.0, 0.0, False), (5.0, 1.0, True), (-np.inf, np.inf, False)]:
        assert C.compare_arrays(np.array([cand]), np.array([gold]), rtol=np.inf, atol=0.0)[0] is ok, (cand, gold)


def test_export_overwrite_replaces_golden_files(golden, tmp_path, capsys):
    out = _copy(golden, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    with h5py.File(out / H5, "a") as f:
        f["update/0/W"][0, 0] = 99.0
    rc, _, err = _run(V.main, ["export", "--out", str(out), "--only", CASE, "--overwrite"], capsys)
    assert rc == 0, err
    assert (out / H5).read_bytes() == (golden / H5).read_bytes()
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(out)) == [H5, "notes.txt"]       # no temporary file left
    # a non-empty folder without .h5 files is not refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "README").write_text("x")
    assert _run(V.main, ["export", "--out", str(other), "--only", CASE], capsys)[0] == 0
    assert sorted(os.listdir(other)) == ["README", H5]


def test_export_computes_every_case_before_writing(tmp_path, monkeypatch):
    calls = []
    real = V.compute_case

    def flaky(*a, **k):
        calls.append(a)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*a, **k)
    monkeypatch.setattr(V, "compute_case", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        V.export(str(out), only=[CASE, "bp__conv__default"])
    assert not out.exists()
