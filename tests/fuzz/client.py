"""What clients can do to queue/ and state/jc_input.txt, with bytes paths throughout.

Each method puts one thing in place the way a client (well-behaved or not) would: staged
under a dot-name and renamed in, or written in place, or linked. A queue name still held
by an earlier file is waited for, never replaced: replacing it would be the client losing
its own envelope, not relay.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

PLACE_TIMEOUT_S = 10.0


class Client:
    def __init__(self, data: Path, stop: threading.Event) -> None:
        self.queue = os.fsencode(data / "queue")
        self.state = os.fsencode(data / "state")
        self.stop = stop

    def path(self, name: bytes) -> bytes:
        return self.queue + b"/" + name

    def staged(self, uid: str, what: str = "tmp") -> bytes:
        return self.path(f".fz-{uid}.{what}".encode())

    def present(self, name: bytes) -> bool:
        return os.path.lexists(self.path(name))

    def wait_taken(self, name: bytes, timeout: float = PLACE_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while self.present(name):
            if time.monotonic() > deadline or self.stop.is_set():
                return False
            time.sleep(0.005)
        return True

    def place(self, staged: bytes, name: bytes) -> bool:
        """Rename `staged` to queue/`name` once nothing holds that name; False if it stayed
        taken (the staged thing is removed then)."""
        if not self.wait_taken(name):
            remove(staged)
            return False
        os.rename(staged, self.path(name))
        return True

    # ---- regular files ------------------------------------------------------------------

    def regular(
        self,
        uid: str,
        name: bytes,
        data: bytes,
        *,
        mode: int | None = None,
        mtime_ns: int | None = None,
    ) -> bool:
        staged = self.staged(uid)
        write_new(staged, data)
        if mode is not None:
            os.chmod(staged, mode)
        if mtime_ns is not None:
            os.utime(staged, ns=(mtime_ns, mtime_ns))
        return self.place(staged, name)

    def in_place(self, name: bytes, data: bytes) -> bool:
        """Written straight into queue/ under its final name, no rename (one write call)."""
        if not self.wait_taken(name):
            return False
        write_new(self.path(name), data)
        return True

    def dot(self, name: bytes, data: bytes) -> bool:
        if os.path.lexists(self.path(name)):
            return False
        write_new(self.path(name), data)
        return True

    def hardlink(self, uid: str, name: bytes, target: Path) -> bool:
        staged = self.staged(uid, "link")
        os.link(target, staged)
        return self.place(staged, name)

    def slow(self, name: bytes, data: bytes, seconds: float) -> bool:
        """Write byte by byte in place over `seconds`, never renaming (a careless client)."""
        if not self.wait_taken(name):
            return False
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            pause = seconds / max(len(data), 1)
            for i in range(len(data)):
                os.write(fd, data[i : i + 1])
                time.sleep(pause)
        finally:
            os.close(fd)
        return True

    # ---- other file types -------------------------------------------------------------

    def directory(self, uid: str, name: bytes, children: dict[bytes, bytes], mode: int) -> bool:
        staged = self.staged(uid, "d")
        os.mkdir(staged)
        for child, data in children.items():
            write_new(staged + b"/" + child, data)
        os.chmod(staged, mode)
        return self.place(staged, name)

    def symlink(self, uid: str, name: bytes, target: bytes) -> bool:
        staged = self.staged(uid, "l")
        os.symlink(target, staged)
        return self.place(staged, name)

    def fifo(self, uid: str, name: bytes) -> bool:
        staged = self.staged(uid, "p")
        os.mkfifo(staged, 0o644)
        return self.place(staged, name)

    def socket(self, uid: str, name: bytes) -> bool:
        # Bound through /proc/self/fd, so the path's length never hits sun_path's limit.
        directory = os.open(self.queue, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.bind(f"/proc/self/fd/{directory}/.fz-{uid}.s")
        finally:
            os.close(directory)
        return self.place(self.staged(uid, "s"), name)

    # ---- the operator -------------------------------------------------------------------

    def jc_input(self, uid: str, data: bytes, timeout: float = PLACE_TIMEOUT_S) -> bool:
        """What `relay reply` does: write a temp file, then rename it to jc_input.txt, never
        over an unconsumed one."""
        target = self.state + b"/jc_input.txt"
        deadline = time.monotonic() + timeout
        while os.path.lexists(target):
            if time.monotonic() > deadline or self.stop.is_set():
                return False
            time.sleep(0.005)
        staged = self.state + f"/.fz-jc-{uid}.tmp".encode()
        write_new(staged, data)
        os.rename(staged, target)
        return True


def write_new(path: bytes, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def remove(path: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o755)
            shutil.rmtree(path)
        else:
            os.unlink(path)
