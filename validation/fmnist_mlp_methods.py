"""Every learning rule on the paper's 3-layer MLP (784-256-256-10), Fashion-MNIST, one seed.

The analogue of the paper's Figure 4 / Table 4 comparison on a dataset that ships with Debian
(CIFAR-10 works the same way with ``--dataset cifar10`` on a machine that has it).

    python -m validation.fmnist_mlp_methods --epochs 10 --out-dir runs/fmnist_mlp
    python -m validation.fmnist_mlp_methods --methods bp,dfa --epochs 2      # a subset

Writes one run file per method (``<out-dir>/<method>.h5``), ``results.md`` (test accuracy per method, the DFA
gradient-alignment angles of the first and last epoch, final ranks, parameter counts and last-epoch update
norms of the SVD methods) and ``error_curves.png`` (test error per epoch, the paper's Figure 4 layout).
Each run is resumed from its file if it exists, so an interrupted sweep can simply be started again.
Flags after a lone ``--`` are passed to every ``ssaref.train`` run, last (``-- --train-limit 512``).

Arguments are checked before any run starts (unknown data set or method, ``--epochs`` < 1, negative seed):
one line ``error: ...`` and exit code 2.  A run that stops with a non-zero exit code gets a "failed" row in
``results.md``; the script then prints ``N runs failed: name/seed, ...`` on stderr and exits 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ssaref.cli import nonnegative_int
from ssaref.runlog import RunFileError, read_run
from validation import _sweep as sw

METHODS = {  # method -> (flags, label); learning rates: Adam, the paper's optimiser (section 6)
    "bp": ([], "BP"),
    "fa": ([], "FA"),
    "dfa": ([], "DFA"),
    "usf": ([], "uSF"),
    "brsf": ([], "brSF"),
    "frsf": ([], "frSF"),
    "drtp": (["--activation", "tanh"], "DRTP (tanh, as Frenkel et al.)"),
    "drtp-relu": ([], "DRTP (ReLU)"),
    "pepita": ([], "PEPITA"),
    "svd-bp": ([], "SVD-BP"),
    "ssa": ([], "SSA (default)"),
    "ssa-paper": (["--ssa-variant", "paper"], "SSA (paper-literal)"),
    "predsim": ([], "PredSim"),
    "auglocal": ([], "AugLocal"),
}
ALIGN_LOGGED = {"dfa", "ssa"}  # the sweep entries whose runs log eq. (4) angles with --align-every


def train_argv(name, args, seed=None):
    """The ``ssaref.train`` argv of method ``name`` (without ``--out`` / ``--resume``); ``--`` flags last."""
    flags, _ = METHODS[name]
    method = name.split("-paper")[0].split("-relu")[0]
    seed = args.seed if seed is None else seed
    argv = ["--method", method, "--model", "mlp", "--dataset", args.dataset, "--epochs", str(args.epochs),
            "--seed", str(seed), "--no-progress"] + flags
    if args.align_every and name in ALIGN_LOGGED:
        argv += ["--align-every", str(args.align_every)]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    return argv + list(args.extra)


def run_path(name, args, seed):
    """``<out-dir>/<name>.h5`` for the single ``--seed``; ``<name>-seed<s>.h5`` with ``--seeds``."""
    return Path(args.out_dir) / (f"{name}.h5" if args.seeds is None else f"{name}-seed{seed}.h5")


def run_one(name, args, seed=None) -> sw.RunStatus:
    """Train (or resume, or leave alone) method ``name``; never raises on a failed or crashed run."""
    seed = args.seed if seed is None else seed
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    return sw.launch(run_path(name, args, seed), train_argv(name, args, seed), args.epochs, f"{name} seed {seed}",
                     log=log)


def _fmt(v, f="{:.1f}"):
    return "nan" if v is None or not np.isfinite(v) else f.format(v)


def summarise(names, args, status=None):
    """Write ``results.md`` (and the figure) from the run files; a run that failed in this invocation is a
    "failed" row (or, when it stopped after some epochs, its last epoch with the error in the epochs cell)."""
    status = status or {}
    rows, curves, extra = [], {}, []
    for name in names:
        path = run_path(name, args, args.seed_list[0])
        st = next((status[(name, s)] for s in args.seed_list if (name, s) in status and status[(name, s)].rc), None)
        st = st or status.get((name, args.seed_list[0]))
        failed = st is not None and st.rc != 0
        try:
            config, m, ck = read_run(path) if path.exists() else (None, None, None)
        except RunFileError:
            config = m = None
        if not m or "test_acc" not in m or len(m["test_acc"]) == 0:
            if failed:
                err = (st.error or f"exit code {st.rc}").replace("|", "/")
                rows.append(f"| {METHODS[name][1]} | 0 | failed: {err} | — | — |")
            continue
        acc = m["test_acc"]
        per_seed = [acc]
        for s in args.seed_list[1:]:   # the other seeds' curves (same length only)
            try:
                ms = read_run(run_path(name, args, s))[1]
            except RunFileError:
                continue
            if "test_acc" in ms and len(ms["test_acc"]) == len(acc):
                per_seed.append(ms["test_acc"])
        curves[name] = 100 * (1 - np.mean(per_seed, axis=0))
        secs = float(np.mean(m["seconds"])) if "seconds" in m else float("nan")
        ep = str(len(acc))
        if failed:
            ep += " (failed: " + (st.error or f"exit code {st.rc}").replace("|", "/") + ")"
        rows.append(f"| {METHODS[name][1]} | {ep} | {sw.fmt_mean_std([100 * a[-1] for a in per_seed])} | "
                    f"{sw.fmt_mean_std([100 * a.max() for a in per_seed])} | {secs:.1f} |"
                    + (f" {len(per_seed)} |" if args.seeds is not None else ""))
        if "align.grad_mean" in m:
            cols = config.get("align_layers", [])
            first, last = m["align.grad_mean"][0], m["align.grad_mean"][-1]
            extra.append(f"\n**{METHODS[name][1]}: eq. (4) angle with BP (degrees, mean over the epoch)**\n\n"
                         f"| layer | epoch 1 | epoch {len(acc)} |\n| --- | --- | --- |\n" +
                         "\n".join(f"| {c} | {_fmt(a)} | {_fmt(b)} |" for c, a, b in zip(cols, first, last)))
        if "svd_rank" in m:
            cols = config.get("svd_layers") or [f"layer {i}" for i in range(m["svd_rank"].shape[1])]
            lines = [f"\n**{METHODS[name][1]}: last epoch, per SVD layer**\n",
                     "| layer | rank | params | ‖UᵀU−I‖ | ‖VᵀV−I‖ | ‖ΔU‖ | ‖Δs‖ | ‖ΔV‖ |",
                     "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for j, c in enumerate(cols):
                g = lambda k: m[k][-1][j] if k in m else float("nan")  # noqa: E731
                lines.append(f"| {c} | {int(g('svd_rank'))} | {int(g('svd_params'))} | {g('svd_ortho_U'):.2e} | "
                             f"{g('svd_ortho_V'):.2e} | {g('svd_upd_U'):.3e} | {g('svd_upd_s'):.3e} | "
                             f"{g('svd_upd_V'):.3e} |")
            lines.append(f"\ntotal parameters of the SVD layers: {int(m['svd_total_params'][-1])}"
                         f" (epoch 1: {int(m['svd_total_params'][0])})")
            extra.append("\n".join(lines))
    if args.seeds is None:
        table = ("| method | epochs | final test acc (%) | best test acc (%) | s/epoch |\n"
                 "| --- | --- | --- | --- | --- |\n" + "\n".join(rows))
    else:
        table = ("| method | epochs | final test acc (%, mean ± std over seeds) | best test acc (%) | s/epoch "
                 "(first seed) | seeds |\n| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows))
    settings = "train defaults (Adam, lr 1e-3, batch 128)"
    if args.extra:
        settings += ", extra flags: `" + " ".join(args.extra) + "`"
    seeds = f"seed {args.seed}" if args.seeds is None else "seeds " + ",".join(map(str, args.seed_list))
    text = (f"# {args.dataset}, mlp 784-256-256-10, {seeds}\n\n{settings}\n\n{table}\n" +
            "\n".join(extra) + "\n")
    sw.write_atomic(Path(args.out_dir) / "results.md", text)
    print(text)
    try:
        plt = sw.pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (name, err) in enumerate(curves.items()):  # tab20: 12 methods, no repeated colour
            ax.plot(np.arange(1, len(err) + 1), err, label=METHODS[name][1], color=plt.cm.tab20(i % 20),
                    ls="-" if i % 2 == 0 else "--")
        ax.set_xlabel("epoch"), ax.set_ylabel("test error (%)")
        ax.set_yscale("log")  # SSA paper-literal sits at 90 %, the rest between 10 and 50 %
        if curves:
            ax.legend(fontsize=7)
        ax.set_title(f"{args.dataset}, 3-layer MLP")
        png = Path(args.out_dir) / "error_curves.png"
        sw.save_figure(fig, png)
    except Exception as exc:  # plotting is a convenience; the table is the result
        print(f"(no plot: {exc})")


def parse_args(argv=None):
    """Parse and check the command line (exit 2 with one ``error:`` line); ``args.extra`` = flags after ``--``."""
    argv, extra = sw.split_passthrough(argv)
    p = sw.ArgParser(prog="python -m validation.fmnist_mlp_methods", description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--epochs", type=sw.positive_int, default=10)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="one seed (run files <method>.h5)")
    p.add_argument("--seeds", default=None,
                   help="several seeds, e.g. 0-4 (run files <method>-seed<s>.h5; the table gives mean ± std); "
                        "the detail tables are the first seed's")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--align-every", type=nonnegative_int, default=50, help="0: no alignment tables")
    p.add_argument("--out-dir", default="runs/fmnist_mlp")
    sw.add_mpi_options(p)
    args = p.parse_args(argv)
    args.extra = extra
    try:
        args.seed_list = sw.parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        p.error(f"--seeds: {exc}")
    if len(sw.check_datasets(p, args.dataset)) != 1:
        p.error(f"--dataset: one data set, got {args.dataset!r}")
    args.dataset = args.dataset.strip()
    args.names = sw.pick_methods(p, args.methods, METHODS, unique=True)
    return args


def run_all(args) -> dict:
    """Every selected method, one after the other: ``{(name, seed): RunStatus}``."""
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(name, seed) for name in args.names for seed in args.seed_list]
    return sw.map_runs(jobs, lambda job: (job, run_one(job[0], args, job[1])), args)


SPEC = sw.Script(parse=parse_args, run=run_all, report=lambda args, status: summarise(args.names, args, status))


def main(argv=None):
    return sw.run_script(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
