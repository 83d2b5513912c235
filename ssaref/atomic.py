"""The one atomic write of every output (run files, golden files, reports, figures, downloads).

``atomic_path(path)`` yields a temporary name that is unique (``tempfile.mkstemp`` in ``path``'s own folder,
``.<name>.<random>.tmp``), so it never collides with a user's file or with a second writer; when the block ends
normally the temporary file is given ordinary permissions and ``os.replace``d over ``path``, on any error
(Ctrl-C included) it is removed and an existing ``path`` is left as it was.  ``durable=True`` also fsyncs the
file before the rename and the folder after it.

``deferred_signals()`` holds SIGINT and SIGTERM back over a critical write: one that arrives meanwhile is
recorded and delivered when the block ends (the file is then in place, or the old one untouched), so Ctrl-C is
never raised inside a library's finaliser, where Python prints and swallows it.

(``ssaref/golden/check.py`` keeps a copy of its own: it must run with NumPy and h5py alone.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading

__all__ = ["atomic_path", "write_text", "deferred_signals", "write_bytes", "write_all"]


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


@contextlib.contextmanager
def deferred_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Hold ``signals`` back for the block: a handler records each one that arrives, and when the block ends
    (normally or by an exception) the previous handlers come back and every recorded signal is delivered to
    them (SIGINT: ``KeyboardInterrupt`` raised here; SIGTERM's default: the process ends).  Outside the main
    thread (where Python cannot set handlers) the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {}
    for sig in signals:
        try:
            previous[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
        except (ValueError, OSError):  # pragma: no cover - a platform without this signal
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # SIGINT last: its handler raises KeyboardInterrupt at once, which would leave a SIGTERM behind undelivered
        for sig in sorted(dict.fromkeys(pending), key=lambda s: s == signal.SIGINT):
            signal.raise_signal(sig)


def write_bytes(path, data, *, durable=False):
    """Write ``data`` (bytes-like) to ``path`` atomically with plain ``os.write`` calls, so a full disk is an
    ``OSError`` (ENOSPC) naming ``path``; returns ``path``."""
    with atomic_path(path, durable=durable) as tmp:
        write_all(tmp, data, path)
    return path


def write_all(tmp, data, path):
    """Write ``data`` into the temporary file ``tmp`` (of ``path``) with ``os.write``; a failure (ENOSPC) is an
    ``OSError`` naming ``path``."""
    view = memoryview(data).cast("B")
    fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done : done + (1 << 24)])
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
