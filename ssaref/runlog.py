"""The ssaref run file: one HDF5 file holding a run's config, its metrics and its latest checkpoint.

Layout (``schema = "ssaref-run/1"``)::

    /                 attrs: schema, ssaref_version, config (JSON of the full config),
                             plus every scalar config entry as its own attribute (nested dicts flattened
                             with '.', e.g. "optim.lr"; None values and the reserved names above skipped)
    /metrics          one dataset per metric, stacked on axis 0: per-epoch scalars -> (E,),
                      per-epoch arrays of shape S -> (E, *S)
    /checkpoint       attrs: epoch, step and every other scalar/str entry (model, method, ...)
        /params       one dataset per key (keys like "4.conv1.W")
        /buffers      "
        /optimizer    "  (keys like "m/0.W"; Python int/float/bool values come back as such)
        /rule_state   "
        /<other>      any other dict of arrays in the checkpoint, likewise
        /rng          attr "state": JSON of a NumPy ``bit_generator.state`` (arrays inside, as MT19937's
                      key, are encoded as {"__ndarray__": list, "dtype": str} and decoded back)

Dataset names are the keys with '%' and '/' percent-encoded (and "." / ".." fully encoded), since '/' is
HDF5's path separator; reading decodes them back.  Groups keep insertion order.

A CuPy generator's state lives on the device and has no JSON form; a caller on the GPU keeps its random
stream on the host (``numpy.random.Generator``, as ``ssaref.train`` does) or stores whatever JSON-expressible
description (seed, draw count) it can re-create the stream from; ``write_run`` refuses anything else.

``write_run`` is atomic: it builds the file's bytes in memory, checks the device has room for them, writes them
to a temporary file in the target folder with plain ``os.write`` (a full disk is one ``OSError``), fsyncs it and
``os.replace``s it over ``path``; on any error the temporary file is removed and an existing ``path`` is left as
it was.  SIGINT and SIGTERM are held back meanwhile (``atomic.deferred_signals``) and acted on after it.

``read_run`` is the one reader: every object is checked against this layout (groups, datasets, real-number
dtypes, the model's arrays floating point, sizes against the file's before reading, finiteness of the
checkpoint's arrays, epoch/step non-negative integers, the random state, the ranks of the metrics the tools
read: ``SCALAR_METRICS`` (E,), ``LAYER_METRICS`` and ``svd_*`` rows (E, L)); the checks that need the model are
``ssaref.train``'s (shapes, buffers, optimiser and rule state).
"""

from __future__ import annotations

import contextlib
import errno
import json
import numbers
import os
import re
import shutil

import h5py
import numpy as np

from .atomic import atomic_path, deferred_signals, write_all

__all__ = [
    "RunFileError",
    "SCHEMA",
    "write_run",
    "read_run",
    "generator_from_state",
    "RunLock",
    "remove_stale_temporaries",
]

SCHEMA = "ssaref-run/1"
_RESERVED = ("schema", "ssaref_version", "config")
_PYTYPE = "pytype"  # dataset attr marking a Python scalar stored as a 0-d dataset

# metrics the tools read, with the ranks the schema gives them: one value per epoch -> (E,); one value per layer
# per epoch -> (E, L), L the length of the config's column list named here (``svd_*`` rows: "svd_layers")
SCALAR_METRICS = frozenset(
    {
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "seconds",
        "lr",
        "svd_total_params",
        "svd_total_flops",
        "svd_rank_ok_all",
    }
)
LAYER_METRICS = {
    f"align.{k}": "align_layers" for k in ("grad_mean", "grad_std", "grad_frac_gt90", "signal_mean", "signal_std")
}
_FLOAT_GROUPS = ("params", "buffers")  # checkpoint groups whose arrays are floating point (the model's)
_ARRAY_GROUPS = ("params", "buffers", "optimizer", "rule_state")  # and every array of these is finite


class RunFileError(ValueError):
    """A run file is missing, unreadable, not an ssaref run, or cannot be written from the given data."""


def _version() -> str:
    try:
        from . import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - namespace-package checkout
        try:
            from importlib.metadata import version

            return version("ssaref")
        except Exception:
            return "unknown"


# ----------------------------------------------------------------------------------------------------
# key encoding
# ----------------------------------------------------------------------------------------------------
def _encode_key(key: str) -> str:
    """Dataset name for ``key``: '%' -> '%25', '/' -> '%2F'; "." and ".." fully encoded."""
    if not isinstance(key, str) or key == "":
        raise RunFileError(f"keys must be non-empty strings, got {key!r}")
    name = key.replace("%", "%25").replace("/", "%2F")
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    return name


_ESCAPE = re.compile(r"%(25|2F|2E)")
_DECODED = {"25": "%", "2F": "/", "2E": "."}


def _decode_key(name: str) -> str:
    return _ESCAPE.sub(lambda m: _DECODED[m.group(1)], name)


# ----------------------------------------------------------------------------------------------------
# JSON with arrays (config, rng state)
# ----------------------------------------------------------------------------------------------------
def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "__cuda_array_interface__"):
        raise TypeError(f"device array {type(obj).__name__} (convert with ssaref.backend.asnumpy first)")
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _json_hook(d):
    if "__ndarray__" in d and "dtype" in d:
        return np.asarray(d["__ndarray__"], dtype=np.dtype(d["dtype"])).reshape(d.get("shape", -1))
    return d


def _dumps(obj, what, path):
    try:
        return json.dumps(obj, default=_json_default, sort_keys=False, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise RunFileError(f"{path}: cannot store {what} as JSON: {exc}") from None


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------
def _is_scalar(v) -> bool:
    return isinstance(v, (str, bool, numbers.Number, np.generic)) and not isinstance(v, complex)


def _flat_scalars(d, prefix=""):
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flat_scalars(v, name + ".")
        elif v is not None and _is_scalar(v):
            yield name, v


def _host_array(v, what, path):
    if isinstance(v, np.ndarray):
        arr = v
    elif hasattr(v, "__cuda_array_interface__") and hasattr(v, "get"):
        arr = v.get()  # a CuPy array slipped through: copy to host
    elif _is_scalar(v) and not isinstance(v, str):
        arr = np.asarray(v)
    else:
        raise RunFileError(f"{path}: {what} must be an array or a number, got {type(v).__name__}")
    if arr.dtype.kind not in "biuf":
        raise RunFileError(f"{path}: {what} has unsupported dtype {arr.dtype}")
    return arr


def _write_dataset(group, key, value, what, path):
    """One dataset per key; a Python int/float/bool gets a ``pytype`` attr so it reads back as one."""
    arr = _host_array(value, what, path)
    ds = group.create_dataset(_encode_key(key), data=arr)
    if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
        ds.attrs[_PYTYPE] = type(value).__name__
    return ds


def _stack_metric(name, values, path):
    if isinstance(values, np.ndarray):
        arr = values
    else:
        try:
            values = list(values)
        except TypeError:
            raise RunFileError(f"{path}: metric {name!r} must be a list, got {type(values).__name__}") from None
        if not values:
            return np.zeros((0,), dtype=np.float64)
        items = [_host_array(v, f"metric {name!r} entry {i}", path) for i, v in enumerate(values)]
        shapes = {a.shape for a in items}
        if len(shapes) != 1:
            raise RunFileError(f"{path}: metric {name!r} mixes entry shapes {sorted(shapes)}")
        arr = np.stack(items)
    if arr.dtype.kind not in "biuf":
        raise RunFileError(f"{path}: metric {name!r} has unsupported dtype {arr.dtype}")
    return arr


def _set_attr(obj, name, value, path):
    if isinstance(value, np.generic):
        value = value.item()
    try:
        obj.attrs[name] = value
    except (TypeError, ValueError, OverflowError) as exc:
        raise RunFileError(f"{path}: cannot store attribute {name!r} = {value!r}: {exc}") from None


def _write_contents(f, path, config, metrics, checkpoint):
    f.attrs["schema"] = SCHEMA
    f.attrs["ssaref_version"] = _version()
    f.attrs["config"] = _dumps(config, "config", path)
    for name, v in _flat_scalars(config):
        if name not in _RESERVED:
            _set_attr(f, name, v, path)

    g = f.create_group("metrics", track_order=True)
    for name, values in metrics.items():
        g.create_dataset(_encode_key(name), data=_stack_metric(name, values, path))

    if checkpoint is None:
        return
    if not isinstance(checkpoint, dict):
        raise RunFileError(f"{path}: checkpoint must be a dict or None, got {type(checkpoint).__name__}")
    for req in ("epoch", "step"):
        if req not in checkpoint:
            raise RunFileError(f"{path}: checkpoint lacks {req!r}")
    ck = f.create_group("checkpoint", track_order=True)
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise RunFileError(f"{path}: checkpoint entry names must be non-empty strings without '/', got {key!r}")
        if key == "rng":
            rg = ck.create_group("rng")
            rg.attrs["state"] = _dumps(value, "checkpoint rng state", path)
        elif isinstance(value, dict):
            sub = ck.create_group(key, track_order=True)
            for k, v in value.items():
                if isinstance(v, dict):
                    raise RunFileError(f"{path}: checkpoint {key}[{k!r}] is a nested dict; keys must be flat")
                _write_dataset(sub, k, v, f"checkpoint {key}[{k!r}]", path)
        elif _is_scalar(value):
            _set_attr(ck, key, value, path)
        else:
            raise RunFileError(
                f"{path}: checkpoint entry {key!r} must be a scalar, a str or a dict of arrays, "
                f"got {type(value).__name__}"
            )


def _hdf5_image(path, config, metrics, checkpoint) -> bytes:
    """The run file's bytes, built in memory (HDF5's ``core`` driver without a backing file): the HDF5 library
    never writes to the disk, so a full disk cannot fail inside it (where h5py's finalisers print pages of
    "Exception ignored" and may crash the process); every h5py object is closed when this returns."""
    name = f"ssaref-run-image-{os.getpid()}-{id(config)}"
    f = h5py.File(name, "w", driver="core", backing_store=False, block_size=1 << 24, track_order=True)
    try:
        _write_contents(f, path, config, metrics, checkpoint)
        f.flush()
        return f.id.get_file_image()
    finally:
        f.close()


def _check_free_space(folder, need, path):
    """Refuse a write of ``need`` bytes into ``folder`` that its device has no room for (``OSError`` ENOSPC)."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"{path}: no space left on the device of {folder} for the run file (needs {need} bytes, {free} free)",
        )


def write_run(path, *, config: dict, metrics: dict, checkpoint: dict | None) -> None:
    """Write (atomically replace) the run file ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; its folder must exist.
    config : dict
        Full run configuration (JSON-serialisable; NumPy scalars and arrays allowed).
    metrics : dict[str, list]
        Per-epoch values: a list of scalars (stored as (E,)) or of equal-shape arrays ``S`` (stored as (E, *S)).
    checkpoint : dict or None
        ``{"epoch": int, "step": int, "params": {key: array}, "buffers": {...}, "optimizer": {...},
        "rule_state": {...}, "rng": bit_generator.state, other scalar/str entries}``; host NumPy arrays.

    Raises
    ------
    RunFileError
        Bad input (message names the offending entry) or a folder that does not exist.
    """
    path = os.fspath(path)
    if not isinstance(config, dict):
        raise RunFileError(f"{path}: config must be a dict, got {type(config).__name__}")
    if not isinstance(metrics, dict):
        raise RunFileError(f"{path}: metrics must be a dict, got {type(metrics).__name__}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RunFileError(f"{path}: folder {folder} does not exist")
    with deferred_signals():  # Ctrl-C or SIGTERM now is acted on once the new file is in place (or the write failed)
        try:
            image = _hdf5_image(path, config, metrics, checkpoint)
        except OSError as exc:  # HDF5 (in memory) could not build it: one error naming the run file
            raise OSError(exc.errno, f"{path}: cannot build the run file ({exc.strerror or exc})") from None
        _check_free_space(folder, len(image) + 65536, path)  # a full disk fails here, cleanly, before any write
        lock = _HELD.get(os.path.abspath(path))
        previous = None
        try:
            with atomic_path(path, durable=True) as tmp:
                write_all(tmp, image, path)
                if lock is not None:  # the lock moves onto the new file before it takes the name, and the old
                    previous = lock._hold_file(tmp, keep_previous=True)  # version's is let go only after that
        except BaseException:
            if lock is not None and previous is not None:  # the old version kept its name: it keeps the lock
                lock._file_fd, previous = previous, lock._file_fd
            raise
        finally:
            if previous is not None:
                os.close(previous)


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return v


def _read_dataset(ds):
    data = ds[()]
    kind = ds.attrs.get(_PYTYPE)
    if kind is not None:
        kind = _py(kind)
        return {"int": int, "float": float, "bool": bool}[kind](data)
    return np.asarray(data) if not isinstance(data, np.ndarray) else data


def read_run(path):
    """Read a run file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    config : dict
    metrics : dict[str, np.ndarray]
        Each of shape (E,) or (E, *S).
    checkpoint : dict or None
        As given to ``write_run`` (arrays as NumPy arrays, attributes as Python scalars, ``rng`` as a dict).

    Raises
    ------
    RunFileError
        ``path`` is missing, not an HDF5 file, or not an ssaref run (schema absent or different).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RunFileError(f"run file {path} does not exist")
    if not os.path.isfile(path):
        raise RunFileError(f"run file {path} is not a regular file")
    try:
        is_h5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise RunFileError(f"run file {path} cannot be read: {exc}") from None
    if not is_h5:
        raise RunFileError(f"run file {path} is not an HDF5 file")
    try:
        with deferred_signals(), h5py.File(path, "r") as f:  # Ctrl-C never lands in an h5py finaliser
            return _read_contents(f, path)
    except RunFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise RunFileError(f"run file {path} is damaged or unreadable: {type(exc).__name__}: {exc}") from None


def _member(parent, name, want, path):
    """``parent[name]`` when it is a ``want`` (``h5py.Group`` or ``h5py.Dataset``); a RunFileError naming the
    object and the file otherwise (a crafted file may hold a dataset where the schema has a group)."""
    obj = parent[name]
    if not isinstance(obj, want):
        kind = "group" if isinstance(obj, h5py.Group) else "dataset" if isinstance(obj, h5py.Dataset) else "datatype"
        need = "group" if want is h5py.Group else "dataset"
        raise RunFileError(f"run file {path} is damaged: {obj.name} is a {kind}, the schema has a {need} there")
    return obj


def _damaged(path, what):
    return RunFileError(f"run file {path} is damaged: {what}")


def _numeric(ds, path, limit, kinds="biuf"):
    """A dataset's data, refused unless it is a real number array (bool, int, uint or float; ``kinds``) whose
    declared size fits in the file (``limit`` bytes: ssaref stores every array uncompressed, so a larger one is
    crafted), checked before anything is allocated."""
    if ds.dtype.kind not in kinds:
        want = "a real number type" + {"f": " of floating point", "iuf": " (int or float)"}.get(kinds, "")
        raise _damaged(path, f"{ds.name} has dtype {ds.dtype}, not {want}")
    if ds.shape is None:
        raise _damaged(path, f"{ds.name} has no data (an empty dataspace)")
    nbytes = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
    if nbytes > limit:
        raise _damaged(
            path, f"{ds.name} declares shape {ds.shape} ({nbytes} bytes), more than the whole file ({limit} bytes)"
        )
    return _read_dataset(ds)


def _check_metrics(metrics, config, path):
    """Ranks of the metrics against the schema: every metric is stacked on an epoch axis; the per-epoch scalars
    are (E,), the per-layer rows (E, L) with L the length of the config's column list."""
    for attr in ("svd_layers", "align_layers"):
        cols = config.get(attr)
        if cols is not None and not (isinstance(cols, list) and all(isinstance(c, str) for c in cols)):
            raise _damaged(path, f"its config's {attr} is {cols!r}, not a list of layer names")
    for name, arr in metrics.items():
        where = f"/metrics/{_encode_key(name)}"
        if arr.ndim == 0:
            raise _damaged(path, f"{where} is 0-d; a metric holds one entry per epoch (axis 0)")
        columns = LAYER_METRICS.get(name, "svd_layers" if name.startswith("svd_") else None)
        if name in SCALAR_METRICS and arr.ndim != 1:
            raise _damaged(path, f"{where} has shape {arr.shape}; a per-epoch value is stored as (epochs,)")
        if name not in SCALAR_METRICS and columns is not None:
            cols = config.get(columns)
            if arr.ndim != 2 or (cols is not None and arr.shape[1] != len(cols)):
                want = f"(epochs, {len(cols)})" if cols is not None else "(epochs, layers)"
                raise _damaged(
                    path,
                    f"{where} has shape {arr.shape}; a per-layer value is stored as {want}"
                    + (f" (the config's {columns} names {len(cols)} layers)" if cols is not None else ""),
                )


def _check_checkpoint(ck, path):
    """The checkpoint's scalars and arrays against the schema: epoch and step non-negative integers, model/method/
    dataset strings, the model's arrays floating point, every array finite (``ssaref.train`` writes a checkpoint
    only when all are), the random state one NumPy can continue."""
    for key in ("epoch", "step"):
        v = ck.get(key)
        if key in ck and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise _damaged(path, f"/checkpoint attribute {key} = {v!r} is not a non-negative integer")
    for key in ("model", "method", "dataset"):
        if key in ck and not isinstance(ck[key], str):
            raise _damaged(path, f"/checkpoint attribute {key} = {ck[key]!r} is not a string")
    for group in _ARRAY_GROUPS:
        for k, v in (ck.get(group) or {}).items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
                raise _damaged(
                    path,
                    f"/checkpoint/{group}/{_encode_key(k)} holds NaN or inf (a checkpoint is "
                    f"written only when every value is finite)",
                )
    if "rng" in ck:
        try:
            generator_from_state(ck["rng"])
        except RunFileError as exc:
            raise _damaged(path, f"/checkpoint/rng state: {exc}") from None


def _read_contents(f, path):
    """The one reader of a run file's layout: every object checked against the schema (module docstring)."""
    limit = os.path.getsize(path)
    schema = _py(f.attrs.get("schema"))
    if schema is None:
        raise RunFileError(f"run file {path} is not an ssaref run (HDF5 without a 'schema' attribute)")
    if schema != SCHEMA:
        raise RunFileError(f"run file {path} has schema {schema!r}, expected {SCHEMA!r}")
    raw = _py(f.attrs.get("config", "{}"))
    if not isinstance(raw, str):
        raise RunFileError(f"run file {path} is damaged: its 'config' attribute is not a string")
    try:
        config = json.loads(raw, object_hook=_json_hook)
    except json.JSONDecodeError as exc:
        raise RunFileError(f"run file {path} holds a config that is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise RunFileError(f"run file {path} is damaged: its config is JSON {raw[:40]!r}, not an object")
    metrics = {}
    if "metrics" in f:
        g = _member(f, "metrics", h5py.Group, path)
        for name in g:
            metrics[_decode_key(name)] = np.asarray(_numeric(_member(g, name, h5py.Dataset, path), path, limit))
    _check_metrics(metrics, config, path)
    checkpoint = None
    if "checkpoint" in f:
        ck = _member(f, "checkpoint", h5py.Group, path)
        checkpoint = {k: _py(v) for k, v in ck.attrs.items()}
        for name in ck:
            obj = _member(ck, name, h5py.Group, path)
            if name == "rng":
                if "state" not in obj.attrs:
                    raise RunFileError(f"run file {path} is damaged: {obj.name} lacks its 'state' attribute")
                state = json.loads(_py(obj.attrs["state"]), object_hook=_json_hook)
                if not isinstance(state, dict):
                    raise RunFileError(f"run file {path} is damaged: {obj.name} state is not a JSON object")
                checkpoint["rng"] = state
            else:
                kinds = "f" if name in _FLOAT_GROUPS else "iuf" if name in _ARRAY_GROUPS else "biuf"
                checkpoint[name] = {
                    _decode_key(k): _numeric(_member(obj, k, h5py.Dataset, path), path, limit, kinds) for k in obj
                }
        _check_checkpoint(checkpoint, path)
    return config, metrics, checkpoint


def generator_from_state(state: dict) -> np.random.Generator:
    """A ``numpy.random.Generator`` continuing exactly from ``state`` (a ``bit_generator.state`` dict)."""
    try:
        name = state["bit_generator"]
        bg_cls = getattr(np.random, name) if isinstance(name, str) else None
        if not (isinstance(bg_cls, type) and issubclass(bg_cls, np.random.BitGenerator)):
            raise ValueError(f"{name!r} is not a NumPy bit generator")
        bg = bg_cls()
        bg.state = state  # PCG64: state and increment must fit 128 unsigned bits (OverflowError otherwise)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
        raise RunFileError(f"not a NumPy bit generator state ({type(exc).__name__}: {exc})") from None
    return np.random.Generator(bg)


# ----------------------------------------------------------------------------------------------------
# one writer per run file
# ----------------------------------------------------------------------------------------------------
_HELD: dict = {}  # absolute path of a run file -> the RunLock this process holds on it (write_run moves it)


def _ofd_lock(path, *, keep):
    """An exclusive open-file-description lock (``F_OFD_SETLK``) on the whole of ``path``: the open fd when
    ``keep`` (the caller holds the lock), else None once the lock proved free.  None without OFD locks (not
    Linux) or when ``path`` cannot be opened for writing.  Raises BlockingIOError when another holder has it.

    OFD locks, unlike ``flock``, do not meet the ``flock`` HDF5 takes to open a file, so readers of a live run
    (``ssaref.plot``, h5dump) are not locked out; unlike ``lockf`` they are not dropped when this process closes
    another descriptor of the same file (as h5py does)."""
    import fcntl  # noqa: PLC0415  (POSIX)
    import struct  # noqa: PLC0415

    cmd = getattr(fcntl, "F_OFD_SETLK", None)
    if cmd is None:
        return None
    for _ in range(100):  # the holder may replace the file between our open and our lock: retry on the new one
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:  # struct flock: l_type, l_whence, l_start, l_len (0: to the end, whatever it grows to), l_pid (0)
            fcntl.fcntl(fd, cmd, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise BlockingIOError(exc.errno, "locked") from None
            return None
        if not _same_file(fd, path):  # we locked a version the holder has just let go of: not the file now
            os.close(fd)
            continue
        if keep:
            return fd
        os.close(fd)
        return None
    raise BlockingIOError(errno.EAGAIN, "replaced faster than it could be locked")


def _same_file(fd, path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class RunLock:
    """An exclusive, non-blocking lock on run file ``path``, held by one process for a whole run.

    Two locks, both released by the kernel when the process ends, however it ends, so a killed run never
    blocks the next one: ``fcntl.flock`` on ``<path>.lock`` (which holds the owner's PID), and a lock on the run
    file itself (``_ofd_lock``), which ``write_run`` moves onto each new version of the file before renaming
    it over ``path``: the lock stays with the file's inode and holds even when ``<path>.lock`` is removed while
    the run is alive.  A second writer gets a ``RunFileError`` at once (naming the owner's PID when it can);
    one that got in anyway (the lock file removed before the first write) is refused at its first write.  Use
    as a context manager.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self._fd = None
        self._file_fd = None

    def _busy(self, owner=None):
        who = (
            f"process {owner}, lock {self.lock_path}" if owner is not None else "it holds a lock on the run file itself"
        )
        return RunFileError(
            f"run file {self.path} is being written by another run ({who}); wait for it or choose another --out"
        )

    def acquire(self):
        import fcntl  # noqa: PLC0415  (POSIX)

        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunFileError(
                f"run file {self.path}: cannot create lock file {self.lock_path}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise self._busy(owner) from None
        try:
            if os.path.exists(self.path):
                self._hold_file(self.path)
        except RunFileError:  # the lock file was removed under a live run: drop the one made here
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        _HELD[os.path.abspath(self.path)] = self
        return self

    def _hold_file(self, version, keep_previous=False):
        """Lock ``version`` (the run file, or the temporary file about to replace it) and keep the lock; the
        previous version's lock is let go, or, with ``keep_previous``, its descriptor is returned for the caller
        to close once ``version`` has taken the name (so the file at ``path`` is never without the lock).
        Refused when the file now at ``path`` is held by another run."""
        if version != self.path and os.path.exists(self.path) and not self._holds(self.path):
            try:
                _ofd_lock(self.path, keep=False)
            except BlockingIOError:
                raise self._busy() from None
        try:
            fd = _ofd_lock(version, keep=True)
        except BlockingIOError:
            raise self._busy() from None
        if fd is None:
            return None
        old, self._file_fd = self._file_fd, fd
        if keep_previous:
            return old
        if old is not None:
            os.close(old)
        return None

    def _holds(self, path):
        return self._file_fd is not None and _same_file(self._file_fd, path)

    def release(self):
        if self._fd is None:
            return
        _HELD.pop(os.path.abspath(self.path), None)
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def remove_stale_temporaries(path) -> list:
    """Remove the temporary files ``write_run`` leaves beside ``path`` when a process is killed mid-write
    (``.<name>.<random>.tmp``); call it only while holding the run's ``RunLock``.  Returns the removed paths."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(r"^\." + re.escape(name) + r"\.[A-Za-z0-9_]+\.tmp$")
    removed: list[str] = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if pattern.match(entry):
            try:
                os.unlink(os.path.join(folder, entry))
                removed.append(os.path.join(folder, entry))
            except OSError:
                pass
    return removed
