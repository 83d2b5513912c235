"""Named data sets: look-up, optional download, parsing, limits and normalisation.

Look-up order for a named data set (first folder that holds a complete copy wins)::

    <data_dir>/<name>/            the ``data_dir`` argument: when given, the *only* place looked (no fallback)
    $SSAREF_DATA/<name>/          the environment variable
    ./data/<name>/                relative to the current directory (the default download cache, git-ignored)
    /usr/share/datasets/<name>/   system copies (Debian's dataset-fashion-mnist installs fashion-mnist there)

If none holds it and ``download=True``, the files are downloaded (md5-checked) into ``<root>/<name>/`` of the
first writable root among ``$SSAREF_DATA``, ``./data`` (into ``<data_dir>/<name>/`` when ``data_dir`` is given).
A partial download (``*.part``) left by a killed process is removed before the next download starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import BackendError, parse_dtype
from . import download as _dl
from .cifar import CIFAR10, CIFAR100, find_cifar_source, load_cifar
from .errors import DatasetError
from .idx import find_idx_file, load_idx_pair
from .synthetic import DEFAULT_TEST, DEFAULT_TRAIN, SYNTHETIC_CLASSES, make_synthetic

__all__ = [
    "DATASETS",
    "Dataset",
    "SYSTEM_DATA_ROOT",
    "ENV_VAR",
    "find_dataset_dir",
    "load_dataset",
    "normalise",
    "search_locations",
]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic")
ENV_VAR = "SSAREF_DATA"
SYSTEM_DATA_ROOT = Path("/usr/share/datasets")  # module attribute so tests can point it elsewhere

IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CIFAR = {"cifar10": CIFAR10, "cifar100": CIFAR100}
_NUM_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "synthetic": SYNTHETIC_CLASSES}


@dataclass
class Dataset:
    """A loaded, normalised data set (host arrays; move batches with ``ssaref.backend.to_device``).

    Attributes
    ----------
    name : str
    x_train : np.ndarray, shape (N, C, H, W), ``dtype``
        ``(x / 255 - mean[c]) / std[c]`` (synthetic: no /255).
    y_train : np.ndarray, int64, shape (N,)
    x_test : np.ndarray, shape (M, C, H, W)
        Normalised with the *training* statistics.
    y_test : np.ndarray, int64, shape (M,)
    num_classes : int
    input_shape : tuple (C, H, W)
    mean, std : np.ndarray, float64, shape (C,)
        Per-channel statistics of the (limited) training split after scaling to [0, 1] (population std).
    source : str
        Folder or tarball the data were read from (``"synthetic(seed=...)"`` for the synthetic set).
    """

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    input_shape: tuple
    mean: np.ndarray
    std: np.ndarray
    source: str


MAX_SYNTHETIC = 200_000  # examples per split: 200k x 784 float64 = 1.25 GB


def _check_name(name) -> str:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def search_locations(name: str, data_dir=None) -> list[tuple[str, Path | None]]:
    """The look-up order as ``(label, folder or None when the root is not set)``; an explicit ``data_dir`` is
    authoritative: it is then the only entry."""
    _check_name(name)
    if data_dir is not None:
        return [("data_dir argument", Path(data_dir) / name)]
    env = os.environ.get(ENV_VAR)
    return [
        ("data_dir argument", None if data_dir is None else Path(data_dir) / name),
        (f"${ENV_VAR}", Path(env) / name if env else None),
        ("./data", Path.cwd() / "data" / name),
        ("system", Path(SYSTEM_DATA_ROOT) / name),
    ]


def _missing_parts(name: str, folder: Path) -> list[str]:
    """What ``folder`` lacks to hold ``name`` (empty list: complete)."""
    if name in _CIFAR:
        if find_cifar_source(folder, _CIFAR[name]) is None:
            lay = _CIFAR[name]
            return [f"{lay.tarball} or an extracted {lay.folder}/"]
        return []
    return [f"{stem}[.gz]" for stem in IDX_STEMS.values() if find_idx_file(folder, stem) is None]


def find_dataset_dir(name: str, data_dir=None) -> Path | None:
    """First folder in the look-up order that holds a complete copy of ``name``, else None.

    Parameters
    ----------
    name : str
        One of ``DATASETS``; ``"synthetic"`` lives nowhere on disk and gives None.
    data_dir : str or Path, optional
        Root tried first (as ``<data_dir>/<name>/``).
    """
    _check_name(name)
    if name == "synthetic":
        return None
    for _, folder in search_locations(name, data_dir):
        if folder is not None and folder.is_dir() and not _missing_parts(name, folder):
            return folder
    return None


def _describe_search(name: str, data_dir) -> str:
    lines = []
    for label, folder in search_locations(name, data_dir):
        if folder is None:
            lines.append(f"  {label}: (not set)")
        elif not folder.is_dir():
            lines.append(f"  {label}: {folder} (no such folder)")
        else:
            lines.append(f"  {label}: {folder} (incomplete, missing {', '.join(_missing_parts(name, folder))})")
    return "\n".join(lines)


def _download_target(name: str, data_dir) -> Path:
    env = os.environ.get(ENV_VAR)
    roots = [data_dir] if data_dir is not None else [r for r in (env or None, Path.cwd() / "data") if r is not None]
    problems = []
    for root in roots:
        folder = Path(root) / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"{folder}: {exc}")
            continue
        if os.access(folder, os.W_OK):
            return folder
        problems.append(f"{folder}: not writable")
    raise DatasetError(f"no writable folder to download {name!r} into: " + "; ".join(problems))


def _download(name: str, folder: Path) -> None:
    """Fetch into ``folder`` every file of ``name`` not already there (md5-checked)."""
    for fname in _dl.CHECKSUMS[name]:  # a download killed mid-way (download.download_file's naming)
        for stale in folder.glob(f".{fname}.*.part"):
            stale.unlink(missing_ok=True)
    for fname, md5 in _dl.CHECKSUMS[name].items():
        if name in _CIFAR:
            if find_cifar_source(folder, _CIFAR[name]) is not None:
                continue
        elif find_idx_file(folder, fname[: -len(".gz")]) is not None:
            continue
        _dl.download_file([base + fname for base in _dl.MIRRORS[name]], folder / fname, md5)


def _check_limit(label: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DatasetError(f"{label} must be a positive integer or None, got {value!r}")
    return int(value)


def normalise(x_train, x_test, *, scale: float, dtype, chunk: int = 8192):
    """Per-channel standardisation with training statistics.

    ``v = x * scale`` (``scale = 1/255`` maps uint8 pixels to [0, 1]); ``mean_c``, ``std_c`` (population)
    over the training split's N, H, W; both splits become ``(v - mean_c) / std_c`` in ``dtype``.  Statistics
    are accumulated in float64, chunk by chunk, so no float64 copy of a whole split is made.  A channel with
    zero spread gets ``std_c = 1``.

    Parameters
    ----------
    x_train : np.ndarray, shape (N, C, H, W)
    x_test : np.ndarray, shape (M, C, H, W)
    scale : float
    dtype : numpy dtype of the outputs
    chunk : int
        Examples per processing chunk.

    Returns
    -------
    x_train_n : np.ndarray, shape (N, C, H, W), ``dtype``
    x_test_n : np.ndarray, shape (M, C, H, W), ``dtype``
    mean : np.ndarray, float64, shape (C,)
    std : np.ndarray, float64, shape (C,)
    """
    n, c = x_train.shape[:2]
    count = n * x_train.shape[2] * x_train.shape[3]
    if count == 0 or c == 0:  # no statistics to take (the divisions below would warn, then make NaN)
        raise DatasetError(f"the training split holds no pixels (images of shape {x_train.shape[1:]}, {n} of them)")
    total = np.zeros(c)
    for i in range(0, n, chunk):
        total += x_train[i : i + chunk].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total * scale / count
    sq = np.zeros(c)
    for i in range(0, n, chunk):
        v = x_train[i : i + chunk].astype(np.float64) * scale - mean[None, :, None, None]
        sq += np.einsum("nchw,nchw->c", v, v)
    std = np.sqrt(sq / count)
    std = np.where(std > 0, std, 1.0)

    def apply(x):
        out = np.empty(x.shape, dtype=dtype)
        for i in range(0, x.shape[0], chunk):
            v = x[i : i + chunk].astype(np.float64) * scale
            out[i : i + chunk] = (v - mean[None, :, None, None]) / std[None, :, None, None]
        return out

    return apply(x_train), apply(x_test), mean, std


def _read_idx_folder(name: str, folder: Path):
    paths = {k: find_idx_file(folder, stem) for k, stem in IDX_STEMS.items()}
    nc = _NUM_CLASSES[name]
    x_train, y_train = load_idx_pair(paths["train_images"], paths["train_labels"], nc)
    x_test, y_test = load_idx_pair(paths["test_images"], paths["test_labels"], nc)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{paths['train_images']} has images of size {x_train.shape[2:]} but "
            f"{paths['test_images']} of size {x_test.shape[2:]}"
        )
    return x_train, y_train, x_test, y_test, str(folder)


def load_dataset(
    name, *, data_dir=None, train_limit=None, test_limit=None, download=True, dtype=np.float32, seed=0
) -> Dataset:
    """Load, limit and normalise a named data set.

    Parameters
    ----------
    name : str
        One of ``DATASETS``.
    data_dir : str or Path, optional
        Root tried first in the look-up (``<data_dir>/<name>/``) and preferred download root.
    train_limit, test_limit : int, optional
        Keep only the first N examples of a split (deterministic; a limit above the split size keeps all).
        For ``"synthetic"`` they set the split sizes (defaults 4000 / 1000).
    download : bool
        Download (md5-checked) when no local copy is found.  ``False``: raise, listing every place looked.
    dtype : float32 or float64 (or their names)
        dtype of ``x_train`` / ``x_test``.
    seed : int
        Determines the synthetic set (teacher and inputs); unused by the real data sets.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Unknown name, bad limit or dtype, data not found, truncated/corrupt file, failed download.
    """
    _check_name(name)
    train_limit = _check_limit("train_limit", train_limit)
    test_limit = _check_limit("test_limit", test_limit)
    try:
        dtype = parse_dtype(dtype)
    except BackendError as exc:
        raise DatasetError(str(exc)) from exc

    if name == "synthetic":
        for label, n in (("train_limit", train_limit), ("test_limit", test_limit)):
            if n is not None and n > MAX_SYNTHETIC:
                raise DatasetError(
                    f"synthetic: {label}={n} is above the {MAX_SYNTHETIC} examples this "
                    f"generator makes per split (784 float64 pixels each)"
                )
        x_train, y_train, x_test, y_test = make_synthetic(
            seed, train_limit or DEFAULT_TRAIN, test_limit or DEFAULT_TEST
        )
        scale, source = 1.0, f"synthetic(seed={seed})"
    else:
        folder = find_dataset_dir(name, data_dir)
        if folder is None:
            if not download:
                raise DatasetError(
                    f"dataset {name!r} not found (download=False); looked in:\n{_describe_search(name, data_dir)}\n"
                    f"put the files in one of these folders (see data/README.md) or allow downloading"
                )
            folder = _download_target(name, data_dir)
            _download(name, folder)
        if name in _CIFAR:
            src = find_cifar_source(folder, _CIFAR[name])
            x_train, y_train, x_test, y_test = load_cifar(src, _CIFAR[name])
            source = str(src)
        else:
            x_train, y_train, x_test, y_test, source = _read_idx_folder(name, folder)
        scale = 1.0 / 255.0

    x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    x_train, x_test, mean, std = normalise(x_train, x_test, scale=scale, dtype=dtype)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=x_test,
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_classes=_NUM_CLASSES[name],
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        mean=mean,
        std=std,
        source=source,
    )
