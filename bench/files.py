"""Filesystem helpers every writer uses: checked before any work (the path can be created, the
disk and ``ulimit -f`` have room), and files that appear only whole (written aside, fsynced,
renamed into place)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.errors import BenchError


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists():
        path = path.parent
    return path


def check_writable(path: Path, what: str = "--out") -> None:
    """Fail early, before any work, if ``path`` cannot be created (probes with a temporary file
    in the nearest existing folder, so it also holds for root and read-only mounts)."""
    path = Path(path)
    try:
        name_max = os.pathconf(nearest_existing(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    # The longest name made beside it: the lock file ``.<name>.lock`` (and ``<name>.parts``).
    if len(path.name.encode()) + 6 > name_max:
        raise BenchError(f"the file name {path.name[:40]}... is too long ({len(path.name.encode())} bytes; this "
                         f"folder allows {name_max - 6} for it); choose a shorter {what}")
    if path.is_dir():
        raise BenchError(f"{path} is a folder; give {what} a file name")
    existing = nearest_existing(path.parent)
    if not existing.is_dir():
        raise BenchError(f"cannot write {path}: {existing} is a file, not a folder; choose another {what}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as e:
        raise BenchError(f"cannot write {path} ({e.strerror or e}); choose another {what}") from None


def check_space(path: Path, need: int, file_size: int, instead: str, smaller: str) -> None:
    """Before any work: ``need`` bytes free on the disk of ``path``'s folder, and a file size limit
    (``ulimit -f``) that lets a file of ``file_size`` bytes be written; else a BenchError ending
    with what to do (``instead``: another place; ``smaller``: a smaller file). HDF5 does not
    survive a failed write (it leaves an unreadable file and may crash on close), so it must not
    run into one."""
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise BenchError(f"{path} needs about {need / 2**20:.1f} MiB more in {path.parent}, but {free / 2**20:.1f} "
                         f"MiB are free; free space or {instead}")
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return
    if limit != resource.RLIM_INFINITY and limit < file_size:
        raise BenchError(f"{path} will be about {file_size / 2**20:.1f} MiB, over this shell's file size limit of "
                         f"{limit / 2**20:.1f} MiB (ulimit -f); raise it or {smaller}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the same folder, fsync it and rename it into place, so
    a file that exists is whole (after a power loss too); the mode follows the umask (mkstemp's
    0600 would shut out a group sharing the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
