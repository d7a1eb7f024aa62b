"""One writer at a time for a shared file: the activation cache and the results folder.

Any number of `bench` processes may share a cache and a results folder. Before a process makes a
file that others may also be making (an activation file, a results file), it takes the file's
lock; the others wait, and when they get the lock they find the file finished and reuse it.
Readers that must not see a file removed under them (``bench cache prune``) share the same lock.

The lock is ``fcntl.flock`` on a hidden file beside the target, ``<folder>/.<name>.lock``. It is
written here rather than taken from ``filelock`` because filelock has no shared flock: its
reader/writer lock is a separate SQLite database, which does not exclude a ``FileLock`` on the
same path, and prune must exclude readers and writers alike. What the design relies on:

- the kernel drops a flock when its holder exits, however it exits (SIGKILL, OOM), so there is
  no stale lock to detect or break on one host; on NFS, Linux maps flock to the server's
  byte-range locks, which the server recovers when a client host dies;
- the holder writes its host, pid and start time into the lock file, so a waiting process can
  say whom it waits for;
- HDF5's own file locking fails at once rather than waiting, and guards one open file, not the
  partial file -> finished file sequence a writer goes through;
- the holder deletes the lock file as it lets go, so none stay behind; a process that was waiting
  on the deleted file sees (by its inode) that its lock is on a file no longer in place, and
  takes the lock anew on the path.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from bench.errors import BenchError

try:
    import fcntl
except ImportError:  # not a POSIX system: no locks
    fcntl = None


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def holder(path: str | Path) -> str:
    """Who holds (or last held) the lock of ``path``: 'pid P on host H since T', or 'another process'."""
    try:
        info = json.loads(lock_path(path).read_text() or "{}")
        return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class Busy(BenchError):
    """Another process holds the lock (``exclusive(..., wait=False)``)."""


def _acquire(path: Path, mode: int, waiting, log, poll: float, wait: bool) -> int:
    """Open ``path``'s lock file and flock it in ``mode`` (LOCK_EX or LOCK_SH); return the descriptor.

    Waits while another process holds a conflicting lock, logging every ``poll`` seconds whom for,
    or raises ``Busy`` at once with ``wait=False``; ``waiting(who)`` makes that log line. Retries where the file it locked was deleted
    by the holder before it (its inode is no longer the path's)."""
    lp = lock_path(path)
    try:
        lp.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create {lp.parent} ({e.strerror or e}); choose another folder") from None
    waited = None
    while True:
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)  # the mode follows the umask
        except OSError as e:
            raise BenchError(f"cannot create the lock file {lp} ({e.strerror or e}); make its folder writable "
                             "or choose another folder") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        raise Busy(f"{path} is in use by {holder(path)}") from None
                    if waited is None or waited >= poll:
                        log(waiting(holder(path)))
                        waited = 0.0
                    time.sleep(0.2)
                    waited += 0.2
            if os.fstat(fd).st_ino == os.stat(lp).st_ino:
                return fd
        except FileNotFoundError:
            pass  # the holder before us deleted the file: take the lock anew on the path
        except Busy:
            os.close(fd)
            raise
        except OSError as e:
            os.close(fd)
            if e.errno == errno.ESTALE:  # NFS: the file went away under us; take it anew
                continue
            if mode == fcntl.LOCK_EX:
                lp.unlink(missing_ok=True)
            raise BenchError(f"cannot lock {lp} ({e.strerror or e}): its filesystem does not support file locks "
                             "(mount it with locking, e.g. Lustre's -o flock), or choose another folder") from None
        os.close(fd)


@contextmanager
def exclusive(path: str | Path, what: str, log=lambda msg: None, poll: float = 30.0, wait: bool = True):
    """Hold the lock of ``path`` for the block; wait (logging every ``poll`` seconds whom for)
    while another process holds it, or, with ``wait=False``, raise ``Busy`` at once."""
    if fcntl is None:
        yield
        return
    fd = _acquire(Path(path), fcntl.LOCK_EX, lambda who: f"waiting for {who}, which is {what} {path}", log, poll, wait)
    try:
        _stamp(fd)
        yield
    finally:
        try:
            os.unlink(lock_path(path))  # still holding the lock: nobody can have taken this file since
        except OSError:
            pass
        os.close(fd)  # closing the descriptor releases the lock


def _stamp(fd: int) -> None:
    """Write who holds the lock into its file, for ``holder``. Only informational: where it cannot
    be written (a full filesystem, a quota), waiting processes say "another process" and the lock
    holds all the same."""
    stamp = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
    except OSError:
        pass  # a half-written stamp does not parse: ``holder`` says "another process"


@contextmanager
def shared(path: str | Path, what: str = "reading", log=lambda msg: None, poll: float = 30.0):
    """Hold the lock of ``path`` shared with other readers for the block: ``exclusive`` waits (or,
    ``wait=False``, is ``Busy``) until every reader let go. The last reader out deletes the lock
    file, as an exclusive holder does; one that is not the last leaves it to the others."""
    if fcntl is None:
        yield
        return
    lp = lock_path(path)
    fd = _acquire(Path(path), fcntl.LOCK_SH, lambda who: f"waiting for {who} before {what} {path}", log, poll, True)
    try:
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the last reader: nobody else holds it
            if os.stat(lp).st_ino == os.fstat(fd).st_ino:
                os.unlink(lp)
        except OSError:
            pass  # another reader still holds it (or the file is gone): theirs to delete
        os.close(fd)


def held(path: str | Path) -> bool:
    """Whether a process holds the lock of ``path`` now (creates no lock file)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:
        return False  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
