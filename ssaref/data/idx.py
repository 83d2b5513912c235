"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or raw).

An IDX file is ``magic (4 bytes) | dims (ndim big-endian uint32) | data``.  The magic is
``0x00 0x00 <type code> <ndim>``; MNIST images are ``0x00000803`` (uint8, 3 dims: N, rows, cols) and labels
``0x00000801`` (uint8, 1 dim: N).  The reader checks every part of that against the bytes actually present.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["IDX_TYPES", "read_idx", "find_idx_file", "load_idx_pair"]

# type code -> big-endian element dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Whole (decompressed) content of ``path``; a ``.gz`` name is gunzipped."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt gzip file ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def read_idx(path, *, expect_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file.

    Parameters
    ----------
    path : str or Path
        ``*.gz`` (gunzipped on the fly) or an uncompressed IDX file.
    expect_magic : int, optional
        Required magic number, e.g. ``2051`` (0x803) for images, ``2049`` (0x801) for labels.

    Returns
    -------
    np.ndarray
        Array of shape ``dims`` from the header, native byte order, dtype from the type code.

    Raises
    ------
    DatasetError
        Wrong magic, unknown type code, or a byte count that disagrees with the header (the message gives the
        expected and the actual size).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file, {len(raw)} bytes is shorter than the 4-byte magic")
    magic = int.from_bytes(raw[:4], "big")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if expect_magic is not None and magic != expect_magic:
        raise DatasetError(
            f"{path}: wrong IDX magic number {magic:#010x} ({magic}), expected {expect_magic:#010x} ({expect_magic})"
        )
    if zero != 0 or code not in IDX_TYPES or ndim == 0:
        raise DatasetError(f"{path}: not an IDX file (magic {magic:#010x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(
            f"{path}: truncated IDX header, expected {header} bytes for {ndim} dimensions, got {len(raw)}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[code]
    expected = header + math.prod(dims) * dtype.itemsize  # exact integers: absurd header dims cannot overflow
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "oversized"
        raise DatasetError(
            f"{path}: {what} IDX file, header dims {dims} need {expected} bytes (decompressed), got {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def find_idx_file(folder, stem: str) -> Path | None:
    """``<folder>/<stem>.gz`` if present, else ``<folder>/<stem>`` (uncompressed), else None."""
    folder = Path(folder)
    for cand in (folder / f"{stem}.gz", folder / stem):
        if cand.is_file():
            return cand
    return None


def load_idx_pair(images_path, labels_path, num_classes: int):
    """Read an images/labels pair and check that they belong together.

    Parameters
    ----------
    images_path, labels_path : Path
        IDX files with magic 2051 (uint8, (N, rows, cols)) and 2049 (uint8, (N,)).
    num_classes : int
        Labels must lie in ``[0, num_classes)``.

    Returns
    -------
    x : np.ndarray, uint8, shape (N, 1, rows, cols)
    y : np.ndarray, int64, shape (N,)
    """
    images = read_idx(images_path, expect_magic=0x00000803)
    labels = read_idx(labels_path, expect_magic=0x00000801)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"image/label count mismatch: {images_path} holds {images.shape[0]} images, "
            f"{labels_path} holds {labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{images_path}: holds no images")
    if images.ndim != 3 or min(images.shape[1:]) == 0:
        raise DatasetError(
            f"{images_path}: images of shape {images.shape[1:]}; expected (rows, cols) with at least one pixel each"
        )
    y = labels.astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{labels_path}: label {int(y[i])} at index {i} is outside [0, {num_classes})")
    return images[:, None, :, :], y
