"""The one atomic write of every output (run files, golden files, reports, figures, downloads).

``atomic_path(path)`` yields a temporary name that is unique (``tempfile.mkstemp`` in ``path``'s own folder,
``.<name>.<random>.tmp``), so it never collides with a user's file or with a second writer; when the block ends
normally the temporary file is given ordinary permissions and ``os.replace``d over ``path``, on any error
(Ctrl-C included) it is removed and an existing ``path`` is left as it was.  ``durable=True`` also fsyncs the
file before the rename and the folder after it.

(``ssaref/golden/check.py`` keeps a copy of its own: it must run with NumPy and h5py alone.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["atomic_path", "write_text"]


def _fsync(path, flags=os.O_RDONLY):
    try:  # not every platform lets a folder be opened
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, *, durable=False):
    """Yield a unique temporary path beside ``path``; replace ``path`` with it when the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:  # make the rename itself durable
        _fsync(folder)


def write_text(path, text: str, *, durable=False):
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return path
