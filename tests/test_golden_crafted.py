"""Issue 24: crafted golden files, an interrupted export or check, and random corruptions of a real golden file.

The promise (README, docs/golden-vectors.md "Checking"): ``python -m ssaref.vectors check``/``validate`` and the
standalone ``ssaref/golden/check.py`` answer a file they cannot use with one line ``error: ...`` naming it and
exit 2 (``validate`` lists a file's schema problems and exits 1), never a traceback, and change no file; Ctrl-C
prints one line ``interrupted`` and exits 130 (as ``ssaref.train``); an export stopped half-way leaves the marker
``EXPORT-INCOMPLETE.json``, and check/validate refuse that folder until an export completes there.
"""
from __future__ import annotations

import json
import os
import signal
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssaref import vectors as V
from ssaref.golden import check as C
from _cli import run_main as _run

CASE, MULTI = "bp__mlp__default", "bp__mlp__momentum3"
CASES = (CASE, MULTI, "ssa__mlp__paper")


@pytest.fixture(scope="module")
def gold(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden")
    V.export(str(d), only=list(CASES))
    return d


def _snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.join(dirpath, n)] = "dir"
        for n in filenames:
            p = os.path.join(dirpath, n)
            out[p] = (Path(p).read_bytes(), os.stat(p).st_mtime_ns)
    return out


MAINS = {"vectors": V.main, "check.py": lambda a: C.main(a, prog="check.py")}


def _one_error(rc, out, err, needle=""):
    lines = err.splitlines()
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and out == "", (out, err)
    assert needle in lines[0], lines[0]


# --- crafted golden files -----------------------------------------------------------------------------------
def _replace(f, name, data=None, **kw):
    del f[name]
    if data is None:
        f.create_dataset(name, **kw)
    else:
        f[name] = data


def _huge(chunks):
    return lambda f: _replace(f, "update/0/W", shape=(2**45,), dtype="f8", chunks=chunks)


def _reshape(name, fn):
    return lambda f: _replace(f, name, fn(f[name][()]))


def _both(names, fn):
    def edit(f):
        for n in names:
            _replace(f, n, fn(f[n][()]))
    return edit


def _attr(name, value):
    return lambda f: f.attrs.__setitem__(name, value)


def _kind(k, value):
    return lambda f: f[f"layers/{k}"].attrs.__setitem__("kind", value)


# (id, file, edit, what validate says: "error:" needle (exit 2) or a problem it lists (exit 1))
CRAFTED = [
    ("huge-dataset-contiguous", CASE, _huge(None), "at most"),
    ("huge-dataset-chunked", CASE, _huge((1024,)), "at most"),
    ("huge-forward-dataset", CASE, lambda f: _replace(f, "forward/0/out", shape=(2**20, 2**20), dtype="f4"),
     "at most"),
    ("empty-dataspace", CASE, lambda f: _replace(f, "update/0/b", h5py.Empty("f8")), "no dataspace"),
    ("0-d-input-x", CASE, _reshape("input/x", lambda a: a[0, 0]), "/input/x has shape ()"),
    ("1-d-input-x", CASE, _reshape("input/x", lambda a: a[0]), "/input/x has shape (12,)"),
    ("2-d-input-y", CASE, _reshape("input/y", lambda a: a[None]), "/input/y has shape (1, 6)"),
    ("1-d-logits-and-out", CASE, _both(["forward/logits", "forward/4/out"], lambda a: a[0]),
     "/forward/logits has shape (5,)"),
    ("0-d-logits-and-out", CASE, _both(["forward/logits", "forward/4/out"], lambda a: a[0, 0]),
     "/forward/logits has shape ()"),
    ("1-d-logits-no-out", CASE, lambda f: (_reshape("forward/logits", lambda a: a[0])(f), f.__delitem__(
        "forward/4/out")), "/forward/logits has shape (5,)"),
    ("0-d-forward-out", CASE, _reshape("forward/1/out", lambda a: a[0, 0]), "/forward/1/out has shape ()"),
    ("W-against-geometry", CASE, _both(["layers/0/W", "update/0/W"], lambda a: a[:, :5]),
     "/layers/0/W has shape (10, 5), its geometry says (10, 12)"),
    ("geometry-not-an-int", CASE, lambda f: f["layers/0"].attrs.__setitem__("in_features", "twelve"),
     "malformed geometry"),
    ("kind-is-an-array", CASE, _kind(1, np.array([b"relu", b"relu"])), "has kind"),
    ("kind-is-a-number", CASE, _kind(1, 3), "has kind"),
    ("superscript-layer-index", CASE, lambda f: f["layers"].create_group("\u00b2").attrs.__setitem__("kind", "relu"),
     "/layers/\u00b2 is not a layer index"),
    ("superscript-step", MULTI, lambda f: f.__setitem__("steps/\u00b3/loss", 1.0), "unexpected dataset /steps/\u00b3"),
    ("steps-10**7", MULTI, _attr("steps", 10**7), "root attribute steps is 10000000"),
    ("steps-10**18", MULTI, _attr("steps", 10**18), "expected an integer in [1, 100]"),
    ("steps-negative", MULTI, _attr("steps", -3), "root attribute steps is -3"),
    ("steps-loss-1-d", MULTI, _reshape("steps/2/loss", lambda a: a[None]), "/steps/2/loss must be a scalar"),
    ("dtype-attr-array", CASE, _attr("dtype", np.array([b"float64", b"float64"])), "root attribute dtype"),
]


def _crafted(gold, tmp, name, edit):
    d = tmp / "g"
    d.mkdir()
    shutil.copy(gold / f"{name}.h5", d / f"{name}.h5")
    with h5py.File(d / f"{name}.h5", "a") as f:
        edit(f)
    return d


@pytest.mark.parametrize("main", sorted(MAINS))
@pytest.mark.parametrize("cid, name, edit, needle", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_golden_file(gold, tmp_path, capsys, main, cid, name, edit, needle):
    """``validate``: the problem listed (exit 1) or one error line (exit 2, unreadable); ``check`` with it as the
    golden file: one error line naming it (exit 2), with it as the candidate: never a traceback."""
    d = _crafted(gold, tmp_path, name, edit)
    f = d / f"{name}.h5"
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(gold / f"{name}.h5", good / f"{name}.h5")
    before = _snapshot(tmp_path)
    run = MAINS[main]
    rc, out, err = _run(run, ["validate", str(d)], capsys)
    if needle == "at most" or needle == "no dataspace":
        _one_error(rc, out, err, needle)
        assert str(f) in err
    else:
        assert rc == 1 and err == "" and f"{f}: INVALID" in out and needle in out, (rc, out, err)
    rc, out, err = _run(run, ["check", str(d), str(good)], capsys)
    _one_error(rc, out, err, str(f))
    rc, out, err = _run(run, ["check", str(good), str(d)], capsys)
    assert "Traceback" not in err and rc in (0, 1, 2), (rc, out, err)   # a candidate field it does not compare: ok
    if rc == 2:
        _one_error(rc, out, err, str(f))
    assert _snapshot(tmp_path) == before


def test_the_size_bound_is_checked_before_reading(gold, tmp_path, monkeypatch, capsys):
    """No dataset's data is read when the declared sizes exceed the bound (the declared shape is all it takes)."""
    d = _crafted(gold, tmp_path, CASE, _huge(None))
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, k: read.append(self.name) or real(self, k))
    with pytest.raises(C.GoldenError, match="at most"):
        C.read_file(d / f"{CASE}.h5")
    assert read == []


def test_exported_files_are_within_the_bounds(gold):
    """What export writes passes the reader's bounds with room to spare (the largest case, every step)."""
    for n in CASES:
        _, ds, _ = C.read_golden(gold / f"{n}.h5")
        assert sum(a.size for a in ds.values()) < C.MAX_ELEMENTS // 100
    assert max(s["steps"] for s in V.case_specs()) <= C.MAX_STEPS


# --- vectors export: the parser and the backend ----------------------------------------------------------
@pytest.mark.parametrize("seed", [str(10**30), str(2**63), "-1"])
def test_export_seed_is_bounded_at_the_parser(tmp_path, capsys, monkeypatch, seed):
    computed = []
    monkeypatch.setattr(V, "compute_case", lambda *a, **k: computed.append(a))
    rc, out, err = _run(V.main, ["export", "--out", str(tmp_path / "out"), "--only", CASE, "--seed", seed],
                        capsys)
    _one_error(rc, out, err, "--seed")
    assert computed == [] and not (tmp_path / "out").exists()


def test_export_largest_seed_is_written(tmp_path, capsys):
    rc, _, err = _run(V.main, ["export", "--out", str(tmp_path), "--only", CASE, "--seed", str(2**63 - 1)], capsys)
    assert rc == 0, err
    with h5py.File(tmp_path / f"{CASE}.h5", "r") as f:
        assert int(f.attrs["seed"]) == 2**63 - 1


def test_export_backend_cupy_without_a_gpu(tmp_path, capsys):
    from ssaref.backend import cupy_available

    if cupy_available():
        pytest.skip("this machine has CuPy and a GPU: the export would run")
    rc, out, err = _run(V.main, ["export", "--out", str(tmp_path / "out"), "--only", CASE, "--backend", "cupy"],
                        capsys)
    _one_error(rc, out, err, "cupy")
    assert not (tmp_path / "out").exists()


# --- Ctrl-C ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_interrupted_export_leaves_a_note_that_check_and_validate_refuse(gold, tmp_path, capsys, monkeypatch, k):
    """Ctrl-C at the k-th case file: exit 130 with one line, the marker lists every file of the export, the files
    before k are whole, and check/validate refuse the folder (exit 2, one line) until an export completes."""
    out = tmp_path / "out"
    real, calls = V.write_case, []

    def writer(path, case):
        calls.append(path)
        if len(calls) == k:
            raise KeyboardInterrupt
        return real(path, case)
    monkeypatch.setattr(V, "write_case", writer)
    rc, so, err = _run(V.main, ["export", "--out", str(out), "--only", *CASES], capsys)
    assert rc == 130 and err == "interrupted\n" and so == "", (rc, so, err)
    note = json.loads((out / C.EXPORT_MARKER).read_text())
    assert sorted(note["files"]) == sorted(f"{n}.h5" for n in CASES)
    written = sorted(n for n in os.listdir(out) if n != C.EXPORT_MARKER)
    assert len(written) == k - 1 and all(n.endswith(".h5") for n in written)   # no temporary file left
    for n in written:
        assert (out / n).read_bytes() == (gold / n).read_bytes()
    before = _snapshot(tmp_path)
    for main in MAINS.values():
        for argv in (["check", str(out), str(gold)], ["check", str(gold), str(out)], ["validate", str(out)]):
            if k == 1 and argv[1] == str(out):
                continue   # no .h5 file at all: refused as a folder without golden files (below)
            rc, so, err = _run(main, argv, capsys)
            _one_error(rc, so, err, "interrupted export")
    if k == 1:
        _one_error(*_run(V.main, ["validate", str(out)], capsys), "")
    assert _snapshot(tmp_path) == before
    monkeypatch.setattr(V, "write_case", real)
    args = ["export", "--out", str(out), "--only", *CASES] + (["--overwrite"] if k > 1 else [])
    assert _run(V.main, args, capsys)[0] == 0
    assert not (out / C.EXPORT_MARKER).exists()
    assert _run(V.main, ["check", str(gold), str(out)], capsys)[0] == 0


def test_interrupt_while_computing_writes_nothing(tmp_path, capsys, monkeypatch):
    def compute(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(V, "compute_case", compute)
    rc, so, err = _run(V.main, ["export", "--out", str(tmp_path / "out"), "--only", CASE], capsys)
    assert rc == 130 and err == "interrupted\n" and so == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("main", sorted(MAINS))
@pytest.mark.parametrize("where", ["compare", "report"])
def test_interrupted_check_is_one_line_and_writes_nothing(gold, tmp_path, capsys, monkeypatch, main, where):
    g, c = tmp_path / "g", tmp_path / "c"
    for d in (g, c):
        shutil.copytree(gold, d)
    rep = tmp_path / "r.md"

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(C, "compare_case" if where == "compare" else "format_report", stop)
    before = _snapshot(tmp_path)
    rc, so, err = _run(MAINS[main], ["check", str(g), str(c), "--report", str(rep)], capsys)
    assert rc == 130 and err == "interrupted\n" and so == "", (rc, so, err)
    assert _snapshot(tmp_path) == before


# --- random corruptions of a real golden file (hypothesis) ---------------------------------------------------
def _datasets(f):
    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(out)


def _groups(f):
    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Group) else None)
    return sorted(out)


def _apply(f, op, pick, value):
    """One corruption of an open golden file; ``pick`` chooses the object, ``value`` parametrises the change."""
    ds, groups = _datasets(f), _groups(f)
    name = ds[pick % len(ds)]
    if op == "delete-dataset":
        del f[name]
    elif op == "dtype":
        a = f[name][()]
        dt = [np.float32, np.int64, np.uint8, np.complex128, "S8", np.bool_][value % 6]
        _replace(f, name, np.asarray(a).astype(dt) if dt != "S8" else np.bytes_("x"))
    elif op == "shape":
        a = np.asarray(f[name][()])
        new = [a.reshape(-1), a.reshape(-1)[:1], np.asarray(a.reshape(-1)[0]) if a.size else np.zeros(()),
               np.zeros((0,) + a.shape[1:]), a[None], np.zeros((3, 3, 3, 3))][value % 6]
        _replace(f, name, new)
    elif op == "nan":
        a = np.array(f[name][()], dtype=np.float64)
        a.reshape(-1)[value % max(a.size, 1):][:1] = [np.nan, np.inf, -np.inf][value % 3]
        _replace(f, name, a)
    elif op == "group-to-dataset":
        g = groups[pick % len(groups)]
        del f[g]
        f[g] = np.zeros(value % 4)
    elif op == "dataset-to-group":
        del f[name]
        f.create_group(name)
    else:   # an attribute of the root or of a group: changed or deleted
        owner = f if value % 2 else f[groups[pick % len(groups)]]
        keys = sorted(owner.attrs)
        if not keys:
            return
        key = keys[(pick // 7) % len(keys)]
        if op == "delete-attribute":
            del owner.attrs[key]
        else:
            owner.attrs[key] = [-1, 10**7, 2**62, "nope", np.arange(3), 1.5, "{not json", ""][value % 8]


OPS = ["delete-dataset", "dtype", "shape", "nan", "group-to-dataset", "dataset-to-group", "delete-attribute",
       "change-attribute"]


@settings(max_examples=20, deadline=None)
@given(case=st.sampled_from([CASE, MULTI]), edits=st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=3))
def test_random_corruption_never_gives_a_traceback(gold, tmp_path_factory, case, edits):
    """For every corruption: accepted, or a documented failure (check: exit 1 with the table; validate: exit 1
    listing the problems), or exit 2 with one ``error:`` line naming the file -- never a traceback, no file
    changed -- from ``vectors check``/``validate`` and ``check.py``, the corrupted file as golden and as
    candidate."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("corrupt")
    bad, good = tmp / "bad", tmp / "good"
    bad.mkdir()
    good.mkdir()
    shutil.copy(gold / f"{case}.h5", bad / f"{case}.h5")
    shutil.copy(gold / f"{case}.h5", good / f"{case}.h5")
    with h5py.File(bad / f"{case}.h5", "a") as f:
        for op, pick, value in edits:
            _apply(f, op, pick, value)
    before = _snapshot(tmp)
    for main in MAINS.values():
        for argv in (["validate", str(bad)], ["check", str(bad), str(good)], ["check", str(good), str(bad)]):
            so, se = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
                try:
                    rc = main(argv)
                except SystemExit as exc:
                    rc = exc.code
            so, se = so.getvalue(), se.getvalue()
            assert rc in (0, 1, 2) and "Traceback" not in se, (argv, edits, rc, se)
            if rc == 2:
                assert se.startswith("error: ") and se.count("\n") == 1 and so == "", (argv, edits, so, se)
                assert f"{case}.h5" in se or str(bad) in se, (argv, edits, se)
            else:
                assert se == "", (argv, edits, se)
            if rc == 0 and argv[0] == "validate":
                assert f"{case}.h5: ok" in so
    assert _snapshot(tmp) == before


def test_a_real_sigint_during_export(gold, tmp_path):
    """The same through a real SIGINT delivered to a real process while it writes its second case file."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import os, signal, sys\n"
            "from ssaref import vectors as V\n"
            "real, n = V.write_case, []\n"
            "def writer(path, case):\n"
            "    n.append(path)\n"
            "    if len(n) == 2:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(path, case)\n"
            "V.write_case = writer\n"
            "sys.exit(V.main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code, "export", "--out", str(out), "--only", *CASES],
                       capture_output=True, text=True, env=env, cwd=tmp_path,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # even where the test
    # itself runs with SIGINT ignored (a background job, nohup): Python then installs its KeyboardInterrupt handler
    assert r.returncode == 130 and r.stderr == "interrupted\n" and r.stdout == "", r
    assert sorted(os.listdir(out)) == sorted([C.EXPORT_MARKER, f"{CASES[0]}.h5"])
    r = subprocess.run([sys.executable, str(root / "ssaref" / "golden" / "check.py"), "validate", str(out)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "interrupted export" in r.stderr

