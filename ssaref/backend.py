"""Array-module handle shared by CPU (NumPy) and GPU (CuPy).

Every op, layer and rule receives arrays and asks ``get_array_module(*arrays)``
for the module that owns them, so one code path serves both devices.  CuPy is
imported inside a guard: a machine without it never touches it.

Host <-> device copies happen only at the edges: ``to_device`` when a batch or
an initial parameter enters the engine, ``asnumpy`` when a metric, a checkpoint
or a golden vector leaves it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BackendError",
    "cupy_available",
    "resolve_backend",
    "get_array_module",
    "asnumpy",
    "to_device",
    "default_rng",
    "parse_dtype",
    "register_array_module",
]


class BackendError(RuntimeError):
    """Raised when a requested array backend cannot be used."""


_CUPY = None
_CUPY_ERROR: str | None = None
_CUPY_DEVICE_SEEN = False  # CuPy imported and counted a device, but the probe kernel failed
_AUTO_NOTED = False


def _probe_kernel(cupy) -> None:
    """Compile and run a tiny ``ElementwiseKernel`` (NVRTC, the CUDA headers, a launch) and read its result back:
    what every fused kernel of the engine needs.  Raises what CuPy raises (``CompileException``, a missing NVRTC
    library or header, a CUDA error) or ``RuntimeError`` for a wrong value."""
    from .ops.kernels import PROBE

    square = cupy.ElementwiseKernel(PROBE.in_params, PROBE.out_params, PROBE.body, PROBE.name)
    out = square(cupy.arange(4, dtype=cupy.float32))
    value = float(out[3])
    if value != 9.0:
        raise RuntimeError(f"the probe kernel computed 3 * 3 = {value}")


def _first_line(exc) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _try_cupy():
    """Import cupy once, count the devices and compile a probe kernel; remember why it failed so the error can say
    so."""
    global _CUPY, _CUPY_ERROR, _CUPY_DEVICE_SEEN
    if _CUPY is None and _CUPY_ERROR is None:
        try:
            import cupy  # noqa: F401  (guarded: optional dependency)

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device visible")
        except Exception as exc:  # ImportError, CUDARuntimeError, ...
            _CUPY_ERROR = _first_line(exc)
            return None
        try:
            _probe_kernel(cupy)
        except Exception as exc:  # CompileException, a missing libnvrtc or cuda_runtime.h, CUDARuntimeError, ...
            _CUPY_DEVICE_SEEN = True
            _CUPY_ERROR = (
                f"a CUDA device is visible but CuPy cannot compile and run a kernel ({_first_line(exc)}); "
                "the gpu extra brings NVRTC and the CUDA headers: pip install '.[gpu]'"
            )
            return None
        _CUPY = cupy
    return _CUPY


def cupy_available() -> bool:
    """True when cupy imports, at least one CUDA device is visible and a probe kernel compiles and runs."""
    return _try_cupy() is not None


def resolve_backend(name: str = "auto"):
    """Return the array module for ``name`` in {'auto', 'numpy', 'cupy'}.

    'auto' picks cupy when a usable GPU is present (a device is counted and a probe kernel compiles and runs),
    else numpy; when a device is visible but the probe fails it says so in one line on stderr (once).
    """
    global _AUTO_NOTED
    if name == "numpy":
        return np
    if name == "cupy":
        cp = _try_cupy()
        if cp is None:
            raise BackendError(
                "backend 'cupy' requested but cupy is not usable "
                f"({_CUPY_ERROR}); install the gpu extra (pip install '.[gpu]') "
                "on a machine with a CUDA GPU, or use --backend numpy"
            )
        return cp
    if name == "auto":
        cp = _try_cupy()
        if cp is None and _CUPY_DEVICE_SEEN and not _AUTO_NOTED:
            import sys

            _AUTO_NOTED = True
            print(f"note: --backend auto uses numpy: {_CUPY_ERROR}", file=sys.stderr, flush=True)
        return cp if cp is not None else np
    raise BackendError(f"unknown backend {name!r}; choose one of auto, numpy, cupy")


def get_array_module(*arrays):
    """The array module (numpy or cupy) owning ``arrays``; refuses a mix.

    ``None`` entries and Python scalars are ignored.
    """
    found = None
    for a in arrays:
        if a is None or isinstance(a, (int, float, bool, np.generic)):
            continue
        mod = np if isinstance(a, np.ndarray) else _module_of_foreign(a)
        if found is None:
            found = mod
        elif mod is not found:
            raise BackendError(f"arrays from different libraries mixed: {found.__name__} and {mod.__name__}")
    return np if found is None else found


_REGISTERED: dict = {}  # array type -> module, for test stand-ins of a device (tests/_strictxp.py)


def register_array_module(array_type, module) -> None:
    """Make ``get_array_module`` answer ``module`` for arrays of ``array_type`` (used by the tests' strict CuPy
    stand-in; the engine itself registers nothing)."""
    _REGISTERED[array_type] = module


def _module_of_foreign(a):
    mod = _REGISTERED.get(type(a))
    if mod is not None:
        return mod
    cp = _CUPY if _CUPY is not None else _try_cupy()
    if cp is not None and isinstance(a, cp.ndarray):
        return cp
    raise BackendError(f"unsupported array type {type(a).__name__}")


def asnumpy(a):
    """Copy to host (no-op for NumPy arrays and scalars)."""
    if isinstance(a, np.ndarray) or a is None:
        return a
    if isinstance(a, (int, float, bool, np.generic)):
        return np.asarray(a)
    return a.get()


def to_device(a, xp):
    """Place a host array on the device of ``xp`` (no copy for numpy)."""
    if xp is np:
        return np.asarray(a)
    return xp.asarray(a)


def default_rng(xp, seed):
    """A seeded generator of the backend's own kind (``xp.random.default_rng``)."""
    return xp.random.default_rng(seed)


_DTYPES = {"float32": np.float32, "float64": np.float64}


def parse_dtype(name) -> np.dtype:
    """'float32' (training default) or 'float64' (checks); anything else is refused."""
    if isinstance(name, np.dtype) or name in (np.float32, np.float64):
        return np.dtype(name)
    if name not in _DTYPES:
        raise BackendError(f"unknown dtype {name!r}; choose float32 or float64")
    return np.dtype(_DTYPES[name])


def keep_large_allocations() -> bool:
    """Ask glibc's malloc to recycle large blocks instead of mapping fresh pages for each one.

    By default glibc serves every array above a (dynamic, at most 32 MiB) threshold with a new ``mmap``
    and returns it to the kernel when freed, so a training step that allocates the same big activations
    each time pays page faults for all of them again (7-15 % of a conv step on 2 cores).  Raising the
    mmap and trim thresholds keeps those blocks in the heap for reuse, which is what PyTorch's caching
    allocator achieves.  Process-wide, so only the entry points (``train``, ``bench``) call it; a no-op
    (returns False) where glibc's ``mallopt`` is not available.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1  # 1 GiB: the largest value glibc accepts on 64-bit
    ok = (mallopt(M_TRIM_THRESHOLD, 1 << 31) == 1) and ok
    return bool(ok)
