"""``python -m ssaref.bench``: one training step, ssaref against PyTorch CPU, same process.

For each model and input shape the engines take turns (ssaref BP, torch BP, ssaref with each further rule of
``--method``, then again, ...) on the same batch (float32) from the same initial weights, with the same
optimiser (Adam, lr 1e-4); the median over ``--repeats`` steps of each is printed with the ratios ssaref/torch
(the torch side is always BP) and rule/BP (each rule's step against ssaref's own BP step).  Alternating keeps a
noisy machine's drift out of the ratios.  Peak memory of a step is measured in a fresh subprocess per engine
and configuration (``--no-memory`` skips it): the resident-set high-water mark (``VmHWM``, reset after the
model is built) above the resident set after building the model and the batch, i.e. what training adds
(optimiser and rule state, activations, gradients, workspace), over ``--memory-steps`` steps; for ssaref also
the tracemalloc peak of one step (the arrays a step allocates beyond what persists).  The machine's sgemm rate
is measured on the float32 GEMMs of SmallConv's convolutions (the shapes its step runs) and SmallConv's step
FLOP/s is reported against it.  The limit column: every rule's step is counted from the layer shapes, op by op
(``step_cost``: FLOPs and bytes moved), the machine's float32 GEMM rate (one ``--limit-gemm`` square GEMM) and
copy bandwidth (a ``--limit-stream-mib`` array copy) are measured at the start of the run, and each step is shown
as a fraction of its roofline bound ``max(FLOPs / GEMM rate, bytes / bandwidth)`` (``roofline``, ``add_limits``;
the counting convention is ``step_cost``'s docstring and docs/internals.md, "Cost model").  Nothing here is
asserted: speed is measured, not tested.

    python -m ssaref.bench                                   # BP, the four small models, input of each model's data set
    python -m ssaref.bench --models all --method all --json bench.json --markdown bench.md
    python -m ssaref.bench --models mlp --method bp,ssa,ssa:epochs=10 --statistic mean   # labelled variants
    python -m ssaref.bench --models smallconv --input 1x28x28,3x32x32 --threads 1

The package, one idea a module, each importing only those above it (``__init__`` and ``__main__`` aside)::

    blocks     the timing loop: engines in turn, a block of steps each (time_blocks; no ssaref imports)
    mirror     torch_mirror: the PyTorch module of an ssaref model (same graph, weights, buffers)
    limits     the machine's limits: sgemm rate of given GEMM shapes, copy bandwidth (machine_limits)
    engines    the step both sides run: batch, optimiser, the ssaref and torch engines, device, TF32
    timing     the engines' steps timed in turns (bench_config), the limit column (add_limits)
    profile    where ssaref's step goes, op by op (op_profile)
    memory     peak training memory in a fresh process (measure_memory, the probe _probe_main)
    report     the machine's description and the markdown report
    cli        the command line (main); no other module imports it
"""

from __future__ import annotations

from ..cost import roofline, step_cost, step_flops, weight_macs
from .cli import DEFAULT_MODELS, main
from .engines import DATASET_INPUT, ssaref_engine
from .limits import machine_limits, sgemm_peak, stream_bandwidth
from .memory import measure_memory
from .mirror import torch_mirror
from .profile import op_profile
from .timing import add_limits, bench_config

__all__ = [
    "torch_mirror",
    "bench_config",
    "ssaref_engine",
    "op_profile",
    "weight_macs",
    "step_flops",
    "sgemm_peak",
    "step_cost",
    "roofline",
    "stream_bandwidth",
    "machine_limits",
    "add_limits",
    "measure_memory",
    "DEFAULT_MODELS",
    "DATASET_INPUT",
    "main",
]
