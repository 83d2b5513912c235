"""``python -m ssaref.train``: train a model with one learning rule and log the run.

Every flag can also come from ``--config FILE.toml`` (keys mirror the flags,
``-`` or ``_`` alike); flags given on the command line win over the file.  The flags, their validation and
defaults, and the run file's config are ``ssaref.config``'s.
The last line printed is ``final test_acc=<float>``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
import time
from typing import Any

import numpy as np

from . import __version__, distributed
from . import config as config_mod
from .cli import Diverged, check_output_path, one_line, run_main
from .backend import asnumpy, get_array_module, keep_large_allocations, parse_dtype, resolve_backend, to_device
from .config import build_parser, filled_config, parse_args, run_config
from .data import augment, load_dataset
from .nn import build_model
from .ops.losses import softmax_cross_entropy
from .optim import build_schedule
from .ops.conv import conv_save, set_conv_save
from .threads import apply_threads
from .rules import build_rule
from .run import build_run
from .runlog import RunFileError, RunLock, read_run, remove_stale_temporaries, write_run

__all__ = ["main", "build_parser", "parse_args", "run_config", "filled_config", "train", "TrainingError", "EXIT_CODES"]

TrainingError = Diverged  # training cannot go on (a non-finite loss, parameter or state); exit 3

EXIT_CODES = {
    0: "finished",
    1: "a bug (traceback printed)",
    2: "bad input or an I/O error (one error line)",
    3: "diverged: a non-finite loss, parameter or state (the message names the epoch, the step and the "
    "checkpoint left intact)",
    130: "interrupted",
}


def _metric_name(key):
    """HDF5 dataset name for a metric: '/' (a group separator there) becomes '.'."""
    return key.replace("/", ".")


def evaluate(model, x, y, batch_size, xp, dtype, comm=None):
    """Mean cross-entropy and accuracy of ``model`` on host arrays ``x`` (N, C, H, W), ``y`` (N,); with a
    communicator of several ranks each evaluates a contiguous part and the sums are allreduced."""
    if comm is not None and comm.size > 1:
        part = distributed.shard(np.arange(len(x)), comm.rank, comm.size)
        lo, hi = (int(part[0]), int(part[-1]) + 1) if part.size else (0, 0)
        loss, acc = evaluate(model, x[lo:hi], y[lo:hi], batch_size, xp, dtype) if hi > lo else (0.0, 0.0)
        tot = comm.allreduce_sum(np.asarray([loss * (hi - lo), acc * (hi - lo)], dtype=np.float64), "evaluation")
        return float(tot[0]) / len(x), float(tot[1]) / len(x)
    total_loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb = to_device(x[i : i + batch_size].astype(dtype, copy=False), xp)
        yb = to_device(y[i : i + batch_size], xp)
        logits, _ = model.forward(xb, train=False)
        loss, _ = softmax_cross_entropy(logits, yb)
        total_loss += float(loss) * len(yb)
        correct += int((logits.argmax(axis=1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def _checkpoint(model, optimizer, rule, rng, epoch, step, args):
    return {
        "epoch": epoch,
        "step": step,
        "model": args.model,
        "method": args.method,
        "dataset": args.dataset,
        "params": {k: asnumpy(v) for k, v in model.named_params()},
        "buffers": {k: asnumpy(v) for k, v in model.buffers.items()},
        "optimizer": optimizer.state_dict(),
        "rule_state": rule.state_dict(),
        "rng": rng.bit_generator.state,
    }


def _restore(path, args, model, optimizer, rule, rng, xp):
    """Load the checkpoint of run file ``path`` into the freshly built run; every value is checked first (the
    reader: types, ranks, finiteness, the random state; here: against this model, optimiser and rule), so a bad
    file is refused with one line naming it and the entry, before any training step."""
    config, metrics, ck = read_run(path)
    if ck is None:
        raise RunFileError(f"{path}: run file holds no checkpoint to resume from")
    for key in ("epoch", "step", "params", "buffers", "optimizer", "rule_state", "rng", "model", "method", "dataset"):
        if key not in ck:
            raise RunFileError(f"{path}: checkpoint lacks {key!r}; the file is damaged or not from ssaref.train")
    for key in ("model", "method", "dataset"):
        if str(ck.get(key)) != str(getattr(args, key)):
            raise RunFileError(f"{path}: run belongs to {key} {ck.get(key)!r}, not {getattr(args, key)!r}")
    epoch, step = ck["epoch"], ck["step"]  # non-negative integers (the reader checked them)
    if epoch > args.epochs:
        raise RunFileError(
            f"{path}: its checkpoint is at the end of epoch {epoch}, beyond --epochs {args.epochs}; "
            f"pass --epochs {epoch} or more to continue it"
        )
    saved = ck["params"]
    rule.adapt_to_checkpoint(model, optimizer, {k: tuple(v.shape) for k, v in saved.items()})
    params = dict(model.named_params())
    if set(saved) != set(params):
        raise RunFileError(
            f"{path}: checkpoint parameters {sorted(saved)[:4]}... do not match model "
            f"{args.model!r} ({sorted(params)[:4]}...)"
        )
    for k, v in params.items():
        if tuple(saved[k].shape) != tuple(v.shape):
            raise RunFileError(
                f"{path}: /checkpoint/params/{k} has shape {tuple(saved[k].shape)}, model "
                f"{args.model!r} expects {tuple(v.shape)}"
            )
    buffers = ck["buffers"]
    missing, unknown = sorted(set(model.buffers) - set(buffers)), sorted(set(buffers) - set(model.buffers))
    if missing or unknown:
        raise RunFileError(
            f"{path}: checkpoint buffers do not match model {args.model!r}"
            + (f"; lacks {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    for k, v in model.buffers.items():
        if tuple(buffers[k].shape) != tuple(v.shape):  # a scalar would broadcast to every channel
            raise RunFileError(
                f"{path}: /checkpoint/buffers/{k} has shape {tuple(buffers[k].shape)}, model "
                f"{args.model!r} expects {tuple(v.shape)}"
            )
        if k.endswith("running_var") and (buffers[k] < 0).any():
            raise RunFileError(f"{path}: /checkpoint/buffers/{k} holds a negative variance")
    unknown = sorted(set(ck["rule_state"]) - set(rule.state_dict()))
    if unknown:  # the rule drew all its state at set-up: a key it does not know is not its own
        raise RunFileError(
            f"{path}: /checkpoint/rule_state holds unknown state {unknown[:4]} for method {args.method!r}"
        )
    # the optimiser and the rule check their own state (keys, shapes, dtypes, values) before taking it
    for group, load in (
        ("optimizer", lambda: optimizer.load_state_dict(ck["optimizer"])),
        ("rule_state", lambda: rule.load_state_dict(ck["rule_state"], xp)),
        ("rng", lambda: setattr(rng.bit_generator, "state", ck["rng"])),
    ):
        try:
            load()
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise RunFileError(f"{path}: /checkpoint/{group} cannot be restored: {one_line(exc)}") from None
    for k, v in params.items():
        v[...] = xp.asarray(saved[k], dtype=v.dtype)
    for k, v in model.buffers.items():
        v[...] = xp.asarray(buffers[k], dtype=v.dtype)
    return {k: list(v) for k, v in metrics.items()}, epoch, step


def _split_validation(ds, frac, seed):
    """Hold out ``frac`` of the training set as a validation split, stratified by class and seeded: in every
    class, a seeded permutation's first ``round(frac * n_c)`` examples.  Returns ``(x_val, y_val)`` and shrinks
    ``ds.x_train``/``ds.y_train`` to the rest (order kept).  Normalisation statistics stay those of the whole
    training split (per-channel mean and std only)."""
    rng = np.random.default_rng([int(seed), 0x5A11])
    y = ds.y_train
    val = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(frac * len(idx)))
        val[rng.permutation(idx)[:k]] = True
    if not val.any() or val.all():
        raise ValueError(f"--val-split {frac} leaves {int(val.sum())} of {len(y)} training examples for validation")
    x_val, y_val = ds.x_train[val], y[val]
    ds.x_train, ds.y_train = ds.x_train[~val], y[~val]
    return x_val, y_val


class _LossWindow:
    """The training losses of the last steps, kept as computed (0-d device arrays) and read back together every
    ``every`` steps: one device->host transfer per window instead of one per step."""

    def __init__(self, every):
        self.every = int(every)
        self.pending = []  # (loss value, batch size, step in epoch, global step)

    def add(self, value, n, b, step):
        self.pending.append((value, n, b, step))

    def due(self) -> bool:
        return len(self.pending) >= self.every

    def flush(self):
        """``(sum of loss * batch size, last loss, (value, b, step) of the first non-finite loss or None)``."""
        if not self.pending:
            return 0.0, float("nan"), None
        vals = [v for v, _, _, _ in self.pending]
        arrays = [v for v in vals if hasattr(v, "dtype")]
        if arrays:
            xp = get_array_module(*arrays)
            host = np.asarray(asnumpy(xp.stack([xp.asarray(v) for v in vals])), dtype=np.float64)
        else:
            host = np.asarray(vals, dtype=np.float64)
        pend, self.pending = self.pending, []
        finite = np.isfinite(host)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            return 0.0, float(host[i]), (float(host[i]), pend[i][2], pend[i][3])
        return float(sum(h * p[1] for h, p in zip(host, pend))), float(host[-1]), None


def _first_nonfinite(groups):
    """``"group/key"`` of the first array in ``groups`` ({group: {key: array}}) holding NaN or inf, else None.
    Device arrays are reduced on the device and read back together (one transfer)."""
    names, flags = [], []
    for g, arrays in groups.items():
        for k, a in arrays.items():
            if isinstance(a, (int, float)) or getattr(a, "dtype", np.dtype("i8")).kind != "f":
                continue
            xp = get_array_module(a)
            names.append(f"{g}/{k}")
            flags.append(xp.isfinite(a).all())
    if not flags:
        return None
    xp = get_array_module(*flags)
    ok = np.asarray(asnumpy(xp.stack(flags)))
    bad = np.flatnonzero(~ok)
    return names[int(bad[0])] if bad.size else None


class _Keeper:
    """What is on disk if the run stops now: names the intact checkpoint in every divergence message."""

    def __init__(self, out, resume, resume_epoch, existed):
        self.out, self.resume, self.resume_epoch, self.existed = out, resume, resume_epoch, existed
        self.saved_epoch = None  # last epoch this process wrote to ``out``

    def note(self):
        if not self.out:
            return " (no --out: nothing was saved)"
        if self.saved_epoch is not None:
            return f"; the last good checkpoint (end of epoch {self.saved_epoch}) is kept in {self.out}"
        if self.resume and os.path.abspath(self.resume) == os.path.abspath(self.out):
            return f"; the checkpoint resumed from (end of epoch {self.resume_epoch}) is unchanged in {self.out}"
        if self.resume:
            return (
                f"; no checkpoint was written to {self.out}; {self.resume} (end of epoch {self.resume_epoch}) is "
                f"unchanged"
            )
        if self.existed:
            return f"; no checkpoint was written: {self.out} still holds the file that was there before"
        return f"; no checkpoint was written to {self.out}"


def train(args, log=print):
    """Run the training described by ``args`` (an ``argparse.Namespace``); return the metrics dict.

    Raises ``Diverged`` (exit 3) when a loss, parameter, optimiser or rule state or the test loss stops being finite;
    a checkpoint is written only when all of them are finite.  Bad input raises ValueError/OSError (exit 2)
    before any training step.
    """
    old = set_conv_save(getattr(args, "conv_save", conv_save()))  # what the run's convolutions keep (in its config)
    try:
        return _train(args, log)
    finally:
        set_conv_save(old)


def _train(args, log):
    config_mod.validate(args)
    out = args.out or args.resume
    if out:  # before any work: refuse to destroy another run, fail now rather than after an epoch
        check_output_path(out, overwrite=args.overwrite, allowed_existing=(args.resume,), create=False)
    xp = resolve_backend(args.backend)
    comm = distributed.init(args.distributed, args.mpi_timeout, xp)
    if not comm.is_root:
        log = _quiet  # only rank 0 prints
    with contextlib.ExitStack() as stack:
        try:
            trainer = Trainer(args, log, out, stack, xp, comm)
            err = None
        except Exception as exc:  # the ranks agree on set-up errors, so none waits for a rank that gave up
            err = exc
        if comm.size > 1:
            errs = comm.allgather(None if err is None else f"rank {comm.rank}: {one_line(err)}", "the set-up check")
            failed = [e for e in errs if e is not None]
            if failed and err is None:
                raise ValueError(failed[0])
        if err is not None:
            raise err
        return trainer.run()


def _quiet(*args, **kwargs):
    pass


def _resident(choice, xp, arrays, dtype):
    """The data sets on the device (``--data-on-device``), or None: ``arrays`` as ``(x, y)`` pairs, images cast to
    ``dtype`` (exact: the cast commutes with the gather, the zero padding and the flip of ``augment``).  Never on
    NumPy (the data is there already); ``auto``: when they take at most a quarter of the device's free memory."""
    if xp is np or choice == "off":
        return None
    nbytes = sum(x.size * np.dtype(dtype).itemsize + y.nbytes for x, y in arrays)
    if choice == "auto":
        try:
            free = xp.cuda.Device().mem_info[0]
        except AttributeError:  # a device module without CUDA's memory query (the tests' stand-in): it fits
            free = 4 * nbytes
        if nbytes > free / 4:
            return None
    return [(to_device(x.astype(dtype, copy=False), xp), to_device(y, xp)) for x, y in arrays]


_AFTER_STEP = "the optimiser step or the rule's after_step"


class Trainer:
    """One training run: everything set-up builds (data, model, rule, optimiser, schedule, tracker, the resumed
    state, the run file), ``run()`` the epochs, ``train_step`` one step through ``Run.train_step``."""

    def __init__(self, args, log, out, stack, xp, comm):
        self.args, self.log, self.out, self.xp, self.comm = args, log, out, xp, comm
        self.dtype = dtype = parse_dtype(args.dtype)
        self.ds = ds = load_dataset(
            args.dataset,
            data_dir=args.data_dir,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            download=not args.no_download,
            seed=args.seed,
        )
        self.val = _split_validation(ds, args.val_split, args.seed) if args.val_split > 0 else None
        model = build_model(
            args.model,
            ds.input_shape,
            ds.num_classes,
            xp=xp,
            dtype=dtype,
            seed=args.seed,
            **config_mod.model_options(args),
        )
        self.rng = np.random.default_rng(args.seed + 1)  # data order and augmentation, host side
        opt_kw = {"momentum": args.momentum, "nesterov": args.nesterov} if args.optimizer == "sgd" else {}
        rule = build_rule(args.method, **config_mod.rule_options(args))
        self.run_ = run = build_run(
            model,
            rule,
            np.random.default_rng(args.seed + 2),
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            **opt_kw,
        )
        self.model, self.rule, self.optimizer = model, rule, optimizer = run.model, run.rule, run.optimizer
        self.n = n = len(ds.x_train)
        if comm.size > 1:
            distributed.check_shards(n, args.batch_size, comm.size)
        self.bn_stats = (
            distributed.sync_batchnorm(model, comm, [a.net for a in rule.aux_networks()])
            if (args.sync_bn and comm.size > 1)
            else None
        )
        if comm.size > 1:  # a rule whose loss couples a batch's examples sees the global batch (rules/base.py)
            rule.group = distributed.BatchGroup(comm)
        self.steps_per_epoch = (n + args.batch_size - 1) // args.batch_size
        self.schedule = build_schedule(args.schedule, args.lr, epochs=args.epochs, steps_per_epoch=self.steps_per_epoch)
        self.use_aug = args.augment == "on" or (args.augment == "auto" and args.dataset.startswith("cifar"))
        self.tracker = None
        if args.align_every > 0:
            from .metrics import AlignmentTracker

            self.tracker = AlignmentTracker(model, args.align_every)
        self.metrics, self.start_epoch, self.step = {}, 0, 0
        if args.resume:
            self.metrics, self.start_epoch, self.step = _restore(
                args.resume, args, model, optimizer, rule, self.rng, xp
            )
            log(f"resumed {args.resume} at epoch {self.start_epoch}")
        if out and comm.is_root:  # everything is set up: take the run file (its folder created now: bad input
            check_output_path(out, overwrite=args.overwrite, allowed_existing=(args.resume,))  # leaves nothing)
            stack.enter_context(RunLock(out))  # one writer per run file
            remove_stale_temporaries(out)  # left by a writer killed mid-write
        self.keeper = _Keeper(out, args.resume, self.start_epoch, bool(out) and Path(out).exists())
        self.config = config = run_config(args)
        if self.tracker is not None:
            config["align_layers"] = list(self.tracker.layer_keys)
        if rule.metric_layers():
            config["svd_layers"] = list(rule.metric_layers())
        val = self.val
        log(
            f"ssaref {__version__}: method={args.method} model={args.model} dataset={args.dataset} "
            f"({ds.source}) backend={xp.__name__} dtype={dtype.name} train={n} "
            + (f"val={len(val[1])} " if val is not None else "")
            + f"test={len(ds.x_test)}"
            + (f" ranks={comm.size}" if comm.size > 1 else "")
        )

    # -- the loop ------------------------------------------------------------------------------------
    def run(self):
        """Train from the start (or resumed) epoch to ``--epochs``; returns the metrics dict."""
        args, ds, val = self.args, self.ds, self.val
        sets = [(ds.x_train, ds.y_train), (ds.x_test, ds.y_test)] + ([val] if val is not None else [])
        self.resident = _resident(args.data_on_device, self.xp, sets, self.dtype)  # one copy instead of per batch
        (self.x_train, self.y_train), self.test_data, *rest = self.resident if self.resident is not None else sets
        self.val_data: Any = rest[0] if rest else None
        self.keys = [k for k, _ in self.run_.params()]  # the flat buffer's layout: the same on every rank
        self.window = _LossWindow(args.log_every)
        for epoch in range(self.start_epoch, args.epochs):
            t0 = time.perf_counter()
            train_loss, train_acc, b = self.train_epoch(epoch)
            self.end_epoch(epoch, train_loss, train_acc, b, t0)
        final = self.metrics["test_acc"][-1] if self.metrics.get("test_acc") else float("nan")
        self.log(f"final test_acc={final:.4f}")
        return self.metrics

    def train_epoch(self, epoch):
        """One pass over the training set: ``(train loss, train accuracy, last step index)``."""
        from tqdm import tqdm

        args, n = self.args, self.n
        perm = self.rng.permutation(n)
        order = to_device(perm, self.xp) if self.resident is not None else perm  # one copy of the epoch's order
        self.loss_sum, correct = 0.0, 0  # correct stays on the device until the epoch ends
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{args.epochs}",
            leave=False,
            disable=True if (args.no_progress or not self.comm.is_root) else None,
            file=sys.stderr,
        )
        b = 0
        for b in bar:
            correct = correct + self.train_step(order[b * args.batch_size : (b + 1) * args.batch_size], epoch, b, bar)
        self.loss_sum += self.read_losses(epoch)[0]
        bar.close()
        bad = _first_nonfinite({"parameter": dict(self.model.named_params())})  # the epoch's last update included
        if bad is not None:
            raise self.diverged(f"{bad} is not finite after the epoch's last update", epoch, b)
        return self.loss_sum / n, int(correct) / n, b

    def train_step(self, idx, epoch, b, bar):
        """One step on the examples ``idx``: the batch, then ``Run.train_step`` (the rule's step; in between the
        alignment tracker, the allreduce over ranks and the loss window; then the optimiser step and the rule's
        after_step).  Returns the batch's correct count (on the device)."""
        xb, yb, n_global = self.batch(idx)
        phase: list = ["the rule's step"]
        out: dict = {}

        def between(res):  # not guarded: what runs here raises its own errors
            phase[0] = None
            if self.tracker is not None:
                self.tracker.maybe_record(self.step, self.model, self.rule, xb, yb, res)
            if self.comm.size > 1:  # one allreduce: the global batch's updates, loss and correct count
                out["correct"] = distributed.average_step(self.comm, res, yb, n_global, self.keys)
            else:
                out["correct"] = (res.logits.argmax(axis=1) == yb).sum()
            self.window.add(res.loss_value, n_global, b, self.step)  # stays on the device until read
            if self.window.due():  # every --log-every steps: one read of the pending losses
                total, last = self.read_losses(epoch)
                self.loss_sum += total
                bar.set_postfix(loss=f"{last:.4f}")
            phase[0] = _AFTER_STEP

        if self.tracker is not None:  # the recording steps keep the rule's error signals (rules/base.py)
            self.rule.keep_signals = self.tracker.due(self.step)
        try:  # the rule's step, ``between``, the optimiser step and the rule's after_step (SSA: retraction)
            self.run_.train_step(xb, yb, lr=self.schedule(self.step), between=between)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            if phase[0] is None:
                raise
            self.diverged_in(exc, phase[0], epoch, b)
        self.step += 1
        return out["correct"]

    def batch(self, idx):
        """``(x, y, global batch size)`` of the examples ``idx`` on the device: augmented (on the global batch:
        the same draws on every rank, offsets drawn on the host), then this rank's contiguous shard."""
        xb, yb = self.x_train[idx], self.y_train[idx]
        if self.use_aug:
            xb = augment(xb, self.rng)
        if self.comm.size > 1:
            part = distributed.shard(np.arange(len(idx)), self.comm.rank, self.comm.size)
            lo, hi = (int(part[0]), int(part[-1]) + 1) if part.size else (0, 0)
            xb, yb = xb[lo:hi], yb[lo:hi]
            if self.bn_stats is not None:
                self.bn_stats.set_batch(len(part), len(idx))
            self.rule.group.set_shard(len(idx))  # type: ignore[union-attr]  # set for several ranks
        return to_device(xb.astype(self.dtype, copy=False), self.xp), to_device(yb, self.xp), len(idx)

    def end_epoch(self, epoch, train_loss, train_acc, b, t0):
        """The rule's end of epoch, evaluation, the epoch's line and metrics, the replica check, the checkpoint."""
        args, metrics = self.args, self.metrics
        try:
            epoch_metrics = self.rule.on_epoch_end(self.model, self.optimizer, epoch + 1, args.epochs)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            self.diverged_in(exc, "the rule's end of epoch (rank schedule)", epoch, None)
        for k, v in epoch_metrics.items():
            metrics.setdefault(_metric_name(k), []).append(v)
        test_loss, test_acc = self.evaluate(*self.test_data)
        if not np.isfinite(test_loss):
            raise self.diverged(f"test loss is {test_loss}", epoch, None)
        seconds = time.perf_counter() - t0
        scalars = [("epoch", epoch + 1), ("train_loss", train_loss), ("train_acc", train_acc)]
        line = f"epoch {epoch + 1}/{args.epochs} loss={train_loss:.4f} train_acc={train_acc:.4f} "
        if self.val is not None:
            val_loss, val_acc = self.evaluate(*self.val_data)
            scalars += [("val_loss", val_loss), ("val_acc", val_acc)]
            line += f"val_loss={val_loss:.4f} val_acc={val_acc:.4f} "
        scalars += [
            ("test_loss", test_loss),
            ("test_acc", test_acc),
            ("seconds", seconds),
            ("lr", self.schedule(max(self.step - 1, 0))),
        ]
        for k, v in scalars:
            metrics.setdefault(k, []).append(v)
        line += f"test_loss={test_loss:.4f} test_acc={test_acc:.4f} time={seconds:.1f}s"
        if self.tracker is not None:
            line += " " + self.tracker.summary_line()
            for k, v in self.tracker.epoch_metrics().items():
                metrics.setdefault(_metric_name(k), []).append(v)
            for k, rows in self.tracker.pop_events().items():
                metrics.setdefault(_metric_name(k), []).extend(rows)
        self.log(line)
        comm = self.comm
        if args.check_replicas and comm.size > 1 and (epoch + 1) % args.check_replicas == 0:
            digests = comm.allgather(distributed.replica_digest(self.model, self.rule), "the replica check")
            if len(set(digests)) > 1:
                raise distributed.DistributedError(
                    f"replicas differ after epoch {epoch + 1}: "
                    + ", ".join(f"rank {r} {d[:12]}" for r, d in enumerate(digests))
                )
        if self.out and comm.is_root:
            ck = _checkpoint(self.model, self.optimizer, self.rule, self.rng, epoch + 1, self.step, args)
            bad = _first_nonfinite({g: ck[g] for g in ("params", "buffers", "optimizer", "rule_state")})
            if bad is not None:
                raise self.diverged(f"checkpoint entry {bad} is not finite (nothing written)", epoch, None)
            write_run(self.out, config=self.config, metrics=metrics, checkpoint=ck)
            self.keeper.saved_epoch = epoch + 1

    def evaluate(self, x, y):
        return evaluate(self.model, x, y, self.args.eval_batch_size, self.xp, self.dtype, self.comm)

    # -- divergence ------------------------------------------------------------------------------------
    def diverged(self, what, epoch, b, gstep=None):
        gstep = self.step if gstep is None else gstep
        where = f"epoch {epoch + 1}, step {b + 1} (global step {gstep + 1})" if b is not None else f"epoch {epoch + 1}"
        return Diverged(f"{what} at {where}{self.keeper.note()}")

    def read_losses(self, epoch):
        """Read the pending losses (one transfer); the first non-finite one stops the run at its own step."""
        total, last, bad = self.window.flush()
        if bad is not None:
            value, b_bad, s_bad = bad
            raise self.diverged(f"loss is {value}", epoch, b_bad, s_bad)
        return total, last

    def diverged_in(self, exc, what, epoch, b):
        """An error a rule hook raised: divergence when a parameter is not finite, named with its place (the first
        non-finite loss still pending, when there is one); otherwise ``exc`` itself."""
        bad = _first_nonfinite({"param": dict(self.model.named_params())})
        if bad is None:
            raise exc
        self.read_losses(epoch)
        raise self.diverged(f"{what} failed ({one_line(exc)}) with non-finite {bad}", epoch, b) from None


def _main(argv):
    args = parse_args(argv)
    keep_large_allocations()  # reuse big activation buffers across steps (glibc), see backend
    if args.threads is None and args.distributed != "none":
        args.threads = distributed.default_threads_per_rank()  # the node's cores shared among its ranks
    args.threads = apply_threads(args.threads)["threads"]  # recorded in the run file's config
    train(args)
    return 0


def main(argv=None):
    """``python -m ssaref.train``; exit codes in ``EXIT_CODES`` (0 done, 2 bad input, 3 diverged, 1 a bug).  In a
    distributed run a rank that fails aborts the whole job after printing its error (no rank is left waiting)."""
    rc = run_main(_main, argv)
    if rc != 0:
        distributed.abort_job(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
