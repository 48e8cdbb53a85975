"""Durable file operations: write temp, fsync, rename, fsync the directory.

Durable means the data and the directory entry both survive a power cut, which is
what the promises in docs/architecture.md ask for.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


class NotRegularFile(OSError):
    """A path that names a FIFO, a device, a directory or a socket where a file was wanted."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace `path` with `data` so readers see the old file or the new one, never a part.

    The temporary name is unpredictable and created exclusively, never through a symlink:
    in a directory other users may write to (dispatch/<session>/), a name they could guess
    would let them point it at a file of ours."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        # The umask may have narrowed `mode`; clients rely on the exact bits.
        os.fchmod(fd, mode)
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    if durable:
        fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def durable_rename(src: Path, dst: Path) -> None:
    """Move `src` to `dst` (same file system) and make both directory entries durable."""
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def unlink_durable(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(path.parent)


def makedirs(path: Path, mode: int) -> None:
    """Create `path` (and parents) with exactly `mode`, leaving existing directories alone.

    The mode is applied through the umask, not chmod: a directory inherits the setgid bit
    of a setgid parent (dispatch/ is 2750, so files clients read get group relay-clients),
    and chmod-ing a mode that carries the setgid bit is refused under RestrictSUIDSGID=yes.
    Only the main thread creates files, so the brief umask change races with nothing.
    """
    if path.is_dir():
        return
    if path.exists() or path.is_symlink():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o777 & ~mode & 0o777)
    try:
        os.mkdir(path, mode & 0o1777)  # setgid comes from the parent, sticky from us
    except FileExistsError:
        return
    finally:
        os.umask(old)


def read_regular(
    path: Path, limit: int, *, follow_symlinks: bool = True, max_links: int | None = None
) -> bytes:
    """Up to `limit` + 1 bytes of `path`, which must be a regular file.

    Opened without blocking, so a FIFO nobody writes to cannot hang the caller, and
    checked with fstat before a byte is read, so /dev/zero or /dev/urandom cannot feed it
    without end; the extra byte lets the caller tell "exactly `limit`" from "too large".
    Raises `NotRegularFile` (an OSError) for anything else, and (errno EMLINK) for a file
    with more than `max_links` links."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = file_kind(st.st_mode)
            raise NotRegularFile(errno.EINVAL, f"not a regular file ({kind})", str(path))
        if max_links is not None and st.st_nlink > max_links:
            raise NotRegularFile(errno.EMLINK, f"has {st.st_nlink} hard links", str(path))
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, min(1 << 16, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """What a file is, for a reason or an error a person reads ("a FIFO")."""
    for test, kind in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return kind
    return "an unknown kind of file"


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(source: Path, target: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing `target`.

    Not link(2) then unlink(2): the kernel lets relay hard-link only files it owns
    (fs.protected_hardlinks), and in between the file has two links, which intake refuses
    (it never touches a file another link could reach). Python has no renameat2."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.renameat2
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE):
        code = ctypes.get_errno()
        if code == errno.EINVAL:
            raise OSError(
                code,
                f"cannot move {source} to {target}: this file system cannot rename without "
                "replacing (RENAME_NOREPLACE)",
            )
        raise OSError(code, os.strerror(code), str(source), None, str(target))
