"""What the campaign throws, and what the contract says must become of each thing."""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass

UID_RE = re.compile(r"fz[0-9a-f]{12}")

# What a refused thing looks like in a rejected folder: ("reg", sha256 of the bytes),
# ("lnk", link target), ("dir", child names...), ("fifo", uid) or ("sock", uid).
Signature = tuple[str, ...]


class Expect(enum.Enum):
    ANSWER = "answered exactly once"
    REJECT = "refused with a reason"
    EITHER = "answered exactly once, or refused with a reason"
    IGNORE = "ignored (a dot-name): left in queue/, never answered"
    SILENT = "consumed, never answered"


def reg_signature(data: bytes) -> Signature:
    return ("reg", hashlib.sha256(data).hexdigest())


@dataclass
class Thrown:
    """One input: a queue entry or one write of state/jc_input.txt."""

    uid: str
    facets: tuple[str, ...]  # e.g. ("name:utf8-w2", "content:valid", "kind:regular")
    expect: Expect
    name: bytes  # its name in queue/ (b"jc_input.txt" for operator input)
    signature: Signature
    head: bytes = b""  # the first bytes, for the failure list
    size: int = 0
    session: str | None = None  # where its answer must land; None: any session
    reply: str | None = None  # the exact text that must be dispatched
    private: bool = False  # operator input: refused into state/rejected/
    group: str | None = None  # a group: exactly one member answered, the rest refused
    incarnation: int = 0
    round: int = 0
    placed: bool = False  # False: the client never got it into place

    def describe(self) -> str:
        name = self.name.decode("utf-8", "backslashreplace")
        shown = name if len(name) <= 60 else f"{name[:40]}…{name[-12:]}"
        head = self.head[:70]
        return (
            f"{self.uid} [{', '.join(self.facets)}] name={shown!r} ({len(self.name)} bytes), "
            f"{self.size} bytes: {head!r}{'…' if self.size > len(head) else ''}"
        )


def expected_reply(uid: str) -> str:
    """What the campaign's stand-in answers to a turn carrying `uid`."""
    return f"re:{uid}"
