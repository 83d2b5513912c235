"""``python -m ssaref.bench``: one BP training step, ssaref against PyTorch CPU, same process.

For each model the two engines take turns (ssaref step, torch step, ...) on the
same batch (float32, Fashion-MNIST shaped input) from the same initial weights,
with the same optimiser (Adam); the median over ``--repeats`` steps of each and
their ratio ssaref/torch are printed.  Alternating keeps a noisy machine's drift
out of the ratio.  Nothing here is asserted: speed is measured, not tested.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np

from .cli import OneLineParser, check_output_path, positive, run_main
from .backend import BackendError, asnumpy, keep_large_allocations, resolve_backend
from .nn import build_model
from .run import build_run

DEFAULT_MODELS = ("mlp", "lenet", "convnet", "smallconv")


def torch_mirror(model):
    """A ``torch.nn.Sequential`` with the same graph and weights as an ssaref ``Sequential``."""
    import torch
    from torch import nn

    def build(layer):
        kind = layer.kind
        if kind == "sequential":
            return nn.Sequential(*[build(l) for l in layer.layers])
        if kind == "linear":
            W = layer.params["W"]
            m = nn.Linear(W.shape[1], W.shape[0], bias="b" in layer.params)
        elif kind == "conv2d":
            W = layer.params["W"]
            m = nn.Conv2d(W.shape[1], W.shape[0], tuple(W.shape[2:]), stride=layer.stride,
                          padding=layer.padding, bias="b" in layer.params)
        elif kind == "maxpool2d":
            return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
        elif kind == "avgpool2d":
            return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding)
        elif kind in ("relu", "tanh", "sigmoid"):
            return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[kind]()
        elif kind == "flatten":
            return nn.Flatten()
        else:
            raise NotImplementedError(f"bench mirrors no {kind!r} layer")
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(asnumpy(layer.params["W"])))
            if "b" in layer.params:
                m.bias.copy_(torch.from_numpy(asnumpy(layer.params["b"])))
        return m

    return build(model)


def bench_model(name, *, batch=128, repeats=20, warmup=3, backend="numpy", seed=0):
    """Median seconds of one BP+Adam step in ssaref and in torch, and their ratio."""
    import torch

    xp = resolve_backend(backend)
    shape, k = (1, 28, 28), 10
    model = build_model(name, shape, k, xp=xp, dtype=np.float32, seed=seed)
    tmodel = torch_mirror(model)
    rng = np.random.default_rng(seed)
    x_h = rng.standard_normal((batch,) + shape).astype(np.float32)
    y_h = rng.integers(0, k, size=batch)
    x, y = xp.asarray(x_h), xp.asarray(y_h)
    tx, ty = torch.from_numpy(x_h), torch.from_numpy(y_h)
    run = build_run(model, "bp", np.random.default_rng(seed + 2), optimizer="adam", lr=1e-4)
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def ssaref_step():
        run.train_step(x, y)
        if xp is not np:
            xp.cuda.Stream.null.synchronize()

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss_fn(tmodel(tx), ty).backward()
        topt.step()

    times = {"ssaref": [], "torch": []}
    for i in range(warmup + repeats):
        for label, fn in (("ssaref", ssaref_step), ("torch", torch_step)):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[label].append(dt)
    s, t = statistics.median(times["ssaref"]), statistics.median(times["torch"])
    return {"model": name, "params": int(sum(v.size for _, v in model.named_params())),
            "ssaref_ms": 1e3 * s, "torch_ms": 1e3 * t, "ratio": s / t}


def _main(argv):
    p = OneLineParser(prog="python -m ssaref.bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--batch-size", type=positive(int), default=128)
    p.add_argument("--repeats", type=positive(int), default=20)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's mmap threshold alone (ssaref.train raises it, see "
                        "backend.keep_large_allocations)")
    args = p.parse_args(argv)
    if args.json:   # before the benchmark runs, not after
        check_output_path(args.json, flag="--json", overwrite=args.overwrite)
    resolve_backend(args.backend)
    from .nn import MODELS

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise ValueError(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(sorted(MODELS))}")
    tuned = False if args.default_malloc else keep_large_allocations()
    try:
        import torch
    except ImportError:
        print("error: the benchmark compares against PyTorch; pip install torch==2.13.0", file=sys.stderr)
        return 2
    print(f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"backend {args.backend}, batch {args.batch_size}, float32, BP + Adam, median of {args.repeats}, "
          f"large-block reuse {'on' if tuned else 'off'}")
    print(f"{'model':<10} {'params':>10} {'ssaref ms':>10} {'torch ms':>10} {'ratio':>7}")
    rows = []
    for name in names:
        try:
            r = bench_model(name, batch=args.batch_size, repeats=args.repeats, backend=args.backend)
        except (ValueError, BackendError, NotImplementedError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        rows.append(r)
        print(f"{r['model']:<10} {r['params']:>10} {r['ssaref_ms']:>10.2f} {r['torch_ms']:>10.2f} "
              f"{r['ratio']:>7.2f}", flush=True)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)
    return 0


def main(argv=None):
    """``python -m ssaref.bench``: 0 done, 2 bad input (one ``error:`` line), 1 a bug."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
