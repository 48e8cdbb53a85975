"""Envelope and operator-input bytes, each with what the contract says must become of it.

Every generated thing carries its uid (`fz` + 12 hex digits) somewhere in its bytes, so
refused copies can be told apart by their bytes, and answers by the uid in them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fuzz.model import Expect, expected_reply

SESSIONS = ("session-1", "session-2", "session-3")
MAX_ENVELOPE_BYTES = 262144
OPERATOR_MAX_BYTES = 1024 * 1024

WORDS = ["relay", "queue", "envelope", "fuzz", "turn", "reply", "ok", "42", "a", "zz"]
MULTIBYTE = [
    "é", "ß", "ñ", "Ω", "Ж", "中", "文", "日本", "한국", "€", "😀", "🎉", "𝄞",
    "🏳️‍🌈", "e\u0301", "\u200b", "\u202e", "\ufeff", "\u2028", "\u00a0",
]  # fmt: skip
ODD = [
    "\t",
    "\n",
    "\r\n",
    '"',
    "\\",
    "/",
    "\x01",
    "\x00",
    "\x7f",
    "[[",
    "]]",
    "{",
    "}",
    "@session-1: ",
]
UNKNOWN_SESSIONS = [
    "session-9", "Session-1", " session-1", "session-1 ", "session-1\n", "", "session-01",
    "../session-1", "session-1/..", "séssion-1", "session-1\u0000", "s" * 300, "*", "session-",
]  # fmt: skip
BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf5\x80\x80\x80",
            b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\xc3\x28"]  # fmt: skip
PLACEHOLDER = "\u2603PLACEHOLDER\u2603"


@dataclass(frozen=True)
class Content:
    facet: str
    expect: Expect
    data: bytes
    session: str | None = None  # where the answer must land (None: any session)
    reply: str | None = None  # the exact text dispatched for it


class Contents:
    """Bytes for queue files and for state/jc_input.txt, from one seeded random source."""

    def __init__(self, rng: random.Random, max_bytes: int = MAX_ENVELOPE_BYTES) -> None:
        self.rng = rng
        self.max_bytes = max_bytes

    # ---- pieces ---------------------------------------------------------------------

    def uid(self) -> str:
        return f"fz{self.rng.getrandbits(48):012x}"

    def session(self) -> str:
        return self.rng.choice(SESSIONS)

    def text(self, uid: str, pieces: int | None = None) -> str:
        """Content that starts with the uid, then words, multibyte text and odd characters."""
        rng = self.rng
        n = rng.randint(1, 12) if pieces is None else pieces
        parts = [rng.choice((WORDS, MULTIBYTE, ODD, WORDS))[0:] for _ in range(n)]
        return uid + " " + "".join(rng.choice(p) + rng.choice(["", " "]) for p in parts)

    def dumps(self, obj: Any, *, ascii_only: bool | None = None) -> bytes:
        """JSON as clients write it: any key order, compact or indented, escaped or not."""
        rng = self.rng
        if isinstance(obj, dict):
            items = list(obj.items())
            rng.shuffle(items)
            obj = dict(items)
        ensure_ascii = rng.random() < 0.3 if ascii_only is None else ascii_only
        indent = rng.choice([None, None, 0, 2])
        separators = rng.choice([None, (",", ":"), (", ", ": ")])
        text = json.dumps(obj, ensure_ascii=ensure_ascii, indent=indent, separators=separators)
        return text.encode("utf-8", "surrogatepass")

    def envelope(self, uid: str, session: str, **fields: Any) -> dict[str, Any]:
        env: dict[str, Any] = {"session_id": session, "content": self.text(uid)}
        rng = self.rng
        if rng.random() < 0.7:
            env["timestamp"] = rng.choice(
                ["2026-05-02T00:00:00Z", "2026-11-25T12:34:56.789+01:00", "", "yesterday"]
            )
        if rng.random() < 0.2:
            env[rng.choice(["extra", "é", "meta", "😀"])] = rng.choice(
                [None, 1, [1, {"a": []}], {"nested": {"deeper": "x"}}, "x" * 50, True]
            )
        env.update(fields)
        return env

    def _placeholder(self, obj: dict[str, Any], raw: str) -> bytes:
        """`obj` as JSON with PLACEHOLDER replaced by raw JSON text (escapes, big numbers)."""
        data = self.dumps(obj, ascii_only=False)
        quoted = json.dumps(PLACEHOLDER, ensure_ascii=False).encode()
        if quoted in data:  # the whole value
            return data.replace(quoted, raw.encode(), 1)
        return data.replace(PLACEHOLDER.encode(), raw.encode(), 1)  # inside a string

    def _sized(self, uid: str, session: str, size: int) -> bytes:
        """A valid envelope of exactly `size` bytes."""
        base = json.dumps({"session_id": session, "content": uid + " "}).encode()
        pad = size - len(base)
        assert pad >= 0
        return json.dumps({"session_id": session, "content": uid + " " + "a" * pad}).encode()

    # ---- envelope contents ------------------------------------------------------------

    def valid(self, uid: str) -> Content:
        s = self.session()
        rng = self.rng
        kind = rng.choice(["plain", "plain", "plain", "id", "escaped", "ws", "ts-missing"])
        if kind == "id":
            env_id = rng.choice(
                [f"id-{uid}", f"ид-{uid}-" + "é" * rng.randint(0, 150), (uid + "x" * 200)[:200]]
            )
            data = self.dumps(self.envelope(uid, s, id=env_id))
            return Content("content:valid-id", Expect.ANSWER, data, s)
        if kind == "escaped":
            env = self.envelope(uid, s, content=f'{uid} 😀 \U0001d11e é \u2028 \\ " \x01')
            return Content(
                "content:valid-escaped", Expect.ANSWER, self.dumps(env, ascii_only=True), s
            )
        if kind == "ws":
            data = rng.choice([b"\n", b" \t", b"\r\n"]) + self.dumps(self.envelope(uid, s))
            return Content("content:valid-whitespace", Expect.ANSWER, data + b"\n \r\n", s)
        env = self.envelope(uid, s)
        if kind == "ts-missing":
            env.pop("timestamp", None)
        return Content("content:valid", Expect.ANSWER, self.dumps(env), s)

    def big(self, uid: str) -> Content:
        """Around the size limit: exactly at it (accepted), one byte over, or far over."""
        s = self.session()
        which = self.rng.choice(["at-limit", "over-by-1", "over"])
        if which == "at-limit":
            return Content(
                "content:size-at-limit", Expect.ANSWER, self._sized(uid, s, self.max_bytes), s
            )
        over = 1 if which == "over-by-1" else self.rng.randint(2, self.max_bytes // 2)
        return Content(
            "content:too-large", Expect.REJECT, self._sized(uid, s, self.max_bytes + over)
        )

    def invalid_json(self, uid: str) -> Content:
        s = self.session()
        good = json.dumps({"content": self.text(uid), "session_id": s}, ensure_ascii=False).encode()
        rng = self.rng
        while True:
            mutation = rng.randrange(9)
            at = good.index(uid.encode()) + len(uid)
            if mutation == 0:
                data = good[: rng.randint(at, len(good) - 1)]
            elif mutation == 1:
                data = good[:-1] + b",}"
            elif mutation == 2:
                data = good.replace(b'"', b"'")
            elif mutation == 3:
                data = b'{content: "' + uid.encode() + b'", session_id: "' + s.encode() + b'"}'
            elif mutation == 4:
                data = b"// a comment\n" + good
            elif mutation == 5:
                data = good + b"\n" + good
            elif mutation == 6:
                data = good[:at] + rng.choice([b"\x01", b"\n", b"\x00", b"\t"]) + good[at:]
            elif mutation == 7:
                data = b"{" + uid.encode()
            else:
                data = good[:at] + b"\\x" + good[at:]  # an escape JSON does not have
            try:
                json.loads(data.decode("utf-8"))
            except (ValueError, RecursionError):
                return Content("content:invalid-json", Expect.REJECT, data)

    def non_utf8(self, uid: str) -> Content:
        s = self.session()
        env = {"session_id": s, "content": f"{uid} café {self.text(uid, 2)[15:]}"}
        rng = self.rng
        which = rng.randrange(3)
        if which == 0:
            good = json.dumps(env, ensure_ascii=False).encode()
            at = good.index(uid.encode()) + len(uid)
            data = good[:at] + rng.choice(BAD_UTF8) + good[at:]
        elif which == 1:
            env["content"] = f"{uid} café"
            data = json.dumps(env, ensure_ascii=False).encode("latin-1")
        else:
            data = json.dumps(env, ensure_ascii=False).encode(rng.choice(["utf-16", "utf-32"]))
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return Content("content:non-utf8", Expect.REJECT, data)
        return self.non_utf8(uid)

    def bom(self, uid: str) -> Content:
        s = self.session()
        data = b"\xef\xbb\xbf" + self.dumps(self.envelope(uid, s))
        return Content("content:utf8-bom", Expect.EITHER, data, s)

    def surrogate(self, uid: str) -> Content:
        """Lone surrogates written as JSON escapes: the text is valid UTF-8, the string is not
        valid Unicode. README: refused, like invalid UTF-8."""
        s = self.session()
        rng = self.rng
        escape = rng.choice([r"\ud800", r"\udfff", r"\udc00\ud800", r"x\ud83d", r"\ud83dx"])
        where = rng.choice(["content", "id", "session_id"])
        if where == "content":
            env = self.envelope(uid, s, content=f"{uid} {PLACEHOLDER} tail")
            return Content(
                "content:surrogate-in-content", Expect.REJECT, self._placeholder(env, escape), s
            )
        if where == "id":
            env = self.envelope(uid, s, id=f"id-{uid}-{PLACEHOLDER}")
            return Content(
                "content:surrogate-in-id", Expect.REJECT, self._placeholder(env, escape), s
            )
        env = self.envelope(uid, s, session_id=f"{s}{PLACEHOLDER}")
        return Content(
            "content:surrogate-in-session", Expect.REJECT, self._placeholder(env, escape)
        )

    def deep(self, uid: str) -> Content:
        rng = self.rng
        which = rng.randrange(4)
        depth = rng.choice([1000, 3000, 100000, 100000, 250000])
        if which == 0:
            return Content("content:deep-nesting", Expect.REJECT, b"[" * depth + uid.encode())
        if which == 1:
            depth = min(depth, (self.max_bytes - 100) // 6)
            data = b'{"a":' * depth + json.dumps(uid).encode() + b"}" * depth
            return Content("content:deep-nesting", Expect.REJECT, data)
        if which == 2:
            depth = min(depth, (self.max_bytes - 100) // 2)
            data = b"[" * depth + json.dumps(uid).encode() + b"]" * depth
            return Content("content:deep-nesting", Expect.REJECT, data)
        # A valid envelope carrying a deep value in a field relay ignores: JSON allows it,
        # and RFC 8259 lets a parser limit depth, so refusing it is fine too.
        s = self.session()
        depth = min(depth, (self.max_bytes - 400) // 2)
        env = self.envelope(uid, s, extra=PLACEHOLDER)
        data = self._placeholder(env, "[" * depth + "]" * depth)
        return Content("content:deep-nesting-in-field", Expect.EITHER, data, s)

    def big_number(self, uid: str) -> Content:
        rng = self.rng
        digits = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(9999))
        s = self.session()
        which = rng.randrange(5)
        if which == 0:
            data = self._placeholder(self.envelope(uid, s, n=PLACEHOLDER), digits)
            return Content("content:bigint-in-field", Expect.EITHER, data, s)
        if which == 1:
            data = self._placeholder({"session_id": s, "content": PLACEHOLDER, "u": uid}, digits)
            return Content("content:bigint-as-content", Expect.REJECT, data)
        if which == 2:
            data = self._placeholder(self.envelope(uid, s, session_id=PLACEHOLDER), "-" + digits)
            return Content("content:bigint-as-session", Expect.REJECT, data)
        if which == 3:
            return Content("content:bigint-top-level", Expect.REJECT, digits.encode())
        number = rng.choice(["1e999999", "-1e999999", "0." + digits, digits + ".5e-99999"])
        data = self._placeholder(self.envelope(uid, s, x=PLACEHOLDER), number)
        return Content("content:huge-float-in-field", Expect.EITHER, data, s)

    def empty(self, uid: str) -> Content:
        rng = self.rng
        data = rng.choice([b"", b"", b" ", b"\n\n", b"\x00", b"\t\r\n"])
        return Content("content:empty-file", Expect.REJECT, data)

    def empty_content(self, uid: str) -> Content:
        s = self.session()
        blank = self.rng.choice(["", " ", "\n\t\r ", "\u3000\u00a0\u2003"])
        expect = Expect.REJECT if not blank.strip(" \t\r\n") else Expect.EITHER
        data = self.dumps({"session_id": s, "content": blank, "u": uid})
        return Content("content:empty-content", expect, data, s)

    def wrong_types(self, uid: str) -> Content:
        rng = self.rng
        s = self.session()
        env = self.envelope(uid, s, u=uid)
        field = rng.choice(["session_id", "content", "timestamp", "id", "missing", "nan"])
        if field == "missing":
            del env[rng.choice(["session_id", "content"])]
        elif field == "nan":
            data = self._placeholder(self.envelope(uid, s, session_id=PLACEHOLDER), "NaN")
            return Content("content:wrong-types", Expect.REJECT, data)
        else:
            bad: dict[str, list[Any]] = {
                "session_id": [1, None, [], {}, True, 1.5, [s]],
                "content": [1, None, [], {"text": uid}, True, [uid], 0],
                "timestamp": [1, [], {}, True, 1.5],
                "id": [1, [], {}, "", True, 0],
            }
            env[field] = rng.choice(bad[field])
        return Content("content:wrong-types", Expect.REJECT, self.dumps(env))

    def id_null(self, uid: str) -> Content:
        s = self.session()
        return Content(
            "content:id-null", Expect.EITHER, self.dumps(self.envelope(uid, s, id=None)), s
        )

    def not_object(self, uid: str) -> Content:
        s = self.session()
        value = self.rng.choice(
            [[self.envelope(uid, s)], uid, int(uid[2:], 16), f"null {uid}", [], True]
        )
        data = value.encode() if isinstance(value, str) and value.startswith("null") else None
        return Content("content:not-an-object", Expect.REJECT, data or self.dumps(value))

    def unknown_session(self, uid: str) -> Content:
        env = self.envelope(uid, "x", session_id=self.rng.choice(UNKNOWN_SESSIONS))
        return Content("content:unknown-session", Expect.REJECT, self.dumps(env))

    def reserved_session(self, uid: str) -> Content:
        env = self.envelope(uid, "x", session_id=self.rng.choice(["operator", "relay"]))
        return Content("content:session-operator-or-relay", Expect.REJECT, self.dumps(env))

    def long_id(self, uid: str) -> Content:
        s = self.session()
        env_id = (uid + self.rng.choice(["x", "é", "😀"]) * 1000)[: self.rng.randint(201, 1000)]
        return Content(
            "content:id-over-200", Expect.EITHER, self.dumps(self.envelope(uid, s, id=env_id)), s
        )

    def duplicate_keys(self, uid: str) -> Content:
        s = self.session()
        env = json.dumps({"content": self.text(uid), "session_id": s}).encode()
        data = b'{"session_id": "session-9", ' + env[1:]
        return Content("content:duplicate-keys", Expect.EITHER, data, s)

    def table(self) -> list[tuple[float, Callable[[str], Content]]]:
        """(weight, generator) for one random envelope file."""
        return [
            (40, self.valid), (2, self.big), (7, self.invalid_json), (5, self.non_utf8),
            (1, self.bom), (6, self.surrogate), (3, self.deep), (4, self.big_number),
            (3, self.empty), (3, self.empty_content), (8, self.wrong_types), (1, self.id_null),
            (3, self.not_object), (5, self.unknown_session), (3, self.reserved_session),
            (2, self.long_id), (1, self.duplicate_keys),
        ]  # fmt: skip

    def random(self, uid: str) -> Content:
        table = self.table()
        make = self.rng.choices([g for _, g in table], weights=[w for w, _ in table])[0]
        return make(uid)

    # ---- operator input (state/jc_input.txt) ------------------------------------------------

    def operator(self, uid: str, kind: str) -> Content:
        rng = self.rng
        s = self.session()
        body = f"direct {uid} " + self.text(uid, rng.randint(0, 6))[15:].replace("\r", "")
        body = body.strip() or f"direct {uid}"
        if kind == "direct":
            sep = rng.choice([" ", "", "\n", "\t", "  "])
            return Content("jc:direct", Expect.ANSWER, f"@{s}:{sep}{body}".encode(), s, body)
        if kind == "direct-multiline":
            body = f"{uid} first line\nsecond é 中\n\nlast 😀"
            return Content("jc:direct-multiline", Expect.ANSWER, f"@{s}:\n{body}".encode(), s, body)
        if kind == "direct-1MiB":
            head = f"@{s}: {uid} "
            pad = OPERATOR_MAX_BYTES - len(head.encode()) - 2
            body = f"{uid} " + "é" * (pad // 2) + "x" * (pad % 2) + " !"
            data = f"@{s}: {body}".encode()
            assert len(data) == OPERATOR_MAX_BYTES
            return Content("jc:direct-exactly-1MiB", Expect.ANSWER, data, s, body)
        if kind == "direct-unknown":
            who = rng.choice(["session-9", "operator", "relay", "Session-1", "session-10"])
            data = f"@{who}: {uid} where does this go".encode()
            return Content("jc:direct-unknown-session", Expect.REJECT, data)
        if kind == "direct-empty":
            blank = rng.choice(["", " ", " \n "])
            return Content("jc:direct-empty", Expect.SILENT, f"@{s}:{blank}".encode())
        if kind == "direct-odd-name":
            data = f"@séssion-1: {uid} not a session name relay knows".encode()
            return Content(
                "jc:direct-non-ascii-name", Expect.EITHER, data, None, expected_reply(uid)
            )
        if kind == "text":
            text = f"{uid} " + rng.choice(["please go on", "中文 ok", "é😀", "a @session-1: b"])
            return Content("jc:text", Expect.ANSWER, text.encode(), None, expected_reply(uid))
        if kind == "over-1MiB":
            data = f"{uid} ".encode() + "é".encode() * (
                OPERATOR_MAX_BYTES // 2 + rng.randint(1, 999)
            )
            return Content("jc:over-1MiB", Expect.REJECT, data)
        if kind == "non-utf8":
            data = f"{uid} ".encode() + rng.choice(BAD_UTF8) + b" rest"
            return Content("jc:non-utf8", Expect.REJECT, data)
        if kind == "whitespace":
            return Content("jc:whitespace-only", Expect.SILENT, rng.choice([b" ", b"\n", b" \t\n"]))
        raise ValueError(kind)
