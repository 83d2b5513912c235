"""Run under ``mpiexec -n N``: for every case, the N-rank data-parallel run and (on rank 0) the 1-rank run of the
same global batch; rank 0 prints one line per case: ``CASE <name> <max relative parameter difference>``.

Usage: mpiexec -n 2 python tests/_mpi_equivalence.py OUT_DIR CASE [CASE ...]
with CASE = ``method:model[:options]`` (options ``adam`` and/or ``syncbn``, joined by ``:``; ``ssa-cut`` is SSA
with a rank cut after the first epoch; the optimizer
is SGD with momentum unless ``adam`` is named: Adam's per-entry normalisation amplifies round-off in the entries
with tiny gradients, so its runs agree to a few 1e-12 instead of 1e-15).
"""
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ssaref import train as train_mod
from ssaref.runlog import read_run

B = 32


def argv_of(case, out, distributed):
    method, model, *opt = case.split(":")
    epochs, limit = 1, 5 * B                       # five steps of the global batch
    extra = []
    if method == "ssa-cut":                        # 2 epochs of 3 steps, ranks halved at the end of epoch 1
        method, epochs, limit = "ssa", 2, 3 * B
        extra = ["--rank-schedule", "epoch", "--reduce-frac", "1.0", "--reduce-to", "0.5"]
    argv = ["--method", method, "--model", model, "--dataset", "synthetic", "--train-limit", str(limit),
            "--test-limit", "64", "--batch-size", str(B), "--epochs", str(epochs), "--dtype", "float64",
            *(["--optimizer", "adam", "--lr", "1e-2"] if "adam" in opt else
              ["--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05"]),
            "--no-progress", "--out", str(out), "--overwrite", "--distributed", distributed] + extra
    if distributed == "mpi":   # ssaref.train refuses --mpi-timeout where it has no effect
        argv += ["--mpi-timeout", "300"]
    if model == "mlp":
        argv += ["--hidden", "24,16"]
    else:
        argv += ["--width-mult", "0.25"]
    if "syncbn" in opt and distributed == "mpi":   # BatchNorm over the global batch
        argv += ["--sync-bn"]
    return argv


def max_rel(a, b):
    return max(float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(b[k]))), 1e-300)) for k in b)


def main():
    out_dir, cases = Path(sys.argv[1]), sys.argv[2:]
    comm = MPI.COMM_WORLD
    for case in cases:
        tag = "_".join(case.split(":")[:2])
        dist, serial = out_dir / f"{tag}_n{comm.size}.h5", out_dir / f"{tag}_n1.h5"
        rc = train_mod.main(argv_of(case, dist, "mpi"))
        if comm.rank == 0:
            assert rc == 0, case
            assert train_mod.main(argv_of(case, serial, "none")) == 0, case
            a, b = read_run(dist)[2], read_run(serial)[2]
            assert a["step"] == b["step"], case
            diff = max(max_rel(a["params"], b["params"]), max_rel(a["buffers"], b["buffers"]) if b["buffers"] else 0)
            if b["rule_state"]:
                diff = max(diff, max_rel(a["rule_state"], b["rule_state"]))
            print(f"CASE {case} {diff:.3e}", flush=True)
        comm.Barrier()


if __name__ == "__main__":
    main()
