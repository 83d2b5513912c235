"""Running a sweep: every run's arguments checked first (``check_runs``), then each run trained, resumed
or left alone (``launch``), over MPI ranks with ``--mpi`` (``map_runs``); the exit code."""
from __future__ import annotations

import contextlib
import json
import io
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path


from ssaref import commands, config
from ssaref.runlog import RunFileError, read_run

from . import arguments
from .arguments import Config, run_path



@dataclass
class RunStatus:
    """What :func:`run_one` did: exit code (0 also when nothing had to be trained) and the error line."""

    path: Path
    rc: int
    error: str = ""


_CHECKING: list = []   # while check_runs runs: [errors]; launch then only checks its run's arguments


def check_runs(jobs: list, fn) -> None:
    """Check the ``ssaref.train`` arguments of every run ``fn(job)`` would launch (``ssaref.config``: parsed and
    validated, nothing trained nor written); the first refused one raises ValueError naming its run (exit 2)."""
    _CHECKING[:] = [[]]
    try:
        for job in jobs:
            fn(job)
        errors = _CHECKING[0]
    finally:
        _CHECKING[:] = []
    if errors:
        more = f" (and {len(errors) - 1} more runs refused)" if len(errors) > 1 else ""
        raise ValueError(f"{errors[0]}{more}; no run was started")


def map_runs(jobs: list, fn, args, log=print) -> dict:
    """``{key: RunStatus}`` of ``fn(job) -> (key, RunStatus)`` over ``jobs``, in job order; with ``--mpi`` rank r
    runs jobs r, r + N, r + 2N, ... (each writing its own run file atomically) and every rank gets all the
    statuses, so rank 0 can write results.md.  Sets ``args.rank`` (0 without MPI)."""
    check_runs(jobs, fn)   # every run's ssaref.train arguments are checked before the first run starts
    args.rank, size = 0, 1
    comm = None
    if getattr(args, "mpi", False):
        from ssaref.distributed import MPIComm

        comm = MPIComm(timeout=args.mpi_timeout)
        args.rank, size = comm.rank, comm.size
        if not _THREADS:   # one node's cores shared among its ranks
            from ssaref.distributed import default_threads_per_rank
            from ssaref.threads import apply_threads

            _THREADS[:] = [apply_threads(default_threads_per_rank())["threads"]]
        log(f"[rank {comm.rank}/{size}] runs {len(jobs[comm.rank::size])} of the {len(jobs)} runs")
    results = {i: fn(job) for i, job in enumerate(jobs) if i % size == args.rank}
    if comm is not None:
        for part in comm.allgather(results, "the sweep's final gather of run statuses"):
            results.update(part)
    return dict(results[i] for i in sorted(results))


class _Tee(io.TextIOBase):
    """Writes to a stream and remembers the text (to report a run's ``error: ...`` line)."""

    def __init__(self, stream):
        self.stream, self.buf = stream, io.StringIO()

    def write(self, s):
        self.buf.write(s)
        return self.stream.write(s)

    def flush(self):
        self.stream.flush()


def _epochs_in(path: Path) -> int:
    try:
        _, _, ck = read_run(path)
    except RunFileError:
        return -1
    return int(ck["epoch"]) if ck is not None else 0


def run_one(cfg: Config, seed: int, args, log=print) -> RunStatus:
    """Train (or resume, or leave alone) one configuration for one seed; see :func:`launch`."""
    out = run_path(args.out_dir, cfg, seed)
    return launch(out, arguments.train_flags(cfg, seed, args), args.epochs, f"{cfg.name} seed {seed}", log=log)


# settings that may differ between a cached run file and the run asked for (the epoch count is handled apart)
# not settings of the result: where it is written, bookkeeping, and what changes it by round-off only (threads, data
# on the device, what a convolution keeps for its weight gradient: a run cached before --conv-save existed is reused)
_NOT_SETTINGS = {"epochs", "out", "ssaref_version", "align_layers", "svd_layers", "threads", "data_on_device",
                 "conv_save"}


_THREADS: list = []   # --threads of the script, passed on to every run (run_script sets it)


def settings_mismatch(path: Path, argv: list) -> str | None:
    """``None`` when the run file ``path`` was made with the full effective configuration ``argv`` asks for (all
    ``ssaref.train`` settings but the epoch count), else a one-line description of the first differences.  An
    unreadable file or argv is a mismatch."""
    try:
        have = json.loads(json.dumps(config.read_config(path)))   # 0.1.0 files: their defaults
        want = json.loads(json.dumps(config.run_config(config.parse_args(list(argv)))))
    except (RunFileError, ValueError, TypeError, SystemExit) as exc:
        return f"cannot compare settings ({exc})"
    keys = sorted((set(have) | set(want)) - _NOT_SETTINGS)
    diffs = [f"{k}: {have.get(k)!r} in the file, {want.get(k)!r} asked" for k in keys if have.get(k) != want.get(k)]
    return "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "") if diffs else None


def launch(out: Path, argv: list, epochs: int, label: str, log=print) -> RunStatus:
    """Run ``ssaref.train`` with ``argv --out out``: left alone when ``out`` already holds ``epochs`` epochs made
    with the same settings, resumed when it holds fewer; a cached file made with other settings is never reused
    nor replaced (the run fails with a message naming the differences).  Never raises on a failed run: an
    exception inside ``ssaref.train.main`` is reported as exit code 1 with its ``error: Type: message`` line."""
    argv = list(argv) + (["--threads", str(_THREADS[0])] if _THREADS and "--threads" not in argv else [])
    if _CHECKING:   # check_runs: the arguments only
        err = config.check_argv(argv)
        if err is not None:
            _CHECKING[0].append(f"run {label}: {err.removeprefix('error: ')}")
        return RunStatus(out, 0 if err is None else 2, err or "")
    if out.exists():
        done = _epochs_in(out)
        differ = settings_mismatch(out, argv) if done > 0 else None
        if differ:
            err = (f"error: {out} holds a run made with other settings ({differ}); delete it or choose another "
                   f"--out-dir")
            log(f"   {label}: {err}")
            return RunStatus(out, 2, err)
    argv += ["--out", str(out)]
    if out.exists():
        if done >= epochs:
            return RunStatus(out, 0)
        if done > 0:
            argv += ["--resume", str(out)]
        else:  # unreadable or checkpoint-less file of this sweep: start over (write_run replaces it atomically)
            log(f"   {out} holds no usable checkpoint; training from scratch")
            argv += ["--overwrite"]
    log(f"== {label}: python -m ssaref.train {' '.join(argv)}")
    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        try:
            rc = commands.main(["train", *argv])
        except SystemExit as exc:  # ssaref.train's argparse rejected a flag (one "error:" line already printed)
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception as exc:  # a crash inside training is a failed run: the sweep goes on, the row says so
            traceback.print_exc()
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
    err = ""
    if rc != 0:
        lines = [ln for ln in tee.buf.getvalue().splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        log(f"   {label} stopped with exit code {rc}: {err}")
    return RunStatus(out, rc, err)


def run_sweep(configs: list[Config], args, log=print) -> dict:
    """Run every configuration that is not skipped, for every seed; ``{(name, seed): RunStatus}`` (over MPI
    ranks with ``--mpi``, see :func:`map_runs`)."""
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, seed) for cfg in configs if cfg.skip is None for seed in args.seeds]
    return map_runs(jobs, lambda job: ((job[0].name, job[1]), run_one(job[0], job[1], args, log=log)), args, log)


def failed_runs(status: dict) -> list[tuple[str, int]]:
    """``(name, seed)`` of every run in ``status`` (from :func:`run_sweep`) that exited with a non-zero code."""
    return [key for key, st in status.items() if st.rc != 0]


def exit_code(status: dict, stream=None) -> int:
    """A script's exit code: 1 (after ``N runs failed: name/seed, ...`` on ``stream``, default stderr) when a
    run failed, else 0.  Call it after ``results.md`` is written, so the failed rows are on disk either way."""
    failed = failed_runs(status)
    if not failed:
        return 0
    print(f"{len(failed)} runs failed: " + ", ".join(f"{name}/{seed}" for name, seed in failed),
          file=stream if stream is not None else sys.stderr, flush=True)
    return 1
