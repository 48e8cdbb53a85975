"""Boot a real systemd (PID 1) in ``systemd-nspawn`` on a throw-away overlay of the host root.

This is the harness for relay's system tests (docs/systemd.md §6.2). The host root ``/`` is
the read-only lower layer of an overlayfs whose upper and work directories live on a fresh
tmpfs, so the container sees this machine's userland (python3, systemd 252, whatever ``.ci/run``
installed) and every write it makes vanishes at teardown. The container shares the host network
namespace, so servers the test starts on the host's 127.0.0.1 are reachable from inside.

Lifecycle::

    from .nspawn import Container              # tests/system/ is a package; import relatively

    with Container() as c:                     # preflight + tmpfs + overlay + masks
        # --- before boot: files go into the overlay, commands run in a chroot of it ---
        c.copy_in(Path("packaging/sysusers.d/relay.conf"), "/etc/sysusers.d/relay.conf")
        c.setup_run(["systemd-sysusers"])      # so that owner="root:relay" resolves pre-boot
        c.write_file("/etc/relay/config.yaml", text, mode=0o640, owner="root:relay")
        c.copy_in(Path("units/relay.target"), "/etc/systemd/system/relay.target")
        c.setup_run(["systemctl", "enable", "relay.target"])   # offline enable in the chroot
        c.boot()                               # start nspawn and wait until PID 1 settles
        # --- after boot: everything runs inside the container via nsenter ---
        c.run(["systemctl", "start", "relay.target"])
        c.systemctl("is-active", "relay-queue.path")            # -> CompletedProcess
        c.write_file("/var/lib/relay/state/jc_input.txt", "hi\\n", owner="root:root")
        c.wait_for(lambda: not c.exists("/var/lib/relay/state/jc_input.txt"), what="consumed")
        print(c.journal("-u", "relay-jc.service", "-o", "cat"))
        for entry in c.journal_json("RELAY_EVENT=accepted"): ...
    # on exit: poweroff, wait, SIGTERM/SIGKILL nspawn by PID if needed, unmount, rm -r.

API summary (container paths are absolute POSIX paths *inside* the container):

- ``Container(mask=..., name=..., boot_timeout=...)``; ``prepare()`` sets up the overlay (the
  context manager calls it), ``boot()`` starts ``systemd-nspawn --boot`` and calls
  ``wait_until_booted()``, ``close()`` tears everything down and is idempotent.
  ``bind_ro=[(host_dir, "/inside")]`` shows host directories read-only in the container
  (``--bind-ro``), for what the overlay of ``/`` does not hold.
- ``setup_run(cmd)``: a command in a chroot of the merged tree, before boot (install a .deb,
  ``systemctl enable``, ``systemd-sysusers``...).
- ``run(cmd, check=True, timeout=60, input=None, env=None)``: a command inside the booted
  container (``nsenter`` into its mount/uts/ipc/net/pid namespaces) with a clean environment.
  Raises ``CommandError`` (output included) when ``check`` and the exit status is not 0.
- ``systemctl(*args, check=True)``, ``show(unit, prop)``, ``journal(*args, check=True)``,
  ``journal_json(*args)``, ``cursor()`` (pass it to ``journal_since(cursor, *matches)`` /
  ``journal_text_since`` to only see what
  a test caused when a container is shared). ``journalctl -u 'glob*'`` exits 1 ("No data
  available") while no matching unit has logged yet: use ``check=False`` or ``-t IDENTIFIER``.
- ``write_file(path, data, mode=0o644, owner=None)`` writes atomically (temp dot-file in the
  same directory, then ``rename``) so path units never see a half-written trigger;
  ``read_file(path)``, ``exists(path)``, ``copy_in(host_src, path, mode=None)``. They work
  before boot (chroot) and after boot (nsenter); ``owner`` is resolved by the container's own
  ``/etc/passwd``, so users created by sysusers at boot can be used after ``boot()``.
- ``wait_for(predicate, timeout, what)``: deadline-bounded polling for tests.
- ``boot_seconds``: wall time from starting nspawn to ``is-system-running`` = running/degraded.

Why nsenter rather than ``machinectl shell`` or ``systemd-run -M``: the host has no D-Bus and
no machined (PID 1 is not systemd), hence also ``--register=no --keep-unit``. Commands entered
this way are *not* in any unit's cgroup, which is what a test driving ``systemctl`` wants.

Each container gets a private parent cgroup (``<our cgroup>/relay-test-XXXX``) in the
name=systemd and unified hierarchies before nspawn starts: with ``--keep-unit`` nspawn puts the
container in ``<its own cgroup>/payload``, so without it two containers at once would share one
``/payload`` tree and each systemd would manage (and kill) the other's unit cgroups.

Known container artefacts (not bugs in the units under test): nspawn without
``--private-network`` withholds CAP_NET_ADMIN, so a unit with ``PrivateNetwork=yes`` logs
"Failed to configure loopback network device ... Operation not permitted" (it still runs,
just without ``lo``); the host and the container share a machine-id (hence
``--link-journal=no``); the journal is volatile (/run/log/journal), gone at teardown.

Failures are loud: not root, or a missing ``systemd-nspawn``, raises ``HarnessError`` (CI runs
as root; a system test that cannot run must fail, not skip).

Only processes this harness started are ever signalled, always by PID: the ``systemd-nspawn``
process (which also gets ``PR_SET_PDEATHSIG=SIGTERM``, so a SIGKILLed test run still powers its
container off) and, as a last resort, the container's PID 1. ``cleanup_stale()`` unmounts and
removes leftovers of earlier runs whose owning test process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

# Host units that are pointless or slow in a test container. Together with every unit the
# host admin enabled under /etc/systemd/system (see host_enabled_units), they are masked in
# the overlay. console-getty would otherwise put a login prompt on our log.
DEFAULT_MASKS: tuple[str, ...] = (
    "postgresql.service",
    "postgresql@.service",
    "ssh.service",
    "cron.service",
    "e2scrub_reap.service",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "console-getty.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    "systemd-tmpfiles-clean.timer",
)

# A clean, predictable environment for everything run inside: the test runner's own
# environment (virtualenv, PYTHONPATH, colours, pagers) must not leak into the container.
CLEAN_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_LOG_COLOR": "0",
}

STATE_PREFIX = "relay-nspawn-"
_OWNER_FILE = "owner.pid"
_NSPAWN_PID_FILE = "nspawn.pid"
_CGROUPS_FILE = "cgroups"
_PR_SET_PDEATHSIG = 1
_BOOTED_STATES = frozenset({"running", "degraded"})
_FAILED_STATES = frozenset({"maintenance", "stopping"})  # "offline" = not up yet


class HarnessError(RuntimeError):
    """The container could not be set up, booted or torn down."""


class CommandError(subprocess.CalledProcessError):
    """A command inside the container failed; unlike the base class, str() shows its output."""

    def __str__(self) -> str:
        return (
            f"{super().__str__()}\n--- stdout ---\n{self.stdout or ''}"
            f"\n--- stderr ---\n{self.stderr or ''}"
        )


def preflight() -> dict[str, str]:
    """Check root and the tools; return their absolute paths. Raises, never skips."""
    if os.geteuid() != 0:
        raise HarnessError("system tests need root (mount, overlayfs, systemd-nspawn)")
    tools: dict[str, str] = {}
    for tool in ("systemd-nspawn", "nsenter", "mount", "umount", "chroot"):
        path = shutil.which(tool, path=CLEAN_ENV["PATH"])
        if path is None:
            hint = " (apt-get install systemd-container)" if tool == "systemd-nspawn" else ""
            raise HarnessError(f"{tool} not found{hint}")
        tools[tool] = path
    return tools


def host_enabled_units(etc_units: Path = Path("/etc/systemd/system")) -> list[str]:
    """Units the host admin (or a package postinst) enabled: they would all boot too.

    relay's own units are never masked, in case relay is installed on the host itself, and
    neither are targets: they are only synchronisation points, and masking one (say
    remote-fs.target) breaks every unit that requires it.
    """
    names: set[str] = set()
    for wants in etc_units.glob("*.wants"):
        names.update(
            p.name
            for p in wants.iterdir()
            if not p.name.startswith("relay") and not p.name.endswith(".target")
        )
    return sorted(names)


def poll_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Call predicate until it is true; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _nspawn_preexec(cgroups: Sequence[Path]) -> Callable[[], None]:
    """What runs in the nspawn child between fork and exec."""

    def preexec() -> None:
        # If the test process dies (even by SIGKILL), nspawn gets SIGTERM, which it turns into
        # an orderly poweroff (--kill-signal defaults to SIGRTMIN+3 with --boot).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        for cgroup in cgroups:
            (cgroup / "cgroup.procs").write_text("0\n")

    return preexec


def _read_status(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def find_container_init(nspawn_pid: int) -> int | None:
    """Host PID of the container's PID 1: a child of nspawn that is PID 1 in its own PID ns."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        status = _read_status(int(entry.name))
        if status.get("PPid") != str(nspawn_pid):
            continue
        nspids = status.get("NSpid", "").split()
        if len(nspids) >= 2 and nspids[-1] == "1":
            return int(entry.name)
    return None


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below `prefix` in this mount namespace, deepest first."""
    found: list[str] = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mount_point = line.split()[1].replace("\\040", " ")
        if mount_point == str(prefix) or mount_point.startswith(f"{prefix}/"):
            found.append(mount_point)
    return sorted(found, key=len, reverse=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def own_cgroup_dirs() -> list[Path]:
    """This process's cgroup directory in the name=systemd (v1) and the unified (v2) trees.

    These are the hierarchies systemd uses to track processes. nspawn --keep-unit puts the
    container under <its own cgroup>/payload, so without a private parent cgroup every
    container would share /payload and two containers' systemds would manage (and kill) the
    same unit cgroups.
    """
    mounts: dict[str, Path] = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount_point, fstype, options, *_ = line.split()
        if fstype == "cgroup2":
            mounts.setdefault("v2", Path(mount_point))
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            mounts.setdefault("v1", Path(mount_point))
    dirs: list[Path] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hier_id, controllers, path = line.split(":", 2)
        key = "v2" if hier_id == "0" and controllers == "" else None
        if controllers == "name=systemd":
            key = "v1"
        if key is not None and key in mounts:
            dirs.append(mounts[key] / path.lstrip("/"))
    return dirs


def remove_cgroup_tree(top: Path) -> list[str]:
    """rmdir a cgroup and its children bottom-up (cgroupfs only allows rmdir of dirs)."""
    errors: list[str] = []
    if not top.is_dir():
        return errors
    for dirpath, _dirnames, _files in os.walk(top, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError as exc:
            errors.append(f"rmdir {dirpath}: {exc.strerror}")
    return errors


def _unmount_all(base: Path, umount: str) -> list[str]:
    """Unmount everything below base; lazily as a last resort. Returns error strings."""
    errors: list[str] = []
    for mount_point in mounts_under(base):
        deadline = time.monotonic() + 5.0
        while True:
            res = subprocess.run([umount, mount_point], capture_output=True, text=True)
            if res.returncode == 0:
                break
            if time.monotonic() >= deadline:
                subprocess.run([umount, "--lazy", mount_point], capture_output=True)
                errors.append(f"umount {mount_point}: {res.stderr.strip()} (lazily unmounted)")
                break
            time.sleep(0.1)
    return errors


def cleanup_stale(tmp_root: Path | None = None) -> list[Path]:
    """Tear down leftovers of earlier harness runs whose owning process is dead.

    Only directories named relay-nspawn-* that carry our owner.pid are touched; a leftover
    nspawn is signalled only if its /proc cmdline still names that directory.
    """
    root = tmp_root or Path(tempfile.gettempdir())
    umount = shutil.which("umount", path=CLEAN_ENV["PATH"]) or "umount"
    cleaned: list[Path] = []
    for base in root.glob(f"{STATE_PREFIX}*"):
        owner = _read_pid(base / _OWNER_FILE)
        if owner is None or _pid_alive(owner):
            continue
        nspawn = _read_pid(base / _NSPAWN_PID_FILE)
        if nspawn is not None and str(base) in _cmdline(nspawn):
            _terminate_pid(nspawn)
        for cgroup in _read_lines(base / _CGROUPS_FILE):
            remove_cgroup_tree(Path(cgroup))
        _unmount_all(base, umount)
        shutil.rmtree(base, ignore_errors=True)
        cleaned.append(base)
    return cleaned


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _terminate_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        poll_until(lambda: not _pid_alive(pid), timeout=15, what=f"pid {pid} to exit")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Container:
    """One throw-away systemd container. See the module docstring for the API."""

    def __init__(
        self,
        *,
        mask: Iterable[str] | None = None,
        name: str | None = None,
        boot_timeout: float = 30.0,
        stop_timeout: float = 20.0,
        tmp_root: Path | None = None,
        bind_ro: Sequence[tuple[Path, str]] = (),
    ) -> None:
        self.tools = preflight()
        self.masks: list[str] = sorted(
            set(DEFAULT_MASKS if mask is None else mask) | set(host_enabled_units())
        )
        # A unique machine name keeps nspawn's /run/systemd/nspawn/propagate/<name> apart
        # when several containers (or several test runs) exist at once.
        self.name = name or f"relay-test-{secrets.token_hex(4)}"
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self._tmp_root = tmp_root
        # Host directories shown read-only inside (nspawn --bind-ro=SRC:DST), for what the
        # overlay of / may not hold: a checkout under /tmp (nspawn mounts its own) or on
        # another file system.
        self.bind_ro: list[tuple[Path, str]] = list(bind_ro)
        self.base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None
        self._started_at = 0.0
        self._cgroups: list[Path] = []
        self.boot_seconds: float | None = None

    # ----- layout -------------------------------------------------------------------------

    @property
    def merged(self) -> Path:
        """The container's root as seen from the host (the overlay mount point)."""
        if self.base is None:
            raise HarnessError("container not prepared")
        return self.base / "fs" / "merged"

    @property
    def console_log(self) -> Path:
        if self.base is None:
            raise HarnessError("container not prepared")
        return self.base / "console.log"

    @property
    def booted(self) -> bool:
        return self._init_pid is not None and self._proc is not None and self._proc.poll() is None

    @property
    def init_pid(self) -> int:
        """Host PID of the container's systemd (PID 1 inside)."""
        if self._init_pid is None:
            raise HarnessError("container not booted")
        return self._init_pid

    # ----- setup before boot ---------------------------------------------------------------

    def prepare(self) -> None:
        """tmpfs + overlay (lowerdir=/) as in docs/systemd.md §6.2, then mask host services."""
        if self.base is not None:
            return
        cleanup_stale(self._tmp_root)
        self.base = Path(tempfile.mkdtemp(prefix=STATE_PREFIX, dir=self._tmp_root))
        (self.base / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        fs = self.base / "fs"
        fs.mkdir()
        self._mount(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(fs)])
        for sub in ("upper", "work", "merged"):
            (fs / sub).mkdir()
        options = f"lowerdir=/,upperdir={fs / 'upper'},workdir={fs / 'work'}"
        self._mount(["-t", "overlay", "-o", options, "overlay", str(self.merged)])
        self._mask_units()

    def _mount(self, args: list[str]) -> None:
        res = subprocess.run([self.tools["mount"], *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise HarnessError(f"mount {' '.join(args)}: {res.stderr.strip()}")

    def _mask_units(self) -> None:
        # A /dev/null symlink in /etc/systemd/system is exactly what `systemctl mask` writes;
        # done directly because it is instant and needs no running manager.
        unit_dir = self.merged / "etc/systemd/system"
        for unit in self.masks:
            link = unit_dir / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")

    def setup_run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command chrooted into the merged tree (before boot: nothing else is there)."""
        if self.booted:
            raise HarnessError("setup_run is for before boot; use run() inside the container")
        self.prepare()
        argv = [self.tools["chroot"], str(self.merged), *cmd]
        return self._finish(argv, cmd, check=check, timeout=timeout, stdin=None, env=None)

    # ----- boot ------------------------------------------------------------------------------

    def boot(self) -> None:
        """Start systemd-nspawn in the background and wait until the system is up."""
        self.prepare()
        if self._proc is not None:
            raise HarnessError("container already booted")
        argv = [
            self.tools["systemd-nspawn"],
            "-D",
            str(self.merged),
            "--boot",
            "--register=no",  # no machined/D-Bus on the host
            "--keep-unit",
            "-q",
            f"--machine={self.name}",
            "--link-journal=no",  # host and container share a machine-id
            *(f"--bind-ro={src}:{dst}" for src, dst in self.bind_ro),
        ]
        assert self.base is not None
        self._cgroups = [parent / self.name for parent in own_cgroup_dirs()]
        (self.base / _CGROUPS_FILE).write_text("".join(f"{cg}\n" for cg in self._cgroups))
        for cgroup in self._cgroups:
            cgroup.mkdir()
        with self.console_log.open("wb") as log:
            self._started_at = time.monotonic()
            # New session: a Ctrl-C aimed at pytest must not reach nspawn, which would forward
            # SIGINT to systemd as ctrl-alt-del. We shut it down ourselves in close().
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_nspawn_preexec(self._cgroups),
                env=CLEAN_ENV,
            )
        (self.base / _NSPAWN_PID_FILE).write_text(f"{self._proc.pid}\n")
        self._init_pid = self._await_init()
        self.wait_until_booted()

    def _await_init(self) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            self._raise_if_exited("while starting")
            pid = find_container_init(self._proc.pid)
            if pid is not None:
                return pid
            time.sleep(0.02)
        raise HarnessError(f"no container init under nspawn pid {self._proc.pid}{self._tail()}")

    def wait_until_booted(self, timeout: float | None = None) -> str:
        """Poll `systemctl is-system-running` from outside until running/degraded; return it.

        Never do this from a unit inside: boot is not finished until that unit is (§6.2).
        """
        limit = self.boot_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        state = ""
        while time.monotonic() < deadline:
            self._raise_if_exited("during boot")
            res = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            state = res.stdout.strip()
            if state in _BOOTED_STATES:
                self.boot_seconds = time.monotonic() - self._started_at
                return state
            if state in _FAILED_STATES:
                break
            time.sleep(0.05)
        raise HarnessError(f"system not up after {limit:g}s (state {state!r}){self._tail()}")

    def _raise_if_exited(self, when: str) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise HarnessError(f"systemd-nspawn exited with {code} {when}{self._tail()}")

    def _tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except (OSError, HarnessError):
            return ""
        return "\n--- console (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    # ----- inside the running container ------------------------------------------------------

    def _nsenter(self) -> list[str]:
        # --root/--wd with no argument: the target's root and cwd, i.e. the container's "/".
        return [
            self.tools["nsenter"],
            f"--target={self.init_pid}",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--pid",
            "--root",
            "--wd",
            "--",
        ]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd inside the booted container; stdout/stderr captured as text.

        On timeout the nsenter process is killed and TimeoutExpired raised; a grandchild left
        inside the container dies with it at teardown.
        """
        argv = [*self._nsenter(), *cmd]
        return self._finish(argv, cmd, check=check, timeout=timeout, stdin=input, env=env)

    def _finish(
        self,
        argv: list[str],
        cmd: Sequence[str],
        *,
        check: bool,
        timeout: float,
        stdin: str | bytes | None,
        env: Mapping[str, str] | None,
    ) -> subprocess.CompletedProcess[str]:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        res = subprocess.run(
            argv,
            input=data,
            stdin=subprocess.DEVNULL if data is None else None,
            capture_output=True,
            timeout=timeout,
            env={**CLEAN_ENV, **(env or {})},
        )
        out = subprocess.CompletedProcess(
            list(cmd),
            res.returncode,
            res.stdout.decode(errors="replace"),
            res.stderr.decode(errors="replace"),
        )
        if check and out.returncode != 0:
            raise CommandError(out.returncode, list(cmd), out.stdout, out.stderr)
        return out

    def _exec(
        self, cmd: Sequence[str], *, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Inside the container's root: nsenter once booted, chroot before."""
        if self.booted:
            return self.run(cmd, input=input, check=check)
        self.prepare()
        return self._finish(
            [self.tools["chroot"], str(self.merged), *cmd],
            cmd,
            check=check,
            timeout=60.0,
            stdin=input,
            env=None,
        )

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def show(self, unit: str, prop: str) -> str:
        """One unit property (`systemctl show -P`), e.g. show("x.service", "ActiveState")."""
        return self.systemctl("show", "-P", prop, unit).stdout.strip()

    def journal(self, *args: str, check: bool = True) -> str:
        """journalctl inside the container (volatile journal in /run/log/journal).

        Note: `-u 'glob*'` matching no unit that has logged yet exits 1 ("No data available").
        """
        return self.run(["journalctl", "--no-pager", "-q", *args], check=check).stdout

    def journal_json(self, *args: str) -> list[dict[str, Any]]:
        """Entries as dicts (`-o json`); matches such as "FOO=bar" go in args."""
        text = self.journal("-o", "json", *args)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def journal_since(self, cursor: str, *args: str) -> list[dict[str, Any]]:
        """Journal entries after `cursor` (exclusive), with the matches/options in `args`.

        Uses `--cursor` (inclusive) and drops the cursor's own entry by hand: journalctl 252
        given `--after-cursor` together with a match skips the first *matching* entry
        (systemd #30288, fixed in v255). A `-u` glob that matches no unit yet is no error.
        """
        done = self.run(
            ["journalctl", "--no-pager", "-q", "-o", "json", f"--cursor={cursor}", *args],
            check=False,
        )
        entries = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        return [e for e in entries if e.get("__CURSOR") != cursor]

    def journal_text_since(self, cursor: str, *args: str) -> str:
        """The MESSAGE lines of `journal_since()`, one per entry."""
        lines = []
        for entry in self.journal_since(cursor, *args):
            message = entry.get("MESSAGE", "")
            if isinstance(message, list):  # journalctl's form for a value that is not UTF-8
                message = bytes(message).decode(errors="replace")
            lines.append(str(message))
        return "\n".join(lines)

    def cursor(self) -> str:
        """Cursor of the newest journal entry, for `journal_since(cursor, ...)`."""
        text = self.journal("-n", "0", "--show-cursor")
        for line in text.splitlines():
            if line.startswith("-- cursor: "):
                return line.removeprefix("-- cursor: ").strip()
        raise HarnessError(f"no cursor in journalctl output: {text!r}")

    def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
    ) -> None:
        """Deadline-bounded polling; raises TimeoutError (with the console tail) on expiry."""
        try:
            poll_until(predicate, timeout=timeout, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}{self._tail(10)}") from None

    # ----- files -----------------------------------------------------------------------------

    def write_file(
        self,
        path: str,
        data: str | bytes,
        *,
        mode: int = 0o644,
        owner: str | None = None,
    ) -> None:
        """Atomically create/replace `path` in the container (parents made 0755 root).

        The temp name starts with a dot, which DirectoryNotEmpty= ignores, and is renamed into
        place only after mode and owner are final.
        """
        script = (
            'set -eu; d=$(dirname "$1"); mkdir -p "$d"; '
            't="$d/.harness.$(basename "$1").$$"; cat > "$t"; chmod "$2" "$t"; '
            'if [ -n "$3" ]; then chown "$3" "$t"; fi; mv -f "$t" "$1"'
        )
        payload = data.encode() if isinstance(data, str) else data
        self._exec(["sh", "-c", script, "sh", path, f"{mode:o}", owner or ""], input=payload)

    def copy_in(
        self, host_src: Path, path: str, *, mode: int | None = None, owner: str | None = None
    ) -> None:
        """Copy a host file into the container; mode defaults to the source file's."""
        perm = host_src.stat().st_mode & 0o7777 if mode is None else mode
        self.write_file(path, host_src.read_bytes(), mode=perm, owner=owner)

    def read_file(self, path: str) -> str:
        return self._exec(["cat", "--", path]).stdout

    def exists(self, path: str) -> bool:
        return self._exec(["test", "-e", path], check=False).returncode == 0

    # ----- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Power off, make sure nspawn is gone, unmount, remove. Safe to call repeatedly."""
        errors: list[str] = []
        if self._proc is not None:
            errors += self._stop()
        for cgroup in self._cgroups:
            errors += remove_cgroup_tree(cgroup)
        self._cgroups = []
        if self.base is not None:
            errors += _unmount_all(self.base, self.tools["umount"])
            if mounts_under(self.base):
                errors.append(f"mounts left under {self.base}: {mounts_under(self.base)}")
            else:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None
        if errors:
            raise HarnessError("teardown: " + "; ".join(errors))

    def _stop(self) -> list[str]:
        """poweroff inside -> SIGTERM nspawn (clean poweroff too) -> SIGKILL, all by PID."""
        proc = self._proc
        assert proc is not None
        errors: list[str] = []
        if proc.poll() is None and self._init_pid is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=5)
            if self._wait_exit(self.stop_timeout):
                return self._done()
            errors.append(f"no poweroff within {self.stop_timeout:g}s")
        if proc.poll() is None:
            proc.terminate()
            if self._wait_exit(10.0):
                return self._done(errors)
            errors.append("nspawn ignored SIGTERM")
            if self._init_pid is not None:
                # Killing a PID namespace's init kills everything in that namespace.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._init_pid, signal.SIGKILL)
            proc.kill()
            self._wait_exit(10.0)
        return self._done(errors)

    def _wait_exit(self, timeout: float) -> bool:
        assert self._proc is not None
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _done(self, errors: list[str] | None = None) -> list[str]:
        self._proc = None
        self._init_pid = None
        return errors or []

    def __enter__(self) -> Self:
        try:
            self.prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def booted_container(setup: Callable[[Container], None] | None = None) -> Iterator[Container]:
    """Prepare, run `setup(c)` before boot (files, chroot commands), boot, yield, tear down."""
    with Container() as container:
        if setup is not None:
            setup(container)
        container.boot()
        yield container
