"""Figure 5 of the paper, measured: the cost of training and of inference per method and model.

Per method (BP, DFA, SSA, SVD-BP) and model (mlp, lenet, smallconv, vgg13, resnet20):

* **training step time**: median of ``--repeats`` steps (Adam, batch ``--batch-size``, float32), the methods of a
  model alternating step by step in one process (as ``ssaref.bench``), so a busy machine's drift hits all alike;
  also as a ratio to BP's step;
* **peak training memory** (measured): ``ssaref.bench.measure_memory``, a fresh process per method and model,
  the resident-set high-water mark over optimiser/rule set-up and a few steps above the built model (``peak``),
  and that of one step above the state kept between steps (``step``: activations, caches, gradients);
* **auxiliary overhead** (analytic; PredSim, AugLocal): the forward FLOPs per example and the parameters of the
  rule's auxiliary networks (``Rule.aux_networks``), which training runs and inference drops;
* **training FLOPs** (counted): ``ssaref.cost.step_cost`` of one step at ``--batch-size`` divided by the batch
  (the rule's own passes, auxiliary networks included, the SVD rules' per-factor products at the same ranks as the
  inference column, the optimiser; the convention in docs/internals.md, "Cost model"; PredSim's B x B similarity
  matrices are not counted);
* **inference FLOPs and parameters** (analytic): 2 x the multiply-adds per example of the weight layers (Linear,
  Conv2d and their SVD forms; BN, activations and pooling are not counted) and the trained numbers (BN's gamma and
  beta included).  BP and DFA train dense layers.  SSA and SVD-BP hold every weight as ``U diag(s) V^T``: at the
  ranks of a run file given with ``--runs`` (the checkpoint's ``s`` lengths, i.e. after the rank reduction of
  section 4.4), else at full rank (what the factored form costs before any reduction; the figure says which).

The input is each model's data set in the paper: 1x28x28 (Fashion-MNIST) for mlp and lenet, 3x32x32 (CIFAR-10)
for smallconv, vgg13 and resnet20.

    python -m validation.fig5_cost                                  # all models and methods, full size
    python -m validation.fig5_cost --runs runs/table1_smallconv     # ranks after reduction from run files
    python -m validation.fig5_cost --quick                          # smoke test: narrow nets, batch 16

Writes ``<out-dir>/results.md`` (the table) and ``<out-dir>/fig5_cost.png`` (four panels); exit 0, or 2 with one
``error:`` line for a bad argument or an unreadable run file (before anything is measured).
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ssaref.bench import measure_memory, ssaref_engine
from ssaref.cli import OneLineParser, check_output_path, positive, run_main
from ssaref.nn import build_model
from ssaref.nn.containers import leaf_shapes
from ssaref.runlog import read_run
from ssaref.threads import apply_threads, blas_info, default_threads, threads_arg
from validation import _sweep as sw

SCRIPT = "fig5_cost"
METHODS = ["bp", "dfa", "ssa", "svd-bp", "predsim", "auglocal"]
LABELS = {"bp": "BP", "dfa": "DFA", "ssa": "SSA", "svd-bp": "SVD-BP", "predsim": "PredSim", "auglocal": "AugLocal"}
MODELS = ["mlp", "lenet", "smallconv", "vgg13", "resnet20"]
SVD_METHODS = {"ssa", "svd-bp"}
INPUT = {"mlp": (1, 28, 28), "lenet": (1, 28, 28)}       # the others: CIFAR-10, 3x32x32
DATASET_SHAPE = {"fashion-mnist": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10), "synthetic": ((1, 28, 28), 10),
                 "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
QUICK = {"batch": 16, "repeats": 2, "warmup": 1, "width_mult": 0.25}


def input_shape(model):
    return INPUT.get(model, (3, 32, 32))


def model_options(model, width_mult):
    """``build_model`` options: conv nets take ``width_mult`` (the MLP keeps its widths)."""
    return {} if model == "mlp" or width_mult == 1.0 else {"width_mult": width_mult}


# ----------------------------------------------------------------------------------------------- analytic cost
def inference_cost(model, in_shape, ranks=None, svd=False):
    """``(flops, params, layers)`` of one inference forward pass per example.

    ``flops`` = 2 x multiply-adds of the weight layers; ``params`` = every trained number.  Dense layers of the
    (dense) ``model`` are costed as they are, or with ``svd`` in the factored form ``U diag(s) V^T`` of
    ``ssaref.nn.svd_layers``: Linear (m, n) at rank r: ``r (m + n)`` MACs, ``r (m + n + 1)`` numbers; Conv2d
    (N, C, kh, kw) at rank r (``K'`` of shape (N kw, C kh), the height pass then the width pass):
    ``r C kh Ho W + N r kw Ho Wo`` MACs, ``r (N kw + C kh + 1)`` numbers; plus the bias.  ``ranks``: layer key
    prefix -> r (default: full rank ``min`` of the two sides).  ``layers``: ``[(prefix, rank or None, macs)]``.
    """
    rows, params = [], 0
    for key, layer, shape, new in leaf_shapes(model, in_shape):
        kind = layer.kind
        bias = int(layer.params["b"].size) if "b" in layer.params else 0
        if kind == "linear":
            m, n = (int(v) for v in layer.params["W"].shape)
            if svd:
                r = int((ranks or {}).get(key, min(m, n)))
                macs, count = r * (m + n), r * (m + n + 1)
            else:
                r, macs, count = None, m * n, m * n
            rows.append((key, r, macs))
            params += count + bias
        elif kind == "conv2d":
            N, C, kh, kw = (int(v) for v in layer.params["W"].shape)
            Ho, Wo = int(new[1]), int(new[2])
            if svd:
                r = int((ranks or {}).get(key, min(N * kw, C * kh)))
                macs = r * C * kh * Ho * int(shape[2]) + N * r * kw * Ho * Wo
                count = r * (N * kw + C * kh + 1)
            else:
                r, macs, count = None, N * C * kh * kw * Ho * Wo, N * C * kh * kw
            rows.append((key, r, macs))
            params += count + bias
        else:
            params += sum(int(v.size) for v in layer.params.values())   # BatchNorm's gamma, beta
    return 2 * sum(m for _, _, m in rows), params, rows


def ranks_from_run(path):
    """``(config, {layer prefix: rank})`` of a run file: the lengths of its checkpoint's ``<prefix>.s``."""
    config, _, ckpt = read_run(path)
    if not ckpt or "params" not in ckpt:
        raise ValueError(f"run file {path} has no checkpoint to read the ranks from")
    ranks = {k[:-2]: int(np.asarray(v).shape[0]) for k, v in ckpt["params"].items() if k.endswith(".s")}
    return config, ranks


def collect_runs(paths):
    """``{(method, model): (path, ranks, config)}`` from run files and folders of run files (``*.h5``).  The first
    file of a (method, model) counts; the others are listed in ``results.md`` as ignored."""
    found, ignored = {}, []
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(p.glob("*.h5"))
        elif p.exists():
            files.append(p)
        else:
            raise ValueError(f"--runs: {p} does not exist")
    for f in files:
        config, ranks = ranks_from_run(f)
        key = (str(config.get("method")), str(config.get("model")))
        if key in found:
            ignored.append(str(f))
            continue
        found[key] = (str(f), ranks, config)
    return found, ignored


def analytic(method, model, width_mult, runs, batch=128):
    """``{"flops", "params", "rank_source", "input", "aux_flops", "aux_params", "train_flops"}`` of ``method`` on
    ``model`` (see ``inference_cost``, ``aux_cost``, ``train_cost``)."""
    svd = method in SVD_METHODS
    run = runs.get((method, model)) if svd else None
    shape, classes, opts = input_shape(model), 10, model_options(model, width_mult)
    source = "dense" if not svd else "full rank"
    ranks = None
    if run is not None:
        path, ranks, config = run
        shape, classes = DATASET_SHAPE.get(str(config.get("dataset")), (shape, classes))
        wm = float(config.get("width_mult") or 1.0)
        opts = model_options(model, wm)
        source = f"run file {Path(path).name}"
    dense = build_model(model, shape, classes, dtype=np.float32, seed=0, **opts)
    flops, params, layers = inference_cost(dense, shape, ranks, svd)
    aux_flops, aux_params = aux_cost(method, dense)
    rank_of = {key: r for key, r, _ in layers} if svd and ranks else None
    train = train_cost(method, build_model(model, shape, classes, dtype=np.float32, seed=0, **opts), shape, batch,
                       rank_of)
    return {"flops": flops, "params": params, "rank_source": source, "input": "x".join(map(str, shape)),
            "ranks": [r for _, r, _ in layers] if svd else None, "aux_flops": aux_flops, "aux_params": aux_params,
            "train_flops": train}


def train_cost(method, dense, shape, batch, ranks=None):
    """Training FLOPs per example: ``ssaref.cost.step_cost`` of one step of ``method`` at ``batch`` (forward,
    the rule's error transport and weight gradients, its auxiliary networks, the SVD rules' per-factor products at
    ``ranks`` -- layer key -> rank, default full -- and the optimiser), divided by ``batch``: the per-step work
    (optimiser, projections) spread over the batch's examples."""
    from ssaref.cost import step_cost
    from ssaref.nn.svd_layers import svd_layers_of
    from ssaref.run import build_run

    run = build_run(dense, method, np.random.default_rng(0), optimizer=None)
    for key, layer in svd_layers_of(run.model) if ranks else []:
        if key in ranks and ranks[key] < layer.rank:
            layer.truncate(np.arange(ranks[key]))
    return sum(o["flops"] for o in step_cost(run.model, method, batch, shape, rule=run.rule)) / batch


def aux_cost(method, dense):
    """``(forward FLOPs per example, parameters)`` of the auxiliary networks ``method`` trains ``dense`` with
    (``Rule.aux_networks``; none for the other rules): training cost only, inference drops them."""
    from ssaref.rules import build_rule

    rule = build_rule(method)
    rule.setup(dense, np.random.default_rng(0))
    flops = params = 0
    for aux in rule.aux_networks():
        f, p, _ = inference_cost(aux.net, aux.in_shape)
        flops, params = flops + f, params + p
    return flops, params


# ----------------------------------------------------------------------------------------------- measurement
def time_steps(model, methods, *, batch, repeats, warmup, width_mult, seed=0):
    """Median ms of one training step of every method on ``model``, alternating method by method."""
    shape = input_shape(model)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    steps = {m: ssaref_engine(model, shape, m, x, y, xp=np, seed=seed, **model_options(model, width_mult))[1]
             for m in methods}
    times = {m: [] for m in methods}
    for i in range(warmup + repeats):
        for m in methods:
            t0 = time.perf_counter()
            steps[m]()
            if i >= warmup:
                times[m].append(time.perf_counter() - t0)
    return {m: 1e3 * statistics.median(v) for m, v in times.items()}


# ----------------------------------------------------------------------------------------------- report
def _fmt(v, spec=".1f"):
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def results_md(args, rows, ignored, info):
    lines = ["# Figure 5, measured: training and inference cost per method and model", "",
             f"Batch {args.batch_size}, float32, Adam, step time = median of {args.repeats} steps after "
             f"{args.warmup} warm-up steps, the methods of a model alternating step by step in one process; "
             f"threads {info['threads']} ({', '.join(info['pools'])}); "
             + ("; ".join(f"{p.get('internal_api')} {p.get('version', '')}" for p in blas_info()
                          if p.get("user_api") == "blas") or "BLAS unknown")
             + (f"; **--quick** (width x{args.width_mult}, batch {args.batch_size}): not the paper's sizes"
                if args.quick else "") + ".", "",
             "Peak memory (MiB, measured in a fresh process per method and model): `peak` = resident-set "
             "high-water mark over set-up and the first steps above the built model; `step` = that of one "
             "step above the state kept between steps.  Inference: FLOPs = 2 x multiply-adds per example of the "
             "weight layers; params = trained numbers.  SSA / SVD-BP are costed in their factored form "
             "`U diag(s) V^T` at the ranks of `rank source` (a run file's checkpoint, after rank reduction, or "
             "full rank when no run file was given).  Auxiliary overhead (PredSim, AugLocal): `aux MFLOP` = forward "
             "FLOPs per example of the auxiliary networks, `aux params` their parameters (training only; step time "
             "and memory include them); `train MFLOP` = the counted FLOPs of one training step "
             "(`ssaref.cost.step_cost`, auxiliary networks and optimiser included) per example.", "",
             "| model | input | method | step ms | vs BP | peak MiB | step MiB | train MFLOP | aux MFLOP | "
             "aux params | inference MFLOP | params | rank source |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {LABELS[r['method']]} | {_fmt(r['step_ms'])} | "
                     f"{_fmt(r['vs_bp'], '.2f')} | {_fmt(r['peak_mib'], '.0f')} | {_fmt(r['step_mib'], '.0f')} | "
                     f"{r['train_flops'] / 1e6:.2f} | {r['aux_flops'] / 1e6:.2f} | {r['aux_params']:,} | "
                     f"{r['flops'] / 1e6:.2f} | {r['params']:,} | {r['rank_source']} |")
    for r in rows:
        if r.get("memory_error"):
            lines.append(f"\nmemory of {r['method']} on {r['model']}: {r['memory_error']}")
    if ignored:
        lines.append("\nRun files ignored (a file of the same method and model came first): "
                     + ", ".join(f"`{p}`" for p in ignored))
    return "\n".join(lines) + "\n"


def plot(rows, path, methods, models):
    plt = sw.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [("step_ms", "training step (ms)"), ("peak_mib", "peak training memory (MiB)"),
              ("flops", "inference FLOPs / example"), ("params", "parameters")]
    width = 0.8 / max(1, len(methods))
    by = {(r["model"], r["method"]): r for r in rows}
    for ax, (key, title) in zip(axes, panels):
        for j, m in enumerate(methods):
            vals = [by.get((mo, m), {}).get(key) for mo in models]
            vals = [np.nan if v is None else float(v) for v in vals]
            ax.bar(np.arange(len(models)) + (j - (len(methods) - 1) / 2) * width, vals, width, label=LABELS[m])
        ax.set_xticks(np.arange(len(models)))
        ax.set_xticklabels(models, rotation=30)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
    srcs = sorted({r["rank_source"] for r in rows if r["method"] in SVD_METHODS})
    note = "SSA/SVD-BP ranks: " + (", ".join(srcs) if len(srcs) <= 2 else "from run files / full rank")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Figure 5, measured (ssaref, CPU): {note}", fontsize=10)
    fig.tight_layout()
    return sw.save_figure(fig, path)


# ----------------------------------------------------------------------------------------------- command line
def parse(argv=None):
    p = OneLineParser(prog=f"python -m validation.{SCRIPT}", description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    p.add_argument("--runs", nargs="*", default=[], help="run files or folders of them (*.h5): SSA / SVD-BP "
                                                          "ranks after reduction")
    p.add_argument("--batch-size", type=positive(int), default=None, help="default 128 (16 with --quick)")
    p.add_argument("--repeats", type=positive(int), default=None, help="default 5 (2 with --quick)")
    p.add_argument("--warmup", type=positive(int), default=None, help="default 2 (1 with --quick)")
    p.add_argument("--width-mult", type=positive(float), default=None,
                   help="channel multiplier of the conv nets (default 1; 0.25 with --quick)")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help=f"BLAS/OpenMP threads (default: the cores available, here {default_threads()})")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    p.add_argument("--quick", action="store_true", help="smoke test: narrow nets, batch 16, 2 repeats")
    p.add_argument("--out-dir", default=None, help=f"default runs/{SCRIPT} (runs/{SCRIPT}_quick with --quick)")
    args = p.parse_args(argv)
    args.methods = sw.pick_methods(p, args.methods, METHODS, unique=True)
    args.models = sw.pick_models(p, args.models, MODELS)
    q = args.quick
    args.batch_size = args.batch_size or (QUICK["batch"] if q else 128)
    args.repeats = args.repeats or (QUICK["repeats"] if q else 5)
    args.warmup = args.warmup or (QUICK["warmup"] if q else 2)
    args.width_mult = args.width_mult or (QUICK["width_mult"] if q else 1.0)
    args.out_dir = args.out_dir or f"runs/{SCRIPT}{'_quick' if q else ''}"
    check_output_path(args.out_dir, flag="--out-dir", kind="dir")
    args.found, args.ignored = collect_runs(args.runs)      # unreadable run files: exit 2 before measuring
    return args


def _main(argv):
    args = parse(argv)
    info = apply_threads(args.threads)
    rows = []
    for model in args.models:
        times = time_steps(model, args.methods, batch=args.batch_size, repeats=args.repeats, warmup=args.warmup,
                           width_mult=args.width_mult)
        for m in args.methods:
            row = {"model": model, "method": m, "step_ms": times[m],
                   "vs_bp": times[m] / times["bp"] if "bp" in times else None,
                   "peak_mib": None, "step_mib": None}
            if not args.no_memory:
                mem = measure_memory(m, model, input_shape(model), batch=args.batch_size, threads=info["threads"],
                                     options=model_options(model, args.width_mult))
                row["peak_mib"], row["step_mib"] = mem.get("peak_mib"), mem.get("step_mib")
                row["memory_error"] = mem.get("error")
            row.update(analytic(m, model, args.width_mult, args.found, args.batch_size))
            rows.append(row)
            print(f"{model:<10} {LABELS[m]:<7} step {times[m]:9.1f} ms  peak {_fmt(row['peak_mib'], '.0f'):>6} MiB  "
                  f"inference {row['flops'] / 1e6:10.2f} MFLOP  params {row['params']:>10,}  ({row['rank_source']})",
                  flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = results_md(args, rows, args.ignored, info)
    if not args.no_plot:
        png = plot(rows, out / f"{SCRIPT}.png", args.methods, args.models)
        text += f"\nFigure: `{png.name}`\n"
    path = sw.write_atomic(out / "results.md", text)
    print(f"wrote {path}")
    return 0


def main(argv=None):
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
