"""The command line of a validation script: the common flags, seeds, methods, models, the sweep's
configurations (``Config``) and the ``ssaref.train`` flags of each run."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssaref.cli import OneLineParser, positive
from ssaref.data import DATASETS



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


positive_int = positive(int)


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
    p.add_argument("--epochs", type=positive_int, default=None,
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
    p.add_argument("--batch-size", type=positive_int, default=PAPER_BATCH, help=f"default {PAPER_BATCH} (section 6)")
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
