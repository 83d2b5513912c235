"""Checked downloads: fetch to a temporary file beside the target, verify the md5, then rename.

``_fetch(url, dest)`` is the only function that touches the network; tests replace it
(``monkeypatch.setattr(ssaref.data.download, "_fetch", fake)``).  Nothing is left behind on failure: the
temporary file is removed whether the fetch raised, the checksum differed or the process was interrupted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from pathlib import Path

from ..atomic import atomic_path
from .errors import DatasetError


__all__ = ["MIRRORS", "CHECKSUMS", "md5_file", "download_file"]

_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# base URLs tried in order (file name appended)
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/",),
}

# published md5 of every downloadable file (MNIST / Fashion-MNIST as in torchvision/datasets/mnist.py,
# CIFAR from https://www.cs.toronto.edu/~kriz/cifar.html)
CHECKSUMS = {
    "mnist": dict(
        zip(
            _MNIST_FILES,
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        )
    ),
    "fashion-mnist": dict(
        zip(
            _MNIST_FILES,
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        )
    ),
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}


def _fetch(url: str, dest) -> None:
    """Write the body of ``url`` to the file ``dest`` (the one network access of the package)."""
    req = urllib.request.Request(url, headers={"User-Agent": "ssaref-data/0.1"})
    with urllib.request.urlopen(req, timeout=60) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)


def md5_file(path) -> str:
    """Hex md5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Rejected(Exception):
    """A mirror's download failed or did not match the checksum (its temporary file is dropped)."""


def download_file(urls, dest, md5: str) -> Path:
    """Download ``dest`` from the first of ``urls`` that delivers a file with checksum ``md5``.

    Parameters
    ----------
    urls : sequence of str
        Full URLs, tried in order.
    dest : str or Path
        Final path; its folder must exist.  Only a verified file is ever renamed to it.
    md5 : str
        Expected hex md5.

    Raises
    ------
    DatasetError
        Every URL failed; the message lists each URL and why (network error, or expected vs actual md5).
    """
    dest = Path(dest)
    problems = []
    for url in urls:
        try:
            with atomic_path(dest) as tmp:  # renamed to dest only when the block ends without an error
                try:
                    _fetch(url, Path(tmp))
                    got = md5_file(tmp)
                except Exception as exc:  # network, HTTP, disk errors: try the next mirror
                    raise _Rejected(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
                if got != md5:
                    raise _Rejected(
                        f"{url}: checksum mismatch for {dest.name}, md5 expected {md5}, got {got} "
                        f"({os.path.getsize(tmp)} bytes)"
                    )
        except _Rejected as exc:
            problems.append(str(exc))
            continue
        return dest
    raise DatasetError(f"could not download {dest.name} into {dest.parent}: " + "; ".join(problems))
