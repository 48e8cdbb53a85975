"""Answers from the phone, the pure part: the question's push (options as buttons), what a
message on the answer topic means, and how an answer is handed to the conversation.

No I/O here: relay/subscriber.py streams the answer topic and applies these decisions, and
relay/engine.py checks a handed-over answer against the question pending when it is taken.

The wire format of a button's answer (the body the phone publishes when it is tapped) is a
JSON object `{"question": "<id>", "answer": "<text>"}`; anything else on the answer topic
is a typed answer. A handed-over answer is operator input (state/jc_input.txt) whose first
line says where it came from: `[relay-answer ntfy=<message id> question=<id>]`.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from relay.ntfy import MAX_ACTIONS, MAX_BODY_BYTES, Action, Push, fit

MAX_OPTIONS = MAX_ACTIONS
MAX_OPTION_CHARS = 64  # a button label; longer options are not offered as buttons
RELAY_TAG = "relay"  # every push relay sends carries it; answers never do

_OPTIONS_RE = re.compile(r"^\s*options\s*:\s*(.+?)\s*$", re.IGNORECASE)
_NTFY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_QUESTION_RE = re.compile(r"^Q[0-9]{1,12}-[0-9a-z]{1,8}$")
_HANDOVER_RE = re.compile(
    r"\A\[relay-answer ntfy=([A-Za-z0-9_-]{1,64})(?: question=(Q[0-9]{1,12}-[0-9a-z]{1,8}))?\]\n"
)


# ---- the question ------------------------------------------------------------------------


def parse_options(text: str) -> tuple[str, ...]:
    """The options of a `[NEEDS-JC]` reply: its last non-empty line, if that reads
    `Options: a | b | c`. At most three (ntfy's limit on buttons); none if any is empty
    or too long for a button, since a button that says less than the option would be
    worse than typing."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ()
    match = _OPTIONS_RE.match(lines[-1])
    if match is None:
        return ()
    options = tuple(part.strip() for part in match.group(1).split("|"))
    if any(not o or len(o) > MAX_OPTION_CHARS for o in options):
        return ()
    return options[:MAX_OPTIONS]


def button_body(question: str, answer: str) -> str:
    return json.dumps({"question": question, "answer": answer}, ensure_ascii=False)


def question_push(question: str, origin: str, text: str, answer_url: str | None) -> Push:
    """The push for a pending question. With an answer topic (`answer_url`, which in a
    browser is also the web app on that topic), a tap on the notification opens the web
    app to type an answer, each option is a button that publishes it, and with room left
    (fewer than three options) a `view` button does what the tap does."""
    footer = f"\n\n(question {question}) "
    actions: list[Action] = []
    if answer_url is None:
        footer += "Answer with: sudo relay reply 'your answer'"
    else:
        options = parse_options(text)
        actions = [Action("http", o, answer_url, button_body(question, o)) for o in options]
        if len(actions) < MAX_ACTIONS:
            actions.append(Action("view", "Type an answer", answer_url))
        footer += (
            "Tap an answer, or tap" if options else "Tap"
        ) + " this to type one; or at the shell: sudo relay reply 'your answer'"
    room = MAX_BODY_BYTES - len(footer.encode("utf-8"))
    return Push(
        title=f"relay: {origin} needs you",
        message=fit(text, room) + footer,
        priority="high",
        tags=("warning", RELAY_TAG),
        click=answer_url,
        actions=tuple(actions),
        key=question,
    )


def acknowledgement(text: str) -> Push:
    """A low-priority push on the question topic saying what became of an answer."""
    return Push("relay: " + text, text, "low", ("speech_balloon", RELAY_TAG))


# ---- handing an answer over ------------------------------------------------------------------


@dataclass(frozen=True)
class Handover:
    """An answer from the phone as operator input: its ntfy id, the question it answers
    (a button's; None for a typed answer) and the text."""

    ntfy_id: str
    question: str | None
    text: str

    def encode(self) -> str:
        question = f" question={self.question}" if self.question else ""
        return f"[relay-answer ntfy={self.ntfy_id}{question}]\n{self.text}"


def decode_handover(text: str) -> Handover | None:
    """The answer in operator input, or None for input typed at the shell."""
    match = _HANDOVER_RE.match(text)
    if match is None:
        return None
    return Handover(match.group(1), match.group(2), text[match.end() :])


# ---- what a message on the answer topic is ------------------------------------------------


@dataclass(frozen=True)
class Skip:
    """Not an answer (an open or keepalive event, a line that is not a message)."""

    why: str


@dataclass(frozen=True)
class Refused:
    """A message that is not taken: logged, and acknowledged when `ack` (a push back
    would help the operator, and cannot feed a loop)."""

    ntfy_id: str
    time: int
    reason: str
    ack: bool = True


@dataclass(frozen=True)
class Answer:
    ntfy_id: str
    time: int
    question: str | None  # a button's question id; None for a typed answer
    text: str


Message = Skip | Refused | Answer


def read_line(line: bytes, max_answer_bytes: int) -> Message:
    """One line of the answer stream (`/<topic>/json`), judged on its own."""
    try:
        text, valid = line.decode("utf-8"), True
    except UnicodeDecodeError:
        text, valid = line.decode("utf-8", errors="replace"), False
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return Skip(f"not JSON: {fit(text.strip(), 120)!r}")
    if not isinstance(raw, dict):
        return Skip("not a JSON object")
    if raw.get("event") != "message":
        return Skip(f"event {raw.get('event')!r}")
    ident, when = raw.get("id"), raw.get("time")
    if not isinstance(ident, str) or not _NTFY_ID_RE.match(ident):
        return Skip("a message without a valid id")
    if isinstance(when, bool) or not isinstance(when, int):
        return Skip(f"message {ident} without a valid time")
    tags = raw.get("tags")
    if isinstance(tags, list) and RELAY_TAG in tags:
        return Refused(ident, when, "one of relay's own pushes, not an answer", ack=False)
    if raw.get("attachment") is not None:
        # ntfy sends a body over 4096 bytes, or one not valid UTF-8, as an attachment.
        return Refused(ident, when, "too long, or not text (ntfy made it an attachment)")
    body = raw.get("message")
    if not isinstance(body, str):
        return Refused(ident, when, "no message text")
    if not valid:
        return Refused(ident, when, "not valid UTF-8")
    try:
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
        return Refused(ident, when, "not valid UTF-8")
    if size > max_answer_bytes:
        return Refused(ident, when, f"too long ({size} bytes; at most {max_answer_bytes})")
    question, answer = _button(body)
    if answer is None:
        answer = body
    answer = answer.strip()
    if not answer:
        return Refused(ident, when, "empty")
    return Answer(ident, when, question, answer)


def _button(body: str) -> tuple[str | None, str | None]:
    """(question, answer) if `body` is a button's answer, else (None, None)."""
    if not body.lstrip().startswith("{"):
        return None, None
    try:
        raw: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    question, answer = raw.get("question"), raw.get("answer")
    if isinstance(question, str) and _QUESTION_RE.match(question) and isinstance(answer, str):
        return question, answer
    return None, None


# ---- what has been handled ------------------------------------------------------------------


@dataclass
class Handled:
    """The answer-topic messages already dealt with, bounded: the newest `limit` ids, and a
    time at or before which everything counts as handled. After an expired cursor the server
    replays its whole cache, so the ids (not the cursor alone) are what stops a second
    application; the floor keeps that true for what no longer fits."""

    limit: int = 1000
    ids: dict[str, int] = field(default_factory=dict)  # id -> message time
    floor: int = 0

    def seen(self, ntfy_id: str, time: int) -> bool:
        return ntfy_id in self.ids or time <= self.floor

    def add(self, ntfy_id: str, time: int) -> None:
        self.ids[ntfy_id] = time
        if len(self.ids) <= self.limit:
            return
        # Drop the oldest time entirely (every id with it), so `floor` covers all of them.
        ordered = sorted(self.ids.items(), key=lambda kv: kv[1])
        while len(self.ids) > self.limit and ordered:
            oldest = ordered[0][1]
            while ordered and ordered[0][1] == oldest:
                del self.ids[ordered.pop(0)[0]]
            self.floor = max(self.floor, oldest)

    def to_json(self) -> dict[str, Any]:
        return {"ids": dict(self.ids), "floor": self.floor}

    @staticmethod
    def from_json(raw: Any, limit: int = 1000) -> Handled:
        raw = raw if isinstance(raw, dict) else {}
        ids = raw.get("ids") if isinstance(raw.get("ids"), dict) else {}
        floor = raw.get("floor")
        handled = Handled(limit, floor=floor if isinstance(floor, int) else 0)
        for key, value in ids.items():
            if isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool):
                handled.add(key, value)
        return handled


class Flood:
    """At most `per_minute` answers in any 60 s of publishing time (the server's `time`,
    so a replay after a long absence is judged by when the answers were written)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: deque[int] = deque()
        self._last_ack = -(10**12)

    def admit(self, time: int) -> bool:
        while self._times and self._times[0] <= time - 60:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return False
        self._times.append(time)
        return True

    def should_ack(self, time: int) -> bool:
        """One acknowledgement of refused floods per minute: a flood must not become one
        of pushes."""
        if time - self._last_ack < 60:
            return False
        self._last_ack = time
        return True
