"""A convolution's transient column matrices made a band of output rows at a time (``--conv-chunk``, D9): memory
and step time of BP against the whole matrices, PyTorch beside.

Per model (batch ``--batch-size``, float32, Adam, 3x32x32 input):

* **step memory** (MiB): ``ssaref.bench.measure_memory``, a fresh process per setting, the resident-set high-water
  mark of a step above the state kept between steps (activations, caches, gradients, workspace); ssaref BP in
  save mode ``columns`` and ``input`` with the whole matrices (bound 0), and ``input`` at every bound of
  ``--chunks``; PyTorch BP;
* **step time**: ``input`` mode at every bound over ``input`` with the whole matrices, the engines alternating step
  by step in one process (the order reversed every round), the median (and mean +- std) of the per-round ratios;
  measured in CPU time of the process (``time.process_time``) as well as wall time, because on a machine shared
  with other work the wall time of one step is mostly waiting for a core, and both sides wait alike only on
  average.

    python -m validation.conv_chunk                                   # smallconv, vgg13, resnet20; bounds 2, 8 MiB
    python -m validation.conv_chunk --models smallconv --chunks 1,4 --rounds 20 --out conv_chunk.md

Prints the table and writes it with ``--out``; exit 0, or 2 with one ``error:`` line for a bad argument.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from ssaref.bench import measure_memory, ssaref_engine
from ssaref.bench.engines import _batch
from ssaref.atomic import write_text
from ssaref.cli import OneLineParser, check_output_path, count, nonnegative_float, run_main
from ssaref.threads import apply_threads, threads_arg

SCRIPT = "conv_chunk"
MODELS = ("smallconv", "vgg13", "resnet20")
SHAPE = (3, 32, 32)


def step_times(model, chunks, rounds, batch, warmup=2):
    """``{bound: ([wall s], [cpu s])}`` of BP steps in input mode, bound 0 first, interleaved."""
    x, y = _batch(SHAPE, batch, 10, 0)
    order = [0.0] + [c for c in chunks if c != 0.0]
    engines = {c: ssaref_engine(model, SHAPE, "bp", x, y, conv_save="input", conv_chunk=c)[1] for c in order}
    for _ in range(warmup):
        for step in engines.values():
            step()
    out = {c: ([], []) for c in order}
    for r in range(rounds):
        for c in order if r % 2 == 0 else order[::-1]:
            t, p = time.perf_counter(), time.process_time()
            engines[c]()
            out[c][0].append(time.perf_counter() - t)
            out[c][1].append(time.process_time() - p)
    return out


def _ratio(a, b):
    r = [u / v for u, v in zip(a, b)]
    return statistics.median(r), statistics.mean(r), statistics.stdev(r) if len(r) > 1 else float("nan")


def _mib(r):
    return "—" if r.get("step_mib") is None else f"{r['step_mib']:.0f}"


def table(models, chunks, rounds, batch, threads):
    mem_cols = ["columns", "input"] + [f"input, {c:g} MiB" for c in chunks] + ["torch"]
    lines = [
        "| model | " + " | ".join(f"{c} MiB/step" for c in mem_cols) + " | "
        + " | ".join(f"time {c:g} MiB / whole (cpu; wall)" for c in chunks) + " |",
        "| --- | " + " | ".join("---:" for _ in mem_cols) + " | " + " | ".join("---:" for _ in chunks) + " |",
    ]
    for model in models:
        mem = [measure_memory("bp", model, SHAPE, batch=batch, threads=threads, conv_save="columns", conv_chunk=0),
               measure_memory("bp", model, SHAPE, batch=batch, threads=threads, conv_save="input", conv_chunk=0)]
        mem += [measure_memory("bp", model, SHAPE, batch=batch, threads=threads, conv_save="input", conv_chunk=c)
                for c in chunks]
        mem.append(measure_memory("torch", model, SHAPE, batch=batch, threads=threads))
        t = step_times(model, chunks, rounds, batch)
        cells = []
        for c in chunks:
            cm, cmean, csd = _ratio(t[c][1], t[0.0][1])
            wm, _, _ = _ratio(t[c][0], t[0.0][0])
            cells.append(f"{cm:.2f} ({cmean:.2f} ± {csd:.2f}); {wm:.2f}")
        lines.append(f"| {model} | " + " | ".join(_mib(r) for r in mem) + " | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    load = os.getloadavg()
    lines.append("")
    lines.append(f"Batch {batch}, float32, BP + Adam, threads {threads}, {rounds} interleaved rounds; time ratio: "
                 f"median (mean ± std) of per-round ratios, CPU time; then wall time.  Load average at the end "
                 f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}.")
    return "\n".join(lines) + "\n"


def _main(argv):
    p = OneLineParser(prog=f"python -m validation.{SCRIPT}", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated conv models (default: %(default)s)")
    p.add_argument("--chunks", default="2,8", help="bounds in MiB, comma-separated (default: %(default)s)")
    p.add_argument("--rounds", type=count(10000, "interleaved rounds"), default=12)
    p.add_argument("--batch-size", type=count(65536, "batch"), default=128)
    p.add_argument("--threads", type=threads_arg, default=1)
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    try:
        chunks = [nonnegative_float(c) for c in args.chunks.split(",")]
    except argparse.ArgumentTypeError:
        p.error(f"--chunks: expected finite numbers >= 0, got {args.chunks!r}")
    if any(c == 0 for c in chunks):
        p.error("--chunks: 0 is the whole matrix, the reference every bound is compared to; give bounds > 0")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        p.error(f"--models: some of {', '.join(MODELS)} (the CIFAR conv nets), got {args.models!r}")
    if args.out:
        check_output_path(args.out, overwrite=True)
    threads = apply_threads(args.threads)["threads"]
    text = table(models, chunks, args.rounds, args.batch_size, threads)
    print(text)
    if args.out:
        write_text(args.out, text)
    return 0


def main(argv=None):
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
