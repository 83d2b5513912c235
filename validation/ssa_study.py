"""SSA at its best defensible reading (issue 10, point 5): screen the choices on a validation split, then
compare the best settings with BP, DFA, SVD-BP, FA and uSF over 5 seeds.

Stages (each choice is made on **validation** accuracy only; test accuracy is reported once, for stage 3):

1. **screen** (``--screen-epochs`` 3, seeds ``--screen-seeds`` 0,1): SSA with ``--orthogonality`` in {retract,
   landing, retract-every} x ``--rank-reading`` in {every, once, relative, none} x ``--beta`` in {1e-3, 1e-2} x
   ``--gamma`` in {1e-2, 1e-1} (x ``--lrs``, default one learning rate): 48 settings;
2. **init** (same epochs, seeds ``--init-seeds`` 0,1,2): the best screened setting with ``--svd-init`` in
   {default, kaiming_uniform_a5, orthogonal} x ``--bias-init`` in {uniform, zero} x ``--align-last`` in
   {true, false}: 12 settings (the one equal to the screened best reuses its run files);
3. **final** (``--final-epochs`` 10, seeds ``--final-seeds`` 0-4): the ``--top`` 3 settings of stages 1-2 by mean
   validation accuracy, and BP, DFA, SVD-BP (default, and with the best setting's rank reading), FA, uSF.

Writes ``<out-dir>/{screen,final}/<setting>-seed<s>.h5`` (one run file each; an interrupted study is simply started
again: finished runs are left alone, partial ones resumed) and ``<out-dir>/results.md``: the screening and
initialisation tables (validation accuracy, mean ± std over seeds, ranked), the chosen settings, and the final
table (test and validation accuracy mean ± std, parameter count and inference FLOPs after rank reduction,
seconds per epoch); figures ``accuracy_vs_params.png`` and ``final_curves.png`` (``python -m ssaref.plot`` over
the final runs: accuracy, loss, angles, ranks and orthogonality error per epoch with seed bands).

    python -m validation.ssa_study                                    # full scale: 96 + 33 + 45 runs, ~2-3 h CPU
    python -m validation.ssa_study --stage screen                     # stage 1 only (its table)
    python -m validation.ssa_study --quick                            # smoke test: synthetic data, seconds

The re-selection under the rank constraint on LeNet (issue 21, D4.18): ``--model lenet --lrs 3e-4``, the handlings
of D4.16 (``--orthogonalities retract-every,retract,retract+transport,penalty``), ``--readings none,relative``,
``--no-init --baselines none --compare-default`` (the other rules are in ``validation/conv_claims.py``; the
engine's defaults run in the final stage as the paired reference).

``--quick``: synthetic data (128 training examples, 64 test, mlp 16-16), one seed, 1 screening and 2 final epochs,
the screening grid with one beta (1e-3) and one gamma (1e-1): every stage and table, no meaningful number.

Settings: Fashion-MNIST, mlp 784-256-256-10, Adam, batch 128, lr 1e-3 (``ssaref.train``'s defaults), the last
``--val-split`` 0.1 of the training set held out (stratified, seeded) in every run, the final ones included.
Flags after a lone ``--`` go to every ``ssaref.train`` run.  Exit codes: 0 all runs finished, 1 a run failed
(its row says so), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssaref.rank import READINGS as RANK_READINGS
from ssaref.rules import build_rule
from ssaref.runlog import RunFileError, read_run
from validation import _sweep as sw

SCRIPT = "ssa_study"
STAGES = ("screen", "init", "final", "all")
# orthogonality handlings screened: name -> the options it sets (D4.12, D4.16)
HANDLINGS = {
    "retract": {"orthogonality": "retract"},
    "landing": {"orthogonality": "landing"},
    "retract-every": {"orthogonality": "retract-every"},
    "retract+transport": {"orthogonality": "retract", "transport": "true"},   # Riemannian Adam (D4.16)
    # the paper's: eq. (9) only (5.2); the default since 0.4.0 (D4.18), selected with the runs of e8a9a8b, which
    # spelled it --orthogonality retract --retraction none (the same steps, test_penalty_is_retract_without_retraction)
    "penalty": {"orthogonality": "penalty"},
}
ORTHOGONALITY = ["retract", "landing", "retract-every"]   # the default screen (the MLP study of 0.2.0)
READINGS = ["every", "once", "relative", "none"]
MODELS = ["mlp", "lenet"]
BETAS = [1e-3, 1e-2]
GAMMAS = [1e-2, 1e-1]
SVD_INITS = ["default", "kaiming_uniform_a5", "orthogonal"]
BIAS_INITS = ["uniform", "zero"]
ALIGN_LAST = ["true", "false"]
# (method, label, also run with the best setting's rank reading: the rules with a rank schedule)
BASELINES = [("bp", "BP", False), ("dfa", "DFA", False), ("svd-bp", "SVD-BP", True), ("fa", "FA", False),
             ("usf", "uSF", False)]
QUICK_FLAGS = ["--train-limit", "128", "--test-limit", "64", "--hidden", "16,16"]


def _defaults(method: str) -> dict:
    """The method's option defaults as the study writes option values (bools as "true"/"false")."""
    return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in build_rule(method).options.items()}


# the option values of a setting that are the engine's defaults (left out of names and flags)
DEFAULTS = {k: _defaults("ssa")[k] for k in ("orthogonality", "retraction", "transport", "rank_reading", "beta",
                                              "gamma", "svd_init", "bias_init", "align_last")}
_SHORT = {"orthogonality": "o", "retraction": "rt", "transport": "tr", "rank_reading": "r", "beta": "b",
          "gamma": "g", "lr": "lr", "svd_init": "i", "bias_init": "bi", "align_last": "al"}


@dataclass
class Setting:
    """One configuration: ``method`` and its ``options`` (rule option -> value, ``lr`` included)."""

    method: str
    options: dict = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        parts = [self.method]
        for k in sorted(self.options):
            v = self.options[k]
            parts.append(f"{_SHORT.get(k, k)}_{v:g}" if isinstance(v, float) else f"{_SHORT.get(k, k)}_{v}")
        return "-".join(parts)

    def flags(self) -> list[str]:
        out = []
        for k, v in sorted(self.options.items()):
            out += [f"--{k.replace('_', '-')}", repr(v) if isinstance(v, float) else str(v)]
        return out

    def describe(self) -> str:
        if self.label:
            return self.label
        return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(self.options.items()))


def ssa(**opts) -> Setting:
    """An SSA setting; options at their engine default are dropped (same name, same run files)."""
    return Setting("ssa", {k: v for k, v in opts.items() if DEFAULTS.get(k, object()) != v})


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv=None):
    own, extra = sw.split_passthrough(argv)
    p = sw.ArgParser(prog=f"python -m validation.{SCRIPT}", description=__doc__.splitlines()[0],
                     epilog="See the module docstring (python -m pydoc validation.ssa_study) for the stages.")
    p.add_argument("--stage", default="all", choices=STAGES, help="run up to this stage (default all)")
    p.add_argument("--dataset", default=None, help="default fashion-mnist (synthetic with --quick)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--backend", default="auto", choices=sw.BACKENDS)
    p.add_argument("--screen-epochs", type=sw.positive_int, default=None, help="default 3 (1 with --quick)")
    p.add_argument("--final-epochs", type=sw.positive_int, default=None, help="default 10 (2 with --quick)")
    p.add_argument("--screen-seeds", default=None, help="default 0,1 (0 with --quick)")
    p.add_argument("--init-seeds", default=None, help="default 0,1,2 (0 with --quick)")
    p.add_argument("--final-seeds", default=None, help="default 0-4 (0,1 with --quick)")
    p.add_argument("--val-split", type=float, default=None, help="held-out fraction (default 0.1; 0.25 --quick)")
    p.add_argument("--lrs", default="1e-3", help="learning rates screened, comma-separated (default 1e-3)")
    p.add_argument("--batch-size", type=sw.positive_int, default=128)
    p.add_argument("--top", type=sw.positive_int, default=3, help="SSA settings taken to the final stage")
    p.add_argument("--model", default="mlp", choices=MODELS, help="default mlp (784-256-256-10)")
    p.add_argument("--orthogonalities", default=",".join(ORTHOGONALITY),
                   help="orthogonality handlings screened, comma-separated, from " + ", ".join(HANDLINGS) +
                        f" (default {','.join(ORTHOGONALITY)}; retract+transport: Riemannian Adam, penalty: "
                        "eq. (9) only, no retraction)")
    p.add_argument("--readings", default=",".join(READINGS),
                   help=f"rank readings screened, comma-separated (default {','.join(READINGS)})")
    p.add_argument("--no-init", action="store_true",
                   help="skip stage 2 (initialisation and classifier target stay at the engine's defaults)")
    p.add_argument("--baselines", default=",".join(b[0] for b in BASELINES),
                   help="rules of the final comparison besides SSA, comma-separated, or none (default "
                        + ",".join(b[0] for b in BASELINES) + ")")
    p.add_argument("--compare-default", action="store_true",
                   help="final stage: also run SSA at the engine's defaults when it is not among the --top "
                        "settings (the reference a change of default is judged against, paired by seed)")
    p.add_argument("--out-dir", default=None, help=f"default runs/{SCRIPT} (runs/{SCRIPT}_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: synthetic data, tiny runs, one seed")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--screen-train-limit", type=sw.positive_int, default=None,
                   help="stages 1-2 (screening, initialisation) on the first N training examples only (the validation "
                        "split is taken from them); the final stage always uses the whole training set")
    sw.add_mpi_options(p)
    args = p.parse_args(own)
    args.extra = extra
    q = args.quick
    args.dataset = args.dataset or ("synthetic" if q else "fashion-mnist")
    if len(sw.check_datasets(p, args.dataset)) != 1:
        p.error(f"--dataset: one data set, got {args.dataset!r}")
    args.screen_epochs = args.screen_epochs or (1 if q else 3)
    args.final_epochs = args.final_epochs or (2 if q else 10)
    try:
        args.screen_seeds = sw.parse_seeds(args.screen_seeds or ("0" if q else "0,1"))
        args.init_seeds = sw.parse_seeds(args.init_seeds or ("0" if q else "0,1,2"))
        args.final_seeds = sw.parse_seeds(args.final_seeds or ("0,1" if q else "0-4"))
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    args.val_split = args.val_split if args.val_split is not None else (0.25 if q else 0.1)
    if not 0.0 < args.val_split < 1.0:
        p.error(f"--val-split must be in (0, 1): the study selects on validation accuracy, got {args.val_split}")
    try:
        args.lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    except ValueError:
        p.error(f"--lrs: expected comma-separated numbers, got {args.lrs!r}")
    if not args.lrs or not all(np.isfinite(v) and v > 0 for v in args.lrs):
        p.error(f"--lrs: learning rates must be finite and > 0, got {args.lrs}")
    args.out_dir = Path(args.out_dir or (f"runs/{SCRIPT}_quick" if q else f"runs/{SCRIPT}"))
    args.orthogonalities = _choices(p, "--orthogonalities", args.orthogonalities, list(HANDLINGS))
    valid_readings = list(RANK_READINGS)
    args.readings = _choices(p, "--readings", args.readings, valid_readings)
    known = [b[0] for b in BASELINES]
    args.baselines = [] if args.baselines.strip() == "none" else _choices(p, "--baselines", args.baselines, known)
    return args


def _choices(p, flag: str, text: str, valid: list[str]) -> list[str]:
    """A comma-separated list of names from ``valid`` (no repeats), or the parser's one-line error."""
    got = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in got if v not in valid]
    if not got or bad or len(set(got)) != len(got):
        why = f"unknown {bad[0]!r}" if bad else ("repeated names" if got else "empty")
        p.error(f"{flag}: {why} in {text!r}; choose from {', '.join(valid)}")
    return got


# ------------------------------------------------------------------------------------------ runs
def train_argv(s: Setting, seed: int, epochs: int, args) -> list[str]:
    """The ``ssaref.train`` argv of one run (without ``--out`` / ``--resume``); ``--`` flags last."""
    opts = dict(s.options)
    lr = opts.pop("lr", args.lrs[0] if len(args.lrs) == 1 else 1e-3)
    argv = ["--method", s.method, "--model", args.model, "--dataset", args.dataset, "--epochs", str(epochs),
            "--seed", str(seed), "--optimizer", "adam", "--lr", repr(float(lr)), "--batch-size", str(args.batch_size),
            "--backend", args.backend, "--val-split", repr(float(args.val_split)), "--no-progress"]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    if args.quick:
        argv += list(QUICK_FLAGS) if args.model == "mlp" else list(sw.QUICK_FLAGS) + [
            "--width-mult", str(sw.QUICK_WIDTH[args.model])]
    elif args.screen_train_limit and epochs == args.screen_epochs and epochs != args.final_epochs:
        argv += ["--train-limit", str(args.screen_train_limit)]   # stages 1-2 on the first N training examples
    return argv + Setting(s.method, opts).flags() + list(args.extra)


def run_settings(settings, seeds, epochs, folder: Path, args, status: dict) -> None:
    """Every (setting, seed) not run yet, one run file each; with ``--mpi`` spread over the ranks (every rank
    then holds every status, so all ranks make the next stage's choices from the same files)."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(s, seed) for s in settings for seed in seeds if (f"{folder.name}/{s.name}", seed) not in status]

    def one(job):
        s, seed = job
        path = folder / f"{s.name}-seed{seed}.h5"
        return ((f"{folder.name}/{s.name}", seed),
                sw.launch(path, train_argv(s, seed, epochs, args), epochs, f"{s.name} seed {seed}",
                          log=lambda m: print(m, flush=True)))

    status.update(sw.map_runs(jobs, one, args))


@dataclass
class Result:
    """The last requested epoch of one run file."""

    seed: int
    val_acc: float
    test_acc: float
    params: float
    flops: float
    seconds: float
    epochs: int
    path: Path


_READ: dict = {}  # (path, mtime, size) -> read_run's answer: the report reads each file once


def _read(path: Path):
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _READ:
        _READ[key] = read_run(path)
    return _READ[key]


def read_result(path: Path, epochs: int, seed: int) -> Result | None:
    """``Result`` of the run file at epoch ``epochs`` (None when it is missing, unreadable or shorter)."""
    try:
        _, m, ck = _read(path)
    except (RunFileError, OSError):
        return None
    if "test_acc" not in m or len(m["test_acc"]) < epochs:
        return None
    i = epochs - 1
    pick = lambda k: float(m[k][i]) if k in m and len(m[k]) > i else float("nan")  # noqa: E731
    if "svd_total_params" in m:  # SVD layers after rank reduction (+ their biases); dense layers have none here
        params, flops = pick("svd_total_params"), pick("svd_total_flops")
    else:  # dense: every parameter; FLOPs = multiply-adds of the weight matrices per example (mlp)
        arrays = (ck or {}).get("params", {})
        params = float(sum(np.asarray(v).size for v in arrays.values())) if arrays else float("nan")
        flops = float(sum(np.asarray(v).size for k, v in arrays.items() if k.endswith(".W"))) if arrays else np.nan
    secs = m.get("seconds")
    return Result(seed, 100 * pick("val_acc"), 100 * pick("test_acc"), params, flops,
                  float(np.mean(secs[:epochs])) if secs is not None and len(secs) else float("nan"), epochs, path)


def results_of(settings, seeds, epochs, folder: Path, args) -> dict:
    """``{setting name: [Result, ...]}`` of the seeds that finished ``epochs`` with the setting's own flags: a file
    under the setting's name made with other settings (a default changed since: a name leaves out the options at
    their default) is not counted (``launch`` refuses to run over it, naming the differences)."""
    out = {}
    for s in settings:
        rs = []
        for seed in seeds:
            path = folder / f"{s.name}-seed{seed}.h5"
            if path.exists() and sw.settings_mismatch(path, train_argv(s, seed, epochs, args)):
                continue
            rs.append(read_result(path, epochs, seed))
        out[s.name] = [r for r in rs if r is not None]
    return out


def rank_settings(settings, results) -> list:
    """Settings with at least one result, best mean validation accuracy first (ties: smaller std, name)."""
    scored = []
    for s in settings:
        m, sd, n = sw.mean_std([r.val_acc for r in results.get(s.name, [])])
        if n:
            scored.append((-m, sd if np.isfinite(sd) else 0.0, s.name, s))
    return [t[-1] for t in sorted(scored, key=lambda t: t[:3])]


# ------------------------------------------------------------------------------------------ the stages
def screen_settings(args) -> list[Setting]:
    lrs = args.lrs if len(args.lrs) > 1 else [None]
    out = []
    betas, gammas = (BETAS[:1], GAMMAS[-1:]) if args.quick else (BETAS, GAMMAS)  # --quick: 12 settings
    for o, r, b, g, lr in itertools.product(args.orthogonalities, args.readings, betas, gammas, lrs):
        opts = {**HANDLINGS[o], "rank_reading": r, "beta": b, "gamma": g}
        if lr is not None:
            opts["lr"] = lr
        out.append(ssa(**opts))
    return out


def init_settings(best: Setting) -> list[Setting]:
    base = {k: v for k, v in best.options.items() if k not in ("svd_init", "bias_init", "align_last")}
    return [ssa(**base, svd_init=i, bias_init=b, align_last=a)
            for i, b, a in itertools.product(SVD_INITS, BIAS_INITS, ALIGN_LAST)]


def final_settings(top: list[Setting], baselines=tuple(b[0] for b in BASELINES),
                   compare_default: bool = False) -> list[Setting]:
    out = [Setting("ssa", dict(s.options), label=f"SSA #{i + 1}: {s.describe() or 'engine default'}")
           for i, s in enumerate(top)]
    if compare_default and not any(not {k: v for k, v in s.options.items() if k != "lr"} for s in top):
        # the engine's defaults at the top setting's learning rate (when the screen chose one)
        opts = {"lr": top[0].options["lr"]} if top and "lr" in top[0].options else {}
        out.append(Setting("ssa", opts, label="SSA at the engine's defaults (reference)"))
    reading = {**DEFAULTS, **top[0].options}["rank_reading"] if top else None
    for method, label, with_reading in [b for b in BASELINES if b[0] in baselines]:
        out.append(Setting(method, {}, label=label))
        if with_reading and reading is not None and reading != _defaults(method)["rank_reading"]:
            out.append(Setting(method, {"rank_reading": reading}, label=f"{label} (rank reading {reading})"))
    return out


def run_all(args) -> dict:
    status: dict = {}
    screen_dir, final_dir = args.out_dir / "screen", args.out_dir / "final"
    args.plan = {"screen": screen_settings(args)}
    run_settings(args.plan["screen"], args.screen_seeds, args.screen_epochs, screen_dir, args, status)
    if args.stage == "screen":
        return status
    ranked = rank_settings(args.plan["screen"], results_of(args.plan["screen"], args.screen_seeds,
                                                             args.screen_epochs, screen_dir, args))
    if not ranked:
        return status
    if not args.no_init:
        args.plan["init"] = init_settings(ranked[0])
        run_settings(args.plan["init"], args.init_seeds, args.screen_epochs, screen_dir, args, status)
    if args.stage == "init":
        return status
    args.plan["final"] = final_settings(_top(args), args.baselines, args.compare_default)
    run_settings(args.plan["final"], args.final_seeds, args.final_epochs, final_dir, args, status)
    return status


def _candidates(args):
    """Every screened setting (stages 1 and 2, one entry per name) with all its seeds' screening results."""
    seen, out = set(), []
    for s in args.plan.get("screen", []) + args.plan.get("init", []):
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    seeds = sorted(set(args.screen_seeds) | (set(args.init_seeds) if "init" in args.plan else set()))
    return out, results_of(out, seeds, args.screen_epochs, args.out_dir / "screen", args)


def _top(args) -> list[Setting]:
    cands, res = _candidates(args)
    return rank_settings(cands, res)[: args.top]


# ------------------------------------------------------------------------------------------ report
def _screen_table(settings, results, cols) -> str:
    head = cols + ["seeds", "val acc (%)"]
    lines = ["| rank | " + " | ".join(head) + " |", "|" + " --- |" * (len(head) + 1)]
    ranked = rank_settings(settings, results)
    for i, s in enumerate(ranked + [s for s in settings if s not in ranked]):
        rs = results.get(s.name, [])
        vals = [_fmt_opt({**DEFAULTS, **s.options}.get(c, "")) for c in cols]
        cell = sw.fmt_mean_std([r.val_acc for r in rs]) if rs else "not run / failed"
        rank = str(i + 1) if s in ranked else "—"
        lines.append(f"| {rank} | " + " | ".join(vals) + f" | {','.join(str(r.seed) for r in rs)} | {cell} |")
    return "\n".join(lines) + "\n"


def _fmt_opt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def _final_table(settings, results) -> str:
    head = ["setting", "seeds", "test acc (%)", "val acc (%)", "params", "inference FLOPs", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in settings:
        rs = results.get(s.name, [])
        if not rs:
            lines.append(f"| {s.describe()} | — | not run / failed | | | | |")
            continue
        lines.append(f"| {s.describe()} | {','.join(str(r.seed) for r in rs)} | "
                     f"{sw.fmt_mean_std([r.test_acc for r in rs])} | {sw.fmt_mean_std([r.val_acc for r in rs])} | "
                     f"{sw.fmt_num(float(np.mean([r.params for r in rs])), 0)} | "
                     f"{sw.fmt_num(float(np.mean([r.flops for r in rs])), 0)} | "
                     f"{sw.fmt_num(float(np.mean([r.seconds for r in rs])), 1)} |")
    return "\n".join(lines) + "\n"


def _paired_table(settings, results) -> str:
    """Each SSA setting minus the reference row (SSA at the engine's defaults), paired by seed: validation and test
    accuracy differences, mean ± std and the 95 % t interval (empty when there is no reference row)."""
    ref = next((s for s in settings if s.label.startswith("SSA at the engine's defaults")), None)
    if ref is None:
        return ""
    base = {r.seed: r for r in results.get(ref.name, [])}
    lines = ["| setting | seeds | Δ val acc (points) | 95 % CI | Δ test acc (points) | 95 % CI |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s in settings:
        if s.method != ref.method or s is ref:  # the SSA settings only
            continue
        rs = [r for r in results.get(s.name, []) if r.seed in base]
        if len(rs) < 2:
            lines.append(f"| {s.describe()} | {','.join(str(r.seed) for r in rs) or '—'} | fewer than 2 paired "
                         "seeds | | | |")
            continue
        cells = []
        for key in ("val_acc", "test_acc"):
            m, sd, lo, hi = sw.paired_interval([getattr(r, key) - getattr(base[r.seed], key) for r in rs])
            cells += [f"{m:+.2f} ± {sd:.2f}", f"[{lo:+.2f}, {hi:+.2f}]"]
        lines.append(f"| {s.describe()} | {','.join(str(r.seed) for r in rs)} | " + " | ".join(cells) + " |")
    return ("\nPaired by seed against SSA at the engine's defaults (setting minus reference):\n\n"
            + "\n".join(lines) + "\n")


def _accuracy_vs_params(settings, results, path: Path) -> Path:
    plt = sw.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, s in enumerate(settings):
        rs = results.get(s.name, [])
        if not rs:
            continue
        m, sd, _ = sw.mean_std([r.test_acc for r in rs])
        ax.errorbar([np.mean([r.params for r in rs])], [m], yerr=[0.0 if not np.isfinite(sd) else sd], fmt="o",
                    color=plt.cm.tab10(i % 10), label=s.describe(), capsize=3)
    ax.set_xlabel("parameters after rank reduction")
    ax.set_ylabel("test accuracy (%), mean ± std")
    ax.legend(fontsize=6)
    return sw.save_figure(fig, path)


def report(args, status: dict) -> None:
    from ssaref import plot as plot_mod

    screen_dir, final_dir = args.out_dir / "screen", args.out_dir / "final"
    sections = [
        "Every choice is made on validation accuracy (the last epoch of the screening runs, mean over seeds); "
        "test accuracy appears only in the final table.  Settings not shown are the engine's defaults.",
        f"\n## Stage 1: screening ({args.screen_epochs} epochs, seeds {','.join(map(str, args.screen_seeds))})\n",
    ]
    plan = getattr(args, "plan", {"screen": screen_settings(args)})
    extra_cols = [k for k in ("retraction", "transport") if any(k in HANDLINGS[o] for o in args.orthogonalities)]
    cols = (["orthogonality"] + extra_cols + ["rank_reading", "beta", "gamma"]
            + (["lr"] if len(args.lrs) > 1 else []))
    res1 = results_of(plan["screen"], args.screen_seeds, args.screen_epochs, screen_dir, args)
    sections.append(_screen_table(plan["screen"], res1, cols))
    if "init" in plan:
        res2 = results_of(plan["init"], args.init_seeds, args.screen_epochs, screen_dir, args)
        sections.append(f"\n## Stage 2: initialisation and classifier target at the best setting "
                        f"({args.screen_epochs} epochs, seeds {','.join(map(str, args.init_seeds))})\n")
        sections.append(_screen_table(plan["init"], res2, cols + ["svd_init", "bias_init", "align_last"]))
    if "final" in plan or "init" in plan:
        top = _top(args)
        sections.append("\nChosen settings (stages 1-2 by mean validation accuracy): " +
                        "; ".join(f"#{i + 1} `{' '.join(s.flags()) or '(engine defaults)'}`"
                                  for i, s in enumerate(top)) + "\n")
    if "final" in plan:
        res3 = results_of(plan["final"], args.final_seeds, args.final_epochs, final_dir, args)
        sections.append(f"\n## Stage 3: final comparison ({args.final_epochs} epochs, seeds "
                        f"{','.join(map(str, args.final_seeds))})\n")
        sections.append(_final_table(plan["final"], res3))
        sections.append(_paired_table(plan["final"], res3))
        sections.append("params / FLOPs: the SVD layers after rank reduction, r(m+n+1) (+ biases for params); "
                        "dense rules: every parameter / the multiply-adds m n of the weight matrices.\n")
        if not args.no_plot:
            figs = []
            if any(res3.values()):
                figs.append(_accuracy_vs_params(plan["final"], res3, args.out_dir / "accuracy_vs_params.png").name)
                paths = [r.path for s in plan["final"] for r in res3.get(s.name, [])]
                out = plot_mod.plot_runs(paths, args.out_dir / "final_curves.png", overwrite=True,
                                         title=f"{args.dataset}, {args.model}: final runs (mean ± std over seeds)")
                figs.append(out.name)
            if figs:
                sections.append("Figures: " + ", ".join(f"`{f}`" for f in figs) + "\n")
    failed = [f"{k[0]} seed {k[1]}: {st.error or st.rc}" for k, st in status.items() if st.rc != 0]
    if failed:
        sections.append("\nFailed runs: " + "; ".join(failed) + "\n")
    lrs = ",".join(f"{v:g}" for v in args.lrs)
    settings = (f"{args.dataset}, {args.model}, Adam, batch {args.batch_size}, lr {lrs}, "
                f"validation split {args.val_split:g} (every run)" + (", **--quick smoke test**" if args.quick else "")
                + (", extra flags: `" + " ".join(args.extra) + "`" if args.extra else ""))
    text = f"# SSA study ({args.stage})\n\n{settings}\n\n" + "\n".join(s.rstrip() + "\n" for s in sections)
    sw.publish(args.out_dir / "results.md", text)


SPEC = sw.Script(parse=parse_args, run=run_all, report=report)


def main(argv=None):
    return sw.run_script(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
