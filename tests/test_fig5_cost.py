"""validation.fig5_cost: the --quick run (table and figure), the analytic inference cost, ranks from run files."""
import numpy as np
import pytest

from ssaref import train as train_mod
from ssaref.nn import build_model
from ssaref.run import build_run
from _cli import exit_code
from validation import fig5_cost as f5


def _code(argv):
    return exit_code(f5.main, argv)


def test_quick_writes_the_table_and_the_figure(tmp_path, capsys):
    out = tmp_path / "f5"
    assert f5.main(["--quick", "--models", "mlp,lenet", "--threads", "1", "--out-dir", str(out)]) == 0
    text = (out / "results.md").read_text()
    assert (out / "fig5_cost.png").stat().st_size > 1000
    for model in ("mlp", "lenet"):
        for label in ("BP", "DFA", "SSA", "SVD-BP", "PredSim", "AugLocal"):
            assert f"| {model} | 1x28x28 | {label} |" in text
    rows = [line for line in text.splitlines() if line.startswith("| mlp |")]
    bp = rows[0].split("|")
    assert bp[5].strip() == "1.00"                      # vs BP
    assert float(bp[6]) > 0                             # peak MiB, measured
    assert "--quick" in text and "full rank" in text and "dense" in text


def test_inference_cost_is_analytic():
    lenet = build_model("lenet", (1, 28, 28), 10)
    flops, params, layers = f5.inference_cost(lenet, (1, 28, 28))
    macs = 6 * 25 * 784 + 16 * 6 * 25 * 100 + 400 * 120 + 120 * 84 + 84 * 10
    assert flops == 2 * macs and params == sum(int(v.size) for _, v in lenet.named_params())
    mlp = build_model("mlp", (1, 28, 28), 10)
    f, p, rows = f5.inference_cost(mlp, (1, 28, 28), {"1": 10, "3": 5}, svd=True)
    assert [r for _, r, _ in rows] == [10, 5, 10]       # the classifier at full rank min(10, 256)
    assert f == 2 * (10 * (256 + 784) + 5 * (256 + 256) + 10 * (10 + 256))
    assert p == 10 * (256 + 784 + 1) + 5 * (256 + 256 + 1) + 10 * (10 + 256 + 1) + 256 + 256 + 10
    bn = build_model("resnet20", (3, 32, 32), 10, width_mult=0.25)
    _, p, _ = f5.inference_cost(bn, (3, 32, 32))
    assert p == sum(int(v.size) for _, v in bn.named_params())   # BN's gamma and beta counted


def test_ranks_come_from_run_files(tmp_path, capsys):
    run = tmp_path / "ssa.h5"
    assert train_mod.main(["--method", "ssa", "--model", "lenet", "--dataset", "synthetic", "--train-limit", "64",
                           "--test-limit", "32", "--batch-size", "32", "--epochs", "1", "--no-progress",
                           "--no-download", "--out", str(run)]) == 0
    found, ignored = f5.collect_runs([tmp_path])
    assert list(found) == [("ssa", "lenet")] and not ignored
    _, ranks, _ = found[("ssa", "lenet")]
    a = f5.analytic("ssa", "lenet", 1.0, found)
    assert a["rank_source"] == "run file ssa.h5" and a["ranks"] == [ranks[k] for k in ("0", "3", "7", "9", "11")]
    full = f5.analytic("ssa", "lenet", 1.0, {})
    assert full["rank_source"] == "full rank" and a["flops"] <= full["flops"]
    out = tmp_path / "f5"
    assert f5.main(["--quick", "--models", "lenet", "--methods", "bp,ssa", "--no-memory", "--no-plot",
                    "--runs", str(run), "--out-dir", str(out)]) == 0
    assert "run file ssa.h5" in (out / "results.md").read_text()


@pytest.mark.parametrize("argv, needle", [
    (["--methods", "nope"], "nope"),
    (["--models", "resnet99"], "resnet99"),
    (["--runs", "/nonexistent/run.h5"], "does not exist"),
    (["--threads", "0"], "--threads"),
])
def test_bad_arguments_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    assert _code(argv + ["--quick", "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert not (tmp_path / "o" / "results.md").exists()


def test_a_file_that_is_no_run_file_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    assert _code(["--quick", "--runs", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    assert "bad.h5" in capsys.readouterr().err


def test_auxiliary_overhead_is_counted_apart():
    """PredSim's and AugLocal's auxiliary networks: their forward FLOPs and parameters, training only (the inference
    cost is the model's own); none for BP."""
    mlp = build_model("mlp", (1, 28, 28), 10)
    assert f5.aux_cost("bp", mlp) == (0, 0)
    # PredSim on each 256-wide block: a classifier Linear(256, 10) and a bias-free Linear(256, 256) before S
    flops, params = f5.aux_cost("predsim", build_model("mlp", (1, 28, 28), 10))
    assert flops == 2 * 2 * (256 * 10 + 256 * 256) and params == 2 * (256 * 10 + 10 + 256 * 256)
    # AugLocal: only the first block has an auxiliary network, a copy of the second layer and a classifier
    flops, params = f5.aux_cost("auglocal", build_model("mlp", (1, 28, 28), 10))
    assert flops == 2 * (256 * 256 + 256 * 10) and params == 256 * 256 + 256 + 256 * 10 + 10
    a = f5.analytic("predsim", "mlp", 1.0, {})
    b = f5.analytic("bp", "mlp", 1.0, {})
    assert a["flops"] == b["flops"] and a["params"] == b["params"]      # inference drops the auxiliary networks
    assert a["train_flops"] > b["train_flops"] > 3 * b["flops"] - 2 * 784 * 256   # BP: 3 passes, no first dx
    # the counted step (ssaref.bench.step_cost) per example: the auxiliary networks' forward, weight and input
    # gradients are in PredSim's training FLOPs
    assert a["train_flops"] - b["train_flops"] >= 3 * a["aux_flops"] - 2 * 784 * 256
    from ssaref.bench import step_cost
    run = build_run(build_model("mlp", (1, 28, 28), 10, dtype=np.float32), "predsim", np.random.default_rng(0),
                    optimizer=None)
    assert a["train_flops"] == sum(o["flops"] for o in step_cost(run.model, "predsim", 128, (1, 28, 28),
                                                                rule=run.rule)) / 128
    # SSA at the ranks of a run file: fewer training FLOPs than at full rank
    r = f5.train_cost("ssa", build_model("lenet", (1, 28, 28), 10), (1, 28, 28), 16, {"7": 20, "9": 20})
    assert r < f5.train_cost("ssa", build_model("lenet", (1, 28, 28), 10), (1, 28, 28), 16)
