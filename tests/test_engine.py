"""The engine in-process with an in-memory API fake: recovery after crashes at each step,
backoff and blocking. (The real SDK path is covered by test_e2e and test_api.)"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from relay import history, outbox
from relay.api import ApiReply
from relay.config import Config
from relay.engine import Engine
from relay.errors import ApiError
from relay.layout import Layout
from relay.ntfy import Notifier, Push
from relay.prices import Usage
from relay.records import Turn, session
from relay.spool import envelope_key, operator_file_name, operator_key


@dataclass
class FakeApi:
    """Answers `re: <last user text>`, or raises the queued errors first."""

    errors: list[ApiError] = field(default_factory=list)
    calls: list[list[dict[str, Any]]] = field(default_factory=list)

    def create(
        self,
        *,
        model: str,
        max_tokens: int,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
    ) -> ApiReply:
        self.calls.append(messages)
        if self.errors:
            raise self.errors.pop(0)
        text = messages[-1]["content"][-1]["text"]
        return ApiReply(f"re: {text}", Usage(10, 5), model, "end_turn", "req_1")


class FakeNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(None, None, 1.0)
        self.pushes: list[Push] = []

    def push(self, push: Push) -> None:
        self.pushes.append(push)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> tuple[Config, Layout, FakeApi, Clock]:
    config = Config(sessions=("session-1", "session-2"), data_dir=tmp_path / "data")
    return config, Layout(config.data_dir), FakeApi(), Clock()


def make(world: tuple[Config, Layout, FakeApi, Clock], notifier: Notifier | None = None) -> Engine:
    config, layout, api, clock = world
    engine = Engine(
        config,
        layout,
        lambda key, cfg: api,
        notifier or FakeNotifier(),
        environ={"ANTHROPIC_API_KEY": "sk-test"},
        monotonic=clock,
    )
    engine.recover()
    return engine


def settle(engine: Engine) -> None:
    for _ in range(20):
        engine.tick()
        engine.wait_inflight(5)
        if not engine.busy and not engine.spool.items():
            engine.tick()
            return
    engine.tick()


def put_envelope(layout: Layout, name: str, sender: str, content: str, serial: int = 1) -> str:
    """An admitted envelope, as intake leaves it (`name` is the client's file name)."""
    key = envelope_key(1, serial)
    (layout.inbox / key).write_text(json.dumps({"session_id": sender, "content": content}))
    (layout.inbox / f".n-{serial:020d}").write_bytes(f"1\n{name}".encode())
    return key


def record_answered(layout: Layout, key: str, sender: str, reply: str) -> None:
    """The history a SIGKILL leaves right after the turn for `key` was appended."""
    h = history.HistoryFile(layout.history, layout.archive)
    h.append(Turn(1, key, session(sender), f"[from {sender}]\nhi", reply, sender, False, "t"))
    h.close()


def test_a_turn_is_recorded_and_dispatched(world: tuple[Config, Layout, FakeApi, Clock]) -> None:
    _, layout, _api, _ = world
    engine = make(world)
    key = put_envelope(layout, "a.json", "session-1", "hello")
    settle(engine)
    assert layout.input_file("session-1").read_text() == "re: [from session-1]\nhello"
    (turn,) = history.load(layout.history)
    assert isinstance(turn, Turn) and turn.key == key and turn.target == "session-1"
    assert engine.spool.items() == []
    engine.close()


def test_crash_after_recording_does_not_call_the_api_again(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    config, layout, api, _ = world
    layout.ensure_all(config.sessions)
    key = put_envelope(layout, "a.json", "session-2", "hi")
    record_answered(layout, key, "session-2", "answer")
    engine = make(world)
    settle(engine)
    assert api.calls == []
    assert layout.input_file("session-2").read_text() == "answer"
    assert engine.spool.items() == []
    engine.close()


def test_crash_after_pending_was_written_does_not_duplicate_it(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    config, layout, _api, _ = world
    layout.ensure_all(config.sessions)
    key = put_envelope(layout, "a.json", "session-1", "hi")
    record_answered(layout, key, "session-1", "answer")
    outbox.enqueue(layout, "session-1", key, "answer")
    engine = make(world)
    settle(engine)
    assert layout.input_file("session-1").read_text() == "answer"
    assert outbox.pending(layout, "session-1") == []
    engine.close()


def test_direct_message_interrupted_before_cleanup_is_sent_once(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    config, layout, api, _ = world
    layout.ensure_all(config.sessions)
    name = operator_key(7)
    (layout.inbox / name).write_text("@session-1: do it")
    outbox.enqueue(layout, "session-1", name, "do it")  # crash came after this
    engine = make(world)
    settle(engine)
    assert layout.input_file("session-1").read_text() == "do it"
    layout.input_file("session-1").unlink()
    settle(engine)
    assert not layout.input_file("session-1").exists()
    assert api.calls == []
    engine.close()


def test_transient_error_backs_off_then_succeeds(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    _, layout, api, clock = world
    api.errors.append(ApiError("HTTP 529: overloaded", transient=True, retry_after=30))
    engine = make(world)
    put_envelope(layout, "a.json", "session-1", "hello")
    settle(engine)
    status = engine.status()
    assert status["state"] == "backoff" and "529" in status["last_error"]
    assert not layout.input_file("session-1").exists()
    assert len(api.calls) == 1
    clock.now += 31
    settle(engine)
    assert layout.input_file("session-1").exists()
    assert engine.status()["state"] == "running"
    engine.close()


def test_refused_call_blocks_notifies_once_and_keeps_the_item(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    _, layout, api, clock = world
    api.errors += [ApiError("credit balance too low", transient=False)] * 2
    notifier = FakeNotifier()
    engine = make(world, notifier)
    put_envelope(layout, "a.json", "session-1", "hello")
    settle(engine)
    assert engine.status()["state"] == "blocked"
    clock.now += 301
    settle(engine)
    assert len(api.calls) == 2 and len(notifier.pushes) == 1
    assert engine.spool.items() != []
    clock.now += 301
    settle(engine)
    assert layout.input_file("session-1").exists()
    engine.close()


def test_needs_jc_then_operator_answer(world: tuple[Config, Layout, FakeApi, Clock]) -> None:
    _, layout, api, _ = world
    notifier = FakeNotifier()
    engine = make(world, notifier)
    put_envelope(layout, "a.json", "session-2", "x")
    api.errors = []
    original = api.create

    def needs_jc_once(**kwargs: Any) -> ApiReply:
        reply = original(**kwargs)
        if len(api.calls) == 1:
            return ApiReply("[NEEDS-JC] choose A or B", reply.usage, reply.model, "end_turn", None)
        return reply

    api.create = needs_jc_once  # type: ignore[method-assign]
    settle(engine)
    assert engine.status()["state"] == "needs_jc"
    assert notifier.pushes[0].priority == "high"
    assert not layout.input_file("session-2").exists()
    (layout.inbox / operator_key(9)).write_text("A")
    settle(engine)
    assert layout.input_file("session-2").read_text() == "re: [from operator]\nA"
    assert engine.status()["state"] == "running"
    engine.close()


def test_summary_is_skipped_when_kept_turns_alone_exceed_the_cap(tmp_path: Path) -> None:
    config = Config(
        sessions=("session-1",), data_dir=tmp_path / "d", history_char_cap=1000, keep_recent_turns=5
    )
    api = FakeApi()
    engine = Engine(
        config,
        Layout(config.data_dir),
        lambda k, c: api,
        FakeNotifier(),
        environ={"ANTHROPIC_API_KEY": "k"},
    )
    engine.recover()
    for i in range(3):
        put_envelope(engine.layout, f"{i}.json", "session-1", "y" * 600, serial=i + 1)
        settle(engine)
        engine.layout.input_file("session-1").unlink()
    # Every call was a turn; none was a summarization of the kept turns.
    assert len(api.calls) == 3
    assert all("[from relay]" not in json.dumps(c[-1]) for c in api.calls)
    engine.close()


def test_full_disk_while_recording_keeps_the_reply_and_never_calls_twice(
    world: tuple[Config, Layout, FakeApi, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    _, layout, api, clock = world
    engine = make(world)
    real_append = history.HistoryFile.append
    failures = [OSError(errno.ENOSPC, "No space left on device")] * 2

    def flaky_append(self: history.HistoryFile, record: Turn) -> None:
        if failures:
            raise failures.pop()
        real_append(self, record)

    monkeypatch.setattr(history.HistoryFile, "append", flaky_append)
    put_envelope(layout, "a.json", "session-1", "hello")
    settle(engine)
    status = engine.status()
    assert "No space left" in status["last_error"] and status["state"] == "backoff"
    assert not layout.input_file("session-1").exists()
    clock.now += 11
    settle(engine)  # still full
    assert not layout.input_file("session-1").exists()
    clock.now += 11
    settle(engine)  # space again
    assert layout.input_file("session-1").read_text() == "re: [from session-1]\nhello"
    assert len(api.calls) == 1  # the answered call was never repeated
    assert [r.key for r in history.load(layout.history) if isinstance(r, Turn)] == [
        envelope_key(1, 1)
    ]
    assert engine.status()["last_error"] is None
    engine.close()


@pytest.mark.parametrize("early", [i * 0.03 for i in range(12)])
def test_a_retry_that_falls_due_during_a_tick_is_not_slept_through(
    world: tuple[Config, Layout, FakeApi, Clock], early: float
) -> None:
    config, layout, api, _ = world

    class Ticking(Clock):
        """Time moves on every reading, as it does while a tick runs."""

        def __call__(self) -> float:
            self.now += 0.02
            return self.now

    clock = Ticking()
    api.errors.append(ApiError("HTTP 529: overloaded", transient=True, retry_after=1.0))
    engine = Engine(
        config,
        layout,
        lambda key, cfg: api,
        FakeNotifier(),
        environ={"ANTHROPIC_API_KEY": "k"},
        monotonic=clock,
    )
    engine.recover()
    put_envelope(layout, "a.json", "session-1", "hello")
    waits = []
    for _ in range(60):
        wait = engine.tick()
        engine.wait_inflight(5)
        if len(api.calls) == 2:
            break
        waits.append(wait)
        # The caller may wake a little early (a poll timeout rounded down used to).
        clock.now += max(wait - early, 0.0)
    assert len(api.calls) == 2, f"never retried; waits were {waits}"
    assert max(waits) < 5.0, f"slept through the retry: {waits}"
    engine.close()


def test_a_direct_message_is_delivered_in_the_same_tick(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    _, layout, api, _ = world
    engine = make(world)
    (layout.inbox / operator_key(3)).write_text("@session-2: now")
    engine.tick()  # no second tick: nothing else would wake the service loop
    assert layout.input_file("session-2").read_text() == "now"
    assert api.calls == []
    engine.close()


def test_a_server_asking_for_no_wait_does_not_make_relay_hammer_the_api(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    _, layout, api, clock = world
    for _ in range(5):
        api.errors.append(ApiError("HTTP 429: rate limited", transient=True, retry_after=0.0))
    engine = make(world)
    put_envelope(layout, "a.json", "session-1", "hello")
    settle(engine)
    waited = []
    while len(api.calls) < 6:
        calls = len(api.calls)
        start = clock.now
        while len(api.calls) == calls:
            clock.now += 0.05
            settle(engine)
        waited.append(clock.now - start)
    # retry-after: 0 five times: the waits still grow (0.75-1 s, 1.5-2 s, 3-4 s, ...).
    assert all(w >= 0.7 for w in waited)
    assert waited[-1] > 4 * waited[0] * 0.75
    assert layout.input_file("session-1").exists()
    engine.close()


def test_a_refused_direct_message_stays_where_clients_cannot_read_it(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    _, layout, api, _ = world
    engine = make(world)
    key = operator_key(5)
    (layout.inbox / key).write_text("@session-9: the password is hunter2")
    settle(engine)
    assert api.calls == []
    assert not layout.rejected.exists() or list(layout.rejected.iterdir()) == []
    name = operator_file_name(key)
    kept = layout.operator_rejected / name
    assert kept.read_text() == "@session-9: the password is hunter2"
    assert "unknown session" in (layout.operator_rejected / f"{name}.reason").read_text()
    engine.close()


def refusal(message: str = "HTTP 400: invalid_request_error: bad request") -> ApiError:
    return ApiError(message, transient=False, status=400, per_item=True)


def test_a_request_the_api_refuses_is_set_aside_and_the_rest_flows(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    _, layout, api, _ = world
    api.errors.append(refusal())
    notifier = FakeNotifier()
    engine = make(world, notifier)
    put_envelope(layout, "bad.json", "session-1", "first", serial=1)
    put_envelope(layout, "good.json", "session-2", "second", serial=2)
    settle(engine)
    assert json.loads((layout.rejected / "bad.json").read_text())["content"] == "first"
    reason = (layout.rejected / "bad.json.reason").read_text()
    assert reason.startswith("the API refused it: HTTP 400") and reason.count("\n") == 1
    told = layout.input_file("session-1").read_text()
    assert told.startswith("relay could not process your message (the API refused it")
    assert layout.input_file("session-2").read_text() == "re: [from session-2]\nsecond"
    assert len(api.calls) == 2 and len(notifier.pushes) == 1
    assert "bad.json" in notifier.pushes[0].message
    assert engine.spool.items() == [] and engine.status()["state"] == "running"
    engine.close()


def test_a_context_overflow_is_summarized_first(tmp_path: Path) -> None:
    config = Config(sessions=("session-1",), data_dir=tmp_path / "d", keep_recent_turns=1)
    api = FakeApi()
    engine = Engine(
        config,
        Layout(config.data_dir),
        lambda k, c: api,
        FakeNotifier(),
        {"ANTHROPIC_API_KEY": "k"},
    )
    engine.recover()
    for i in range(2):
        put_envelope(engine.layout, f"{i}.json", "session-1", f"turn {i}", serial=i + 1)
        settle(engine)
        engine.layout.input_file("session-1").unlink()
    api.errors.append(
        ApiError("prompt is too long", transient=False, per_item=True, context_overflow=True)
    )
    put_envelope(engine.layout, "big.json", "session-1", "turn 2", serial=3)
    settle(engine)
    # The refused call, then a summarization, then the same turn again: it fits now.
    assert len(api.calls) == 5
    assert "[from relay]" in json.dumps(api.calls[3][-1])
    assert engine.layout.input_file("session-1").read_text() == "re: [from session-1]\nturn 2"
    assert [type(r).__name__ for r in history.load(engine.layout.history)] == [
        "Summary",
        "Turn",
        "Turn",
    ]
    engine.close()


def test_an_item_that_keeps_killing_relay_is_set_aside_without_a_call(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    from relay.engine import MAX_TRIES

    config, layout, api, _ = world
    layout.ensure_all(config.sessions)
    put_envelope(layout, "deadly.json", "session-1", "x", serial=1)
    # MAX_TRIES processes began it and none finished: each was killed.
    (layout.inbox / f".t-{1:020d}").write_text(f"{MAX_TRIES}\n")
    put_envelope(layout, "next.json", "session-2", "y", serial=2)
    engine = make(world)
    settle(engine)
    assert (layout.rejected / "deadly.json").exists()
    assert (
        f"relay stopped {MAX_TRIES} times" in (layout.rejected / "deadly.json.reason").read_text()
    )
    assert [c[-1]["content"][-1]["text"] for c in api.calls] == ["[from session-2]\ny"]
    assert sorted(p.name for p in layout.inbox.iterdir()) == []
    engine.close()


def test_a_crash_counts_once_per_process_and_a_clean_stop_takes_it_back(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    _, layout, api, clock = world
    api.errors += [ApiError("HTTP 529: overloaded", transient=True, retry_after=1)] * 3
    engine = make(world)
    put_envelope(layout, "a.json", "session-1", "x")
    tries = layout.inbox / f".t-{1:020d}"
    for _ in range(3):  # three failed calls in one process: one count
        settle(engine)
        clock.now += 10
    assert tries.read_text() == "1\n"
    engine.close(graceful=True)
    assert not tries.exists()


def test_a_reply_answered_before_a_crash_is_recorded_without_a_second_call(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    config, layout, api, _ = world
    layout.ensure_all(config.sessions)
    put_envelope(layout, "a.json", "session-1", "x")
    stash = {"text": "kept", "usage": {"input_tokens": 3}, "model": "m", "cost_usd": 0.5}
    (layout.inbox / f".r-{1:020d}").write_text(json.dumps(stash))
    engine = make(world)
    settle(engine)
    assert api.calls == []
    assert layout.input_file("session-1").read_text() == "kept"
    (turn,) = history.load(layout.history)
    assert isinstance(turn, Turn) and turn.reply == "kept" and turn.cost_usd == 0.5
    assert sorted(p.name for p in layout.inbox.iterdir()) == []
    engine.close()


def test_an_error_handling_one_item_sets_it_aside_and_the_rest_flows(
    world: tuple[Config, Layout, FakeApi, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    import relay.envelope

    _, layout, _api, _ = world
    real = relay.envelope.parse_envelope

    def fragile(data: bytes, *args: Any) -> Any:
        if b"poison" in data:
            raise RuntimeError("boom")
        return real(data, *args)

    monkeypatch.setattr(relay.envelope, "parse_envelope", fragile)
    engine = make(world)
    put_envelope(layout, "poison.json", "session-1", "poison", serial=1)
    put_envelope(layout, "fine.json", "session-2", "fine", serial=2)
    settle(engine)
    assert "RuntimeError: boom" in (layout.rejected / "poison.json.reason").read_text()
    assert layout.input_file("session-2").read_text() == "re: [from session-2]\nfine"
    assert layout.input_file("session-1").read_text().startswith("relay could not process")
    engine.close()


def test_a_full_disk_on_a_direct_message_waits_and_sends_it_once(
    world: tuple[Config, Layout, FakeApi, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    _, layout, _api, clock = world
    engine = make(world)
    real = outbox.enqueue
    full = [True]

    def enqueue(*args: Any) -> Any:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(outbox, "enqueue", enqueue)
    (layout.inbox / operator_key(4)).write_text("@session-1: go")
    assert engine.tick() <= 10.0
    assert "No space left" in engine.status()["last_error"]
    assert engine.spool.items() == [operator_key(4)]
    full[0] = False
    clock.now += 11
    settle(engine)
    assert layout.input_file("session-1").read_text() == "go"
    assert engine.spool.items() == []
    engine.close()


def test_a_call_that_hangs_below_every_deadline_is_abandoned_and_retried(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    import threading

    config, layout, api, clock = world
    release = threading.Event()
    original = api.create

    def hangs_once(**kwargs: Any) -> ApiReply:
        if not api.calls:
            api.calls.append(kwargs["messages"])
            release.wait(30)  # a name lookup that never returns, say
            return ApiReply("too late", Usage(1, 1), "m", "end_turn", None)
        return original(**kwargs)

    api.create = hangs_once  # type: ignore[method-assign]
    engine = make(world)
    put_envelope(layout, "a.json", "session-1", "hello")
    engine.tick()
    assert engine.caller.busy
    clock.now += config.anthropic.timeout_s + 31
    engine.tick()
    assert not engine.caller.busy and "no answer within" in engine.status()["last_error"]
    clock.now += 5
    settle(engine)
    release.set()
    assert layout.input_file("session-1").read_text() == "re: [from session-1]\nhello"
    assert [r.reply for r in history.load(layout.history) if isinstance(r, Turn)] == [
        "re: [from session-1]\nhello"
    ]
    engine.close()


def test_an_older_release_item_with_a_long_name_can_be_set_aside(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    config, layout, api, _ = world
    layout.ensure_all(config.sessions)
    name = "n" * 220 + ".json"
    key = f"q-{1:020d}-{name}"  # as the previous release named items
    (layout.inbox / key).write_text(json.dumps({"session_id": "session-1", "content": "x"}))
    api.errors.append(refusal())
    engine = make(world)
    settle(engine)
    assert (layout.rejected / name).exists() and (layout.rejected / f"{name}.reason").exists()
    assert engine.spool.items() == []
    engine.close()


def test_a_write_error_after_the_reply_was_queued_never_delivers_it_twice(
    world: tuple[Config, Layout, FakeApi, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from relay import fsutil

    _, layout, api, clock = world
    engine = make(world)
    put_envelope(layout, "a.json", "session-1", "hello")
    real = fsutil.unlink_durable
    failed: list[Path] = []

    def unlink_then_fail(path: Path) -> None:
        real(path)
        if path.name.startswith("q-") and not failed:
            failed.append(path)
            raise OSError(errno.EIO, "I/O error")  # the item is gone, its dir not synced

    monkeypatch.setattr(fsutil, "unlink_durable", unlink_then_fail)
    engine.tick()
    engine.wait_inflight(5)
    engine.tick()
    assert layout.input_file("session-1").read_text() == "re: [from session-1]\nhello"
    layout.input_file("session-1").unlink()  # the session took it
    clock.now += 11
    settle(engine)
    assert not layout.input_file("session-1").exists() and len(api.calls) == 1
    engine.close()


def test_a_kept_reply_is_recorded_even_without_an_api_key(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    config, layout, api, clock = world
    layout.ensure_all(config.sessions)
    put_envelope(layout, "a.json", "session-1", "x")
    stash = {"text": "kept", "usage": {"input_tokens": 3}, "model": "m", "cost_usd": 0.1}
    (layout.inbox / f".r-{1:020d}").write_text(json.dumps(stash))
    engine = Engine(config, layout, lambda k, c: api, FakeNotifier(), {}, monotonic=clock)
    engine.recover()
    settle(engine)
    assert engine.api is None and api.calls == []
    assert layout.input_file("session-1").read_text() == "kept"
    engine.close()


def test_cache_ttl_is_read_from_the_config_at_each_call(
    world: tuple[Config, Layout, FakeApi, Clock],
) -> None:
    config, layout, api, _ = world
    engine = make((replace(config, cache_ttl="5m"), layout, api, world[3]))
    put_envelope(layout, "a.json", "session-1", "one", serial=1)
    settle(engine)
    engine.config = replace(engine.config, cache_ttl="1h")  # what a reload does
    put_envelope(layout, "b.json", "session-1", "two", serial=2)
    settle(engine)
    first, second = api.calls
    assert first[-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert second[-1]["content"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert second[-2]["content"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    engine.close()
