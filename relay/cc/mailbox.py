"""The Claude Code side of dispatch/<session>/input.txt: exactly once, nothing lost.

relay writes a session's next reply to input.txt and waits until the session deletes it.
A Claude Code process takes the reply by writing a claim beside it
(`dispatch/<s>/.relay-claim`, naming the process and the reply's tag) and handing the text
to the model. It deletes input.txt only at the end of a turn that the model really took
the reply into (the claim is marked `seen` when the prompt carrying the tag is submitted,
or the tag is found in the transcript). So:

- only one process ever holds a reply: claims are made under a lock on the directory;
- a reply handed over but never taken in by the model (Claude Code killed in between) is
  still in input.txt, and its claim names a dead process: the next Claude Code attached
  to the session is offered it again at start;
- replies reach the model one per turn, in order: relay moves the next one into place only
  after the previous one was consumed.

Processes attached to a session leave a small record here too (`.relay-cc-PID-START.json`), for
`relay cc status` and the warning when two processes share one session.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay import fsutil
from relay.cc.identity import Process
from relay.layout import Layout
from relay.ledger import iso, utc_now

CLAIM_NAME = ".relay-claim"
ATTACHED_PREFIX = ".relay-cc-"
TAG_PREFIX = "relay-msg:"
CLIENT_FILE_MODE = 0o660  # other clients of the session may replace or remove it


@dataclass(frozen=True)
class Claim:
    tag: str
    owner: Process
    cc_session: str | None
    seen: bool
    taken_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "owner": self.owner.to_json(),
            "cc_session": self.cc_session,
            "seen": self.seen,
            "taken_at": self.taken_at,
        }


@dataclass(frozen=True)
class Reply:
    """A reply handed to one Claude Code process."""

    tag: str
    text: str
    reoffered: bool  # an earlier holder died before the model took it in


@dataclass(frozen=True)
class Attached:
    owner: Process
    cc_session: str | None
    kind: str  # "interactive" or "worker"
    cwd: str
    user: int
    since: str


def _claim_from(raw: Any) -> Claim | None:
    if not isinstance(raw, dict):
        return None
    owner = Process.from_json(raw.get("owner"))
    tag = raw.get("tag")
    if owner is None or not isinstance(tag, str):
        return None
    cc = raw.get("cc_session")
    return Claim(
        tag,
        owner,
        cc if isinstance(cc, str) else None,
        raw.get("seen") is True,
        str(raw.get("taken_at", "")),
    )


class Mailbox:
    """One session's dispatch directory, as a Claude Code process sees it."""

    def __init__(self, layout: Layout, session: str) -> None:
        self.session = session
        self.directory = layout.session_dir(session)
        self.input = layout.input_file(session)
        self.claim_path = self.directory / CLAIM_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock on the directory itself: every client can read it, and no lock file of one
        # user's can lock another out.
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _current(self) -> tuple[str, str] | None:
        """(tag, text) of input.txt, or None when there is no reply from relay there.

        Other clients may write to this directory too; only a regular file owned by
        whoever owns the directory (relay, which made it) is a reply, so a forged
        input.txt is never passed off as the coordinator's instruction."""
        read = _read_regular(self.input)
        if read is None:
            return None
        data, st = read
        try:
            if st.st_uid != os.stat(self.directory).st_uid or not data.strip():
                return None
        except OSError:
            return None
        # The inode and mtime tell two replies with the same text apart.
        digest = hashlib.sha256(f"{st.st_ino}:{st.st_mtime_ns}:".encode() + data).hexdigest()
        return TAG_PREFIX + digest[:16], data.decode("utf-8", errors="replace")

    def read_claim(self) -> Claim | None:
        read = _read_regular(self.claim_path)
        if read is None:
            return None
        try:
            return _claim_from(json.loads(read[0]))
        except ValueError:
            return None  # a torn or foreign file: treated as no claim, replaced on take

    def _write_claim(self, claim: Claim) -> None:
        data = json.dumps(claim.to_json(), sort_keys=True).encode() + b"\n"
        fsutil.atomic_write(self.claim_path, data, CLIENT_FILE_MODE)

    def pending_reply(self) -> bool:
        return self._current() is not None

    def take(self, owner: Process, cc_session: str | None) -> Reply | None:
        """Claim input.txt for `owner`; None when there is none or a live process has it."""
        with self._locked():
            current = self._current()
            if current is None:
                return None
            tag, text = current
            claim = self.read_claim()
            reoffered = False
            if claim is not None and claim.tag == tag:
                # Ours, not yet in a prompt, asked for by another conversation of ours
                # (after /clear, say): the first handing-over went nowhere, so hand it again.
                again = claim.owner == owner and not claim.seen and claim.cc_session != cc_session
                if claim.owner.alive() and not again:
                    return None  # taken already, by us or by another live process
                reoffered = not again
            self._write_claim(Claim(tag, owner, cc_session, False, iso(utc_now())))
            return Reply(tag, text, reoffered)

    def mark_seen(self, owner: Process, prompt: str) -> bool:
        """The prompt being submitted carries our reply: the model takes it in now."""
        with self._locked():
            claim = self.read_claim()
            if claim is None or claim.owner != owner or claim.seen or claim.tag not in prompt:
                return False
            self._write_claim(Claim(claim.tag, owner, claim.cc_session, True, claim.taken_at))
            return True

    def consume(self, owner: Process, in_transcript: Callable[[str], bool]) -> bool:
        """At the end of a turn: delete input.txt if the model took our reply in.

        A reply injected into a busy turn never passes UserPromptSubmit, so the transcript
        is the other witness. Until one of them says so, the reply stays.
        """
        with self._locked():
            claim = self.read_claim()
            if claim is None or claim.owner != owner:
                return False
            current = self._current()
            if current is None or current[0] != claim.tag:
                fsutil.unlink_durable(self.claim_path)  # input.txt went another way
                return False
            if not claim.seen and not in_transcript(claim.tag):
                return False
            # input.txt first: if we die in between, the claim no longer matches and is void.
            fsutil.unlink_durable(self.input)
            fsutil.unlink_durable(self.claim_path)
            return True

    def consume_tag(self, owner: Process, tag: str) -> bool:
        """Delete input.txt if it is still the reply `tag` and no other live process holds
        it: a restarted worker finishing what its dead predecessor had answered."""
        with self._locked():
            current = self._current()
            if current is None or current[0] != tag:
                return False
            claim = self.read_claim()
            if claim is not None and claim.owner != owner and claim.owner.alive():
                return False
            fsutil.unlink_durable(self.input)
            if claim is not None:
                fsutil.unlink_durable(self.claim_path)
            return True

    # --- attached processes ------------------------------------------------------------

    def _attached_path(self, owner: Process) -> Path:
        return self.directory / f"{ATTACHED_PREFIX}{owner.pid}-{owner.start}.json"

    def attach(self, owner: Process, cc_session: str | None, kind: str, cwd: str) -> None:
        record = {
            "owner": owner.to_json(),
            "cc_session": cc_session,
            "kind": kind,
            "cwd": cwd,
            "user": os.getuid(),
            "since": iso(utc_now()),
        }
        data = json.dumps(record, sort_keys=True).encode() + b"\n"
        fsutil.atomic_write(self._attached_path(owner), data, CLIENT_FILE_MODE, durable=False)

    def detach(self, owner: Process) -> None:
        path = self._attached_path(owner)
        if (record := self._read_attached(path)) is not None and record.owner == owner:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _read_attached(self, path: Path) -> Attached | None:
        read = _read_regular(path)
        try:
            raw = json.loads(read[0]) if read is not None else None
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        owner = Process.from_json(raw.get("owner"))
        if owner is None:
            return None
        cc, user = raw.get("cc_session"), raw.get("user")
        return Attached(
            owner,
            cc if isinstance(cc, str) else None,
            str(raw.get("kind", "interactive")),
            str(raw.get("cwd", "")),
            user if isinstance(user, int) else -1,
            str(raw.get("since", "")),
        )

    def attached(self) -> list[Attached]:
        """The live processes attached to this session; records of dead ones are removed."""
        live: list[Attached] = []
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return []
        for name in names:
            if not (name.startswith(ATTACHED_PREFIX) and name.endswith(".json")):
                continue
            path = self.directory / name
            record = self._read_attached(path)
            if record is not None and record.owner.alive():
                live.append(record)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return live


def _read_regular(path: Path) -> tuple[bytes, os.stat_result] | None:
    """The bytes of `path` if it is a regular file (never through a symlink, never
    blocking on a FIFO someone put there), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks), st
    except OSError:
        return None
    finally:
        os.close(fd)


def transcript_has(transcript: str | None, tag: str) -> bool:
    """True if the Claude Code transcript mentions `tag` (the reply is in the conversation)."""
    if not transcript:
        return False
    try:
        with open(transcript, "rb") as f:
            return tag.encode() in f.read()
    except OSError:
        return False
