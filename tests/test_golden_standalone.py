"""The standalone checker ``ssaref/golden/check.py`` runs with only numpy and h5py.

Proof of independence: the file is copied alone into an empty folder and run with ``python -I`` (no
PYTHONPATH, no user site, not the script's folder on the path) behind a meta-path finder that refuses to import
``ssaref``, ``torch`` and ``scipy``; the run must pass on the exported golden set and on independent PyTorch
candidates, fail (exit 1, naming the field) on a perturbed candidate, write the markdown report, and exit 2 with
one error line on a missing folder -- and afterwards no ``ssaref`` module may have been imported.  A control run
shows the blocker does block ``import ssaref``.  An AST scan shows the file imports only the standard library,
numpy and h5py.  ``python -m ssaref.vectors check`` is shown to print exactly what the standalone run prints.
"""
from __future__ import annotations

import ast
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

sys.path.insert(0, os.path.dirname(__file__))
import _torch_rules as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "ssaref" / "golden" / "check.py"

BLOCKER = r"""
import importlib.abc, runpy, sys
BLOCKED = ("ssaref", "torch", "scipy")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
script = sys.argv[1]
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
if leaked:
    print("LEAKED " + ",".join(leaked), file=sys.stderr)
    code = 99
sys.exit(code)
"""


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """``check.py`` alone in an empty folder."""
    d = tmp_path_factory.mktemp("alone")
    shutil.copy(CHECK, d / "check.py")
    return d / "check.py"


def _standalone(script, *args, cwd):
    return subprocess.run([sys.executable, "-I", "-c", BLOCKER, str(script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env={"PATH": os.environ.get("PATH", "")})


def test_check_py_imports_only_stdlib_numpy_h5py():
    tree = ast.parse(CHECK.read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "check.py must not use relative imports"
            mods.add((node.module or "").split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"numpy", "h5py", "__future__"}
    assert mods - allowed == set(), mods - allowed
    assert {"numpy", "h5py"} <= mods


def test_the_blocker_blocks(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import ssaref\n")
    r = _standalone(probe, cwd=tmp_path)
    assert r.returncode != 0 and "ssaref is blocked" in r.stderr
    # and ssaref is importable in this interpreter otherwise (so the block is what stops it)
    r = subprocess.run([sys.executable, "-I", str(probe)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_standalone_passes_on_the_exported_set(golden, isolated, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(golden, mirror)
    r = _standalone(isolated, golden, mirror, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(os.listdir(golden))
    assert f"cases: {n} passed / 0 failed" in r.stdout and "FAIL" not in r.stdout
    r = _standalone(isolated, "validate", golden, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count(": ok") == n, r.stdout + r.stderr


SAMPLE = ("bp__res__default", "fa__conv__default", "dfa__res__default", "pepita__mlp__default",
          "svd-bp__mlp__sgd1", "ssa__conv__paper-coef", "ssa__mlp__adam3", "dfa__conv__momentum3")


def test_standalone_passes_independent_candidates_and_fails_a_perturbed_one(golden, isolated, tmp_path):
    gold, cand = tmp_path / "gold", tmp_path / "cand"
    gold.mkdir(), cand.mkdir()
    for c in SAMPLE:
        shutil.copy(golden / f"{c}.h5", gold / f"{c}.h5")
        T.write_candidate(str(golden / f"{c}.h5"), str(cand / f"{c}.h5"))
    r = _standalone(isolated, gold, cand, "--report", tmp_path / "ok.md", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"cases: {len(SAMPLE)} passed / 0 failed" in r.stdout
    report = (tmp_path / "ok.md").read_text()
    assert "**PASS**" in report and all(f"## `{c}`" in report for c in SAMPLE)

    field = "steps/2/params/0/U"
    with h5py.File(cand / "ssa__mlp__adam3.h5", "a") as f:
        f[field][0, 0] = f[field][0, 0] * (1 + 1e-6)
    r = _standalone(isolated, gold, cand, "--failures-only", "--report", tmp_path / "bad.md", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = [l.split() for l in r.stdout.splitlines() if "FAIL" in l]
    assert [(row[0], row[1]) for row in rows] == [("ssa__mlp__adam3", field)]
    assert f"cases: {len(SAMPLE) - 1} passed / 1 failed" in r.stdout
    bad = (tmp_path / "bad.md").read_text()
    assert "**FAIL**" in bad and f"| `{field}` |" in bad and "| `ssa__mlp__adam3` |" in bad


def test_standalone_cannot_run_is_exit_2_one_line(isolated, tmp_path):
    r = _standalone(isolated, tmp_path / "nope", tmp_path, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: ") and "does not exist" in r.stderr
    r = _standalone(isolated, tmp_path, tmp_path, "--rtol", "-3", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: ")


def test_vectors_check_is_the_standalone_checker(golden, isolated, tmp_path, capsys):
    assert V.compare_case is C.compare_case and V.read_file is C.read_file and V.GoldenError is C.GoldenError
    gold = tmp_path / "gold"
    gold.mkdir()
    for c in SAMPLE[:3]:
        shutil.copy(golden / f"{c}.h5", gold / f"{c}.h5")
    cand = tmp_path / "cand"
    shutil.copytree(gold, cand)
    with h5py.File(cand / f"{SAMPLE[0]}.h5", "a") as f:
        f["update/0/W"][...] = np.asarray(f["update/0/W"][()]) * 1.01
    rc = V.main(["check", str(gold), str(cand), "--report", str(tmp_path / "a.md")])
    out = capsys.readouterr().out
    r = _standalone(isolated, gold, cand, "--report", tmp_path / "b.md", cwd=tmp_path)
    assert rc == r.returncode == 1
    assert out == r.stdout
    assert (tmp_path / "a.md").read_text() == (tmp_path / "b.md").read_text()
