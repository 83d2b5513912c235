"""The command line of ``python -m ssaref.bench`` (``main``): parses and checks the flags, runs the measurements
in order and writes ``--json`` / ``--markdown``.  Nothing in the package imports this module but ``__init__`` and
``__main__``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from ..atomic import write_text
from ..backend import keep_large_allocations, resolve_backend
from ..cli import OneLineParser, check_output_path, count, nonnegative_float, run_main
from ..threads import apply_threads, default_threads, threads_arg
from . import __doc__ as PACKAGE_DOC
from .engines import CIFAR_INPUT, _input_for, method_spec, set_tf32, torch_device
from .limits import machine_limits, sgemm_peak, smallconv_gemms
from .memory import measure_memory
from .profile import op_profile
from .report import _blas_line, _dev_or_host, _fmt_load, _loadavg, _pct, machine_info, markdown
from .timing import add_limits, bench_config

DEFAULT_MODELS = ("mlp", "lenet", "convnet", "smallconv")
# Upper bounds of the integer options: what one benchmark run can do (a bound of its loop or its memory), so a
# typo such as --repeats 1000000000 is refused before the first step instead of running for days.
MAX_BATCH, MAX_REPEATS, MAX_WARMUP, MAX_MEMORY_STEPS, MAX_INPUT_SIDE = 65536, 100_000, 10_000, 1000, 4096
MAX_LIMIT_GEMM, MAX_LIMIT_STREAM_MIB = 16384, 16384  # a 16384^2 float32 GEMM is 3 GiB; 16 GiB of copy


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input: expected CxHxW (e.g. 3x32x32), got {text!r}")
    if max(shape) > MAX_INPUT_SIDE:
        raise ValueError(f"--input {text}: channels, height and width must each be at most {MAX_INPUT_SIDE}")
    return shape


# --conv-save both / all: the save modes timed beside columns mode, each rule's rows labelled <rule>@<mode>
ALSO_SAVE = {"both": ("input",), "all": ("input", "recompute")}


MAX_SETTLE = 60.0  # seconds of idling before each turn (--settle)


def bounded_seconds(text):
    v = nonnegative_float(text)
    if v > MAX_SETTLE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SETTLE:g} seconds, got {text}")
    return v


def _parse(argv):
    from ..nn import MODELS
    from ..rules import RULES, build_rule

    p = OneLineParser(prog="python -m ssaref.bench", description=PACKAGE_DOC.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma list or 'all' ({', '.join(MODELS)})")
    p.add_argument(
        "--input",
        default="auto",
        help="comma list of CxHxW input shapes, or 'auto': each model on its paper data set's shape "
        "(1x28x28 for mlp, lenet, convnet; 3x32x32 for the others)",
    )
    p.add_argument(
        "--method",
        default="bp",
        help=f"comma list of rules or 'all' ({', '.join(RULES)}); the torch side is BP; an entry "
        "rule:key=value:... is a labelled variant, the rule built with those options (e.g. ssa:beta=0.01); the "
        "key epochs=N times the step after the rule's N epoch ends of an N-epoch run (ssa:epochs=10: SSA at the "
        "ranks its default schedule reaches; plain ssa runs at the untrained model's full rank)",
    )
    p.add_argument("--batch-size", type=count(MAX_BATCH, "one batch must fit in memory"), default=128)
    p.add_argument("--repeats", type=count(MAX_REPEATS, "timed steps per rule and model"), default=20)
    p.add_argument("--warmup", type=count(MAX_WARMUP, "untimed steps per rule and model"), default=3)
    p.add_argument(
        "--block",
        type=count(MAX_REPEATS, "timed steps per engine and turn"),
        default=5,
        help="timed steps each engine runs per turn (default 5; 1 with --block-warmup 0 and --settle 0: single "
        "steps in turn, which on a machine with few cores times each engine beside the last one's spinning "
        "thread pool: ssaref/bench/blocks.py)",
    )
    p.add_argument(
        "--block-warmup",
        type=count(MAX_WARMUP, "untimed steps per engine and turn", zero=True),
        default=2,
        help="untimed steps each engine runs at the start of its turn (default 2; 0: every step after --warmup is "
        "timed, so that --statistic mean counts a rule's periodic work in its true proportion, each turn's first "
        "step then cold)",
    )
    p.add_argument(
        "--settle",
        type=bounded_seconds,
        default=0.25,
        help=f"seconds the machine idles before each turn (default 0.25, at most {MAX_SETTLE:g}: the last engine's "
        "thread pool stops spinning; OpenBLAS's workers spin about 0.1 s)",
    )
    p.add_argument(
        "--statistic",
        default="median",
        choices=("median", "mean"),
        help="per-step statistic: median (default) or mean of the timed steps (a rule whose cost varies by step, "
        "e.g. a retraction every 10th step, is counted in its true proportion when the timed steps cover whole "
        "periods: --block-warmup 0, or --block and --block-warmup that line up with the period)",
    )
    p.add_argument(
        "--threads",
        type=threads_arg,
        default=None,
        help="BLAS/OpenMP/torch threads (default: the cores this process may use, "
        f"here {default_threads()}); on a shared machine give the free cores",
    )
    p.add_argument("--backend", default="numpy")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--markdown", default=None, help="also write a short markdown table to this file")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --markdown files")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-steps", type=count(MAX_MEMORY_STEPS, "steps of each peak-memory subprocess"), default=2)
    p.add_argument("--no-sgemm", action="store_true", help="skip the sgemm peak measurement")
    p.add_argument(
        "--conv-save",
        default="auto",
        choices=("auto", "columns", "input", "recompute", "both", "all"),
        help="what ssaref's convolutions keep for the weight gradient (ssaref.train --conv-save; default "
        "auto, its default); both: every rule timed and its memory measured in columns and input "
        "mode (conv models; the input-mode rows labelled <rule>@input); all: columns, input and recompute",
    )
    p.add_argument(
        "--conv-chunk",
        type=nonnegative_float,
        default=None,
        metavar="MIB",
        help="bound on a convolution's transient column matrix, made a band of output rows at a time above it "
        "(ops.conv.set_conv_chunk; 0: always whole; default: 8 on NumPy, 0 on a GPU; docs/decisions.md D9)",
    )
    p.add_argument(
        "--no-limit",
        action="store_true",
        help="skip the limit column (the machine's GEMM rate and bandwidth, measured at the start)",
    )
    p.add_argument(
        "--limit-gemm",
        type=count(MAX_LIMIT_GEMM, "three n x n float32 matrices"),
        default=2048,
        help="size n of the square float32 GEMM whose rate is the limit column's peak (default 2048)",
    )
    p.add_argument(
        "--limit-stream-mib",
        type=count(MAX_LIMIT_STREAM_MIB, "two arrays of it"),
        default=256,
        help="MiB of the float32 copy whose rate is the limit column's bandwidth (default 256)",
    )
    p.add_argument(
        "--profile",
        default="auto",
        choices=("auto", "all", "none"),
        help="per-op profile of ssaref's BP step: auto = where ssaref/torch > 1 (default), all, none",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="with --backend cupy: allow TF32 in float32 GEMMs and convolutions on both sides (CuPy's "
        "CUPY_TF32, torch's allow_tf32); off by default, recorded in --json",
    )
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's mmap threshold alone (ssaref.train raises it, see backend.keep_large_allocations)",
    )
    args = p.parse_args(argv)
    if args.json and args.markdown and os.path.realpath(args.json) == os.path.realpath(args.markdown):
        raise ValueError(
            f"--json {args.json} and --markdown {args.markdown} are the same file; one would overwrite the other"
        )
    for path, flag in ((args.json, "--json"), (args.markdown, "--markdown")):
        if path:  # before the benchmark runs, not after
            check_output_path(path, flag=flag, overwrite=args.overwrite)
    set_tf32(args.tf32, torch_side=False)  # before CuPy's first float32 matmul, which reads CUPY_TF32 once
    resolve_backend(args.backend)
    names = list(MODELS) if args.models.strip() == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise ValueError(
            f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(sorted(MODELS))} or all"
        )
    rules = list(RULES) if args.method.strip() == "all" else [m.strip() for m in args.method.split(",") if m.strip()]
    bad = [m for m in rules if method_spec(m)[0] not in RULES]
    if bad or not rules:
        raise ValueError(
            f"--method: unknown rule(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(RULES)} or all"
        )
    for m in rules:  # a variant's options are checked before anything runs (unknown key, wrong type)
        rule, options, _ = method_spec(m)
        if options:
            build_rule(rule, **options)
    args.names, args.rules = names, ["bp"] + [m for m in dict.fromkeys(rules) if m != "bp"]
    args.inputs = None if args.input.strip() == "auto" else [_shape(s) for s in args.input.split(",") if s.strip()]
    if args.inputs == []:
        raise ValueError("--input: no shape given")
    return args


def _main(argv):
    args = _parse(argv)
    tuned = False if args.default_malloc else keep_large_allocations()
    try:
        import torch
    except ImportError:
        print("error: the benchmark compares against PyTorch; pip install torch==2.13.0", file=sys.stderr)
        return 2
    tf32 = set_tf32(args.tf32)
    if torch_device(args.backend) == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--backend cupy compares with PyTorch on CUDA, but this torch has no CUDA device "
            f"(torch {torch.__version__}); install a CUDA build of torch"
        )
    threads = apply_threads(args.threads)
    info = machine_info(threads["threads"])
    print(
        f"numpy {np.__version__}, torch {info['torch']}, threads {threads['threads']} "
        f"({', '.join(threads['pools'])}), "
        f"BLAS {_blas_line(info)}, backend {args.backend}, batch {args.batch_size}, float32, Adam, "
        f"{args.statistic} of {args.repeats}, large-block reuse {'on' if tuned else 'off'}, "
        f"load {_fmt_load(info['loadavg_start'])}"
    )
    configs = []
    for name in args.names:
        for shape in [_input_for(name, None)] if args.inputs is None else args.inputs:
            configs.append((name, tuple(shape)))
    result = {
        "machine": info,
        "settings": {
            "batch": args.batch_size,
            "repeats": args.repeats,
            "statistic": args.statistic,
            "tf32": tf32,
            "torch_device": torch_device(args.backend),
            "warmup": args.warmup,
            "block": args.block,
            "block_warmup": args.block_warmup,
            "settle": args.settle,
            "backend": args.backend,
            "methods": args.rules,
            "memory_steps": args.memory_steps,
            "tuned_malloc": tuned,
            "conv_save": args.conv_save,
            "conv_chunk": args.conv_chunk,
            "threads": threads,
        },
        "configs": [],
    }
    memory = not args.no_memory and args.backend == "numpy"
    limits = None
    if not args.no_limit:  # measured before the steps, in this run, on the engines' device
        limits = machine_limits(resolve_backend(args.backend), gemm_n=args.limit_gemm, stream_mib=args.limit_stream_mib)
        result["limits"] = limits
        print(
            f"limits: sgemm {limits['sgemm_gflops']:.1f} GFLOP/s (n = {limits['gemm_n']}), copy bandwidth "
            f"{limits['stream_gbs']:.1f} GB/s ({limits['stream_mib']} MiB); load {_fmt_load(_loadavg())}",
            flush=True,
        )
    print(
        f"{'model':<10} {'input':<8} {'method':<7} {'params':>9} {'ssaref ms':>10} {'torch ms':>9} {'ratio':>6} "
        f"{'vs BP':>6} {'MiB peak/step':>13} {'torch MiB':>11} {'limit':>6}",
        flush=True,
    )
    for name, shape in configs:
        try:
            primary = "columns" if args.conv_save in ALSO_SAVE else args.conv_save  # both/all: rows beside
            c = bench_config(
                name,
                shape,
                args.rules,
                batch=args.batch_size,
                repeats=args.repeats,
                warmup=args.warmup,
                backend=args.backend,
                statistic=args.statistic,
                conv_save=primary,
                also_save=ALSO_SAVE.get(args.conv_save, ()),
                conv_chunk=args.conv_chunk,
                block=args.block,
                block_warmup=args.block_warmup,
                settle=args.settle,
            )
        except ValueError as exc:
            if len(configs) > 1 and "does not fit" in str(exc):
                print(f"{name:<10} {'x'.join(map(str, shape)):<8} skipped: {exc}", flush=True)
                continue
            raise
        except NotImplementedError as exc:
            raise ValueError(str(exc)) from None
        if limits:
            add_limits(c, limits)
        bp = c["rows"][0]
        if args.profile == "all" or (args.profile == "auto" and bp["ratio"] > 1.0):
            ms, rows = op_profile(
                name, shape, "bp", batch=args.batch_size, backend=args.backend, conv_chunk=args.conv_chunk
            )
            c["profile"] = {"step_ms": ms, "ops": [{"op": k, "ms": v, "fraction": f} for k, v, f in rows]}
            print(
                f"{name} {c['input']}: where ssaref's BP step goes ({ms:.1f} ms, per-op timers): "
                + ", ".join(f"{k.strip()} {v:.1f} ms ({100 * f:.0f} %)" for k, v, f in rows[:8]),
                flush=True,
            )
        if memory:
            t = measure_memory(
                "torch", name, shape, batch=args.batch_size, threads=threads["threads"], steps=args.memory_steps
            )
            c["torch_mib"], c["torch_step_mib"], c["torch_memory"] = t.get("peak_mib"), t.get("step_mib"), t
        for r in c["rows"]:
            if memory and r["status"] == "ok":
                mm = measure_memory(
                    r.get("rule", r["method"]),
                    name,
                    shape,
                    batch=args.batch_size,
                    threads=threads["threads"],
                    steps=args.memory_steps,
                    conv_save=r.get("conv_save"),
                    conv_chunk=args.conv_chunk,
                )
                r.update(
                    {
                        "ssaref_mib": mm.get("peak_mib"),
                        "step_mib": mm.get("step_mib"),
                        "traced_mib": mm.get("traced_mib"),
                        "memory": mm,
                    }
                )
            if r["status"] != "ok":
                print(f"{name:<10} {c['input']:<8} {r['method']:<7} {r['status']}", flush=True)
                continue
            print(
                f"{name:<10} {c['input']:<8} {r['method']:<7} {c['params']:>9} {r['ssaref_ms']:>10.2f} "
                f"{c['torch_ms']:>9.2f} {r['ratio']:>6.2f} {r['vs_bp']:>6.2f} "
                f"{_dev_or_host(r.get('ssaref_dev_mib'), r.get('ssaref_mib'), r.get('step_mib')):>13} "
                f"{_dev_or_host(c.get('torch_dev_mib'), c.get('torch_mib'), c.get('torch_step_mib')):>11} "
                f"{_pct(r.get('limit')):>6}" + (f"  (+{r['aux_params']:,} aux params)" if r.get("aux_params") else ""),
                flush=True,
            )
        result["configs"].append(c)
    if not result["configs"]:
        raise ValueError("no model fits any --input shape")
    if not args.no_sgemm:
        sc = next((c for c in result["configs"] if c["model"] == "smallconv"), None)
        shape = tuple(int(v) for v in sc["input"].split("x")) if sc else CIFAR_INPUT
        # conv1 (K = 27) is no GEMM-peak shape; on the engines' device (CuPy's GEMMs for --backend cupy)
        g = sgemm_peak(smallconv_gemms(shape, args.batch_size)[1:], xp=resolve_backend(args.backend))
        peak = max(r["gflops"] for r in g)
        result["sgemm"] = {
            "input": "x".join(map(str, shape)),
            "shapes": g,
            "peak_gflops": peak,
            "backend": args.backend,
        }
        line = (
            f"sgemm peak {peak:.0f} GFLOP/s ("
            + ", ".join(f"{r['m']}x{r['k']}x{r['n']}: {r['gflops']:.0f}" for r in g)
            + ")"
        )
        if sc:
            gf, s_ms, t_ms = sc["flops"], sc["rows"][0]["ssaref_ms"], sc["torch_ms"]
            result["sgemm"]["smallconv"] = {
                "input": sc["input"],
                "gflop": gf / 1e9,
                "ssaref_gflops": gf / s_ms / 1e6,
                "torch_gflops": gf / t_ms / 1e6,
                "ssaref_frac": gf / s_ms / 1e6 / peak,
                "torch_frac": gf / t_ms / 1e6 / peak,
            }
            d = result["sgemm"]["smallconv"]
            line += (
                f"; smallconv {sc['input']} step {d['gflop']:.1f} GFLOP: ssaref {d['ssaref_gflops']:.0f} GFLOP/s "
                f"({100 * d['ssaref_frac']:.0f} %), torch {d['torch_gflops']:.0f} GFLOP/s "
                f"({100 * d['torch_frac']:.0f} %)"
            )
        print(line, flush=True)
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        info["loadavg_end"] = None
    if args.json:
        write_text(args.json, json.dumps(result, indent=1, default=_json_default))
    if args.markdown:
        write_text(args.markdown, markdown(result))
    return 0


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(type(o).__name__)


def main(argv=None):
    """``python -m ssaref.bench``: 0 done, 2 bad input (one ``error:`` line), 1 a bug."""
    return run_main(_main, argv)
