"""Queue file names, as bytes: every legal length in 1-, 2-, 3- and 4-byte characters, not
UTF-8 at all, odd ASCII, dot-names, and long names that share a 200-byte prefix."""

from __future__ import annotations

import random

NAME_MAX = 255
ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~!#$%&'()+,;=@[]^`{}"
WIDE = {
    1: list(ASCII),
    2: ["é", "ß", "ñ", "Ω", "Ж", "ح", "ש"],
    3: ["中", "文", "日", "한", "€", "\u200b", "\ufffd", "\u202e"],
    4: ["😀", "🎉", "𝄞", "🀄", "\U0010fffd"],
}
BAD = [b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf5\x80\x80\x80", b"\xe2\x82"]
WEIRD = [
    "with space {uid}.json", "new\nline {uid}.json", "tab\t{uid}.json", "-{uid}.json",
    "q-00000000000000000000-{uid}.json", "{uid}.json.reason", "{uid}.reason", "{uid}.tmp",
    "{uid}", "*{uid}?.json", "'{uid}\".json", "\\{uid}.json", "{uid}.JSON", "{uid}.json ",
    "{uid}.json.", "\x01{uid}.json", "\x7f{uid}.json", "~{uid}.json", "{uid}.json~",
    "$(touch {uid}).json", "{uid};rm -rf x.json", "%s%n{uid}.json", "CON {uid}.json",
    "j-{uid}.txt", "\u200b.{uid}.json",
]  # fmt: skip


def every_length() -> list[tuple[int, int]]:
    """(character width, byte length) for every legal name length, for each width."""
    return [(w, n) for w in (1, 2, 3, 4) for n in range(1, NAME_MAX + 1)]


class Names:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def exact(self, width: int, length: int) -> bytes:
        """A name of exactly `length` bytes, of `width`-byte characters as far as they go,
        ending in .json when there is room."""
        rng = self.rng
        suffix = b".json" if length >= 7 and rng.random() < 0.85 else b""
        room = length - len(suffix)
        count, rest = divmod(room, width)
        body = "".join(rng.choice(ASCII) for _ in range(rest))
        body += "".join(rng.choice(WIDE[width]) for _ in range(count))
        name = body.encode() + suffix
        assert len(name) == length, (width, length, name)
        return name

    def ascii(self, uid: str) -> bytes:
        return f"{uid}.json".encode()

    def weird(self, uid: str) -> bytes:
        return self.rng.choice(WEIRD).format(uid=uid).encode()

    def non_utf8(self, uid: str) -> bytes:
        rng = self.rng
        parts = [
            rng.choice(BAD) if rng.random() < 0.5 else rng.choice(ASCII).encode()
            for _ in range(rng.randint(1, 60))
        ]
        name = rng.choice(BAD) + b"".join(parts) + uid.encode()
        name = name[: NAME_MAX - 5] + b".json"
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            return name
        return self.non_utf8(uid)

    def dot(self, uid: str) -> bytes:
        return (
            self.rng.choice([".{uid}.json", "..{uid}.json", ".claim-{uid}", ".{uid}"])
            .format(uid=uid)
            .encode()
        )

    def shared_prefix(self, count: int) -> list[bytes]:
        """`count` names with one 200-byte prefix; they differ right after it, or only in
        their last characters."""
        rng = self.rng
        width = rng.choice([1, 2, 3, 4])
        prefix = self.exact(width, 200)
        if prefix.endswith(b".json"):
            prefix = prefix[:-5] + b"ppppp"
        total = rng.choice([NAME_MAX, NAME_MAX, rng.randint(207, NAME_MAX)])
        late = rng.random() < 0.5
        names = []
        for i in range(count):
            tag = f"{i:02d}".encode()
            fill = b"f" * (total - 200 - len(tag) - 5)
            tail = (fill + tag) if late else (tag + fill)
            names.append(prefix + tail + b".json")
        assert all(len(n) == total for n in names) and len(set(names)) == count
        return names
