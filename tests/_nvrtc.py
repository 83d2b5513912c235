"""Compile the engine's ``ElementwiseKernel``s as CuPy would on a GPU, without a GPU: CuPy's own source generator
(``cupy._core._kernel._get_elementwise_kernel_code``, the function ``ElementwiseKernel.__call__`` compiles) and
NVRTC (``cupy.cuda.compiler._NVRTCProgram``) with the options of ``cupy._core.core.compile_with_cache``
(``assemble_cupy_compiler_options``: CuPy's and the CUDA runtime wheel's include folders, C++17) and of
``cupy.cuda.compiler._compile_with_cache_cuda`` (``-ftz=true``, ``--device-as-default-execution-space``), for a
named architecture instead of the current device's.

The argument layouts come from the engine's real call sites: the strict stand-in records each kernel call's
dtypes, shapes and strides (``tests/_strictxp.record_kernels``) and ``arginfos`` turns them into the
``_ArgInfo``s CuPy 14's ``ElementwiseKernel.__call__`` would build: broadcasting (a broadcast input is not
C-contiguous), outputs allocated C-contiguous, ``_reduce_dims`` (all-contiguous arguments collapse to 1-d, else
mergeable axes merge and each array keeps its contiguity flag), and the trailing ``CIndexer``.

Everything CuPy-internal used here is private API of CuPy 14 (``gpu`` extra: ``cupy-cuda12x[ctk]>=14,<15``);
``load()`` checks the pieces exist and says what is missing.
"""
from __future__ import annotations

import numpy as np

ARCHS = ("compute_80", "sm_90")   # a PTX target (what a newer GPU JIT-compiles) and a cubin for Hopper
_ND, _INDEXER, _SCALAR = 1, 2, 3   # cupy/_core/_kernel.pxd's _ArgKind


class NvrtcUnavailable(RuntimeError):
    """CuPy, NVRTC or the CUDA headers cannot be loaded here (the reason is the message)."""


_STATE: dict = {}


def load():
    """``(cupy, _kernel, options)`` once CuPy imports, its major version is 14, NVRTC loads and a trivial kernel
    including CuPy's ``carray.cuh`` compiles; else ``NvrtcUnavailable`` with the reason."""
    if "error" in _STATE:
        raise NvrtcUnavailable(_STATE["error"])
    if "ok" in _STATE:
        return _STATE["ok"]
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # "nccl library could not be loaded" & co on a machine without them
            import cupy
            from cupy._core import _kernel, core
            from cupy.cuda import compiler, nvrtc
        if int(cupy.__version__.split(".")[0]) != 14:
            raise NvrtcUnavailable(f"cupy {cupy.__version__}: the compile test follows CuPy 14's code generator")
        version = nvrtc.getVersion()
        options = tuple(core.assemble_cupy_compiler_options(())) + ("-ftz=true", "--device-as-default-execution-space")
        _STATE["ok"] = (cupy, _kernel, compiler, options, version)
        probe = '#include <cupy/carray.cuh>\nextern "C" __global__ void ssaref_probe(float *x) { x[0] = 1.0f; }'
        compile_source(probe, ARCHS[0])
    except NvrtcUnavailable as exc:
        _STATE.pop("ok", None)
        _STATE["error"] = str(exc)
        raise
    except Exception as exc:   # ImportError, an NVRTC library that does not load, missing headers (CompileException)
        _STATE.pop("ok", None)
        _STATE["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        raise NvrtcUnavailable(_STATE["error"]) from None
    return _STATE["ok"]


_COMPILED: dict = {}   # (source, arch) -> (ok, log): one compile per distinct source within a run


def compile_source(source: str, arch: str):
    """Compile ``source`` for ``arch`` ("compute_XY": PTX, "sm_XY": cubin) with CuPy's options; returns the
    binary's size in bytes, raises ``cupy.cuda.compiler.CompileException`` with NVRTC's log on an error."""
    cupy, _kernel, compiler, options, _ = _STATE["ok"]
    key = (source, arch)
    if key not in _COMPILED:
        prog = compiler._NVRTCProgram(source, "kern.cu", method="ptx" if arch.startswith("compute_") else "cubin")
        try:
            binary, _ = prog.compile(options + (f"-arch={arch}",))
            _COMPILED[key] = (True, len(binary))
        except compiler.CompileException as exc:
            _COMPILED[key] = (False, exc)
    ok, value = _COMPILED[key]
    if not ok:
        raise value
    return value


# ------------------------------------------------------------------------------------------ CuPy's layouts
def _view(dtype, shape, strides):
    """A NumPy view with these shape and strides over a one-element buffer (only its flags are read)."""
    return np.lib.stride_tricks.as_strided(np.empty(1, dtype=dtype), shape=shape, strides=strides)


def _reduce_dims(arrays, shape):
    """CuPy 14's ``_reduce_dims``/``_reduced_view_core`` on metadata: ``arrays`` is a list of ``[view,
    c_contiguous]`` (``None`` for scalars), updated in place; returns the reduced loop shape."""
    ndim = len(shape)
    present = [i for i, a in enumerate(arrays) if a is not None]
    if ndim <= 1 or not arrays or not present:
        return shape
    strided = []
    for i in present:
        if not arrays[i][1]:
            if ndim == 2:      # CuPy's short cut
                return shape
            strided.append(i)
    if not strided:            # all C-contiguous: one axis of the total size
        size = int(np.prod(shape))
        for i in present:
            v = arrays[i][0]
            arrays[i][0] = _view(v.dtype, (size,), (v.dtype.itemsize,))
        return (size,)
    vecshape, axes, last = list(shape), [], -1
    for ax in range(ndim):
        if vecshape[ax] == 1:
            continue
        if last < 0:
            last = ax
            continue
        if any(arrays[i][0].strides[ax] * vecshape[ax] != arrays[i][0].strides[last] for i in strided):
            axes.append(last)
        else:
            vecshape[ax] *= vecshape[last]
        last = ax
    if last >= 0:
        axes.append(last)
    if len(axes) == ndim:
        return shape
    new_shape = tuple(vecshape[ax] for ax in axes)
    for i in present:
        v = arrays[i][0]
        arrays[i][0] = _view(v.dtype, new_shape, tuple(v.strides[ax] for ax in axes))
    return new_shape


def arginfos(call):
    """``(type_map, arginfos)`` CuPy 14 builds for the recorded ``call`` (a ``tests._strictxp.KernelCall``)."""
    cupy, _kernel, _, _, _ = _STATE["ok"]
    from cupy._core import _carray, _scalar

    ins = _kernel._get_param_info(call.in_params, True)
    outs = _kernel._get_param_info(call.out_params, False)
    arrays = [None if a[0] == "scalar" else _view(a[1], a[2], a[3]) for a in call.args]
    shape = np.broadcast_shapes(*(a.shape for a in arrays if a is not None))
    bound = {}
    for p, a in zip(ins + outs, arrays):
        if a is not None and p.dtype is None:
            bound.setdefault(p.ctype, a.dtype)
    nin = len(ins)
    slots = [None if a is None else [np.broadcast_to(a, shape) if a.shape != shape else a, None]
             for a in arrays[:nin]]
    if call.outputs_given:
        slots += [[a, None] for a in arrays[nin:]]
    else:      # CuPy allocates the outputs, C-contiguous
        slots += [[np.empty(shape, dtype=bound[p.ctype] if p.dtype is None else p.dtype), None] for p in outs]
    for s in slots:
        if s is not None:
            s[1] = bool(s[0].flags.c_contiguous)
    shape = _reduce_dims(slots, tuple(shape))
    infos = []
    for p, s in zip(ins + outs, slots):
        if s is None:
            dt = bound[p.ctype] if p.dtype is None else p.dtype
            infos.append(_kernel._ArgInfo(_SCALAR, _scalar.CScalar, np.dtype(dt), 0, True, True))
        else:
            v, contiguous = s
            big = v.size > 0 and max(abs(st) * (n - 1) for st, n in zip(v.strides, v.shape)) // v.itemsize >= 2 ** 31
            infos.append(_kernel._ArgInfo(_ND, cupy.ndarray, v.dtype, v.ndim, contiguous, not big))
    infos.append(_kernel._ArgInfo(_INDEXER, _carray.Indexer, None, len(shape), True, True))
    type_map = _kernel._TypeMap(tuple(sorted((k, np.dtype(v)) for k, v in bound.items())))
    return type_map, tuple(infos)


def kernel_source(name, in_params, out_params, operation, type_map, infos) -> str:
    """The CUDA source CuPy compiles for this kernel and these argument infos (``carray.cuh`` prepended, as
    ``compile_with_cache`` does)."""
    _, _kernel, _, _, _ = _STATE["ok"]
    params = (_kernel._get_param_info(in_params, True) + _kernel._get_param_info(out_params, False)
              + _kernel._get_param_info("CIndexer _ind", False))
    code = _kernel._get_elementwise_kernel_code(infos, type_map, params, operation, name, "")
    return "#include <cupy/carray.cuh>\n" + code


def canonical_call(kernel, dtype, ndim=1, contiguous=True, n=8):
    """A ``KernelCall``-like record for ``kernel`` with every argument an array of ``dtype`` (1-d contiguous, or
    ``ndim``-d with a transposed, non-contiguous first input), outputs given: the layouts beyond the call sites."""
    from types import SimpleNamespace

    dt = np.dtype(dtype)
    shape = (n,) * ndim
    c_strides = tuple(int(dt.itemsize * n ** (ndim - 1 - k)) for k in range(ndim))
    nin = len([p for p in kernel.in_params.split(",") if p.strip()])
    nout = len([p for p in kernel.out_params.split(",") if p.strip()])
    args = [("array", dt, shape, c_strides) for _ in range(nin + nout)]
    if not contiguous:
        args[0] = ("array", dt, shape, c_strides[::-1])
    return SimpleNamespace(name=kernel.name, in_params=kernel.in_params, out_params=kernel.out_params,
                           operation=kernel.body, args=args, outputs_given=True)
