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

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ssaref.cli import run_main

from .arguments import (
    BACKENDS, PAPER_BATCH, PAPER_LR, QUICK_FLAGS, QUICK_WIDTH, ArgParser, Config, add_models_option, add_mpi_options,
    build_parser, check_datasets, grid, parse_args, parse_seeds, pick_methods, pick_models, positive_int, run_path,
    select_methods, split_passthrough, train_flags,
)
from .publishing import (
    FIGURE_ONLY, SeedResult, _figure_only, fmt_mean_std, fmt_num, layer_series, mean_std, paired_interval,
    paper_values, publish, pyplot, quiet, results_table, save_figure, settings_line, short_layer, summarise,
    write_atomic, write_results,
)
from .running import (
    _THREADS, RunStatus, check_runs, exit_code, failed_runs, launch, map_runs, run_one, run_sweep, settings_mismatch,
)


__all__ = ["Config", "RunStatus", "SeedResult", "Script", "Sweep", "run_script", "PAPER_LR", "QUICK_FLAGS",
           "QUICK_WIDTH", "build_parser", "parse_args", "parse_seeds", "split_passthrough", "pick_methods",
           "add_models_option", "pick_models", "grid", "select_methods", "train_flags", "run_one", "launch",
           "check_runs", "run_sweep",
           "summarise", "mean_std", "paired_interval", "fmt_mean_std", "fmt_num", "results_table", "write_atomic",
           "save_figure",
           "short_layer", "run_path", "settings_line", "pyplot", "write_results", "layer_series", "ArgParser",
           "check_datasets", "failed_runs", "exit_code", "BACKENDS", "FIGURE_ONLY", "paper_values", "positive_int",
           "quiet", "map_runs", "add_mpi_options", "publish", "settings_mismatch", "PAPER_BATCH"]


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
