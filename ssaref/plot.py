"""``python -m ssaref.plot RUN.h5 [RUN.h5 ...] --out FIG.png``: per-epoch curves from run files.

One figure, one panel per quantity the runs logged (a panel is left out when no run has it):

* loss: ``train_loss`` (solid), ``test_loss`` (dashed), ``val_loss`` (dotted, runs with ``--val-split``);
* accuracy (%): ``train_acc``, ``test_acc``, ``val_acc`` likewise;
* eq. (4) angle with BP (degrees) per layer: ``align.grad_mean`` (``--align-every``) and ``svd_angle`` (SSA);
* rank per SVD layer: ``svd_rank`` (section 4.4's schedule, the rank trajectory);
* orthogonality error per SVD layer: ``svd_ortho_U`` and ``svd_ortho_V`` (``||X^T X - I||_F`` at each epoch end,
  log scale).

Runs whose settings differ only in ``--seed`` (and in where they were written or read from) form one group,
drawn as the mean over the seeds with a band of +- one sample standard deviation (epochs cut to the group's
shortest run); the legend names each group by its rule and the settings in which the groups differ.  Per-layer
quantities use one colour per group and one line style per layer.

Errors (a missing file, one that is not an ssaref run, an existing ``--out`` without ``--overwrite``): one line
``error: ...`` on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .cli import OneLineParser, check_output_path, run_main
from .runlog import read_run

__all__ = ["main", "load_runs", "group_runs", "make_figure", "plot_runs", "IGNORED_KEYS", "Run", "Group"]

# config keys that do not change what a run computes (where it was written, how it was shown, which seed)
IGNORED_KEYS = frozenset(
    {
        "seed",
        "out",
        "resume",
        "overwrite",
        "config",
        "data_dir",
        "no_progress",
        "no_download",
        "ssaref_version",
        "eval_batch_size",
        "backend",
        "data_on_device",
        "log_every",
        "threads",
    }
)
_DERIVED = frozenset({"align_layers", "svd_layers"})  # column names, fixed by the other settings
_SUFFIXES = (".png", ".pdf", ".svg")
_STYLES = ("-", "--", ":", "-.")


class Run:
    """One run file: ``path``, ``config`` and ``metrics`` as ``ssaref.runlog.read_run`` returns them."""

    def __init__(self, path, config, metrics):
        self.path, self.config, self.metrics = Path(path), dict(config), dict(metrics)

    @property
    def settings(self) -> dict:
        """The config without the keys in ``IGNORED_KEYS`` and the derived column lists, a rule option left at
        its default (``None`` in the config) replaced by that default: equal settings = the same experiment."""
        from .config import filled_config
        from .rules import RULES

        opts = getattr(RULES.get(str(self.config.get("method")), None), "OPTIONS", {})
        out = {}
        for k, v in filled_config(self.config).items():  # unset options: the writing version's defaults
            if k in IGNORED_KEYS or k in _DERIVED:
                continue
            if k.startswith("rule_"):
                name = k[len("rule_") :]
                if name not in opts:
                    continue  # an option of another rule: not part of this run
                v = _as_option(opts[name][0], opts[name][1] if v is None else v)
            out[k] = v
        return out


class Group:
    """Runs with equal ``settings``; ``label`` is set by ``group_runs``."""

    def __init__(self, runs):
        self.runs = list(runs)
        self.label = ""

    @property
    def seeds(self) -> list:
        return [r.config.get("seed") for r in self.runs]

    def series(self, name):
        """``(epochs (E,), stack (S, E) or (S, E, L))`` of metric ``name`` over the runs that have it (cut to the
        shortest), or None."""
        rows = [r for r in self.runs if name in r.metrics and len(r.metrics[name])]
        if not rows:
            return None
        e = min(len(r.metrics[name]) for r in rows)
        stack = np.stack([np.asarray(r.metrics[name][:e], dtype=np.float64) for r in rows])
        ep = rows[0].metrics.get("epoch")
        epochs = np.asarray(ep[:e], dtype=np.float64) if ep is not None and len(ep) >= e else np.arange(1.0, e + 1)
        return epochs, stack

    def columns(self, attr):
        """Column names of a per-layer metric (``config[attr]``: ``align_layers`` or ``svd_layers``)."""
        return [str(c) for c in self.runs[0].config.get(attr, [])]


def _as_option(typ, v):
    """A rule option's value as its type (the run file keeps the flag's text: ``"false"``, ``"0.1"``)."""
    try:
        if typ is bool and isinstance(v, str):
            return v.strip().lower() in ("true", "1", "yes", "on")
        if typ in (int, float) and isinstance(v, str):
            return typ(v)
    except ValueError:
        pass
    return v


def load_runs(paths) -> list[Run]:
    """Read every run file (``RunFileError``, a ``ValueError``, for a missing or foreign file)."""
    return [Run(p, *read_run(p)[:2]) for p in paths]


def _fmt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by ``settings`` (first-seen order); each group labelled by its rule and the settings that
    differ between the groups (``rule_`` prefixes dropped), with its number of seeds."""
    groups: list[Group] = []
    keys: list[dict] = []
    for r in runs:
        s = r.settings
        for g, k in zip(groups, keys):
            if k == s:
                g.runs.append(r)
                break
        else:
            groups.append(Group([r]))
            keys.append(s)
    # a setting is named where two groups that both have it differ in it (a rule option only its rule has is
    # told by the rule name)
    varying = sorted({k for s in keys for k in s if any(k in s2 and s2[k] != s[k] for s2 in keys)} - {"method"})
    for g, s in zip(groups, keys):
        parts = [str(s.get("method", "?"))]
        parts += [f"{k[len('rule_') :] if k.startswith('rule_') else k}={_fmt(s[k])}" for k in varying if k in s]
        n = len(g.runs)
        g.label = " ".join(parts) + (f" ({n} seeds)" if n > 1 else "")
    return groups


def _band(ax, x, stack, color, style, label, scale=1.0):
    """Mean line (and +- one sample std band when there are several runs) of ``stack`` (S, E)."""
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean / nanstd of an all-nan column: the nan meant
        mean = np.nanmean(stack, axis=0) * scale
        ax.plot(x, mean, color=color, ls=style, label=label)
        if stack.shape[0] > 1:
            sd = np.nanstd(stack, axis=0, ddof=1) * scale
            ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.2, lw=0)
    return mean


_SCALARS = [  # (panel title, y label, [(metric, line style, name)], scale)
    (
        "loss",
        "cross-entropy",
        [("train_loss", "-", "train"), ("test_loss", "--", "test"), ("val_loss", ":", "val")],
        1.0,
    ),
    (
        "accuracy",
        "accuracy (%)",
        [("train_acc", "-", "train"), ("test_acc", "--", "test"), ("val_acc", ":", "val")],
        100.0,
    ),
]
_LAYERED = [  # (panel title, y label, metric, column attribute, log scale)
    ("eq. (4) angle with BP (align.grad_mean)", "degrees", "align.grad_mean", "align_layers", False),
    ("eq. (4) angle, SSA update vs BP (svd_angle)", "degrees", "svd_angle", "svd_layers", False),
    ("rank per SVD layer (svd_rank)", "rank", "svd_rank", "svd_layers", False),
    ("orthogonality error ||U^T U - I||_F (svd_ortho_U)", "error", "svd_ortho_U", "svd_layers", True),
    ("orthogonality error ||V^T V - I||_F (svd_ortho_V)", "error", "svd_ortho_V", "svd_layers", True),
]


def make_figure(groups: list[Group], title: str | None = None):
    """The matplotlib figure (Agg) for ``groups``; returns ``(fig, panels)`` with ``panels`` = ``{title: axes}``
    and each plotted mean kept on its line (``ax.lines``), so tests can read the curves back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    todo: list = []
    for t, yl, items, scale in _SCALARS:
        if any(g.series(m) is not None for g in groups for m, _, _ in items):
            todo.append(("scalar", t, yl, items, scale))
    for t, yl, m, attr, log in _LAYERED:
        if any(g.series(m) is not None for g in groups):
            todo.append(("layered", t, yl, (m, attr), log))
    if not todo:
        raise ValueError("the run files hold no per-epoch metrics to plot (no epoch finished yet?)")
    ncol = 2 if len(todo) > 1 else 1
    nrow = math.ceil(len(todo) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.0 * ncol, 3.6 * nrow), squeeze=False)
    colors = [plt.cm.tab10(i % 10) for i in range(len(groups))]
    panels = {}
    for ax, (kind, t, yl, spec, extra) in zip(axes.flat, todo):
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(yl)
        style_handles = {}
        if kind == "scalar":
            for g, c in zip(groups, colors):
                for m, ls, name in spec:
                    got = g.series(m)
                    if got is None:
                        continue
                    x, stack = got
                    _band(ax, x, stack, c, ls, f"{g.label}: {name}", scale=extra)
                    style_handles[name] = Line2D([], [], color="k", ls=ls, label=name)
        else:
            m, attr = spec
            for g, c in zip(groups, colors):
                got = g.series(m)
                if got is None:
                    continue
                x, stack = got
                cols = g.columns(attr) or [f"layer {j}" for j in range(stack.shape[2])]
                for j in range(stack.shape[2]):
                    ls = _STYLES[j % len(_STYLES)]
                    name = cols[j] if j < len(cols) else f"layer {j}"
                    _band(ax, x, stack[:, :, j], c, ls, f"{g.label}: layer {name}")
                    style_handles[f"layer {name}"] = Line2D([], [], color="k", ls=ls, label=f"layer {name}")
            if extra:
                ax.set_yscale("log")
        if style_handles:
            ax.legend(handles=list(style_handles.values()), fontsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        panels[t] = ax
    for ax in list(axes.flat)[len(todo) :]:
        ax.set_visible(False)
    group_handles = [Line2D([], [], color=c, lw=2, label=g.label) for g, c in zip(groups, colors)]
    fig.legend(handles=group_handles, loc="lower center", ncol=1, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0.0, min(0.4, 0.02 + 0.018 * len(groups)), 1.0, 0.97 if title else 1.0))
    return fig, panels


def plot_runs(paths, out, *, overwrite=False, title=None) -> Path:
    """Read ``paths``, group them, draw the figure and write it to ``out`` atomically (checked first)."""
    out = Path(out)
    if out.suffix.lower() not in _SUFFIXES:
        raise ValueError(f"--out {out}: the figure must end in {', '.join(_SUFFIXES)}")
    check_output_path(out, overwrite=overwrite)
    groups = group_runs(load_runs(paths))
    fig, _ = make_figure(groups, title)
    import matplotlib.pyplot as plt

    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=out.suffix.lower()[1:])
    finally:
        plt.close(fig)
    return out


def build_parser():
    p = OneLineParser(prog="python -m ssaref.plot", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN.h5", help="run files written by python -m ssaref.train --out")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf or .svg)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--title", default=None, help="figure title")
    return p


def _main(argv):
    args = build_parser().parse_args(argv)
    path = plot_runs(args.runs, args.out, overwrite=args.overwrite, title=args.title)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
