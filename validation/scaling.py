"""Data-parallel scaling on this machine, and an estimate for 8 GPUs (docs/scaling.md).

``mpiexec -n N python -m validation.scaling [--models mlp,smallconv] [--steps 20]`` times the training step of
``ssaref.train --distributed mpi`` (the rule's step on a shard of the global batch, the one allreduce of the flat
update buffer, the optimiser step) for N ranks, and prints steps/s, the allreduce's share of the step and the
bytes it moves.  ``python -m validation.scaling --estimate`` prints, per model, the allreduce volume per step and
the speed-up a ring allreduce would allow on 8 GPUs over NVLink and over 100 Gb/s Ethernet, from a per-step compute
time given on the command line (``--gpu-step-ms model=ms,...``) or, by default, from the model's training FLOPs at an
assumed sustained device throughput (``--gpu-tflops``).
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from ssaref import distributed
from ssaref.cli import OneLineParser, positive, run_main
from ssaref.nn import MODELS, build_model
from ssaref.run import build_run

BATCH = 128
LINKS = {"NVLink (ring, 8 GPUs, ~150 GB/s per GPU)": 150e9, "100 Gb/s Ethernet (ring, 8 nodes, ~11 GB/s)": 11e9}


def _shape(model):
    return (3, 32, 32) if model in ("vgg13", "resnet20", "resnet32", "resnet56", "resnet18") else (1, 28, 28)


def param_bytes(model, method="bp", dtype=np.float32):
    """Bytes of the flat update buffer one step allreduces (every parameter and rule learnable, plus 2 scalars)."""
    m = build_model(model, _shape(model), 10, dtype=dtype)
    run = build_run(m, method, np.random.default_rng(0), optimizer=None)
    return (sum(a.size for _, a in run.params()) + 2) * np.dtype(dtype).itemsize


def train_flops(model):
    """Multiply-adds of one BP training step on a batch of BATCH examples: 3x the forward pass (forward, input and
    weight gradients), counted from the layers' shapes."""
    m = build_model(model, _shape(model), 10, dtype=np.float32)
    shape = _shape(model)
    total = 0

    def walk(layer, s):
        nonlocal total
        if layer.kind == "sequential":
            for sub in layer.layers:
                s = walk(sub, s)
            return s
        if layer.kind == "residual":
            out = walk(layer.main, s)
            walk(layer.shortcut, s)
            return out
        out = tuple(layer.output_shape(tuple(s)))
        if layer.kind == "linear":
            total += int(np.prod(layer.params["W"].shape))
        elif layer.kind == "conv2d":
            W = layer.params["W"]
            total += int(np.prod(W.shape)) * int(np.prod(out[1:]))
        return out

    walk(m, shape)
    return 3 * 2 * total * BATCH


def time_steps(model, steps, comm):
    """Median seconds of a training step and of its allreduce on this rank."""
    xp_model = build_model(model, _shape(model), 10, dtype=np.float32)
    run = build_run(xp_model, "bp", np.random.default_rng(0), optimizer="adam", lr=1e-4)
    keys = [k for k, _ in run.params()]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH,) + _shape(model)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    part = distributed.shard(np.arange(BATCH), comm.rank, comm.size)
    xs, ys = x[part], y[part]
    step_t, comm_t = [], []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        res = run.step(xs, ys)
        t1 = time.perf_counter()
        if comm.size > 1:
            distributed.average_step(comm, res, ys, BATCH, keys)
        t2 = time.perf_counter()
        run.apply(res)
        t3 = time.perf_counter()
        if i >= 3:
            step_t.append(t3 - t0)
            comm_t.append(t2 - t1)
    return statistics.median(step_t), statistics.median(comm_t)


def _main(argv):
    p = OneLineParser(prog="python -m validation.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,smallconv")
    p.add_argument("--steps", type=positive(int), default=20)
    p.add_argument("--estimate", action="store_true", help="print the 8-GPU estimate table instead of timing")
    p.add_argument("--gpu-tflops", type=positive(float), default=30.0,
                   help="sustained device throughput assumed for the estimate (TFLOP/s, float32)")
    p.add_argument("--estimate-models", default="smallconv,vgg13,resnet32")
    a = p.parse_args(argv)
    if a.estimate:
        print("| model | parameters | allreduce bytes/step | step compute (est.) | " +
              " | ".join(f"allreduce, {k}" for k in LINKS) + " | " + " | ".join(f"speed-up x8, {k}" for k in LINKS)
              + " |")
        print("|" + " --- |" * (4 + 2 * len(LINKS)))
        for model in a.estimate_models.split(","):
            nbytes = param_bytes(model)
            t_comp = train_flops(model) / (a.gpu_tflops * 1e12)   # one GPU, the whole global batch
            ring = [2 * (8 - 1) / 8 * nbytes / bw for bw in LINKS.values()]   # ring allreduce time
            speed = [8 * t_comp / (t_comp + t_ar) for t_ar in ring]        # 8 GPUs, B/8 each, no overlap
            print(f"| {model} | {nbytes // 4:,} | {nbytes:,} | {1e3 * t_comp:.2f} ms | "
                  + " | ".join(f"{1e3 * t:.3f} ms" for t in ring) + " | " + " | ".join(f"{s:.1f}" for s in speed)
                  + " |")
        return 0
    unknown = [m for m in a.models.split(",") if m not in MODELS]
    if unknown:
        raise ValueError(f"--models: unknown model(s) {', '.join(unknown)}")
    comm = distributed.init("mpi") if "mpi4py" in sys.modules or _under_mpi() else distributed.SerialComm()
    for model in a.models.split(","):
        step, ar = time_steps(model, a.steps, comm)
        worst = comm.allgather((step, ar), "timing gather")
        if comm.is_root:
            step = max(w[0] for w in worst)
            ar = max(w[1] for w in worst)
            print(f"{model}: ranks={comm.size} batch={BATCH} step {1e3 * step:.1f} ms ({1 / step:.2f} steps/s), "
                  f"allreduce {1e3 * ar:.2f} ms of it, {param_bytes(model):,} bytes per step", flush=True)
    return 0


def _under_mpi():
    import os

    return any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))


def main(argv=None):
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
