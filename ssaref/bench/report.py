"""The report: the machine's description and the markdown tables of a benchmark result (``--markdown``)."""

from __future__ import annotations

import os
import platform

import numpy as np

from ..threads import blas_info, default_threads


def _turns(s):
    """How the engines took turns (``blocks.time_blocks``); files of a bench before the blocks alternated steps."""
    block, bw = s.get("block", 1), s.get("block_warmup", 0)
    if block == 1 and bw == 0:
        return "engines alternating step by step"
    idle = s.get("settle")
    wait = f"{idle:g} s idle, then " if idle else ""
    return f"engines taking turns, each turn {wait}{bw} untimed and {block} timed steps"


def machine_info(threads):
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores_available": default_threads(),
        "threads": threads,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "blas": blas_info(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": load,
        "openblas_num_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def _mem(peak, step):
    return "—" if peak is None else f"{peak:.0f}/{_fmt(step, '.0f')}"


def _dev_or_host(dev, peak, step):
    """The memory column: a GPU step's device MiB (``dev``), else the host's ``peak/step``."""
    return f"{dev:.0f} dev" if dev is not None else _mem(peak, step)


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def _blas_line(info):
    parts = []
    for p in info.get("blas", []):
        if p.get("user_api") != "blas":
            continue
        s = f"{p.get('internal_api', '?')} {p.get('version', '')}".strip()
        extra = ", ".join(str(p[k]) for k in ("architecture", "threading_layer") if p.get(k))
        parts.append(f"{s} ({extra}, {p.get('num_threads')} threads)" if extra else s)
    omp = [
        f"{p.get('prefix', p.get('internal_api', '?'))} ({p.get('num_threads')} threads)"
        for p in info.get("blas", [])
        if p.get("user_api") == "openmp"
    ]
    return ("; ".join(parts) or "unknown") + (f"; OpenMP: {', '.join(omp)}" if omp else "")


def markdown(result):
    """The short markdown table of a benchmark ``result`` (what ``--markdown`` writes)."""
    info, s = result["machine"], result["settings"]
    lines = [
        "# ssaref vs PyTorch, CPU training step",
        "",
        f"Machine: {info['cpu']}, {info['cores_available']} cores available; threads {info['threads']} "
        f"(BLAS and torch); BLAS: {_blas_line(info)}; numpy {info['numpy']}, torch {info['torch']}, "
        f"Python {info['python']}.  Load average (1, 5, 15 min) at start "
        f"{_fmt_load(info.get('loadavg_start'))}, at end {_fmt_load(info.get('loadavg_end'))}.",
        "",
        f"Batch {s['batch']}, float32, Adam, {s.get('statistic', 'median')} of {s['repeats']} steps after "
        f"{s['warmup']} warm-up steps, "
        + _turns(s)
        + f" in one process (ssaref {s['backend']}); the torch side is always BP.  "
        "`ratio` = ssaref step / torch BP step; `vs BP` = the rule's step / ssaref's BP step.  Memory (MiB, "
        "a fresh process per engine, malloc returning freed blocks to the kernel): `peak` = resident-set "
        f"high-water mark over optimiser set-up, one warm-up step and {s['memory_steps']} steps above the "
        "resident set of the built model; `step` = the high-water mark of the later steps above the resident "
        "set between steps (activations, caches, gradients, workspace).",
        "",
    ]
    if result.get("sgemm"):
        g = result["sgemm"]
        lines += [
            f"sgemm peak (float32 `A @ B` on {'the GPU (CuPy)' if g.get('backend') == 'cupy' else 'the CPU'}, "
            f"SmallConv's conv GEMM shapes at {g['input']}, batch {s['batch']}): "
            f"**{g['peak_gflops']:.0f} GFLOP/s** ("
            + ", ".join(f"{r['m']}x{r['k']} @ {r['k']}x{r['n']}: {r['gflops']:.0f}" for r in g["shapes"])
            + ")."
        ]
        if g.get("smallconv"):
            c = g["smallconv"]
            lines += [
                f"SmallConv BP step ({c['input']}): {c['gflop']:.1f} GFLOP of GEMMs; ssaref "
                f"{c['ssaref_gflops']:.0f} GFLOP/s ({100 * c['ssaref_frac']:.0f} % of peak), torch "
                f"{c['torch_gflops']:.0f} GFLOP/s ({100 * c['torch_frac']:.0f} % of peak)."
            ]
        lines.append("")
    lim = result.get("limits")
    if lim:
        lines += [
            f"Limit column: the machine measured at the start of this run, float32 GEMM {lim['gemm_n']}^3 "
            f"**{lim['sgemm_gflops']:.1f} GFLOP/s**, copy bandwidth ({lim['stream_mib']} MiB, read + write) "
            f"**{lim['stream_gbs']:.1f} GB/s**.  Each step's FLOPs and bytes are counted from the layer "
            'shapes, op by op (`ssaref.cost.step_cost`, convention in docs/internals.md "Cost model"); '
            "`bound` = max(FLOPs / GEMM rate, bytes / bandwidth) of the step; `limit` = bound / measured step "
            "(100 % = at the machine's limit for that arithmetic and traffic; torch against BP's counts).",
            "",
        ]
    lines += [
        "| model | input | params | ssaref BP ms | torch BP ms | ratio | ssaref MiB peak / step | "
        "torch MiB peak / step | BP GFLOP | BP MB | bound ms | ssaref limit | torch limit |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in result["configs"]:
        bp = c["rows"][0]
        lines.append(
            f"| {c['model']} | {c['input']} | {c['params']:,} | {_fmt(bp['ssaref_ms'], '.1f')} | "
            f"{c['torch_ms']:.1f} | **{_fmt(bp['ratio'], '.2f')}** | "
            f"{_mem(bp.get('ssaref_mib'), bp.get('step_mib'))} | "
            f"{_mem(c.get('torch_mib'), c.get('torch_step_mib'))} | "
            f"{_fmt(_scaled(bp.get('flops'), 1e9), '.3f')} | {_fmt(_scaled(bp.get('bytes'), 1e6), '.1f')} | "
            f"{_fmt(bp.get('bound_ms'), '.2f')} | {_pct(bp.get('limit'))} | {_pct(c.get('torch_limit'))} |"
        )
    profiled = [c for c in result["configs"] if c.get("profile")]
    for c in profiled:
        pr = c["profile"]
        lines += [
            "",
            f"Where ssaref's BP step goes, {c['model']} {c['input']} (ratio {c['rows'][0]['ratio']:.2f}; "
            f"per-op timers, {pr['step_ms']:.0f} ms a step): "
            + ", ".join(
                f"{o['op'].strip()} {o['ms']:.0f} ms ({100 * o['fraction']:.0f} %)"
                for o in pr["ops"]
                if o["fraction"] >= 0.01
            )
            + ".",
        ]
    saved = [(c, r) for c in result["configs"] for r in c["rows"] if r.get("rule") and r.get("ssaref_ms")]
    if saved:
        lines += [
            "",
            "What a convolution keeps for its weight gradient (`--conv-save`): `columns` (the forward's "
            "im2col matrix), `input` (the backward rebuilds the columns a kernel offset at a time) or `recompute` "
            "(input, and a factorised convolution keeps only its input: the backward runs its first pass again); "
            "the same gradients up to round-off.  `vs columns` = step time / the same rule's step in columns mode "
            "(timed in the same turns); memory MiB peak/step.",
            "",
            "| model | input | rule | mode | columns ms | mode ms | vs columns | columns MiB | mode MiB | torch MiB |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c, r in saved:
            base = next(x for x in c["rows"] if x["method"] == r["rule"])
            lines.append(
                f"| {c['model']} | {c['input']} | {r['rule']} | {r.get('conv_save')} | {base['ssaref_ms']:.1f} | "
                f"{r['ssaref_ms']:.1f} | {r['ssaref_ms'] / base['ssaref_ms']:.2f} | "
                f"{_mem(base.get('ssaref_mib'), base.get('step_mib'))} | "
                f"{_mem(r.get('ssaref_mib'), r.get('step_mib'))} | "
                f"{_mem(c.get('torch_mib'), c.get('torch_step_mib'))} |"
            )
    rules = [m for m in result["settings"]["methods"] if m != "bp"]
    if rules:
        lines += [
            "",
            "Each rule's step relative to ssaref's BP step (`vs BP`; ms and peak MiB in brackets); "
            "— = the rule does not train this model.",
            "",
            "| model | input | " + " | ".join(rules) + " |",
            "| --- | --- | " + " | ".join("---:" for _ in rules) + " |",
        ]
        for c in result["configs"]:
            by = {r["method"]: r for r in c["rows"]}
            cells = []
            for m in rules:
                r = by.get(m)
                if r is None or r.get("vs_bp") is None:
                    cells.append("—")
                else:
                    cells.append(f"{r['vs_bp']:.2f} ({r['ssaref_ms']:.0f} ms, {_fmt(r.get('ssaref_mib'), '.0f')})")
            lines.append(f"| {c['model']} | {c['input']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Each rule's counted step (`step_cost`): GFLOP, MB moved, the roofline bound (ms) and the "
            "limit column (bound / measured step); auxiliary-network parameters (PredSim, AugLocal) apart from "
            "the model's (the `params` column above counts the model only).",
            "",
            "| model | input | method | GFLOP | MB | bound ms | step ms | limit | aux params |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in result["configs"]:
            for r in c["rows"]:
                if r.get("flops") is None:
                    continue
                lines.append(
                    f"| {c['model']} | {c['input']} | {r['method']} | {r['flops'] / 1e9:.3f} | "
                    f"{r['bytes'] / 1e6:.1f} | {_fmt(r.get('bound_ms'), '.2f')} | "
                    f"{_fmt(r.get('ssaref_ms'), '.1f')} | {_pct(r.get('limit'))} | "
                    f"{r.get('aux_params', 0):,} |"
                )
    return "\n".join(lines) + "\n"


def _scaled(v, unit):
    return None if v is None else v / unit


def _pct(v):
    return "—" if v is None else f"{100 * v:.0f} %"


def _loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def _fmt_load(load):
    return "unknown" if not load else ", ".join(f"{v:.2f}" for v in load)
