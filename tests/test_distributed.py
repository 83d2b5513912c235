"""Data-parallel training and sweeps over MPI (``mpiexec -n 2`` on this machine; ssaref/distributed.py).

* equivalence: 2 ranks with global batch B give the parameters (and rule state) of 1 rank with batch B, float64,
  to 1e-12 relative, for every rule on an MLP and on a conv net, SSA including a rank cut;
* resume across rank counts (2 -> 1 and 1 -> 2); only rank 0 prints and writes;
* a killed rank ends the job (no hang); set-up errors end every rank with one error line;
* a sweep spread over 2 ranks writes the results.md of the serial sweep.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ssaref.runlog import read_run
from ssaref.rules import RULES

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
    HAVE_MPI = MPIEXEC is not None
except ImportError:
    HAVE_MPI = False

if not HAVE_MPI and os.environ.get("CI") == "true":   # CI installs mpi4py + mpich: a missing MPI is a failure
    raise RuntimeError("CI: mpi4py/mpiexec missing (pip install -e '.[test]' installs them)")
pytestmark = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec (pip install 'ssaref[mpi]')")

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")
SYN = ["--dataset", "synthetic", "--train-limit", "192", "--test-limit", "64", "--batch-size", "32", "--hidden",
       "24,16", "--dtype", "float64", "--optimizer", "adam", "--lr", "1e-2", "--no-progress"]


def mpirun(n, args, timeout=300, **kw):
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=kw.pop("cwd", ROOT), **kw)


def train(n, *argv, timeout=300):
    if n == 1:
        return subprocess.run([sys.executable, "-m", "ssaref.train", *argv], capture_output=True, text=True,
                              timeout=timeout, env=ENV)
    return mpirun(n, ["-m", "ssaref.train", "--distributed", "mpi", "--mpi-timeout", "120", *argv], timeout)


def max_rel(a, b):
    return max(float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(b[k]))), 1e-300)) for k in b)


# every registered rule (a new rule is in without an edit here), SSA also with a rank cut (``ssa-cut``); on the conv
# net every rule but those named here
CONV_SKIP = {
    "pepita": "defined for MLPs",
    "usf": "FA's transport with a sign-concordant B: fa and kp run it on the conv net",
    "brsf": "as usf",
    "frsf": "as usf",
    "ssa": "ssa-cut runs SSA there",
}
MLP_RULES = list(RULES) + ["ssa-cut"]
CONV_RULES = [r for r in RULES if r not in CONV_SKIP] + ["ssa-cut"]


def test_two_ranks_equal_one_rank_for_every_rule(tmp_path):
    cases = ([f"{m}:mlp" for m in MLP_RULES] + [f"{m}:lenet" for m in CONV_RULES]
             + ["bp:mlp:adam", "ssa-cut:mlp:adam", "dfa:lenet:adam", "predsim:mlp:adam"]
             + ["bp:resnet20:syncbn", "dfa:resnet20:syncbn", "ssa:resnet20:syncbn",   # BN nets with --sync-bn
                "predsim:resnet20:syncbn",    # PredSim's similarity matrix: the global batch's (BatchGroup)
                "auglocal:resnet20:syncbn"])  # the auxiliary networks' BatchNorm layers synchronised too
    r = mpirun(2, ["tests/_mpi_equivalence.py", str(tmp_path), *cases], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = dict(re.findall(r"^CASE (\S+) (\S+)$", r.stdout, flags=re.M))
    assert set(got) == set(cases), r.stdout[-2000:]
    bad = {c: float(v) for c, v in got.items() if not float(v) <= 1e-12}   # measured: <= 6e-15 with SGD
    assert bad == {}, bad
    # the SSA cases really cut the rank at the end of epoch 1, on both runs alike
    for model in ("mlp", "lenet"):
        _, m, _ = read_run(tmp_path / f"ssa-cut_{model}_n2.h5")
        assert (m["svd_rank"][1] < m["svd_rank"][0]).any()


def test_per_rank_batchnorm_differs_from_the_global_batch(tmp_path):
    """Without --sync-bn a BN net is trained with each rank's own statistics (as DDP without SyncBN): not the
    1-rank run -- the equivalence above needs --sync-bn."""
    r = mpirun(2, ["tests/_mpi_equivalence.py", str(tmp_path), "bp:resnet20"])
    assert r.returncode == 0, r.stderr[-2000:]
    (diff,) = re.findall(r"^CASE bp:resnet20 (\S+)$", r.stdout, flags=re.M)
    assert float(diff) > 1e-6


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_across_rank_counts(first, then, tmp_path):
    ref, part = tmp_path / "ref.h5", tmp_path / "part.h5"
    for method in ("ssa", "dfa"):
        args = SYN + ["--method", method, "--overwrite"]
        assert train(1, *args, "--epochs", "2", "--out", str(ref)).returncode == 0
        r = train(first, *args, "--epochs", "1", "--out", str(part))
        assert r.returncode == 0, r.stderr
        r = train(then, *SYN, "--method", method, "--epochs", "2", "--resume", str(part))
        assert r.returncode == 0, r.stderr
        a, b = read_run(part)[2], read_run(ref)[2]
        # an epoch on 2 ranks sums its shards in another order than 1 rank: round-off only, which SSA's retraction
        # and rank cut amplify to ~1e-12 after 2 epochs with some BLAS builds (1.2e-12 with numpy 1.24's OpenBLAS);
        # a wrong resume (a lost optimiser or RNG state) moves the parameters by far more than 1e-10
        assert a["epoch"] == 2 and max_rel(a["params"], b["params"]) <= 1e-10, method


def test_only_rank_0_prints_and_writes(tmp_path):
    out = tmp_path / "run.h5"
    r = train(2, *SYN, "--method", "bp", "--epochs", "2", "--out", str(out), "--check-replicas", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("final test_acc=") == 1 and r.stdout.count("epoch 1/2") == 1 and "ranks=2" in r.stdout
    assert sorted(os.listdir(tmp_path)) == ["run.h5"]
    assert read_run(out)[0]["distributed"] == "mpi"


def test_set_up_errors_end_every_rank_with_one_line(tmp_path):
    # batches of one example cannot be split over 2 ranks: every rank says so, none waits for the other
    r = train(2, *SYN, "--method", "bp", "--epochs", "1", "--batch-size", "1", "--train-limit", "3")
    assert r.returncode != 0 and "every batch has at least one example per rank" in r.stderr, r.stderr
    r = train(2, *SYN, "--method", "nope", "--epochs", "1")
    assert r.returncode != 0 and r.stderr.count("error: unknown method 'nope'") >= 1 and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_dead_or_hung_rank_ends_the_job_instead_of_hanging(fault, tmp_path):
    """``killed`` (SIGKILL): mpiexec tears the job down and says which rank died; ``hung`` (SIGSTOP: the launcher
    sees nothing wrong): the other rank's collective times out after --mpi-timeout, it prints one error line
    naming the collective, and aborts the job."""
    out = tmp_path / "long.h5"
    args = [MPIEXEC, "-n", "2", sys.executable, "-m", "ssaref.train", "--distributed", "mpi", "--mpi-timeout", "15",
            *SYN, "--train-limit", "4000", "--method", "bp", "--epochs", "500", "--out", str(out)]
    p = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = None
        deadline = time.time() + 60
        while victim is None and time.time() < deadline:   # find the rank-1 process by its environment
            time.sleep(0.2)
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    envb = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                if str(out).encode() in cmd and b"ssaref.train" in cmd and b"PMI_RANK=1" in envb.split(b"\0"):
                    victim = int(pid)
        assert victim is not None, "rank 1 not found"
        while not out.exists() and time.time() < deadline + 60:   # training is under way: epoch 1 was written
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()[1][-2000:]
        os.kill(victim, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        t0 = time.time()
        stdout, stderr = p.communicate(timeout=120)
        waited = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0 and waited < 60, (p.returncode, waited)
    said = stdout + stderr
    if fault == "killed":
        assert "BAD TERMINATION" in said and "signal 9" in said, said[-2000:]
    else:
        assert re.search(r"error: rank 0: the (step's allreduce of the updates|evaluation|replica check) "
                         r"(did not complete within 15 s|failed)", stderr), said[-2000:]


def test_a_sweep_over_two_ranks_writes_the_serial_results(tmp_path):
    flags = ["--dataset", "synthetic", "--epochs", "1", "--methods", "bp,fa,dfa", "--align-every", "0", "--",
             "--train-limit", "64", "--test-limit", "32", "--hidden", "8"]
    serial, par = tmp_path / "serial", tmp_path / "par"
    r1 = subprocess.run([sys.executable, "-m", "validation.fmnist_mlp_methods", "--out-dir", str(serial), *flags],
                        capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert r1.returncode == 0, r1.stderr
    r2 = mpirun(2, ["-m", "validation.fmnist_mlp_methods", "--mpi", "--out-dir", str(par), *flags])
    assert r2.returncode == 0, r2.stderr

    def table(path):   # results.md without the seconds column (wall time differs)
        rows = []
        for ln in (path / "results.md").read_text().splitlines():
            if ln.startswith("|"):
                cells = [c.strip() for c in ln.strip("|").split("|")]
                rows.append(cells[:3])
        return rows

    assert table(par) == table(serial) and len(table(serial)) >= 5
    for name in ("bp", "fa", "dfa"):
        a, b = read_run(par / f"{name}.h5")[2], read_run(serial / f"{name}.h5")[2]
        assert max_rel(a["params"], b["params"]) == 0.0   # the same serial run, on another rank


_NCCL_SCRIPT = """
import sys
import numpy as np
from tests import _strictxp as S
from ssaref import distributed
xp = S.install()
comm = distributed.init("mpi", 60.0, xp=xp)           # the fake xp.cuda: one device, selected per local rank
flat = S.device(np.arange(4.0) + comm.rank)
out = comm.allreduce_sum(flat, "test")
assert isinstance(out, S.StrictArray), type(out)
from cupy.cuda import nccl
line = f"rank {comm.rank} nccl.available {nccl.available} sum {out.get().tolist()} nccl {comm._nccl}\\n"
sys.stdout.write(line); sys.stdout.flush()   # one write per rank: print()'s pieces interleave across ranks
"""


def test_device_buffers_fall_back_to_host_staging_when_cupy_has_no_nccl():
    """pip's CuPy without libnccl imports ``cupy.cuda.nccl`` with ``available = False`` (its functions missing):
    the allreduce of a device buffer stages through the host instead of failing in ``get_unique_id``.  Runs the
    real ``cupy.cuda.nccl`` of this machine (no GPU needed), two ranks, the stand-in's arrays and fake device."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl
    except ImportError as exc:
        if os.environ.get("SSAREF_REQUIRE_NVRTC") == "1":
            pytest.fail(f"SSAREF_REQUIRE_NVRTC=1 but cupy is missing ({exc})")
        pytest.skip(f"needs cupy installed (the gpu extra; no GPU needed): {exc}")
    if nccl.available:
        pytest.skip("this CuPy has NCCL: the fallback is not what runs")
    r = mpirun(2, ["-W", "ignore", "-c", _NCCL_SCRIPT], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} nccl.available False sum [1.0, 3.0, 5.0, 7.0] nccl False" in r.stdout, r.stdout
