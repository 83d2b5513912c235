"""A strict stand-in for CuPy on the CPU, for tests: GPU code paths run here with CuPy's refusals.

``StrictArray`` wraps a NumPy array without subclassing it and behaves as a ``cupy.ndarray`` does where the engine
could go wrong without noticing on NumPy:

* ``__array__`` raises ``TypeError`` (no implicit device->host conversion), and mixing with a host
  ``numpy.ndarray`` in arithmetic or a function is refused;
* reductions return 0-d arrays, never Python or NumPy scalars;
* elementwise results are C-contiguous (CuPy does not keep an input's strided layout);
* ``float``/``int``/``bool``/``item``/``tolist``/``get`` are host reads: each counts as a sync, and inside
  ``no_sync()`` raises ``SyncError``;
* host->device copies (``asarray`` of host data, a host index array) and device->host copies are counted; so are
  the "launches" (every module function or array operation: one kernel in CuPy, roughly).

``xp`` is the module: it exposes only names that CuPy 13's top-level namespace has (``CUPY13_NAMES``, a saved
list, checked against CuPy 13's saved names and the installed ``import cupy`` by the tests) and the sub-namespaces
the engine uses, ``xp.cuda`` included: a fake with CuPy's names (``runtime.getDeviceCount``, ``Device().use()``,
``Device().synchronize()``, ``Device().mem_info``, ``Stream``, ``get_current_stream``, ``Event``,
``get_elapsed_time``) whose synchronisations are counted (``COUNT.device_syncs``), so GPU-only code (the
benchmark's timers, the distributed set-up) runs in the tests.  ``record_kernels()`` records every
``ElementwiseKernel`` call (the kernel and its arguments' dtypes, shapes and strides), which the NVRTC compile test
turns into the argument layouts CuPy would compile.  ``xp.ElementwiseKernel`` *executes* a kernel body written in the
restricted C subset of ``ssaref/ops/kernels.py`` (C that is Python once the trailing ``;`` are stripped) with
NumPy, binding types and broadcasting as CuPy does, and counts one launch.  ``install()`` registers the type with
``ssaref.backend`` so ``get_array_module`` finds ``xp`` (test-only hook).
"""
from __future__ import annotations

import ast
import contextlib
import operator
import re

import numpy as np

__all__ = ["StrictArray", "xp", "COUNT", "no_sync", "SyncError", "install", "reset", "device", "record_kernels",
           "simulate_async"]


class SyncError(RuntimeError):
    """A host read (device->host synchronisation) inside ``no_sync()``."""


class _Count:
    def __init__(self):
        self.reset()

    def reset(self):
        self.syncs = self.h2d = self.d2h = self._launches = 0
        self.device_syncs = 0        # xp.cuda: Device/Stream/Event synchronize(), runtime.deviceSynchronize()
        self.sync_sites: list = []
        self.forbid = 0

    @property
    def launches(self):
        return self._launches

    @launches.setter
    def launches(self, value):   # every launch queues simulated device work (simulate_async)
        if value > self._launches:
            _ASYNC["pending"] += _ASYNC["per_launch"] * (value - self._launches)
        self._launches = value

    def snapshot(self):
        return {"syncs": self.syncs, "h2d": self.h2d, "d2h": self.d2h, "launches": self.launches,
                "device_syncs": self.device_syncs}


COUNT = _Count()


_ASYNC = {"per_launch": 0.0, "pending": 0.0}   # simulate_async(): device time per launch, and the time queued


@contextlib.contextmanager
def simulate_async(seconds_per_launch):
    """Make the stand-in behave like an asynchronous GPU: every launch queues ``seconds_per_launch`` of device
    work and returns at once; a synchronisation (``xp.cuda`` ``synchronize()``, a host read) waits (sleeps) until
    the queued work is done.  A host timer that does not synchronise then sees launches, not work."""
    _ASYNC["per_launch"], _ASYNC["pending"] = float(seconds_per_launch), 0.0
    try:
        yield
    finally:
        _ASYNC["per_launch"], _ASYNC["pending"] = 0.0, 0.0


def _drain():
    """Wait for the queued device work (simulate_async)."""
    if _ASYNC["pending"] > 0:
        import time

        time.sleep(_ASYNC["pending"])
        _ASYNC["pending"] = 0.0


def _device_sync():
    COUNT.device_syncs += 1
    _drain()


def reset():
    COUNT.reset()


@contextlib.contextmanager
def no_sync():
    """Any host read inside raises ``SyncError`` (a step that must not synchronise)."""
    COUNT.forbid += 1
    try:
        yield
    finally:
        COUNT.forbid -= 1


def _sync(what):
    if COUNT.forbid:
        raise SyncError(f"host read ({what}) inside no_sync()")
    COUNT.syncs += 1
    _drain()
    import traceback

    COUNT.sync_sites.append("".join(traceback.format_stack(limit=6)[:-2]))


_MIX = "mixing a host numpy.ndarray with a device array is not allowed (CuPy raises TypeError)"


def _un(x):
    """Unwrap arguments: device arrays to their NumPy data; host arrays refused; containers recursively."""
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(_MIX)
    if isinstance(x, (list, tuple)):
        return type(x)(_un(e) for e in x)
    return x


def _un_index(key):
    """Index keys: device arrays unwrapped; host integer/bool arrays allowed but copied to the device."""
    if isinstance(key, StrictArray):
        return key._a
    if isinstance(key, np.ndarray):
        COUNT.h2d += 1
        return key
    if isinstance(key, tuple):
        return tuple(_un_index(k) for k in key)
    if isinstance(key, list) and any(isinstance(k, (np.ndarray, StrictArray)) for k in key):
        return [_un_index(k) for k in key]
    return key


def _wrap(r, contiguous=False):
    if isinstance(r, np.ndarray):
        return StrictArray(r.copy(order="C") if contiguous and not r.flags.c_contiguous else r)
    if isinstance(r, np.generic):
        return StrictArray(np.asarray(r))   # reductions give 0-d arrays, as CuPy
    if isinstance(r, tuple):
        return tuple(_wrap(e, contiguous) for e in r)
    if isinstance(r, list):
        return [_wrap(e, contiguous) for e in r]
    return r


class StrictArray:
    """A device array of the stand-in (see the module docstring)."""

    __slots__ = ("_a",)
    __array_ufunc__ = None      # numpy's ufuncs refuse it: np.add(host, device) -> TypeError via the reflected op
    __array_priority__ = 1000

    def __init__(self, a):
        self._a = a

    # -- conversions (host reads) ------------------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def get(self, *args, **kwargs):
        _sync("get")
        COUNT.d2h += 1
        return np.array(self._a, copy=True)

    def __float__(self):
        _sync("float")
        return float(self._a)

    def __int__(self):
        _sync("int")
        return int(self._a)

    def __index__(self):
        _sync("index")
        return operator.index(self._a)

    def __bool__(self):
        _sync("bool")
        return bool(self._a)

    def item(self, *args):
        _sync("item")
        return self._a.item(*args)

    def tolist(self):
        _sync("tolist")
        return self._a.tolist()

    def __format__(self, spec):
        _sync("format")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        return f"StrictArray({self._a!r})"

    # -- metadata (no sync) ------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: StrictArray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield StrictArray(self._a[i])

    # -- indexing ----------------------------------------------------------------------------------------
    def __getitem__(self, key):
        COUNT.launches += 1
        return _wrap(self._a[_un_index(key)])

    def __setitem__(self, key, value):
        COUNT.launches += 1
        self._a[_un_index(key)] = _un(value)

    # -- methods: NumPy's, with device arguments and results ---------------------------------------------
    _REFUSED = {"tobytes", "tofile", "dump", "dumps", "ctypes", "__array_interface__", "data"}

    def __getattr__(self, name):
        if name.startswith("__") or name in StrictArray._REFUSED:   # no __array_struct__ & co: no host view
            raise AttributeError(f"StrictArray refuses {name!r} (a host view of device memory)")
        attr = getattr(self._a, name)
        if not callable(attr):
            return attr

        def method(*args, **kwargs):
            COUNT.launches += 1
            return _wrap(attr(*_un(args), **{k: _un(v) for k, v in kwargs.items()}))

        return method

    def __copy__(self):
        return StrictArray(self._a.copy())


def _binary(op, reflected=False, inplace=False):
    def f(self, other):
        COUNT.launches += 1
        o = _un(other)
        if inplace:
            op(self._a, o)
            return self
        r = op(o, self._a) if reflected else op(self._a, o)
        return _wrap(r, contiguous=True)

    return f


for _name, _op in {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
                   "floordiv": operator.floordiv, "mod": operator.mod, "pow": operator.pow,
                   "matmul": operator.matmul, "and": operator.and_, "or": operator.or_,
                   "xor": operator.xor}.items():
    setattr(StrictArray, f"__{_name}__", _binary(_op))
    setattr(StrictArray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(StrictArray, f"__i{_name}__", _binary(getattr(operator, f"i{_name}"), inplace=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(StrictArray, f"__{_name}__", _binary(getattr(operator, _name)))
for _name, _op in {"neg": operator.neg, "pos": operator.pos, "abs": operator.abs, "invert": operator.invert}.items():
    setattr(StrictArray, f"__{_name}__", (lambda op: lambda self: (setattr(COUNT, "launches", COUNT.launches + 1),
                                                                    _wrap(op(self._a), True))[1])(_op))
StrictArray.__hash__ = None


# ---------------------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------------------
# Top-level names of CuPy 13 that the stand-in exposes (the subset of CuPy 13's namespace with a NumPy
# counterpart the engine might use; a name CuPy 13 lacks must not be here).
CUPY13_NAMES = """
ElementwiseKernel
abs absolute add all allclose amax amin any arange arccos arcsin arctan arctan2 argmax argmin argsort around array
array_equal array_split asarray ascontiguousarray asfortranarray asnumpy atleast_1d atleast_2d bincount bool_
broadcast_arrays broadcast_to ceil clip concatenate copy copyto cos cosh count_nonzero cumprod cumsum diag
diag_indices diagonal diff divide dot dtype e einsum empty empty_like equal exp expand_dims expm1 eye finfo flatnonzero
flip float16 float32 float64 floor floor_divide full full_like greater greater_equal hstack identity iinfo inf
int8 int16 int32 int64 intp isclose isfinite isinf isnan kron less less_equal linspace log log1p log2 log10
logical_and logical_not logical_or logical_xor matmul max maximum mean median min minimum mod moveaxis multiply nan
nanmax nanmean nanmin nansum ndim negative newaxis nonzero not_equal ones ones_like outer pad pi power prod
ravel reciprocal remainder repeat reshape result_type rint round roll searchsorted sign signbit sin sinh sort split
sqrt square squeeze stack std subtract sum swapaxes take take_along_axis tan tanh tensordot tile trace transpose
tril triu true_divide trunc uint8 uint32 uint64 unique var vstack where zeros zeros_like
""".split()
_LINALG = "cholesky det eigh eigvalsh inv lstsq matrix_rank norm pinv qr slogdet solve svd".split()
_NOT_FUNCTIONS = {"bool_", "dtype", "e", "finfo", "float16", "float32", "float64", "iinfo", "inf", "int8", "int16",
                  "int32", "int64", "intp", "nan", "newaxis", "pi", "uint8", "uint32", "uint64"}
_FROM_HOST = {"asarray", "array"}   # take host data: a host->device copy (ascontiguousarray & co refuse it, as CuPy)


class _Namespace:
    def __init__(self, name):
        self.__name__ = name


_DEVICE_ONLY = {"ascontiguousarray", "asfortranarray"}   # CuPy's are typed: a host array or a list is a TypeError


def _function(fn, name):
    def f(*args, **kwargs):
        COUNT.launches += 1
        if name in _DEVICE_ONLY and args and not isinstance(args[0], StrictArray):
            raise TypeError(f"Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base, got "
                            f"{type(args[0]).__name__})")
        if name in _FROM_HOST and args and not isinstance(args[0], StrictArray):
            host = args[0]
            if isinstance(host, (np.ndarray, np.generic, list, tuple, int, float)):
                COUNT.h2d += 1
                return _wrap(np.array(host, dtype=kwargs.get("dtype", args[1] if len(args) > 1 else None),
                                      copy=True, order="C"))
        return _wrap(fn(*_un(args), **{k: _un(v) for k, v in kwargs.items()}),
                     contiguous=name not in ("reshape", "transpose", "ravel", "squeeze", "swapaxes", "moveaxis",
                                             "broadcast_to", "diagonal", "expand_dims"))
    f.__name__ = name
    return f


def _asnumpy(a, *args, **kwargs):
    if isinstance(a, StrictArray):
        return a.get()
    return np.asarray(a)


def _as_strided(x, shape=None, strides=None, **kwargs):
    COUNT.launches += 1
    return StrictArray(np.lib.stride_tricks.as_strided(_un(x), shape=shape, strides=strides, **kwargs))


# ---------------------------------------------------------------------------------------------------------
# ElementwiseKernel: the restricted C subset of ssaref/ops/kernels.py, executed with NumPy
# ---------------------------------------------------------------------------------------------------------
_KERNEL_FUNCS = {"sqrt": np.sqrt}
_KERNEL_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_FLOAT_TYPES = {"float16", "float32", "float64"}
_STATEMENT = re.compile(r"^(?:(?P<type>[A-Za-z_]\w*)\s+)?(?P<name>[A-Za-z_]\w*)\s*=\s*(?P<expr>[^=].*)$", re.S)


_RECORDERS: list = []   # lists that record_kernels() hands out; each ElementwiseKernel call is appended to all


@contextlib.contextmanager
def record_kernels():
    """Record every ``ElementwiseKernel`` call inside: yields a list of ``KernelCall``."""
    calls: list = []
    _RECORDERS.append(calls)
    try:
        yield calls
    finally:
        _RECORDERS.remove(calls)


class KernelCall:
    """One recorded kernel call: the kernel's definition and, per argument (inputs, then the outputs given), either
    ``("array", dtype, shape, strides)`` or ``("scalar", type name)``; ``outputs_given`` says whether CuPy allocated
    the outputs (C-contiguous, of the broadcast shape)."""

    def __init__(self, kernel, args, outputs_given):
        self.name, self.in_params, self.out_params, self.operation = (kernel.name, kernel.in_spec, kernel.out_spec,
                                                                      kernel.operation)
        self.args = [("array", a._a.dtype, a._a.shape, a._a.strides) if isinstance(a, StrictArray)
                     else ("scalar", type(a).__name__) for a in args]
        self.outputs_given = outputs_given

    def __repr__(self):
        return f"KernelCall({self.name}, {self.args})"


class KernelError(ValueError):
    """A kernel body or call outside what the stand-in (and the restricted C subset) accepts."""


def _kernel_params(spec):
    out = []
    for part in spec.split(","):
        words = part.split()
        if not words:
            continue
        if words[0] == "raw" or len(words) != 2:
            raise KernelError(f"kernel parameter {part.strip()!r}: only 'TYPE name' is supported (no raw)")
        ctype, name = words
        if name in ("i", "n") or name.startswith("_"):
            raise ValueError(f"kernel parameter name {name!r} is reserved by CuPy")
        out.append((ctype, name))
    return out


def _check_expr(node, known, where):
    """Only names, + - * /, unary minus, parentheses and calls of the allowed functions: the expressions whose
    meaning C and Python share (no literals: C reads 1.5 as a double and 1 as an int)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, _KERNEL_OPS):
        _check_expr(node.left, known, where)
        _check_expr(node.right, known, where)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        _check_expr(node.operand, known, where)
    elif isinstance(node, ast.Name):
        if node.id not in known:
            raise KernelError(f"{where}: {node.id!r} is not a parameter or an earlier local")
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _KERNEL_FUNCS
          and not node.keywords and len(node.args) == 1):
        _check_expr(node.args[0], known, where)
    else:
        raise KernelError(f"{where}: {ast.dump(node)} is outside the restricted C subset "
                          "(names, + - * /, unary -, sqrt(); no literals, comparisons or ternaries)")


class ElementwiseKernel:
    """``cupy.ElementwiseKernel`` on the stand-in: ``kernel(*inputs[, *outputs])``, one counted launch.

    As CuPy: a type placeholder (``T``) is bound by the array arguments, outputs first (every array bound to it
    must have exactly that dtype, else ``TypeError``); a Python scalar is cast to its parameter's type; array
    arguments broadcast together and given outputs must have the broadcast shape; inputs are read-only, outputs
    read-write; with the outputs omitted they are allocated (here filled with NaN, so a read before the first
    write shows).  The body is executed statement by statement with NumPy, every assignment cast to its target's
    type, so C's per-element semantics hold (one element's statements see only that element's values)."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, **kwargs):
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ValueError(f"Invalid kernel name: {name!r}")
        if preamble or kwargs:
            raise KernelError("the stand-in supports no preamble and no compile options")
        self.name, self.no_return, self.return_tuple = name, no_return, return_tuple
        self.in_spec, self.out_spec, self.operation = in_params, out_params, operation
        self.in_params, self.out_params = _kernel_params(in_params), _kernel_params(out_params)
        names = [n for _, n in self.in_params + self.out_params]
        if len(set(names)) != len(names):
            raise KernelError(f"kernel {name}: repeated parameter names {names}")
        types = {n: t for t, n in self.in_params + self.out_params}
        outputs = {n for _, n in self.out_params}
        self.statements = []                       # (target, declared type or None, compiled expression)
        text = operation.strip()
        if text and not text.endswith(";"):
            raise KernelError(f"kernel {name}: every statement ends with ';'")
        for k, raw in enumerate(s for s in text.split(";") if s.strip()):
            m = _STATEMENT.match(raw.strip())
            where = f"kernel {name}, statement {k + 1} {raw.strip()!r}"
            if m is None:
                raise KernelError(f"{where}: expected 'name = expr' or 'TYPE name = expr'")
            ctype, target, expr = m.group("type"), m.group("name"), m.group("expr")
            if ctype is not None:                  # a local declaration
                if target in types:
                    raise KernelError(f"{where}: {target!r} is already declared")
                types[target] = ctype
            elif target not in outputs:
                raise KernelError(f"{where}: assigns {target!r}, which is not an output or a local "
                                  "(inputs are const)")
            try:
                tree = ast.parse(expr.strip(), mode="eval")
            except SyntaxError as exc:
                raise KernelError(f"{where}: {exc}") from None
            _check_expr(tree.body, set(types) if ctype is None else set(types) - {target}, where)
            self.statements.append((target, ctype, compile(tree, f"<{name}>", "eval")))
        self.types = types

    def __call__(self, *args, **kwargs):
        COUNT.launches += 1
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        nin, nout = len(self.in_params), len(self.out_params)
        if len(args) not in (nin, nin + nout):
            raise TypeError(f"Wrong number of arguments for {self.name!r}. It must be either {nin} or "
                            f"{nin + nout} (with outputs), but given {len(args)}.")
        ins, outs = args[:nin], args[nin:]
        for a in args:
            if isinstance(a, np.ndarray):
                raise TypeError(_MIX)
        if any(not isinstance(o, StrictArray) for o in outs):
            raise TypeError("Output arguments type must be cupy.ndarray")
        bound: dict = {}

        def bind(ctype, pname, dtype):
            if ctype in _FLOAT_TYPES or ctype in ("int8", "int32", "int64", "bool"):
                if np.dtype(dtype) != np.dtype(ctype):
                    raise TypeError(f"Type is mismatched. {pname} {dtype} {ctype}")
            elif ctype in bound:
                if np.dtype(bound[ctype]) != np.dtype(dtype):
                    raise TypeError(f"Type is mismatched. {pname} {dtype} {bound[ctype]} {ctype}")
            else:
                bound[ctype] = np.dtype(dtype)

        for (ctype, pname), o in zip(self.out_params, outs):
            bind(ctype, pname, o.dtype)
        for (ctype, pname), a in zip(self.in_params, ins):
            if isinstance(a, StrictArray):
                bind(ctype, pname, a.dtype)

        def dtype_of(ctype):
            t = np.dtype(ctype) if ctype in _FLOAT_TYPES else bound.get(ctype)
            if t is None:
                raise TypeError(f"kernel {self.name}: type {ctype!r} is not bound by any array argument")
            if t.kind != "f":
                raise KernelError(f"kernel {self.name}: type {ctype!r} is {t}; the restricted subset is float only")
            return t

        arrays = [a._a for a in list(ins) + list(outs) if isinstance(a, StrictArray)]
        if not arrays:
            raise ValueError("Loop size is undecided.")
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        if any(o.shape != shape for o in outs):
            raise ValueError("Out shape is mismatched")
        for calls in _RECORDERS:
            calls.append(KernelCall(self, args, bool(outs)))
        env: dict = dict(_KERNEL_FUNCS)
        for (ctype, pname), a in zip(self.in_params, ins):
            t = dtype_of(ctype)
            if isinstance(a, StrictArray):
                env[pname] = a._a
            elif isinstance(a, (bool, int, float, np.generic)):
                env[pname] = t.type(a)
            else:
                raise TypeError(f"kernel {self.name}: unsupported argument {type(a).__name__} for {pname!r}")
        if outs:
            out_arrays = [o._a for o in outs]
        else:
            out_arrays = [np.full(shape, np.nan, dtype=dtype_of(ctype)) for ctype, _ in self.out_params]
        for (ctype, pname), o in zip(self.out_params, out_arrays):
            env[pname] = np.broadcast_to(o, shape).copy()     # read-write: the element's current value
        with np.errstate(all="ignore"):                       # a GPU computes inf/nan silently
            for target, _, code in self.statements:
                value = eval(code, {"__builtins__": {}}, env)
                env[target] = np.asarray(value, dtype=dtype_of(self.types[target]))
        for (_, pname), o in zip(self.out_params, out_arrays):
            o[...] = env[pname]
        result = list(outs) if outs else [StrictArray(o) for o in out_arrays]
        if self.no_return:
            return None
        return result[0] if nout == 1 and not self.return_tuple else tuple(result)


# ---------------------------------------------------------------------------------------------------------
# xp.cuda: a fake device whose synchronisations are counted
# ---------------------------------------------------------------------------------------------------------
class _Event:
    """``cupy.cuda.Event``: ``record()`` notes the host time (the stand-in runs every launch at once, so the host
    time at the record is when the work before it finished); ``synchronize()`` counts a device sync."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.time = None

    def record(self, stream=None):
        import time

        self.time = time.perf_counter() + _ASYNC["pending"]   # when the queued work will have finished

    def synchronize(self):
        _device_sync()

    @property
    def done(self):
        return True


class _Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptr=None):
        self.ptr = 0 if null else 1

    def synchronize(self):
        _device_sync()

    def record(self, event=None):
        event = _Event() if event is None else event
        event.record(self)
        return event

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_Stream.null = _Stream(null=True)


class _Device:
    """``cupy.cuda.Device(id)``: one device (id 0) with 16 GiB, of which 12 GiB free."""

    count = 1

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if not 0 <= self.id < _Device.count:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")

    def use(self):
        _CUDA_STATE["device"] = self.id

    def synchronize(self):
        _device_sync()

    @property
    def mem_info(self):
        return (12 << 30, 16 << 30)

    compute_capability = "90"

    def __enter__(self):
        self.use()
        return self

    def __exit__(self, *exc):
        return False


_CUDA_STATE = {"device": 0}


def _build_cuda():
    cuda = _Namespace("strictxp.cuda")
    cuda.Device, cuda.Stream, cuda.Event = _Device, _Stream, _Event
    cuda.get_current_stream = lambda device=None: _Stream.null
    cuda.get_elapsed_time = lambda start, end: 1e3 * (end.time - start.time)
    cuda.runtime = _Namespace("strictxp.cuda.runtime")
    cuda.runtime.getDeviceCount = lambda: _Device.count
    cuda.runtime.getDevice = lambda: _CUDA_STATE["device"]

    def device_synchronize():
        _device_sync()

    cuda.runtime.deviceSynchronize = device_synchronize
    return cuda


def _build():
    mod = _Namespace("strictxp")
    for name in CUPY13_NAMES:
        if name == "asnumpy":
            mod.asnumpy = _asnumpy
            continue
        if name == "ElementwiseKernel":
            mod.ElementwiseKernel = ElementwiseKernel
            continue
        obj = getattr(np, name)
        setattr(mod, name, obj if name in _NOT_FUNCTIONS else _function(obj, name))
    mod.ndarray = StrictArray
    mod.linalg = _Namespace("strictxp.linalg")
    for name in _LINALG:
        setattr(mod.linalg, name, _function(getattr(np.linalg, name), f"linalg.{name}"))
    mod.lib = _Namespace("strictxp.lib")
    mod.lib.stride_tricks = _Namespace("strictxp.lib.stride_tricks")
    mod.lib.stride_tricks.as_strided = _as_strided
    mod.cuda = _build_cuda()
    mod.cublas = _Namespace("strictxp.cublas")   # cupy.cublas (imported as a submodule by linalg.gram)
    mod.cublas.syrk = _syrk
    return mod


def _syrk(trans, a, out=None, alpha=1.0, beta=0.0, lower=False):
    """``cupy.cublas.syrk``: ``alpha op(a) op(a)^T`` with op = transpose for "T", in Fortran order, only the upper
    (or ``lower``) triangle written -- the other one is zeros, as cuBLAS leaves it in a fresh output."""
    if out is not None or beta != 0.0:
        raise NotImplementedError("stand-in syrk: out= and beta are not modelled")
    COUNT.launches += 1
    A = _un(a)
    C = alpha * (A.T @ A if trans in ("T", "t") else A @ A.T)
    C = np.tril(C) if lower else np.triu(C)
    return StrictArray(np.asfortranarray(C))


xp = _build()


def device(a, dtype=None):
    """A host array placed on the stand-in device (a counted host->device copy)."""
    return xp.asarray(a, dtype=dtype) if dtype is not None else xp.asarray(a)


def install():
    """Register the stand-in with ``ssaref.backend`` (test-only hook); idempotent."""
    from ssaref import backend

    backend.register_array_module(StrictArray, xp)
    return xp
