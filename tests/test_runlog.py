"""The HDF5 run file: round trip, atomic replacement, clear errors on foreign files."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from ssaref import runlog
from ssaref.optim import Adam
from ssaref.runlog import RunFileError, generator_from_state, read_run, write_run

ODD_KEYS = ["0.W", "4.conv1.W", "m/0.W", "a/b/c", "%2F", "100%", ".", "..", "ünï"]


def _config():
    return {"method": "ssa", "model": "mlp", "lr": 0.01, "epochs": 3, "seed": 7, "nesterov": False,
            "widths": [256, 128], "optim": {"name": "adam", "betas": [0.9, 0.999]}, "note": None}


def _metrics():
    rng = np.random.default_rng(0)
    return {"epoch": [1, 2, 3], "test_acc": [0.5, 0.625, 0.75],
            "rank": [rng.integers(1, 9, size=4) for _ in range(3)],
            "align/angle": [rng.standard_normal(4) for _ in range(3)],
            "grid": [rng.standard_normal((2, 3)) for _ in range(3)]}


def _checkpoint():
    rng = np.random.default_rng(1)
    params = [("4.conv1.W", rng.standard_normal((2, 1, 3, 3)).astype(np.float32)),
              ("0.W", rng.standard_normal((4, 3))), ("0.b", rng.standard_normal(4))]
    opt = Adam(params, 0.01)
    opt.step({k: np.ones_like(p) for k, p in params})
    gen = np.random.default_rng(123)
    gen.random(17)
    return {"epoch": 2, "step": 40, "model": "mlp", "method": "ssa", "best": 0.75, "done": False,
            "params": dict(params), "buffers": {"1.running_mean": np.zeros(4, np.float32)},
            "optimizer": opt.state_dict(),
            "rule_state": {k: rng.standard_normal(2) for k in ODD_KEYS},
            "rng": gen.bit_generator.state}


def _assert_same(a, b, where=""):
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)), (where, a, b)
    if isinstance(a, dict):
        assert list(a) == list(b) or set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    else:
        assert a == b, where


def test_round_trip(tmp_path):
    path = tmp_path / "run.h5"
    cfg, met, ck = _config(), _metrics(), _checkpoint()
    write_run(path, config=cfg, metrics=met, checkpoint=ck)
    cfg2, met2, ck2 = read_run(path)
    assert cfg2 == cfg
    assert list(met2) == list(met)
    assert met2["epoch"].shape == (3,) and met2["epoch"].dtype.kind == "i"
    np.testing.assert_array_equal(met2["test_acc"], [0.5, 0.625, 0.75])
    assert met2["rank"].shape == (3, 4) and met2["grid"].shape == (3, 2, 3)
    for k in ("rank", "align/angle", "grid"):
        np.testing.assert_array_equal(met2[k], np.stack(met[k]))
    assert set(ck2) == set(ck)
    for k in ck:
        _assert_same(ck[k], ck2[k], k)
    assert list(ck2["params"]) == ["4.conv1.W", "0.W", "0.b"]  # insertion order kept
    assert ck2["params"]["4.conv1.W"].dtype == np.float32
    assert type(ck2["optimizer"]["step"]) is int and ck2["optimizer"]["t/0.W"] == 1


def test_layout_on_disk(tmp_path):
    path = tmp_path / "run.h5"
    write_run(path, config=_config(), metrics=_metrics(), checkpoint=_checkpoint())
    with h5py.File(path, "r") as f:
        assert f.attrs["schema"] == "ssaref-run/1"
        assert f.attrs["ssaref_version"]
        assert json.loads(f.attrs["config"])["widths"] == [256, 128]
        assert f.attrs["lr"] == 0.01 and f.attrs["method"] == "ssa" and f.attrs["optim.name"] == "adam"
        assert "note" not in f.attrs
        assert f["metrics/test_acc"].shape == (3,)
        assert f["metrics/align%2Fangle"].shape == (3, 4)
        ck = f["checkpoint"]
        assert ck.attrs["epoch"] == 2 and ck.attrs["step"] == 40 and ck.attrs["model"] == "mlp"
        assert set(ck) == {"params", "buffers", "optimizer", "rule_state", "rng"}
        assert "m%2F0.W" in ck["optimizer"] and "4.conv1.W" in ck["params"]
        assert json.loads(ck["rng"].attrs["state"])["bit_generator"] == "PCG64"


def test_no_checkpoint_and_empty_metrics(tmp_path):
    path = tmp_path / "run.h5"
    write_run(path, config={}, metrics={"loss": []}, checkpoint=None)
    cfg, met, ck = read_run(path)
    assert cfg == {} and ck is None and met["loss"].shape == (0,)


@pytest.mark.parametrize("bitgen", ["PCG64", "MT19937", "Philox", "SFC64"])
def test_rng_state_continues_identically(tmp_path, bitgen):
    gen = np.random.Generator(getattr(np.random, bitgen)(99))
    gen.standard_normal(5)
    gen.random(3)  # leaves a buffered uint32 in some generators
    ck = {"epoch": 1, "step": 1, "rng": gen.bit_generator.state}
    write_run(tmp_path / "r.h5", config={}, metrics={}, checkpoint=ck)
    expect = (gen.random(10), gen.integers(0, 1000, 10), gen.permutation(20))
    _, _, ck2 = read_run(tmp_path / "r.h5")
    restored = generator_from_state(ck2["rng"])
    got = (restored.random(10), restored.integers(0, 1000, 10), restored.permutation(20))
    for a, b in zip(expect, got):
        np.testing.assert_array_equal(a, b)
    other = np.random.default_rng(0)  # also through the usual assignment (same bit generator kind)
    if bitgen == "PCG64":
        other.bit_generator.state = ck2["rng"]
        np.testing.assert_array_equal(other.random(10), expect[0])


def test_optimizer_state_round_trip_continues(tmp_path):
    rng = np.random.default_rng(4)
    params = [("0.W", rng.standard_normal((3, 4))), ("2.W", rng.standard_normal((2, 3)))]
    grads = [{k: rng.standard_normal(p.shape) for k, p in params} for _ in range(6)]
    opt = Adam(params, 0.01, weight_decay=0.1)
    for g in grads[:3]:
        opt.step(g)
    write_run(tmp_path / "r.h5", config={}, metrics={},
              checkpoint={"epoch": 1, "step": 3, "params": dict(params), "optimizer": opt.state_dict()})
    for g in grads[3:]:
        opt.step(g)
    _, _, ck = read_run(tmp_path / "r.h5")
    params2 = [(k, v.copy()) for k, v in ck["params"].items()]
    opt2 = Adam(params2, 0.01, weight_decay=0.1)
    opt2.load_state_dict(ck["optimizer"])
    for g in grads[3:]:
        opt2.step(g)
    for (_, a), (_, b) in zip(params, params2):
        assert np.array_equal(a, b)


def _fail_after(monkeypatch, n):
    real = runlog._write_dataset
    calls = {"n": 0}

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] > n:
            raise RuntimeError("injected failure")
        return real(*a, **k)

    monkeypatch.setattr(runlog, "_write_dataset", boom)
    return calls


def test_atomic_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    write_run(path, config=_config(), metrics={"loss": [1.0]}, checkpoint=_checkpoint())
    before = path.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    calls = _fail_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="injected"):
        write_run(path, config=_config(), metrics=_metrics(), checkpoint=_checkpoint())
    assert calls["n"] == 4  # it did fail midway, after writing datasets into the temporary file
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == listing
    assert read_run(path)[1]["loss"].tolist() == [1.0]


def test_atomic_failure_without_previous_file(tmp_path, monkeypatch):
    _fail_after(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="injected"):
        write_run(tmp_path / "new.h5", config={}, metrics={}, checkpoint=_checkpoint())
    assert os.listdir(tmp_path) == []


def test_failure_at_replace_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    write_run(path, config={"a": 1}, metrics={}, checkpoint=None)
    before = path.read_bytes()

    def bad_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(runlog.os, "replace", bad_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_run(path, config={"a": 2}, metrics={}, checkpoint=None)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.h5"]


def test_bad_input_is_refused_and_old_file_kept(tmp_path):
    path = tmp_path / "run.h5"
    write_run(path, config={"a": 1}, metrics={}, checkpoint=None)
    before = path.read_bytes()
    with pytest.raises(RunFileError, match="metric 'acc' mixes entry shapes"):
        write_run(path, config={}, metrics={"acc": [np.zeros(2), np.zeros(3)]}, checkpoint=None)
    with pytest.raises(RunFileError, match="lacks 'step'"):
        write_run(path, config={}, metrics={}, checkpoint={"epoch": 1})
    with pytest.raises(RunFileError, match=r"params\['0.W'\].*list"):
        write_run(path, config={}, metrics={}, checkpoint={"epoch": 1, "step": 0, "params": {"0.W": [1, 2]}})
    with pytest.raises(RunFileError, match="config.*object"):
        write_run(path, config={"x": object()}, metrics={}, checkpoint=None)
    with pytest.raises(RunFileError, match="'extra'.*NoneType"):
        write_run(path, config={}, metrics={}, checkpoint={"epoch": 1, "step": 0, "extra": None})
    with pytest.raises(RunFileError, match="does not exist"):
        write_run(tmp_path / "nope" / "run.h5", config={}, metrics={}, checkpoint=None)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.h5"]


def test_read_missing_file(tmp_path):
    path = tmp_path / "absent.h5"
    with pytest.raises(RunFileError, match=f"{path}.*does not exist"):
        read_run(path)


def test_read_non_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("hello, not hdf5\n")
    with pytest.raises(RunFileError, match=f"{path} is not an HDF5 file") as info:
        read_run(path)
    assert "\n" not in str(info.value)


def test_read_hdf5_without_schema(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    with pytest.raises(RunFileError, match=f"{path} is not an ssaref run"):
        read_run(path)


def test_read_other_schema(tmp_path):
    path = tmp_path / "future.h5"
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = "ssaref-run/99"
    with pytest.raises(RunFileError, match=f"{path} has schema 'ssaref-run/99'"):
        read_run(path)


def test_read_directory(tmp_path):
    with pytest.raises(RunFileError, match=str(tmp_path)):
        read_run(tmp_path)


def test_key_encoding_round_trip():
    for k in ODD_KEYS + ["%25", "%2E", "a%2Fb/c"]:
        name = runlog._encode_key(k)
        assert "/" not in name and name not in (".", "..")
        assert runlog._decode_key(name) == k


# ------------------------------------------------------------------------------ issue 24: lock, temporaries
@pytest.mark.parametrize("writes_before", [0, 1, 3])
def test_the_lock_holds_when_the_lock_file_is_removed(tmp_path, writes_before):
    """A second writer is refused although ``<path>.lock`` was removed under the live first one: the run file
    itself is locked, and each checkpoint moves the lock onto its new version (a new inode)."""
    path = tmp_path / "run.h5"
    write_run(path, config={"a": 0}, metrics={}, checkpoint=None)   # e.g. the run being resumed
    with runlog.RunLock(path):
        for i in range(writes_before):
            write_run(path, config={"a": i + 1}, metrics={}, checkpoint=None)
        os.unlink(f"{path}.lock")
        with pytest.raises(RunFileError, match="being written by another run"):
            runlog.RunLock(path).acquire()
        assert not os.path.exists(f"{path}.lock")   # the refused writer leaves no lock file behind
        write_run(path, config={"a": 9}, metrics={}, checkpoint=None)   # the owner keeps writing
        assert read_run(path)[0] == {"a": 9}
        with pytest.raises(RunFileError, match="being written by another run"):
            runlog.RunLock(path).acquire()
    with runlog.RunLock(path):   # released with the owner
        pass


def test_the_file_at_the_path_is_never_without_the_owners_lock_while_a_version_replaces_it(tmp_path, monkeypatch):
    """``write_run`` lets the old version's lock go only after the new version (already locked) has the name: at
    the rename the file at ``path`` is still locked (a fresh descriptor cannot lock it)."""
    path = tmp_path / "run.h5"
    write_run(path, config={"a": 0}, metrics={}, checkpoint=None)
    seen, real_replace = [], os.replace

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(path):
            try:
                runlog._ofd_lock(path, keep=False)
                seen.append("free")
            except BlockingIOError:
                seen.append("locked")
        return real_replace(src, dst)

    with runlog.RunLock(path):
        monkeypatch.setattr(os, "replace", replace)
        for i in range(3):
            write_run(path, config={"a": i + 1}, metrics={}, checkpoint=None)
        monkeypatch.setattr(os, "replace", real_replace)
        with pytest.raises(RunFileError, match="being written by another run"):
            os.unlink(f"{path}.lock")
            runlog.RunLock(path).acquire()
    assert seen == ["locked"] * 3


def test_a_version_let_go_between_open_and_lock_is_not_taken_for_the_file(tmp_path, monkeypatch):
    """The owner may replace the file (locking the new version, then letting the old one go) between a second
    writer's ``open`` and its lock: the second writer then locks an inode that no longer has the name, and must
    look again rather than believe the run file free."""
    path = tmp_path / "run.h5"
    write_run(path, config={"a": 0}, metrics={}, checkpoint=None)
    owner = runlog._ofd_lock(path, keep=True)
    real_open, swapped = os.open, []

    def open_then_swap(p, flags, *a):
        fd = real_open(p, flags, *a)
        if os.fspath(p) == os.fspath(path) and not swapped:   # the owner writes a new version right now
            new = tmp_path / "run.h5.new"
            new.write_bytes(path.read_bytes())
            swapped.append(runlog._ofd_lock(new, keep=True))
            os.replace(new, path)
            os.close(owner)
        return fd

    monkeypatch.setattr(os, "open", open_then_swap)
    with pytest.raises(BlockingIOError):
        runlog._ofd_lock(path, keep=False)
    monkeypatch.setattr(os, "open", real_open)
    os.close(swapped[0])
    assert runlog._ofd_lock(path, keep=False) is None   # free once the owner has gone


_INTRUDER = """
import sys
from ssaref.runlog import RunLock, write_run
lock = RunLock(sys.argv[1]).acquire()
try:
    write_run(sys.argv[1], config={"who": 2}, metrics={}, checkpoint=None)
    print("wrote", flush=True)
except Exception as exc:
    print("refused", exc, flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("first_writes_first", [True, False])
def test_a_writer_that_got_in_before_the_first_checkpoint_is_refused_at_a_write(tmp_path, first_writes_first):
    """The window before a new run file exists: the lock file is all there is to lock.  Of two writers that
    both got in there (the lock file removed), only the first to write keeps the file: the other is refused."""
    import subprocess
    import sys

    path = tmp_path / "run.h5"
    first = runlog.RunLock(path).acquire()
    os.unlink(f"{path}.lock")
    if first_writes_first:
        write_run(path, config={"who": 1}, metrics={}, checkpoint=None)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.Popen([sys.executable, "-c", _INTRUDER, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        if first_writes_first:   # the intruder's lock on the file fails at once
            assert line == "", line
            assert "being written by another run" in p.communicate(timeout=60)[1]
            assert read_run(path)[0] == {"who": 1}
        else:                    # the intruder wrote first; the first writer may not replace its file now
            assert line == "wrote\n", line + p.stderr.read()
            with pytest.raises(RunFileError, match="being written by another run"):
                write_run(path, config={"who": 1}, metrics={}, checkpoint=None)
            assert read_run(path)[0] == {"who": 2}
    finally:
        if p.poll() is None:
            p.communicate("\n", timeout=60)
        first.release()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_readers_are_not_locked_out_of_a_live_run(tmp_path):
    path = tmp_path / "run.h5"
    with runlog.RunLock(path):
        write_run(path, config={"a": 1}, metrics={"loss": [1.0]}, checkpoint=None)
        assert read_run(path)[1]["loss"].tolist() == [1.0]
        with h5py.File(path, "r") as f:   # HDF5's own flock (h5dump, plot) still opens it
            assert "metrics" in f


@pytest.mark.parametrize("name", ["run.h5.tmp", ".run.h5.tmp", ".run.h5.x.tmp.h5", "run.h5.tmp.h5"])
def test_temporary_names_are_unique_and_spare_a_users_files(tmp_path, name):
    """Temporary files get unique names (``tempfile`` in the target folder): a user's file that looks like one
    survives, and the temporary file itself never outlives the write."""
    from ssaref.atomic import atomic_path, write_text

    mine = tmp_path / name
    mine.write_bytes(b"mine")
    write_run(tmp_path / "run.h5", config={}, metrics={}, checkpoint=None)
    write_text(tmp_path / "run.h5.md", "text")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "run.h5") as tmp:
        assert os.path.exists(tmp) and os.path.dirname(tmp) == str(tmp_path)
        raise KeyboardInterrupt
    assert mine.read_bytes() == b"mine"
    assert sorted(os.listdir(tmp_path)) == sorted(["run.h5", "run.h5.md", name])
    assert (tmp_path / "run.h5.md").read_text() == "text" and read_run(tmp_path / "run.h5")[0] == {}
