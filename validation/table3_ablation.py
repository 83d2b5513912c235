"""Table 3 of the paper on this benchmark: SSA with one component removed at a time (issue 10, point 9).

The paper's Table 3 (CIFAR-10, by its 92.70 % full-SSA figure the VGG-13 of Table 2) removes the cross-entropy,
alignment and orthogonality terms.  Here, on Fashion-MNIST mlp 784-256-256-10, 10 epochs, 5 seeds, starting from
``--base`` (the chosen SSA default: the engine's defaults, or the flags the study chose, e.g.
``--base "--orthogonality landing --beta 0.01 --gamma 0.1 --rank-reading once"``), each row removes one piece:

| row | flags added to the base |
| --- | --- |
| full SSA | (none) |
| no cross-entropy term (eq. (6)'s alpha) | ``--alpha 0`` |
| no alignment term (eq. (8)) | ``--beta 0`` |
| no orthogonality term (eq. (9)) | ``--gamma 0`` (what holds U, V then is the base's retraction, or with a
  landing base only the landing safeguard, which stops the steps that would leave the eps ball) |
| no orthogonality term, retraction or landing | ``--gamma 0 --orthogonality retract --retraction none`` (the
  paper's own "no orthogonality regularizer": it has no retraction) |
| no Hoyer term (section 4.4) | ``--hoyer 0`` |
| no rank reduction (section 4.4) | ``--rank-schedule none`` |
| no tangent projection (eqs. (12)-(13)) | ``--projection none`` |

Every row: final-epoch test accuracy (and validation accuracy with ``--val-split``), mean ± sample std over the
seeds, parameter count and inference FLOPs after rank reduction (``svd_total_params``, ``svd_total_flops``),
seconds per epoch, next to the paper's CIFAR-10 column (accuracy %, FLOPs in billions; "—" where the paper has
no such row).  The two benchmarks differ (data set, model), so compare the *drops*, not the numbers.

    python -m validation.table3_ablation                                   # full scale: 8 rows x 5 seeds
    python -m validation.table3_ablation --base "--orthogonality landing --gamma 0.1"
    python -m validation.table3_ablation --quick                           # smoke test: synthetic data, seconds
    python -m validation.table3_ablation --model lenet --lr 3e-4           # on a conv net (issue 21)

``--model lenet`` (any ``ssaref.train`` model) runs the same rows on that model (default output folder
``runs/table3_ablation_<model>``); its table then also shows the MLP column of ``--mlp-results`` (default the
committed ``validation/results/table3_ablation.md``, rows matched by their flags).

Writes ``<out-dir>/<row>-seed<s>.h5`` and ``<out-dir>/results.md``; resumes / skips finished runs.  Flags after
a lone ``--`` go to every ``ssaref.train`` run.  Exit codes: 0, 1 (a run failed), 2 (bad arguments).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssaref.rules import build_rule
from validation import _sweep as sw
from validation.ssa_study import QUICK_FLAGS, read_result

SCRIPT = "table3_ablation"
MLP_RESULTS = Path(__file__).resolve().parent / "results" / "table3_ablation.md"

# Table 3 of the paper (CIFAR-10): component removed -> (accuracy %, FLOPs in billions)
PAPER_TABLE3 = {"full": (92.70, 0.14), "no-ce": (27.05, 0.133), "no-align": (83.12, 0.119),
                "no-ortho": (85.44, 0.112)}


@dataclass
class Row:
    key: str
    label: str
    flags: list


def rows(base: list[str]) -> list[Row]:
    handling = _last_value(base, "--orthogonality") or str(build_rule("ssa").options["orthogonality"])
    held = {"landing": "only the landing safeguard holds U, V",
            "penalty": "nothing else holds U, V: the base has no retraction"}.get(handling,
                                                                                 "the base's retraction remains")
    no_handling = ["--orthogonality", "retract", "--retraction", "none"]
    return [
        Row("full", "full SSA (the base)", []),
        Row("no-ce", "no cross-entropy term (alpha 0)", ["--alpha", "0"]),
        Row("no-align", "no alignment term (beta 0)", ["--beta", "0"]),
        Row("no-ortho", f"no orthogonality term (gamma 0; {held})", ["--gamma", "0"]),
        Row("no-ortho-handling", "no orthogonality term, retraction or landing", ["--gamma", "0"] + no_handling),
        Row("no-hoyer", "no Hoyer term (hoyer 0)", ["--hoyer", "0"]),
        Row("no-rank", "no rank reduction (rank schedule none)", ["--rank-schedule", "none"]),
        Row("no-projection", "no tangent projection (projection none)", ["--projection", "none"]),
    ]


def _last_value(flags, name):
    val = None
    for i, f in enumerate(flags):
        if f == name and i + 1 < len(flags):
            val = flags[i + 1]
        elif f.startswith(name + "="):
            val = f.split("=", 1)[1]
    return val


def parse_args(argv=None):
    own, extra = sw.split_passthrough(argv)
    p = sw.ArgParser(prog=f"python -m validation.{SCRIPT}", description=__doc__.splitlines()[0])
    p.add_argument("--base", default="", help="SSA flags of the chosen default (one quoted string)")
    p.add_argument("--dataset", default=None, help="default fashion-mnist (synthetic with --quick)")
    p.add_argument("--model", default="mlp", help="model (default mlp; e.g. lenet, convnet)")
    p.add_argument("--mlp-results", default=str(MLP_RESULTS),
                   help="results.md of the mlp ablation shown next to another model's rows (default the committed one)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--backend", default="auto", choices=sw.BACKENDS)
    p.add_argument("--epochs", type=sw.positive_int, default=None, help="default 10 (1 with --quick)")
    p.add_argument("--seeds", default=None, help="default 0-4 (0 with --quick)")
    p.add_argument("--val-split", type=float, default=0.0, help="held-out fraction (also report val accuracy)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=sw.positive_int, default=128)
    p.add_argument("--rows", default=None, help="comma-separated subset of the row keys (full, no-ce, no-align, "
                   "no-ortho, no-ortho-handling, no-hoyer, no-rank, no-projection)")
    p.add_argument("--out-dir", default=None, help=f"default runs/{SCRIPT} (runs/{SCRIPT}_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: synthetic data, tiny runs, one seed")
    sw.add_mpi_options(p)
    args = p.parse_args(own)
    args.extra = extra
    q = args.quick
    args.dataset = args.dataset or ("synthetic" if q else "fashion-mnist")
    if len(sw.check_datasets(p, args.dataset)) != 1:
        p.error(f"--dataset: one data set, got {args.dataset!r}")
    from ssaref.nn import MODELS

    if args.model not in MODELS:
        p.error(f"--model: unknown model {args.model!r}; choose from {','.join(sorted(MODELS))}")
    args.epochs = args.epochs or (1 if q else 10)
    try:
        args.seeds = sw.parse_seeds(args.seeds or ("0" if q else "0-4"))
        args.base_flags = shlex.split(args.base)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        p.error(str(exc))
    if "--method" in args.base_flags:
        p.error("--base: SSA flags only (the method is ssa)")
    if not 0.0 <= args.val_split < 1.0:
        p.error(f"--val-split must be in [0, 1), got {args.val_split}")
    if not (np.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be > 0, got {args.lr}")
    every = rows(args.base_flags)
    if args.rows is not None:
        want = [k.strip() for k in args.rows.split(",") if k.strip()]
        keys = [r.key for r in every]
        bad = [k for k in want if k not in keys]
        if bad or not want:
            p.error(f"--rows: unknown row {bad[0] if bad else args.rows!r}; choose from {','.join(keys)}")
        every = [r for r in every if r.key in want]
    args.rows = every
    stem = SCRIPT if args.model == "mlp" else f"{SCRIPT}_{args.model}"
    args.out_dir = Path(args.out_dir or (f"runs/{stem}_quick" if q else f"runs/{stem}"))
    return args


def train_argv(row: Row, seed: int, args) -> list[str]:
    argv = ["--method", "ssa", "--model", args.model, "--dataset", args.dataset, "--epochs", str(args.epochs),
            "--seed", str(seed), "--optimizer", "adam", "--lr", repr(float(args.lr)),
            "--batch-size", str(args.batch_size), "--backend", args.backend, "--no-progress"]
    if args.val_split > 0:
        argv += ["--val-split", repr(float(args.val_split))]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    if args.quick:
        quick = list(QUICK_FLAGS)
        if args.model != "mlp":   # --hidden is the MLP's (ssaref.train refuses it on a conv net)
            i = quick.index("--hidden")
            del quick[i:i + 2]
        argv += quick + (["--width-mult", str(sw.QUICK_WIDTH[args.model])] if args.model in sw.QUICK_WIDTH else [])
    return argv + list(args.base_flags) + list(row.flags) + list(args.extra)


def run_all(args) -> dict:
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def one(job):
        row, seed = job
        path = args.out_dir / f"{row.key}-seed{seed}.h5"
        return ((row.key, seed), sw.launch(path, train_argv(row, seed, args), args.epochs, f"{row.key} seed {seed}",
                                           log=lambda m: print(m, flush=True)))

    return sw.map_runs([(row, seed) for row in args.rows for seed in args.seeds], one, args)   # --mpi: over ranks


def _conv_costs(r):
    """A conv net's params / FLOPs as ``conv_claims`` counts them (``fig5_cost.inference_cost`` at the checkpoint's
    ranks: every trained number, 2 x the multiply-adds per example over all output positions), not the per-layer
    r(m+n+1) of the SVD layers, which leaves out a convolution's output positions."""
    from validation.conv_claims import read_result as read_conv

    c = read_conv(r.path, r.epochs, r.seed)
    if c is not None:
        r.params, r.flops = c.params, c.flops
    return r


def mlp_column(path) -> dict:
    """``{flags cell: test acc cell}`` of a committed mlp ablation table (empty when the file is missing)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return {}
    out, cols = {}, None
    for ln in text.splitlines():
        if not ln.startswith("|"):
            cols = None if not ln.strip() else cols
            continue
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if cells[0] == "component removed":
            cols = cells
        elif cols and "flags" in cols and "test acc (%)" in cols and not set(cells[0]) <= {"-", " "}:
            out[cells[cols.index("flags")]] = cells[cols.index("test acc (%)")]
    return out


def report(args, status: dict) -> None:
    mlp = mlp_column(args.mlp_results) if args.model != "mlp" else None
    head = ["component removed", "flags", "seeds", "test acc (%)"] + (["val acc (%)"] if args.val_split else []) + [
        "params", "FLOPs (M)", "s/epoch"] + (["mlp test acc (%)"] if mlp is not None else []) + [
        "paper acc (%)", "paper FLOPs (B)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in args.rows:
        rs = [read_result(args.out_dir / f"{row.key}-seed{s}.h5", args.epochs, s) for s in args.seeds]
        rs = [_conv_costs(r) if args.model != "mlp" else r for r in rs if r is not None]
        paper = PAPER_TABLE3.get(row.key)
        pa = f"{paper[0]:.2f}" if paper else "—"
        pf = f"{paper[1]:g}" if paper else "—"
        flags = "`" + " ".join(row.flags) + "`" if row.flags else "—"
        mcell = [mlp.get(flags, "—")] if mlp is not None else []
        if not rs:
            err = "; ".join(f"seed {k[1]}: {st.error}" for k, st in status.items() if k[0] == row.key and st.rc)
            cells = ["failed: " + err if err else "not run"] + ([""] if args.val_split else []) + ["", "", ""] + mcell
            lines.append(f"| {row.label} | {flags} | — | " + " | ".join(cells) + f" | {pa} | {pf} |")
            continue
        cells = [sw.fmt_mean_std([r.test_acc for r in rs])]
        if args.val_split:
            cells.append(sw.fmt_mean_std([r.val_acc for r in rs]))
        cells += [sw.fmt_num(float(np.mean([r.params for r in rs])), 0),
                  sw.fmt_num(float(np.mean([r.flops for r in rs])) / 1e6, 3),
                  sw.fmt_num(float(np.mean([r.seconds for r in rs])), 1)] + mcell
        lines.append(f"| {row.label} | {flags} | {','.join(str(r.seed) for r in rs)} | " + " | ".join(cells) +
                     f" | {pa} | {pf} |")
    base = "`" + " ".join(args.base_flags) + "`" if args.base_flags else "the engine's SSA defaults"
    text = (f"# Table 3 ablation on {args.dataset}, {args.model}\n\n"
            f"Base: {base}; Adam, lr {args.lr:g}, batch {args.batch_size}, {args.epochs} epoch(s), seeds "
            f"{','.join(map(str, args.seeds))}" + (", **--quick smoke test**" if args.quick else "") +
            (", extra flags: `" + " ".join(args.extra) + "`" if args.extra else "") + "\n\n"
            "Paper: Table 3 (CIFAR-10, accuracy % and FLOPs in billions; other data set and model, so compare the "
            "drops).  ssaref: final-epoch accuracy, mean ± sample std over the seeds; params / FLOPs of the " +
            ("SVD layers after rank reduction, r(m+n+1) per layer (+ biases for params), FLOPs per example." if
             args.model == "mlp" else "model at the checkpoint's ranks (after rank reduction): every trained number, "
             "and 2 x the multiply-adds per example of the weight layers (`validation.fig5_cost.inference_cost`).") +
            (f"  mlp test acc: the same row on Fashion-MNIST mlp 784-256-256-10, from `{Path(args.mlp_results).name}` "
             "(its own base, rate and seeds; rows matched by their flags)." if mlp is not None else "") + "\n\n"
            + "\n".join(lines) + "\n")
    sw.publish(args.out_dir / "results.md", text)


SPEC = sw.Script(parse=parse_args, run=run_all, report=report)


def main(argv=None):
    return sw.run_script(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
