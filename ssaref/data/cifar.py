"""Reader for the official CIFAR-10 / CIFAR-100 "python version" archives.

CIFAR-10: ``cifar-10-python.tar.gz`` holding ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``;
CIFAR-100: ``cifar-100-python.tar.gz`` holding ``cifar-100-python/train`` and ``test`` (``fine_labels`` used).
Each member is a Python-2 pickle of a dict with ``data`` (n, 3072) uint8 (1024 red, 1024 green, 1024 blue
values, each a row-major 32x32 plane) and the labels.  Members are read straight from the tarball or from an
extracted folder, with ``pickle`` (``encoding='bytes'``) through an unpickler that only admits the few numpy
globals those files use, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["CifarLayout", "CIFAR10", "CIFAR100", "find_cifar_source", "load_cifar"]


@dataclass(frozen=True)
class CifarLayout:
    """Where the members of one CIFAR variant live and what they are called."""

    tarball: str
    folder: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: str
    num_classes: int


CIFAR10 = CifarLayout(
    tarball="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_members=("test_batch",),
    label_key="labels",
    num_classes=10,
)
CIFAR100 = CifarLayout(
    tarball="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train_members=("train",),
    test_members=("test",),
    label_key="fine_labels",
    num_classes=100,
)

# the only globals a CIFAR pickle (written by Python 2 or by numpy 1/2) needs
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy >= 2 home, no deprecation warning
        return super().find_class(module, name)


def _unpickle(fh, where: str) -> dict:
    try:
        obj = _SafeUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # UnpicklingError, EOFError, zlib/gzip errors, ...
        raise DatasetError(f"{where}: corrupt CIFAR batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: CIFAR batch is a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _parse_batch(batch: dict, layout: CifarLayout, where: str):
    """(x uint8 (n, 3, 32, 32), y int64 (n,)) from one unpickled batch dict."""
    for key in ("data", layout.label_key):
        if key not in batch:
            raise DatasetError(f"{where}: CIFAR batch has no {key!r} entry (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[layout.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{where}: CIFAR 'data' has dtype {data.dtype} and shape {data.shape}, expected uint8 (n, 3072)"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DatasetError(
            f"{where}: image/label count mismatch, {data.shape[0]} images but labels of shape {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}: labels have dtype {labels.dtype}, expected integers")
    y = labels.astype(np.int64)
    bad = (y < 0) | (y >= layout.num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{where}: label {int(y[i])} at index {i} is outside [0, {layout.num_classes})")
    return data.reshape(-1, 3, 32, 32), y


def _extracted_folder(folder: Path, layout: CifarLayout) -> Path | None:
    """The folder holding every member, extracted: ``<folder>/<layout.folder>/`` or ``<folder>/`` itself."""
    for cand in (folder / layout.folder, folder):
        if all((cand / m).is_file() for m in layout.train_members + layout.test_members):
            return cand
    return None


def find_cifar_source(folder, layout: CifarLayout) -> Path | None:
    """A complete extracted folder if there is one, else the tarball if present, else None."""
    folder = Path(folder)
    extracted = _extracted_folder(folder, layout)
    if extracted is not None:
        return extracted
    tar = folder / layout.tarball
    return tar if tar.is_file() else None


def _read_members_from_tar(tar_path: Path, layout: CifarLayout) -> dict:
    out = {}
    wanted = layout.train_members + layout.test_members
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            for name in wanted:
                key = f"{layout.folder}/{name}"
                member = members.get(key) or members.get(f"./{key}")
                if member is None:
                    raise DatasetError(
                        f"{tar_path}: CIFAR tarball is missing member {key!r} "
                        f"(has: {', '.join(sorted(members)) or 'nothing'})"
                    )
                fh = tf.extractfile(member)
                if fh is None:  # a directory, link or device entry under the member's name
                    raise DatasetError(f"{tar_path}: CIFAR tarball member {key!r} is not a regular file")
                out[name] = _unpickle(io.BytesIO(fh.read()), f"{tar_path}:{key}")
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(f"{tar_path}: corrupt CIFAR tarball ({type(exc).__name__}: {exc})") from exc
    return out


def load_cifar(source, layout: CifarLayout):
    """Read the train and test splits of one CIFAR variant.

    Parameters
    ----------
    source : str or Path
        The ``*.tar.gz`` tarball, or a folder holding the members (extracted).
    layout : CifarLayout
        ``CIFAR10`` or ``CIFAR100``.

    Returns
    -------
    x_train : np.ndarray, uint8, shape (N, 3, 32, 32)
    y_train : np.ndarray, int64, shape (N,)
    x_test : np.ndarray, uint8, shape (M, 3, 32, 32)
    y_test : np.ndarray, int64, shape (M,)
    """
    source = Path(source)
    if source.is_dir():
        batches = {}
        for name in layout.train_members + layout.test_members:
            path = source / name
            if not path.is_file():
                raise DatasetError(f"{path}: CIFAR batch file missing")
            with open(path, "rb") as fh:
                batches[name] = _unpickle(fh, str(path))
        where = {name: str(source / name) for name in batches}
    elif source.is_file():
        batches = _read_members_from_tar(source, layout)
        where = {name: f"{source}:{layout.folder}/{name}" for name in batches}
    else:
        raise DatasetError(f"{source}: no such CIFAR tarball or folder")

    def split(names):
        parts = [_parse_batch(batches[n], layout, where[n]) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_train, y_train = split(layout.train_members)
    x_test, y_test = split(layout.test_members)
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise DatasetError(f"{source}: CIFAR split is empty (train {x_train.shape[0]}, test {x_test.shape[0]})")
    return x_train, y_train, x_test, y_test
