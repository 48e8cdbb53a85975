"""The conversation engine: the only writer of history, dispatch and status.

Single-threaded except for the API call itself, which runs on one worker thread so the
main loop keeps feeding the watchdog and delivering replies while chat-Claude thinks.

Per inbox item the order of durable steps is: API call → ledger → history record (holds
the item's key) → pending reply → inbox item removed → later, delivery by rename. On
restart `recover` finishes any item whose turn is already in history without calling the
API again; delivery only ever happens after the inbox item is gone, so an inbox item that
still exists has never been delivered (docs/architecture.md, promises 1-2).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay import conversation as conv
from relay import fsutil, history, intake, outbox
from relay import status as status_file
from relay.api import ApiReply, MessagesApi
from relay.caller import Caller
from relay.config import Config, find_api_key
from relay.envelope import Rejected, parse_envelope
from relay.errors import ApiError
from relay.layout import Layout
from relay.ledger import Ledger, iso, utc_now
from relay.log import event
from relay.ntfy import Notifier, Push
from relay.prices import cost_usd, price_for

log = logging.getLogger(__name__)

BLOCKED_RETRY_S = 300.0
MAX_BACKOFF_S = 300.0
KEY_RECHECK_S = 5.0
WRITE_RETRY_S = 10


@dataclass(frozen=True)
class Call:
    """An API call in flight: a conversation turn, or the summarization."""

    kind: str  # "turn" or "summary"
    key: str
    session: str  # who wrote the turn: a session id or "operator"
    user: str
    target: str | None
    system: list[dict[str, Any]]
    messages: list[dict[str, Any]]


ApiFactory = Callable[[str, Config], MessagesApi]


class Engine:
    def __init__(
        self,
        config: Config,
        layout: Layout,
        api_factory: ApiFactory,
        notifier: Notifier,
        environ: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.layout = layout
        self.api_factory = api_factory
        self.notifier = notifier
        self.environ = os.environ if environ is None else environ
        self.monotonic = monotonic
        self.history = history.HistoryFile(layout.history, layout.archive)
        self.ledger = Ledger(layout.ledger)
        self.records: list[history.Record] = []
        self.state = conv.ConversationState()
        self.api: MessagesApi | None = None
        self.key_help = ""
        self._key: str | None = None
        self._key_checked = -1e9
        self.caller: Caller[Call, ApiReply] = Caller()
        self._unrecorded: tuple[Call, ApiReply, float] | None = None
        self.retry_at = 0.0
        self._now = monotonic()
        self.failures = 0
        self.blocked_reason: str | None = None
        self.last_error: str | None = None
        self.last_dispatch_session: str | None = None
        self._summary_stuck_at = -1
        self._status_written: dict[str, Any] | None = None
        self._status_time = 0.0

    # ---- start-up -------------------------------------------------------------------

    def recover(self) -> None:
        """Repair history, finish half-done items, and load what status needs."""
        self.layout.ensure_all(self.config.sessions)
        self.records = history.load(self.layout.history)
        self.state = conv.derive_state(self.records)
        self.ledger.load(self._today())
        with contextlib.suppress(OSError, ValueError):
            previous = status_file.read(self.layout.status)
            self.last_dispatch_session = previous.get("last_dispatch_session")
        recorded = {r["key"]: r for r in self.records if r.get("kind") == "turn"}
        # Finish every item that needs no API call before anything is delivered: delivery
        # must never see a pending reply whose inbox item still exists.
        for name in self.inbox_items():
            record = recorded.get(name)
            if record is not None:
                log.info("recovery: %s was answered before the restart; finishing it", name)
                self._after_turn(name, record)
            elif name.startswith(intake.OPERATOR_PREFIX):
                session, body = conv.parse_operator(self._read_operator(name))
                if session is not None:
                    self._direct(name, session, body)
        self.refresh_key(force=True)

    def inbox_items(self) -> list[str]:
        try:
            names = os.listdir(self.layout.inbox)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith("."))

    # ---- the API key ----------------------------------------------------------------

    def refresh_key(self, force: bool = False) -> None:
        now = self.monotonic()
        if not force and now - self._key_checked < KEY_RECHECK_S:
            return
        self._key_checked = now
        key, where = find_api_key(self.config, self.environ)
        if key == self._key and (key is not None or self.key_help):
            return
        self._key = key
        if key is None:
            self.api, self.key_help = None, where
            log.warning("%s", where)
            return
        self.key_help = ""
        self.api = self.api_factory(key, self.config)
        log.info("API key found (%s)", where)  # where, never the key itself

    # ---- the main step ----------------------------------------------------------------

    def tick(self, start_new: bool = True) -> float:
        """Do everything that can be done now; return how long the caller may sleep."""
        # One clock reading per tick: deciding "not yet" and then computing the wait from a
        # later reading lost a retry whose time fell in between (a 30 s stall).
        self._now = self.monotonic()
        self.caller.drain_wake()
        if (done := self.caller.take_done()) is not None:
            self._finish_call(*done)
        elif self._unrecorded is not None and self._now >= self.retry_at:
            self._record()
        if not self.caller.busy and self._unrecorded is None and start_new:
            self.refresh_key()
            self._start_next()
        # Deliver last: whatever this tick queued (a finished turn, a direct message) goes
        # out now, since nothing else would wake the loop for it.
        for session in self.config.sessions:
            if outbox.deliver(self.layout, session) is not None:
                self.last_dispatch_session = session
        self.write_status()
        if self.caller.busy:
            return 1.0
        if self.retry_at > self._now:
            return max(0.01, min(self.retry_at - self._now, 5.0))
        return 5.0 if self.api is None else 30.0

    def _start_next(self) -> None:
        for name in self.inbox_items():
            if name.startswith(intake.OPERATOR_PREFIX):
                if self._operator_item(name):
                    return
            elif self.state.paused:
                return  # queue entries wait for the operator's answer
            elif self._queue_item(name):
                return

    def _api_ready(self) -> bool:
        return self.api is not None and self._now >= self.retry_at

    def _operator_item(self, name: str) -> bool:
        """Handle operator input; True when an API call was started or must wait."""
        session, body = conv.parse_operator(self._read_operator(name))
        if session is not None:
            self._direct(name, session, body)
            return False
        return self._turn(name, conv.OPERATOR, body, conv.operator_target(self.state))

    def _read_operator(self, name: str) -> str:
        return (self.layout.inbox / name).read_text(encoding="utf-8")

    def _direct(self, name: str, session: str, text: str) -> None:
        path = self.layout.inbox / name
        if session not in self.config.sessions:
            intake.reject(
                self.layout,
                path,
                f"{name}",
                f"@{session}: unknown session (configured: {', '.join(self.config.sessions)})",
                private=True,
            )
            return
        if not text.strip():
            intake.reject(self.layout, path, name, f"@{session}: nothing to send", private=True)
            return
        outbox.enqueue(self.layout, session, name, text)
        fsutil.unlink_durable(path)
        event(
            log,
            "direct",
            "operator message queued straight to %s (no API call)",
            session,
            session=session,
            envelope=name,
        )

    def _queue_item(self, name: str) -> bool:
        path = self.layout.inbox / name
        try:
            envelope = parse_envelope(
                path.read_bytes(), self.config.sessions, self.config.max_envelope_bytes
            )
        except Rejected as exc:
            # Valid at intake but not now (e.g. the session was removed from the config).
            intake.reject(self.layout, path, name.split("-", 2)[-1], str(exc))
            return False
        return self._turn(name, envelope.session_id, envelope.content, envelope.session_id)

    def _turn(self, key: str, source: str, content: str, target: str | None) -> bool:
        """Start the API call for one turn (a summarization first, when one is due).
        Returns True: the item is in hand, or must wait for the API."""
        if not self._api_ready():
            return True
        if self._needs_summary():
            self._start_summary()
            return True
        user = conv.user_text(source, content)
        system = conv.render_system(self.config.system_prompt)
        messages = conv.render_messages(self.records, user)
        self._start(Call("turn", key, source, user, target, system, messages))
        return True

    # ---- API calls ----------------------------------------------------------------------

    def _start(self, call: Call) -> None:
        api = self.api
        assert api is not None
        model, max_tokens = self.config.model, self.config.max_tokens
        self.caller.start(
            call,
            lambda: api.create(
                model=model, max_tokens=max_tokens, system=call.system, messages=call.messages
            ),
        )

    def wait_inflight(self, timeout: float) -> None:
        self.caller.wait(timeout)

    @property
    def busy(self) -> bool:
        return self.caller.busy or self._unrecorded is not None

    def _finish_call(self, call: Call, future: concurrent.futures.Future[ApiReply]) -> None:
        try:
            reply = future.result()
        except ApiError as exc:
            self._api_failed(call, exc)
            return
        except Exception as exc:  # a bug or an SDK surprise: keep the item, back off
            log.exception("unexpected error from the API call")
            self._api_failed(call, ApiError(f"unexpected error: {exc}", transient=True))
            return
        self.failures, self.retry_at, self.blocked_reason = 0, 0.0, None
        try:
            cost = self._account(call, reply)
        except OSError as exc:  # the ledger is accounting: a full disk must not stop work
            log.error("cannot write the cost ledger: %s", exc)
            cost = 0.0
        self._unrecorded = (call, reply, cost)
        self._record()

    def _record(self) -> None:
        """Record the answered call; on a write error (a full disk) keep the reply in memory
        and retry, rather than crash and pay for the same call again after a restart."""
        assert self._unrecorded is not None
        call, reply, cost = self._unrecorded
        try:
            if call.kind == "summary":
                self._summarized(reply, cost)
            elif self.records and self.records[-1].get("key") == call.key:
                self._after_turn(call.key, self.records[-1])  # recorded; finish the rest
            else:
                self._turn_done(call, reply, cost)
        except OSError as exc:
            self.last_error = f"cannot record the reply to {call.key}: {exc}"
            self.retry_at = self.monotonic() + WRITE_RETRY_S
            event(
                log,
                "write_error",
                "%s; retrying in %ds (the reply is kept in memory)",
                self.last_error,
                WRITE_RETRY_S,
                envelope=call.key,
                level=logging.ERROR,
            )
            return
        self._unrecorded = None
        if self.last_error and self.last_error.startswith("cannot record"):
            self.last_error = None

    def _api_failed(self, call: Call, exc: ApiError) -> None:
        self.last_error = exc.message
        if exc.transient:
            self.failures += 1
            # Our own backoff is the floor: a server asking for `retry-after: 0` (or a few
            # milliseconds) again and again must not make relay hammer the API.
            ours = min(2.0 ** (self.failures - 1), MAX_BACKOFF_S) * random.uniform(0.75, 1.0)
            delay = max(exc.retry_after or 0.0, ours)
            self.retry_at = self.monotonic() + min(delay, MAX_BACKOFF_S)
            event(
                log,
                "api_error",
                "API call for %s failed (%s); retrying in %.1fs",
                call.key,
                exc.message,
                delay,
                envelope=call.key,
                session=None if call.session == conv.OPERATOR else call.session,
                level=logging.WARNING,
            )
            return
        first = self.blocked_reason is None
        self.blocked_reason = exc.message
        self.retry_at = self.monotonic() + BLOCKED_RETRY_S
        event(
            log,
            "api_error",
            "API call for %s refused: %s; blocked, retrying in %ds",
            call.key,
            exc.message,
            BLOCKED_RETRY_S,
            envelope=call.key,
            level=logging.ERROR,
        )
        if first:
            self.notifier.push(
                Push(
                    "relay is blocked",
                    f"{exc.message}\nNothing is lost: relay retries every 5 minutes.",
                    "high",
                    ("warning",),
                )
            )

    def _account(self, call: Call, reply: ApiReply) -> float:
        price = price_for(reply.model or self.config.model, self.config.prices) or price_for(
            self.config.model, self.config.prices
        )
        cost = cost_usd(reply.usage, price) if price else 0.0
        now = utc_now()
        self.ledger.record(
            {
                "ts": iso(now),
                "kind": call.kind,
                "key": call.key,
                "session": call.session,
                "model": reply.model,
                "request_id": reply.request_id,
                "stop_reason": reply.stop_reason,
                "usage": reply.usage.as_dict(),
                "cost_usd": cost,
                "price_known": price is not None,
            },
            now.strftime("%Y-%m-%d"),
        )
        u = reply.usage
        event(
            log,
            "api_call",
            "%s %s: in=%d out=%d cache_write=%d cache_read=%d $%.6f",
            call.kind,
            call.key,
            u.input_tokens,
            u.output_tokens,
            u.cache_write_tokens + u.cache_write_1h_tokens,
            u.cache_read_tokens,
            cost,
            session=None if call.session == conv.OPERATOR else call.session,
            envelope=call.key,
            cost_usd=cost,
        )
        return cost

    def _turn_done(self, call: Call, reply: ApiReply, cost: float) -> None:
        text = reply.text
        if not text.strip():
            text = f"(chat-Claude sent no text; stop_reason={reply.stop_reason})"
        if reply.stop_reason == "max_tokens":
            log.warning("reply to %s was cut at max_tokens=%d", call.key, self.config.max_tokens)
        needs_jc = conv.has_needs_jc(text, self.config.needs_jc_marker, self.config.needs_jc_window)
        record = conv.turn_record(
            seq=self.state.next_seq,
            key=call.key,
            session=call.session,
            user=call.user,
            reply=text,
            target=None if needs_jc else call.target,
            needs_jc=needs_jc,
            ts=iso(utc_now()),
            cost_usd=cost,
        )
        self.history.append(record)
        self.records.append(record)
        self.state = conv.apply_turn(self.state, record)
        if needs_jc:
            self._escalate(call, text)
        self._after_turn(call.key, record)

    def _after_turn(self, key: str, record: history.Record) -> None:
        target = record.get("target")
        if target and not record.get("needs_jc"):
            outbox.enqueue(self.layout, target, key, str(record["reply"]))
        elif not record.get("needs_jc"):
            event(
                log,
                "undeliverable",
                "no session to deliver the reply to %s to; it stays in the history only",
                key,
                envelope=key,
                level=logging.WARNING,
            )
        fsutil.unlink_durable(self.layout.inbox / key)

    def _escalate(self, call: Call, text: str) -> None:
        origin = self.state.needs_jc_session or "?"
        event(
            log,
            "needs_jc",
            "chat-Claude needs the operator (raised by %s); dispatch paused",
            origin,
            session=None if origin == "?" else origin,
            envelope=call.key,
            level=logging.WARNING,
        )
        self.notifier.push(
            Push(
                title=f"relay: {origin} needs you",
                message=text[:3500] + "\n\nAnswer with: sudo relay reply 'your answer'",
                priority="high",
                tags=("warning", "relay"),
            )
        )

    # ---- summarization ----------------------------------------------------------------

    def _needs_summary(self) -> bool:
        if conv.history_chars(self.records) <= self.config.history_char_cap:
            return False
        return self._summary_stuck_at != self.state.next_seq

    def _start_summary(self) -> None:
        old, keep = conv.split_for_summary(self.records, self.config.keep_recent_turns)
        if not any(r.get("kind") == "turn" for r in old):
            # Only the kept turns are left and they alone exceed the cap: nothing to gain.
            self._summary_stuck_at = self.state.next_seq
            log.warning(
                "history is over history_char_cap but the %d recent turns kept "
                "verbatim alone exceed it; not summarizing",
                len(keep),
            )
            return
        messages = conv.summary_request(old, self.config.summarization_prompt)
        log.info(
            "summarizing %d turns: the history is %d characters, over history_char_cap=%d",
            sum(1 for r in old if r.get("kind") == "turn"),
            conv.history_chars(self.records),
            self.config.history_char_cap,
        )
        self._start(
            Call(
                "summary",
                f"summary-{self.state.next_seq}",
                "relay",
                "",
                None,
                conv.render_system(self.config.system_prompt),
                messages,
            )
        )

    def _summarized(self, reply: ApiReply, cost: float) -> None:
        old, keep = conv.split_for_summary(self.records, self.config.keep_recent_turns)
        covers = sum(1 for r in old if r.get("kind") == "turn")
        first_kept = keep[0]["seq"] if keep else self.state.next_seq
        summary = {
            "kind": "summary",
            "seq": int(first_kept) - 1,
            "text": reply.text,
            "ts": iso(utc_now()),
            "covers_turns": covers,
            "cost_usd": cost,
            "state": conv.state_dict(self.state),
        }
        before = conv.history_chars(self.records)
        archived = self.history.replace([summary, *keep])
        self.records = [summary, *keep]
        self.state = conv.derive_state(self.records)
        event(
            log,
            "summarized",
            "summarized %d turns (%d chars → %d); old history in %s",
            covers,
            before,
            conv.history_chars(self.records),
            archived.name,
            cost_usd=cost,
        )

    # ---- status ----------------------------------------------------------------------

    def state_name(self) -> tuple[str, str]:
        if self.api is None:
            return "blocked", self.key_help
        if self.blocked_reason:
            return "blocked", self.blocked_reason
        if self.retry_at > self.monotonic():
            return "backoff", f"retrying in {self.retry_at - self.monotonic():.0f}s"
        if self.state.paused:
            return "needs_jc", f"waiting for the operator (raised by {self.state.needs_jc_session})"
        current = self.caller.current
        if current is None:
            return "running", "idle"
        return "running", "summarizing the history" if current.kind == "summary" else "busy"

    def status(self, final_state: str | None = None) -> dict[str, Any]:
        name, detail = self.state_name()
        self.ledger.totals.roll(self._today())
        pending = {s: len(outbox.pending(self.layout, s)) for s in self.config.sessions}
        return {
            "state": final_state or name,
            "state_detail": detail,
            "last_dispatch_session": self.last_dispatch_session,
            "last_needs_jc_text": self.state.needs_jc_text,
            "needs_jc_session": self.state.needs_jc_session if self.state.paused else None,
            "history_turns": self.state.turns,
            "history_chars": conv.history_chars(self.records),
            "pending": pending,
            "awaiting_pickup": [
                s for s in self.config.sessions if self.layout.input_file(s).exists()
            ],
            "inbox": len(self.inbox_items()),
            "last_error": self.last_error,
            "cost_today_usd": round(self.ledger.totals.today_usd, 6),
            "calls_today": self.ledger.totals.calls_today,
            "api_key": self.api is not None,
            "api_key_help": self.key_help or None,
            "model": self.config.model,
            "pid": os.getpid(),
            "updated_at": iso(utc_now()),
        }

    def write_status(self, final_state: str | None = None, force: bool = False) -> dict[str, Any]:
        current = self.status(final_state)
        comparable = {k: v for k, v in current.items() if k != "updated_at"}
        stale = self.monotonic() - self._status_time > 30.0
        if force or stale or comparable != self._status_written:
            try:
                status_file.write(self.layout.status, current)
            except OSError as exc:  # a report: never worth stopping work for
                log.warning("cannot write %s: %s", self.layout.status, exc)
                return current
            self._status_written = comparable
            self._status_time = self.monotonic()
        return current

    def status_line(self) -> str:
        name, detail = self.state_name()
        pending = sum(len(outbox.pending(self.layout, s)) for s in self.config.sessions)
        return (
            f"{name} ({detail}); inbox {len(self.inbox_items())}, pending {pending}; "
            f"${self.ledger.totals.today_usd:.4f} today"
        )

    def _today(self) -> str:
        return utc_now().strftime("%Y-%m-%d")

    def close(self) -> None:
        self.caller.close()
        self.history.close()
