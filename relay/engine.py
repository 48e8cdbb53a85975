"""The conversation engine: the turn state machine, and the only writer of history,
dispatch and status.

Single-threaded except for the API call itself, which runs on one worker thread so the
main loop keeps feeding the watchdog and delivering replies while chat-Claude thinks.

Per inbox item the order of durable steps is: crash counter → API call → ledger → reply
kept beside the item → history record (holds the item's key) → pending reply → inbox item
removed → later, delivery by rename. An item whose turn is already in history is finished
without calling the API again; delivery only ever happens after the inbox item is gone,
so an inbox item that still exists has never been delivered (docs/architecture.md,
promises 1-2). Whatever one item does, it costs that item alone: an error handling it sets
it aside with a reason, and an item that keeps killing relay is set aside by its counter.

The files are the spool's (relay/spool.py); backoff, key watching and accounting are
small modules of their own.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from relay import answers, budget, budget_state, history, outbox
from relay import cache_policy as caching
from relay import conversation as conv
from relay import envelope as envelopes
from relay import status as status_file
from relay.accounting import Accounting
from relay.api import ApiReply, MessagesApi
from relay.apikey import ApiFactory, KeyWatch
from relay.applied import AppliedAnswers
from relay.backoff import Backoff
from relay.caller import Caller
from relay.config import Config
from relay.envelope import Rejected
from relay.errors import ApiError
from relay.layout import Layout
from relay.ledger import Ledger, iso, utc_now
from relay.log import event
from relay.ntfy import Notifier, Push
from relay.records import (
    OPERATOR,
    RELAY,
    BudgetStatus,
    Record,
    ReloadResult,
    Sender,
    Status,
    Turn,
    session,
)
from relay.spool import Refused, Spool, display, parse_item

__all__ = ["ApiFactory", "Engine"]

log = logging.getLogger(__name__)

WRITE_RETRY_S = 10.0
BUDGET_POLL_S = 5.0
ABANDON_GRACE_S = 30.0
# Errors that say the disk (not this item) is in trouble: wait and retry, never set aside.
DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)
# This many items in a row refused by the API as bad requests means the trouble is shared
# (the history, the system prompt): block instead of setting every item aside.
REFUSALS_BEFORE_BLOCK = 3
# How many relay processes may begin an item before it is set aside: a crash mid-turn is
# survived (a few times over), an item that kills relay every time is not retried forever.
MAX_TRIES = 5
NOT_PROCESSED = (
    "relay could not process your message ({reason}). It was set aside in "
    "queue/.rejected/; the operator has been told. Nothing else you sent is affected."
)


@dataclass(frozen=True)
class Call:
    """An API call in flight: a conversation turn, or the summarization."""

    kind: Literal["turn", "summary"]
    key: str
    sender: Sender
    user: str
    target: str | None
    system: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    plan: conv.SummaryPlan | None = None


@dataclass(frozen=True)
class Answered:
    """A call's reply, kept in memory until it is recorded (a full disk is retried)."""

    call: Call
    reply: ApiReply
    cost: float


class Engine:
    def __init__(
        self,
        config: Config,
        layout: Layout,
        api_factory: ApiFactory,
        notifier: Notifier,
        environ: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utc_now,
        answer_url: str | None = None,
        cache_policy: caching.CachePolicy = caching.configured,
    ) -> None:
        self.config = config
        self.cache_policy = cache_policy  # the breakpoints and TTLs of each call
        self.layout = layout
        self.notifier = notifier
        self.answer_url = answer_url  # where the phone publishes answers (None: no subscriber)
        self.applied = AppliedAnswers(layout.answers_applied)
        self.answered: set[str] = set()  # operator items already counted as an answer
        self.monotonic = monotonic
        self.wall = wall
        self.spool = Spool(layout)
        self.history = history.HistoryFile(layout.history, layout.archive)
        self.accounts = Accounting(config, Ledger(layout.ledger), wall)
        self.keys = KeyWatch(config, os.environ if environ is None else environ, api_factory)
        self.caller: Caller[Call, ApiReply] = Caller(monotonic)
        self.records: list[Record] = []
        self.recorded: dict[str, Turn] = {}  # the turns in history, by their item's key
        self.state = conv.ConversationState()
        self.backoff = Backoff()
        self.write_retry_at = 0.0  # a failed disk write (a full disk) is retried then
        self.unrecorded: Answered | None = None
        self.last_error: str | None = None
        self.last_dispatch_session: str | None = None
        self.summary_stuck_at = -1
        self.refusals = 0  # API refusals of single requests in a row
        self.begun: set[str] = set()  # items this process has counted
        self._now = monotonic()
        self.reporter = status_file.StatusWriter(layout.status, monotonic)
        self.budget = budget_state.BudgetState()  # pushes already sent; a workspace limit
        self.budget_block: budget.Block | None = None  # a cap reached, as of this tick
        self.halt: budget.Halt | None = None  # why no call may start, as of this tick
        self.last_snapshot: Status | None = None  # the latest tick's
        self.last_reload: ReloadResult | None = None  # status.json's (relay/service.py)

    # ---- start-up -------------------------------------------------------------------

    def recover(self) -> None:
        """Load history and what status needs, and finish every item that needs no API
        call before anything is delivered: delivery must never see a pending reply whose
        inbox item still exists. A write that fails here (a full disk) is retried by the
        loop, never a crash."""
        self.layout.ensure_all(self.config.sessions)
        self._load(history.load(self.layout.history))
        try:
            self.spool.resume_rejections(lambda source: not source.startswith("."))
            self.spool.sweep()
        except OSError as exc:
            self._write_failed("cannot finish setting an item aside", exc)
        self.accounts.load()
        self.budget = budget_state.load(self.layout.budget_state)
        self._check_budget()
        try:
            previous = status_file.read(self.layout.status)
            last = previous.get("last_dispatch_session")
            self.last_dispatch_session = last if isinstance(last, str) else None
        except (OSError, ValueError, RecursionError):
            pass
        self._now = self.monotonic()
        for key in self.spool.items():
            if not self._guarded(key, self._recover_item):
                break
        self.keys.refresh(self._now, force=True)

    def reconfigure(self, config: Config) -> None:
        """Use `config` from now on (a reload; relay/reload.py has refused what cannot change
        while relay runs). The new sessions' directories come first: if they cannot be
        made (OSError), nothing has changed."""
        self.layout.ensure_all(config.sessions)
        old = self.config
        try:
            self.accounts.reconfigure(config)  # may read the ledger again (a new zone)
            self.keys.reconfigure(config)
        except BaseException:
            # Back to the old config everywhere, so a refused reload leaves it whole.
            self.accounts.reconfigure(old)
            self.keys.reconfigure(old)
            raise
        self.config = config
        self._budget_reconfigured()

    def _recover_item(self, key: str) -> bool:
        item = parse_item(key)
        if key in self.recorded:
            log.info("recovery: %s was answered before the restart; finishing it", key)
            self._after_turn(key, self.recorded[key])
        elif item is not None and item.operator:
            target, body = conv.parse_operator(self.spool.read(key).decode("utf-8", "replace"))
            if target is not None:
                self._direct(key, target, body)
        return False

    def _load(self, records: list[Record]) -> None:
        self.records = records
        self.recorded = {r.key: r for r in records if isinstance(r, Turn)}
        self.state = conv.derive_state(records)

    @property
    def api(self) -> MessagesApi | None:
        return self.keys.api

    # ---- the main step ----------------------------------------------------------------

    def tick(self, start_new: bool = True) -> float:
        """Do everything that can be done now; return how long the caller may sleep."""
        # One clock reading per tick: deciding "not yet" and then computing the wait from a
        # later reading lost a retry whose time fell in between (a 30 s stall).
        self._now = self.monotonic()
        self.caller.drain_wake()
        disk_ok = self._now >= self.write_retry_at
        if (done := self.caller.take_done()) is not None:
            self._finish_call(*done)
        elif self.caller.running_for() > self.config.anthropic.timeout_s + ABANDON_GRACE_S:
            self._abandon()
        elif self.unrecorded is not None and disk_ok:
            self._record()
        self._check_budget()
        if not self.busy and start_new:
            self.keys.refresh(self._now)
            if self._now >= self.write_retry_at:
                self._start_next()
        # Deliver last: whatever this tick queued (a finished turn, a direct message) goes
        # out now, since nothing else would wake the loop for it.
        for name in self.config.sessions:
            try:
                if outbox.deliver(self.layout, name) is not None:
                    self.last_dispatch_session = name
            except OSError as exc:
                self._write_failed(f"cannot deliver to {name}", exc)
        self.last_snapshot = self.snapshot()
        self.write_status(self.last_snapshot)
        return self._sleep_for()

    def _sleep_for(self) -> float:
        if self.caller.busy:
            return 1.0
        due = [t for t in (self.write_retry_at, self.backoff.retry_at) if t > self._now]
        if due and (self.unrecorded is not None or self.spool.items()):
            return max(0.01, min(min(due) - self._now, 5.0))
        if self.calls_blocked() is not None and self.spool.items():
            # Waiting for a period boundary or a workspace limit's end: look every few
            # seconds (cheap), so work resumes promptly at the boundary.
            return BUDGET_POLL_S
        return 5.0 if self.api is None else 30.0

    @property
    def busy(self) -> bool:
        return self.caller.busy or self.unrecorded is not None

    def _start_next(self) -> None:
        for key in self.spool.items():
            if not self._guarded(key, self._handle):
                return

    def _guarded(self, key: str, step: Callable[[str], bool]) -> bool:
        """Run `step` for one item; False when the loop should not go on to the next.

        A disk error waits and retries; any other error is this item's alone: it is set
        aside with the reason, and the items behind it flow."""
        try:
            return not step(key)
        except Refused as exc:
            return self._refuse_safely(key, str(exc))
        except OSError as exc:
            if exc.errno in DISK_ERRORS:
                self._write_failed(f"cannot handle {key}", exc)
                return False
            log.exception("error handling %s", key)
            return self._refuse_safely(key, f"relay cannot handle it ({exc.strerror or exc})")
        except Exception as exc:
            log.exception("error handling %s", key)
            return self._refuse_safely(
                key, f"relay failed handling it ({type(exc).__name__}: {exc})"
            )

    def _handle(self, key: str) -> bool:
        """Take one inbox item as far as it goes now; True when it is in hand or must wait
        (nothing behind it may overtake it)."""
        turn = self.recorded.get(key)
        if turn is not None:
            self._after_turn(key, turn)
            return False
        item = parse_item(key)
        if item is None:  # only relay (and root) write the inbox: say so, and move on
            return self._refuse(key, "not an inbox item relay knows", tell=False)
        if item.operator:
            try:
                text = self.spool.read(key).decode("utf-8")
            except UnicodeDecodeError as exc:
                self._refuse(key, f"not valid UTF-8 (byte {exc.start})")
                return False
            handover = answers.decode_handover(text)
            if handover is not None:
                if not self._take_answer(key, handover):
                    return False
                text = handover.text
            target, body = conv.parse_operator(text)
            if target is not None:
                refused = self._direct(key, target, body)
                if handover is not None:
                    ack = f"refused: {refused}" if refused else f"answer received, sent to {target}"
                    self._acknowledge(key, ack)
                return False
            self._answering(key, handover)
            return self._turn(key, OPERATOR, body, conv.operator_target(self.state))
        if self.state.paused:
            return True  # queue entries wait for the operator's answer
        try:
            envelope = envelopes.parse_envelope(
                self.spool.read(key), self.config.sessions, self.config.max_envelope_bytes
            )
        except Rejected as exc:
            # Valid at intake but not now (e.g. the session was removed from the config).
            self._refuse(key, str(exc), tell=False)
            return False
        sender = session(envelope.session_id)
        return self._turn(key, sender, envelope.content, envelope.session_id)

    def _take_answer(self, key: str, handover: answers.Handover) -> bool:
        """Whether an answer from the phone is to be applied; if not (a copy, or a button's
        answer to a question no longer pending) the item is finished, changing nothing."""
        pending = self.state.needs_jc_question if self.state.paused else None
        if handover.question is not None and handover.question != pending:
            why = (
                f"{handover.question} is no longer waiting for an answer"
                if pending is None
                else f"{handover.question} is not the question waiting now ({pending} is)"
            )
            event(
                log,
                "answer_stale",
                "answer %s to %s changes nothing: %s",
                handover.ntfy_id,
                handover.question,
                why,
                envelope=key,
                question=handover.question,
            )
            self._acknowledge(key, f"already answered ({why})")
            self.spool.finish(key)
            return False
        if not self.applied.take(handover.ntfy_id, key):
            log.info(
                "answer %s was taken already (in %s); this copy changes nothing",
                handover.ntfy_id,
                self.applied.owner(handover.ntfy_id),
            )
            self.spool.finish(key)
            return False
        return True

    def _answering(self, key: str, handover: answers.Handover | None) -> None:
        """An operator turn is starting: if it answers the pending question, say so (to the
        phone for an answer from there) and take the question's push off the phones."""
        if key in self.answered:
            return
        self.answered.add(key)
        question = self.state.needs_jc_question if self.state.paused else None
        if question is not None:
            self.notifier.delete(question)
        if handover is not None:
            target = conv.operator_target(self.state) or "no session yet"
            about = f" (the answer to {question})" if question else ""
            held = self.calls_blocked()
            if held is not None:  # it needs an API call, and none may start now
                self._acknowledge(key, f"answer received{about}; it waits: {held}")
            else:
                self._acknowledge(key, f"answer received, sent to {target}{about}")

    def _acknowledge(self, key: str, text: str) -> None:
        log.info("acknowledging %s to the phone: %s", key, text)
        self.notifier.push(answers.acknowledgement(text))

    def _begin(self, key: str) -> bool:
        """Count this process beginning `key`; False if it was set aside for having been
        begun too often (it killed relay each time)."""
        if key in self.begun:
            return True
        tries = self.spool.begin(key)
        self.begun.add(key)
        if tries > MAX_TRIES:
            self._refuse(key, f"relay stopped {tries - 1} times while handling it")
            return False
        return True

    def _direct(self, key: str, target: str, text: str) -> str | None:
        """Queue an operator message straight to `target`; None if it was, else why not."""
        if target not in self.config.sessions:
            configured = ", ".join(self.config.sessions)
            reason = f"@{target}: unknown session (configured: {configured})"
            self._refuse(key, reason, tell=False)
            return reason
        if not text.strip():
            self._refuse(key, f"@{target}: nothing to send", tell=False)
            return f"@{target}: nothing to send"
        if not self._begin(key):
            return "relay stopped too often while handling it"
        outbox.enqueue(self.layout, target, key, text)
        self.spool.finish(key)
        event(
            log,
            "direct",
            "operator message queued straight to %s (no API call)",
            target,
            session=target,
            envelope=key,
        )
        return None

    def _turn(self, key: str, sender: Sender, content: str, target: str | None) -> bool:
        """Start the API call for one turn (a summarization first, when one is due)."""
        user = conv.user_text(sender, content)
        stashed = self._stashed(key)
        if stashed is not None:
            # Answered before a crash that came before the record: no second paid call,
            # so nothing to wait for (a key, a backoff, a summarization).
            if not self._begin(key):
                return False
            log.info("%s was answered before the restart; recording that answer", key)
            self.unrecorded = Answered(Call("turn", key, sender, user, target, [], []), *stashed)
            self._record()
            return True
        if self.api is None or not self.backoff.ready(self._now):
            return True
        if self.calls_blocked() is not None:
            # Not in hand: the items behind it that need no API call (a direct operator
            # message) may go on; every item that needs one waits here, in order.
            return False
        if self._summarize():
            return True
        if not self._begin(key):
            return False
        cache = self.cache_policy(self.config, "turn", self.records, self.wall())
        system = conv.render_system(self.config.system_prompt, cache.system)
        messages = conv.render_messages(
            self.records,
            user,
            prefix_ttl=cache.prefix,
            new_ttl=cache.new_turn,
            boundary=cache.boundary,
        )
        self._start(Call("turn", key, sender, user, target, system, messages))
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

    def _abandon(self) -> None:
        """The backstop under the API client's own deadline: a call that outlived it by
        ABANDON_GRACE_S is given up and retried like a time-out."""
        call = self.caller.abandon()
        if call is not None:
            limit = self.config.anthropic.timeout_s + ABANDON_GRACE_S
            self._api_failed(call, ApiError(f"no answer within {limit:.0f}s", transient=True))

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
        self.backoff = self.backoff.succeeded()
        self.refusals = 0
        cost = self.accounts.charge(call.kind, call.key, call.sender, reply)
        if call.kind == "turn":
            self._stash(call.key, reply, cost)
        self.unrecorded = Answered(call, reply, cost)
        self._record()

    def _record(self) -> None:
        """Record the answered call; on a write error (a full disk) keep the reply in memory
        and retry, rather than crash and pay for the same call again after a restart."""
        assert self.unrecorded is not None
        answered = self.unrecorded
        call = answered.call
        try:
            if call.plan is not None:
                self._summarized(call.plan, answered.reply, answered.cost)
            elif call.key in self.recorded:
                self._after_turn(call.key, self.recorded[call.key])  # recorded; finish the rest
            else:
                self._turn_done(answered)
        except OSError as exc:
            self._write_failed(f"cannot record the reply to {call.key}", exc)
            return
        except Exception as exc:
            self.unrecorded = None
            log.exception("error recording the reply to %s", call.key)
            if call.plan is None:
                self._refuse_safely(
                    call.key, f"relay failed recording its reply ({type(exc).__name__})"
                )
            else:
                self.summary_stuck_at = self.state.next_seq
            return
        self.unrecorded = None
        if self.last_error and self.last_error.startswith("cannot "):
            self.last_error = None

    def _write_failed(self, what: str, exc: OSError) -> None:
        self.last_error = f"{what}: {exc}"
        self.write_retry_at = self.monotonic() + WRITE_RETRY_S
        event(
            log,
            "write_error",
            "%s; retrying in %ds (nothing is lost)",
            self.last_error,
            WRITE_RETRY_S,
            level=logging.ERROR,
        )

    def _api_failed(self, call: Call, exc: ApiError) -> None:
        self.last_error = exc.message
        if exc.blocked_until is not None and exc.blocked_until > self.wall():
            self._workspace_limited(call, exc, exc.blocked_until)
            return
        # (A date already past, or none: blocked like any refusal, tried every 5 minutes.)
        who = call.sender.session
        if exc.transient:
            self.backoff = self.backoff.failed(self.monotonic(), exc.retry_after, random.random())
            event(
                log,
                "api_error",
                "API call for %s failed (%s); retrying in %.1fs",
                call.key,
                exc.message,
                self.backoff.delay(self.monotonic()),
                envelope=call.key,
                session=who,
                level=logging.WARNING,
            )
            return
        if exc.per_item and self.refusals + 1 < REFUSALS_BEFORE_BLOCK:
            self.refusals += 1
            self._refused_by_api(call, exc)
            return
        first = self.backoff.blocked is None
        self.backoff = self.backoff.block(self.monotonic(), exc.message)
        event(
            log,
            "api_error",
            "API call for %s refused: %s; blocked, retrying in %ds",
            call.key,
            exc.message,
            300,
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

    def _refused_by_api(self, call: Call, exc: ApiError) -> None:
        """The API refused this one request as bad: summarize first if it was too long
        (and that could help), else set the item aside; everything behind it flows."""
        event(
            log,
            "api_error",
            "API refused the call for %s: %s",
            call.key,
            exc.message,
            envelope=call.key,
            session=call.sender.session,
            level=logging.ERROR,
        )
        if call.plan is not None:
            self.summary_stuck_at = self.state.next_seq
            self.notifier.push(
                Push("relay cannot summarize", f"The API refused it: {exc.message}", "default")
            )
            return
        if exc.context_overflow and self.calls_blocked() is not None:
            return  # it stays: after the block, it meets the overflow again and summarizes
        if exc.context_overflow and self._summarize(force=True):
            return
        self._refuse_safely(call.key, f"the API refused it: {exc.message}")

    # ---- setting aside --------------------------------------------------------------------

    def _refuse(self, key: str, reason: str, *, tell: bool = True) -> bool:
        """Set one item aside with `reason`: an envelope into queue/.rejected/ under its
        name, operator input into state/rejected/. With `tell`, the operator gets one push
        and the session a short dispatch saying its message could not be processed."""
        item = parse_item(key)
        origin: str | None = None
        if item is not None and not item.operator:
            origin = self._envelope_session(key)
        if tell and origin is not None and origin in self.config.sessions:
            # Queued before the item moves (idempotent per key): a crash in between may
            # tell the session twice over, never not at all.
            notice = NOT_PROCESSED.format(reason=reason)
            outbox.enqueue(self.layout, origin, f"{key}.aside", notice)
        target = self.spool.set_aside(key, reason)
        self.begun.discard(key)
        event(
            log,
            "rejected",
            "set aside %s: %s",
            display(target.name),
            reason,
            envelope=key,
            session=origin,
            level=logging.WARNING,
        )
        if tell:
            where = f"from {origin}" if origin else "from the operator"
            self.notifier.push(
                Push(
                    "relay set a message aside",
                    f"A message {where} was set aside: {reason}. It is in {target}.",
                    "default",
                    ("warning",),
                )
            )
        return False

    def _refuse_safely(self, key: str, reason: str) -> bool:
        """`_refuse` where no error may escape; True if the loop may go on."""
        try:
            self._refuse(key, reason)
        except OSError as exc:
            self._write_failed(f"cannot set {key} aside", exc)
            return False
        except Exception:  # the item stays; the next tick tries again
            log.exception("cannot set %s aside", key)
            return False
        return True

    def _envelope_session(self, key: str) -> str | None:
        try:
            raw = json.loads(self.spool.read(key))
            value = raw.get("session_id") if isinstance(raw, dict) else None
        except (OSError, ValueError, RecursionError):
            return None
        return value if isinstance(value, str) and value in self.config.sessions else None

    # ---- answers ------------------------------------------------------------------------

    def _stash(self, key: str, reply: ApiReply, cost: float) -> None:
        data = {**reply.to_json(), "cost_usd": cost}
        try:
            self.spool.stash_reply(key, json.dumps(data, ensure_ascii=False).encode())
        except (OSError, ValueError) as exc:  # kept in memory anyway; only a crash loses it
            log.warning("cannot keep the reply to %s beside it: %s", key, exc)

    def _stashed(self, key: str) -> tuple[ApiReply, float] | None:
        raw = self.spool.stashed_reply(key)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return ApiReply.from_json(data), float(data.get("cost_usd") or 0.0)
        except (ValueError, TypeError, AttributeError, RecursionError):
            return None  # a torn or foreign file: the call is made again

    def _turn_done(self, answered: Answered) -> None:
        call, reply = answered.call, answered.reply
        text = reply.text
        if not text.strip():
            text = f"(chat-Claude sent no text; stop_reason={reply.stop_reason})"
        if reply.stop_reason == "max_tokens":
            log.warning("reply to %s was cut at max_tokens=%d", call.key, self.config.max_tokens)
        needs_jc = conv.has_needs_jc(text, self.config.needs_jc_marker, self.config.needs_jc_window)
        turn = Turn(
            seq=self.state.next_seq,
            key=call.key,
            sender=call.sender,
            user=call.user,
            reply=text,
            target=None if needs_jc else call.target,
            needs_jc=needs_jc,
            ts=iso(self.wall()),
            cost_usd=answered.cost,
        )
        self.history.append(turn)
        self.records.append(turn)
        self.recorded[turn.key] = turn
        self.state = conv.apply_turn(self.state, turn)
        if needs_jc:
            self._escalate(call, text)
        self._after_turn(call.key, turn)

    def _after_turn(self, key: str, turn: Turn) -> None:
        if not os.path.lexists(self.spool.inbox / key):
            # Finished already (a write error came after): its reply is pending or was
            # delivered, and the item's absence is what says so. Enqueueing again could
            # hand the session the same reply twice.
            return
        if turn.target and not turn.needs_jc:
            outbox.enqueue(self.layout, turn.target, key, turn.reply)
        elif not turn.needs_jc:
            event(
                log,
                "undeliverable",
                "no session to deliver the reply to %s to; it stays in the history only",
                key,
                envelope=key,
                level=logging.WARNING,
            )
        self.spool.finish(key)
        self.begun.discard(key)

    def _escalate(self, call: Call, text: str) -> None:
        origin = self.state.needs_jc_session or "?"
        question = self.state.needs_jc_question or "?"
        event(
            log,
            "needs_jc",
            "chat-Claude needs the operator (raised by %s, question %s); dispatch paused",
            origin,
            question,
            session=None if origin == "?" else origin,
            envelope=call.key,
            question=question,
            level=logging.WARNING,
        )
        self.notifier.push(answers.question_push(question, origin, text, self.answer_url))

    # ---- budgets --------------------------------------------------------------------

    def calls_blocked(self) -> str | None:
        """Why no new API call may start now (a budget spent, the workspace's limit), or
        None. A call in flight is not affected: it finishes and is recorded. Judged once per
        tick (`_check_budget`): items judged against a moving clock could overtake each
        other at the very moment a limit ends."""
        return self.halt.detail if self.halt is not None else None

    def _halt_now(self) -> budget.Halt | None:
        """The workspace limit first (the API refuses everything), else a cap reached."""
        until = self.budget.workspace_until
        if until is not None and self.wall() < until:
            reason = self.budget.workspace_reason or "the workspace API usage limit is reached"
            detail = f"{reason}; no API calls until {until:%Y-%m-%d %H:%M} UTC"
            return budget.Halt("workspace", until, detail)
        block = self.budget_block
        if block is not None:
            return budget.Halt(block.budget, block.resets_at, block.detail())
        return None

    def _budget_status(self) -> BudgetStatus:
        caps, halt = self.config.budget, self.halt
        return BudgetStatus(
            caps.daily_usd,
            caps.monthly_usd,
            caps.timezone,
            halt.kind if halt is not None else None,
            iso(halt.until) if halt is not None else None,
        )

    def _budget_reconfigured(self) -> None:
        """A reload is the operator's "go on": a raised cap applies at once, and a workspace
        limit is taken as raised in the Console (if it is not, the next call says so)."""
        if self.budget.workspace_until is not None:
            log.info("reload: trying the API again despite the workspace limit")
            self._save_budget(self.budget.without_limit())
        self._check_budget()

    def _check_budget(self) -> None:
        """Judge the spend against the caps: push each warning once per period, push once
        when a cap is reached, log when calls may start again."""
        now = self.wall()
        if self.budget.workspace_until is not None and now >= self.budget.workspace_until:
            log.info("the workspace API usage limit has passed; API calls resume")
            self._save_budget(self.budget.without_limit())
        verdict = budget.judge(self.config.budget, self.accounts.spend(), now, self.budget.marks)
        for warning in verdict.warnings:
            event(log, "budget_warning", "%s", warning.text(), level=logging.WARNING)
            self.notifier.push(
                Push(
                    f"relay: {warning.fraction:.0%} of the {warning.budget} budget",
                    warning.text(),
                    "default",
                    ("moneybag",),
                )
            )
        block = verdict.block
        if block is not None and block.mark not in self.budget.marks:
            event(log, "budget_blocked", "%s", block.detail(), level=logging.ERROR)
            self.notifier.push(
                Push(
                    f"relay paused: {block.budget} budget reached",
                    f"{block.detail()}.\nMessages wait, nothing is lost; direct @session-N: "
                    "messages still go through.",
                    "high",
                    ("moneybag", "warning"),
                )
            )
        elif block is None and self.budget_block is not None:
            event(log, "budget_resumed", "within budget again; API calls resume")
        self.budget_block = block
        self.halt = self._halt_now()
        if verdict.marks != self.budget.marks:
            self._save_budget(replace(self.budget, marks=verdict.marks))

    def _save_budget(self, state: budget_state.BudgetState) -> None:
        self.budget = state
        try:
            budget_state.save(self.layout.budget_state, state)
        except OSError as exc:  # kept in memory; at worst a restart pushes a warning again
            log.warning("cannot write %s: %s", self.layout.budget_state, exc)

    def _workspace_limited(self, call: Call, exc: ApiError, until: datetime) -> None:
        """The Console's workspace limit: no call until the date it names, one push, and
        the item waits (it is not this item's fault)."""
        reason = "the workspace API usage limit (set in the Anthropic Console) is reached"
        # One push per date named: a reload tries again at once, and the same refusal again
        # must not push again.
        first = self.budget.workspace_pushed != iso(until)
        self._save_budget(
            replace(
                self.budget,
                workspace_until=until,
                workspace_reason=reason,
                workspace_pushed=iso(until),
            )
        )
        self.halt = self._halt_now()
        event(
            log,
            "api_error",
            "API call for %s refused: %s; no calls until %s",
            call.key,
            exc.message,
            iso(until),
            envelope=call.key,
            level=logging.ERROR,
        )
        if first:
            self.notifier.push(
                Push(
                    "relay is blocked: workspace usage limit",
                    f"{exc.message}\nrelay makes no API call until {until:%Y-%m-%d %H:%M} UTC. "
                    "Raise the limit in the Console, then run relay reload, to resume sooner. "
                    "Messages wait; nothing is lost.",
                    "high",
                    ("warning",),
                )
            )

    # ---- summarization ----------------------------------------------------------------

    def _summarize(self, force: bool = False) -> bool:
        """Start the summarization if one is due (with `force`: whenever it can shrink the
        history); True if it started."""
        if self.summary_stuck_at == self.state.next_seq:
            return False
        cap = 0 if force else self.config.history_char_cap
        cache = self.cache_policy(self.config, "summary", self.records, self.wall())
        plan = conv.plan_summary(
            self.records,
            cap,
            self.config.keep_recent_turns,
            self.config.summarization_prompt,
            new_ttl=cache.new_turn,
        )
        if plan is None:
            if conv.history_chars(self.records) > cap:
                # Only the kept turns are left and they alone exceed the cap.
                self.summary_stuck_at = self.state.next_seq
                log.warning(
                    "history is over history_char_cap but the %d recent turns kept "
                    "verbatim alone exceed it; not summarizing",
                    self.config.keep_recent_turns,
                )
            return False
        log.info(
            "summarizing %d turns: the history is %d characters, over history_char_cap=%d",
            plan.covers,
            conv.history_chars(self.records),
            self.config.history_char_cap,
        )
        system = conv.render_system(self.config.system_prompt, cache.system)
        key = f"summary-{self.state.next_seq}"
        self._start(Call("summary", key, RELAY, "", None, system, plan.messages, plan))
        return True

    def _summarized(self, plan: conv.SummaryPlan, reply: ApiReply, cost: float) -> None:
        summary = plan.summary(reply.text, iso(self.wall()), cost, self.state)
        before = conv.history_chars(self.records)
        archived = self.history.replace([summary, *plan.keep])
        self._load([summary, *plan.keep])
        event(
            log,
            "summarized",
            "summarized %d turns (%d chars → %d); old history in %s",
            plan.covers,
            before,
            conv.history_chars(self.records),
            archived.name,
            cost_usd=cost,
        )

    # ---- status ----------------------------------------------------------------------

    def state_name(self) -> tuple[str, str]:
        if self.api is None:
            return "blocked", self.keys.help
        if self.backoff.blocked:
            return "blocked", self.backoff.blocked
        reason = self.calls_blocked()
        if reason is not None:
            return "blocked", reason
        now = self.monotonic()
        if not self.backoff.ready(now):
            return "backoff", f"retrying in {self.backoff.delay(now):.0f}s"
        if self.write_retry_at > now:
            return "backoff", f"retrying a failed write in {self.write_retry_at - now:.0f}s"
        if self.state.paused:
            return "needs_jc", f"waiting for the operator (raised by {self.state.needs_jc_session})"
        current = self.caller.current
        if current is None:
            return "running", "idle"
        return "running", "summarizing the history" if current.kind == "summary" else "busy"

    def snapshot(self, final_state: str | None = None) -> Status:
        """Everything status.json and STATUS= say, read once."""
        name, detail = self.state_name()
        sessions = self.config.sessions
        return Status(
            state=final_state or name,
            state_detail=detail,
            last_dispatch_session=self.last_dispatch_session,
            last_needs_jc_text=self.state.needs_jc_text,
            needs_jc_session=self.state.needs_jc_session if self.state.paused else None,
            needs_jc_question=self.state.needs_jc_question if self.state.paused else None,
            history_turns=self.state.turns,
            history_chars=conv.history_chars(self.records),
            pending={s: len(outbox.pending(self.layout, s)) for s in sessions},
            awaiting_pickup=[s for s in sessions if self.layout.input_file(s).exists()],
            inbox=len(self.spool.items()),
            last_error=self.last_error,
            cost_today_usd=self.accounts.today_usd,
            cost_month_usd=self.accounts.month_usd,
            budget=self._budget_status(),
            calls_today=self.accounts.calls_today,
            api_key=self.api is not None,
            api_key_help=self.keys.help or None,
            model=self.config.model,
            pid=os.getpid(),
            updated_at=iso(self.wall()),
            last_reload=self.last_reload,
        )

    def status_line(self) -> str:
        """The latest tick's snapshot as one line (a fresh one before the first tick)."""
        return (self.last_snapshot or self.snapshot()).line()

    def status(self, final_state: str | None = None) -> dict[str, Any]:
        return self.snapshot(final_state).to_json()

    def write_status(self, snapshot: Status, force: bool = False) -> None:
        self.reporter.write(snapshot, force)

    def close(self, graceful: bool = False) -> None:
        """Stop; a graceful stop is not a crash, so it takes back this process's count on
        the items it began and did not finish."""
        self.caller.close()
        self.history.close()
        if graceful:
            for key in self.begun:
                self.spool.uncount(key)
