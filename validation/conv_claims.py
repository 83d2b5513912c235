"""The paper's claims on convolutional networks (issue 21): every rule on LeNet and convnet, one protocol.

Two phases, every choice on the **validation** split (the last ``--val-split`` 0.1 of the training set, stratified
and seeded, held out in every run), test accuracy reported once, for phase 2:

1. **select** (LeNet, ``--select-epochs`` 3, ``--select-seeds`` 0,1): each rule at every learning rate of ``LRS``
   (1e-4, 3e-4, 1e-3; Adam); the rule's rate is the one with the best mean validation accuracy at the last epoch
   (ties: the smaller rate), chosen only once every (rate, seed) run of the rule has finished;
2. **final** (``--final-epochs`` 10): each rule at its chosen rate; LeNet every rule over ``--final-seeds`` 0-4,
   convnet the reduced set ``CONVNET_RULES`` over ``--convnet-seeds`` 0-2 at LeNet's rates, SmallConv (only with
   ``--models ...,smallconv``) ``SMALLCONV_RULES`` over ``--smallconv-seeds`` / ``--smallconv-epochs``.
   Every final run also records the eq. (4) angles with BP every ``--align-every`` steps and the matrix alignment
   at each epoch end (Figures 2 and 3, drawn from the same run files).

The data order is the same for every rule at a given seed: ``ssaref.train`` draws it (and the validation split)
from the seed alone (``np.random.default_rng(seed + 1)`` on the host), never from the rule.

Rules: BP, FA, KP, DFA, uSF, brSF, frSF, DRTP, SVD-BP, SSA (the engine's default), and the SSA readings of
``SSA_VARIANTS`` (flags in one constant, to follow the default when it changes); PredSim and AugLocal when the
rule registry has them (rows "not implemented" otherwise).

The table: test accuracy (mean ± sample std over seeds), validation accuracy, parameters and inference FLOPs
after rank reduction (``validation.fig5_cost.inference_cost``: 2 x multiply-adds of the weight layers per example;
SVD layers at the ranks of the run's checkpoint), seconds per epoch, the chosen rate, and the paper's CIFAR-10
figure where one exists (Table 4 LeNet as accuracy = 100 - error, Table 1 SmallConv; **CIFAR-10, another data
set**: compare gaps between rules, not the numbers).

    python -m validation.conv_claims --phase select --threads 1            # phase 1 (LeNet, 3 rates x 2 seeds)
    python -m validation.conv_claims --threads 1                           # both phases, then the table
    mpiexec -n 2 python -m validation.conv_claims --mpi                    # the runs spread over 2 ranks
    python -m validation.conv_claims --dataset cifar10 --data-dir DIR --backend cupy   # Table 1 / 4 on CIFAR-10
    python -m validation.conv_claims --quick                               # smoke test, seconds

Writes ``<out-dir>/{select,final}/<dataset>-<model>-<rule>-lr<lr>-seed<s>.h5`` (finished runs are left alone,
partial ones resumed: an interrupted sweep is simply started again), ``<out-dir>/results.md`` and the figures
``fig2_angles.png`` (eq. (4) angle per layer over epochs, seeds as bands) and ``fig3_matrix.png`` (matrix
alignment across depth at the last epoch).  Flags after a lone ``--`` go to every ``ssaref.train`` run.
Exit codes: 0 all runs finished, 1 a run failed (its row says so), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssaref.rules import RULES
from ssaref.runlog import RunFileError
from validation import _sweep as sw
from validation.table1_smallconv import PAPER_TABLE1
from validation.table4_dfa_variants import PAPER_TABLE4_CIFAR10

SCRIPT = "conv_claims"
PHASES = ("select", "final", "all")
LRS = (1e-4, 3e-4, 1e-3)        # issue 21: the rates each rule chooses from (section 6 trains with 1e-4 .. 5e-4)
VAL_SPLIT = 0.1

# The SSA rows: key -> (label, flags).  "ssa" is whatever the engine's default is; the others pin a reading with
# explicit flags, so they keep their meaning when the default changes (change them here if a reading is renamed).
SSA_VARIANTS = {
    "ssa": ("SSA (default)", []),
    "ssa-uncompressed": ("SSA uncompressed (0.2.0 default: no threshold phase, no parity cap)",
                         ["--rank-reading", "none", "--parity", "false", "--beta", "0.01", "--orthogonality",
                          "retract-every"]),
    "ssa-compact": ("SSA compact (parity cap r < mn/(m+n), rank reading every)",
                    ["--parity", "true", "--rank-reading", "every"]),
}
BASELINES = ["bp", "fa", "kp", "dfa", "usf", "brsf", "frsf", "drtp", "svd-bp"]
NEW_BASELINES = ["predsim", "auglocal"]      # issue 22: rows "not implemented" until the registry has them
LABELS = {"bp": "BP", "fa": "FA", "kp": "KP", "dfa": "DFA", "usf": "uSF", "brsf": "brSF", "frsf": "frSF",
          "drtp": "DRTP", "svd-bp": "SVD-BP", "predsim": "PredSim", "auglocal": "AugLocal",
          **{k: v[0] for k, v in SSA_VARIANTS.items()}}
RULE_KEYS = BASELINES + list(SSA_VARIANTS) + NEW_BASELINES
CONVNET_RULES = ["bp", "dfa", "usf", "svd-bp", "ssa", "ssa-uncompressed"] + NEW_BASELINES
SMALLCONV_RULES = {"cifar10": ["bp", "svd-bp", "dfa", "drtp", "ssa"], None: ["bp", "dfa", "ssa"]}
MODELS = ["lenet", "convnet", "smallconv"]
DEFAULT_MODELS = {"cifar10": "lenet,smallconv", None: "lenet,convnet"}
SELECT_MODEL = "lenet"          # the rates are chosen on LeNet and used for every model
FIGURE_RULES = ["bp", "dfa", "ssa"]

# The paper's CIFAR-10 figures (test accuracy %): Table 4 (LeNet, printed as error: 100 - error) and Table 1
# (SmallConv, mean ± std over 5 runs).  Another data set: shown for the gaps between rules only.
PAPER_TABLE4_LENET_ERR = PAPER_TABLE4_CIFAR10["lenet"]
PAPER_TABLE1_SMALLCONV = PAPER_TABLE1["cifar10"]
NOT_IMPLEMENTED = "not implemented in ssaref (issue 22)"


def paper_cifar10(model: str, rule: str):
    """The paper's CIFAR-10 test accuracy (%) of a row, as ``(mean, std or None, source)``, or None."""
    if model == "lenet" and rule in PAPER_TABLE4_LENET_ERR:
        return 100.0 - PAPER_TABLE4_LENET_ERR[rule], None, "Table 4"
    if model == "smallconv" and rule in PAPER_TABLE1_SMALLCONV:
        m, s = PAPER_TABLE1_SMALLCONV[rule]
        return m, s, "Table 1"
    return None


@dataclass
class Rule:
    """One row: ``key`` (file names, ``--methods``), the ``ssaref.train`` method and its flags."""

    key: str
    method: str
    label: str
    flags: list = field(default_factory=list)
    skip: str | None = None


def make_rule(key: str) -> Rule:
    if key in SSA_VARIANTS:
        return Rule(key, "ssa", LABELS[key], list(SSA_VARIANTS[key][1]))
    return Rule(key, key, LABELS[key], skip=None if key in RULES else NOT_IMPLEMENTED)


def rules_of(model: str, dataset: str) -> list[str]:
    if model == "lenet":
        return list(RULE_KEYS)
    if model == "convnet":
        return list(CONVNET_RULES)
    return list(SMALLCONV_RULES.get(dataset, SMALLCONV_RULES[None]))


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv=None):
    own, extra = sw.split_passthrough(argv)
    p = sw.ArgParser(prog=f"python -m validation.{SCRIPT}", description=__doc__.splitlines()[0],
                     epilog="See the module docstring (python -m pydoc validation.conv_claims).")
    p.add_argument("--phase", default="all", choices=PHASES,
                   help="select (phase 1 only), final (phase 2 only, for the rules whose rate is chosen) or all")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) or cifar10, ...")
    p.add_argument("--models", default=None, help=f"subset of {','.join(MODELS)} (default lenet,convnet; "
                   "lenet,smallconv on cifar10); the rates are always chosen on LeNet")
    p.add_argument("--methods", default=",".join(RULE_KEYS), help=f"subset of {','.join(RULE_KEYS)}")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--backend", default="auto", choices=sw.BACKENDS)
    p.add_argument("--select-epochs", type=sw.positive_int, default=None, help="default 3 (1 with --quick)")
    p.add_argument("--select-seeds", default=None, help="default 0,1 (0 with --quick)")
    p.add_argument("--final-epochs", type=sw.positive_int, default=None, help="default 10 (1 with --quick)")
    p.add_argument("--final-seeds", default=None, help="LeNet, default 0-4 (0 with --quick)")
    p.add_argument("--convnet-seeds", default=None, help="default 0-2 (0 with --quick)")
    p.add_argument("--smallconv-seeds", default=None, help="default 0")
    p.add_argument("--smallconv-epochs", type=sw.positive_int, default=None,
                   help="default --final-epochs")
    p.add_argument("--align-every", type=sw.positive_int, default=100,
                   help="final runs: eq. (4) angles with BP every N steps, matrix alignment at epoch ends "
                        "(default 100)")
    p.add_argument("--batch-size", type=sw.positive_int, default=128)
    p.add_argument("--out-dir", default=None, help=f"default runs/{SCRIPT} (runs/{SCRIPT}_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, tiny subsets, narrow nets, seed 0")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write results.md from the run files already there (e.g. while a sweep runs)")
    sw.add_mpi_options(p)
    args = p.parse_args(own)
    args.extra = extra
    q = args.quick
    if len(sw.check_datasets(p, args.dataset)) != 1:
        p.error(f"--dataset: one data set, got {args.dataset!r}")
    key = args.dataset if args.dataset in DEFAULT_MODELS else None
    args.models = sw.pick_models(p, args.models or DEFAULT_MODELS[key], MODELS)
    args.selected = sw.pick_methods(p, args.methods, RULE_KEYS, unique=True)
    args.select_epochs = args.select_epochs or (1 if q else 3)
    args.final_epochs = args.final_epochs or (1 if q else 10)
    args.smallconv_epochs = args.smallconv_epochs or args.final_epochs
    for opt, default in (("select_seeds", "0" if q else "0,1"), ("final_seeds", "0" if q else "0-4"),
                         ("convnet_seeds", "0" if q else "0-2"), ("smallconv_seeds", "0")):
        try:
            setattr(args, opt, sw.parse_seeds(getattr(args, opt) or default))
        except argparse.ArgumentTypeError as exc:
            p.error(f"--{opt.replace('_', '-')}: {exc}".replace(": --seeds:", ":"))
    args.out_dir = Path(args.out_dir or (f"runs/{SCRIPT}_quick" if q else f"runs/{SCRIPT}"))
    return args


# ------------------------------------------------------------------------------------------ runs
def lr_tag(lr: float) -> str:
    return f"{lr:g}"


def run_file(args, phase: str, model: str, rule: str, lr: float, seed: int) -> Path:
    return args.out_dir / phase / f"{args.dataset}-{model}-{rule}-lr{lr_tag(lr)}-seed{seed}.h5"


def train_argv(args, phase: str, model: str, rule: Rule, lr: float, seed: int, epochs: int) -> list[str]:
    """The ``ssaref.train`` argv of one run (without ``--out`` / ``--resume``); ``--`` flags last."""
    argv = ["--method", rule.method, "--model", model, "--dataset", args.dataset, "--epochs", str(epochs),
            "--seed", str(seed), "--optimizer", "adam", "--lr", repr(float(lr)), "--batch-size",
            str(args.batch_size), "--backend", args.backend, "--val-split", repr(VAL_SPLIT), "--no-progress"]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    if args.quick:
        argv += list(sw.QUICK_FLAGS) + ["--width-mult", str(sw.QUICK_WIDTH[model])]
    if phase == "final":
        argv += ["--align-every", str(args.align_every)]
    return argv + list(rule.flags) + list(args.extra)


def _launch_all(args, jobs, status: dict) -> None:
    """``jobs``: ``(phase, model, Rule, lr, seed, epochs)``; spread over MPI ranks with ``--mpi``."""
    def one(job):
        phase, model, rule, lr, seed, epochs = job
        path = run_file(args, phase, model, rule.key, lr, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        st = sw.launch(path, train_argv(args, phase, model, rule, lr, seed, epochs), epochs,
                       f"{phase} {model} {rule.key} lr {lr_tag(lr)} seed {seed}", log=lambda m: print(m, flush=True))
        return ((f"{phase}/{model}-{rule.key}-lr{lr_tag(lr)}", seed), st)   # (name, seed) as sw.exit_code reads

    status.update(sw.map_runs(jobs, one, args))


def needed_rules(args) -> list[str]:
    """Rules whose rate phase 1 chooses: those of the selected models, in ``--methods``, implemented."""
    want = {r for m in args.models for r in rules_of(m, args.dataset)}
    return [k for k in RULE_KEYS if k in want and k in args.selected and make_rule(k).skip is None]


def select_jobs(args) -> list:
    return [("select", SELECT_MODEL, make_rule(k), lr, seed, args.select_epochs)
            for k in needed_rules(args) for lr in LRS for seed in args.select_seeds]


def seeds_epochs(args, model: str) -> tuple[list[int], int]:
    if model == "lenet":
        return args.final_seeds, args.final_epochs
    if model == "convnet":
        return args.convnet_seeds, args.final_epochs
    return args.smallconv_seeds, args.smallconv_epochs


def final_jobs(args, chosen: dict) -> list:
    jobs = []
    for model in args.models:
        seeds, epochs = seeds_epochs(args, model)
        for k in rules_of(model, args.dataset):
            if k in args.selected and make_rule(k).skip is None and k in chosen:
                jobs += [("final", model, make_rule(k), chosen[k], seed, epochs) for seed in seeds]
    return jobs


def run_all(args) -> dict:
    status: dict = {}
    if args.report_only:
        return status
    if args.phase in ("select", "all"):
        _launch_all(args, select_jobs(args), status)
    if args.phase in ("final", "all"):   # the rules whose phase 1 is complete; the others' rows say so
        _launch_all(args, final_jobs(args, choose_rates(args)), status)
    return status


# ------------------------------------------------------------------------------------------ reading back
@dataclass
class RunResult:
    """The last requested epoch of one run file, and its per-epoch curves (``config`` and ``metrics``, as
    ``validation._sweep.layer_series`` reads them)."""

    seed: int
    test_acc: float
    val_acc: float
    params: float
    flops: float
    seconds: float
    metrics: dict
    config: dict
    path: Path


_COST: dict = {}


def inference_cost_of(config: dict, ckpt) -> tuple[float, float]:
    """``(FLOPs, params)`` per example of a run's model at its checkpoint's ranks (``fig5_cost``'s costing)."""
    from ssaref.nn import build_model
    from validation.fig5_cost import DATASET_SHAPE, inference_cost

    params = (ckpt or {}).get("params", {})
    ranks = {k[:-2]: int(np.asarray(v).shape[0]) for k, v in params.items() if k.endswith(".s")}
    shape, classes = DATASET_SHAPE.get(config.get("dataset"), ((1, 28, 28), 10))
    width = float(config.get("width_mult") or 1.0)
    key = (config.get("model"), shape, classes, width, tuple(sorted(ranks.items())))
    if key not in _COST:
        opts = {} if config.get("model") == "mlp" else {"width_mult": width}
        model = build_model(config.get("model"), shape, classes, **opts)
        flops, count, _ = inference_cost(model, shape, ranks=ranks, svd=bool(ranks))
        _COST[key] = (float(flops), float(count))
    return _COST[key]


def read_result(path: Path, epochs: int, seed: int) -> RunResult | None:
    """``RunResult`` at epoch ``epochs`` (None when the file is missing, unreadable or shorter)."""
    from validation.ssa_study import _read

    try:
        config, m, ck = _read(path)
    except (RunFileError, OSError):   # missing, unreadable, not a run file: no result, never a number
        return None
    if "test_acc" not in m or len(m["test_acc"]) < epochs:
        return None
    i = epochs - 1
    pick = lambda k: 100.0 * float(m[k][i]) if k in m and len(m[k]) > i else float("nan")  # noqa: E731
    try:
        flops, params = inference_cost_of(config, ck)
    except (KeyError, TypeError, ValueError):   # a model this costing does not know: nan, never a guess
        flops = params = float("nan")
    secs = m.get("seconds")
    cut = {k: (v if k.startswith("align_step") else v[:epochs]) for k, v in m.items()}
    return RunResult(seed, pick("test_acc"), pick("val_acc"), params, flops,
                     float(np.mean(secs[:epochs])) if secs is not None and len(secs) else float("nan"),
                     cut, config, path)


def select_results(args) -> dict:
    """``{rule: {lr: [RunResult, ...]}}`` of the finished phase-1 runs."""
    out = {}
    for k in RULE_KEYS:
        out[k] = {}
        for lr in LRS:
            rs = [read_result(run_file(args, "select", SELECT_MODEL, k, lr, s), args.select_epochs, s)
                  for s in args.select_seeds]
            out[k][lr] = [r for r in rs if r is not None]
    return out


def pick_rate(by_lr: dict, n_seeds: int):
    """The rate with the best mean validation accuracy (ties: the smaller rate); None until every (rate, seed)
    run has finished (``by_lr``: rate -> results)."""
    if any(len(by_lr.get(lr, [])) < n_seeds for lr in LRS):
        return None
    means = {lr: float(np.mean([r.val_acc for r in by_lr[lr]])) for lr in LRS}
    if not all(np.isfinite(v) for v in means.values()):
        return None
    best = max(means.values())
    return min(lr for lr in LRS if means[lr] == best)


def choose_rates(args) -> dict:
    """``{rule: chosen rate}`` of the rules whose phase 1 is complete."""
    res = select_results(args)
    out = {}
    for k in RULE_KEYS:
        lr = pick_rate(res[k], len(args.select_seeds))
        if lr is not None:
            out[k] = lr
    return out


def final_results(args, chosen: dict | None = None) -> dict:
    """``{(model, rule): [RunResult, ...]}`` of the finished phase-2 runs at the chosen rates."""
    chosen = choose_rates(args) if chosen is None else chosen
    out = {}
    for model in args.models:
        seeds, epochs = seeds_epochs(args, model)
        for k in rules_of(model, args.dataset):
            if k not in chosen:
                out[(model, k)] = []
                continue
            rs = [read_result(run_file(args, "final", model, k, chosen[k], s), epochs, s) for s in seeds]
            out[(model, k)] = [r for r in rs if r is not None]
    return out


# ------------------------------------------------------------------------------------------ report
def _ms(vals, digits=2):
    return sw.fmt_mean_std(vals, digits)


def select_table(args, res: dict, chosen: dict) -> str:
    head = ["rule"] + [f"val acc, lr {lr_tag(lr)}" for lr in LRS] + ["chosen lr"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in RULE_KEYS:
        rule = make_rule(k)
        if rule.skip:
            lines.append(f"| {rule.label} | " + " | ".join([rule.skip] + [""] * len(LRS)) + " |")
            continue
        if k not in args.selected:
            lines.append(f"| {rule.label} | " + " | ".join(["not run (excluded by --methods)"] + [""] * len(LRS))
                         + " |")
            continue
        cells = []
        for lr in LRS:
            rs = res[k][lr]
            cells.append(_ms([r.val_acc for r in rs]) + (f" ({len(rs)} of {len(args.select_seeds)} seeds)"
                                                          if 0 < len(rs) < len(args.select_seeds) else ""))
        pick = lr_tag(chosen[k]) if k in chosen else "not yet (phase 1 incomplete)"
        if k in chosen and chosen[k] in (min(LRS), max(LRS)):
            pick += " (edge of the grid)"
        lines.append(f"| {rule.label} | " + " | ".join(cells) + f" | {pick} |")
    return "\n".join(lines) + "\n"


def final_table(args, model: str, results: dict, chosen: dict, status: dict) -> str:
    seeds, epochs = seeds_epochs(args, model)
    head = ["rule", "lr", "seeds", "test acc (%)", "val acc (%)", "params", "inference FLOPs", "s/epoch",
            "paper, CIFAR-10 (%)", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in rules_of(model, args.dataset):
        rule = make_rule(k)
        paper = paper_cifar10(model, k)
        pc = "—" if paper is None else (f"{paper[0]:.2f}" + (f" ± {paper[1]:.2f}" if paper[1] else "") +
                                         f" ({paper[2]})")
        if rule.skip or k not in args.selected:
            why = rule.skip or "not run (excluded by --methods)"
            lines.append(f"| {rule.label} | | | {why} | | | | | {pc} | |")
            continue
        if k not in chosen:
            lines.append(f"| {rule.label} | | | not run: learning rate not chosen yet (phase 1 on LeNet "
                         f"incomplete) | | | | | {pc} | |")
            continue
        rs = results.get((model, k), [])
        errs = [f"seed {s}: {st.error}" for (name, s), st in status.items()
                if st.rc and name == f"final/{model}-{k}-lr{lr_tag(chosen[k])}" and s in seeds]
        if not rs:
            cell = "failed: " + "; ".join(errs) if errs else "not run"
            lines.append(f"| {rule.label} | {lr_tag(chosen[k])} | | {cell} | | | | | {pc} | |")
            continue
        missing = [s for s in seeds if s not in {r.seed for r in rs}]
        note = "; ".join(([f"no result for seed {','.join(map(str, missing))}"] if missing else []) + errs)
        lines.append(f"| {rule.label} | {lr_tag(chosen[k])} | {','.join(str(r.seed) for r in rs)} | "
                     f"{_ms([r.test_acc for r in rs])} | {_ms([r.val_acc for r in rs])} | "
                     f"{sw.fmt_num(float(np.mean([r.params for r in rs])), 0)} | "
                     f"{sw.fmt_num(float(np.mean([r.flops for r in rs])), 0)} | "
                     f"{sw.fmt_num(float(np.mean([r.seconds for r in rs])), 1)} | {pc} | {note} |")
    return f"\n## {model}: {epochs} epochs, seeds {','.join(map(str, seeds))}\n\n" + "\n".join(lines) + "\n"


def _hidden_cols(cols):
    return cols[:-1]   # the output layer: DFA's receives e itself (angle 0 by construction), no B of its own


def angle_table(args, results: dict) -> str:
    lines = []
    for model in args.models:
        have = {k: sw.layer_series(results.get((model, k), []), "align.grad_mean")
                for k in FIGURE_RULES}
        have = {k: v for k, v in have.items() if v[1] is not None}
        if not have:
            continue
        cols = next(iter(have.values()))[0]
        lines += [f"\n**{model}: eq. (4) angle with the BP gradient at the last epoch (degrees, mean ± std over "
                  "seeds)**\n", "| layer | " + " | ".join(LABELS[k] for k in have) + " | SSA < DFA |",
                  "|" + " --- |" * (2 + len(have))]
        for j, c in enumerate(cols):
            cells, last = [], {}
            for k, (_, mean, std) in have.items():
                last[k] = mean[-1, j] if j < mean.shape[1] else np.nan
                cells.append(f"{sw.fmt_num(last[k], 1)} ± {sw.fmt_num(std[-1, j], 1)}" if j < mean.shape[1] else "")
            v = ("yes" if last["ssa"] < last["dfa"] else "no") if {"ssa", "dfa"} <= set(last) and \
                np.isfinite(last["ssa"]) and np.isfinite(last["dfa"]) else "—"
            lines.append(f"| `{c}` | " + " | ".join(cells) + f" | {v} |")
    return "\n".join(lines) + ("\n" if lines else "")


def plot_angles(args, results: dict, path: Path) -> Path | None:
    """Figure 2 on conv nets: eq. (4) angle per layer over epochs, one row per model, seeds as bands."""
    series = {(m, k): sw.layer_series(results.get((m, k), []), "align.grad_mean")
              for m in args.models for k in FIGURE_RULES}
    models = [m for m in args.models if any(series[(m, k)][1] is not None for k in FIGURE_RULES)]
    if not models:
        return None
    plt = sw.pyplot()
    n = max(len(series[(m, k)][0]) for m in models for k in FIGURE_RULES if series[(m, k)][1] is not None)
    fig, axes = plt.subplots(len(models), n, figsize=(3.2 * n, 2.8 * len(models)), squeeze=False)
    for i, m in enumerate(models):
        for k in FIGURE_RULES:
            cols, mean, std = series[(m, k)]
            if mean is None:
                continue
            ep = np.arange(1, mean.shape[0] + 1)
            for j in range(mean.shape[1]):
                ax = axes[i][j]
                ax.plot(ep, mean[:, j], marker="o" if len(ep) < 3 else None, label=LABELS[k])
                ax.fill_between(ep, mean[:, j] - std[:, j], mean[:, j] + std[:, j], alpha=0.2)
                ax.set_title(f"{m} `{cols[j]}`", fontsize=8)
                ax.set_xlabel("epoch")
        axes[i][0].set_ylabel("angle with BP (deg)")
        axes[i][0].legend(fontsize=7)
        for ax in axes[i]:
            if not ax.has_data():
                ax.set_visible(False)   # a model with fewer layers than the widest row
    fig.suptitle(f"eq. (4) angle with the BP gradient per layer, {args.dataset} (cf. paper Figure 2), "
                 "mean ± std over seeds", y=1.02)
    return sw.save_figure(fig, path)


def plot_matrix(args, results: dict, path: Path) -> Path | None:
    """Figure 3 on conv nets: matrix alignment angle across depth at the last epoch (defined layers only)."""
    plt = sw.pyplot()
    drawn = False
    fig, axes = plt.subplots(1, len(args.models), figsize=(4.5 * len(args.models), 3.4), squeeze=False)
    for ax, m in zip(axes[0], args.models):
        for k in ("ssa", "dfa"):
            cols, mean, std = sw.layer_series(results.get((m, k), []), "align.matrix_flat")
            if mean is None:
                continue
            x = np.arange(1, len(cols) + 1)
            ok = np.isfinite(mean[-1])
            if ok.any():
                drawn = True
                ax.errorbar(x[ok], mean[-1][ok], yerr=std[-1][ok], marker="o", capsize=3, label=LABELS[k])
                ax.set_xticks(x, cols, rotation=45, fontsize=6)
        ax.set_title(m)
        ax.set_xlabel("layer (depth)")
        ax.set_ylabel("matrix alignment angle (deg), last epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return None
    fig.suptitle(f"matrix alignment across depth, {args.dataset} (cf. paper Figure 3; undefined layers left out)",
                 y=1.04)
    return sw.save_figure(fig, path)


def report(args, status: dict) -> None:
    res1 = select_results(args)
    chosen = choose_rates(args)
    sections = [
        f"Protocol: Adam, batch {args.batch_size}, validation split {VAL_SPLIT:g} (stratified, seeded; held out in "
        "every run).  Phase 1 chooses each rule's rate on LeNet's **validation** accuracy "
        f"({args.select_epochs} epochs, seeds {','.join(map(str, args.select_seeds))}, mean over seeds; ties: "
        "the smaller rate); phase 2 trains every model at those rates and reports test accuracy once.  The data "
        "order depends on the seed only, so every rule sees the same batches at a given seed.  SSA rows: " +
        "; ".join(f"{v[0]} = `{' '.join(v[1]) or '(engine defaults)'}`" for v in SSA_VARIANTS.values()) + ".",
        f"\n## Phase 1: learning rate on LeNet ({args.select_epochs} epochs, validation accuracy %)\n",
        select_table(args, res1, chosen),
    ]
    if args.phase in ("final", "all"):
        results = final_results(args, chosen)
        for model in args.models:
            sections.append(final_table(args, model, results, chosen, status))
        sections.append("params / inference FLOPs: the trained numbers and 2 x the multiply-adds per example of the "
                        "weight layers (`validation.fig5_cost.inference_cost`), SVD layers at the ranks of the final "
                        "checkpoint (after rank reduction).  s/epoch: one BLAS thread per run unless stated, the "
                        f"alignment tracker (`--align-every {args.align_every}`) included.  Paper column: CIFAR-10 "
                        "(another data set; Table 4 printed as error, shown as 100 - error): compare gaps between "
                        "rules, not the numbers.\n")
        at = angle_table(args, results)
        if at:
            sections.append(at)
        if not args.no_plot:
            figs = [p.name for p in (plot_angles(args, results, args.out_dir / "fig2_angles.png"),
                                     plot_matrix(args, results, args.out_dir / "fig3_matrix.png")) if p]
            if figs:
                sections.append("Figures: " + ", ".join(f"`{f}`" for f in figs) + "\n")
    failed = [f"{name} seed {seed}: {st.error or st.rc}" for (name, seed), st in status.items() if st.rc != 0]
    if failed:
        sections.append("\nFailed runs: " + "; ".join(failed) + "\n")
    head = (f"{args.dataset}, models {','.join(args.models)}, phase {args.phase}" +
            (" (report only: the runs finished so far)" if args.report_only else "") +
            (", **--quick smoke test**: not comparable to anything" if args.quick else "") +
            (", extra flags: `" + " ".join(args.extra) + "`" if args.extra else ""))
    text = f"# The paper's claims on conv nets\n\n{head}\n\n" + "\n".join(s.rstrip() + "\n" for s in sections)
    sw.publish(args.out_dir / "results.md", text)


SPEC = sw.Script(parse=parse_args, run=run_all, report=report)


def main(argv=None):
    return sw.run_script(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
