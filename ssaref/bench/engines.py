"""The training step every measurement runs: the batch, the optimiser (Adam, lr 1e-4), the ssaref engine and the
torch engine (BP on the mirror), the torch side's device and the TF32 switches of both sides."""

from __future__ import annotations

import os

import numpy as np

from ..nn import build_model
from ..run import build_run
from .mirror import torch_mirror

# the input shape of the data set each model is trained on in the paper (Fashion-MNIST, CIFAR)
DATASET_INPUT = {"mlp": (1, 28, 28), "lenet": (1, 28, 28), "convnet": (1, 28, 28)}
CIFAR_INPUT = (3, 32, 32)
LR = 1e-4
MAX_EPOCH_ENDS = 1000  # method_spec's epochs=N


def _input_for(name, inputs):
    return DATASET_INPUT.get(name, CIFAR_INPUT) if inputs is None else inputs


def _batch(shape, batch, k, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch,) + tuple(shape)).astype(np.float32), rng.integers(0, k, size=batch)


def method_spec(label):
    """``(rule, options, epochs)`` of a ``--method`` entry: a rule name, or a labelled variant
    ``"rule:key=value:..."``, the rule built with those options (strings, converted by the rule's option types),
    e.g. ``"ssa:parity=false"`` beside ``"ssa"``.  The key ``epochs=N`` is the bench's own: the step is timed after
    the rule's ``N`` epoch ends of an ``N``-epoch run (``bench_run``), e.g. ``"ssa:epochs=10"``, SSA at the ranks
    its default schedule reaches.  ValueError for an entry without a rule or a malformed pair."""
    rule, *pairs = str(label).split(":")
    options, epochs, seen = {}, 0, set()
    for pair in pairs:
        key, eq, value = (t.strip() for t in pair.partition("="))
        if not eq or not key or not value:
            raise ValueError(f"--method {label!r}: {pair!r} is not key=value (rule:key=value:...)")
        if key in seen:
            raise ValueError(f"--method {label!r}: {key} is given twice")
        seen.add(key)
        if key == "epochs":
            if not value.isdigit() or not 0 <= int(value) <= MAX_EPOCH_ENDS:
                raise ValueError(f"--method {label!r}: epochs={value!r} is not an integer in 0..{MAX_EPOCH_ENDS}")
            epochs = int(value)
        else:
            options[key] = value
    if not rule.strip():
        raise ValueError(f"--method {label!r}: no rule name before the options")
    return rule.strip(), options, epochs


def bench_run(model, label, seed=0):
    """The ``Run`` of ``method_spec`` entry ``label`` on ``model`` with Adam (lr 1e-4), its rule's ``epochs`` epoch
    ends applied (the rank schedule's cuts, on the untrained model's spectra)."""
    rule, options, epochs = method_spec(label)
    run = build_run(model, rule, np.random.default_rng(seed + 2), options=options, optimizer="adam", lr=LR)
    for e in range(1, epochs + 1):
        run.rule.on_epoch_end(run.model, run.optimizer, e, epochs)
    return run


def ssaref_engine(name, shape, rule, x, y, *, xp=np, seed=0, conv_save=None, conv_chunk=None, **options):
    """``(run, step)``: model ``name`` (``build_model`` ``options``) trained by ``rule`` (a ``method_spec``
    entry: a rule name or ``"rule:key=value:..."``) with Adam (lr 1e-4);
    ``step()`` is one ``Run.train_step(x, y)`` (synchronised on a GPU), with ``conv_save`` (``ops.conv.SAVE_MODES``;
    None: the current mode) what its convolutions keep for the backward and ``conv_chunk`` (MiB,
    ``ops.conv.set_conv_chunk``; None: the current bound) the bound on their transient column matrices."""
    from ..ops.conv import set_conv_chunk, set_conv_save

    model = build_model(name, shape, 10, xp=xp, dtype=np.float32, seed=seed, **options)
    run = bench_run(model, rule, seed)

    def step():
        old = set_conv_save(conv_save) if conv_save else None
        old_chunk = set_conv_chunk(conv_chunk) if conv_chunk is not None else ()  # (): left as it was
        try:
            run.train_step(x, y)
        finally:
            if old:
                set_conv_save(old)
            if old_chunk != ():
                set_conv_chunk(old_chunk)
        if xp is not np:
            xp.cuda.Device().synchronize()  # every stream of the device: the step's kernels have finished

    return run, step


def torch_device(backend) -> str:
    """The torch side's device: ``"cuda"`` when ssaref runs on CuPy (a fair GPU comparison), else ``"cpu"``."""
    return "cuda" if backend == "cupy" else "cpu"


def set_tf32(enabled: bool, torch_side: bool = True) -> dict:
    """TF32 for float32 GEMMs and convolutions, the same on both sides, before any GPU work: CuPy reads
    ``CUPY_TF32`` (cuBLAS math mode) lazily at its first float32 matmul and caches it (batched matmul ignores it),
    torch its ``allow_tf32`` switches (``torch_side``).
    Returns what was set (recorded in the results)."""
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    out: dict = {"CUPY_TF32": os.environ["CUPY_TF32"]}
    if torch_side:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)
        out.update(
            {"torch.backends.cuda.matmul.allow_tf32": bool(enabled), "torch.backends.cudnn.allow_tf32": bool(enabled)}
        )
    return out


def _torch_engine(model, x_h, y_h, device="cpu"):
    import torch

    tmodel = torch_mirror(model).to(device)
    tmodel.train()
    tx = torch.from_numpy(x_h).to(device)
    ty = torch.from_numpy(np.asarray(y_h, dtype=np.int64)).to(device)
    topt = torch.optim.Adam(tmodel.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    cuda = str(device).startswith("cuda")

    def step():
        topt.zero_grad(set_to_none=True)
        loss_fn(tmodel(tx), ty).backward()
        topt.step()
        if cuda:
            torch.cuda.synchronize()

    return tmodel, step
