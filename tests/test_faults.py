"""Faults a hostile user or a bad machine produces, across every entry point (issue: reliability).

* A table of bad inputs: each gives exit 2 with one ``error:`` line on stderr, no traceback, and leaves the
  working folder exactly as it was (no file created, changed or removed).
* Divergence per rule family: exit 3, the message names the epoch and step, no non-finite checkpoint is written.
* Kill trials: SIGKILL at random times during training and checkpoint writing; every run resumes and ends equal to
  an uninterrupted one, with no temporary file left.
* One writer per run file: a second run on the same ``--out`` is refused while the first holds it.
* A full disk and a read-only folder (small tmpfs mounts; skipped where mounting is not allowed).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssaref import bench, train as train_mod
from ssaref.audit.__main__ import main as audit_main
from ssaref.runlog import read_run
from _cli import run_main

SYN = ["--dataset", "synthetic", "--train-limit", "256", "--test-limit", "64", "--batch-size", "64", "--hidden",
       "16", "--no-progress", "--no-download", "--epochs", "1"]


def _validation_main(argv):
    from validation import fmnist_mlp_methods

    return fmnist_mlp_methods.main(argv)


def _vectors_main(argv):
    from ssaref import vectors

    return vectors.main(argv)


def _plot_main(argv):
    from ssaref import plot

    return plot.main(argv)


def _fig5_main(argv):
    from validation import fig5_cost

    return fig5_cost.main(argv)


ENTRY = {"train": train_mod.main, "bench": bench.main, "audit": audit_main, "vectors": _vectors_main,
         "validation": _validation_main, "plot": _plot_main, "fig5": _fig5_main}


# --------------------------------------------------------------------------------------------- the world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a good run file, damaged copies of it, config files and an existing audit."""
    w = tmp_path_factory.mktemp("world")
    good = w / "good.h5"
    assert train_mod.main(SYN + ["--method", "bp", "--out", str(good)]) == 0
    for name, damage in {
        "no_optimizer": lambda f: f.__delitem__("checkpoint/optimizer"),
        "no_rng": lambda f: f.__delitem__("checkpoint/rng"),
        "no_epoch": lambda f: f["checkpoint"].attrs.__delitem__("epoch"),
        "bad_rng_json": lambda f: f["checkpoint/rng"].attrs.__setitem__("state", "{not json"),
        "no_checkpoint": lambda f: f.__delitem__("checkpoint"),
        "bad_schema": lambda f: f.attrs.__setitem__("schema", "other/9"),
        # issue 24: crafted layouts and config values, each a one-line error naming the file or value
        "metrics_dataset": lambda f: _swap(f, "metrics", np.arange(3.0)),
        "metric_group": lambda f: _swap(f, "metrics/train_loss", None),
        "metric_strings": lambda f: _swap(f, "metrics/train_loss", np.array([b"a", b"b"])),
        "checkpoint_dataset": lambda f: _swap(f, "checkpoint", np.arange(3.0)),
        "params_dataset": lambda f: _swap(f, "checkpoint/params", np.arange(3.0)),
        "rng_dataset": lambda f: _swap(f, "checkpoint/rng", np.arange(3.0)),
        "param_compound": lambda f: _swap(f, "checkpoint/params/" + next(iter(f["checkpoint/params"])),
                                          np.zeros(3, dtype=[("x", "f8"), ("y", "i4")])),
        "config_list": lambda f: f.attrs.__setitem__("config", "[1, 2, 3]"),
        "config_null": lambda f: f.attrs.__setitem__("config", "null"),
        "config_batch0": lambda f: _set_config(f, batch_size=0),
        "config_seed_frac": lambda f: _set_config(f, seed=1.5),
        "config_method_list": lambda f: _set_config(f, method=["bp"]),
        "config_eval_batch0": lambda f: _set_config(f, eval_batch_size=0),
        "config_epochs_str": lambda f: _set_config(f, epochs="many"),
    }.items():
        shutil.copy(good, w / f"{name}.h5")
        with h5py.File(w / f"{name}.h5", "a") as f:
            damage(f)
    (w / "not_h5.h5").write_text("hello")
    os.symlink("loop.h5", w / "loop.h5")                  # a symbolic link loop
    os.symlink("loopdir", w / "loopdir")                  # a loop as a folder on the path
    os.symlink("loop.png", w / "loop.png")
    (w / "cfg_dir.toml").mkdir()
    (w / "empty_data").mkdir()
    (w / "a_file").write_text("x")
    (w / "bad_utf8.toml").write_bytes(b"method = \"\xff\xfe\"\n")
    toml = {"bad_toml": "method = ", "momentum_str": 'momentum = "abc"', "method_list": 'method = ["bp"]',
            "unknown_key": "colour = 3", "epochs_bool": "epochs = true", "nesterov_str": 'nesterov = "yes"',
            "hidden_str": 'hidden = ["a"]', "lr_neg": "lr = -1.0", "seed_huge": f"seed = {10**30}"}
    for name, text in toml.items():
        (w / f"{name}.toml").write_text(text + "\n")
    (w / "audit").mkdir()
    (w / "audit" / "findings.json").write_text("{}")
    (w / "exists.json").write_text("[]")
    return w


def _swap(f, name, data):
    """Replace object ``name`` with a dataset of ``data`` (a group where ``data`` is None)."""
    del f[name]
    if data is None:
        f.create_group(name)
    else:
        f[name] = data


def _set_config(f, **values):
    import json

    cfg = json.loads(f.attrs["config"])
    cfg.update(values)
    f.attrs["config"] = json.dumps(cfg)


def _snapshot(root: Path):
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


W = "{w}"  # placeholder for the world folder in the table below
CASES = [
    # train: flags
    ("train", ["--method", "nope"], "nope"),
    ("train", ["--model", "nope"], "nope"),
    ("train", ["--dataset", "nope"], "nope"),
    ("train", ["--backend", "nope"], "nope"),
    ("train", ["--backend", "cupy"], "cupy"),
    ("train", ["--dtype", "float16"], "float16"),
    ("train", ["--optimizer", "rmsprop"], "rmsprop"),
    ("train", ["--schedule", "nope"], "nope"),
    ("train", ["--epochs", "0"], "--epochs"),
    ("train", ["--epochs", "-3"], "--epochs"),
    ("train", ["--batch-size", "0"], "--batch-size"),
    ("train", ["--lr", "0"], "--lr"),
    ("train", ["--lr", "nan"], "--lr"),
    ("train", ["--lr", "inf"], "--lr"),
    ("train", ["--width-mult", "inf"], "--width-mult"),
    ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--seed", "x"], "--seed"),
    ("train", ["--train-limit", "0"], "--train-limit"),
    ("train", ["--hidden", "100000000"], "memory"),
    ("train", ["--hidden", "abc"], "--hidden"),
    ("train", ["--activation", "tanh", "--model", "lenet"], "activation"),
    ("train", ["--align-every", "-1"], "align"),
    ("train", ["--val-split", "1.0"], "--val-split"),
    ("train", ["--val-split", "-0.1"], "--val-split"),
    ("train", ["--eval-batch-size", "0"], "--eval-batch-size"),
    ("train", ["--optimizer", "sgd", "--momentum", "-1"], "momentum"),
    ("train", ["--weight-decay", "-1"], "weight_decay"),
    ("train", ["--data-dir", f"{W}/nowhere"], "nowhere"),
    ("train", ["--dataset", "fashion-mnist", "--data-dir", f"{W}/empty_data"], "empty_data"),
    # train: rule options
    ("train", ["--method", "bp", "--dfa-init", "gaussian"], "--dfa-init"),
    ("train", ["--method", "dfa", "--dfa-init", "bogus"], "bogus"),
    ("train", ["--method", "ssa", "--ssa-variant", "bogus"], "bogus"),
    ("train", ["--method", "ssa", "--gamma", "-1"], "gamma"),
    ("train", ["--method", "ssa", "--parity", "maybe"], "parity"),
    ("train", ["--method", "pepita", "--pepita-F-scale", "-1"], "pepita_F_scale"),
    ("train", ["--method", "pepita", "--model", "lenet"], "MLPs only"),
    ("train", ["--method", "kp", "--kp-decay", "-1"], "kp_decay"),
    ("train", ["--method", "brsf", "--sf-init", "nope"], "nope"),
    # train: config files
    ("train", ["--config", f"{W}/missing.toml"], "missing.toml"),
    ("train", ["--config", f"{W}/cfg_dir.toml"], "cfg_dir.toml"),
    ("train", ["--config", f"{W}/bad_utf8.toml"], "UTF-8"),
    ("train", ["--config", f"{W}/bad_toml.toml"], "bad_toml.toml"),
    ("train", ["--config", f"{W}/momentum_str.toml"], "momentum"),
    ("train", ["--config", f"{W}/method_list.toml"], "method"),
    ("train", ["--config", f"{W}/unknown_key.toml"], "colour"),
    ("train", ["--config", f"{W}/epochs_bool.toml"], "epochs"),
    ("train", ["--config", f"{W}/nesterov_str.toml"], "nesterov"),
    ("train", ["--config", f"{W}/hidden_str.toml"], "hidden"),
    ("train", ["--config", f"{W}/lr_neg.toml"], "lr"),
    # train: run files
    ("train", ["--resume", f"{W}/missing.h5"], "missing.h5"),
    ("train", ["--resume", f"{W}/not_h5.h5"], "not_h5.h5"),
    ("train", ["--resume", f"{W}/no_optimizer.h5", "--out", f"{W}/r1.h5"], "optimizer"),
    ("train", ["--resume", f"{W}/no_rng.h5", "--out", f"{W}/r2.h5"], "rng"),
    ("train", ["--resume", f"{W}/no_epoch.h5", "--out", f"{W}/r3.h5"], "epoch"),
    ("train", ["--resume", f"{W}/bad_rng_json.h5", "--out", f"{W}/r4.h5"], "bad_rng_json.h5"),
    ("train", ["--resume", f"{W}/no_checkpoint.h5", "--out", f"{W}/r5.h5"], "no checkpoint"),
    ("train", ["--resume", f"{W}/bad_schema.h5", "--out", f"{W}/r6.h5"], "schema"),
    ("train", ["--resume", f"{W}/good.h5", "--method", "fa", "--out", f"{W}/r7.h5"], "method"),
    ("train", ["--out", f"{W}/good.h5"], "--overwrite"),
    ("train", ["--out", f"{W}/audit"], "folder"),
    ("train", ["--out", f"{W}/a_file/run.h5"], "a_file"),
    # issue 24: integers beyond int64 (what a run file stores) and an infinite scale, refused by the parser
    ("train", ["--seed", str(10**30)], "--seed"),
    ("train", ["--train-limit", str(10**30)], "--train-limit"),
    ("train", ["--test-limit", str(10**30)], "--test-limit"),
    ("train", ["--epochs", str(10**30)], "--epochs"),
    ("train", ["--epochs", str(2**63)], "--epochs"),
    ("train", ["--resume", f"{W}/good.h5", "--epochs", str(10**30), "--out", f"{W}/r_e.h5"], "--epochs"),
    ("train", ["--align-every", str(10**30)], "--align-every"),
    ("train", ["--method", "ssa", "--hoyer-every", str(10**30)], "--hoyer-every"),
    ("train", ["--config", f"{W}/seed_huge.toml"], "seed"),
    ("train", ["--method", "pepita", "--pepita-F-scale", "inf"], "pepita_F_scale"),
    ("bench", ["--repeats", str(10**30)], "--repeats"),
    # issue 24: symbolic link loops (crafted run files: CRAFTED below)
    ("train", ["--out", f"{W}/loop.h5"], "symbolic link loop"),
    ("train", ["--out", f"{W}/loopdir/run.h5"], "symbolic link loop"),
    ("train", ["--resume", f"{W}/loop.h5"], "loop.h5"),
    ("train", ["--resume", f"{W}/good.h5", "--out", f"{W}/loop.h5"], "symbolic link loop"),
    ("plot", [f"{W}/good.h5", "--out", f"{W}/loop.png"], "symbolic link loop"),
    ("plot", [f"{W}/good.h5", "--out", f"{W}/loopdir/fig.png"], "symbolic link loop"),
    # bench
    ("bench", ["--models", "nope"], "nope"),
    ("bench", ["--models", ","], "--models"),
    ("bench", ["--batch-size", "0"], "--batch-size"),
    ("bench", ["--backend", "cupy"], "cupy"),
    ("bench", ["--json", f"{W}/exists.json"], "--overwrite"),
    ("bench", ["--json", f"{W}/audit"], "folder"),
    # audit
    ("audit", ["--out", f"{W}/a_file"], "a_file"),
    ("audit", ["--out", f"{W}/audit"], "--overwrite"),
    ("audit", ["--out", f"{W}/new_audit", "--seed", "-1"], "--seed"),
    ("audit", ["--out", f"{W}/new_audit", "--backend", "cupy"], "cupy"),
    ("audit", ["--out", f"{W}/new_audit", "--only", "eq99"], "eq99"),
    # golden vectors
    ("vectors", ["check", f"{W}/nowhere", f"{W}/audit"], "nowhere"),
    ("vectors", ["export", "--out", f"{W}/golden_new", "--only", "nope__mlp__default"], "nope__mlp__default"),
    ("vectors", ["validate", f"{W}/nowhere.h5"], "nowhere.h5"),
    # validation scripts
    ("validation", ["--epochs", "0", "--out-dir", f"{W}/val"], "--epochs"),
    ("validation", ["--methods", "nope", "--out-dir", f"{W}/val"], "nope"),
    ("validation", ["--seeds", "x", "--out-dir", f"{W}/val"], "seed"),
]


# issue 24: crafted run files of the world, each (name, what the error line says): through --resume (with and
# without --out), and those not about flag values also through ssaref.plot and validation.fig5_cost --runs
CRAFTED = [("metrics_dataset", "/metrics is a dataset"), ("metric_group", "/metrics/train_loss is a group"),
           ("metric_strings", "not a real number"), ("checkpoint_dataset", "/checkpoint is a dataset"),
           ("params_dataset", "/checkpoint/params is a dataset"), ("rng_dataset", "/checkpoint/rng is a dataset"),
           ("param_compound", "not a real number"), ("config_list", "not an object"),
           ("config_null", "not an object"), ("config_batch0", "batch_size = 0"),
           ("config_seed_frac", "seed = 1.5"), ("config_method_list", "method must be a single value"),
           ("config_eval_batch0", "eval_batch_size = 0"), ("config_epochs_str", "epochs = 'many'")]
for _name, _needle in CRAFTED:
    CASES += [("train", ["--resume", f"{W}/{_name}.h5", "--out", f"{W}/r_{_name}.h5"], _needle),
              ("train", ["--resume", f"{W}/{_name}.h5"], f"{_name}.h5")]
    if not _name.startswith("config_") or _name in ("config_list", "config_null"):
        CASES += [("plot", [f"{W}/{_name}.h5", "--out", f"{W}/fig.png"], _needle),
                  ("fig5", ["--runs", f"{W}/{_name}.h5", "--out-dir", f"{W}/val"], _needle)]


def _run_entry(entry, argv, capsys):
    return run_main(ENTRY[entry], argv, capsys)


@pytest.mark.parametrize("entry, argv, needle", CASES, ids=[f"{c[0]}:{' '.join(c[1])[:60]}" for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_leaves_files_alone(entry, argv, needle, world, capsys, monkeypatch):
    monkeypatch.chdir(world)
    argv = [a.replace(W, str(world)) for a in argv]
    if entry == "train":   # --hidden only where it applies (ssaref.train refuses it on other models)
        conv = "--model" in argv and argv[argv.index("--model") + 1] != "mlp"
        argv = [a for i, a in enumerate(SYN) if not (conv and "--hidden" in SYN[i - 1:i + 1])] + argv
    before = _snapshot(world)
    rc, out, err = _run_entry(entry, argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert _snapshot(world) == before, "the bad input created, changed or removed a file"


def test_the_table_is_large_and_spans_every_entry_point():
    assert len(CASES) >= 60 and {c[0] for c in CASES} == set(ENTRY)


def test_an_unexpected_exception_is_reported_as_a_bug(monkeypatch, capsys):
    def boom(*a, **k):
        raise KeyError("surprise")

    monkeypatch.setattr(train_mod, "load_dataset", boom)
    rc, _, err = _run_entry("train", SYN, capsys)
    assert rc == 1 and "Traceback" in err and "this is a bug in ssaref" in err.splitlines()[-1]


# ----------------------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("method", ["bp", "dfa", "ssa", "svd-bp", "pepita"])
@pytest.mark.parametrize("epochs", [1, 3])
def test_divergence_stops_with_exit_3_and_never_saves_nonfinite(method, epochs, tmp_path, capsys):
    out = tmp_path / "n.h5"
    argv = ["--method", method, "--dataset", "synthetic", "--train-limit", "512", "--test-limit", "256", "--hidden",
            "32", "--epochs", str(epochs), "--optimizer", "sgd", "--lr", "1e300", "--batch-size", "512",
            "--no-progress", "--out", str(out)]
    rc, _, err = _run_entry("train", argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 3, err
    assert len(lines) == 1 and "Traceback" not in err and "at epoch 1" in lines[0], err
    assert "no checkpoint was written" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.lock"))


def test_divergence_after_a_good_epoch_names_the_kept_checkpoint(tmp_path, capsys):
    """Epoch 1 is fine, then the learning rate explodes (step schedule x 1e300): the message names the epoch-1
    checkpoint, which exists and is finite."""
    out = tmp_path / "run.h5"
    argv = SYN + ["--method", "bp", "--epochs", "3", "--optimizer", "sgd", "--lr", "0.01", "--schedule", "step",
                  "--out", str(out)]
    from ssaref import optim

    real = optim.build_schedule

    def exploding(name, base_lr, **kw):
        sched = real(name, base_lr, **kw)
        return lambda step: sched(step) * (1e300 if step >= kw["steps_per_epoch"] else 1.0)

    import ssaref.train as t

    orig = t.build_schedule
    t.build_schedule = exploding
    try:
        rc, _, err = _run_entry("train", argv, capsys)
    finally:
        t.build_schedule = orig
    assert rc == 3 and "epoch 2" in err and f"end of epoch 1) is kept in {out}" in err, err
    _, _, ck = read_run(out)
    assert ck["epoch"] == 1 and all(np.isfinite(v).all() for v in ck["params"].values())


def test_divergence_of_a_resumed_run_names_the_file_it_came_from(tmp_path, capsys):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert train_mod.main(SYN + ["--method", "bp", "--optimizer", "sgd", "--lr", "0.01", "--out", str(a)]) == 0
    rc, _, err = _run_entry("train", SYN[:-2] + ["--epochs", "2", "--resume", str(a), "--out", str(b), "--lr",
                                                 "1e300", "--batch-size", "256"], capsys)
    assert rc == 3 and f"no checkpoint was written to {b}; {a} (end of epoch 1) is unchanged" in err, err
    assert not b.exists()


# ------------------------------------------------------------------------------------------------ kill trials
KILL_ARGS = ["--method", "bp", "--dataset", "synthetic", "--train-limit", "3000", "--test-limit", "500",
             "--batch-size", "100", "--hidden", "128,128", "--epochs", "6", "--optimizer", "adam", "--lr", "1e-3",
             "--no-progress"]


def _train_cmd(*extra):
    return [sys.executable, "-m", "ssaref.train", *KILL_ARGS, *extra]


@pytest.mark.slow
def test_sigkill_at_random_times_resumes_to_the_uninterrupted_result(tmp_path):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    ref = tmp_path / "ref.h5"
    t0 = time.perf_counter()
    subprocess.run(_train_cmd("--out", str(ref)), check=True, env=env, capture_output=True, timeout=300)
    duration = time.perf_counter() - t0
    _, _, ck_ref = read_run(ref)
    rng = np.random.default_rng(0)
    figures = {"trials": 0, "killed_mid_run": 0, "had_checkpoint": 0}
    trial = 0
    # 10 kills that land mid-run, in at most 20 trials: when a run ends before its kill (the machine got quieter
    # than during the reference run), the duration estimate shrinks, so the kill times stay inside the runs
    while figures["killed_mid_run"] < 10 and trial < 20:
        out = tmp_path / f"k{trial}.h5"
        trial += 1
        p = subprocess.Popen(_train_cmd("--out", str(out)), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.2 * duration, 0.8 * duration)))   # start-up, epochs and checkpoint writes
        finished_early = p.poll() is not None
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        figures["trials"] += 1
        figures["killed_mid_run"] += p.returncode == -signal.SIGKILL
        if finished_early:
            duration *= 0.7
        resume = ["--resume", str(out)] if out.exists() else ["--out", str(out)]
        figures["had_checkpoint"] += out.exists()
        r = subprocess.run(_train_cmd(*resume), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        _, _, ck = read_run(out)
        assert ck["epoch"] == 6
        for k, v in ck_ref["params"].items():
            np.testing.assert_array_equal(v, ck["params"][k], err_msg=f"trial {trial}: {k}")
        assert not [n for n in os.listdir(tmp_path) if n.endswith((".tmp", ".lock"))], os.listdir(tmp_path)
    print("kill trials:", figures)
    assert figures["killed_mid_run"] >= 7, figures


# -------------------------------------------------------------------------------------------- one writer
@pytest.mark.parametrize("lock_file", ["kept", "removed"])
def test_a_second_writer_on_the_same_run_file_is_refused(tmp_path, capsys, lock_file):
    """The lock holds even when ``<out>.lock`` is removed while the first run is alive (issue 24): the run file
    itself is locked, and the lock moves with each checkpoint's new version of it."""
    out = tmp_path / "run.h5"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    args = [a if a != "6" else "200" for a in KILL_ARGS]
    p = subprocess.Popen([sys.executable, "-m", "ssaref.train", *args, "--out", str(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not out.exists() and time.time() < deadline:   # the first writer has its lock and a checkpoint
            time.sleep(0.05)
        assert out.exists()
        before = out.stat().st_mtime_ns
        if lock_file == "removed":
            os.unlink(f"{out}.lock")
        for _ in range(2 if lock_file == "removed" else 1):   # twice: the lock survives checkpoints between tries
            rc, _, err = _run_entry("train", SYN + ["--method", "bp", "--out", str(out), "--overwrite"], capsys)
            assert rc == 2 and "being written by another run" in err, err
            assert lock_file == "removed" or f"process {p.pid}" in err, err
            assert p.poll() is None
            time.sleep(0.5)
    finally:
        p.kill()
        p.wait(timeout=60)
    assert out.stat().st_mtime_ns >= before
    read_run(out)   # the first writer's file is intact
    # the kernel released the dead writer's lock: a new run may take the file now (with --overwrite)
    assert train_mod.main(SYN + ["--method", "bp", "--out", str(out), "--overwrite"]) == 0


# ------------------------------------------------------------------------------------ full disk, read-only
@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def mount(name, opts):
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or 'not root'})")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_full_disk_fails_with_one_line_and_no_partial_file(tmpfs):
    d = tmpfs("small", "size=64k")
    out = d / "run.h5"
    r = subprocess.run([sys.executable, "-m", "ssaref.train", *SYN[:-4], "--hidden", "128,128", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    rc, err = r.returncode, r.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "space" in lines[0].lower() or "errno 28" in lines[0].lower(), lines[0]
    assert os.listdir(d) == [], os.listdir(d)


def test_read_only_folder_is_refused_before_training(tmpfs, capsys):
    d = tmpfs("ro", "size=64k,ro")
    rc, out, err = _run_entry("train", SYN + ["--method", "bp", "--out", str(d / "run.h5")], capsys)
    assert rc == 2 and "not writable" in err and "epoch 1/" not in out, err
    rc, _, err = _run_entry("audit", ["--out", str(d / "audit")], capsys)
    assert rc == 2 and "not writable" in err, err
    assert os.listdir(d) == []


# ------------------------------------------------------------------------------------------- the GPU check
def test_gpu_check_cannot_pass_without_a_gpu(tmp_path):
    """Without cupy or a device the prepared GPU check fails, and SSAREF_REQUIRE_GPU=1 turns GPU skips into a
    pytest failure (a GPU check must never pass by skipping everything)."""
    from ssaref.backend import cupy_available

    if cupy_available():
        pytest.skip("a GPU is usable here: the check would run for real")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(root / "validation" / "gpu_check.sh"), str(tmp_path / "gc")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "not usable" in (r.stdout + r.stderr)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                        str(root / "tests" / "test_gpu_ops.py")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, SSAREF_REQUIRE_GPU="1"), cwd=root)
    assert r.returncode != 0 and "SSAREF_REQUIRE_GPU=1" in (r.stdout + r.stderr)
