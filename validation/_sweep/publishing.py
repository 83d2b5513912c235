"""Publishing a sweep: run files read back (``summarise``), mean ± std, the results table next to the
paper's values, ``results.md`` and figures written atomically."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ssaref.atomic import atomic_path, write_text
from ssaref.runlog import RunFileError, read_run

from .arguments import QUICK_FLAGS, Config, run_path



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


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; nan for one value) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def paired_interval(d) -> tuple[float, float, float, float]:
    """``(mean, sample std, low, high)`` of paired differences ``d`` (one per seed) with the two-sided 95 %
    Student t interval, n - 1 degrees of freedom (n >= 2)."""
    from scipy.stats import t

    d = np.asarray(d, dtype=np.float64)
    m, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(t.ppf(0.975, d.size - 1)) * sd / np.sqrt(d.size)
    return m, sd, m - half, m + half


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
    with np.errstate(all="ignore"), quiet():
        return cols, np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)


@contextlib.contextmanager
def quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-nan column is the intended nan
        yield


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
