"""A run's configuration: the option table, its validation, defaults across versions, and the run file's config.

* **The option table** is :func:`build_parser`: every ``ssaref.train`` flag is declared once there, and its TOML key
  (``--config FILE.toml``; ``-`` or ``_`` alike) is the same declaration read by :func:`_checked_defaults`.  A
  learning rule declares its own options (``Rule.OPTIONS``, ssaref/rules/); each becomes a flag here.  A flag that
  only acts in some settings declares where (``applies=``): given explicitly (on the command line or in the TOML
  file) where it has no effect, it is refused with one ``error:`` line and exit 2, as a rule option the chosen
  rule does not take is (one rule for every flag, docs/decisions.md D7).
* **Validation** happens here, once: :func:`parse_args` (types, ranges, applicability) and :func:`validate` (the
  choices that need the registries or the file system); :func:`check_argv` runs both without training (the
  validation scripts check every run of a sweep before the first starts).
* **Defaults and their history**: today's defaults are the declarations'; a run written by an earlier version
  resumes with the defaults of that version (``ssaref/options.py``: each option's ``before`` history, one
  mechanism for every rule).
* **A run's configuration**: :func:`run_config` is what ``ssaref.train`` stores in a run file; :func:`read_config`
  reads one back with every rule option filled in (:func:`filled_config`), which is what plots and sweeps compare.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from . import __version__
from .cli import OneLineParser, int64, int_list, nonnegative_int, positive
from .data import DATASETS
from .nn import MODELS
from .options import coerce, earlier_defaults, resolve
from .rules import RULES
from .runlog import RunFileError, read_run
from .ops.conv import DEFAULT_SAVE, SAVE_MODES
from .threads import threads_arg

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "build_parser",
    "parse_args",
    "validate",
    "check_argv",
    "rule_options",
    "model_options",
    "run_config",
    "filled_config",
    "read_config",
    "ConfigError",
]

PROG = "python -m ssaref.train"


class ConfigError(ValueError):
    """A run's arguments are refused (the one-line message, without ``error:``)."""


class _Parser(OneLineParser):
    """The option table: argparse's actions plus ``applies`` (dest -> where the flag has an effect)."""

    applies: dict


def build_parser():
    """The option table: every ``ssaref.train`` flag (and so every TOML key), rule options included."""
    p = _Parser(prog=PROG, description="train a model with one learning rule and log the run")
    p.applies = {}  # dest -> (setting, values, inverted, words): where a flag has an effect

    def a(*names, applies=None, **kw):
        action = p.add_argument(*names, **kw)
        if applies is not None:
            p.applies[action.dest] = applies
        return action

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
    sgd = ("optimizer", ("sgd",), False, "--optimizer sgd")
    a("--momentum", type=float, default=0.9, help="SGD momentum (--optimizer sgd only)", applies=sgd)
    a("--nesterov", action="store_true", help="Nesterov momentum (--optimizer sgd only)", applies=sgd)
    a("--weight-decay", type=float, default=0.0)
    a("--schedule", default="constant", help="constant, step or cosine")
    a("--seed", type=nonnegative_int, default=0)
    a("--train-limit", type=positive(int), default=None, help="use the first N training examples")
    a("--test-limit", type=positive(int), default=None, help="use the first N test examples")
    a("--dtype", default="float32", help="float32 (training) or float64")
    mlp = ("model", ("mlp",), False, "--model mlp")
    a("--hidden", type=int_list, default=None, help="mlp hidden widths, e.g. 256,256", applies=mlp)
    a(
        "--activation",
        default=None,
        choices=["relu", "tanh", "sigmoid"],
        help="hidden non-linearity of mlp (default relu)",
        applies=mlp,
    )
    a(
        "--width-mult",
        type=positive(float),
        default=1.0,
        help="scale channel counts of conv models (not mlp)",
        applies=("model", ("mlp",), True, "the conv models"),
    )
    a("--augment", choices=["auto", "on", "off"], default="auto", help="crop+flip (auto: on for CIFAR)")
    a("--eval-batch-size", type=positive(int), default=1000)
    a(
        "--align-every",
        type=int64,
        default=0,
        help="every N steps, run BP on the same batch and log the eq. (4) angles per layer (0: off)",
    )
    a(
        "--val-split",
        type=_fraction,
        default=0.0,
        help="hold out this fraction of the training set (stratified by class, seeded) as a validation split, "
        "evaluated every epoch (val_loss, val_acc); 0: none",
    )
    a("--out", type=_path, default=None, help="HDF5 run file (config, per-epoch metrics, checkpoint)")
    a("--overwrite", action="store_true", help="replace an existing --out file (refused otherwise)")
    a("--resume", type=_path, default=None, help="continue the run stored in this file")
    a("--no-progress", action="store_true", help="no progress bar")
    a(
        "--threads",
        type=threads_arg,
        default=None,
        help="BLAS/OpenMP threads (default: the cores this process may use; on a shared machine, the free ones)",
    )
    a(
        "--conv-save",
        choices=list(SAVE_MODES),
        default=DEFAULT_SAVE,
        help="what a convolution keeps for its weight gradient: input (its input, the backward rebuilds the "
        "columns, a kernel offset at a time: less memory, a few per cent slower), columns (the forward's im2col "
        "matrix), recompute (input, and a factorised SSA/SVD-BP convolution keeps only its input: the backward "
        "runs its first pass again, less memory for a slower step) or auto (default: input on the CPU, columns "
        "on a GPU); the same gradients up to round-off; docs/decisions.md D8, D10",
        applies=("model", ("mlp",), True, "the conv models"),
    )
    a(
        "--data-on-device",
        choices=["auto", "on", "off"],
        default="auto",
        help="keep the training, validation and test sets on the device (GPU backends): one copy at the start, batches "
        "gathered and augmented there from host-drawn indices and offsets (the same numbers as off); auto: on "
        "when they take at most a quarter of the device's free memory",
    )
    a(
        "--log-every",
        type=positive(int),
        default=1,
        help="read the training loss back every K steps (one device->host transfer per K steps; a non-finite loss "
        "still stops the run naming its own step)",
    )
    a(
        "--distributed",
        default="none",
        choices=["none", "mpi"],
        help="data-parallel over MPI ranks (mpiexec -n N / srun): each rank takes a shard of every global batch of "
        "--batch-size, one allreduce per step; rank 0 prints and writes (docs/scaling.md)",
    )
    mpi = ("distributed", ("mpi",), False, "--distributed mpi")
    a(
        "--mpi-timeout",
        type=positive(float),
        default=600.0,
        applies=mpi,
        help="seconds a collective may wait for the other ranks before the job is aborted",
    )
    a(
        "--sync-bn",
        action="store_true",
        applies=mpi,
        help="with --distributed: BatchNorm uses the global batch's statistics (reduced across ranks) instead of each "
        "rank's own",
    )
    a(
        "--check-replicas",
        type=nonnegative_int,
        default=0,
        applies=mpi,
        help="every K epochs check that all ranks hold identical parameters and rule state (0: never)",
    )
    g = p.add_argument_group("learning-rule options (each applies to the rules that declare it)")
    for opt, (typ, defaults, help_, owners) in _rule_option_table().items():
        if len(set(map(repr, defaults.values()))) == 1:
            default = f"default {next(iter(defaults.values()))}"
        else:  # the rules declare different defaults
            default = "default " + ", ".join(f"{v} ({m})" for m, v in defaults.items())
        g.add_argument(
            "--" + opt.replace("_", "-"),
            dest="rule_" + opt,
            default=None,
            metavar=opt.upper(),
            type=str if typ is bool else int64 if typ is int else typ,
            help=f"{help_} ({default}; rules: {', '.join(owners)})".replace("%", "%%"),
        )
    return p


def _fraction(s):
    """Argument type: a float in [0, 1)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {s!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def _path(s):
    """Argument type: a file name that is not empty."""
    if not str(s).strip():
        raise argparse.ArgumentTypeError("expected a file name, got an empty one")
    return s


def _rule_option_table():
    """Union of every registered rule's OPTIONS: name -> (type, {rule: default}, help, [rules])."""
    out: dict = {}
    for mname, cls in sorted(RULES.items()):
        for opt, (typ, default, help_) in cls.OPTIONS.items():
            if opt in out:
                out[opt][1][mname] = default
                out[opt][3].append(mname)
            else:
                out[opt] = (typ, {mname: default}, help_, [mname])
    return out


def _flag(dest):
    return "--" + dest.removeprefix("rule_").replace("_", "-")


def rule_options(args):
    """Rule options the user set; an option the chosen rule does not take is an error (ConfigError)."""
    given = {k[len("rule_") :]: v for k, v in vars(args).items() if k.startswith("rule_") and v is not None}
    cls = RULES[args.method]
    foreign = sorted(set(given) - set(cls.OPTIONS))
    if foreign:
        raise ConfigError(
            f"method {args.method!r} takes no option {_flag(foreign[0])}; "
            f"its options: {', '.join(_flag(o) for o in cls.OPTIONS) or 'none'}"
        )
    return given


def _config_defaults(parser, path):
    """The ``--config`` TOML file as parser defaults, every value checked like the flag it mirrors."""
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        parser.error(f"config file {path!r} not found")
    except IsADirectoryError:
        parser.error(f"config file {path!r} is a folder, not a TOML file")
    except UnicodeDecodeError as exc:
        parser.error(f"config file {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        parser.error(f"config file {path!r} is not valid TOML: {exc}")
    except OSError as exc:
        parser.error(f"config file {path!r} cannot be read: {exc.strerror or exc}")
    return _checked_defaults(parser, cfg, f"config file {path!r}")


_NOT_FROM_RUN = ("out", "resume", "config", "help", "overwrite")


def _checked_defaults(parser, cfg, where, *, run_file=False):
    """``cfg`` (TOML keys, or a resumed run file's config) as parser defaults, every value checked like the flag
    it mirrors; a bad one is the parser's one-line error naming ``where``.  A run file's config also holds
    entries that are not flags (skipped) and None where a flag's default is None."""
    actions = {a.dest: a for a in parser._actions}
    defaults: dict = {}
    keys: dict = {}
    for k, v in cfg.items():
        dest = k.replace("-", "_")
        if dest not in actions and "rule_" + dest in actions:
            dest = "rule_" + dest
        if run_file and (dest not in actions or dest in _NOT_FROM_RUN):
            continue
        if dest not in actions or dest in ("config", "help"):
            parser.error(f"{where}: unknown key {k!r}")
        if dest in keys:
            parser.error(f"{where}: keys {keys[dest]!r} and {k!r} are the same setting; give it once")
        keys[dest] = k
        action = actions[dest]
        flag = action.option_strings[0] if action.option_strings else dest
        if run_file and v is None and action.default is None:
            pass
        elif action.nargs == 0:  # store_true flags take a TOML boolean
            if not isinstance(v, bool):
                parser.error(f"{where}: {k} must be true or false, got {v!r}")
        elif action.type is int_list and isinstance(v, list):
            if not all(isinstance(e, int) and not isinstance(e, bool) for e in v):
                parser.error(f"{where}: {k} must be a list of integers, got {v!r}")
        elif isinstance(v, (list, dict)) or (isinstance(v, bool) and action.type not in (str, None)):
            parser.error(f"{where}: {k} must be a single value like {flag} takes, got {v!r}")
        elif action.type is not None:
            try:
                v = action.type(str(v).lower() if isinstance(v, bool) else str(v))
            except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
                parser.error(f"{where}: {k} = {v!r}: {exc}")
        elif not isinstance(v, str):
            parser.error(f"{where}: {k} must be a string, got {v!r}")
        if action.choices is not None and v not in action.choices and not (v is None and action.default is None):
            # argparse checks the flags' values, not defaults (a TOML value, a resumed run's setting)
            parser.error(f"{where}: {k} = {v!r}: choose one of {', '.join(map(str, action.choices))}")
        defaults[dest] = v
    return defaults


def _explicit(argv) -> set:
    """The dests of the flags given on the command line ``argv`` (not left at a default)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def _check_applicable(parser, args, explicit):
    """Refuse a flag given explicitly (``explicit``: dests) where it has no effect: a rule option the rule does
    not take, or a flag whose ``applies`` declaration excludes the setting in force."""
    for dest in sorted(explicit):
        if dest not in parser.applies:
            continue
        setting, values, inverted, words = parser.applies[dest]
        value = getattr(args, setting)
        if (value in values) == inverted:
            parser.error(
                f"{_flag(dest)} has no effect with --{setting.replace('_', '-')} {value} (it applies to "
                f"{words} only); leave it out"
            )
    if args.method in RULES:
        try:
            rule_options(args)
        except ConfigError as exc:
            parser.error(str(exc))


def parse_args(argv=None):
    """Parse flags.  Precedence: flags given now > ``--config`` TOML keys > the resumed run's own settings >
    built-in defaults.  ``resume`` may come from the flag or the TOML file alike.  A flag given explicitly where it
    has no effect is refused (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = _config_defaults(parser, args.config) if args.config else {}
    resume = args.resume or config.get("resume")
    if resume:  # the run's own settings become the defaults
        try:
            run_cfg, _, _ = read_run(resume)
        except RunFileError:
            run_cfg = {}  # train() reports the unreadable file with its one-line error
        parser.set_defaults(**_checked_defaults(parser, run_cfg, f"run file {resume}", run_file=True))
        parser.set_defaults(**_earlier_defaults(run_cfg))
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    _check_applicable(parser, args, _explicit(argv) | set(config))
    return args


def _earlier_defaults(run_cfg):
    """Rule options a run written by an earlier ssaref ran with without recording them: the defaults of its version
    (each option's declared history, ssaref/options.py) for every option its file leaves unset, so a resume
    continues that run and not one with today's defaults."""
    cls = RULES.get(str(run_cfg.get("method")))
    if cls is None:
        return {}
    old = earlier_defaults(cls.OPTIONS, run_cfg.get("ssaref_version", "0.1.0"))
    return {f"rule_{k}": v for k, v in old.items() if run_cfg.get(f"rule_{k}") is None}


def filled_config(run_cfg):
    """A run file's config with every option of its rule given: an option the file leaves unset (null:
    files of ssaref 0.1.0) takes the default of the version that wrote it (the options' declared history), or the
    one its variant names (``Rule.DEFAULTS_OF``).  What a run computed, comparable between files of any version
    (plots, sweep caches)."""
    cfg = dict(run_cfg)
    cls = RULES.get(str(cfg.get("method")))
    if cls is None:
        return cfg
    given = {k: cfg[f"rule_{k}"] for k in cls.OPTIONS if cfg.get(f"rule_{k}") is not None}
    try:
        given = {k: coerce(cls.OPTIONS[k][0], v) for k, v in given.items()}
    except (TypeError, ValueError):
        pass  # an invalid value stays as written (refused where it is used)
    options = resolve(cls.OPTIONS, given, version=cfg.get("ssaref_version", "0.1.0"), defaults_of=cls.DEFAULTS_OF)
    for k, v in options.items():
        if cfg.get(f"rule_{k}") is None:
            cfg[f"rule_{k}"] = v
    return cfg


def read_config(path) -> dict:
    """The configuration of the run file ``path``, every rule option filled in (:func:`filled_config`); raises
    ``RunFileError`` for a file that is not a readable run file."""
    return filled_config(read_run(path)[0])


def validate(args):
    """The checks that need the registries or the file system: a bad choice raises ConfigError (exit 2)."""
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ConfigError(
            f"--data-dir {args.data_dir!r} is not an existing folder (create it, or leave the flag "
            f"out to search $SSAREF_DATA, ./data and /usr/share/datasets)"
        )
    if args.method not in RULES:
        raise ConfigError(f"unknown method {args.method!r}; choose one of {', '.join(sorted(RULES))}")
    if args.model not in MODELS:
        raise ConfigError(f"unknown model {args.model!r}; choose one of {', '.join(sorted(MODELS))}")
    if args.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    if args.align_every < 0:
        raise ConfigError(f"--align-every must be >= 0, got {args.align_every}")
    rule_options(args)


def check_argv(argv) -> str | None:
    """``None`` when ``ssaref.train`` accepts the flags ``argv`` (parsed and validated, nothing trained), else its
    one-line ``error: ...`` message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parse_args(list(argv))
        validate(args)
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        return lines[-1] if lines else f"error: {PROG} refuses {' '.join(argv)}"
    except ValueError as exc:
        return f"error: {exc}"
    return None


def run_config(args):
    """The run's effective configuration as stored in the run file's ``config`` (every setting that shapes the
    run; not where it is written, nor ``--config``/``--resume``/``--overwrite``/``--no-progress``)."""
    cfg = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "no_progress", "overwrite")}
    cfg["ssaref_version"] = __version__
    return filled_config(cfg)  # every option the rule runs with, defaults included (a resume keeps them all)


def model_options(args):
    """``build_model`` keyword arguments of the chosen model (the flags that apply to it, see ``applies``)."""
    opts = {}
    if args.model == "mlp":
        if args.hidden is not None:
            opts["hidden"] = tuple(args.hidden)
        if args.activation is not None:
            opts["activation"] = args.activation
    elif args.width_mult != 1.0:
        opts["width_mult"] = args.width_mult
    return opts
