"""The answer subscriber: streams the ntfy answer topic and hands each answer to the
conversation as operator input (state/jc_input.txt, the path `relay reply` takes).

`relay subscribe` runs it under systemd (relay-answers.service); `relay run` runs it on a
thread. It keeps, in state/ntfy-answers.json, the stream's cursor (the last message id seen)
and the ids already handled: a restart or a dropped connection resumes with `since=<id>`,
and when that id has left the server's cache the server replays the whole cache, which the
handled ids then filter. An answer is handed over before its id is recorded; a crash in
between hands it over again, and the conversation, which records the ids it has taken,
drops the copy. So nothing is lost and nothing is applied twice.

What the messages mean is decided in relay/answers.py; here is only I/O.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from relay import answers, fsutil
from relay import status as status_file
from relay.answers import Answer, Flood, Handled, Handover, Refused, Skip
from relay.config import Config, find_ntfy_token
from relay.layout import PRIVATE_FILE_MODE, Layout
from relay.log import event
from relay.ntfy import Notifier
from relay.operator_drop import write_jc_input
from relay.topic import resolve_reply_topic, resolve_topic

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 20.0  # with jitter at most 25 s: back within 30 s of the server's return
HEALTHY_S = 30.0  # a stream that lasted this long was a success, however it ended
HANDOVER_WAIT_S = 1.0  # each try; a reply not yet consumed is waited for, never replaced
MAX_ANSWERED_QUESTIONS = 200
STATE_VERSION = 1


class SubscribeError(Exception):
    """The stream could not be opened or broke; reconnect after a backoff."""


class Subscriber:
    """One answer subscriber. `run()` until `stop()` (from any thread or a signal)."""

    def __init__(
        self,
        config: Config,
        layout: Layout,
        environ: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        assert config.ntfy.server is not None
        self.config = config
        self.layout = layout
        self.server = config.ntfy.server
        self.token, _ = find_ntfy_token(config, environ)
        self.topic = resolve_reply_topic(config, layout) or ""
        self.clock = clock
        self.notifier = notifier or Notifier(
            self.server, resolve_topic(config, layout), config.ntfy.timeout_s, self.token
        )
        self._own_notifier = notifier is None
        self._stop = threading.Event()
        self._lock = threading.RLock()  # stop() may run in a signal handler meanwhile
        self._connection: http.client.HTTPConnection | None = None
        self.flood = Flood(config.ntfy.max_answers_per_minute)
        self.since: str | None = None
        self.handled = Handled()
        self.answered: list[str] = []  # questions this subscriber has handed an answer for
        self._opened: float | None = None  # when the current stream opened
        self.connected = threading.Event()  # set while a stream is open (for tests, status)
        self._load()

    # ---- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        log.info(
            "subscribing to the answer topic on %s (since %s)", self.server, self.since or "all"
        )
        failures = 0
        while not self._stop.is_set():
            self._opened = None
            try:
                received = self._stream()
            except SubscribeError as exc:
                received = False
                if self._opened is not None and time.monotonic() - self._opened >= HEALTHY_S:
                    # It ran for a while and then broke: a new trouble, not more of the
                    # same. Say so, and come back at once.
                    failures = 0
                # Every failure while it lasts would be a line every 20 s: the first few,
                # then one in 15 (about every 5 minutes).
                if not self._stop.is_set() and (failures < 3 or failures % 15 == 0):
                    event(
                        log,
                        "ntfy_subscribe_error",
                        "answer stream: %s",
                        exc,
                        level=logging.WARNING if failures < 3 else logging.ERROR,
                    )
            except Exception:  # a bug must not end the subscriber for good
                received = False
                log.exception("answer stream: unexpected error; starting again")
            finally:
                self.connected.clear()
            failures = 0 if received else failures + 1
            if self._stop.is_set():
                break
            delay = min(RECONNECT_MIN_S * 2 ** min(failures, 10), RECONNECT_MAX_S)
            self._stop.wait(delay * random.uniform(0.75, 1.25) if failures else 0.2)
        if self._own_notifier:
            self.notifier.close(wait_s=2.0)
        return 0

    def stop(self) -> None:
        """Make run() return soon: also cuts a stream blocked in a read."""
        self._stop.set()
        with self._lock:
            connection = self._connection
        if connection is not None and connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    def _stream(self) -> bool:
        """One connection, read to its end; True if it delivered anything."""
        url = urllib.parse.urlsplit(self.server)
        query = urllib.parse.urlencode({"since": self.since or "all"})
        path = f"{url.path.rstrip('/')}/{self.topic}/json?{query}"
        timeout = self.config.ntfy.read_timeout_s
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind(url.hostname or "", url.port, timeout=timeout)
        headers = {"User-Agent": "relay"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        with self._lock:
            self._connection = connection
        try:
            if self._stop.is_set():
                return False
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise SubscribeError(f"cannot connect to {self.server}: {exc}") from exc
            if response.status != 200:
                detail = response.read(300).decode("utf-8", "replace").strip()
                hint = " (is the ntfy token right?)" if response.status in (401, 403) else ""
                raise SubscribeError(f"{self.server} answered {response.status}{hint}: {detail}")
            self.connected.set()
            self._opened = time.monotonic()
            return self._read(response)
        finally:
            with self._lock:
                self._connection = None
            connection.close()

    def _read(self, response: http.client.HTTPResponse) -> bool:
        limit = 64 * 1024 + 6 * self.config.ntfy.max_answer_bytes
        received = False
        while not self._stop.is_set():
            try:
                line = response.readline(limit + 1)
            except TimeoutError as exc:
                raise SubscribeError(
                    f"nothing from {self.server} in {self.config.ntfy.read_timeout_s:g}s "
                    "(not even a keepalive); reconnecting"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                if self._stop.is_set():
                    return received
                raise SubscribeError(f"the stream broke: {exc}") from exc
            if not line:
                if self._stop.is_set():
                    return received
                raise SubscribeError("the server closed the stream")
            received = True
            if len(line) > limit and not line.endswith(b"\n"):
                self._skip_rest(response, limit)
                log.warning("answer stream: a line over %d bytes was skipped", limit)
                continue
            if line.strip():
                self.handle_line(line)
        return received

    @staticmethod
    def _skip_rest(response: http.client.HTTPResponse, limit: int) -> None:
        while True:
            chunk = response.readline(limit)
            if not chunk or chunk.endswith(b"\n"):
                return

    # ---- one message -----------------------------------------------------------------------

    def handle_line(self, line: bytes) -> None:
        """Judge one stream line and act on it; never raises for what the line holds."""
        message = answers.read_line(line, self.config.ntfy.max_answer_bytes)
        if isinstance(message, Skip):
            if not message.why.startswith("event "):
                log.warning("answer stream: skipped a line: %s", message.why)
            return
        if self.handled.seen(message.ntfy_id, message.time):
            self.since = message.ntfy_id
            return
        if isinstance(message, Refused):
            self._refuse(message.ntfy_id, message.reason, ack=message.ack)
        elif not self.flood.admit(message.time):
            per_minute = self.config.ntfy.max_answers_per_minute
            self._refuse(
                message.ntfy_id,
                f"more than {per_minute} answers in a minute",
                ack=self.flood.should_ack(message.time),
            )
        else:
            self._answer(message)
        self._done(message.ntfy_id, message.time)

    def _refuse(self, ntfy_id: str, reason: str, *, ack: bool) -> None:
        event(
            log,
            "answer_refused",
            "answer %s from the phone refused: %s",
            ntfy_id,
            reason,
            envelope=ntfy_id,
            level=logging.WARNING,
        )
        if ack:
            self.notifier.push(answers.acknowledgement(f"refused: {reason}"))

    def _answer(self, answer: Answer) -> None:
        if answer.question is not None:
            stale = self._stale(answer.question)
            if stale is not None:
                event(
                    log,
                    "answer_stale",
                    "answer %s to %s changes nothing: %s",
                    answer.ntfy_id,
                    answer.question,
                    stale,
                    envelope=answer.ntfy_id,
                    question=answer.question,
                )
                self.notifier.push(answers.acknowledgement(f"already answered ({stale})"))
                return
        handover = Handover(answer.ntfy_id, answer.question, answer.text)
        self._hand_over(handover)
        if answer.question is not None:
            self.answered = [*self.answered, answer.question][-MAX_ANSWERED_QUESTIONS:]
        event(
            log,
            "answer",
            "answer %s from the phone handed to relay%s",
            answer.ntfy_id,
            f" for {answer.question}" if answer.question else " (typed)",
            envelope=answer.ntfy_id,
            question=answer.question,
        )

    def _stale(self, question: str) -> str | None:
        """Why a button's answer to `question` can change nothing, or None if it may (the
        conversation decides for certain when it takes the answer)."""
        if question in self.answered:
            return f"{question} was answered from the phone"
        status = self._status()
        if status is None:
            return None  # no status yet: let the conversation judge
        pending = status.get("needs_jc_question")
        if pending == question:
            return None
        if pending is None:
            return f"{question} is no longer waiting for an answer"
        return f"{question} is not the question waiting now ({pending} is)"

    def _status(self) -> dict[str, Any] | None:
        try:
            return status_file.read(self.layout.status)
        except (OSError, ValueError):
            return None

    def _hand_over(self, handover: Handover) -> None:
        """Write the answer as operator input, waiting while an earlier one is unconsumed
        or the disk refuses; a stop meanwhile leaves it unhandled, for the next start."""
        body = handover.encode().encode("utf-8")
        began = time.monotonic()
        warned = 0.0
        while True:
            try:
                if write_jc_input(self.layout, body, HANDOVER_WAIT_S):
                    return
                why = f"{self.layout.jc_input} still holds earlier operator input"
            except OSError as exc:
                why = f"cannot write {self.layout.jc_input}: {exc.strerror or exc}"
                self._stop.wait(HANDOVER_WAIT_S)
            waited = time.monotonic() - began
            if waited - warned >= 30:
                warned = waited
                log.warning(
                    "%s; answer %s has waited %.0fs (is relay running?)",
                    why,
                    handover.ntfy_id,
                    waited,
                )
            if self._stop.is_set():
                raise SubscribeError(f"stopped before answer {handover.ntfy_id} was handed over")

    def _done(self, ntfy_id: str, when: int) -> None:
        self.handled.add(ntfy_id, when)
        self.since = ntfy_id
        self._save()

    # ---- the cursor ------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = json.loads(fsutil.read_regular(self.layout.subscriber_state, 1 << 22))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning(
                "%s cannot be read (%s): starting from the server's whole cache; answers "
                "already applied are recognized by the conversation",
                self.layout.subscriber_state,
                exc,
            )
            return
        if not isinstance(raw, dict) or raw.get("topic") != self.topic:
            return  # another answer topic: nothing of it applies
        since = raw.get("since")
        self.since = since if isinstance(since, str) and since else None
        self.handled = Handled.from_json(raw.get("handled"))
        asked = raw.get("answered")
        if isinstance(asked, list):
            self.answered = [q for q in asked if isinstance(q, str)][-MAX_ANSWERED_QUESTIONS:]

    def _save(self) -> None:
        state = {
            "version": STATE_VERSION,
            "topic": self.topic,
            "since": self.since,
            "handled": self.handled.to_json(),
            "answered": self.answered,
        }
        data = json.dumps(state, sort_keys=True).encode() + b"\n"
        try:
            fsutil.atomic_write(self.layout.subscriber_state, data, PRIVATE_FILE_MODE)
        except OSError as exc:
            # Not fatal: the ids are also checked by the conversation; a later save catches up.
            log.warning("cannot save %s: %s", self.layout.subscriber_state, exc)


def enabled(config: Config) -> bool:
    return config.ntfy.server is not None
