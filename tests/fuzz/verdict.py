"""Judging the campaign: what became of each input, against what the contract says.

An input's fate is read only from the contract's files: the replies the sessions took
from dispatch/<session>/input.txt, the refused files in queue/.rejected/ (and, for the
operator's input, state/rejected/) with their .reason beside them, and queue/ itself.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.harness import Received
from tests.fuzz.model import UID_RE, Expect, Signature, Thrown

REASON = b".reason"


@dataclass
class Entry:
    where: str  # "queue/.rejected" or "state/rejected"
    name: bytes
    signature: Signature
    reason: str | None  # None: no NAME.reason beside it


class RejectedFolder:
    """The entries of one rejected folder, each read once (the folder only grows)."""

    def __init__(self, path: Path, where: str) -> None:
        self.path = os.fsencode(path)
        self.where = where
        self._seen: dict[bytes, tuple[int, int, int, Signature]] = {}

    def entries(self) -> list[Entry]:
        try:
            names = set(os.listdir(self.path))
        except FileNotFoundError:
            return []
        result = []
        for name in names:
            full = self.path + b"/" + name
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._seen.get(name)
            if cached is not None and cached[:3] == key:
                signature = cached[3]
            else:
                signature = signature_of(full, st)
                self._seen[name] = (*key, signature)
            reason = None
            if name + REASON in names:
                try:
                    with open(full + REASON, "rb") as f:
                        reason = f.read(400).decode("utf-8", "replace").strip()
                except OSError:
                    reason = None
            result.append(Entry(self.where, name, signature, reason))
        return result


def signature_of(path: bytes, st: os.stat_result) -> Signature:
    if stat.S_ISLNK(st.st_mode):
        return ("lnk", os.readlink(path).hex())
    if stat.S_ISDIR(st.st_mode):
        try:
            return ("dir", *sorted(n.hex() for n in os.listdir(path)))
        except OSError:
            return ("dir", "unreadable")
    uid = UID_RE.search(os.path.basename(path).decode("utf-8", "replace"))
    if stat.S_ISFIFO(st.st_mode):
        return ("fifo", uid.group(0) if uid else "")
    if stat.S_ISSOCK(st.st_mode):
        return ("sock", uid.group(0) if uid else "")
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return ("reg", digest.hexdigest())
    return ("other", oct(st.st_mode))


@dataclass
class Fate:
    thrown: list[Thrown]  # one input, or a group
    label: str
    ok: bool
    detail: str = ""
    pending: bool = False  # nothing has become of it yet


@dataclass
class Judgement:
    fates: list[Fate] = field(default_factory=list)
    stray_replies: list[str] = field(default_factory=list)  # dispatched, but for no input
    stray_entries: list[str] = field(default_factory=list)  # refused, but no input matches
    notices: int = 0  # relay's own word to a session about an envelope the API refused
    leftovers: list[str] = field(default_factory=list)  # dot-files (temp files) left there


def judge(
    thrown: list[Thrown],
    received: list[Received],
    entries: list[Entry],
    dot_fates: dict[str, bool],
) -> Judgement:
    """Given one data directory's inputs, the replies its sessions took, its rejected
    entries, and whether each dot-named input was left alone, return every input's fate."""
    result = Judgement()
    replies: dict[str, list[Received]] = defaultdict(list)
    anonymous: dict[str, list[Received]] = defaultdict(list)
    for got in received:
        uids = set(UID_RE.findall(got.text))
        if not uids:
            anonymous[got.session].append(got)
        elif len(uids) > 1:
            result.stray_replies.append(f"{got.session}: {got.text[:200]!r}")
        else:
            replies[uids.pop()].append(got)
    known = {t.uid for t in thrown}
    for uid, got_list in replies.items():
        if uid not in known:
            result.stray_replies += [f"{g.session}: {g.text[:120]!r}" for g in got_list]

    pool: dict[tuple[str, Signature], list[Entry]] = defaultdict(list)
    for entry in entries:
        pool[(entry.where, entry.signature)].append(entry)
    for bucket in pool.values():
        bucket.sort(key=lambda e: e.reason is None)  # entries with a reason first
    refused: dict[int, Entry] = {}
    for t in thrown:
        if not t.placed or t.expect is Expect.IGNORE:
            continue
        where = "state/rejected" if t.private else "queue/.rejected"
        found = pool.get((where, t.signature))
        if found:
            refused[id(t)] = found.pop(0)
    # An envelope the API refuses after relay accepted it is set aside, and relay may tell
    # its session so: one message without a uid per such refusal is allowed there.
    for session, got_list in anonymous.items():
        allowed = sum(
            1
            for t in thrown
            if id(t) in refused
            and t.session == session
            and any(f.startswith("api:") for f in t.facets)
        )
        result.notices += min(allowed, len(got_list))
        result.stray_replies += [f"{g.session}: {g.text[:200]!r}" for g in got_list[allowed:]]
    every = {(x.where, x.name) for x in entries}
    for bucket in pool.values():
        for e in bucket:
            if e.name.endswith(REASON) and (e.where, e.name[: -len(REASON)]) in every:
                continue
            shown = f"{e.where}/{e.name!r} (reason: {e.reason!r})"
            if e.name.startswith(b"."):
                result.leftovers.append(f"temp file {shown}")
            elif e.name.endswith(REASON) and e.signature[0] == "reg":
                result.leftovers.append(f".reason without its file: {shown}")
            else:
                result.stray_entries.append(shown)

    groups: dict[str, list[Thrown]] = defaultdict(list)
    for t in thrown:
        if t.group is not None:
            groups[t.group].append(t)
        elif t.placed:
            result.fates.append(_single(t, replies.get(t.uid, []), refused.get(id(t)), dot_fates))
    for members in groups.values():
        result.fates.append(_group(members, replies, refused))
    return result


def _single(t: Thrown, got: list[Received], entry: Entry | None, dots: dict[str, bool]) -> Fate:
    if t.expect is Expect.IGNORE:
        left = dots.get(t.uid, False)
        label = "ignored" if left and not got else "taken (not ignored)"
        if got:
            label = "answered (a dot-file!)"
        return Fate([t], label, label == "ignored")
    wrong = [
        g for g in got if (t.session and g.session != t.session) or (t.reply and g.text != t.reply)
    ]
    detail = ""
    if entry is not None:
        detail = f"refused as {entry.where}/{entry.name!r}: {entry.reason!r}"
    if got:
        detail += f" replies: {[(g.session, g.text[:60]) for g in got]}"
    if len(got) > 1:
        label = f"answered {len(got)} times"
    elif got and entry is not None:
        label = "answered and refused"
    elif got and wrong:
        label = "answered wrongly"
    elif got:
        label = "answered"
    elif entry is not None:
        one_line = entry.reason and "\n" not in entry.reason
        label = "refused" if one_line else "refused without a one-line .reason"
    else:
        label = "consumed silently" if t.expect is Expect.SILENT else "unresolved"
    allowed = {
        Expect.ANSWER: {"answered"},
        Expect.REJECT: {"refused"},
        Expect.EITHER: {"answered", "refused"},
        Expect.SILENT: {"consumed silently", "refused"},
    }[t.expect]
    return Fate([t], label, label in allowed, detail.strip(), label == "unresolved")


def _group(
    members: list[Thrown], replies: dict[str, list[Received]], refused: dict[int, Entry]
) -> Fate:
    placed = [m for m in members if m.placed]
    answers = sum(len(replies.get(uid, [])) for uid in {m.uid for m in placed})
    refusals = [refused[id(m)] for m in placed if id(m) in refused]
    label = f"{answers} answered, {len(refusals)} refused of {len(placed)}"
    ok = answers == 1 and len(refusals) == len(placed) - 1
    ok = ok and all(e.reason and "\n" not in e.reason for e in refusals)
    if len(placed) < 2:
        ok, label = True, f"not thrown whole ({len(placed)} of {len(members)} placed)"
    detail = "; ".join(f"{e.name!r}: {e.reason!r}" for e in refusals)
    return Fate(members, label, ok, detail, answers + len(refusals) < len(placed))


def tally(fates: list[Fate]) -> tuple[dict[str, Counter[str]], Counter[str]]:
    """Per facet, how many inputs ended each way; and the outcome counts overall."""
    per_facet: dict[str, Counter[str]] = defaultdict(Counter)
    overall: Counter[str] = Counter()
    for fate in fates:
        for t in fate.thrown:
            if not t.placed:
                continue
            bucket = "FAILED" if not fate.ok else fate.label.split(" (")[0]
            if fate.ok and len(fate.thrown) > 1:
                bucket = "group ok"
            for facet in t.facets:
                per_facet[facet]["thrown"] += 1
                per_facet[facet][bucket] += 1
            overall[bucket] += 1
    return per_facet, overall
