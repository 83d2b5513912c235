"""``python -m ssaref.train``: train a model with one learning rule and log the run.

Every flag can also come from ``--config FILE.toml`` (keys mirror the flags,
``-`` or ``_`` alike); flags given on the command line win over the file.
The last line printed is ``final test_acc=<float>``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
import time

import numpy as np

from . import __version__
from .cli import OneLineParser, int_list, nonnegative_int, positive
from .backend import BackendError, asnumpy, keep_large_allocations, parse_dtype, resolve_backend, to_device
from .data import DATASETS, DatasetError, augment, load_dataset
from .nn import MODELS, build_model
from .ops.losses import softmax_cross_entropy
from .optim import build_schedule
from .rules import RULES, build_rule
from .run import build_run
from .runlog import RunFileError, read_run, write_run

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

__all__ = ["main", "build_parser", "train", "TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); the message says where."""


def build_parser():
    p = OneLineParser(prog="python -m ssaref.train", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--config", help="TOML file whose keys mirror these flags")
    a("--backend", default="auto", help="auto (cupy when a GPU is usable), numpy or cupy")
    a("--method", default="ssa", help=f"learning rule: {', '.join(sorted(RULES))}")
    a("--model", default="mlp", help=f"one of {', '.join(sorted(MODELS))}")
    a("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    a("--data-dir", default=None, help="dataset root searched first (then $SSAREF_DATA, ./data, /usr/share/datasets)")
    a("--no-download", action="store_true", help="never download a missing dataset")
    a("--epochs", type=positive(int), default=10)
    a("--batch-size", type=positive(int), default=128)
    a("--lr", type=positive(float), default=1e-3)
    a("--optimizer", default="adam", help="sgd, adam or adamw")
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--nesterov", action="store_true")
    a("--weight-decay", type=float, default=0.0)
    a("--schedule", default="constant", help="constant, step or cosine")
    a("--seed", type=nonnegative_int, default=0)
    a("--train-limit", type=positive(int), default=None, help="use the first N training examples")
    a("--test-limit", type=positive(int), default=None, help="use the first N test examples")
    a("--dtype", default="float32", help="float32 (training) or float64")
    a("--hidden", type=int_list, default=None, help="mlp hidden widths, e.g. 256,256")
    a("--activation", default=None, choices=["relu", "tanh", "sigmoid"],
      help="hidden non-linearity of mlp (default relu)")
    a("--width-mult", type=positive(float), default=1.0, help="scale channel counts of conv models")
    a("--augment", choices=["auto", "on", "off"], default="auto", help="crop+flip (auto: on for CIFAR)")
    a("--eval-batch-size", type=positive(int), default=1000)
    a("--align-every", type=int, default=0,
      help="every N steps, run BP on the same batch and log the eq. (4) angles per layer (0: off)")
    a("--out", default=None, help="HDF5 run file (config, per-epoch metrics, checkpoint)")
    a("--resume", default=None, help="continue the run stored in this file")
    a("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("learning-rule options (each applies to the methods that declare it)")
    for opt, (typ, default, help_, owners) in _rule_options().items():
        g.add_argument("--" + opt.replace("_", "-"), dest="rule_" + opt, default=None, metavar=opt.upper(),
                       type=str if typ is bool else typ,
                       help=f"{help_} (default {default}; methods: {', '.join(owners)})".replace("%", "%%"))
    return p


def _rule_options():
    """Union of every registered rule's OPTIONS: name -> (type, default, help, [methods])."""
    out = {}
    for mname, cls in sorted(RULES.items()):
        for opt, (typ, default, help_) in cls.OPTIONS.items():
            if opt in out:
                out[opt][3].append(mname)
            else:
                out[opt] = (typ, default, help_, [mname])
    return out


def _rule_kwargs(args):
    """Rule options the user set; an option the chosen method does not take is an error."""
    given = {k[len("rule_"):]: v for k, v in vars(args).items() if k.startswith("rule_") and v is not None}
    cls = RULES[args.method]
    foreign = sorted(set(given) - set(cls.OPTIONS))
    if foreign:
        raise ValueError(f"method {args.method!r} takes no option --{foreign[0].replace('_', '-')}; "
                         f"its options: {', '.join('--' + o.replace('_', '-') for o in cls.OPTIONS) or 'none'}")
    return given


def parse_args(argv=None):
    """Parse flags, with ``--config`` TOML values as defaults under the flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:  # the run's own settings become the defaults; flags given now (and --config) still win
        try:
            run_config, _, _ = read_run(args.resume)
        except RunFileError:
            run_config = {}  # train() reports the unreadable file with its one-line error
        known = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in run_config.items()
                                if k in known and k not in ("out", "resume", "config", "help")})
        args = parser.parse_args(argv)
    if args.config:
        try:
            with open(args.config, "rb") as f:
                cfg = tomllib.load(f)
        except FileNotFoundError:
            parser.error(f"config file {args.config!r} not found")
        except tomllib.TOMLDecodeError as exc:
            parser.error(f"config file {args.config!r} is not valid TOML: {exc}")
        known = {a.dest for a in parser._actions}
        defaults = {}
        for k, v in cfg.items():
            dest = k.replace("-", "_")
            if dest not in known and "rule_" + dest in known:
                dest = "rule_" + dest
            if dest not in known or dest in ("config", "help"):
                parser.error(f"config file {args.config!r}: unknown key {k!r}")
            action = next(a for a in parser._actions if a.dest == dest)
            if action.type is not None and not isinstance(v, (list, bool)):
                try:
                    v = action.type(str(v))
                except argparse.ArgumentTypeError as exc:
                    parser.error(f"config file {args.config!r}: {k} {exc}")
            defaults[dest] = v
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    return args


def _check_choices(args):
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir {args.data_dir!r} is not an existing folder (create it, or leave the flag "
                         f"out to search $SSAREF_DATA, ./data and /usr/share/datasets)")
    if args.method not in RULES:
        raise ValueError(f"unknown method {args.method!r}; choose one of {', '.join(sorted(RULES))}")
    if args.model not in MODELS:
        raise ValueError(f"unknown model {args.model!r}; choose one of {', '.join(sorted(MODELS))}")
    if args.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")


def _config(args):
    cfg = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "no_progress")}
    cfg["ssaref_version"] = __version__
    return cfg


def _model_options(args):
    opts = {}
    if args.model == "mlp":
        if args.hidden is not None:
            opts["hidden"] = tuple(args.hidden)
        if args.activation is not None:
            opts["activation"] = args.activation
    elif args.activation is not None:
        raise ValueError(f"--activation applies to mlp only, not {args.model!r}")
    elif args.width_mult != 1.0:
        opts["width_mult"] = args.width_mult
    return opts


def _metric_name(key):
    """HDF5 dataset name for a metric: '/' (a group separator there) becomes '.'."""
    return key.replace("/", ".")


def evaluate(model, x, y, batch_size, xp, dtype):
    """Mean cross-entropy and accuracy of ``model`` on host arrays ``x`` (N, C, H, W), ``y`` (N,)."""
    total_loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb = to_device(x[i:i + batch_size].astype(dtype, copy=False), xp)
        yb = to_device(y[i:i + batch_size], xp)
        logits, _ = model.forward(xb, train=False)
        loss, _ = softmax_cross_entropy(logits, yb)
        total_loss += float(loss) * len(yb)
        correct += int((logits.argmax(axis=1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def _checkpoint(model, optimizer, rule, rng, epoch, step, args):
    return {
        "epoch": epoch, "step": step, "model": args.model, "method": args.method, "dataset": args.dataset,
        "params": {k: asnumpy(v) for k, v in model.named_params()},
        "buffers": {k: asnumpy(v) for k, v in model.buffers.items()},
        "optimizer": optimizer.state_dict(),
        "rule_state": rule.state_dict(),
        "rng": rng.bit_generator.state,
    }


def _restore(path, args, model, optimizer, rule, rng, xp):
    config, metrics, ck = read_run(path)
    if ck is None:
        raise RunFileError(f"{path}: run file holds no checkpoint to resume from")
    for key in ("model", "method", "dataset"):
        if str(ck.get(key)) != str(getattr(args, key)):
            raise RunFileError(f"{path}: run belongs to {key} {ck.get(key)!r}, not {getattr(args, key)!r}")
    saved = ck["params"]
    rule.adapt_to_checkpoint(model, optimizer, {k: tuple(v.shape) for k, v in saved.items()})
    params = dict(model.named_params())
    if set(saved) != set(params):
        raise RunFileError(f"{path}: checkpoint parameters {sorted(saved)[:4]}... do not match model "
                           f"{args.model!r} ({sorted(params)[:4]}...)")
    for k, v in params.items():
        if tuple(saved[k].shape) != tuple(v.shape):
            raise RunFileError(f"{path}: parameter {k} has shape {tuple(saved[k].shape)} in the checkpoint, "
                               f"model {args.model!r} expects {tuple(v.shape)}")
        v[...] = xp.asarray(saved[k], dtype=v.dtype)
    for k, v in model.buffers.items():
        v[...] = xp.asarray(ck["buffers"][k], dtype=v.dtype)
    optimizer.load_state_dict(ck["optimizer"])
    rule.load_state_dict(ck.get("rule_state", {}), xp)
    rng.bit_generator.state = ck["rng"]
    return {k: list(v) for k, v in metrics.items()}, int(ck["epoch"]), int(ck["step"])


def train(args, log=print):
    """Run the training described by ``args`` (an ``argparse.Namespace``); return the metrics dict."""
    _check_choices(args)
    xp = resolve_backend(args.backend)
    dtype = parse_dtype(args.dtype)
    ds = load_dataset(args.dataset, data_dir=args.data_dir, train_limit=args.train_limit,
                      test_limit=args.test_limit, download=not args.no_download, seed=args.seed)
    model = build_model(args.model, ds.input_shape, ds.num_classes, xp=xp, dtype=dtype, seed=args.seed,
                        **_model_options(args))
    rng = np.random.default_rng(args.seed + 1)  # data order and augmentation, host side
    opt_kw = ({"momentum": args.momentum, "nesterov": args.nesterov} if args.optimizer == "sgd" else {})
    run = build_run(model, build_rule(args.method, **_rule_kwargs(args)), np.random.default_rng(args.seed + 2),
                    optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, **opt_kw)
    model, rule, optimizer = run.model, run.rule, run.optimizer
    n = len(ds.x_train)
    steps_per_epoch = (n + args.batch_size - 1) // args.batch_size
    schedule = build_schedule(args.schedule, args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    use_aug = args.augment == "on" or (args.augment == "auto" and args.dataset.startswith("cifar"))

    tracker = None
    if args.align_every < 0:
        raise ValueError(f"--align-every must be >= 0, got {args.align_every}")
    if args.align_every > 0:
        from .metrics import AlignmentTracker
        tracker = AlignmentTracker(model, args.align_every)

    metrics, start_epoch, step = {}, 0, 0
    if args.resume:
        metrics, start_epoch, step = _restore(args.resume, args, model, optimizer, rule, rng, xp)
        log(f"resumed {args.resume} at epoch {start_epoch}")
    out = args.out or args.resume
    if out:  # fail before training, not after the first epoch, if the run file cannot be written there
        Path(out).resolve().parent.mkdir(parents=True, exist_ok=True)
    config = _config(args)
    if tracker is not None:
        config["align_layers"] = list(tracker.layer_keys)
    if rule.metric_layers():
        config["svd_layers"] = list(rule.metric_layers())
    log(f"ssaref {__version__}: method={args.method} model={args.model} dataset={args.dataset} "
        f"({ds.source}) backend={xp.__name__} dtype={dtype.name} train={n} test={len(ds.x_test)}")

    from tqdm import tqdm

    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        loss_sum, correct = 0.0, 0  # correct stays on the device until the epoch ends
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                   disable=True if args.no_progress else None, file=sys.stderr)
        for b in bar:
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            xb = ds.x_train[idx]
            if use_aug:
                xb = augment(xb, rng)
            xb = to_device(xb.astype(dtype, copy=False), xp)
            yb = to_device(ds.y_train[idx], xp)
            res = rule.step(model, xb, yb)
            if tracker is not None:
                tracker.maybe_record(step, model, rule, xb, yb, res)
            if not np.isfinite(res.loss):
                where = f"epoch {epoch + 1}, step {b + 1} (global step {step + 1})"
                kept = ""
                if out:
                    kept = (f"; the last good checkpoint (end of epoch {epoch}) is kept in {out}" if epoch > 0
                            else f"; no checkpoint was written to {out}")
                raise TrainingError(f"loss is {res.loss} at {where}{kept}")
            run.apply(res, lr=schedule(step))   # optimiser step, then the rule's after_step
            step += 1
            loss_sum += res.loss * len(idx)
            correct = correct + (res.logits.argmax(axis=1) == yb).sum()
            if b % 20 == 0:
                bar.set_postfix(loss=f"{res.loss:.4f}")
        bar.close()
        train_loss, train_acc = loss_sum / n, int(correct) / n
        for k, v in rule.on_epoch_end(model, optimizer, epoch + 1, args.epochs).items():
            metrics.setdefault(_metric_name(k), []).append(v)
        test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test, args.eval_batch_size, xp, dtype)
        seconds = time.perf_counter() - t0
        for k, v in (("epoch", epoch + 1), ("train_loss", train_loss), ("train_acc", train_acc),
                     ("test_loss", test_loss), ("test_acc", test_acc), ("seconds", seconds),
                     ("lr", schedule(max(step - 1, 0)))):
            metrics.setdefault(k, []).append(v)
        line = (f"epoch {epoch + 1}/{args.epochs} loss={train_loss:.4f} train_acc={train_acc:.4f} "
                f"test_loss={test_loss:.4f} test_acc={test_acc:.4f} time={seconds:.1f}s")
        if tracker is not None:
            line += " " + tracker.summary_line()
            for k, v in tracker.epoch_metrics().items():
                metrics.setdefault(_metric_name(k), []).append(v)
            for k, rows in tracker.pop_events().items():
                metrics.setdefault(_metric_name(k), []).extend(rows)
        log(line)
        if out:
            write_run(out, config=config, metrics=metrics,
                      checkpoint=_checkpoint(model, optimizer, rule, rng, epoch + 1, step, args))
    final = metrics["test_acc"][-1] if metrics.get("test_acc") else float("nan")
    log(f"final test_acc={final:.4f}")
    return metrics


def main(argv=None):
    args = parse_args(argv)
    keep_large_allocations()  # reuse big activation buffers across steps (glibc), see backend
    try:
        train(args)
    except (ValueError, BackendError, DatasetError, RunFileError, TrainingError, FloatingPointError,
            OSError) as exc:
        print("error: " + "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
