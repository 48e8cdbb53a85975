"""The spool: every name relay gives a file, and every move of a file between folders.

This module alone knows the on-disk protocol (docs/architecture.md, "On disk"). Intake
claims and admits; the engine reads, finishes and sets aside; both only through here.

Inbox items (state/inbox/) are the work list, and their names are the history's keys:

    j-<serial>              operator input; "j" sorts before "q", so it goes first
    q-<mtime>-<serial>      an envelope, in order of its file's mtime

`serial` is a number no other file in this data directory ever had (see `Serials`), so a
derived name is unique by construction, whatever the client named its file: two files
with the same name and mtime, or a 255-byte name, or one that is not UTF-8, all fit.
Older releases named items after the client's file (`q-<mtime>-<name>`, `j-<ns>.txt`);
those are still read, never written.

Beside an item, dot-files that belong to it (listings skip dot-names):

    .n-<serial>     "<mtime>\\n<the client's file name, as bytes>": written before the
                    claim, so an item can always be set aside under its own name
    .t-<stem>       how many relay processes began handling it (the crash counter)
    .r-<stem>       the API's answer, kept until it is recorded (no second paid call)

A claim is `.c-<serial>`: the client's file renamed into the inbox, not yet validated.
Every move is a rename, so a crash leaves each file in exactly one place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from relay import fsutil
from relay.layout import CLIENT_FILE_MODE, PRIVATE_FILE_MODE, PRIVATE_MODE, REJECTED_MODE, Layout

NAME_MAX = 255
REASON_SUFFIX = ".reason"
OPERATOR = "j-"
ENVELOPE = "q-"
CLAIM = ".c-"
NAME_META = ".n-"
TRIES = ".t-"
REPLY = ".r-"
JOURNAL = ".x-"  # a rejection under way: see `reject_file`
TEMP = ".tmp-"  # a reason being written where O_TMPFILE is missing: see `_link_new`
LEGACY_CLAIM = ".claim-"
LEGACY_JC_CLAIM = ".claim-jc-"

_NEW_ENVELOPE = re.compile(r"q-(\d{20})-(\d{20})")
_NEW_OPERATOR = re.compile(r"j-(\d{20})")
_LEGACY_ENVELOPE = re.compile(r"q-(\d{20})-(.+)", re.DOTALL)
_LEGACY_OPERATOR = re.compile(r"j-(\d+)\.txt")


def display(name: str) -> str:
    """A file name fit for a log line or JSON: bytes that are not UTF-8 as \\x escapes."""
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that did not come from the file system
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


# ---- item names ------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """A parsed inbox name. `serial` is None for an item named by an older release."""

    key: str
    operator: bool
    serial: int | None
    mtime: int
    legacy_name: str | None = None  # the client's name, for an older envelope item

    @property
    def stem(self) -> str:
        """What the item's dot-files are named by."""
        if self.serial is not None:
            return f"{self.serial:020d}"
        return _digest_stem(self.key)


def _digest_stem(key: str) -> str:
    return "h" + hashlib.sha256(os.fsencode(key)).hexdigest()[:32]


def _clamp_mtime(mtime: int) -> int:
    """Into the 20 digits a name has for it: a client may set any mtime (before 1970, or
    past what fits), and a name that did not parse back would be no item at all."""
    return min(max(mtime, 0), 10**20 - 1)


def envelope_key(mtime: int, serial: int) -> str:
    return f"{ENVELOPE}{mtime:020d}-{serial:020d}"


def operator_key(serial: int) -> str:
    return f"{OPERATOR}{serial:020d}"


def parse_item(key: str) -> Item | None:
    """The item an inbox name stands for, or None for a name that is not an item."""
    if match := _NEW_ENVELOPE.fullmatch(key):
        return Item(key, False, int(match[2]), int(match[1]))
    if match := _NEW_OPERATOR.fullmatch(key):
        return Item(key, True, int(match[1]), 0)
    if match := _LEGACY_ENVELOPE.fullmatch(key):
        return Item(key, False, None, int(match[1]), match[2])
    if match := _LEGACY_OPERATOR.fullmatch(key):
        return Item(key, True, None, 0)
    return None


# ---- serials ---------------------------------------------------------------------------

SERIAL_BLOCK = 1000


class Serials:
    """Numbers never handed out twice in one data directory.

    A block is reserved at a time by writing its end to state/spool-serial under a lock,
    so one durable write serves a thousand items and two processes never share a block.
    A block starts no lower than the clock in microseconds: a lost or damaged counter
    file (a restored backup) cannot hand out an old number again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next = 0
        self._end = 0

    def take(self) -> int:
        if self._next >= self._end:
            self._reserve()
        self._next += 1
        return self._next - 1

    def _reserve(self) -> None:
        fd = os.open(
            self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_FILE_MODE
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 64, 0)
            try:
                stored = int(raw.decode("ascii").strip() or 0)
            except (UnicodeDecodeError, ValueError):
                stored = 0
            start = max(stored, time.time_ns() // 1000)
            # Fixed width, written in place: never a moment when the file is empty.
            os.pwrite(fd, f"{start + SERIAL_BLOCK:020d}\n".encode(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._next, self._end = start, start + SERIAL_BLOCK


# ---- reading client files --------------------------------------------------------------


class Refused(Exception):
    """A file the spool will not take; the message is the one-line reason kept beside it."""


def read_client_file(path: Path, limit: int) -> bytes:
    """Up to `limit` + 1 bytes of a claimed file, never through a link; Refused otherwise.

    Only a regular file with a single link is taken: relay deletes what it accepts and
    gives what it rejects the folder's mode where it may, and neither may reach a file
    outside the queue through a hard link."""
    try:
        return fsutil.read_regular(path, limit, follow_symlinks=False, max_links=1)
    except fsutil.NotRegularFile as exc:
        if exc.errno == errno.EMLINK:
            raise Refused(
                f"{exc.strerror}; relay takes only files with one link "
                "(write a new file and rename it into queue/)"
            ) from None
        raise Refused(str(exc.strerror)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("a symlink; symlinks are never followed") from None
        raise Refused(f"cannot be read: {exc.strerror}") from None


# ---- rejecting -------------------------------------------------------------------------


def rejected_name(name: bytes, attempt: int) -> bytes:
    """The name a refused file gets: its own when NAME and NAME.reason fit NAME_MAX, else a
    prefix, "~" and a digest of the whole name. `attempt` > 0 adds ".N" for a name that is
    already taken. Distinct names give distinct results by construction."""
    suffix = f".{attempt}".encode() if attempt else b""
    if len(name) + len(suffix) + len(REASON_SUFFIX) <= NAME_MAX:
        return name + suffix
    digest = b"~" + hashlib.sha256(name).hexdigest()[:32].encode()
    room = NAME_MAX - len(REASON_SUFFIX) - len(digest) - len(suffix)
    head = name[:room]
    with contextlib.suppress(UnicodeDecodeError):
        # Cut on a character boundary when the name is UTF-8, so it still reads well.
        head = head.decode("utf-8", "ignore").encode("utf-8")
    return head + digest + suffix


def reject_file(
    where: Path,
    source: Path | None,
    name: str,
    reason: str,
    *,
    private: bool,
    journal: Path | None = None,
    copy: bool = False,
) -> tuple[Path, bool]:
    """Put `source` into `where` under `name` (or a derived name) with NAME.reason beside.

    The reason is linked into place first, which fails if the name is taken: a name is
    reserved atomically even when the engine and an intake run reject at the same moment;
    after ten numbered names a random suffix makes one that is free. `journal` (in the
    inbox) records the reservation before it is made, so that a crash between the reason
    and the move is finished by `Spool.resume_rejections`, never leaving a reason without
    its file. With no `source`, only the reason is written. A client's file is moved byte
    for byte; with `copy`, a file of relay's own
    (an admitted item) is copied in (taking the folder's group, as clients read it) and
    then removed. Returns the rejected file's path and whether it was moved (False: a
    directory relay cannot move; only its reason was written)."""
    fsutil.makedirs(where, PRIVATE_MODE if private else REJECTED_MODE)
    file_mode = PRIVATE_FILE_MODE if private else CLIENT_FILE_MODE
    raw = os.fsencode(name)
    line = reason.replace("\n", " ").replace("\r", " ").strip()
    for attempt in range(NUMBERED_NAMES + 100):
        if attempt < NUMBERED_NAMES:
            target_raw = rejected_name(raw, attempt)
        else:
            target_raw = rejected_name(raw + b".~" + os.urandom(8).hex().encode(), 0)
        if target_raw[: len(raw)] != raw or len(target_raw) < len(raw):
            line_here = f"{line} (the file was named {display(name)!r})"
        else:
            line_here = line
        target = where / os.fsdecode(target_raw)
        reason_path = where / os.fsdecode(target_raw + REASON_SUFFIX.encode())
        if os.path.lexists(target):
            continue
        data = (line_here + "\n").encode("utf-8", "backslashreplace")
        if journal is not None and source is not None:
            fsutil.atomic_write(journal, _journal_record(private, copy, target_raw, source, data))
        if not _link_new(reason_path, data, file_mode):
            continue
        moved = source is not None and _place(source, target, file_mode, copy)
        if journal is not None:
            fsutil.unlink_durable(journal)
        return target, moved
    raise OSError(errno.EEXIST, "no free name for a rejected file", str(where / name))


NUMBERED_NAMES = 10
ITEM_MAX_BYTES = 16 * 1024 * 1024  # past any envelope or operator limit


def _journal_record(private: bool, copy: bool, target: bytes, source: Path, data: bytes) -> bytes:
    flags = (b"P" if private else b"Q") + (b"C" if copy else b"M")
    source_raw = os.fsencode(source.name)
    return flags + b" " + target.hex().encode() + b" " + source_raw.hex().encode() + b"\n" + data


def _place(source: Path, target: Path, mode: int, copy: bool) -> bool:
    if not copy:
        return _move_rejected(source, target, mode)
    data = fsutil.read_regular(source, 1 << 30, follow_symlinks=False)
    if not _link_new(target, data, mode):
        raise OSError(errno.EEXIST, "a reserved rejected name was taken", str(target))
    fsutil.unlink_durable(source)
    return True


def _link_new(path: Path, data: bytes, mode: int) -> bool:
    """Create `path` with `data` atomically, only if no file has that name: False if taken.

    The data goes into an unnamed file (O_TMPFILE) in the same directory, which is linked
    into place whole: a kill at any moment leaves nothing half-made where clients look, and
    the file takes its group from the directory as any file made there would."""
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        return _link_new_named(path, data, mode)  # a file system without O_TMPFILE
    try:
        os.fchmod(fd, mode)
        fsutil.write_all(fd, data)
        os.fsync(fd)
        # linkat(…, AT_SYMLINK_FOLLOW) on /proc/self/fd/N, as open(2) describes; Python
        # calls linkat (not link) only when given a directory fd, hence "/".
        root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(f"proc/self/fd/{fd}", path, src_dir_fd=root, follow_symlinks=True)
        except FileExistsError:
            return False
        finally:
            os.close(root)
    finally:
        os.close(fd)
    fsutil.fsync_dir(path.parent)
    return True


def _link_new_named(path: Path, data: bytes, mode: int) -> bool:
    tmp = path.with_name(f"{TEMP}{os.getpid()}.{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        fsutil.write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    fsutil.fsync_dir(path.parent)
    return True


def _move_rejected(source: Path, target: Path, mode: int) -> bool:
    st = os.lstat(source)
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        # Clients read queue/.rejected/: give the file relay's group-readable mode, but
        # only a file that is ours alone (never an outside inode reached by a hard link).
        # The client may not have synced: make what is kept durable (an accepted file is
        # not synced here: it is copied, durably, into an item of relay's own).
        with contextlib.suppress(OSError):
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.fsync(fd)
                if os.fstat(fd).st_nlink == 1:
                    os.fchmod(fd, mode)
            finally:
                os.close(fd)
    try:
        fsutil.durable_rename(source, target)
    except OSError as exc:
        if stat.S_ISDIR(st.st_mode) and exc.errno in (errno.EACCES, errno.EPERM, errno.EXDEV):
            return False
        raise
    return True


# ---- the spool -------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A client's file renamed into the inbox, not yet validated."""

    path: Path
    name: str  # the client's name (str with surrogate escapes for bytes that are not UTF-8)
    mtime: int
    serial: int | None  # None: a claim left by an older release
    claimed_at: float  # wall clock; a claim by an older release counts as old

    @property
    def key(self) -> str:
        if self.serial is None:
            return f"{ENVELOPE}{self.mtime:020d}-{self.name}"
        return envelope_key(self.mtime, self.serial)


class Spool:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.inbox = layout.inbox
        self.serials = Serials(layout.state / "spool-serial")

    # ---- intake: claiming ------------------------------------------------------------

    def queue_entries(self) -> list[tuple[int, str]]:
        """(mtime, name) of what clients put in queue/, oldest first; dot-names are
        writers' temp files and are left alone."""
        entries: list[tuple[int, str]] = []
        with os.scandir(self.layout.queue) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                except FileNotFoundError:
                    continue
                entries.append((_clamp_mtime(mtime), entry.name))
        entries.sort()
        return entries

    def claim(self, name: str, mtime: int) -> Claim | None:
        """Take queue/NAME into the inbox; None if it went away. The name is kept first,
        so a crash right after the rename still knows what the client called it."""
        serial = self.serials.take()
        meta = self._name_meta(serial)
        fsutil.atomic_write(meta, f"{mtime}\n".encode() + os.fsencode(name), durable=False)
        path = self.inbox / f"{CLAIM}{serial:020d}"
        try:
            os.rename(self.layout.queue / name, path)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(meta)
            if isinstance(exc, FileNotFoundError):
                return None
            raise
        fsutil.fsync_dir(self.inbox)
        return Claim(path, name, mtime, serial, time.time())

    def stale_claims(self) -> list[Claim]:
        """Claims a crashed (or deferring) intake run left, oldest first. Operator claims
        are the jc handler's, which may run at this very moment: not listed here."""
        claims: list[Claim] = []
        for name in self._inbox_names():
            if name.startswith(CLAIM):
                serial = _claim_serial(name)
                if serial is None:
                    continue
                mtime, client_name = self._read_name_meta(serial)
                try:
                    claimed_at = os.lstat(self._name_meta(serial)).st_mtime
                except FileNotFoundError:
                    claimed_at = 0.0
                claims.append(Claim(self.inbox / name, client_name, mtime, serial, claimed_at))
            elif name.startswith(LEGACY_CLAIM) and not name.startswith(LEGACY_JC_CLAIM):
                stamp, _, client_name = name.removeprefix(LEGACY_CLAIM).partition("-")
                mtime = int(stamp) if stamp.isdigit() else 0
                claims.append(Claim(self.inbox / name, client_name, mtime, None, 0.0))
        claims.sort(key=lambda c: (c.mtime, c.serial or 0))
        return claims

    def drop_orphan_names(self) -> None:
        """Remove name records whose claim and item are both gone (a crash between the
        engine finishing an item and removing its record). Intake only: a record without
        its claim may be one intake is writing right now."""
        names = self._inbox_names()
        live = {int(m[2]) for n in names if (m := _NEW_ENVELOPE.fullmatch(n))}
        live |= {claimed for n in names if (claimed := _claim_serial(n)) is not None}
        for name in names:
            digits = name[len(NAME_META) :]
            if name.startswith(NAME_META) and digits.isdigit() and int(digits) not in live:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.inbox / name)

    def admit(self, claim: Claim, data: bytes) -> str:
        """Make a validated claim an inbox item; returns its key.

        The item is relay's own copy of the validated bytes, written over the claim first:
        the client's inode (which it may still hold open, to change its mode or content,
        or lease) never becomes the item. A crash in between leaves a claim relay owns."""
        fsutil.atomic_write(claim.path, data)
        fsutil.durable_rename(claim.path, self.inbox / claim.key)
        return claim.key

    def reject_claim(self, claim: Claim, reason: str) -> Path:
        target, _ = reject_file(
            self.layout.rejected,
            claim.path,
            claim.name,
            reason,
            private=False,
            journal=self._journal(claim.path.name),
        )
        if claim.serial is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name_meta(claim.serial))
        return target

    def refuse_in_queue(self, name: str, reason: str) -> Path:
        """Refuse what relay may not move out of queue/ (a client's directory without write
        permission for relay: its ".." cannot be updated). It is renamed, inside queue/,
        to a dot-name (which needs no permission on the directory itself), so intake and
        the path unit leave it alone; its reason names it, for its owner to remove."""
        hidden = f".refused-{os.urandom(8).hex()}"
        os.rename(self.layout.queue / name, self.layout.queue / hidden)
        target, _ = reject_file(
            self.layout.rejected,
            None,
            name,
            f"{reason}; it is now queue/{hidden}: remove it",
            private=False,
        )
        return target

    # ---- intake: the operator --------------------------------------------------------

    def claim_operator(self) -> Path | None:
        serial = self.serials.take()
        path = self.inbox / f"{LEGACY_JC_CLAIM}{serial:020d}"
        try:
            os.rename(self.layout.jc_input, path)
        except FileNotFoundError:
            return None
        fsutil.fsync_dir(self.inbox)
        return path

    def operator_claims(self) -> list[Path]:
        return [
            self.inbox / n for n in sorted(self._inbox_names()) if n.startswith(LEGACY_JC_CLAIM)
        ]

    @staticmethod
    def operator_claim_key(claim: Path) -> str:
        stamp = claim.name.removeprefix(LEGACY_JC_CLAIM)
        # Claims by an older release were stamped with time_ns, and named items j-<ns>.txt.
        return operator_key(int(stamp)) if len(stamp) == 20 else f"{OPERATOR}{stamp}.txt"

    def admit_operator(self, claim: Path, data: bytes) -> str:
        key = self.operator_claim_key(claim)
        fsutil.atomic_write(claim, data)  # relay's own copy, as for envelopes (see admit)
        fsutil.durable_rename(claim, self.inbox / key)
        return key

    def reject_operator(self, source: Path, key: str, reason: str) -> Path:
        target, _ = reject_file(
            self.layout.operator_rejected,
            source,
            operator_file_name(key),
            reason,
            private=True,
            journal=self._journal(source.name),
        )
        return target

    # ---- the engine: items -----------------------------------------------------------

    def items(self) -> list[str]:
        """The keys of the inbox items, in the order they are handled."""
        return sorted(n for n in self._inbox_names() if not n.startswith("."))

    def read(self, key: str) -> bytes:
        """An item's bytes. Items are relay's own copies, but an older release left the
        client's file as the item: read it as carefully as a claim (Refused otherwise)."""
        try:
            data = fsutil.read_regular(self.inbox / key, ITEM_MAX_BYTES, follow_symlinks=False)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise Refused(f"cannot be read: {exc.strerror or exc}") from None
        if len(data) > ITEM_MAX_BYTES:
            raise Refused(f"too large: over {ITEM_MAX_BYTES} bytes")
        return data

    def client_name(self, key: str) -> str:
        """The name the item's file had in queue/ (or a name for operator input)."""
        item = parse_item(key)
        if item is None:
            return key
        if item.operator:
            return operator_file_name(key)
        if item.legacy_name is not None:
            return item.legacy_name
        assert item.serial is not None
        _, name = self._read_name_meta(item.serial)
        return name

    def begin(self, key: str) -> int:
        """Count one more relay process beginning to handle `key`; returns the count.
        It survives restarts, so an item that kills relay can be set aside."""
        path = self._dot(TRIES, key)
        try:
            count = int(path.read_text(encoding="ascii").strip() or 0)
        except (OSError, ValueError, UnicodeDecodeError):
            count = 0
        count += 1
        fsutil.atomic_write(path, f"{count}\n".encode(), durable=False)
        return count

    def uncount(self, key: str) -> None:
        """Take back one count (a graceful stop is not a crash)."""
        path = self._dot(TRIES, key)
        try:
            count = int(path.read_text(encoding="ascii").strip() or 0)
        except (OSError, ValueError, UnicodeDecodeError):
            return
        with contextlib.suppress(OSError):
            if count <= 1:
                os.unlink(path)
            else:
                fsutil.atomic_write(path, f"{count - 1}\n".encode(), durable=False)

    def stash_reply(self, key: str, data: bytes) -> None:
        # Not fsync'd, like the counter: they guard against a crashing process, whose
        # writes the kernel keeps; a power cut costs at worst one repeated call.
        fsutil.atomic_write(self._dot(REPLY, key), data, durable=False)

    def stashed_reply(self, key: str) -> bytes | None:
        try:
            return self._dot(REPLY, key).read_bytes()
        except FileNotFoundError:
            return None

    def finish(self, key: str) -> None:
        """The item is done: remove what belongs to it, then the item (a crash in between
        leaves an item whose turn is recorded, finished again without a call)."""
        self._forget(key)
        fsutil.unlink_durable(self.inbox / key)

    def set_aside(self, key: str, reason: str) -> Path:
        """Refuse an admitted item: an envelope into queue/.rejected/ under its client's
        name, operator input into the private state/rejected/. Then forget it."""
        item = parse_item(key)
        source = self.inbox / key
        name = self.client_name(key)
        for path in (self._dot(TRIES, key), self._dot(REPLY, key)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        private = item is not None and item.operator
        target, _ = reject_file(
            self.layout.operator_rejected if private else self.layout.rejected,
            source,
            operator_file_name(key) if private else name,
            reason,
            private=private,
            journal=self._journal(key),
            copy=True,
        )
        self._forget(key)
        return target

    def _forget(self, key: str) -> None:
        item = parse_item(key)
        paths = [self._dot(TRIES, key), self._dot(REPLY, key)]
        if item is not None and item.serial is not None and not item.operator:
            paths.append(self._name_meta(item.serial))
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def sweep(self, older_than_s: float = 60.0) -> None:
        """Remove what killed processes left beside no item: counters and kept replies of
        items that are gone (the engine, their only writer, calls this at start), and
        temporary files old enough that no live writer can still be about to rename one."""
        names = self._inbox_names()
        stems = {item.stem for n in names if (item := parse_item(n)) is not None}
        now = time.time()
        for name in names:
            path = self.inbox / name
            with contextlib.suppress(FileNotFoundError):
                if (name.startswith((TRIES, REPLY)) and name[len(TRIES) :] not in stems) or (
                    name.startswith(".")
                    and name.endswith(".tmp")
                    and now - os.lstat(path).st_mtime > older_than_s
                ):
                    os.unlink(path)

    # ---- rejections a crash interrupted ------------------------------------------------

    def resume_rejections(self, owns: Callable[[str], bool]) -> list[str]:
        """Finish every rejection a crash interrupted whose source `owns` says is ours
        (each kind has one owner: queue intake, jc intake, the engine); returns the client
        names of the files whose rejection was finished (or redone)."""
        done: list[str] = []
        for name in sorted(self._inbox_names()):
            if not name.startswith(JOURNAL) or name.endswith(".tmp"):
                continue
            journal = self.inbox / name
            try:
                head, _, data = journal.read_bytes().partition(b"\n")
                flags, target_hex, source_hex = head.split(b" ")
                target_raw = bytes.fromhex(target_hex.decode("ascii"))
                source_name = os.fsdecode(bytes.fromhex(source_hex.decode("ascii")))
            except (OSError, ValueError):
                continue  # torn: written before its reservation, so nothing was moved yet
            if not owns(source_name):
                continue
            client_name = self._client_name_of(source_name)
            private, copy = flags[:1] == b"P", flags[1:2] == b"C"
            if self._resume(journal, source_name, target_raw, data, private, copy):
                done.append(client_name)
        return done

    def _resume(
        self,
        journal: Path,
        source_name: str,
        target_raw: bytes,
        data: bytes,
        private: bool,
        copy: bool,
    ) -> bool:
        source = self.inbox / source_name
        if not os.path.lexists(source):
            fsutil.unlink_durable(journal)  # the move was made; only the journal was left
            self._after_rejection(source_name)
            return False
        where = self.layout.operator_rejected if private else self.layout.rejected
        target = where / os.fsdecode(target_raw)
        reason_path = where / os.fsdecode(target_raw + REASON_SUFFIX.encode())
        mode = PRIVATE_FILE_MODE if private else CLIENT_FILE_MODE
        ours = False
        with contextlib.suppress(OSError):
            ours = reason_path.read_bytes() == data
        if ours and os.path.lexists(target) and copy:
            fsutil.unlink_durable(source)  # copied in before the crash; the rest remained
        elif ours and not os.path.lexists(target):
            _place(source, target, mode, copy)
        else:  # the reservation never happened: reject it again, from the start
            reason = data.decode("utf-8", "replace").strip()
            reject_file(
                where,
                source,
                self._client_name_of(source_name),
                reason,
                private=private,
                journal=journal,
                copy=copy,
            )
        fsutil.unlink_durable(journal)
        self._after_rejection(source_name)
        return True

    def _client_name_of(self, source_name: str) -> str:
        if source_name.startswith(LEGACY_JC_CLAIM):
            return operator_file_name(self.operator_claim_key(self.inbox / source_name))
        if (serial := _claim_serial(source_name)) is not None:
            return self._read_name_meta(serial)[1]
        if source_name.startswith(LEGACY_CLAIM):
            return source_name.removeprefix(LEGACY_CLAIM).partition("-")[2]
        return self.client_name(source_name)

    def _after_rejection(self, source_name: str) -> None:
        if (serial := _claim_serial(source_name)) is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name_meta(serial))
        elif not source_name.startswith("."):
            self._forget(source_name)

    def _journal(self, source_name: str) -> Path:
        # Named by a digest: a name of an older release's making could be 250 bytes long.
        return self.inbox / f"{JOURNAL}{_digest_stem(source_name)}"

    # ---- helpers ---------------------------------------------------------------------

    def _inbox_names(self) -> list[str]:
        try:
            return os.listdir(self.inbox)
        except FileNotFoundError:
            return []

    def _name_meta(self, serial: int) -> Path:
        return self.inbox / f"{NAME_META}{serial:020d}"

    def _read_name_meta(self, serial: int) -> tuple[int, str]:
        try:
            raw = self._name_meta(serial).read_bytes()
        except FileNotFoundError:
            return 0, f"envelope-{serial:020d}"
        stamp, _, name = raw.partition(b"\n")
        mtime = _clamp_mtime(int(stamp)) if stamp.lstrip(b"-").isdigit() else 0
        return mtime, os.fsdecode(name) or f"envelope-{serial:020d}"

    def _dot(self, prefix: str, key: str) -> Path:
        item = parse_item(key)
        stem = item.stem if item is not None else _digest_stem(key)
        return self.inbox / f"{prefix}{stem}"


def _claim_serial(name: str) -> int | None:
    """The serial of a claim's name (`.c-SERIAL`), or None for any other name."""
    digits = name[len(CLAIM) :]
    return int(digits) if name.startswith(CLAIM) and digits.isdigit() else None


def operator_file_name(key: str) -> str:
    """What refused operator input is called in state/rejected/."""
    item = parse_item(key)
    if item is not None and item.serial is not None:
        return f"jc_input-{item.serial:020d}.txt"
    return f"jc_input-{key.removeprefix(OPERATOR).removesuffix('.txt')}.txt"


# ---- dispatch: pending replies ---------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def key_digest(key: str) -> str:
    return hashlib.sha256(os.fsencode(key)).hexdigest()[:20]


def pending_name(seq: int, key: str) -> str:
    """dispatch/<s>/.pending/<seq>-<digest>-<key>.txt. The digest identifies the key
    exactly; the readable tail (cut, and escaped, for keys of older releases) is only for
    people looking at the directory."""
    tail = _UNSAFE.sub("_", display(key))[:180]
    return f"{seq:012d}-{key_digest(key)}-{tail}.txt"


def pending_seq(name: str) -> int:
    return int(name[:12])


def pending_digest(name: str) -> str:
    return name[13:33]


def pending_key_hint(name: str) -> str:
    """The key as far as the name shows it (exact for every key relay writes now)."""
    return name[34:-4]


@contextlib.contextmanager
def one_at_a_time(lock: Path, wait: bool) -> Iterator[bool]:
    """Yield True holding `lock`; False at once if `wait` is off and another run holds it."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
