"""CPU versus GPU, float64: every rule, 20 steps, on an MLP, a conv+BN net, a residual net and SVD conv layers
give the same parameters on NumPy and on CuPy (1e-10 relative), and a run checkpointed on the GPU resumes on the
CPU exactly where it stopped.  Marked ``gpu``: skipped without a usable CuPy device, a failure under
``SSAREF_REQUIRE_GPU=1`` (validation/gpu_check.sh).  The same code paths run on the CPU through the strict
stand-in in test_strict_device.py."""
from __future__ import annotations

import numpy as np
import pytest

from ssaref.nn import build_model
from ssaref.rules import RULES
from ssaref.run import build_run

pytestmark = pytest.mark.gpu

MODELS = {"mlp": ("mlp", (1, 8, 8), {"hidden": (16, 12)}), "convbn": ("vgg13", (3, 32, 32), {"width_mult": 0.0625}),
          "resnet": ("resnet20", (3, 8, 8), {"width_mult": 0.25}), "svdconv": ("lenet", (1, 28, 28), {})}
CASES = [(r, m) for r in sorted(RULES) for m in ("mlp", "convbn", "resnet") if not (r == "pepita" and m != "mlp")]
CASES += [("ssa", "svdconv"), ("svd-bp", "svdconv")]


def _train(rule, model, xp, steps=20):
    name, shape, kw = MODELS[model]
    m = build_model(name, shape, 5, xp=xp, dtype=np.float64, seed=0, **kw)
    run = build_run(m, rule, np.random.default_rng(2), options={"angle_every": 0} if rule == "ssa" else None,
                    optimizer="adam", lr=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x, y = rng.standard_normal((8,) + shape), rng.integers(0, 5, 8)
        run.train_step(xp.asarray(x), xp.asarray(y))
    return {k: np.asarray(v.get() if hasattr(v, "get") else v) for k, v in run.model.named_params()}


@pytest.mark.parametrize("rule, model", CASES)
def test_cpu_and_gpu_runs_agree(rule, model):
    import cupy as cp

    a, b = _train(rule, model, np), _train(rule, model, cp)
    for k, v in a.items():
        scale = max(float(np.max(np.abs(v))), 1e-300)
        assert float(np.max(np.abs(b[k] - v))) / scale <= 1e-10, (rule, model, k)


def test_gpu_checkpoint_resumes_on_the_cpu(tmp_path):
    from ssaref import train as train_mod
    from ssaref.runlog import read_run

    common = ["--method", "ssa", "--dataset", "synthetic", "--train-limit", "256", "--test-limit", "64",
              "--batch-size", "64", "--hidden", "16", "--dtype", "float64", "--no-progress"]
    gpu, ref = tmp_path / "gpu.h5", tmp_path / "ref.h5"
    assert train_mod.main(common + ["--backend", "cupy", "--epochs", "1", "--out", str(gpu)]) == 0
    assert train_mod.main(common + ["--backend", "numpy", "--epochs", "2", "--resume", str(gpu)]) == 0
    assert train_mod.main(common + ["--backend", "numpy", "--epochs", "2", "--out", str(ref)]) == 0
    a, b = read_run(gpu)[2]["params"], read_run(ref)[2]["params"]
    for k, v in b.items():
        np.testing.assert_allclose(a[k], v, rtol=1e-9, atol=1e-12, err_msg=k)
