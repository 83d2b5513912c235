"""Every fused kernel compiles with NVRTC, as CuPy would compile it on a GPU, on this CPU-only machine.

The engine's call sites (optimisers, BatchNorm, the retraction, the Hoyer gradient, ``sym``) run on the strict
stand-in in float32 and float64; every ``ElementwiseKernel`` call is recorded with its arguments' layouts, turned
into the ``_ArgInfo``s CuPy 14 builds for it (``tests/_nvrtc.arginfos``), and compiled from the source CuPy's own
generator writes, for two architectures (``_nvrtc.ARCHS``).  Every kernel of ``kernels.catalogue()`` (all that the
engine can build) is also compiled in canonical layouts.  Needs the ``gpu`` extra (CuPy 14 with NVRTC and the
CUDA headers; no GPU).  The tests skip only when NVRTC cannot be loaded -- and fail instead when
``SSAREF_REQUIRE_NVRTC=1`` (CI sets it).  The rng path (``ssaref/rng.py``) has no kernel of its own: its uint64
arithmetic is CuPy's ufuncs.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from ssaref import linalg
from ssaref.ops import kernels, norm
from ssaref.optim import build_optimizer
from tests import _nvrtc
from tests import _strictxp as S

S.install()


@pytest.fixture(scope="module")
def nvrtc():
    try:
        return _nvrtc.load()
    except _nvrtc.NvrtcUnavailable as exc:
        if os.environ.get("SSAREF_REQUIRE_NVRTC") == "1":
            pytest.fail(f"SSAREF_REQUIRE_NVRTC=1 but NVRTC cannot be used: {exc} "
                        "(pip install -e '.[gpu]': cupy-cuda12x[ctk] 14)")
        pytest.skip(f"NVRTC cannot be used here: {exc}")


OPTIMIZERS = [
    ("adam", {}), ("adam", {"weight_decay": 0.1}), ("adamw", {"weight_decay": 0.3}),
    ("sgd", {}), ("sgd", {"weight_decay": 0.1}), ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "weight_decay": 0.1}),
    ("sgd", {"momentum": 0.9, "dampening": 0.3}), ("sgd", {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("sgd", {"momentum": 0.8, "nesterov": True}), ("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
]


def _call_sites(dtype):
    """Run every call site of a fused kernel on the stand-in in ``dtype``; the recorded kernel calls."""
    rng = np.random.default_rng(0)
    d = lambda a: S.device(np.asarray(a, dtype=dtype))
    with S.record_kernels() as calls:
        shapes = {"W": (5, 4), "b": (4,), "s": (1,), "K": (3, 2, 3, 3)}
        for name, kw in OPTIMIZERS:
            params = {k: d(rng.standard_normal(s)) for k, s in shapes.items()}
            opt = build_optimizer(name, list(params.items()), 1e-2, **kw)
            for _ in range(2):   # SGD with momentum: the buffer's first update, then the later ones
                opt.step({k: d(rng.standard_normal(s)) for k, s in shapes.items()})
        for xshape in ((6, 3), (4, 3, 5, 5)):
            C = xshape[1]
            y, cache, _, _ = norm.batchnorm_forward(d(rng.standard_normal(xshape)), d(rng.uniform(0.5, 2, C)),
                                                    d(rng.standard_normal(C)), d(np.zeros(C)), d(np.ones(C)),
                                                    train=True)
            norm.batchnorm_backward(d(rng.standard_normal(xshape)), cache)
        X = rng.standard_normal((9, 4))
        linalg.retract(d(X))                                                  # far: eigh step, then Newton-Schulz
        Q = np.linalg.qr(X)[0]
        linalg.retract(d(Q + 1e-3 * rng.standard_normal(Q.shape)))          # near: Newton-Schulz only
        linalg.hoyer_grad(d(rng.uniform(0.1, 2.0, 6)))
        linalg.sym(d(rng.standard_normal((5, 5))))
    return calls


def test_the_backend_probe_runs_the_catalogued_kernel(monkeypatch):
    """``backend._probe_kernel`` builds ``kernels.PROBE`` (so the compile test covers what ``--backend auto``
    compiles) and checks its value."""
    from types import SimpleNamespace

    from ssaref import backend

    built = []

    def kernel(*a):
        built.append(a)
        return S.ElementwiseKernel(*a)

    fake = SimpleNamespace(ElementwiseKernel=kernel, float32=np.float32,
                           arange=lambda n, dtype=None: S.device(np.arange(n, dtype=dtype)))
    backend._probe_kernel(fake)
    k = kernels.PROBE
    assert built == [(k.in_params, k.out_params, k.body, k.name)]


@pytest.fixture(scope="module")
def site_calls():
    return {dt: _call_sites(dt) for dt in ("float32", "float64")}


def _compile_call(call):
    type_map, infos = _nvrtc.arginfos(call)
    src = _nvrtc.kernel_source(call.name, call.in_params, call.out_params, call.operation, type_map, infos)
    return src, [_nvrtc.compile_source(src, arch) for arch in _nvrtc.ARCHS]


def test_the_call_sites_reach_every_kernel_the_engine_can_build(site_calls):
    """Every kernel of ``kernels.catalogue()`` is launched by some call site in both dtypes (so compiling the call
    sites' layouts covers them all), and nothing outside the catalogue is launched."""
    names = {k.name for k in kernels.catalogue()}
    assert len(names) == len(kernels.catalogue()) == 3 + 2 + 12 + 8 + 1
    for dt, calls in site_calls.items():
        assert {c.name for c in calls} == names - _SGD_NOT_REACHED - {"ssaref_probe"}, dt


# the SGD kernels that plain "sgd" with momentum/dampening/nesterov cannot reach: Nesterov forbids dampening, so its
# buffer is never "damped"
_SGD_NOT_REACHED = {"ssaref_sgd_damped_nesterov", "ssaref_sgd_wd_damped_nesterov"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_call_site_kernel_compiles_with_nvrtc(nvrtc, site_calls, dtype):
    """Each distinct (kernel, argument layout) of the call sites compiles for compute_80 (PTX) and sm_90 (cubin);
    the source is CuPy's, with the dtype's C type and CuPy's ``CArray`` parameters."""
    ctypes = {"float32": "float", "float64": "double"}
    ctype = ctypes[dtype]
    seen = {}
    for call in site_calls[dtype]:
        src, sizes = _compile_call(call)
        # the retraction's eigen step is float64 in float32 runs too (eigh of the Gram matrix in float64)
        own = ctypes[str(call.args[0][1])]
        assert own == ctype or call.name == "ssaref_eigen_scale"
        assert f"typedef {own} T;" in src and f"void {call.name}(" in src and "CIndexer<" in src
        assert all(s > 0 for s in sizes)
        seen.setdefault(call.name, set()).add(src)
    layouts = sum(len(v) for v in seen.values())
    # BatchNorm's broadcast per-channel arguments and sym's transposed input give strided layouts besides the 1-d
    assert layouts > len(seen), seen.keys()
    assert any("CArray<" + ctype + ", 2, 0" in s for s in seen["ssaref_sym"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_catalogued_kernel_compiles_in_canonical_layouts(nvrtc, dtype):
    """Each kernel the engine can build, in 1-d contiguous and 3-d strided layouts, compiles for both archs."""
    for k in kernels.catalogue():
        for nd, contiguous in ((1, True), (3, False)):
            _, sizes = _compile_call(_nvrtc.canonical_call(k, dtype, nd, contiguous))
            assert all(s > 0 for s in sizes)


@pytest.mark.parametrize("body", ["T xc = x - mean;\nsq = xc * yc;",          # an undefined name
                                  "T xc = x - mean\nsq = xc * xc;",           # a missing ';'
                                  "T xc = x - mean;\nsq = xc * * xc;"])       # a syntax error
def test_a_planted_error_in_a_kernel_body_fails_to_compile(nvrtc, body):
    """A kernel body with an error fails NVRTC (the test above can fail), and the log names the error."""
    from cupy.cuda.compiler import CompileException

    bad = kernels.Kernel("ssaref_bn_sqdev_planted", kernels.BN_SQDEV.in_params, kernels.BN_SQDEV.out_params, body)
    for arch in _nvrtc.ARCHS:
        with pytest.raises(CompileException, match="error"):
            _compile_call(_nvrtc.canonical_call(bad, "float32"))
        _nvrtc._COMPILED.clear()
        with pytest.raises(CompileException):
            _nvrtc.compile_source(_nvrtc.kernel_source(bad.name, bad.in_params, bad.out_params, bad.body,
                                                       *_nvrtc.arginfos(_nvrtc.canonical_call(bad, "float64"))),
                                  arch)


def test_the_old_sgd_momentum_kernel_without_a_buffer_does_not_compile(nvrtc):
    """What ``sgd(decay, None, "momentum")`` used to build: NVRTC refuses it (the trap the helper now refuses)."""
    from cupy.cuda.compiler import CompileException

    old = kernels.Kernel("ssaref_sgd_nobuf_momentum", "T g, T wd, T lr", "T p", "T d = g;\np = p - buf * lr;")
    with pytest.raises(CompileException, match='identifier "buf" is undefined'):
        _compile_call(_nvrtc.canonical_call(old, "float32"))


def test_the_unbuildable_sgd_variants_are_refused():
    """``sgd(decay, None, "momentum"/"nesterov")`` read a buffer they do not have (NVRTC: ``identifier "buf" is
    undefined``): the helper refuses them; buffer updates without momentum are refused too."""
    for decay in (False, True):
        for apply in ("momentum", "nesterov"):
            with pytest.raises(ValueError, match="need a buffer"):
                kernels.sgd(decay, None, apply)
        with pytest.raises(ValueError):
            kernels.sgd(decay, "first", "plain")


def test_the_layouts_follow_cupys_dimension_reduction():
    """``_nvrtc.arginfos`` as CuPy: contiguous arguments collapse to 1-d; a broadcast per-channel BatchNorm argument
    of a 4-d batch keeps 3 axes (N, C, H*W merged), strided."""
    try:
        _nvrtc.load()
    except _nvrtc.NvrtcUnavailable as exc:
        if os.environ.get("SSAREF_REQUIRE_NVRTC") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    f4 = np.dtype(np.float32)
    call = _nvrtc.canonical_call(kernels.BN_SQDEV, f4, 4)
    _, infos = _nvrtc.arginfos(call)
    assert [i.ndim for i in infos] == [1, 1, 1, 1] and all(i.c_contiguous for i in infos[:3])
    call.args = [("array", f4, (4, 3, 5, 5), (300, 100, 20, 4)), ("array", f4, (1, 3, 1, 1), (12, 4, 4, 4))]
    call.outputs_given = False
    _, infos = _nvrtc.arginfos(call)
    assert [i.ndim for i in infos] == [3, 3, 3, 3] and [i.c_contiguous for i in infos[:3]] == [True, False, True]


@pytest.mark.parametrize("require", ["0", "1"])
def test_without_nvrtc_the_compile_test_skips_or_fails_when_required(tmp_path, require):
    """With a CuPy that cannot be imported (a planted ``cupy`` package that raises ImportError), the compile tests
    skip -- and fail when ``SSAREF_REQUIRE_NVRTC=1``, so CI cannot pass by skipping them."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("raise ImportError('planted: no cupy here')\n")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)]), SSAREF_REQUIRE_NVRTC=require)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "compiles_with_nvrtc",
                        str(Path(__file__))], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    if require == "1":
        assert r.returncode == 1 and "SSAREF_REQUIRE_NVRTC=1 but NVRTC cannot be used" in r.stdout, r.stdout[-2000:]
        assert "planted: no cupy here" in r.stdout
    else:
        assert r.returncode == 0 and "2 skipped" in r.stdout, r.stdout[-2000:]
