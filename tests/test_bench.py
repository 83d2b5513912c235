"""python -m ssaref.bench: the torch mirrors of every layer kind, the analytic FLOP counts, the memory probe and the
command line (tiny batches: what is checked is that the benchmark measures the right thing, not how fast)."""
import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssaref import bench
from ssaref.nn import MODELS, build_model
from ssaref.run import build_run
from _cli import exit_code

SHAPE = {"mlp": (1, 28, 28), "lenet": (1, 28, 28), "convnet": (1, 28, 28)}


def _narrow(name, shape):
    opts = {} if name == "mlp" else {"width_mult": 0.125 if name == "resnet18" else 0.25}
    return build_model(name, shape, 10, dtype=np.float64, seed=3, **opts)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_mirror_has_the_same_graph_and_gradients(name):
    """Logits and every BP gradient of the mirror equal ssaref's (float64, training mode: BN batch statistics)."""
    shape = SHAPE.get(name, (3, 32, 32))
    model = _narrow(name, shape)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4,) + shape), rng.integers(0, 10, size=4)
    tm = bench.torch_mirror(model)
    assert all(p.dtype == torch.float64 for p in tm.parameters())
    tm.train()
    logits = tm(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
    run = build_run(model, "bp", np.random.default_rng(1), optimizer=None)
    res = run.step(x, y)
    np.testing.assert_allclose(logits.detach().numpy(), res.logits, rtol=1e-10, atol=1e-12)
    tgrads = [p.grad.numpy() for p in tm.parameters()]
    sgrads = [res.updates[k] for k, _ in model.named_params()]
    assert len(tgrads) == len(sgrads)
    for a, b in zip(tgrads, sgrads):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-11)


def test_mirror_copies_batchnorm_buffers_and_refuses_unknown_layers():
    model = _narrow("resnet20", (3, 32, 32))
    model.layers[1].buffers["running_mean"][...] = 0.25
    tm = bench.torch_mirror(model)
    assert float(tm[1].running_mean[0]) == 0.25

    class Odd:
        kind = "odd"
        params = {}

    with pytest.raises(NotImplementedError, match="odd"):
        bench.torch_mirror(Odd())


def test_weight_macs_and_step_flops_of_lenet():
    model = build_model("lenet", (1, 28, 28), 10)
    macs = bench.weight_macs(model)
    assert [(k, m) for k, _, m in macs] == [("0", 6 * 25 * 28 * 28), ("3", 16 * 6 * 25 * 10 * 10), ("7", 400 * 120),
                                             ("9", 120 * 84), ("11", 84 * 10)]
    total = sum(m for _, _, m in macs)
    assert bench.step_flops(model, 8) == 2 * 8 * (3 * total - macs[0][2])
    # the factored form at full rank: r (m + n) per linear, two passes per conv
    svd = build_run(build_model("lenet", (1, 28, 28), 10), "svd-bp", np.random.default_rng(0), optimizer=None).model
    smacs = dict((k, m) for k, _, m in bench.weight_macs(svd))
    assert smacs["7"] == 120 * (400 + 120) and smacs["11"] == 10 * (84 + 10)
    r = min(6 * 5, 1 * 5)                     # K' of conv 0: (N kw, C kh) = (30, 5)
    assert smacs["0"] == r * 1 * 5 * 28 * 28 + 6 * r * 5 * 28 * 28   # height pass at (Ho, W), width pass


def test_smallconv_gemms_and_sgemm_rate():
    g = bench.limits.smallconv_gemms((1, 28, 28), 4)
    assert g == [(96, 9, 28 * 28 * 4), (192, 864, 14 * 14 * 4), (512, 1728, 7 * 7 * 4)]
    rows = bench.sgemm_peak([(8, 16, 32)], repeats=2)
    assert rows[0]["gflops"] > 0 and rows[0]["m"] == 8


def test_memory_probe_measures_a_training_step():
    for engine in ("bp", "torch"):
        m = bench.measure_memory(engine, "mlp", (1, 28, 28), batch=64, threads=1, steps=1)
        assert "error" not in m, m
        assert m["peak_mib"] > 0 and m["step_mib"] >= 0 and m["state_mib"] >= 0
    # ssaref's step: the MLP's activations and gradients, ~1 MiB at batch 64; Adam's state ~2 MiB
    assert 0 < m.get("traced_mib", 1) < 50
    bad = bench.measure_memory("bp", "vgg13", (1, 28, 28), batch=2)
    assert "does not fit" in bad["error"]


def test_engines_and_the_memory_probe_take_the_conv_chunk_bound(monkeypatch):
    """``conv_chunk`` (``--conv-chunk``) is in effect during each step of the engine, and restored after it."""
    from ssaref.ops import conv

    seen, real = [], conv._bands
    monkeypatch.setattr(conv, "_bands", lambda *a: seen.append(conv.conv_chunk()) or real(*a))
    x, y = bench.engines._batch((1, 28, 28), 4, 10, 0)
    before = conv.conv_chunk()
    _, step = bench.ssaref_engine("lenet", (1, 28, 28), "bp", x, y, conv_save="input", conv_chunk=0.001)
    step()
    assert seen and set(seen) == {0.001} and conv.conv_chunk() == before
    m = bench.measure_memory("bp", "lenet", (1, 28, 28), batch=8, threads=1, steps=1, conv_chunk=0.001)
    assert "error" not in m and m["step_mib"] >= 0, m


def test_cli_times_every_rule_writes_json_and_markdown(tmp_path, capsys):
    j, md = tmp_path / "b.json", tmp_path / "b.md"
    argv = ["--models", "mlp,lenet", "--method", "bp,dfa,pepita", "--batch-size", "8", "--repeats", "1",
            "--warmup", "1", "--threads", "1", "--memory-steps", "1", "--profile", "all", "--json", str(j),
            "--markdown", str(md)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "sgemm peak" in out and "not supported" in out          # PEPITA on LeNet
    res = json.loads(j.read_text())
    assert res["settings"]["methods"] == ["bp", "dfa", "pepita"] and res["machine"]["threads"] == 1
    assert [c["model"] for c in res["configs"]] == ["mlp", "lenet"]
    mlp, lenet = res["configs"]
    assert mlp["input"] == "1x28x28" and mlp["torch_ms"] > 0 and mlp["torch_mib"] > 0
    bp, dfa, pep = mlp["rows"]
    assert bp["vs_bp"] == 1.0 and math.isclose(bp["ratio"], bp["ssaref_ms"] / mlp["torch_ms"], rel_tol=1e-9)
    assert dfa["ssaref_mib"] > 0 and pep["status"] == "ok"
    assert lenet["rows"][2]["status"].startswith("not supported") and lenet["rows"][2]["vs_bp"] is None
    text = md.read_text()
    assert "| mlp | 1x28x28 |" in text and "sgemm peak" in text and "numpy" in text and "| dfa | pepita |" in text
    assert "Where ssaref's BP step goes, lenet" in text and "linear.linear_forward" in text
    assert {o["op"] for o in lenet["profile"]["ops"]} >= {"conv.conv2d_forward", "optimiser step (Adam)"}


def test_a_labelled_variant_is_its_rule_with_those_options_and_epoch_ends(tmp_path):
    """``--method ssa:parity=false:epochs=2``: SSA built with ``parity=False`` and the step timed after two epoch
    ends of a two-epoch run (the schedule's cuts), in its own row beside plain ``ssa``, and its memory probed
    with the same options."""
    assert bench.engines.method_spec("ssa") == ("ssa", {}, 0)
    assert bench.engines.method_spec("ssa:beta=0.01:epochs=3") == ("ssa", {"beta": "0.01"}, 3)
    model = lambda: build_model("mlp", (1, 28, 28), 10, dtype=np.float32, seed=0)
    full = bench.engines.bench_run(model(), "ssa")
    cut = bench.engines.bench_run(model(), "ssa:epochs=10")
    free = bench.engines.bench_run(model(), "ssa:parity=false:epochs=10")
    ranks = lambda run: [layer.rank for _, layer in run.rule.layers]
    r0 = ranks(full)
    assert r0 == [256, 256, 10] and full.rule.options["parity"] and not free.rule.options["parity"]
    # the default schedule: ceil(0.7 r0), and below mn/(m+n) with parity; without it 0.7 r0 (the last exempt)
    assert ranks(cut) == [180, 127, 9] and ranks(free) == [180, 180, 10]
    for run in (cut, free):  # the optimiser follows the truncated factors: a step runs
        x, y = bench.engines._batch((1, 28, 28), 8, 10, 0)
        run.train_step(x, y)
    j = tmp_path / "v.json"
    argv = ["--models", "mlp", "--method", "ssa,ssa:epochs=10", "--batch-size", "8", "--repeats", "1", "--warmup",
            "1", "--threads", "1", "--memory-steps", "1", "--no-sgemm", "--no-limit", "--profile", "none",
            "--json", str(j)]
    assert bench.main(argv) == 0
    rows = json.loads(j.read_text())["configs"][0]["rows"]
    assert [r["method"] for r in rows] == ["bp", "ssa", "ssa:epochs=10"]
    assert all(r["status"] == "ok" and r["ssaref_ms"] > 0 and r["ssaref_mib"] > 0 for r in rows)
    assert rows[2]["flops"] < rows[1]["flops"]  # counted at the cut ranks


def test_time_blocks_takes_turns_a_block_at_a_time_after_untimed_steps():
    """``blocks.time_blocks``: warm-up steps first, then turns: ``settle`` seconds idle, ``block_warmup`` untimed
    steps, ``block`` timed ones; every engine gets ``repeats`` timed steps, each its own step's duration on the
    clock, and which steps are timed does not depend on the clock."""
    from ssaref.bench.blocks import time_blocks

    now, log, slept = [0.0], [], []
    cost = {"a": 1.0, "b": 3.0}

    def engine(label):
        def step():
            log.append(label)
            now[0] += cost[label]
        return step

    def sleep(s):
        slept.append(s)
        now[0] += s
        log.append("|")

    t = time_blocks({k: engine(k) for k in "ab"}, repeats=3, warmup=1, block=2, block_warmup=1, settle=0.5,
                    clock=lambda: now[0], sleep=sleep)
    assert t == {"a": [1.0] * 3, "b": [3.0] * 3}
    # warm-up a, b; then turns: idle, 1 untimed + 2 timed (the last turn: 1 timed)
    assert "".join(log) == "ab" + "|aaa" + "|bbb" + "|aa" + "|bb" and slept == [0.5] * 4
    log.clear()
    assert time_blocks({"a": engine("a")}, repeats=4, warmup=0, block=2, block_warmup=0, settle=0.0,
                       clock=lambda: now[0], sleep=sleep) == {"a": [1.0] * 4}
    assert "".join(log) == "aaaa"                       # every step timed, no idling
    for bad in ({"repeats": 0}, {"repeats": 1, "settle": -1.0}, {"repeats": 1, "block_warmup": -1}):
        with pytest.raises(ValueError):
            time_blocks({"a": engine("a")}, **bad)


def test_mean_statistic_counts_every_step(monkeypatch):
    """``statistic="mean"``: the mean of the timed steps, so a rule's occasional expensive step (SSA's retraction)
    is counted; the median would skip it."""
    import statistics

    seen = []
    real_mean = statistics.mean
    monkeypatch.setattr(statistics, "mean", lambda v: seen.append(list(v)) or real_mean(v))
    c = bench.bench_config("mlp", (1, 28, 28), ("bp", "ssa"), batch=8, repeats=3, warmup=1, statistic="mean")
    assert len(seen) == 3 and all(len(v) == 3 for v in seen)                  # bp, torch, ssa: 3 steps each
    bp, ssa = c["rows"]
    assert math.isclose(ssa["vs_bp"], ssa["ssaref_ms"] / bp["ssaref_ms"], rel_tol=1e-9)
    assert any(math.isclose(1e3 * real_mean(v), ssa["ssaref_ms"], rel_tol=1e-9) for v in seen)


def test_op_profile_times_every_op_and_removes_its_timers():
    from ssaref.nn import layers as L
    from ssaref.ops import conv

    before = (conv.conv2d_forward, L.ReLU.__dict__["_fwd"], L.MaxPool2d.__dict__["_bwd"])
    ms, rows = bench.op_profile("lenet", (1, 28, 28), "dfa", batch=4, steps=1)
    labels = {k for k, _, _ in rows}
    assert {"conv.conv2d_forward", "conv.conv2d_backward_params", "pool.maxpool2d_backward",
            "activations.relu_backward", "optimiser step (Adam)", "  im2col (inside the conv ops)"} <= labels
    assert "conv.conv2d_backward_input" not in labels          # DFA carries no error between segments
    assert ms > 0 and abs(sum(f for k, _, f in rows if not k.startswith("  ")) - 1) < 1e-6
    assert (conv.conv2d_forward, L.ReLU.__dict__["_fwd"], L.MaxPool2d.__dict__["_bwd"]) == before


def test_op_profile_times_the_banded_columns_too():
    """Above the band bound (``--conv-chunk``) the columns are made a band at a time; their time stays in the
    im2col row, and the timers are removed afterwards."""
    from ssaref.ops import conv

    before = conv.im2col_bands
    _, rows = bench.op_profile("lenet", (1, 28, 28), "bp", batch=4, steps=1, conv_chunk=0.001)
    assert dict((k, ms) for k, ms, _ in rows).get("  im2col (inside the conv ops)", 0) > 0
    assert conv.im2col_bands is before


def test_models_all_skips_a_model_that_does_not_fit(capsys):
    argv = ["--models", "all", "--input", "1x28x28", "--batch-size", "2", "--repeats", "1", "--warmup", "1",
            "--no-memory", "--no-sgemm", "--threads", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "vgg13" in out and "skipped" in out
    for name in MODELS:
        assert name in out


def _exit_code(argv):
    return exit_code(bench.main, argv)


@pytest.mark.parametrize("argv, needle", [
    (["--input", "3x32"], "--input"),
    (["--input", "0x28x28"], "--input"),
    (["--method", "nope"], "nope"),
    (["--method", ","], "--method"),
    (["--threads", "0"], "--threads"),
    (["--statistic", "mode"], "--statistic"),
    (["--models", "vgg13", "--input", "1x28x28", "--no-memory"], "does not fit"),
    (["--conv-chunk", "-1"], "--conv-chunk"),
    (["--conv-chunk", "nan"], "--conv-chunk"),
    (["--method", "ssa:parity"], "not key=value"),
    (["--method", "ssa:parity=maybe"], "parity='maybe'"),
    (["--method", "ssa:nope=1"], "nope"),
    (["--method", "nope:beta=1"], "nope"),
    (["--method", ":beta=1"], "--method"),
    (["--method", "ssa:epochs=-1"], "epochs"),
    (["--method", "ssa:epochs=1001"], "epochs"),
    (["--method", "ssa:beta=1:beta=2"], "twice"),
    (["--method", "ssa:epochs=1:epochs=2"], "twice"),
    (["--settle", "61"], "--settle"),
    (["--settle", "-1"], "--settle"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert _exit_code(argv + ["--repeats", "1", "--warmup", "1", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


@pytest.mark.parametrize("flag, value, needle", [
    ("--repeats", str(10**30), "at most 100000"),
    ("--repeats", "0", "> 0"),
    ("--warmup", "two", "expected an int"),
    ("--repeats", str(2**62), "at most 100000"),
    ("--repeats", "100001", "at most 100000"),
    ("--warmup", str(10**9), "at most 10000"),
    ("--batch-size", str(10**12), "at most 65536"),
    ("--memory-steps", str(10**6), "at most 1000"),
    ("--input", "1x100000x100000", "at most 4096"),
    ("--input", f"1x{10**30}x1", "at most 4096"),
])
def test_integers_are_bounded_before_the_benchmark(flag, value, needle, capsys, monkeypatch):
    """issue 24: every integer of the command line is bounded by what one run can do, refused (one line, exit 2)
    before the first step -- checked by making any timing step a failure of the test."""
    def no_step(*a, **k):
        raise AssertionError("the benchmark ran")
    monkeypatch.setattr(bench.cli, "bench_config", no_step)
    monkeypatch.setattr(bench.cli, "apply_threads", no_step)
    assert _exit_code(["--models", "mlp", "--no-memory", "--no-sgemm", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_largest_accepted_integers_parse():
    a = bench.cli._parse(["--repeats", "100000", "--warmup", "10000", "--batch-size", "65536", "--memory-steps", "1000",
                          "--input", "4096x1x1"])
    assert (a.repeats, a.warmup, a.batch_size, a.memory_steps, a.inputs) == (100000, 10000, 65536, 1000, [(4096, 1, 1)])


def test_existing_markdown_needs_overwrite(tmp_path, capsys):
    md = tmp_path / "t.md"
    md.write_text("keep")
    assert _exit_code(["--markdown", str(md), "--models", "mlp"]) == 2
    assert "--overwrite" in capsys.readouterr().err and md.read_text() == "keep"


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing-with-overwrite"])
@pytest.mark.parametrize("spell", ["same", "dotdot"])
def test_json_and_markdown_must_not_alias(tmp_path, capsys, existing, spell):
    """issue 24: ``--json X --markdown X`` is refused before the benchmark (one output would replace the other)."""
    out = tmp_path / "r.txt"
    if existing:
        out.write_text("keep")
    other = out if spell == "same" else tmp_path / "sub" / ".." / "r.txt"
    (tmp_path / "sub").mkdir()
    argv = ["--json", str(out), "--markdown", str(other), "--models", "mlp"] + (["--overwrite"] if existing else [])
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "same file" in err[0]
    assert (out.read_text() == "keep") if existing else not out.exists()


def test_gpu_comparison_picks_cuda_for_torch_and_sets_tf32_alike_on_both_sides(monkeypatch):
    """``--backend cupy`` times torch on CUDA (synchronised); ``--tf32`` sets CuPy's and torch's switches alike.
    (The CUDA side itself needs a GPU: tests/test_gpu_equivalence.py and validation/gpu_check.sh.)"""
    import torch

    assert bench.engines.torch_device("cupy") == "cuda" and bench.engines.torch_device("numpy") == "cpu"
    # torch provides ``cuda.matmul.allow_tf32`` through a module ``__getattr__``/``__setattr__`` pair, not as an
    # attribute: monkeypatch.setattr would try to delattr it at teardown (an error on pytest >= 9.2).  Save and
    # restore through the public switches instead.
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        on = bench.engines.set_tf32(True)
        assert on["CUPY_TF32"] == "1" and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        off = bench.engines.set_tf32(False)
        assert off["CUPY_TF32"] == "0" and not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_backend_cupy_without_a_gpu_is_one_line_and_exit_2(capsys):
    from ssaref.backend import cupy_available

    if cupy_available():
        pytest.skip("this machine has CuPy and a GPU: the comparison would run")
    assert bench.main(["--backend", "cupy", "--models", "mlp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cupy" in err[0]


def test_device_step_memory_reads_the_allocators_high_water_mark():
    """``device_step_mib`` against fake CuPy / torch allocators whose high-water marks a step moves by 3 MiB."""
    MiB = 2 ** 20

    class Pool:
        used, total = 5 * MiB, 9 * MiB

        def free_all_blocks(self):
            self.total = self.used

        def used_bytes(self):
            return self.used

        def total_bytes(self):
            return self.total

    pool = Pool()

    class Dev:
        def synchronize(self):
            pass

    class FakeCupy:
        cuda = type("cuda", (), {"Device": Dev})

        @staticmethod
        def get_default_memory_pool():
            return pool

    def cupy_step():
        pool.total = pool.used + 3 * MiB   # the pool grew to the step's transient high-water mark

    assert bench.timing.device_step_mib(cupy_step, None, FakeCupy) == 3.0

    class Cuda:
        alloc, peak = 7 * MiB, 20 * MiB

        def synchronize(self):
            pass

        def memory_allocated(self):
            return self.alloc

        def reset_peak_memory_stats(self):
            self.peak = self.alloc

        def max_memory_allocated(self):
            return self.peak

    fake_torch = type("torch", (), {"cuda": Cuda()})

    def torch_step():
        fake_torch.cuda.peak = fake_torch.cuda.alloc + 3 * MiB

    assert bench.timing.device_step_mib(torch_step, fake_torch, None) == 3.0


# ------------------------------------------------------------------------------------------ device timing
def test_op_profile_on_a_device_times_the_work_not_the_launches(monkeypatch):
    """On an asynchronous device (the stand-in with ``simulate_async``: each launch queues 1 ms of work, a sync
    waits for it) the per-op timers synchronise, so the ops' rows hold the device time and "rest of the step"
    does not swallow it; the timers' synchronisations are counted on the fake ``xp.cuda``."""
    from tests import _strictxp as S

    xp = S.install()
    monkeypatch.setattr(bench.profile, "resolve_backend", lambda name: xp)
    S.reset()
    with S.simulate_async(1e-3):
        ms, rows = bench.op_profile("mlp", (1, 28, 28), "bp", batch=8, steps=2, backend="cupy")
    rest = next(v for k, v, _ in rows if k.startswith("rest of the step"))
    ops = sum(v for k, v, _ in rows if not k.startswith(("rest of the step", "  ")))
    assert S.COUNT.device_syncs > 0
    assert ops > 2 * rest, rows           # without the syncs the ops show their launch time only
    assert ops > 0.5 * ms


def test_sgemm_peak_runs_on_the_engines_device_and_waits_for_the_gemm(monkeypatch):
    """``sgemm_peak(xp=device)`` multiplies device arrays (a host GEMM would be refused by the stand-in) and its
    timings include the device work (simulated: 5 ms per launch, so every timed GEMM takes at least 5 ms)."""
    from tests import _strictxp as S

    xp = S.install()
    S.reset()
    with S.simulate_async(5e-3):
        rows = bench.sgemm_peak([(8, 16, 32)], repeats=3, xp=xp)
    assert S.COUNT.launches >= 4 and S.COUNT.device_syncs >= 6
    assert rows[0]["ms"] >= 5.0 and rows[0]["gflops"] > 0


def _toy_mlp(B_in=6, hidden=5, out=3, dtype=np.float32):
    from ssaref.nn.containers import Sequential
    from ssaref.nn.layers import Linear, ReLU

    rng = np.random.default_rng(0)
    model = Sequential([Linear(B_in, hidden, xp=np, dtype=dtype, rng=rng), ReLU(),
                        Linear(hidden, out, xp=np, dtype=dtype, rng=rng)])
    model.input_shape = (B_in,)
    return model


def test_step_cost_of_a_two_layer_mlp_by_hand():
    """BP on Linear(n0 -> n1), ReLU, Linear(n1 -> n2) at batch B, float32, counted by hand: forward 2 B m n per
    linear, weight gradient 2 B m n each, input gradient 2 B m n for the second only; GEMM bytes (m k + k n + m n)
    x 4; ReLU forward reads and writes B n1, backward reads 2 B n1 and writes B n1 (1 FLOP per element written);
    Adam 12 FLOPs and 7 elements a parameter."""
    B, n0, n1, n2 = 4, 6, 5, 3
    model = _toy_mlp(n0, n1, n2)
    ops = bench.step_cost(model, "bp", B, (n0,))
    by = {o["op"]: o for o in ops}
    assert by["0 forward"]["flops"] == 2 * B * n1 * n0 and by["0 forward"]["bytes"] == 4 * (B * n0 + n0 * n1 + B * n1)
    assert by["0 weight gradient"]["flops"] == 2 * B * n1 * n0
    assert by["0 weight gradient"]["bytes"] == 4 * (n1 * B + B * n0 + n1 * n0)
    assert "0 input gradient" not in by
    assert by["2 input gradient"]["flops"] == 2 * B * n2 * n1
    assert by["2 input gradient"]["bytes"] == 4 * (B * n2 + n2 * n1 + B * n1)
    assert by["1 relu forward"] == {"op": "1 relu forward", "kind": "stream", "flops": B * n1, "bytes": 4 * 2 * B * n1}
    assert by["1 relu backward"]["bytes"] == 4 * 3 * B * n1 and by["1 relu backward"]["flops"] == B * n1
    P = n1 * n0 + n1 + n2 * n1 + n2
    assert by["optimiser (Adam)"]["flops"] == 12 * P and by["optimiser (Adam)"]["bytes"] == 4 * 7 * P
    gemm = 2 * B * (2 * n1 * n0 + 3 * n2 * n1)
    flops = gemm + 2 * B * n1 + 12 * P
    byts = 4 * ((B * n0 + n0 * n1 + B * n1) + (n1 * B + B * n0 + n1 * n0) + (B * n1 + n1 * n2 + B * n2)
                + (n2 * B + B * n1 + n2 * n1) + (B * n2 + n2 * n1 + B * n1) + 2 * B * n1 + 3 * B * n1 + 7 * P)
    assert len(ops) == 8 and sum(o["flops"] for o in ops) == flops and sum(o["bytes"] for o in ops) == byts
    assert bench.step_flops(model, B, (n0,)) == gemm
    # the roofline: max of the two times of the totals; the per-op sum is never below it
    rf = bench.roofline(ops, peak_gflops=2.0, bandwidth_gbs=0.5)
    assert math.isclose(rf["bound_ms"], 1e3 * max(flops / 2e9, byts / 0.5e9))
    assert rf["bound_ops_ms"] >= rf["bound_ms"] - 1e-12 and math.isclose(rf["intensity"], flops / byts)
    # float64: bytes double; DFA: no input gradient, e B for the hidden layer (K = n2 classes)
    ops64 = bench.step_cost(_toy_mlp(n0, n1, n2, np.float64), "bp", B, (n0,))
    assert sum(o["bytes"] for o in ops64) == 2 * byts
    dfa = {o["op"]: o for o in bench.step_cost(model, "dfa", B, (n0,))}
    assert "2 input gradient" not in dfa and dfa["0 feedback e B"]["flops"] == 2 * B * n2 * n1


def test_step_cost_of_svd_rules_and_a_conv_layer():
    """SSA on the factored layers: per factor X (m, r) the syrk Gram m r (r + 1) and two (m, r, r) GEMMs; SVD-BP
    the Gram and one; a conv layer's im2col GEMMs are 2 B C_out (C kh kw) Ho Wo each."""
    model = _toy_mlp(6, 5, 3, np.float64)
    run = build_run(model, "ssa", np.random.default_rng(0), optimizer=None)
    by = {o["op"]: o for o in bench.step_cost(run.model, "ssa", 4, (6,), rule=run.rule)}
    m, r = 6, 5        # layer 0: V (n = 6, r = 5)
    assert by["0.V Gram (syrk)"]["flops"] == m * r * (r + 1) and by["0.V XtG"]["flops"] == 2 * m * r * r
    assert by["0.V XK"]["flops"] == 2 * m * r * r and "0.V XM" not in by
    # mlp at batch 128: layer 1's V^T g_V from the batch (SSA._batch_VtG), as the rule computes it
    run = build_run(build_model("mlp", (1, 28, 28), 10), "ssa", np.random.default_rng(0), optimizer=None)
    by = {o["op"]: o for o in bench.step_cost(run.model, "ssa", 128, (1, 28, 28), rule=run.rule)}
    assert "1.V XtG" not in by and by["1.V z^T dz"]["flops"] == 2 * 256 * 128 * 256 and "3.V XtG" in by
    run = build_run(_toy_mlp(6, 5, 3, np.float64), "svd-bp", np.random.default_rng(0), optimizer=None)
    by = {o["op"]: o for o in bench.step_cost(run.model, "svd-bp", 4, (6,), rule=run.rule)}
    assert by["2.U XM"]["flops"] == 2 * 3 * 3 * 3 and "2.U XtG" not in by
    lenet = build_model("lenet", (1, 28, 28), 10)
    by = {o["op"]: o for o in bench.step_cost(lenet, "bp", 2, (1, 28, 28))}
    assert by["0 forward"]["flops"] == 2 * 6 * 25 * (2 * 28 * 28)
    assert by["0 im2col"]["bytes"] == 4 * (2 * 28 * 28 + 25 * 2 * 28 * 28)
    assert by["3 col2im"]["bytes"] == 4 * (6 * 25 * 2 * 10 * 10 + 2 * 6 * 14 * 14)


def test_limit_column_in_the_cli(tmp_path, capsys):
    j = tmp_path / "b.json"
    argv = ["--models", "mlp", "--method", "bp,auglocal", "--batch-size", "8", "--repeats", "1", "--warmup", "1",
            "--threads", "1", "--no-memory", "--no-sgemm", "--profile", "none", "--limit-gemm", "128",
            "--limit-stream-mib", "4", "--json", str(j)]
    assert bench.main(argv) == 0
    res = json.loads(j.read_text())
    lim = res["limits"]
    assert lim["gemm_n"] == 128 and lim["sgemm_gflops"] > 0 and lim["stream_gbs"] > 0
    bp, aug = res["configs"][0]["rows"]
    for r in (bp, aug):
        rf = bench.roofline(r["cost_ops"], lim["sgemm_gflops"], lim["stream_gbs"])
        assert math.isclose(r["bound_ms"], rf["bound_ms"]) and math.isclose(r["limit"], r["bound_ms"] / r["ssaref_ms"])
    assert bp["aux_params"] == 0 and aug["aux_params"] > 0
    assert res["configs"][0]["params"] == sum(v.size for _, v in build_model("mlp", (1, 28, 28), 10).named_params())
    assert aug["flops"] > sum(o["flops"] for o in aug["cost_ops"] if not o["op"].startswith("aux"))
    assert "aux params" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ package layout
# ssaref.bench, one idea a module; each imports only the modules before it, so nothing imports the command line
BENCH_ORDER = ("blocks", "mirror", "limits", "engines", "timing", "profile", "memory", "report", "cli")


def _sibling_imports(source):
    """The modules of ssaref.bench that ``source`` imports (relative or absolute)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssaref.bench"):
            parts = node.module.split(".")
            out |= {parts[2]} if len(parts) > 2 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[2] for a in node.names if a.name.startswith("ssaref.bench.")}
    return out & set(BENCH_ORDER)


def test_bench_modules_import_one_way_and_none_imports_the_command_line():
    folder = Path(bench.__file__).parent
    assert {p.stem for p in folder.glob("*.py")} - {"__init__", "__main__"} == set(BENCH_ORDER)
    for i, name in enumerate(BENCH_ORDER):
        above = set(BENCH_ORDER[:i])
        deps = _sibling_imports((folder / f"{name}.py").read_text(encoding="utf-8"))
        assert deps <= above, f"ssaref/bench/{name}.py imports {sorted(deps - above)}, not above it in BENCH_ORDER"


def test_the_bench_import_scan_sees_every_spelling():
    src = "from .cli import main\nfrom . import report\nimport ssaref.bench.timing\nfrom ssaref.bench import memory\n"
    assert _sibling_imports(src) == {"cli", "report", "timing", "memory"}
    assert _sibling_imports("from ..cli import OneLineParser\nfrom . import __doc__\n") == set()
