"""``validation/results/bench_cpu.md``: the CPU benchmark's runs (``python -m ssaref.bench``) and the before/after
tables of issue 26, regenerated from the runs' JSON files.

Two subcommands::

    # the runs: every suite, twice on this checkout, once on the "before" commit's checkout (a worktree)
    python -m validation.bench_cpu run --label after-1 --out runs/bench
    python -m validation.bench_cpu run --label after-2 --out runs/bench --no-memory
    python -m validation.bench_cpu run --label before --out runs/bench --checkout ../pin-before --before
    # the report
    python -m validation.bench_cpu report --out runs/bench --markdown validation/results/bench_cpu.md

Each run calls ``python -m ssaref.bench`` of its checkout in a subprocess (``--threads 2`` unless given), one
suite after another: a quiet machine is the caller's job (the load average at each run's start and end is in its
JSON and in the report).  ``--before`` spells the suites for a checkout that predates the bench's labelled
variants (``ssa:epochs=10``) and ``--conv-save``: its SSA/SVD-BP rows are the rules at their build ranks, and it
has no convolution-memory suite (its convolutions kept the column matrix).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SMALL = "mlp,lenet,convnet"
LARGE = "smallconv,vgg13,resnet20,resnet32,resnet56,resnet18"
SVD_MODELS = "mlp,lenet,smallconv"
# SSA and SVD-BP at the untrained model's full rank and at the ranks their default schedules reach (10 epochs)
SVD_METHODS = "bp,ssa,ssa:epochs=10,svd-bp,svd-bp:epochs=10"
SUITES = {
    "bp-small": ["--models", SMALL, "--method", "bp", "--repeats", "20"],
    "bp-large": ["--models", LARGE, "--method", "bp", "--repeats", "5"],
    "svd": ["--models", SVD_MODELS, "--method", SVD_METHODS, "--statistic", "mean", "--repeats", "20"],
    "convmem": [
        "--models",
        "smallconv,vgg13,resnet20",
        "--method",
        "bp,ssa,svd-bp",
        "--conv-save",
        "both",
        "--repeats",
        "5",
    ],
}
BEFORE = {  # the same suites in the spelling of a bench without labelled variants and --conv-save
    "bp-small": SUITES["bp-small"],
    "bp-large": SUITES["bp-large"],
    "svd": ["--models", SVD_MODELS, "--method", "bp,ssa,svd-bp", "--statistic", "mean", "--repeats", "20"],
}


def run(args):
    out = Path(args.out) / args.label
    out.mkdir(parents=True, exist_ok=True)
    suites = BEFORE if args.before else SUITES
    names = list(suites) if args.suites == "all" else args.suites.split(",")
    for name in names:
        if name not in suites:
            raise SystemExit(f"error: --suites: unknown suite {name!r}; choose from {', '.join(suites)}")
    for name in names:
        cmd = [
            sys.executable,
            "-m",
            "ssaref.bench",
            *suites[name],
            "--threads",
            str(args.threads),
            "--json",
            str((out / f"{name}.json").resolve()),
            "--markdown",
            str((out / f"{name}.md").resolve()),
            "--overwrite",
        ]
        if args.no_memory:
            cmd.append("--no-memory")
        print(f"[{args.label}] {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=args.checkout, check=True)
        (out / f"{name}.cmd").write_text(" ".join(["python", *cmd[1:]]) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m validation.bench_cpu", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run the suites on a checkout")
    r.add_argument("--label", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--checkout", default=".")
    r.add_argument("--before", action="store_true", help="the suites as a bench before issue 26 spells them")
    r.add_argument("--suites", default="all")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--no-memory", action="store_true")
    q = sub.add_parser("report", help="write the markdown report from the runs' JSON files")
    q.add_argument("--out", required=True)
    q.add_argument("--markdown", required=True)
    q.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.what == "run":
        run(args)
    else:
        report(args)
    return 0


def report(args):
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(main())
