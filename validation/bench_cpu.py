"""``validation/results/bench_cpu.md``: the CPU benchmark's runs (``python -m ssaref.bench``) and the before/after
tables of issue 26, regenerated from the runs' JSON files.

Two subcommands::

    # the runs: every suite, twice on this checkout, once on the "before" commit's checkout (a worktree)
    python -m validation.bench_cpu run --label after-1 --out runs/bench
    python -m validation.bench_cpu run --label after-2 --out runs/bench --no-memory
    python -m validation.bench_cpu run --label before --out runs/bench --checkout ../pin-before --before
    # the report
    python -m validation.bench_cpu report --out runs/bench --markdown validation/results/bench_cpu.md

Each run calls ``python -m ssaref.bench`` of its checkout in a subprocess (``--threads 2`` unless given), one
suite after another: a quiet machine is the caller's job (the load average at each run's start and end is in its
JSON and in the report).  ``--before`` spells the suites for a checkout that predates the bench's labelled
variants (``ssa:epochs=10``), ``--conv-save`` and the block timing: that checkout's engines are timed by this
checkout's loop (``ssaref/bench/blocks.py``, ``portable``), its SSA/SVD-BP rows are the rules at their build ranks,
and it has no convolution-memory suite (its convolutions kept the column matrix).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SMALL = "mlp,lenet,convnet"
LARGE = "smallconv,vgg13,resnet20,resnet32,resnet56,resnet18"
SVD_MODELS = "mlp,lenet,smallconv"
# SSA and SVD-BP at the untrained model's full rank and at the ranks their default schedules reach (10 epochs)
SVD_METHODS = "bp,ssa,ssa:epochs=10,svd-bp,svd-bp:epochs=10"
SUITES = {
    "bp-small": ["--models", SMALL, "--method", "bp", "--repeats", "20"],
    "bp-large": ["--models", LARGE, "--method", "bp", "--repeats", "5"],
    # the mean over 20 steps in turns of 2 untimed + 10 timed after 3 warm-up steps: the timed steps are each
    # engine's steps 6-15 and 18-27, which hold a retract-every-10 rule's 10th and 20th step (its retraction in its
    # true proportion, 2 in 20: the before checkout's SSA) and none of SSA's eq. (4) angle steps (every 50th)
    "svd": [
        "--models",
        SVD_MODELS,
        "--method",
        SVD_METHODS,
        "--statistic",
        "mean",
        "--repeats",
        "20",
        "--block",
        "10",
        "--block-warmup",
        "2",
    ],
    "convmem": [
        "--models",
        "smallconv,vgg13,resnet20",
        "--method",
        "bp,ssa,svd-bp",
        "--conv-save",
        "all",
        "--repeats",
        "5",
    ],
    # the same at the ranks the default schedules reach (step memory; the times are 3 steps a turn)
    "convmem-scheduled": [
        "--models",
        "smallconv,vgg13,resnet20",
        "--method",
        "bp,ssa:epochs=10,svd-bp:epochs=10",
        "--conv-save",
        "all",
        "--repeats",
        "3",
        "--block",
        "3",
        "--block-warmup",
        "1",
    ],
    # the local rules of issue 22 beside BP and DFA (the README's cost line)
    "local": ["--models", SMALL, "--method", "bp,dfa,predsim,auglocal", "--repeats", "20"],
}
# the same suites for a checkout before issue 26 (``portable``): BP and the SVD rules at their build ranks, timed by
# this checkout's loop (ssaref/bench/blocks.py) on that checkout's engines; memory by that checkout's probe
BEFORE = {
    "bp-small": {"models": SMALL.split(","), "methods": ["bp"], "repeats": 20, "statistic": "median"},
    "bp-large": {"models": LARGE.split(","), "methods": ["bp"], "repeats": 5, "statistic": "median"},
    "svd": {
        "models": SVD_MODELS.split(","),
        "methods": ["bp", "ssa", "svd-bp"],
        "repeats": 20,
        "statistic": "mean",
        "block": 10,
        "block_warmup": 2,
    },
}
HERE = Path(__file__).resolve()
BLOCKS = HERE.parents[1] / "ssaref" / "bench" / "blocks.py"


def portable(spec):
    """One suite on the checkout this process imports ``ssaref`` from (an older one: ``run --before``), in the
    bench's JSON form: its engines (``ssaref.bench.ssaref_engine``, ``_torch_engine``), this checkout's timing loop
    (loaded from its file, ``BLOCKS``), its memory probe (``ssaref.bench.measure_memory``)."""
    import importlib.util
    import statistics
    import time

    import numpy as np

    from ssaref import bench
    from ssaref.backend import keep_large_allocations
    from ssaref.nn import build_model
    from ssaref.threads import apply_threads

    eng = getattr(bench, "engines", bench)  # a package since the bench's split, one module before it
    keep_large_allocations()
    apply_threads(spec["threads"])
    loader = importlib.util.spec_from_file_location("_blocks", spec["blocks"])
    blocks = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(blocks)
    stat = statistics.mean if spec["statistic"] == "mean" else statistics.median
    load = lambda: list(os.getloadavg())
    bw = spec.get("block_warmup", 2)
    out = {
        "machine": {"loadavg_start": load()},
        "settings": {**spec, "block": spec.get("block", 5), "block_warmup": bw, "settle": 0.25},
        "configs": [],
    }
    for name in spec["models"]:
        shape = (1, 28, 28) if name in ("mlp", "lenet", "convnet") else (3, 32, 32)
        x, y = eng._batch(shape, 128, 10, 0)
        engines = {m: eng.ssaref_engine(name, shape, m, x, y)[1] for m in spec["methods"]}
        engines["torch"] = eng._torch_engine(build_model(name, shape, 10, dtype=np.float32, seed=0), x, y)[1]
        t0 = time.perf_counter()
        times = blocks.time_blocks(
            engines, repeats=spec["repeats"], warmup=3, block=spec.get("block", 5), block_warmup=bw
        )
        med = {m: 1e3 * stat(v) for m, v in times.items()}
        c = {"model": name, "input": "x".join(map(str, shape)), "torch_ms": med["torch"], "rows": []}
        mem = bench.measure_memory("torch", name, shape, threads=spec["threads"]) if spec["memory"] else {}
        c["torch_step_mib"] = mem.get("step_mib")
        for m in spec["methods"]:
            mm = bench.measure_memory(m, name, shape, threads=spec["threads"]) if spec["memory"] else {}
            c["rows"].append(
                {
                    "method": m,
                    "status": "ok",
                    "ssaref_ms": med[m],
                    "ratio": med[m] / med["torch"],
                    "vs_bp": med[m] / med[spec["methods"][0]],
                    "step_mib": mm.get("step_mib"),
                }
            )
        print(
            f"[before] {name}: "
            + ", ".join(f"{m} {v:.1f} ms" for m, v in med.items())
            + f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        out["configs"].append(c)
    out["machine"]["loadavg_end"] = load()
    Path(spec["json"]).write_text(json.dumps(out, indent=1))


def run(args):
    out = Path(args.out) / args.label
    out.mkdir(parents=True, exist_ok=True)
    suites = BEFORE if args.before else SUITES
    names = list(suites) if args.suites == "all" else args.suites.split(",")
    for name in names:
        if name not in suites:
            raise ValueError(f"--suites: unknown suite {name!r}; choose from {', '.join(suites)}")
    for name in names:
        if args.before:
            spec = {
                **suites[name],
                "threads": args.threads,
                "memory": not args.no_memory,
                "blocks": str(BLOCKS),
                "json": str((out / f"{name}.json").resolve()),
            }
            cmd = [sys.executable, str(HERE), "portable", json.dumps(spec)]
            env = {**os.environ, "PYTHONPATH": str(Path(args.checkout).resolve())}
        else:
            cmd = [
                sys.executable,
                "-m",
                "ssaref.bench",
                *suites[name],
                "--threads",
                str(args.threads),
                "--json",
                str((out / f"{name}.json").resolve()),
                "--markdown",
                str((out / f"{name}.md").resolve()),
                "--overwrite",
            ] + (["--no-memory"] if args.no_memory else [])
            env = None
        print(f"[{args.label}] {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=args.checkout, check=True, env=env)
        (out / f"{name}.cmd").write_text(" ".join(["python", *cmd[1:]]) + "\n")


def _positive(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m validation.bench_cpu", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run the suites on a checkout")
    r.add_argument("--label", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--checkout", default=".")
    r.add_argument("--before", action="store_true", help="the suites as a bench before issue 26 spells them")
    r.add_argument("--suites", default="all")
    r.add_argument("--threads", type=_positive, default=2)
    r.add_argument("--no-memory", action="store_true")
    w = sub.add_parser("portable", help="(internal) one suite on the checkout on PYTHONPATH")
    w.add_argument("spec")
    q = sub.add_parser("report", help="write the markdown report from the runs' JSON files")
    q.add_argument("--out", required=True)
    q.add_argument("--markdown", required=True)
    q.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.what == "run":
            run(args)
        elif args.what == "portable":
            portable(json.loads(args.spec))
        else:
            report(args)
    except (ValueError, OSError, subprocess.CalledProcessError) as exc:  # one line, exit 2 (the house rule)
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


def _rows(res):
    """``{(model, input, method): (config, row)}`` of a bench JSON (None: nothing)."""
    out = {}
    for c in (res or {}).get("configs", []):
        for r in c["rows"]:
            out[(c["model"], c["input"], r["method"])] = (c, r)
    return out


def _refs(res):
    """``{(model, input): (config, row)}``: each configuration's reference row, its first (the bench puts BP first,
    and ``portable`` the first of its methods)."""
    return {(c["model"], c["input"]): (c, c["rows"][0]) for c in (res or {}).get("configs", [])}


def _f(v, fmt="{:.2f}", none="—"):
    return none if v is None else fmt.format(v)


def _pct(v):
    from ssaref.bench.report import _pct  # this checkout's (the report runs here; ``portable`` may not)

    return _pct(v)


def _mib(v):
    return _f(v, "{:.0f}")


def _load_line(res):
    from ssaref.bench.report import _fmt_load

    m = res["machine"]
    return f"load {_fmt_load(m.get('loadavg_start'))} → {_fmt_load(m.get('loadavg_end'))}"


def _runs(out):
    """``{label: {suite: json}}`` of every run found under ``out``."""
    runs = {}
    for d in sorted(Path(out).iterdir()):
        if d.is_dir():
            got = {f.stem: json.loads(f.read_text()) for f in sorted(d.glob("*.json"))}
            if got:
                runs[d.name] = got
    return runs


def _bp_table(runs):
    after = [lab for lab in runs if lab.startswith("after")]
    lines = [
        "| model | input | params | before ratio | "
        + " | ".join(f"{lab} ratio" for lab in after)
        + " | ssaref ms | torch ms | ssaref limit | torch limit | step MiB before | step MiB after | torch step MiB |",
        "| --- | --- | ---: | ---: | "
        + " | ".join("---:" for _ in after)
        + " | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    first = runs[after[0]]
    for suite in ("bp-small", "bp-large"):
        for (model, inp), (c, r) in _refs(first.get(suite)).items():
            b = _refs(runs.get("before", {}).get(suite)).get((model, inp))
            ratios = [_refs(runs[lab].get(suite)).get((model, inp)) for lab in after]
            lines.append(
                f"| {model} | {inp} | {c['params']:,} | {_f(b and b[1]['ratio'])} | "
                + " | ".join(f"**{_f(x[1]['ratio'])}**" if x else "—" for x in ratios)
                + f" | {_f(r['ssaref_ms'], '{:.1f}')} | {_f(c['torch_ms'], '{:.1f}')} | {_pct(r.get('limit'))} | "
                f"{_pct(c.get('torch_limit'))} | {_mib(b and b[1].get('step_mib'))} | {_mib(r.get('step_mib'))} | "
                f"{_mib(c.get('torch_step_mib'))} |"
            )
    return lines


def _svd_table(runs):
    after = [lab for lab in runs if lab.startswith("after")]
    first = _rows(runs[after[0]].get("svd"))
    before = _rows(runs.get("before", {}).get("svd"))
    lines = [
        "| model | method | ranks | before vs BP | "
        + " | ".join(f"{lab} vs BP" for lab in after)
        + " | counted FLOPs vs BP | limit (BP's) | step MiB (BP's) |",
        "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in after) + " | ---: | ---: | ---: |",
    ]
    refs = _refs(runs[after[0]].get("svd"))
    for (model, inp, method), (c, r) in first.items():
        bp = refs[(model, inp)][1]
        if r is bp or r["status"] != "ok":
            continue
        from ssaref.bench.engines import method_spec  # this checkout's (the report runs here)

        epochs = method_spec(method)[2]
        ranks = f"schedule's ({epochs} epochs)" if epochs else "full (untrained)"
        b = before.get((model, inp, method))
        lines.append(
            f"| {model} | {method} | {ranks} | {_f(b and b[1]['vs_bp'])} | "
            + " | ".join(
                f"**{_f(x[1]['vs_bp'])}**" if x else "—"
                for x in (_rows(runs[lab].get("svd")).get((model, inp, method)) for lab in after)
            )
            + f" | {r['flops'] / bp['flops']:.2f} | {_pct(r.get('limit'))} ({_pct(bp.get('limit'))}) | "
            f"{_mib(r.get('step_mib'))} ({_mib(bp.get('step_mib'))}) |"
        )
    return lines


def _mem_table(runs, suite="convmem"):
    after = [lab for lab in runs if lab.startswith("after") and suite in runs[lab]]
    if not after:
        return []
    res = runs[after[0]][suite]
    before = {}
    for suite in ("bp-large", "svd"):  # the first that measured a configuration's memory
        for key, (c, r) in _rows(runs.get("before", {}).get(suite)).items():
            if r.get("step_mib") is not None:
                before.setdefault(key, (c, r))
    lines = [
        "| model | rule | step MiB before (columns) | columns | input (default) | recompute | torch | "
        "input / torch | recompute / torch | time input / columns | time recompute / input |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in res["configs"]:
        rows = {r["method"]: r for r in c["rows"]}
        for m in [r["method"] for r in c["rows"] if "@" not in r["method"]]:
            col, inp, rec = rows.get(m), rows.get(f"{m}@input"), rows.get(f"{m}@recompute")
            b = before.get((c["model"], c["input"], m))
            t = c.get("torch_step_mib")
            mib = lambda r: r.get("step_mib") if r else None
            ratio = lambda a, b: a / b if a and b else None
            ms = lambda r: r.get("ssaref_ms") if r else None
            lines.append(
                f"| {c['model']} | {m} | {_mib(b and b[1].get('step_mib'))} | {_mib(mib(col))} | {_mib(mib(inp))} | "
                f"{_mib(mib(rec))} | {_mib(t)} | {_f(ratio(mib(inp), t))} | {_f(ratio(mib(rec), t))} | "
                f"{_f(ratio(ms(inp), ms(col)))} | {_f(ratio(ms(rec), ms(inp)))} |"
            )
    return lines


def _local_table(runs):
    after = [lab for lab in runs if lab.startswith("after") and "local" in runs[lab]]
    if not after:
        return []
    res = runs[after[0]]["local"]
    methods = res["settings"]["methods"][1:]  # the first is the reference
    lines = [
        "| model | BP ms (step MiB) | " + " | ".join(f"{m} vs BP (ms, step MiB)" for m in methods) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in methods) + " |",
    ]
    for c in res["configs"]:
        rows = {r["method"]: r for r in c["rows"]}
        bp = c["rows"][0]
        cells = [
            f"**{_f(rows[m]['vs_bp'])}** ({_f(rows[m]['ssaref_ms'], '{:.1f}')}, {_mib(rows[m].get('step_mib'))})"
            if rows.get(m, {}).get("status") == "ok"
            else "—"
            for m in methods
        ]
        lines.append(
            f"| {c['model']} | {bp['ssaref_ms']:.1f} ({_mib(bp.get('step_mib'))}) | " + " | ".join(cells) + " |"
        )
    return lines


def _profiles(res):
    out = []
    for c in (res or {}).get("configs", []):
        pr = c.get("profile")
        if pr:
            ops = ", ".join(f"{o['op'].strip()} {o['ms']:.1f} ms ({100 * o['fraction']:.0f} %)" for o in pr["ops"][:9])
            out.append(f"- {c['model']} {c['input']} ({pr['step_ms']:.1f} ms a step): {ops}.")
    return out


def report(args):
    from ssaref.bench.report import _blas_line  # this checkout's (``portable`` runs on another)

    out, md = Path(args.out), Path(args.markdown)
    if md.exists() and not args.overwrite:
        raise ValueError(f"{md} exists; --overwrite replaces it")
    runs = _runs(out)
    after = [lab for lab in runs if lab.startswith("after")]
    if not after:
        raise ValueError(f"no after-* run under {out}")
    a = runs[after[0]]
    any_res = next(iter(a.values()))
    mach, lim = any_res["machine"], any_res.get("limits") or {}
    text = [
        "# ssaref vs PyTorch, CPU training step (`python -m ssaref.bench`, issue 26)",
        "",
        f"Regenerated by `python -m validation.bench_cpu report` from the JSON files of the runs "
        f"(`python -m validation.bench_cpu run`; commands at the end).  Machine: {mach['cpu']}, "
        f"{mach['cores_available']} cores; BLAS {_blas_line(mach)}; "
        f"numpy {mach['numpy']}, torch {mach['torch']}, Python {mach['python']}.  Batch 128, float32, Adam (lr 1e-4), "
        "2 threads, the engines (ssaref's rules, torch's BP) in one process taking turns, each turn a block of "
        "timed steps after untimed ones that let the previous engine's threads go idle (`ssaref/bench/blocks.py`; "
        "the before checkout's engines timed by the same loop); `ratio` = ssaref step / torch's "
        "BP step, `vs BP` = a rule's step / ssaref's BP step.  Limit column: the step's FLOPs and bytes counted "
        "from the layer shapes (`ssaref.cost.step_cost`), bound = max(FLOPs / measured GEMM rate, bytes / measured "
        f"copy bandwidth), limit = bound / measured step (run {after[0]}: GEMM "
        f"{_f(lim.get('sgemm_gflops'), '{:.0f}')} GFLOP/s, copy {_f(lim.get('stream_gbs'), '{:.1f}')} GB/s).  "
        "Step MiB: the resident-set high-water mark of a step above what persists between steps, a fresh process "
        "per engine (it does not depend on the load).  What the numbers say against issue 26's goals: "
        "docs/decisions.md D8 (time, the limit column) and D10 (memory).",
        "",
        "Each run had the machine to itself (nothing else was started during it); the load average at each "
        "suite's start and end (about 2: the benchmark's own two threads):",
        "",
    ]
    for lab, got in runs.items():
        text.append(f"- {lab}: " + "; ".join(f"{s} {_load_line(r)}" for s, r in got.items()))
    text += ["", "## 1. BP against torch, before and after", ""] + _bp_table(runs)
    text += ["", "## 2. SSA and SVD-BP against ssaref's BP (mean over every step)", ""] + _svd_table(runs)
    mem = _mem_table(runs)
    if mem:
        text += ["", "## 3. Convolution step memory: what a convolution keeps (`--conv-save`)", ""] + mem
    mem = _mem_table(runs, "convmem-scheduled")
    if mem:
        text += ["", "At the ranks the default schedules reach (`rule:epochs=10`; 3 timed steps a turn):", ""] + mem
    local = _local_table(runs)
    if local:
        text += ["", "## 3b. The local rules against ssaref's BP (median)", ""] + local
    text += ["", "## 4. Where ssaref's BP step goes (per-op profile, run " + after[0] + ")", ""]
    for suite in ("bp-small", "bp-large"):
        text += _profiles(a.get(suite))
    text += ["", "## Runs", ""]
    for lab, got in runs.items():
        for suite in got:
            cmd = out / lab / f"{suite}.cmd"
            mdf = out / lab / f"{suite}.md"
            text += [f"### {lab}: {suite}", ""]
            if cmd.exists():
                text += ["```", cmd.read_text().strip(), "```", ""]
            if mdf.exists():
                body = mdf.read_text().strip().splitlines()
                text += [line for line in body if not line.startswith("# ")] + [""]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(text).rstrip() + "\n")
    print(f"wrote {md}")


if __name__ == "__main__":
    sys.exit(main())
