"""Every learning rule on the paper's 3-layer MLP (784-256-256-10), Fashion-MNIST, one seed.

The analogue of the paper's Figure 4 / Table 4 comparison on a dataset that ships with Debian
(CIFAR-10 works the same way with ``--dataset cifar10`` on a machine that has it).

    python validation/fmnist_mlp_methods.py --epochs 10 --out-dir runs/fmnist_mlp
    python validation/fmnist_mlp_methods.py --methods bp,dfa --epochs 2      # a subset

Writes one run file per method (``<out-dir>/<method>.h5``), ``results.md`` (test accuracy per method, the DFA
gradient-alignment angles of the first and last epoch, final ranks, parameter counts and last-epoch update
norms of the SVD methods) and ``error_curves.png`` (test error per epoch, the paper's Figure 4 layout).
Each run is resumed from its file if it exists, so an interrupted sweep can simply be started again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from ssaref import train as train_mod
from ssaref.runlog import read_run

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
}


def run_one(name, args):
    flags, _ = METHODS[name]
    method = name.split("-paper")[0].split("-relu")[0]
    out = Path(args.out_dir) / f"{name}.h5"
    argv = ["--method", method, "--model", "mlp", "--dataset", args.dataset, "--epochs", str(args.epochs),
            "--seed", str(args.seed), "--no-progress", "--out", str(out)] + flags
    if args.align_every and method in ("dfa", "ssa"):
        argv += ["--align-every", str(args.align_every)]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if out.exists():
        _, metrics, ck = read_run(out)
        if ck is not None and int(ck["epoch"]) >= args.epochs:
            return out
        argv += ["--resume", str(out)]
    print(f"== {name}: python -m ssaref.train {' '.join(argv)}", flush=True)
    rc = train_mod.main(argv)
    if rc != 0:
        print(f"   {name} stopped with exit code {rc}; its table row shows the last completed epoch", flush=True)
    return out


def _fmt(v, f="{:.1f}"):
    return "nan" if v is None or not np.isfinite(v) else f.format(v)


def summarise(names, args):
    rows, curves, extra = [], {}, []
    for name in names:
        path = Path(args.out_dir) / f"{name}.h5"
        if not path.exists():
            continue
        config, m, ck = read_run(path)
        acc = m["test_acc"]
        curves[name] = 100 * (1 - acc)
        secs = float(np.mean(m["seconds"])) if "seconds" in m else float("nan")
        rows.append(f"| {METHODS[name][1]} | {len(acc)} | {100 * acc[-1]:.2f} | {100 * acc.max():.2f} | "
                    f"{secs:.1f} |")
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
    table = ("| method | epochs | final test acc (%) | best test acc (%) | s/epoch |\n"
             "| --- | --- | --- | --- | --- |\n" + "\n".join(rows))
    text = (f"# {args.dataset}, mlp 784-256-256-10, seed {args.seed}\n\n{table}\n" + "\n".join(extra) + "\n")
    out = Path(args.out_dir) / "results.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(text)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, err in curves.items():
            ax.plot(np.arange(1, len(err) + 1), err, label=METHODS[name][1])
        ax.set_xlabel("epoch"), ax.set_ylabel("test error (%)"), ax.legend(fontsize=7)
        ax.set_title(f"{args.dataset}, 3-layer MLP")
        png = Path(args.out_dir) / "error_curves.png"
        fig.savefig(str(png) + ".tmp.png", dpi=120, bbox_inches="tight")
        os.replace(str(png) + ".tmp.png", png)
    except Exception as exc:  # plotting is a convenience; the table is the result
        print(f"(no plot: {exc})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--align-every", type=int, default=50)
    p.add_argument("--out-dir", default="runs/fmnist_mlp")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",")]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    for name in names:
        run_one(name, args)
    summarise(names, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
