"""Tests of ssaref.data: parsers on fabricated files in the real formats, look-up order, checked download
(network replaced by a fake ``_fetch``), synthetic set, augmentation, and the real Fashion-MNIST if installed."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssaref import backend
from ssaref.data import DATASETS, DatasetError, augment, find_dataset_dir, load_dataset
from ssaref.data import download as dl
from ssaref.data import registry

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------------------------- helpers
def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array, written from the format description (not from ssaref)."""
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_file(path: Path, payload: bytes, gz: bool) -> Path:
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_mnist_like(folder: Path, *, n_train=12, n_test=5, h=28, w=28, seed=0, gz=True, num_classes=10):
    """Write the four IDX files; return the raw arrays (x uint8 (N,H,W), y uint8 (N,))."""
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, size=(n_train, h, w), dtype=np.uint8)
    ytr = rng.integers(0, num_classes, size=n_train).astype(np.uint8)
    xte = rng.integers(0, 256, size=(n_test, h, w), dtype=np.uint8)
    yte = rng.integers(0, num_classes, size=n_test).astype(np.uint8)
    for stem, arr in zip(IDX_NAMES, (xtr, ytr, xte, yte)):
        write_file(folder / stem, idx_bytes(arr), gz)
    return xtr, ytr, xte, yte


def cifar_pickle(data: np.ndarray, labels: dict, *, py2_numpy_path=False) -> bytes:
    batch = {b"batch_label": b"fabricated", b"data": data, b"filenames": [b"f%d.png" % i for i in range(len(data))]}
    batch.update({k.encode(): list(map(int, v)) for k, v in labels.items()})
    raw = pickle.dumps(batch, protocol=2)
    if py2_numpy_path:  # the real files name numpy.core.multiarray (written by numpy 1 / Python 2)
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return raw


def make_cifar(folder: Path, variant="cifar10", *, per_batch=3, seed=0, as_tar=True, drop=None,
               py2_numpy_path=True):
    """Fabricate a CIFAR tarball (or extracted folder); return raw (data (N,3072), fine labels) per split."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        top, tarname = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        members = {f"data_batch_{i}": "train" for i in range(1, 6)} | {"test_batch": "test"}
        nc, label_keys = 10, ("labels",)
    else:
        top, tarname = "cifar-100-python", "cifar-100-python.tar.gz"
        members = {"train": "train", "test": "test"}
        nc, label_keys = 100, ("fine_labels", "coarse_labels")
    splits = {"train": ([], []), "test": ([], [])}
    files = {}
    for member, split in members.items():
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = {k: rng.integers(0, nc if k != "coarse_labels" else 20, size=per_batch) for k in label_keys}
        splits[split][0].append(data)
        splits[split][1].append(labels[label_keys[0]])
        if member != drop:
            files[f"{top}/{member}"] = cifar_pickle(data, labels, py2_numpy_path=py2_numpy_path)
    folder.mkdir(parents=True, exist_ok=True)
    if as_tar:
        with tarfile.open(folder / tarname, "w:gz") as tf:
            for name, payload in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    else:
        for name, payload in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(payload)
    return {s: (np.concatenate(d), np.concatenate(l)) for s, (d, l) in splits.items()}


def expected_norm(raw_train: np.ndarray, raw: np.ndarray):
    """Independent normalisation: raw (N,C,H,W) uint8 -> ((raw/255 - mean_c)/std_c), stats from raw_train."""
    v = raw_train.astype(np.float64) / 255.0
    mean = v.mean(axis=(0, 2, 3))
    std = v.std(axis=(0, 2, 3))
    return (raw.astype(np.float64) / 255.0 - mean[None, :, None, None]) / std[None, :, None, None], mean, std


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempted by a test that did not install its own fake fetch fails loudly."""
    def refuse(url, dest):
        raise RuntimeError(f"network access attempted in a test: {url}")
    monkeypatch.setattr(dl, "_fetch", refuse)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty ./data (cwd moved), no $SSAREF_DATA, system root pointed at an empty temp folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("SSAREF_DATA", raising=False)
    monkeypatch.setattr(registry, "SYSTEM_DATA_ROOT", tmp_path / "system")
    return tmp_path


# ----------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_parsed_and_normalised(isolated, gz):
    root = isolated / "root"
    xtr, ytr, xte, yte = make_mnist_like(root / "mnist", gz=gz, seed=1)
    d = load_dataset("mnist", data_dir=root, download=False, dtype=np.float64)
    assert d.name == "mnist" and d.num_classes == 10 and d.input_shape == (1, 28, 28)
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)
    assert d.x_train.dtype == np.float64 and d.y_train.dtype == np.int64
    np.testing.assert_array_equal(d.y_train, ytr)
    np.testing.assert_array_equal(d.y_test, yte)
    want_tr, mean, std = expected_norm(xtr[:, None], xtr[:, None])
    want_te, _, _ = expected_norm(xtr[:, None], xte[:, None])
    np.testing.assert_allclose(d.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(d.std, std, rtol=1e-12)
    np.testing.assert_allclose(d.x_train, want_tr, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d.x_test, want_te, rtol=1e-12, atol=1e-12)
    assert abs(d.x_train.mean()) < 1e-10 and abs(d.x_train.std() - 1) < 1e-10
    assert d.source == str(root / "mnist")


def test_float32_default_and_mixed_compression(isolated):
    root = isolated / "root"
    xtr, ytr, _, _ = make_mnist_like(root / "fashion-mnist", gz=True, seed=2)
    # replace one file by its uncompressed twin: both names are accepted side by side
    gzpath = root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    (root / "fashion-mnist" / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(gzpath.read_bytes()))
    gzpath.unlink()
    d = load_dataset("fashion-mnist", data_dir=root, download=False)
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    want, _, _ = expected_norm(xtr[:, None], xtr[:, None])
    np.testing.assert_allclose(d.x_train, want, rtol=1e-5, atol=1e-5)


def test_limits_take_first_examples_and_stats_follow(isolated):
    root = isolated / "root"
    xtr, ytr, xte, yte = make_mnist_like(root / "mnist", n_train=20, n_test=9, seed=3)
    d = load_dataset("mnist", data_dir=root, download=False, train_limit=7, test_limit=4, dtype="float64")
    np.testing.assert_array_equal(d.y_train, ytr[:7])
    np.testing.assert_array_equal(d.y_test, yte[:4])
    want_te, mean, std = expected_norm(xtr[:7, None], xte[:4, None])
    np.testing.assert_allclose(d.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(d.std, std, rtol=1e-12)
    np.testing.assert_allclose(d.x_test, want_te, rtol=1e-12, atol=1e-12)
    big = load_dataset("mnist", data_dir=root, download=False, train_limit=10**6)
    assert big.x_train.shape[0] == 20


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_limits_refused(isolated, bad):
    make_mnist_like(isolated / "root" / "mnist")
    with pytest.raises(DatasetError, match="train_limit"):
        load_dataset("mnist", data_dir=isolated / "root", download=False, train_limit=bad)
    with pytest.raises(DatasetError, match="test_limit"):
        load_dataset("synthetic", test_limit=bad)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_names_file_and_sizes(isolated, gz):
    folder = isolated / "root" / "mnist"
    xtr, *_ = make_mnist_like(folder, gz=gz)
    payload = idx_bytes(xtr)[:-100]
    path = write_file(folder / "train-images-idx3-ubyte", payload, gz)
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_dir=isolated / "root", download=False)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg
    assert str(len(payload) + 100) in msg and str(len(payload)) in msg  # expected vs actual


def test_truncated_header_and_trailing_bytes(isolated):
    folder = isolated / "root" / "mnist"
    _, ytr, *_ = make_mnist_like(folder)
    path = write_file(folder / "train-labels-idx1-ubyte", idx_bytes(ytr) + b"\x00\x01", gz=True)
    with pytest.raises(DatasetError, match="oversized"):
        load_dataset("mnist", data_dir=isolated / "root", download=False)
    path.write_bytes(gzip.compress(struct.pack(">I", 0x0801)[:3]))
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset("mnist", data_dir=isolated / "root", download=False)
    assert str(path) in str(err.value)


def test_wrong_magic(isolated):
    folder = isolated / "root" / "mnist"
    _, _, _, yte = make_mnist_like(folder)
    path = write_file(folder / "t10k-labels-idx1-ubyte", idx_bytes(yte, magic=0x0803), gz=True)
    with pytest.raises(DatasetError, match="magic") as err:
        load_dataset("mnist", data_dir=isolated / "root", download=False)
    assert str(path) in str(err.value) and "2049" in str(err.value)


@pytest.mark.parametrize("kind", ["garbage", "cut_stream"])
def test_corrupt_gzip(isolated, kind):
    folder = isolated / "root" / "mnist"
    make_mnist_like(folder)
    path = folder / "t10k-images-idx3-ubyte.gz"
    if kind == "garbage":
        path.write_bytes(b"this is not gzip data at all" * 10)
    else:
        path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DatasetError, match="gzip") as err:
        load_dataset("mnist", data_dir=isolated / "root", download=False)
    assert str(path) in str(err.value)


def test_label_image_count_mismatch(isolated):
    folder = isolated / "root" / "mnist"
    make_mnist_like(folder, n_train=6)
    write_file(folder / "train-labels-idx1-ubyte", idx_bytes(np.zeros(7, np.uint8)), gz=True)
    with pytest.raises(DatasetError, match="mismatch") as err:
        load_dataset("mnist", data_dir=isolated / "root", download=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg and "6" in msg and "7" in msg


def test_label_out_of_range(isolated):
    folder = isolated / "root" / "mnist"
    make_mnist_like(folder, n_test=4)
    write_file(folder / "t10k-labels-idx1-ubyte", idx_bytes(np.array([1, 2, 10, 3], np.uint8)), gz=True)
    with pytest.raises(DatasetError, match=r"label 10 at index 2") as err:
        load_dataset("mnist", data_dir=isolated / "root", download=False)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)


# ----------------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("as_tar", [True, False])
@pytest.mark.parametrize("py2_numpy_path", [True, False])
def test_cifar10_parsed(isolated, as_tar, py2_numpy_path):
    root = isolated / "root"
    raw = make_cifar(root / "cifar10", as_tar=as_tar, py2_numpy_path=py2_numpy_path, seed=4)
    d = load_dataset("cifar10", data_dir=root, download=False, dtype=np.float64)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(d.y_train, raw["train"][1])
    np.testing.assert_array_equal(d.y_test, raw["test"][1])
    # pixel (n, c, i, j) is data[n, 1024 c + 32 i + j]: build NCHW by explicit indexing
    dtr, dte = raw["train"][0], raw["test"][0]
    c, i, j = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    nchw_tr = dtr[:, 1024 * c + 32 * i + j]
    nchw_te = dte[:, 1024 * c + 32 * i + j]
    want_tr, mean, std = expected_norm(nchw_tr, nchw_tr)
    want_te, _, _ = expected_norm(nchw_tr, nchw_te)
    assert mean.shape == (3,) and d.mean.shape == (3,)
    np.testing.assert_allclose(d.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(d.std, std, rtol=1e-12)
    np.testing.assert_allclose(d.x_train, want_tr, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d.x_test, want_te, rtol=1e-12, atol=1e-12)
    expected_source = root / "cifar10" / ("cifar-10-python.tar.gz" if as_tar else "cifar-10-batches-py")
    assert d.source == str(expected_source)


def test_cifar100_uses_fine_labels(isolated):
    root = isolated / "root"
    raw = make_cifar(root / "cifar100", "cifar100", per_batch=6, seed=5)
    d = load_dataset("cifar100", data_dir=root, download=False, train_limit=4)
    assert d.num_classes == 100 and d.x_train.shape == (4, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(d.y_train, raw["train"][1][:4])
    np.testing.assert_array_equal(d.y_test, raw["test"][1])


def test_cifar_tarball_missing_batch(isolated):
    root = isolated / "root"
    make_cifar(root / "cifar10", drop="data_batch_3")
    with pytest.raises(DatasetError, match="data_batch_3") as err:
        load_dataset("cifar10", data_dir=root, download=False)
    assert "cifar-10-python.tar.gz" in str(err.value)


def test_cifar_corrupt_tarball_and_hostile_pickle(isolated):
    root = isolated / "root"
    make_cifar(root / "cifar10")
    tar = root / "cifar10" / "cifar-10-python.tar.gz"
    tar.write_bytes(tar.read_bytes()[:200])
    with pytest.raises(DatasetError, match="corrupt") as err:
        load_dataset("cifar10", data_dir=root, download=False)
    assert str(tar) in str(err.value)
    # a pickle that would call os.system when loaded must be refused, not executed
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    folder = root / "cifar10b" / "cifar10"
    make_cifar(folder, as_tar=False)
    (folder / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(DatasetError, match="not allowed") as err:
        load_dataset("cifar10", data_dir=root / "cifar10b", download=False)
    assert "test_batch" in str(err.value)


# ----------------------------------------------------------------------------------------------- look-up
def test_lookup_order(isolated, monkeypatch):
    roots = {k: isolated / k for k in ("arg", "env", "system")}
    roots["cwd"] = isolated / "cwd" / "data"
    n = {"arg": 3, "env": 4, "cwd": 5, "system": 6}  # distinct sizes tell the copies apart
    for k, root in roots.items():
        make_mnist_like(root / "fashion-mnist", n_train=n[k])
    monkeypatch.setenv("SSAREF_DATA", str(roots["env"]))
    monkeypatch.setattr(registry, "SYSTEM_DATA_ROOT", roots["system"])

    def check(key, data_dir):
        assert find_dataset_dir("fashion-mnist", data_dir) == roots[key] / "fashion-mnist"
        d = load_dataset("fashion-mnist", data_dir=data_dir, download=False)
        assert d.x_train.shape[0] == n[key] and d.source == str(roots[key] / "fashion-mnist")

    check("arg", roots["arg"])
    check("env", None)
    # an explicit data_dir is authoritative: without the set there, nothing else is tried
    assert find_dataset_dir("fashion-mnist", isolated / "nowhere") is None
    with pytest.raises(DatasetError, match="nowhere") as err:
        load_dataset("fashion-mnist", data_dir=isolated / "nowhere", download=False)
    assert str(roots["env"]) not in str(err.value) and "\n" in str(err.value)
    monkeypatch.delenv("SSAREF_DATA")
    check("cwd", None)
    for f in (roots["cwd"] / "fashion-mnist").iterdir():
        f.unlink()
    check("system", None)
    # an incomplete copy earlier in the order is skipped, not half-read
    roots["env2"] = isolated / "env2"
    make_mnist_like(roots["env2"] / "fashion-mnist", n_train=3)
    (roots["env2"] / "fashion-mnist" / "train-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("SSAREF_DATA", str(roots["env2"]))
    check("system", None)
    # ... but an incomplete explicit data_dir is an error naming the missing file
    make_mnist_like(roots["arg"] / "fashion-mnist", n_train=3)
    (roots["arg"] / "fashion-mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", data_dir=roots["arg"], download=False)


def test_not_found_lists_every_place(isolated, monkeypatch):
    env = isolated / "envroot"
    monkeypatch.setenv("SSAREF_DATA", str(env))
    make_mnist_like(isolated / "arg" / "mnist")
    (isolated / "arg" / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:   # an explicit data_dir is the only place looked
        load_dataset("mnist", data_dir=isolated / "arg", download=False)
    msg = str(err.value)
    assert str(isolated / "arg" / "mnist") in msg and str(env / "mnist") not in msg
    assert "t10k-images-idx3-ubyte" in msg  # says what the incomplete copy lacks
    with pytest.raises(DatasetError) as err:   # without one, every place of the look-up order is listed
        load_dataset("mnist", download=False)
    msg = str(err.value)
    for place in (env / "mnist", isolated / "cwd" / "data" / "mnist", isolated / "system" / "mnist"):
        assert str(place) in msg
    monkeypatch.delenv("SSAREF_DATA")
    with pytest.raises(DatasetError, match=r"\$SSAREF_DATA: \(not set\)"):
        load_dataset("cifar10", download=False)
    assert find_dataset_dir("cifar10") is None and find_dataset_dir("synthetic") is None


def test_unknown_name_and_dtype():
    with pytest.raises(DatasetError, match="'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="'imagenet'"):
        find_dataset_dir("imagenet")
    with pytest.raises(DatasetError, match="float16"):
        load_dataset("synthetic", dtype="float16")


# ----------------------------------------------------------------------------------------------- download
def fake_server(monkeypatch, files: dict, calls: list, fail_after=None):
    """Replace the fetch: URL -> bytes from ``files``; unknown URL -> error after writing half a file."""
    def fetch(url, dest):
        calls.append(url)
        with open(dest, "wb") as fh:
            payload = files.get(url)
            if payload is None:
                fh.write(b"partial garbage")
                raise ConnectionError(f"404 for {url}")
            fh.write(payload)
    monkeypatch.setattr(dl, "_fetch", fetch)


def mnist_payloads(seed=0, n_train=8, n_test=4):
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train).astype(np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test).astype(np.uint8))
    return {f"{stem}.gz": gzip.compress(idx_bytes(a)) for stem, a in zip(IDX_NAMES, arrays)}, arrays


def test_download_checksum_match_keeps_files(isolated, monkeypatch):
    payloads, arrays = mnist_payloads()
    base = dl.MIRRORS["mnist"][0]
    for fname, blob in payloads.items():
        monkeypatch.setitem(dl.CHECKSUMS["mnist"], fname, hashlib.md5(blob).hexdigest())
    calls = []
    fake_server(monkeypatch, {base + f: b for f, b in payloads.items()}, calls)
    d = load_dataset("mnist", data_dir=isolated / "dl", download=True)
    folder = isolated / "dl" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(payloads)  # no temp file left
    for fname, blob in payloads.items():
        assert (folder / fname).read_bytes() == blob
    np.testing.assert_array_equal(d.y_train, arrays[1])
    assert len(calls) == 4 and d.source == str(folder)
    load_dataset("mnist", data_dir=isolated / "dl", download=True)
    assert len(calls) == 4  # found locally the second time


def test_download_default_target_and_mirror_fallback(isolated, monkeypatch):
    payloads, _ = mnist_payloads(seed=1)
    first, second = dl.MIRRORS["fashion-mnist"][:2]
    for fname, blob in payloads.items():
        monkeypatch.setitem(dl.CHECKSUMS["fashion-mnist"], fname, hashlib.md5(blob).hexdigest())
    served = {second + f: b for f, b in payloads.items()}
    served[first + "train-images-idx3-ubyte.gz"] = b"tampered"  # mismatch on mirror 1 -> mirror 2
    calls = []
    fake_server(monkeypatch, served, calls)
    d = load_dataset("fashion-mnist")  # no data_dir, no $SSAREF_DATA -> ./data
    folder = isolated / "cwd" / "data" / "fashion-mnist"
    assert d.source == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(payloads)
    assert calls[0] == first + "train-images-idx3-ubyte.gz" and calls[1] == second + "train-images-idx3-ubyte.gz"


def test_download_checksum_mismatch_leaves_nothing(isolated, monkeypatch):
    payloads, _ = mnist_payloads()  # real md5 table kept: fabricated files cannot match it
    calls = []
    fake_server(monkeypatch, {b + f: blob for f, blob in payloads.items() for b in dl.MIRRORS["mnist"]}, calls)
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_dir=isolated / "dl")
    msg = str(err.value)
    assert "checksum mismatch" in msg and "train-images-idx3-ubyte.gz" in msg
    assert dl.MIRRORS["mnist"][0] + "train-images-idx3-ubyte.gz" in msg
    assert dl.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] in msg
    assert list((isolated / "dl" / "mnist").iterdir()) == []
    assert len(calls) == len(dl.MIRRORS["mnist"])  # every mirror tried, then stop


def test_download_failure_midway_leaves_nothing(isolated, monkeypatch):
    calls = []
    fake_server(monkeypatch, {}, calls)  # every URL: half a file written, then an error
    with pytest.raises(DatasetError, match="404") as err:
        load_dataset("cifar10", data_dir=isolated / "dl")
    assert dl.MIRRORS["cifar10"][0] + "cifar-10-python.tar.gz" in str(err.value)
    assert list((isolated / "dl" / "cifar10").iterdir()) == []


def test_download_cifar_tarball(isolated, monkeypatch):
    src = isolated / "src"
    raw = make_cifar(src, seed=6)
    blob = (src / "cifar-10-python.tar.gz").read_bytes()
    monkeypatch.setitem(dl.CHECKSUMS["cifar10"], "cifar-10-python.tar.gz", hashlib.md5(blob).hexdigest())
    calls = []
    fake_server(monkeypatch, {dl.MIRRORS["cifar10"][0] + "cifar-10-python.tar.gz": blob}, calls)
    monkeypatch.setenv("SSAREF_DATA", str(isolated / "env"))
    d = load_dataset("cifar10")  # $SSAREF_DATA is the first writable root here
    assert (isolated / "env" / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == blob
    np.testing.assert_array_equal(d.y_test, raw["test"][1])


def test_checksum_table_complete():
    for name in DATASETS:
        if name == "synthetic":
            continue
        assert dl.MIRRORS[name] and all(u.startswith(("http://", "https://")) and u.endswith("/")
                                         for u in dl.MIRRORS[name])
        for fname, md5 in dl.CHECKSUMS[name].items():
            assert len(md5) == 32 and int(md5, 16) >= 0, (name, fname)
    assert set(dl.CHECKSUMS["mnist"]) == {f"{s}.gz" for s in IDX_NAMES}
    assert dl.CHECKSUMS["mnist"] != dl.CHECKSUMS["fashion-mnist"]


# ----------------------------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_seeded():
    a = load_dataset("synthetic", seed=3, dtype=np.float64)
    b = load_dataset("synthetic", seed=3, dtype=np.float64)
    c = load_dataset("synthetic", seed=4, dtype=np.float64)
    assert a.x_train.shape == (4000, 1, 28, 28) and a.x_test.shape == (1000, 1, 28, 28)
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10 and a.source == "synthetic(seed=3)"
    for f in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.x_train, c.x_train) and not np.array_equal(a.y_train, c.y_train)
    assert set(np.unique(a.y_train)) == set(range(10))  # every class occurs
    # limits cut: the first examples are the same; the test split does not depend on the train size
    s = load_dataset("synthetic", seed=3, train_limit=50, test_limit=20, dtype=np.float64)
    np.testing.assert_array_equal(s.y_train, a.y_train[:50])
    np.testing.assert_array_equal(s.y_test, a.y_test[:20])
    raw_a = a.x_train * a.std[0] + a.mean[0]
    raw_s = s.x_train * s.std[0] + s.mean[0]
    np.testing.assert_allclose(raw_s, raw_a[:50], atol=1e-12)
    assert abs(a.mean[0]) < 0.01 and abs(a.std[0] - 1) < 0.01  # N(0, 1) inputs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_learnable_by_linear_least_squares(seed):
    d = load_dataset("synthetic", seed=seed, dtype=np.float64)
    A = np.c_[d.x_train.reshape(len(d.x_train), -1), np.ones(len(d.x_train))]
    W = np.linalg.solve(A.T @ A, A.T @ np.eye(10)[d.y_train])  # normal equations (A has full column rank)
    At = np.c_[d.x_test.reshape(len(d.x_test), -1), np.ones(len(d.x_test))]
    acc = np.mean(np.argmax(At @ W, axis=1) == d.y_test)
    majority = np.bincount(d.y_test, minlength=10).max() / len(d.y_test)
    assert acc > 0.40 and acc > 2 * majority, (acc, majority)


# ----------------------------------------------------------------------------------------------- augment
def _reference_augmented_candidates(x, pad):
    """Every crop/flip variant of each example, by np.pad and slicing (independent of augment)."""
    n, c, h, w = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return [[p[k, :, oy : oy + h, ox : ox + w] for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)]
            for k in range(n)]


def test_augment_shape_determinism_and_change():
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    x0 = x.copy()
    a = augment(x, np.random.default_rng(7))
    b = augment(x, np.random.default_rng(7))
    c = augment(x, np.random.default_rng(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, x)
    np.testing.assert_array_equal(x, x0)  # input untouched
    # every output example is one crop of the zero-padded input, possibly mirrored
    cands = _reference_augmented_candidates(x, 4)
    for k in range(len(x)):
        assert any(np.array_equal(a[k], v) or np.array_equal(a[k], v[:, :, ::-1]) for v in cands[k]), k


def test_augment_crop_only_and_flip_only():
    x = np.random.default_rng(1).standard_normal((64, 2, 6, 5))
    crop = augment(x, np.random.default_rng(0), pad=2, flip=False)
    cands = _reference_augmented_candidates(x, 2)
    offsets = []  # (oy, ox) of each example; continuous random x makes the matching crop unique
    for k in range(len(x)):
        hits = [i for i, v in enumerate(cands[k]) if np.array_equal(crop[k], v)]
        assert len(hits) == 1, k
        offsets.append(divmod(hits[0], 5))
    oy, ox = np.array(offsets).T
    assert set(oy) == set(range(5)) and set(ox) == set(range(5))  # every shift occurs along both axes
    assert np.any(oy != ox) and np.any(oy == 2) and np.any(crop == 0.0)  # independent shifts, zero padding
    flip = augment(x, np.random.default_rng(0), pad=0, flip=True)
    flipped = [np.array_equal(flip[k], x[k, :, :, ::-1]) for k in range(len(x))]
    same = [np.array_equal(flip[k], x[k]) for k in range(len(x))]
    assert all(f or s for f, s in zip(flipped, same)) and 0 < sum(flipped) < len(x)


def test_augment_identity_and_bad_args():
    x = np.random.default_rng(2).standard_normal((4, 1, 5, 5))
    y = augment(x, np.random.default_rng(0), pad=0, flip=False)
    np.testing.assert_array_equal(y, x)
    assert y is not x and not np.shares_memory(y, x)
    with pytest.raises(ValueError, match="-1"):
        augment(x, np.random.default_rng(0), pad=-1)
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        augment(x[0, 0], np.random.default_rng(0))


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="cupy with a CUDA device not available")
def test_augment_on_gpu():
    xp = backend.resolve_backend("cupy")
    x = np.random.default_rng(3).standard_normal((8, 3, 8, 8)).astype(np.float32)
    xd = backend.to_device(x, xp)
    a = augment(xd, backend.default_rng(xp, 5))
    b = augment(xd, backend.default_rng(xp, 5))
    assert isinstance(a, xp.ndarray) and a.shape == x.shape and a.dtype == xd.dtype
    a_h = backend.asnumpy(a)
    np.testing.assert_array_equal(a_h, backend.asnumpy(b))
    cands = _reference_augmented_candidates(x, 4)
    for k in range(len(x)):
        assert any(np.array_equal(a_h[k], v) or np.array_equal(a_h[k], v[:, :, ::-1]) for v in cands[k])
    np.testing.assert_array_equal(backend.asnumpy(augment(xd, backend.default_rng(xp, 0), pad=0, flip=False)), x)


# ----------------------------------------------------------------------------------------------- real data
from _realdata import SYSTEM_FASHION, require_fashion_mnist  # noqa: E402


@pytest.mark.realdata
def test_real_fashion_mnist():
    require_fashion_mnist()
    d = load_dataset("fashion-mnist", data_dir=SYSTEM_FASHION.parent, download=False)
    assert d.source == str(SYSTEM_FASHION)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.num_classes == 10 and d.input_shape == (1, 28, 28) and d.x_train.dtype == np.float32
    # Fashion-MNIST is balanced: 6000 / 1000 per class
    np.testing.assert_array_equal(np.bincount(d.y_train, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(d.y_test, minlength=10), np.full(10, 1000))
    # widely quoted pixel statistics of the training set (after /255)
    assert abs(d.mean[0] - 0.2860) < 1e-3 and abs(d.std[0] - 0.3530) < 1e-3
    assert abs(float(d.x_train.mean(dtype=np.float64))) < 1e-5
    assert abs(float(d.x_train.std(dtype=np.float64)) - 1) < 1e-4


def test_absurd_idx_header_dims_are_refused_without_overflow(isolated):
    """Header dims whose product overflows int64 (4 x 0xFFFFFFFF) are compared with the file size in exact
    integers: a one-line 'truncated' error, no allocation, no wrap-around to a small or negative size."""
    from ssaref.data.idx import read_idx

    path = isolated / "absurd-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 0x0804) + struct.pack(">IIII", *([0xFFFFFFFF] * 4)) + b"\x00" * 16)
    with pytest.raises(DatasetError, match="truncated") as err:
        read_idx(path)
    assert str(0xFFFFFFFF ** 4 + 20) in str(err.value)
    # 2**16 x 2**16 x 2**16 x 2**16 = 2**64 wraps to 0 in int64: the old check would have accepted 20 bytes
    path.write_bytes(struct.pack(">I", 0x0804) + struct.pack(">IIII", *([1 << 16] * 4)))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)
