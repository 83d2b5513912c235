"""Shared driver of the validation scripts (one script per table / figure of the paper).

Every script is ``main(argv) = run_script(SPEC, argv)``: :func:`run_script` parses and checks the command line,
runs the sweep, writes ``results.md`` (and the figure) and returns the exit code.  A table / figure script's
``SPEC`` is a :class:`Sweep`, which declares only what is the script's own: its configurations, the paper's
values, its extra options and checks, its sections and figure.  A script with a command line of its own
(``fmnist_mlp_methods``) hands :func:`run_script` a :class:`Script` (parse, run, report) instead.

A sweep is a list of :class:`Config` (one row of the paper's table: a learning rule on a model and a data
set, with the ``ssaref.train`` flags that select it); :func:`run_sweep` trains every configuration for every
seed through ``ssaref.train.main`` (in process), one run file each,
``<out-dir>/<config name>-seed<seed>.h5``.  A run file that already holds the requested number of epochs is
not trained again; one that holds fewer is resumed (``--resume``), so an interrupted sweep is simply started
again.  :func:`summarise` reads the run files back (``ssaref.runlog.read_run``) and :func:`results_table` writes
the measured numbers next to the paper's (mean ± std over seeds, column ``paper − ssaref``).  A configuration
that is not run (not implemented in ssaref, or excluded with ``--methods``) is a row saying so, never a number.

Common command line (:func:`build_parser`; ``python -m validation.<script> ...``)::

    --dataset D[,D]  --epochs N  --seeds 0,1,2  --backend {auto,numpy,cupy}  --data-dir DIR
    --out-dir DIR (default runs/<script>, runs/<script>_quick with --quick)  --quick  --lr  --batch-size
    --methods m1,m2  [-- extra ssaref.train flags passed to every run]

Arguments are checked before any run starts (unknown data set, method or backend, ``--epochs`` < 1, bad
seeds): one line ``error: ...`` on stderr and exit code 2.  :func:`exit_code` ends a script: it prints
``N runs failed: name/seed, ...`` on stderr and returns 1 when any run of the sweep stopped with a non-zero
exit code (``results.md`` is written first, with "failed" rows), else 0.

``--quick`` is a smoke test: 1 epoch, ``--train-limit 256 --test-limit 128``, conv nets narrowed with
``--width-mult``; flags after ``--`` come last, so they override the script's (e.g. ``-- --train-limit 32``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import io
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ssaref import commands, config
from ssaref.atomic import atomic_path, write_text
from ssaref.cli import OneLineParser, positive, run_main
from ssaref.data import DATASETS
from ssaref.runlog import RunFileError, read_run

__all__ = ["Config", "RunStatus", "SeedResult", "Script", "Sweep", "run_script", "PAPER_LR", "QUICK_FLAGS",
           "QUICK_WIDTH", "build_parser", "parse_args", "parse_seeds", "split_passthrough", "pick_methods",
           "add_models_option", "pick_models", "grid", "select_methods", "train_flags", "run_one", "launch",
           "check_runs", "run_sweep",
           "summarise", "mean_std", "fmt_mean_std", "fmt_num", "results_table", "write_atomic", "save_figure",
           "short_layer", "run_path", "settings_line", "pyplot", "write_results", "layer_series", "ArgParser",
           "check_datasets", "failed_runs", "exit_code", "BACKENDS", "FIGURE_ONLY", "paper_values"]

PAPER_LR = 5e-4          # section 6: Adam, learning rate between 1e-4 and 5e-4; we take the upper end
PAPER_BATCH = 128        # section 6: batch 128 on CIFAR
BACKENDS = ("auto", "numpy", "cupy")
QUICK_FLAGS = ["--train-limit", "256", "--test-limit", "128"]
QUICK_WIDTH = {"smallconv": 0.125, "vgg13": 0.125, "resnet20": 0.25, "resnet32": 0.25, "resnet56": 0.25,
               "resnet18": 0.125, "lenet": 0.5, "convnet": 0.25}


@dataclass
class Config:
    """One configuration of a sweep (one table row / one curve).

    Attributes
    ----------
    name : str
        File stem of its run files, unique within the sweep (``"cifar10-smallconv-bp"``).
    label : str
        Method label shown in tables and legends (``"SVD-BP"``).
    method, model, dataset : str
        ``ssaref.train`` choices; ``method`` is also the key ``--methods`` selects on.
    flags : list of str
        Further ``ssaref.train`` flags of this configuration (rule options, ``--align-every``).
    skip : str or None
        Why this configuration is not run (the row says so instead of a number).
    """

    name: str
    label: str
    method: str
    model: str
    dataset: str
    flags: list = field(default_factory=list)
    skip: str | None = None


@dataclass
class RunStatus:
    """What :func:`run_one` did: exit code (0 also when nothing had to be trained) and the error line."""

    path: Path
    rc: int
    error: str = ""


@dataclass
class SeedResult:
    """One finished (or partly finished) run read back from its file."""

    seed: int
    config: dict
    metrics: dict            # name -> array, truncated to the requested epochs
    epochs_done: int
    error: str = ""

    @property
    def final_acc(self) -> float:
        """Test accuracy (%) after the last completed epoch."""
        return 100.0 * float(self.metrics["test_acc"][-1])

    @property
    def seconds_per_epoch(self) -> float:
        s = self.metrics.get("seconds")
        return float(np.mean(s)) if s is not None and len(s) else float("nan")


# ------------------------------------------------------------------------------------------ command line
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``"0-4"`` -> ``[0, 1, 2, 3, 4]``."""
    seeds = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                if int(b) < int(a):
                    raise ValueError
                seeds.extend(range(int(a), int(b) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds: no seed in {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds: repeated seed in {text!r}")
    return seeds


_positive_int = positive(int)
ArgParser = OneLineParser  # one-line `error:` and exit 2, as ssaref.train


def add_models_option(p, models):
    """``--models`` (comma-separated subset of ``models``, default all)."""
    p.add_argument("--models", default=",".join(models), help=f"subset of {','.join(models)}")


def pick_models(p, text, models) -> list[str]:
    """Parse ``--models``; an unknown or empty selection is a one-line parser error."""
    picked = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in picked if m not in models]
    if bad or not picked:
        p.error(f"--models: unknown model {bad[0] if bad else text!r}; choose from {','.join(models)}")
    return picked


def check_datasets(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``"cifar10,cifar100"`` -> ``["cifar10", "cifar100"]``; an empty list or a name outside
    ``ssaref.data.DATASETS`` is a parser error (exit 2) naming it."""
    names = [d.strip() for d in str(text).split(",") if d.strip()]
    if not names:
        parser.error(f"--dataset: no data set in {text!r}")
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        parser.error(f"--dataset: unknown data set {unknown[0]!r}; choose from {','.join(DATASETS)}")
    return names


def build_parser(script: str, description: str, *, dataset: str, epochs: int, seeds: str,
                 methods: list[str], epilog: str | None = None) -> argparse.ArgumentParser:
    """The flags every validation script shares.

    Parameters
    ----------
    script : str
        Script stem; the default output folder is ``runs/<script>`` (``runs/<script>_quick`` with ``--quick``).
    dataset : str
        Default ``--dataset`` (comma-separated where the paper's table has several).
    epochs : int
        Default ``--epochs`` (the paper's where stated, else the script's documented choice).
    seeds : str
        Default ``--seeds`` (the paper's number of runs where stated).
    methods : list of str
        Methods of the experiment; ``--methods`` selects a subset (the others become "not run" rows).
    """
    p = ArgParser(prog=f"python -m validation.{script}", description=description, epilog=epilog,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(_script=script, _all_methods=list(methods))
    p.add_argument("--dataset", default=dataset, help=f"data set(s), comma-separated (default {dataset})")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"epochs per run (default {epochs}; 1 with --quick)")
    p.set_defaults(_default_epochs=epochs, _default_seeds=seeds)
    p.add_argument("--seeds", default=None, help=f"seeds, e.g. 0,1,2,3,4 or 0-4 (default {seeds}; 0 with --quick)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="auto, numpy or cupy (ssaref.train --backend)")
    p.add_argument("--data-dir", default=None, help="dataset root (then $SSAREF_DATA, ./data)")
    p.add_argument("--out-dir", default=None,
                   help=f"output folder (default runs/{script}, runs/{script}_quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 epoch, --train-limit 256 --test-limit 128, narrow conv nets")
    p.add_argument("--lr", type=float, default=PAPER_LR, help=f"Adam learning rate (default {PAPER_LR}, section 6)")
    p.add_argument("--batch-size", type=_positive_int, default=PAPER_BATCH, help=f"default {PAPER_BATCH} (section 6)")
    p.add_argument("--methods", default=",".join(methods), help=f"subset of {','.join(methods)}")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    add_mpi_options(p)
    return p


def add_mpi_options(p) -> None:
    """``--mpi``: spread the sweep's independent runs over the ranks of ``mpiexec -n N`` (round-robin; rank 0
    writes results.md); ``--mpi-timeout``: how long rank 0 waits for the others' runs."""
    p.add_argument("--mpi", action="store_true",
                   help="spread the runs over MPI ranks (mpiexec -n N python -m validation.<script> --mpi ...)")
    p.add_argument("--mpi-timeout", type=float, default=7 * 86400.0,
                   help="seconds rank 0 waits for the other ranks' runs (default 7 days)")
    from ssaref.threads import threads_arg

    p.add_argument("--threads", type=threads_arg, default=None,
                   help="BLAS/OpenMP threads of every run (default: the cores available; one per rank with --mpi)")


_CHECKING: list = []   # while check_runs runs: [errors]; launch then only checks its run's arguments


def check_runs(jobs: list, fn) -> None:
    """Check the ``ssaref.train`` arguments of every run ``fn(job)`` would launch (``ssaref.config``: parsed and
    validated, nothing trained nor written); the first refused one raises ValueError naming its run (exit 2)."""
    _CHECKING[:] = [[]]
    try:
        for job in jobs:
            fn(job)
        errors = _CHECKING[0]
    finally:
        _CHECKING[:] = []
    if errors:
        more = f" (and {len(errors) - 1} more runs refused)" if len(errors) > 1 else ""
        raise ValueError(f"{errors[0]}{more}; no run was started")


def map_runs(jobs: list, fn, args, log=print) -> dict:
    """``{key: RunStatus}`` of ``fn(job) -> (key, RunStatus)`` over ``jobs``, in job order; with ``--mpi`` rank r
    runs jobs r, r + N, r + 2N, ... (each writing its own run file atomically) and every rank gets all the
    statuses, so rank 0 can write results.md.  Sets ``args.rank`` (0 without MPI)."""
    check_runs(jobs, fn)   # every run's ssaref.train arguments are checked before the first run starts
    args.rank, size = 0, 1
    comm = None
    if getattr(args, "mpi", False):
        from ssaref.distributed import MPIComm

        comm = MPIComm(timeout=args.mpi_timeout)
        args.rank, size = comm.rank, comm.size
        if not _THREADS:   # one node's cores shared among its ranks
            from ssaref.distributed import default_threads_per_rank
            from ssaref.threads import apply_threads

            _THREADS[:] = [apply_threads(default_threads_per_rank())["threads"]]
        log(f"[rank {comm.rank}/{size}] runs {len(jobs[comm.rank::size])} of the {len(jobs)} runs")
    results = {i: fn(job) for i, job in enumerate(jobs) if i % size == args.rank}
    if comm is not None:
        for part in comm.allgather(results, "the sweep's final gather of run statuses"):
            results.update(part)
    return dict(results[i] for i in sorted(results))


def split_passthrough(argv=None) -> tuple[list[str], list[str]]:
    """``(own, extra)``: ``argv`` (default ``sys.argv[1:]``) cut at the first lone ``--``; ``extra`` are the
    ``ssaref.train`` flags passed to every run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def pick_methods(parser: argparse.ArgumentParser, text: str, choices, *, unique: bool = False) -> list[str]:
    """Parse ``--methods`` (comma-separated names out of ``choices``); an empty selection, an unknown name or,
    with ``unique``, a repeated one is a one-line parser error (exit 2)."""
    picked = [m.strip() for m in text.split(",") if m.strip()]
    if not picked:
        parser.error(f"--methods: no method in {text!r}")
    unknown = [m for m in picked if m not in choices]
    if unknown:
        parser.error(f"--methods: unknown method {unknown[0]!r}; choose from {','.join(choices)}")
    if unique and len(set(picked)) != len(picked):
        parser.error(f"--methods: repeated method in {text!r}")
    return picked


def parse_args(parser: argparse.ArgumentParser, argv=None):
    """Parse ``argv``; everything after a lone ``--`` is kept as extra ``ssaref.train`` flags (``args.extra``)."""
    argv, extra = split_passthrough(argv)
    args = parser.parse_args(argv)
    args.extra = extra
    try:
        args.seeds = parse_seeds(args.seeds if args.seeds is not None else
                                 ("0" if args.quick else args._default_seeds))
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.epochs is None:
        args.epochs = 1 if args.quick else args._default_epochs
    if args.out_dir is None:
        args.out_dir = f"runs/{args._script}_quick" if args.quick else f"runs/{args._script}"
    args.datasets = check_datasets(parser, args.dataset)
    args.selected = pick_methods(parser, args.methods, args._all_methods)
    if not np.isfinite(args.lr) or args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    return args


def grid(datasets, models, methods, labels: dict, *, skip: dict | None = None, flags=()) -> list[Config]:
    """One :class:`Config` per data set x model x method (in that nesting), named
    ``<dataset>-<model>-<method>``, labelled ``labels[method]``, skipped with ``skip[method]`` where given,
    each with its own copy of ``flags``."""
    skip = skip or {}
    return [Config(name=f"{ds}-{model}-{m}", label=labels[m], method=m, model=model, dataset=ds,
                   flags=list(flags), skip=skip.get(m))
            for ds in datasets for model in models for m in methods]


def select_methods(configs: list[Config], args) -> list[Config]:
    """Mark configurations whose method is not in ``--methods`` as skipped (their rows say "not run")."""
    for c in configs:
        if c.skip is None and c.method not in args.selected:
            c.skip = "not run (excluded by --methods)"
    return configs


def run_path(out_dir, cfg: Config, seed: int) -> Path:
    return Path(out_dir) / f"{cfg.name}-seed{seed}.h5"


def train_flags(cfg: Config, seed: int, args) -> list[str]:
    """The ``ssaref.train`` argv of one run (without ``--out`` / ``--resume``)."""
    argv = ["--method", cfg.method, "--model", cfg.model, "--dataset", cfg.dataset,
            "--epochs", str(args.epochs), "--seed", str(seed), "--optimizer", "adam", "--lr", repr(args.lr),
            "--batch-size", str(args.batch_size), "--backend", args.backend, "--no-progress"]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    if args.quick:
        argv += list(QUICK_FLAGS)
        if cfg.model in QUICK_WIDTH:
            argv += ["--width-mult", str(QUICK_WIDTH[cfg.model])]
    return argv + list(cfg.flags) + list(args.extra)


class _Tee(io.TextIOBase):
    """Writes to a stream and remembers the text (to report a run's ``error: ...`` line)."""

    def __init__(self, stream):
        self.stream, self.buf = stream, io.StringIO()

    def write(self, s):
        self.buf.write(s)
        return self.stream.write(s)

    def flush(self):
        self.stream.flush()


def _epochs_in(path: Path) -> int:
    try:
        _, _, ck = read_run(path)
    except RunFileError:
        return -1
    return int(ck["epoch"]) if ck is not None else 0


def run_one(cfg: Config, seed: int, args, log=print) -> RunStatus:
    """Train (or resume, or leave alone) one configuration for one seed; see :func:`launch`."""
    out = run_path(args.out_dir, cfg, seed)
    return launch(out, train_flags(cfg, seed, args), args.epochs, f"{cfg.name} seed {seed}", log=log)


# settings that may differ between a cached run file and the run asked for (the epoch count is handled apart)
_NOT_SETTINGS = {"epochs", "out", "ssaref_version", "align_layers", "svd_layers", "threads", "data_on_device"}
_THREADS: list = []   # --threads of the script, passed on to every run (run_script sets it)


def settings_mismatch(path: Path, argv: list) -> str | None:
    """``None`` when the run file ``path`` was made with the full effective configuration ``argv`` asks for (all
    ``ssaref.train`` settings but the epoch count), else a one-line description of the first differences.  An
    unreadable file or argv is a mismatch."""
    try:
        have = json.loads(json.dumps(config.read_config(path)))   # 0.1.0 files: their defaults
        want = json.loads(json.dumps(config.run_config(config.parse_args(list(argv)))))
    except (RunFileError, ValueError, TypeError, SystemExit) as exc:
        return f"cannot compare settings ({exc})"
    keys = sorted((set(have) | set(want)) - _NOT_SETTINGS)
    diffs = [f"{k}: {have.get(k)!r} in the file, {want.get(k)!r} asked" for k in keys if have.get(k) != want.get(k)]
    return "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "") if diffs else None


def launch(out: Path, argv: list, epochs: int, label: str, log=print) -> RunStatus:
    """Run ``ssaref.train`` with ``argv --out out``: left alone when ``out`` already holds ``epochs`` epochs made
    with the same settings, resumed when it holds fewer; a cached file made with other settings is never reused
    nor replaced (the run fails with a message naming the differences).  Never raises on a failed run: an
    exception inside ``ssaref.train.main`` is reported as exit code 1 with its ``error: Type: message`` line."""
    argv = list(argv) + (["--threads", str(_THREADS[0])] if _THREADS and "--threads" not in argv else [])
    if _CHECKING:   # check_runs: the arguments only
        err = config.check_argv(argv)
        if err is not None:
            _CHECKING[0].append(f"run {label}: {err.removeprefix('error: ')}")
        return RunStatus(out, 0 if err is None else 2, err or "")
    if out.exists():
        done = _epochs_in(out)
        differ = settings_mismatch(out, argv) if done > 0 else None
        if differ:
            err = (f"error: {out} holds a run made with other settings ({differ}); delete it or choose another "
                   f"--out-dir")
            log(f"   {label}: {err}")
            return RunStatus(out, 2, err)
    argv += ["--out", str(out)]
    if out.exists():
        if done >= epochs:
            return RunStatus(out, 0)
        if done > 0:
            argv += ["--resume", str(out)]
        else:  # unreadable or checkpoint-less file of this sweep: start over (write_run replaces it atomically)
            log(f"   {out} holds no usable checkpoint; training from scratch")
            argv += ["--overwrite"]
    log(f"== {label}: python -m ssaref.train {' '.join(argv)}")
    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        try:
            rc = commands.main(["train", *argv])
        except SystemExit as exc:  # ssaref.train's argparse rejected a flag (one "error:" line already printed)
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception as exc:  # a crash inside training is a failed run: the sweep goes on, the row says so
            traceback.print_exc()
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
    err = ""
    if rc != 0:
        lines = [ln for ln in tee.buf.getvalue().splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        log(f"   {label} stopped with exit code {rc}: {err}")
    return RunStatus(out, rc, err)


def run_sweep(configs: list[Config], args, log=print) -> dict:
    """Run every configuration that is not skipped, for every seed; ``{(name, seed): RunStatus}`` (over MPI
    ranks with ``--mpi``, see :func:`map_runs`)."""
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, seed) for cfg in configs if cfg.skip is None for seed in args.seeds]
    return map_runs(jobs, lambda job: ((job[0].name, job[1]), run_one(job[0], job[1], args, log=log)), args, log)


def failed_runs(status: dict) -> list[tuple[str, int]]:
    """``(name, seed)`` of every run in ``status`` (from :func:`run_sweep`) that exited with a non-zero code."""
    return [key for key, st in status.items() if st.rc != 0]


def exit_code(status: dict, stream=None) -> int:
    """A script's exit code: 1 (after ``N runs failed: name/seed, ...`` on ``stream``, default stderr) when a
    run failed, else 0.  Call it after ``results.md`` is written, so the failed rows are on disk either way."""
    failed = failed_runs(status)
    if not failed:
        return 0
    print(f"{len(failed)} runs failed: " + ", ".join(f"{name}/{seed}" for name, seed in failed),
          file=stream if stream is not None else sys.stderr, flush=True)
    return 1


def summarise(configs: list[Config], args, status: dict | None = None) -> dict:
    """Read the run files back: ``{name: [SeedResult, ...]}`` (seeds with no file are left out).

    Metrics are truncated to ``args.epochs`` rows, so a longer run in the same folder reports the requested
    epoch.  ``SeedResult.error`` holds the run's error line when it stopped early in this invocation.
    """
    status = status or {}
    out = {}
    for cfg in configs:
        res = []
        if cfg.skip is None:
            for seed in args.seeds:
                path = run_path(args.out_dir, cfg, seed)
                st = status.get((cfg.name, seed))
                try:
                    config, metrics, _ = read_run(path) if path.exists() else (None, None, None)
                except RunFileError:
                    config = metrics = None
                if not metrics or "test_acc" not in metrics or len(metrics["test_acc"]) == 0:
                    if st is not None and st.rc != 0:
                        res.append(SeedResult(seed, {}, {}, 0, st.error or f"exit code {st.rc}"))
                    continue
                m = {k: v[:args.epochs] for k, v in metrics.items()
                     if not k.startswith("align_step")}  # per-record rows are not per-epoch
                m.update({k: v for k, v in metrics.items() if k.startswith("align_step")})
                res.append(SeedResult(seed, config, m, len(m["test_acc"]), st.error if st else ""))
        out[cfg.name] = res
    return out


# ------------------------------------------------------------------------------------------ formatting
def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; nan for one value) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def fmt_num(v, digits=2) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def fmt_mean_std(values, digits=2) -> str:
    """``"87.57 ± 0.14"`` over two or more finite values, ``"87.57"`` for one, ``"not run"`` for none."""
    m, s, n = mean_std(values)
    if n == 0:
        return "not run"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def _fmt_paper(p, digits=2) -> str:
    if p is None:
        return "—"
    if isinstance(p, str):
        return p
    if isinstance(p, tuple):
        return f"{p[0]:.{digits}f} ± {p[1]:.{digits}f}"
    return f"{p:.{digits}f}"


def _paper_mean(p):
    if isinstance(p, tuple):
        return float(p[0])
    if isinstance(p, (int, float)):
        return float(p)
    return float("nan")


def results_table(configs: list[Config], results: dict, args, *, paper: dict, quantity: str = "acc",
                  group_cols=("dataset", "model")) -> tuple[str, dict]:
    """Markdown table: measured (mean ± std over seeds) next to the paper's value and ``paper − ssaref``.

    Parameters
    ----------
    paper : dict
        ``cfg.name -> (mean, std)``, a float, a string (e.g. ``"NA"``) or absent (``"—"``).
    quantity : ``"acc"`` (test accuracy %) or ``"err"`` (test error % = 100 - accuracy %)

    Returns
    -------
    text : str
    measured : dict
        ``cfg.name -> (mean, std, n)`` of the measured quantity (only configurations with a finite value).
    """
    qname = "test accuracy (%)" if quantity == "acc" else "test error (%)"
    cols = ["data set" if c == "dataset" else c for c in group_cols]
    head = cols + ["method", "epochs", "seeds", f"ssaref {qname}", f"paper {qname}", "paper − ssaref",
                   "s/epoch", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    measured = {}
    for cfg in configs:
        res = results.get(cfg.name, [])
        ok = [r for r in res if r.epochs_done > 0]
        vals = [r.final_acc if quantity == "acc" else 100.0 - r.final_acc for r in ok]
        m, s, n = mean_std(vals)
        p = paper.get(cfg.name)
        notes = []
        if cfg.skip is not None:
            cell, ep, sd, sec = cfg.skip, "", "", ""
        elif not ok:
            errs = "; ".join(f"seed {r.seed}: {r.error}" for r in res if r.error)
            cell, ep, sd, sec = ("failed: " + errs) if errs else "not run", "", "", ""
        else:
            cell = fmt_mean_std(vals)
            done = sorted({r.epochs_done for r in ok})
            ep = "/".join(map(str, done)) if done != [args.epochs] else str(args.epochs)
            if done != [args.epochs]:
                notes.append(f"incomplete: {ep} of {args.epochs} epochs")
            sd = ",".join(str(r.seed) for r in ok)
            missing = [sd_ for sd_ in args.seeds if sd_ not in {r.seed for r in ok}]
            if missing:
                notes.append("no result for seed " + ",".join(map(str, missing)))
            for r in res:
                if r.error:
                    notes.append(f"seed {r.seed}: {r.error}")
            sec = fmt_num(float(np.nanmean([r.seconds_per_epoch for r in ok])), 1)
            if n:
                measured[cfg.name] = (m, s, n)
        diff = _paper_mean(p) - m if n and np.isfinite(_paper_mean(p)) else float("nan")
        row = [str(getattr(cfg, g)) for g in group_cols] + [cfg.label, ep, sd, cell, _fmt_paper(p),
                                                            fmt_num(diff) if np.isfinite(diff) else "—", sec,
                                                            "; ".join(notes)]
        lines.append("| " + " | ".join(x.replace("|", "/") for x in row) + " |")
    return "\n".join(lines) + "\n", measured


def settings_line(args) -> str:
    """One line naming the settings every run of the sweep shared."""
    s = (f"Adam, lr {args.lr:g}, batch {args.batch_size}, {args.epochs} epoch(s), seeds "
         f"{','.join(map(str, args.seeds))}, backend {args.backend}")
    if args.quick:
        s += ", **--quick smoke test** (" + " ".join(QUICK_FLAGS) + ", narrow conv nets): not comparable to the paper"
    if args.extra:
        s += ", extra flags: `" + " ".join(args.extra) + "`"
    return s


def write_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(write_text(path, text))


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_layer(key: str) -> str:
    """Column name of a layer shared by dense and SVD models: ``"1.W"`` and ``"1"`` -> ``"1"``."""
    return key[:-2] if key.endswith(".W") else key


def publish(path, text: str) -> Path:
    """A script's report: ``text`` printed, then written to ``path`` atomically."""
    path = write_atomic(path, text)
    print(text)
    print(f"wrote {path}")
    return path


def write_results(args, title: str, sections: list[str]) -> Path:
    """``<out-dir>/results.md``: title, the shared settings, then ``sections``; printed and written atomically."""
    text = f"# {title}\n\n{settings_line(args)}\n\n" + "\n".join(s.rstrip() + "\n" for s in sections)
    return publish(Path(args.out_dir) / "results.md", text)


def layer_series(seed_results: list, metric: str, columns_attr: str = "align_layers"):
    """Per-epoch, per-layer metric averaged over seeds.

    Parameters
    ----------
    seed_results : list of SeedResult
        Runs of one configuration.
    metric : str
        Run-file metric of shape (E, L), e.g. ``"align.grad_mean"``.

    Returns
    -------
    layers : list of str
        Column names (``config[columns_attr]``, ``.W`` stripped so dense and SVD models share names).
    mean, std : ndarray (E, L)
        nanmean / nanstd over the seeds (epochs cut to the shortest run); ``None`` when no run has the metric.
    """
    rows = [r for r in seed_results if metric in r.metrics and len(r.metrics[metric])]
    if not rows:
        return [], None, None
    cols = [short_layer(str(c)) for c in rows[0].config.get(columns_attr, [])]
    e = min(len(r.metrics[metric]) for r in rows)
    stack = np.stack([np.asarray(r.metrics[metric][:e], dtype=np.float64) for r in rows])  # (S, E, L)
    if not cols:
        cols = [f"layer {j}" for j in range(stack.shape[2])]
    with np.errstate(all="ignore"), _quiet():
        return cols, np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-nan column is the intended nan
        yield


# ------------------------------------------------------------------------------------------ scripts
FIGURE_ONLY = "— (figure only)"   # the paper value of a figure's rows: the paper prints no numbers


def _figure_only(cfg: Config) -> str:
    return FIGURE_ONLY


def paper_values(table: dict, *, by: str = "model", only: str | None = None, elsewhere: str = "") -> Callable:
    """The ``paper`` of a :class:`Sweep` from the paper's table as printed: ``table[cfg.<by>][cfg.method]``
    (``None``, shown "—", where the table has no such cell); with ``only``, a configuration on another data
    set gets ``elsewhere`` (the paper has no column for it)."""
    def paper(cfg: Config):
        if only is not None and cfg.dataset != only:
            return elsewhere
        return table.get(getattr(cfg, by), {}).get(cfg.method)
    return paper


@dataclass
class Script:
    """A validation script as its three steps; :func:`run_script` chains them and returns the exit code.

    Attributes
    ----------
    parse : callable ``(argv) -> args``
        The checked command line; a bad argument is one ``error: ...`` line and ``SystemExit(2)`` before
        anything is started or written.
    run : callable ``(args) -> status``
        ``{(name, seed): RunStatus}`` of every run; never raises on a failed run.
    report : callable ``(args, status) -> None``
        Writes ``results.md`` (and the figure) from the run files, with "failed" rows for failed runs.
    """

    parse: Callable
    run: Callable
    report: Callable


@dataclass
class Sweep:
    """A table / figure script: what is its own; the rest (command line of :func:`build_parser`, the sweep,
    the results table, ``results.md``, the figure file, the exit code) is :func:`run_script`'s.

    Attributes
    ----------
    script : str
        Script stem (``"table1_smallconv"``): default output folder ``runs/<script>``, figure ``<script>.png``.
    doc : str
        ``--help`` text (the script's docstring).
    title : str
        Heading of ``results.md``.
    notes : str
        First section of ``results.md`` (what the paper reports and how it is compared).
    methods : list of str
        The methods ``--methods`` selects from.
    configs : callable ``(args) -> list[Config]``
        The configurations (``--methods`` is applied to them afterwards, :func:`select_methods`).
    epochs, dataset, seeds
        Defaults of ``--epochs``, ``--dataset``, ``--seeds``.
    paper : callable ``(Config) -> value``
        The paper's value of a row (see :func:`results_table`; :func:`paper_values` builds it from the
        paper's table); default :data:`FIGURE_ONLY`.
    quantity : ``"acc"`` or ``"err"``
        What the results table shows.
    models : list of str or None
        With a list: a ``--models`` option (subset, default all), parsed into ``args.models``.
    align_every, align_help
        With an int: an ``--align-every`` option with that default (must be > 0).
    options : callable ``(parser) -> None`` or None
        Adds the script's further options.
    check : callable ``(parser, args) -> None`` or None
        Checks them (``parser.error`` on a bad one).
    sections : callable ``(configs, results) -> list[str]`` or None
        ``results.md`` sections after the results table (``results`` as :func:`summarise` returns it).
    plot : callable ``(configs, results, path) -> Path`` or None
        Draws the figure to ``path`` (skipped with ``--no-plot``); ``figure_note`` follows its name in
        ``results.md``.
    """

    script: str
    doc: str
    title: str
    notes: str
    methods: list
    configs: Callable
    epochs: int
    dataset: str = "cifar10"
    seeds: str = "0"
    paper: Callable = _figure_only
    quantity: str = "acc"
    models: list | None = None
    align_every: int | None = None
    align_help: str = ""
    options: Callable | None = None
    check: Callable | None = None
    sections: Callable | None = None
    plot: Callable | None = None
    figure_note: str = ""

    def parse(self, argv=None):
        """The checked command line; ``args.configs`` holds the sweep's configurations."""
        p = build_parser(self.script, self.doc, dataset=self.dataset, epochs=self.epochs, seeds=self.seeds,
                         methods=self.methods)
        if self.models is not None:
            add_models_option(p, self.models)
        if self.options is not None:
            self.options(p)
        if self.align_every is not None:
            p.add_argument("--align-every", type=int, default=self.align_every, help=self.align_help)
        args = parse_args(p, argv)
        if self.models is not None:
            args.models = pick_models(p, args.models, self.models)
        if self.align_every is not None and args.align_every <= 0:
            p.error(f"--align-every must be > 0, got {args.align_every}")
        if self.check is not None:
            self.check(p, args)
        args.configs = select_methods(self.configs(args), args)
        return args

    def run(self, args) -> dict:
        return run_sweep(args.configs, args)

    def report(self, args, status: dict) -> None:
        cfgs = args.configs
        results = summarise(cfgs, args, status)
        table, _ = results_table(cfgs, results, args, paper={c.name: self.paper(c) for c in cfgs},
                                 quantity=self.quantity)
        sections = [self.notes, table] + (list(self.sections(cfgs, results)) if self.sections else [])
        if self.plot is not None and not args.no_plot:
            png = self.plot(cfgs, results, Path(args.out_dir) / f"{self.script}.png")
            sections.append(f"\nFigure: `{png.name}`{self.figure_note}")
        write_results(args, self.title, sections)


def run_script(spec, argv=None) -> int:
    """The ``main`` of every validation script: parse and check ``argv`` (default ``sys.argv[1:]``; bad
    arguments: exit 2 before any run), run, write ``results.md`` (and the figure), then :func:`exit_code`
    (1 when a run failed, else 0).

    Parameters
    ----------
    spec : Sweep or Script
        Anything with ``parse(argv)``, ``run(args)`` and ``report(args, status)``.
    """
    def body(argv):
        args = spec.parse(argv)
        if getattr(args, "threads", None) is not None:
            from ssaref.threads import apply_threads

            _THREADS[:] = [apply_threads(args.threads)["threads"]]
        status = spec.run(args)
        if getattr(args, "rank", 0):   # an MPI rank other than 0 ran its share; rank 0 reports
            return exit_code(status, stream=io.StringIO())
        spec.report(args, status)
        return exit_code(status)   # after results.md, so the failed rows are on disk either way

    return run_main(body, argv)   # ssaref's one error path: "error: ..." and 2, or a bug report and 1
