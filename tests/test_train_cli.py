"""`python -m ssaref.train` end to end on synthetic data, --resume equivalence, config files, bad inputs."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from ssaref import train as train_mod
from ssaref.runlog import read_run

SYN = ["--method", "bp", "--dataset", "synthetic", "--train-limit", "600", "--test-limit", "200", "--batch-size", "64",
       "--no-progress", "--no-download"]


def run_cli(args, capsys):
    rc = train_mod.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_end_to_end_synthetic_writes_run_file(tmp_path, capsys):
    out = tmp_path / "run.h5"
    rc, stdout, err = run_cli(SYN + ["--epochs", "3", "--out", str(out), "--lr", "3e-3"], capsys)
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    assert lines[-1].startswith("final test_acc=")
    acc = float(lines[-1].split("=")[1])
    assert sum(l.startswith("epoch ") for l in lines) == 3
    config, metrics, ck = read_run(out)
    assert config["model"] == "mlp" and config["method"] == "bp" and config["epochs"] == 3
    assert metrics["test_acc"].shape == (3,)
    assert metrics["test_acc"][-1] == pytest.approx(acc, abs=1e-4)
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]  # it learns
    assert acc > 0.3  # 10 classes: chance is 0.1
    assert ck["epoch"] == 3 and "0.W" not in ck["params"] and "1.W" in ck["params"]
    with h5py.File(out) as f:
        assert f.attrs["schema"] == "ssaref-run/1"


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_matches_uninterrupted_run(tmp_path, capsys, optimizer):
    common = SYN + ["--optimizer", optimizer, "--lr", "0.01", "--model", "mlp", "--hidden", "32,16"]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    assert run_cli(common + ["--epochs", "3", "--out", str(full)], capsys)[0] == 0
    assert run_cli(common + ["--epochs", "1", "--out", str(part)], capsys)[0] == 0
    rc, out, err = run_cli(common + ["--epochs", "3", "--resume", str(part)], capsys)
    assert rc == 0, err
    _, m_full, ck_full = read_run(full)
    _, m_part, ck_part = read_run(part)
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_array_equal(m_full[k], m_part[k], err_msg=k)
    for k, v in ck_full["params"].items():
        np.testing.assert_array_equal(v, ck_part["params"][k], err_msg=k)
    assert ck_part["epoch"] == 3


def test_resume_takes_the_runs_own_settings(tmp_path, capsys):
    """`--resume run.h5 --epochs N` alone continues the run with the settings it was started with."""
    common = SYN + ["--optimizer", "sgd", "--lr", "0.02", "--hidden", "24,12", "--seed", "5"]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    assert run_cli(common + ["--epochs", "2", "--out", str(full)], capsys)[0] == 0
    assert run_cli(common + ["--epochs", "1", "--out", str(part)], capsys)[0] == 0
    rc, out, err = run_cli(["--resume", str(part), "--epochs", "2", "--no-progress"], capsys)
    assert rc == 0, err
    assert "method=bp" in out and "dataset=synthetic" in out
    (_, m_full, _), (c_part, m_part, _) = read_run(full), read_run(part)
    np.testing.assert_array_equal(m_full["test_loss"], m_part["test_loss"])
    assert c_part["hidden"] == [24, 12] and c_part["optimizer"] == "sgd" and c_part["epochs"] == 2


def test_config_file_mirrors_flags(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('dataset = "synthetic"\ntrain-limit = 256\ntest_limit = 128\nepochs = 1\n'
                   'hidden = [8]\nno_progress = true\nno-download = true\n')
    rc, out, err = run_cli(["--config", str(cfg)], capsys)
    assert rc == 0, err
    assert out.strip().splitlines()[-1].startswith("final test_acc=")
    cfg.write_text('epochz = 3\n')
    with pytest.raises(SystemExit) as e:
        run_cli(["--config", str(cfg)], capsys)
    assert e.value.code == 2
    assert "unknown key 'epochz'" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--method", "magic"], "unknown method 'magic'"),
    (["--model", "transformer"], "unknown model 'transformer'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--dtype", "float16"], "unknown dtype 'float16'"),
    (["--optimizer", "lbfgs"], "lbfgs"),
    (["--model", "vgg13"], "does not fit input shape"),
])
def test_bad_choices_give_one_line_error(args, message, capsys):
    rc, out, err = run_cli(SYN + ["--epochs", "1"] + args, capsys)
    assert rc == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cupy_backend_without_cupy(capsys):
    from ssaref.backend import cupy_available
    if cupy_available():
        pytest.skip("cupy is usable here; this checks the error when it is not")
    rc, _, err = run_cli(SYN + ["--epochs", "1", "--backend", "cupy"], capsys)
    assert rc == 2 and "backend 'cupy' requested but cupy is not usable" in err


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--batch-size", "-4"), ("--lr", "0"),
                                        ("--lr", "nan-ish")])
def test_non_positive_numbers_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        train_mod.parse_args(SYN + [flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and err.startswith("error:") and err.count("\n") == 1


def test_missing_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSAREF_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(["--dataset", "cifar10", "--no-download", "--data-dir", str(tmp_path / "empty"),
                          "--epochs", "1", "--no-progress"], capsys)
    assert rc == 2 and "cifar10" in err and "Traceback" not in err and err.count("\n") == 1
    rc, _, err = run_cli(SYN[:-1] + ["--data-dir", str(tmp_path / "typo"), "--epochs", "1"], capsys)
    assert rc == 2 and "--data-dir" in err and "typo" in err


def test_oversized_synthetic_and_negative_seed(capsys):
    rc, _, err = run_cli(["--dataset", "synthetic", "--epochs", "1", "--train-limit", "100000000"], capsys)
    assert rc == 2 and "train_limit=100000000" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        train_mod.parse_args(["--seed", "-1"])
    assert "--seed" in capsys.readouterr().err


def test_resume_refuses_foreign_files(tmp_path, capsys):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    rc, _, err = run_cli(SYN + ["--epochs", "2", "--resume", str(junk)], capsys)
    assert rc == 2 and "junk.h5" in err
    run = tmp_path / "mlp.h5"
    assert run_cli(SYN + ["--epochs", "1", "--out", str(run)], capsys)[0] == 0
    rc, _, err = run_cli(SYN + ["--epochs", "2", "--model", "lenet", "--resume", str(run)], capsys)
    assert rc == 2 and "model 'mlp'" in err and "lenet" in err
    rc, _, err = run_cli(SYN + ["--epochs", "2", "--hidden", "8,8", "--resume", str(run)], capsys)
    assert rc == 2 and "shape" in err


@pytest.mark.parametrize("log_every", ["1", "4"])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch, log_every):
    """The first non-finite loss names its own step, also when losses are read back only every 4 steps."""
    from ssaref.rules.bp import BP
    real_step, calls = BP.step, {"n": 0}
    steps_per_epoch = 600 // 64 + 1

    def poisoned(self, model, x, y):
        calls["n"] += 1
        res = real_step(self, model, x, y)
        if calls["n"] == steps_per_epoch + 3:  # third step of the second epoch
            res.loss = float("nan")
        return res

    monkeypatch.setattr(BP, "step", poisoned)
    out = tmp_path / "run.h5"
    rc, stdout, err = run_cli(SYN + ["--epochs", "3", "--out", str(out), "--log-every", log_every], capsys)
    assert rc == 3   # diverged (EXIT_CODES)
    assert "loss is nan at epoch 2, step 3" in err and "end of epoch 1" in err
    _, metrics, ck = read_run(out)
    assert ck["epoch"] == 1 and metrics["test_acc"].shape == (1,)
    assert all(np.isfinite(v).all() for v in ck["params"].values())


def test_module_entry_point_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ssaref.train"] + SYN + ["--epochs", "1", "--hidden", "8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("final test_acc=")


def test_resume_from_toml_equals_resume_flag(tmp_path, capsys):
    common = SYN + ["--optimizer", "sgd", "--lr", "0.02", "--hidden", "16"]
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run_cli(common + ["--epochs", "1", "--out", str(a)], capsys)[0] == 0
    assert run_cli(common + ["--epochs", "1", "--out", str(b)], capsys)[0] == 0
    assert run_cli(["--resume", str(a), "--epochs", "2", "--no-progress"], capsys)[0] == 0
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'resume = "{b}"\nepochs = 2\nno-progress = true\n')
    rc, _, err = run_cli(["--config", str(cfg)], capsys)
    assert rc == 0, err
    _, _, ck_a = read_run(a)
    _, _, ck_b = read_run(b)
    assert ck_a["epoch"] == ck_b["epoch"] == 2
    for k, v in ck_a["params"].items():
        np.testing.assert_array_equal(v, ck_b["params"][k])


def test_val_split_is_stratified_seeded_and_logged(tmp_path, capsys):
    out = tmp_path / "v.h5"
    rc, stdout, err = run_cli(SYN + ["--epochs", "2", "--val-split", "0.25", "--out", str(out)], capsys)
    assert rc == 0, err
    assert "train=451 val=149 test=200" in stdout and "val_acc=" in stdout   # round(0.25 n_c) per class
    config, m, _ = read_run(out)
    assert config["val_split"] == 0.25 and m["val_acc"].shape == (2,) and m["val_loss"].shape == (2,)
    from ssaref.data import load_dataset
    from ssaref.train import _split_validation

    ds = load_dataset("synthetic", train_limit=600, test_limit=200, seed=0)
    counts = np.bincount(ds.y_train, minlength=10)
    xv, yv = _split_validation(ds, 0.25, seed=0)
    assert len(yv) + len(ds.y_train) == 600
    np.testing.assert_array_equal(np.bincount(yv, minlength=10), np.round(0.25 * counts).astype(int))
    ds2 = load_dataset("synthetic", train_limit=600, test_limit=200, seed=0)
    np.testing.assert_array_equal(_split_validation(ds2, 0.25, seed=0)[1], yv)   # seeded: the same split


def test_out_is_never_replaced_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run.h5"
    assert run_cli(SYN + ["--epochs", "1", "--out", str(out)], capsys)[0] == 0
    before = out.read_bytes()
    rc, _, err = run_cli(SYN + ["--epochs", "1", "--out", str(out), "--seed", "3"], capsys)
    assert rc == 2 and "--overwrite" in err and out.read_bytes() == before
    assert run_cli(SYN + ["--epochs", "2", "--resume", str(out)], capsys)[0] == 0   # the same run goes on
    assert read_run(out)[2]["epoch"] == 2
    assert run_cli(SYN + ["--epochs", "1", "--out", str(out), "--seed", "3", "--overwrite"], capsys)[0] == 0
    assert read_run(out)[0]["seed"] == 3


def test_log_every_reads_losses_in_windows_with_the_same_result(tmp_path, capsys):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run_cli(SYN + ["--epochs", "2", "--out", str(a), "--dtype", "float64"], capsys)[0] == 0
    assert run_cli(SYN + ["--epochs", "2", "--out", str(b), "--dtype", "float64", "--log-every", "7"], capsys)[0] == 0
    (_, ma, ca), (_, mb, cb) = read_run(a), read_run(b)
    np.testing.assert_allclose(ma["train_loss"], mb["train_loss"], rtol=1e-13)
    for k, v in ca["params"].items():
        np.testing.assert_array_equal(v, cb["params"][k])


def test_run_file_records_every_rule_option_and_old_runs_resume_with_their_defaults(tmp_path, capsys):
    """The run file holds every option the rule ran with (defaults included); a run written by ssaref 0.1.0, which
    left unset options out, resumes with the defaults of 0.1.0 (each option's declared history, ssaref/options.py),
    not today's."""
    import json

    from ssaref import config
    from ssaref.options import earlier_defaults
    from ssaref.rules import RULES, build_rule

    old = earlier_defaults(RULES["ssa"].OPTIONS, "0.1.0")   # 0.1.0's: every changed default
    assert old == {"beta": 1e-3, "gamma": 1e-2, "orthogonality": "retract", "rank_reading": "every", "parity": False}
    old_flags = [x for k, v in old.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    common = SYN + ["--method", "ssa", "--hidden", "12,10", "--seed", "3", "--batch-size", "64"]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    assert run_cli(common + old_flags + ["--epochs", "2", "--out", str(full)], capsys)[0] == 0
    assert run_cli(common + old_flags + ["--epochs", "1", "--out", str(part)], capsys)[0] == 0
    cfg = read_run(part)[0]
    assert set(build_rule("ssa").options) <= {k[len("rule_"):] for k, v in cfg.items()
                                              if k.startswith("rule_") and v is not None}
    with h5py.File(part, "r+") as f:  # what 0.1.0 wrote: no version 0.2.0, unset options as null
        c = json.loads(f.attrs["config"])
        c.update({f"rule_{k}": None for k in build_rule("ssa").options}, ssaref_version="0.1.0")
        f.attrs["config"] = json.dumps(c)
        f.attrs["ssaref_version"] = "0.1.0"
    assert config._earlier_defaults(c) == {f"rule_{k}": v for k, v in old.items()}
    changed_in_0_4 = {"rule_beta": 1e-2, "rule_orthogonality": "retract-every"}   # D4.18
    assert config._earlier_defaults(dict(c, ssaref_version="0.2.0")) == {"rule_parity": False, **changed_in_0_4}
    assert config._earlier_defaults(dict(c, ssaref_version="0.3.0")) == changed_in_0_4
    assert config._earlier_defaults(dict(c, ssaref_version="0.4.0")) == {}
    rc, _, err = run_cli(["--resume", str(part), "--epochs", "2", "--no-progress"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(read_run(full)[1]["test_loss"], read_run(part)[1]["test_loss"])


def test_a_0_2_0_run_without_parity_resumes_with_parity_false(tmp_path, capsys):
    """SSA's default became ``parity = true`` in 0.3.0 (D4.17).  A run file written by 0.2.0 that does not record
    ``parity`` ran without the rank constraint, so a resume continues without it (``before={"0.3.0": False}``):
    the same losses as the uninterrupted ``--parity false`` run, other losses than today's default."""
    import json

    common = SYN + ["--method", "ssa", "--hidden", "12,10", "--seed", "3", "--batch-size", "64"]
    full, part, new = tmp_path / "full.h5", tmp_path / "part.h5", tmp_path / "new.h5"
    assert run_cli(common + ["--parity", "false", "--epochs", "3", "--out", str(full)], capsys)[0] == 0
    assert run_cli(common + ["--epochs", "3", "--out", str(new)], capsys)[0] == 0   # today's default: parity true
    assert read_run(new)[0]["rule_parity"] is True   # the default, recorded
    assert run_cli(common + ["--parity", "false", "--epochs", "1", "--out", str(part)], capsys)[0] == 0
    with h5py.File(part, "r+") as f:  # a 0.2.0 file from before the option was recorded
        c = json.loads(f.attrs["config"])
        del c["rule_parity"]
        c["ssaref_version"] = "0.2.0"
        f.attrs["config"] = json.dumps(c)
        f.attrs["ssaref_version"] = "0.2.0"
    from ssaref import config

    assert config.filled_config(c)["rule_parity"] is False
    rc, _, err = run_cli(["--resume", str(part), "--epochs", "3", "--no-progress"], capsys)
    assert rc == 0, err
    cfg, m, _ = read_run(part)
    assert cfg["rule_parity"] is False
    np.testing.assert_array_equal(read_run(full)[1]["test_loss"], m["test_loss"])
    np.testing.assert_array_equal(read_run(full)[1]["svd_rank"], m["svd_rank"])
    assert not np.array_equal(read_run(new)[1]["svd_rank"], m["svd_rank"])   # the default would cut further


@pytest.mark.slow
def test_the_default_job_trains_ssa_within_the_rank_constraint(tmp_path, capsys):
    """``python -m ssaref.train`` (SSA on the 784-256-256-10 MLP, every option at its default) keeps every layer
    within section 4.4's ``r < mn/(m+n)`` from the first epoch end on, and the run file says so; ``--parity
    false`` (the uncompressed reading, 0.2.0's default) breaks it on the square hidden layer and the classifier."""
    from ssaref.rank import parity_rank

    short = ["--dataset", "synthetic", "--train-limit", "128", "--test-limit", "64", "--epochs", "2",
             "--no-progress", "--no-download"]
    dims = [(256, 784), (256, 256), (10, 256)]
    bounds = [parity_rank(a, b) for a, b in dims]
    for flags, ok in (([], True), (["--parity", "false"], False)):
        out = tmp_path / f"run{len(flags)}.h5"
        rc, _, err = run_cli(short + flags + ["--out", str(out)], capsys)
        assert rc == 0, err
        cfg, m, _ = read_run(out)
        assert (cfg["method"], cfg["model"], cfg["hidden"]) == ("ssa", "mlp", None)
        assert str(cfg["rule_parity"]).lower() == str(ok).lower()   # a flag is recorded as given ("false")
        np.testing.assert_array_equal(m["svd_rank_bound"][-1], bounds)
        assert list(m["svd_rank_ok_all"]) == [float(ok)] * 2
        ranks = m["svd_rank"][-1]
        assert bool(np.all(ranks <= bounds)) is ok
        if ok:   # the epoch-based phase's 70 % of r0 where it is below the bound, the bound elsewhere
            np.testing.assert_array_equal(ranks, [min(180, bounds[0]), bounds[1], bounds[2]])
            assert m["svd_total_params"][-1] < sum(a * b + a for a, b in dims)   # fewer numbers than dense


def _fake_cupy(monkeypatch, devices=1, compile_error=None):
    """Put a fake ``cupy`` in ``sys.modules`` (``devices`` counted; ``ElementwiseKernel`` raising ``compile_error``
    when it is called, else the strict stand-in's) and make ``ssaref.backend`` probe it afresh."""
    import sys
    import types

    from ssaref import backend
    from tests import _strictxp as S

    class CompileException(Exception):
        pass

    def kernel(*a, **k):
        if compile_error is None:
            return S.ElementwiseKernel(*a, **k)

        def call(*args):
            raise CompileException(compile_error)
        return call

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: devices))
    fake.ElementwiseKernel, fake.float32 = kernel, np.float32
    fake.arange = lambda n, dtype=None: S.device(np.arange(n, dtype=dtype))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for name, value in (("_CUPY", None), ("_CUPY_ERROR", None), ("_CUPY_DEVICE_SEEN", False), ("_AUTO_NOTED", False)):
        monkeypatch.setattr(backend, name, value)
    return fake


NVRTC_LOG = 'kern.cu(1): catastrophic error: cannot open source file "cuda_fp16.h"'


def test_backend_auto_falls_back_to_numpy_with_one_line_when_no_kernel_compiles(monkeypatch, capsys):
    """A device is counted but the probe kernel does not compile (the CUDA headers missing): ``--backend auto``
    trains on NumPy and says why in one line; without a device it says nothing; with a working compiler it
    picks CuPy."""
    from ssaref import backend

    _fake_cupy(monkeypatch, compile_error=NVRTC_LOG)
    assert backend.resolve_backend("auto") is np
    assert backend.resolve_backend("auto") is np              # said once
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: --backend auto uses numpy:")
    assert "CompileException" in err and "cuda_fp16.h" in err and "pip install '.[gpu]'" in err
    rc, out, err = run_cli(SYN + ["--epochs", "1", "--backend", "auto", "--hidden", "8"], capsys)
    assert rc == 0 and "Traceback" not in err
    _fake_cupy(monkeypatch, devices=0, compile_error=NVRTC_LOG)
    assert backend.resolve_backend("auto") is np and capsys.readouterr().err == ""
    fake = _fake_cupy(monkeypatch)                            # the probe compiles and computes 3 * 3 = 9
    assert backend.resolve_backend("auto") is fake and backend.cupy_available()


def test_backend_cupy_exits_2_naming_the_compile_failure(monkeypatch, capsys):
    """``--backend cupy`` with a device but no working kernel compiler: exit 2, one ``error:`` line with the
    reason (NVRTC's first line)."""
    _fake_cupy(monkeypatch, compile_error=NVRTC_LOG)
    rc, _, err = run_cli(SYN + ["--epochs", "1", "--backend", "cupy"], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error:")
    assert "cannot compile and run a kernel" in err and "cuda_fp16.h" in err
