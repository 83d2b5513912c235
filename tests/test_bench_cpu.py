"""validation/bench_cpu.py: a suite timed on a checkout by the portable loop, and the report written from the runs'
JSON files (before/after tables)."""
import json
import os
import subprocess
import sys
from pathlib import Path


from validation import bench_cpu

ROOT = Path(__file__).resolve().parents[1]


def _write(d, suite, rows, model="mlp", inp="1x28x28", **extra):
    d.mkdir(parents=True, exist_ok=True)
    res = {"machine": {"cpu": "test cpu", "cores_available": 2, "numpy": "n", "torch": "t", "python": "p",
                       "blas": [], "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [2.0, 2.0, 2.0]},
           "settings": {}, "limits": {"sgemm_gflops": 100.0, "stream_gbs": 10.0},
           "configs": [{"model": model, "input": inp, "params": 10, "torch_ms": 2.0, "torch_step_mib": 4.0,
                        "rows": rows, **extra}]}
    (d / f"{suite}.json").write_text(json.dumps(res))


def test_portable_times_this_checkout_in_the_bench_json_form(tmp_path):
    out = tmp_path / "s.json"
    spec = {"models": ["mlp"], "methods": ["bp", "dfa"], "repeats": 2, "statistic": "median", "threads": 1,
            "memory": False, "blocks": str(bench_cpu.BLOCKS), "json": str(out)}
    subprocess.run([sys.executable, str(ROOT / "validation" / "bench_cpu.py"), "portable", json.dumps(spec)],
                   cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    res = json.loads(out.read_text())
    (c,) = res["configs"]
    assert c["model"] == "mlp" and c["torch_ms"] > 0 and [r["method"] for r in c["rows"]] == ["bp", "dfa"]
    assert c["rows"][0]["vs_bp"] == 1.0 and c["rows"][1]["ssaref_ms"] > 0 and len(res["machine"]["loadavg_end"]) == 3


def test_report_puts_before_and_after_side_by_side(tmp_path):
    bp = lambda ms, **k: {"method": "bp", "status": "ok", "ssaref_ms": ms, "ratio": ms / 2.0, "vs_bp": 1.0,
                          "flops": 100.0, "limit": 0.5, "step_mib": 3.0, **k}
    _write(tmp_path / "after-1", "bp-small", [bp(3.0)])
    _write(tmp_path / "after-2", "bp-small", [bp(2.4)])
    _write(tmp_path / "before", "bp-small", [bp(5.0, step_mib=9.0)])
    ssa = {"method": "ssa:epochs=10", "status": "ok", "ssaref_ms": 6.0, "ratio": 3.0, "vs_bp": 2.0, "flops": 230.0,
           "limit": 0.25, "step_mib": 5.0}
    _write(tmp_path / "after-1", "svd", [bp(3.0), ssa])
    _write(tmp_path / "after-1", "convmem", [bp(3.0), dict(bp(3.3, step_mib=2.0), method="bp@input"),
                                              dict(bp(3.3, step_mib=2.0), method="bp@recompute")],
           model="lenet")
    md = tmp_path / "r.md"
    assert bench_cpu.main(["report", "--out", str(tmp_path), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "| mlp | 1x28x28 | 10 | 2.50 | **1.50** | **1.20** |" in text          # before, after-1, after-2 ratios
    assert "| 9 | 3 | 4 |" in text                                                # step MiB before, after, torch
    assert "| mlp | ssa:epochs=10 | schedule's (10 epochs) | — | **2.00** | — | 2.30 | 25 % (50 %) |" in text
    assert "| lenet | bp | — | 3 | 2 | 2 | 4 | 0.50 | 0.50 | 1.10 | 1.00 |" in text
    before = md.read_text()                                                         # no overwrite without asking
    assert bench_cpu.main(["report", "--out", str(tmp_path), "--markdown", str(md)]) == 2
    assert md.read_text() == before
    assert bench_cpu.main(["run", "--label", "x", "--out", str(tmp_path), "--suites", "nope"]) == 2


def test_shifted_view_convolution_matches_the_im2col_one():
    """validation/conv_formulations.py's shifted-view 3x3 convolution (nine GEMMs on row-shifted views of the padded
    channels-last grid): forward, weight and input gradient equal to ssaref's im2col convolution."""
    import numpy as np

    from ssaref.ops import conv
    from validation.conv_formulations import Shifted

    rng = np.random.default_rng(0)
    B, C, H = 2, 3, 5
    x = rng.standard_normal((B, C, H, H)).astype(np.float32)
    W = rng.standard_normal((C, C, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((B, C, H, H)).astype(np.float32)
    y, cache = conv.conv2d_forward(x, W, None, 1, 1)
    dW, _ = conv.conv2d_backward_params(dy, cache)
    dx = conv.conv2d_backward_input(dy, W, cache)
    sh = Shifted(B, C, H, H)
    Xg, Wk = sh.pad(x), np.ascontiguousarray(W.transpose(2, 3, 1, 0).reshape(9, C, C))
    Y = sh.forward(Xg, Wk).reshape(B, H + 2, H + 2, C)[:, :H, :H, :].transpose(0, 3, 1, 2)
    dYg = np.zeros((sh.M, C), np.float32)
    dYg.reshape(B, H + 2, H + 2, C)[:, :H, :H, :] = dy.transpose(0, 2, 3, 1)
    dWk, dX = sh.backward(Xg, Wk, dYg)
    np.testing.assert_allclose(Y, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dWk.reshape(3, 3, C, C).transpose(3, 2, 0, 1), dW, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sh.unpad(dX).transpose(0, 3, 1, 2), dx, rtol=1e-5, atol=1e-5)
