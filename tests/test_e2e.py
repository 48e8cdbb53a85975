"""relay's end-to-end behaviours, one scenario suite over every deployment (tests/deployment.py):
each scenario runs against a real `relay run` in the foreground and against the real Debian
package under a real systemd 252 (system tests: a container, so they need root). Both use the
real SDK against a stand-in Messages API on loopback, and touch relay only through the ⚑
contract. What exists only under systemd (units, watchdog, journal, credentials, path-unit
limits) is at the end, driven the same way; faults are injected with drop-ins on the real
units, never with a stand-in for relay.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

import pytest

from tests.check_units import EXPOSURE_LIMITS, UNITS_DIR, unit_files
from tests.deployment import SESSIONS, TOPIC, Deployment, input_txt
from tests.programs.queue_writer import content, session_for
from tests.standin.api import (
    Delay,
    RecordedRequest,
    Reply,
    StandinAPI,
    credit_balance_too_low,
    overloaded,
    without_breakpoints,
)
from tests.standin.ntfy import NtfyMessage, StandinNtfy, publish, tap
from tests.system.nspawn import Container
from tests.system.packaged import CONVERSATION, Packaged
from tests.system.relaydeb import DATA, KEY_PATH

system = pytest.mark.system
installed_with = pytest.mark.installed_with

# One of each kind of refusal.
MALFORMED_ENVELOPES: dict[str, bytes] = {
    "notjson.json": b"{not json",
    "badutf8.json": b'{"session_id": "session-1", "content": "\xff\xfe"}',
    "unknown.json": json.dumps({"session_id": "session-9", "content": "x"}).encode(),
    "empty.json": json.dumps({"session_id": "session-1", "content": "  "}).encode(),
    "types.json": json.dumps({"session_id": 1, "content": "x"}).encode(),
}
# Every way a path unit or its handler can be wedged by its limits (docs/systemd.md §1.3).
LIMIT_HITS = (
    "start-limit-hit",
    "unit-start-limit-hit",
    "trigger-limit-hit",
    "Start request repeated too quickly",
    "Trigger limit hit",
)
HANDLERS = ("relay-queue.service", "relay-jc.service")
UNIT_DIR = "/lib/systemd/system"


def sent_key(call: RecordedRequest) -> str:
    """The API key a Messages call carried (the SDK sends x-api-key or a bearer token)."""
    return call.headers.get("x-api-key") or call.headers.get("authorization", "").removeprefix(
        "Bearer "
    )


def calls_with(api: StandinAPI, text: str) -> list[RecordedRequest]:
    """Messages calls (answered or still in flight) whose newest user turn contains text."""
    return [
        call
        for call in api.message_calls()
        if isinstance(call.body, dict) and text in json.dumps(call.body["messages"][-1])
    ]


def reply(deployment: Deployment, text: str) -> None:
    """`relay reply` as the operator runs it."""
    done = deployment.cli("reply", "-", stdin=text)
    assert done.returncode == 0, done


def pause(deployment: Deployment, session: str, question: str) -> None:
    """`session` asks something only the operator can answer; relay pauses."""
    deployment.submit(session, f"[[reply: [NEEDS-JC] {question}]]")
    deployment.wait_status(lambda s: s["state"] == "needs_jc")


def settle(deployment: Deployment, seconds: float) -> None:
    """Give relay time to do what it must not do (a second reply would come at once)."""
    time.sleep(seconds)


# ----- 1. the engine, through every deployment ---------------------------------------------


def test_queue_entry_is_sent_and_its_reply_dispatched(
    deployment: Deployment, api: StandinAPI
) -> None:
    deployment.submit("session-1", "What should I do next?")
    assert deployment.consume("session-1") == "ack: [from session-1] What should I do next?"
    assert deployment.queue_names() == []
    (call,) = api.message_calls()
    # The user turn names its session; the system prompt and the new turn are cacheable. With
    # no rhythm seen yet, `cache_ttl: auto` keeps both an hour (relay/cache_policy.py), and
    # the stand-in, which refuses a 1 h breakpoint after a 5 m one, accepted the call.
    turn = call.body["messages"][-1]["content"][-1]
    assert turn["text"].startswith("[from session-1]\n")
    assert turn["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert call.body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert call.status == 200
    assert sent_key(call) == deployment.key
    if isinstance(deployment, Packaged):  # readable by relay-clients, a session's user
        stat = ["stat", "-c", "%A %U %G", deployment.path("dispatch/session-1")]
        deployment.submit("session-1", "for a client's eyes")
        deployment.wait_input("session-1")
        assert deployment.c.run([*stat, deployment.path(input_txt("session-1"))]).stdout == (
            "drwxrws--- relay relay-clients\n-rw-r----- relay relay-clients\n"
        )


def test_conversation_prefix_is_byte_stable_and_read_from_cache(
    deployment: Deployment, api: StandinAPI
) -> None:
    deployment.submit("session-1", "first")
    deployment.consume("session-1")
    deployment.submit("session-2", "second")
    deployment.consume("session-2")
    first, second = api.message_calls()
    assert without_breakpoints(second.body["messages"][:1]) == without_breakpoints(
        first.body["messages"]
    )
    assert second.body["messages"][1]["content"][0]["text"] == "ack: [from session-1] first"
    # The second call came seconds after the first: the conversation prefix (the end of the
    # first reply) is kept an hour, the new turn five minutes (the API's default, unsaid).
    assert second.body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert second.body["messages"][1]["content"][-1]["cache_control"] == {
        "type": "ephemeral",
        "ttl": "1h",
    }
    assert second.body["messages"][2]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    ledger = deployment.lines("state/ledger.jsonl")
    assert len(ledger) == 2
    assert ledger[0]["usage"]["cache_write_1h_tokens"] > 0
    assert ledger[0]["usage"]["cache_write_tokens"] == 0
    assert ledger[1]["usage"]["cache_read_tokens"] > 0
    assert ledger[1]["usage"]["cache_write_tokens"] > 0  # the new turn, at 5 m
    assert all(entry["cost_usd"] > 0 for entry in ledger)


def test_needs_jc_pauses_without_dispatch_and_pushes(
    deployment: Deployment, ntfy: StandinNtfy
) -> None:
    deployment.submit("session-1", "[[reply: [NEEDS-JC] Should we delete the old branch?]]")
    status = deployment.wait_status(lambda s: s["state"] == "needs_jc")
    assert status["last_needs_jc_text"].startswith("[NEEDS-JC] Should we delete")
    assert status["needs_jc_session"] == "session-1"
    (push,) = ntfy.wait_for(1, timeout=10)
    assert push.topic == TOPIC
    assert push.priority >= 4
    assert "delete the old branch" in push.message
    assert push.title and "session-1" in push.title
    settle(deployment, 0.5)
    assert not deployment.exists(input_txt("session-1"))
    assert deployment.listing("dispatch/session-1/.pending") == []
    if isinstance(deployment, Packaged):
        assert "needs_jc" in deployment.show(CONVERSATION, "StatusText")


def test_pause_holds_later_queue_entries(deployment: Deployment, api: StandinAPI) -> None:
    pause(deployment, "session-1", "approve?")
    calls = len(api.message_calls())
    deployment.submit("session-2", "held 1")
    deployment.submit("session-1", "held 2")
    # Accepted (the queue empties) but not sent to the API while paused.
    deployment.wait_for(lambda: deployment.queue_names() == [], "intake")
    status = deployment.wait_status(lambda s: s["inbox"] == 2)
    settle(deployment, 0.5)
    assert len(api.message_calls()) == calls
    assert status["state"] == "needs_jc"
    assert not deployment.exists(input_txt("session-2"))
    assert not deployment.exists(input_txt("session-1"))


def test_direct_operator_messages_skip_the_api_come_at_once_and_keep_a_pause(
    deployment: Deployment, api: StandinAPI
) -> None:
    # Each is delivered as promptly as a queue entry's reply is. Several tries, because
    # another event sometimes wakes the loop in time (about one try in five).
    for attempt in range(4):
        reply(deployment, f"@session-2: direct {attempt}")
        assert deployment.consume("session-2", timeout=2.5) == f"direct {attempt}"
    pause(deployment, "session-1", "which database?")
    calls = len(api.message_calls())
    reply(deployment, "@session-2: please run the tests\nand report back")
    assert deployment.consume("session-2", timeout=2.5) == "please run the tests\nand report back"
    assert not deployment.exists("state/jc_input.txt")
    assert len(api.message_calls()) == calls
    # A direct message does not lift the pause.
    assert deployment.wait_status(lambda s: s["state"] == "needs_jc")["inbox"] == 0


def test_operator_answer_lifts_the_pause_and_goes_to_the_raising_session(
    deployment: Deployment,
) -> None:
    pause(deployment, "session-2", "may I force-push?")
    deployment.submit("session-1", "held while paused")
    deployment.wait_for(lambda: deployment.queue_names() == [], "intake")
    reply(deployment, "No force-push. Rebase instead.")
    answer = deployment.consume("session-2")
    assert answer == "ack: [from operator] No force-push. Rebase instead."
    assert not deployment.exists("state/jc_input.txt")
    # The held entry now goes through.
    assert deployment.consume("session-1") == "ack: [from session-1] held while paused"
    status = deployment.wait_status(lambda s: s["state"] == "running" and s["inbox"] == 0)
    assert status["last_dispatch_session"] == "session-1"
    operator_turn = next(r for r in deployment.history() if r.get("session") == "operator")
    assert operator_turn["target"] == "session-2"


def test_operator_turn_without_a_pause_goes_to_the_last_active_session(
    deployment: Deployment,
) -> None:
    deployment.submit("session-2", "status report")
    deployment.consume("session-2")
    reply(deployment, "Good work; continue.")
    assert deployment.consume("session-2") == "ack: [from operator] Good work; continue."


def test_operator_input_is_always_consumed(deployment: Deployment) -> None:
    """jc_input.txt written again and again, also over itself while relay takes the last
    one: every write is consumed, none is taken twice, and relay-jc.path never wedges."""
    for i in range(4):
        deployment.write("state/jc_input.txt", f"@session-2: operator says {i}".encode())
        assert deployment.consume("session-2") == f"operator says {i}"
    for i in range(5):  # back to back: a write may replace one relay has not seen
        deployment.write("state/jc_input.txt", f"@session-2: rapid {i}".encode())
    deployment.wait_for(lambda: not deployment.exists("state/jc_input.txt"), "jc_input consumed")
    taken = [deployment.consume("session-2")]
    while taken[-1] != "rapid 4":
        taken.append(deployment.consume("session-2"))
    assert taken == sorted(set(taken)), taken
    if isinstance(deployment, Packaged):
        assert deployment.show("relay-jc.path", "ActiveState") == "active"
        log = deployment.journal_text("-u", "relay-jc.service", "-u", "relay-jc.path")
        assert not [hit for hit in LIMIT_HITS if hit in log]


def test_malformed_files_are_rejected_and_the_loop_goes_on(deployment: Deployment) -> None:
    for name, data in MALFORMED_ENVELOPES.items():
        deployment.write(f"queue/{name}", data)
    # A symlink is refused, never followed (here it points at a file only root may read).
    deployment.symlink("queue/link.json", "/etc/shadow")
    deployment.submit("session-1", "still alive?")
    assert deployment.consume("session-1") == "ack: [from session-1] still alive?"
    expected = 2 * (len(MALFORMED_ENVELOPES) + 1)
    deployment.wait_for(lambda: len(deployment.listing("queue/.rejected")) == expected, "rejects")
    for name, data in MALFORMED_ENVELOPES.items():
        assert deployment.read_bytes(f"queue/.rejected/{name}") == data, name
        reason = deployment.read(f"queue/.rejected/{name}.reason")
        assert reason and reason.endswith("\n") and reason.count("\n") == 1, reason
    unknown = deployment.read("queue/.rejected/unknown.json.reason")
    assert unknown and "unknown session_id 'session-9'" in unknown
    assert "symlink" in (deployment.read("queue/.rejected/link.json.reason") or "")
    assert not deployment.exists("dispatch/session-9")
    assert deployment.queue_names() == []
    if isinstance(deployment, Packaged):
        assert deployment.show("relay-queue.path", "ActiveState") == "active"


def test_second_reply_waits_until_the_first_is_consumed(deployment: Deployment) -> None:
    deployment.submit("session-1", "one")
    assert deployment.wait_input("session-1") == "ack: [from session-1] one"
    deployment.submit("session-1", "two")
    deployment.submit("session-1", "three")
    deployment.wait_status(lambda s: s["pending"]["session-1"] == 2)
    assert deployment.read(input_txt("session-1")) == "ack: [from session-1] one"
    deployment.remove(input_txt("session-1"))
    assert deployment.consume("session-1") == "ack: [from session-1] two"
    assert deployment.consume("session-1") == "ack: [from session-1] three"


def test_status_persists_across_a_restart(deployment: Deployment) -> None:
    deployment.submit("session-2", "hello")
    deployment.consume("session-2")
    before = deployment.wait_status(lambda s: s["history_turns"] == 1)
    assert before["state"] == "running"
    assert before["last_dispatch_session"] == "session-2"
    deployment.stop()
    assert (deployment.status() or {})["state"] == "stopped"
    shown = deployment.cli("status").stdout
    assert "stopped" in shown
    if isinstance(deployment, Packaged):
        assert f"{CONVERSATION} inactive" in shown
    deployment.start()
    after = deployment.wait_status(lambda s: s["state"] == "running" and s["pid"] != before["pid"])
    assert after["pid"] == deployment.service_pid()
    assert after["history_turns"] == 1
    assert after["last_dispatch_session"] == "session-2"
    shown = deployment.cli("status").stdout
    assert "running" in shown and "session-2" in shown
    as_json = json.loads(deployment.cli("status", "--json").stdout)
    assert as_json["history_turns"] == 1
    if isinstance(deployment, Packaged):
        units = (
            "relay.target",
            CONVERSATION,
            "relay-answers.service",
            "relay-queue.path",
            "relay-jc.path",
        )
        assert as_json["units"] == dict.fromkeys(units, "active")
    else:
        assert "units" not in as_json  # no systemd here
        deployment.kill()  # a SIGKILL leaves "running" in status.json; `relay status` knows
        killed = json.loads(deployment.cli("status", "--json").stdout)
        assert killed["state"] == "stopped" and killed["stale"] is True


@installed_with(history_char_cap=2000, keep_recent_turns=2, summarization_prompt="SUMMARIZE-NOW")
def test_summarization_at_the_cap(deployment: Deployment, api: StandinAPI) -> None:
    for i in range(6):
        deployment.submit("session-1", f"turn {i} " + "x" * 400)
        assert deployment.consume("session-1").startswith(f"ack: [from session-1] turn {i}")
    deployment.wait_for(lambda: deployment.history()[0]["kind"] == "summary", "a summary")
    records = deployment.history()
    assert records[0]["text"].startswith("ack: [from relay] SUMMARIZE-NOW")
    assert [r["kind"] for r in records[1:]] == ["turn"] * (len(records) - 1)
    assert deployment.listing("state/archive"), "the old history is archived"
    assert calls_with(api, "SUMMARIZE-NOW")
    # Each summarization replaced the history once: summarized turns are gone from it.
    assert all("turn 0" not in r.get("user", "") for r in records)
    # The next turn carries the summary at the head of the conversation.
    deployment.submit("session-2", "after the summary")
    deployment.consume("session-2")
    head = api.message_calls()[-1].body["messages"][0]["content"][0]["text"]
    assert head.startswith("Summary of the conversation so far")
    summarized = deployment.events("RELAY_EVENT=summarized")
    assert summarized and all(float(e["RELAY_COST_USD"]) > 0 for e in summarized)


def test_transient_api_error_backs_off_and_retries(deployment: Deployment, api: StandinAPI) -> None:
    api.script(overloaded(retry_after=0.5))
    deployment.submit("session-1", "patience")
    assert deployment.consume("session-1") == "ack: [from session-1] patience"
    assert [c.status for c in api.message_calls()] == [529, 200]
    (error,) = deployment.events("RELAY_EVENT=api_error")
    assert error["RELAY_SESSION"] == "session-1"


@installed_with(key=None)
def test_no_key_keeps_relay_up_processing_nothing_and_saying_so(
    deployment: Deployment, api: StandinAPI
) -> None:
    started = time.monotonic()
    pid = deployment.service_pid()
    deployment.submit("session-1", "anyone?")
    status = deployment.wait_status(lambda s: s["inbox"] == 1)
    assert status["state"] == "blocked"
    assert status["api_key"] is False and "credstore" in status["api_key_help"]
    assert "MISSING" in deployment.cli("status").stdout
    if isinstance(deployment, Packaged):
        shown = deployment.c.systemctl("status", CONVERSATION).stdout
        (line,) = [x.strip() for x in shown.splitlines() if x.strip().startswith("Status:")]
        assert "no API key" in line and KEY_PATH in line, shown
        # A bare credstore name: no key is no credential, and no failed unit.
        assert not deployment.exists(f"/run/credentials/{CONVERSATION}/anthropic-api-key")
        # Longer than RestartSec=5s: a crash and restart would show in MainPID.
        settle(deployment, max(0.0, started + 6.0 - time.monotonic()))
        assert deployment.show(CONVERSATION, "SubState") == "running"
    assert deployment.service_pid() == pid
    assert api.message_calls() == []
    # The key appears where the README says; the waiting envelope goes through.
    key = f"sk-late-{secrets.token_hex(8)}"
    deployment.set_key(key)
    assert deployment.consume("session-1") == "ack: [from session-1] anyone?"
    assert sent_key(api.message_calls()[-1]) == key
    assert deployment.wait_status(lambda s: s["inbox"] == 0)["api_key"] is True
    assert key not in deployment.log_text() and key not in json.dumps(deployment.status())


def test_idempotent_submission_by_id(deployment: Deployment, api: StandinAPI) -> None:
    deployment.submit("session-1", "once", envelope_id="abc-1")
    deployment.consume("session-1")
    deployment.submit("session-1", "once", envelope_id="abc-1")
    (reason,) = deployment.wait_for(
        lambda: [n for n in deployment.listing("queue/.rejected") if n.endswith(".reason")],
        "the duplicate rejected",
    )
    assert "duplicate id" in (deployment.read(f"queue/.rejected/{reason}") or "")
    assert len(api.message_calls()) == 1


def test_credit_exhaustion_blocks_and_keeps_the_envelope(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    api.script(credit_balance_too_low())
    deployment.submit("session-1", "costly")
    status = deployment.wait_status(lambda s: s["state"] == "blocked")
    assert "credit balance" in status["last_error"]
    assert status["inbox"] == 1
    (push,) = ntfy.wait_for(1, timeout=10)
    assert "credit" in push.message
    if isinstance(deployment, Packaged):  # blocked is not failed: it runs on and says why
        assert deployment.show(CONVERSATION, "ActiveState") == "active"
        assert "blocked" in deployment.show(CONVERSATION, "StatusText")


def test_scripted_reply_text_is_delivered_verbatim(deployment: Deployment, api: StandinAPI) -> None:
    api.script(Reply("line one\nline two — ünïcödé"))
    deployment.submit("session-2", "go")
    assert deployment.consume("session-2") == "line one\nline two — ünïcödé"


def test_sigkill_during_an_api_call_dispatches_exactly_once(
    deployment: Deployment, api: StandinAPI
) -> None:
    systemd = deployment if isinstance(deployment, Packaged) else None
    restarts = int(systemd.show(CONVERSATION, "NRestarts")) if systemd else 0
    api.script(Delay(3))  # the first call only
    deployment.submit("session-1", "slow question")
    deployment.wait_for(lambda: calls_with(api, "slow question"), "the call")
    assert calls_with(api, "slow question")[0].status is None, "the call is still in flight"
    deployment.kill()
    deployment.recover()
    assert deployment.consume("session-1") == "ack: [from session-1] slow question"
    deployment.wait_status(lambda s: s["inbox"] == 0 and s["state"] == "running")
    settle(deployment, 1.0)
    assert not deployment.exists(input_txt("session-1"))
    assert deployment.listing("dispatch/session-1/.pending") == []
    (turn,) = [r for r in deployment.history() if r.get("kind") == "turn"]
    dispatched = deployment.events("RELAY_EVENT=dispatched")
    assert [e["RELAY_ENVELOPE"] for e in dispatched] == [turn["key"]]
    # The first call died with the process; the restarted relay asked again, once.
    assert len(calls_with(api, "slow question")) == 2
    if systemd:
        assert "code=killed, status=9/KILL" in systemd.journal_text("-u", CONVERSATION)
        assert int(systemd.show(CONVERSATION, "NRestarts")) == restarts + 1


def exchange(
    deployment: Deployment, api: StandinAPI, writers: int, per: int, *schedule: str
) -> None:
    """`writers` clients write `per` envelopes each (tests/programs/queue_writer.py, on that
    `schedule`) while a consumer takes every reply as it comes: each envelope is answered
    exactly once, to its session, and each writer's replies per session come in order."""
    total = writers * per
    log = deployment.scratch("consumed.jsonl")

    def consumed() -> list[dict[str, Any]]:
        return deployment.lines(log)

    with deployment.background("reply_consumer.py", deployment.path(), log, *SESSIONS) as errors:
        deployment.run_program(
            "queue_writer.py", deployment.path("queue"), str(writers), str(per), *schedule
        )
        deployment.wait_for(lambda: len(consumed()) >= total, f"{total} replies", timeout=180)
        settle(deployment, 1.0)  # anything answered twice would show up now
        records = consumed()
    assert errors() == ""
    assert len(records) == total, f"{len(records)} replies for {total} envelopes"
    answered = [(r["session"], r["text"]) for r in records]
    assert len(set(answered)) == total, "an envelope was answered twice"
    expected = [
        (session_for(w, n), f"ack: [from {session_for(w, n)}] {content(w, n)}")
        for w in range(writers)
        for n in range(per)
    ]
    assert set(answered) == set(expected)
    for session in SESSIONS:
        for w in range(writers):
            mine = [text for s, text in answered if s == session and f" burst w{w} " in text]
            assert mine == [t for s, t in expected if s == session and f" burst w{w} " in t]
    assert len(api.message_calls()) == total
    status = deployment.wait_status(lambda s: s["inbox"] == 0)
    assert status["pending"] == dict.fromkeys(SESSIONS, 0)
    assert status["history_turns"] == total
    assert deployment.queue_names() == [] and deployment.listing("queue/.rejected") == []


def test_burst_from_many_writers_is_answered_exactly_once_in_order(
    deployment: Deployment, api: StandinAPI
) -> None:
    # Three waves: the second starts 3.5 s after the first, when the queue handler (which
    # ends after 2 s without new envelopes) has exited, so the path unit must start it again;
    # the third 2.05 s after that, about when the handler is exiting, when the path unit has
    # no inotify watch and only its re-check after the handler stops sees the files
    # (docs/systemd.md §1.2). In the foreground a sixth of it meets relay's one inotify loop
    # (on a real disk, where every turn's fsyncs cost more than on the container's tmpfs).
    systemd = isinstance(deployment, Packaged)
    writers, per = 6, 84 if systemd else 14
    exchange(deployment, api, writers, per, "0,3.5,5.55")
    if isinstance(deployment, Packaged):
        assert deployment.show("relay-queue.path", "ActiveState") == "active"
        assert not [hit for hit in LIMIT_HITS if hit in deployment.journal_text()]
        runs = re.findall(
            r"intake queue: (\d+) accepted", deployment.journal_text("-t", "relay-queue")
        )
        assert sum(int(n) for n in runs) == writers * per
        assert len(runs) >= 2, "the waves are meant to need several path-triggered runs"


# ----- answers from the phone (two-way ntfy) -------------------------------------------------


def ask(
    deployment: Deployment, ntfy: StandinNtfy, session: str, text: str
) -> tuple[NtfyMessage, str]:
    """`session` raises a question with chat-Claude's `text`; returns its push and its id."""
    deployment.submit(session, f"[[reply: [NEEDS-JC] {text}]]")
    status = deployment.wait_status(lambda s: s["state"] == "needs_jc")
    question = status["needs_jc_question"]
    assert isinstance(question, str) and question
    push = deployment.wait_for(
        lambda: next((m for m in questions(ntfy) if question in m.message), None),
        f"the push for {question}",
    )
    return push, question


def questions(ntfy: StandinNtfy) -> list[NtfyMessage]:
    return [m for m in ntfy.messages if m.topic == TOPIC and m.priority >= 4]


def acks(ntfy: StandinNtfy) -> list[str]:
    return [m.message for m in ntfy.messages if m.topic == TOPIC and m.priority == 2]


def wait_ack(deployment: Deployment, ntfy: StandinNtfy, text: str) -> str:
    return deployment.wait_for(
        lambda: next((a for a in acks(ntfy) if text in a), None), f"an ack saying {text!r}"
    )


def answer_topic(push: NtfyMessage) -> str:
    """The topic a push's click URL opens in the web app: where typed answers go."""
    assert push.click is not None
    return push.click.rsplit("/", 1)[1]


def type_answer(ntfy: StandinNtfy, push: NtfyMessage, text: str) -> str:
    """The operator taps the push, the web app opens on the answer topic, they type."""
    return publish(ntfy.url, answer_topic(push), text)


def test_a_tap_on_an_option_answers_the_raising_session(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    push, question = ask(
        deployment, ntfy, "session-2", "Ship the release today?\nOptions: ship it | wait"
    )
    assert push.title and "session-2" in push.title
    assert question in push.message
    # Two options become two buttons; with room left, a third opens the web app, as the
    # notification itself does when tapped.
    assert [a["action"] for a in push.actions] == ["http", "http", "view"]
    assert [a["label"] for a in push.actions[:2]] == ["ship it", "wait"]
    assert push.click == push.actions[2]["url"] == push.actions[0]["url"]
    assert answer_topic(push) != TOPIC
    events = deployment.events("RELAY_EVENT=needs_jc")
    assert [e.get("RELAY_QUESTION") for e in events] == [question]
    calls = len(api.message_calls())

    assert tap(push.actions[0]) == 200
    assert deployment.consume("session-2") == "ack: [from operator] ship it"
    assert len(api.message_calls()) == calls + 1
    ack = wait_ack(deployment, ntfy, "received")
    assert question in ack and "session-2" in ack
    status = deployment.wait_status(lambda s: s["state"] == "running")
    assert status["needs_jc_question"] is None
    operator_turns = [r for r in deployment.history() if r.get("session") == "operator"]
    assert [t["user"] for t in operator_turns] == ["[from operator]\nship it"]
    # A second tap on the other button: the first answer won.
    assert tap(push.actions[1]) == 200
    assert "already answered" in wait_ack(deployment, ntfy, "already answered")
    settle(deployment, 0.5)
    assert len(api.message_calls()) == calls + 1
    assert not deployment.exists(input_txt("session-2"))
    assert deployment.events("RELAY_EVENT=answer_stale")


def test_a_typed_answer_goes_to_the_pending_question(
    deployment: Deployment, ntfy: StandinNtfy
) -> None:
    push, _ = ask(deployment, ntfy, "session-1", "Which database?")
    assert [a["action"] for a in push.actions] == ["view"]  # no options: no answer buttons
    type_answer(ntfy, push, "Postgres, version 15")
    assert deployment.consume("session-1") == "ack: [from operator] Postgres, version 15"
    assert "session-1" in wait_ack(deployment, ntfy, "received")
    # With nothing pending, a typed answer is an operator turn like `relay reply`.
    deployment.wait_status(lambda s: s["state"] == "running")
    type_answer(ntfy, push, "Also: write the migration")
    assert deployment.consume("session-1") == "ack: [from operator] Also: write the migration"


def test_a_stale_tap_after_an_answer_at_the_shell_changes_nothing(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    push, question = ask(deployment, ntfy, "session-1", "Delete the branch?\nOptions: yes | no")
    reply(deployment, "no, keep it")
    assert deployment.consume("session-1") == "ack: [from operator] no, keep it"
    # The question's notification is taken off the phones.
    deployment.wait_for(lambda: (TOPIC, push.id) in ntfy.deleted, "the push to be deleted")
    deployment.wait_status(lambda s: s["needs_jc_question"] is None)
    calls = len(api.message_calls())
    assert tap(push.actions[0]) == 200  # "yes", tapped later on the phone
    assert "already answered" in wait_ack(deployment, ntfy, "already answered")
    (stale,) = deployment.wait_for(
        lambda: deployment.events("RELAY_EVENT=answer_stale"), "answer_stale"
    )
    assert stale.get("RELAY_QUESTION") == question
    settle(deployment, 0.5)
    assert len(api.message_calls()) == calls
    assert not deployment.exists(input_txt("session-1"))
    assert [r["user"] for r in deployment.history() if r.get("session") == "operator"] == [
        "[from operator]\nno, keep it"
    ]


def test_a_direct_message_from_the_phone_goes_straight_to_its_session(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    push, _ = ask(deployment, ntfy, "session-1", "Stop the deploy?")
    calls = len(api.message_calls())
    type_answer(ntfy, push, "@session-2: pause your work for a minute")
    assert deployment.consume("session-2") == "pause your work for a minute"
    assert "session-2" in wait_ack(deployment, ntfy, "sent to session-2")
    assert len(api.message_calls()) == calls
    # The question is still waiting for its answer.
    status = deployment.wait_status(lambda s: s["state"] == "needs_jc")
    assert status["needs_jc_session"] == "session-1"
    type_answer(ntfy, push, "@session-9: nobody")
    assert "unknown session" in wait_ack(deployment, ntfy, "refused")


def test_bad_answers_are_refused_with_an_ack_and_the_question_stays(
    deployment: Deployment, ntfy: StandinNtfy
) -> None:
    push, question = ask(deployment, ntfy, "session-1", "Which port?")
    type_answer(ntfy, push, "8" * 5000)  # ntfy makes it an attachment
    assert "refused" in wait_ack(deployment, ntfy, "refused")
    assert deployment.events("RELAY_EVENT=answer_refused")
    status = deployment.wait_status(lambda s: s["state"] == "needs_jc")
    assert status["needs_jc_question"] == question
    type_answer(ntfy, push, "8080")
    assert deployment.consume("session-1") == "ack: [from operator] 8080"


def test_the_pending_question_survives_a_restart(deployment: Deployment, ntfy: StandinNtfy) -> None:
    push, question = ask(deployment, ntfy, "session-1", "Merge now?\nOptions: merge | hold")
    deployment.stop()
    deployment.start()
    status = deployment.wait_status(lambda s: s["state"] == "needs_jc")
    assert status["needs_jc_question"] == question
    assert tap(push.actions[1]) == 200
    assert deployment.consume("session-1") == "ack: [from operator] hold"


def test_answers_survive_a_killed_subscriber_and_an_expired_cursor(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    push, _ = ask(deployment, ntfy, "session-1", "Anything for session-2?")
    topic = answer_topic(push)
    sent: list[str] = []

    def say(text: str) -> None:
        publish(ntfy.url, topic, f"@session-2: {text}")
        sent.append(text)

    say("one")
    assert deployment.consume("session-2") == "one"
    deployment.kill_subscriber()
    # While it is down the cursor ("one") leaves the server's cache: on its return the
    # server replays the whole cache instead.
    real = ntfy.clock
    ntfy.clock = lambda: real() + 7200
    ntfy.cache_s = 3600
    say("two")
    say("three")
    deployment.recover_subscriber()
    for text in ("two", "three"):
        assert deployment.consume("session-2") == text
    # Killed again in the middle of a burst: each answer still arrives exactly once.
    say("four")
    deployment.kill_subscriber()
    for text in ("five", "six"):
        say(text)
    deployment.recover_subscriber()
    got = [deployment.consume("session-2") for _ in ("four", "five", "six")]
    assert got == ["four", "five", "six"]
    settle(deployment, 1.0)
    assert not deployment.exists(input_txt("session-2"))
    directs = deployment.events("RELAY_EVENT=direct")
    assert len(directs) == len(sent)
    assert deployment.wait_status(lambda s: s["state"] == "needs_jc")["pending"]["session-2"] == 0


def test_answers_published_while_the_server_was_away_are_applied_on_its_return(
    deployment: Deployment, ntfy: StandinNtfy
) -> None:
    push, _ = ask(deployment, ntfy, "session-1", "Ready?")
    topic = answer_topic(push)
    publish(ntfy.url, topic, "@session-2: before")
    assert deployment.consume("session-2") == "before"
    ntfy.stop()
    settle(deployment, 4.0)  # relay retries meanwhile
    ntfy.start()
    publish(ntfy.url, topic, "@session-2: published the moment it came back")
    began = time.monotonic()
    text = deployment.consume("session-2", timeout=40)
    assert text == "published the moment it came back"
    assert time.monotonic() - began < 30
    assert deployment.events("RELAY_EVENT=ntfy_subscribe_error")


def test_the_ntfy_token_is_used_and_never_shown(deployment: Deployment, ntfy: StandinNtfy) -> None:
    token = "tk_" + secrets.token_hex(14)
    answers = "relay-answers-e2e"
    ntfy.token = token
    ntfy.open_topics = {answers}  # the phone may publish answers there without a token
    settings = {"server": ntfy.url, "topic": TOPIC, "reply_topic": answers}
    deployment.reset(ntfy_token=token, ntfy=settings)
    push, _ = ask(deployment, ntfy, "session-1", "Go?\nOptions: go | stop")
    assert tap(push.actions[0]) == 200
    assert deployment.consume("session-1") == "ack: [from operator] go"
    wait_ack(deployment, ntfy, "received")
    relays = [m for m in ntfy.messages if m.topic == TOPIC]
    assert relays and all(m.headers.get("authorization") == f"Bearer {token}" for m in relays)
    for message in relays:  # what anyone reading the topic sees
        shown = json.dumps([message.message, message.title, message.click, message.actions])
        assert token not in shown
    assert token not in deployment.log_text()
    assert token not in (deployment.read("state/status.json") or "")
    environments = deployment.environments()
    assert environments and all(token not in env for env in environments)
    assert token not in deployment.cli("status", "--json").stdout
    assert token not in deployment.cli("topic").stdout


def test_the_conversation_checks_each_handed_over_answer_again(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    """What the subscriber hands over may be late (a tap racing an answer at the shell) or
    a copy (the subscriber killed between handing an answer over and recording it): the
    conversation, which alone knows the pending question, applies each answer once."""
    _, question = ask(deployment, ntfy, "session-1", "Which way?\nOptions: left | right")
    calls = len(api.message_calls())
    reply(deployment, f"[relay-answer ntfy=Nt1 question={question}]\nleft")
    reply(deployment, f"[relay-answer ntfy=Nt1 question={question}]\nleft")  # a copy
    reply(deployment, f"[relay-answer ntfy=Nt2 question={question}]\nright")  # too late
    assert deployment.consume("session-1") == "ack: [from operator] left"
    deployment.wait_for(
        lambda: deployment.events("RELAY_EVENT=answer_stale"), "the late answer refused"
    )
    deployment.wait_status(lambda s: s["inbox"] == 0 and s["state"] == "running")
    settle(deployment, 0.5)
    assert len(api.message_calls()) == calls + 1
    assert not deployment.exists(input_txt("session-1"))
    # A typed answer's copy, with nothing pending, is not a second operator turn either.
    reply(deployment, "[relay-answer ntfy=Nt3]\ncarry on")
    assert deployment.consume("session-1") == "ack: [from operator] carry on"
    reply(deployment, "[relay-answer ntfy=Nt3]\ncarry on")
    deployment.wait_status(lambda s: s["inbox"] == 0)
    settle(deployment, 0.5)
    assert len(api.message_calls()) == calls + 2
    assert not deployment.exists(input_txt("session-1"))


def test_relay_topic_prints_both_topics_and_where_to_answer(
    deployment: Deployment, ntfy: StandinNtfy
) -> None:
    push, _ = ask(deployment, ntfy, "session-1", "?")
    out = deployment.cli("topic").stdout
    assert TOPIC in out and answer_topic(push) in out
    assert f"{ntfy.url}/{TOPIC}" in out and f"{ntfy.url}/{answer_topic(push)}" in out


# ----- 2. only under systemd ----------------------------------------------------------------


@system
def test_trickle_never_hits_the_start_limit(packaged: Packaged, api: StandinAPI) -> None:
    """70 envelopes 0.12 s apart: one handler run per file would be > 60 starts in 30 s,
    which failed relay-queue.path in an early draft; the lingering handler takes them all."""
    exchange(packaged, api, 1, 70, "0", "0.12")
    assert packaged.show("relay-queue.path", "ActiveState") == "active"
    assert not [hit for hit in LIMIT_HITS if hit in packaged.journal_text()]


@system
def test_the_target_is_the_one_switch(packaged: Packaged) -> None:
    members = (CONVERSATION, "relay-answers.service", "relay-queue.path", "relay-jc.path")
    packaged.c.systemctl("stop", "relay.target")
    packaged.wait_for(
        lambda: all(packaged.show(u, "ActiveState") == "inactive" for u in members),
        "the members to stop",
    )
    # What a boot does: multi-user.target wants relay.target (enabled), which wants them.
    assert packaged.c.systemctl("is-enabled", "relay.target").stdout.strip() == "enabled"
    packaged.c.systemctl("start", "multi-user.target")
    packaged.wait_for(
        lambda: all(packaged.show(u, "ActiveState") == "active" for u in members), "members up"
    )
    for unit in members:
        assert packaged.c.systemctl("is-enabled", unit, check=False).stdout.strip() == "static"
    assert packaged.show("relay.target", "ActiveState") == "active"
    assert packaged.show(CONVERSATION, "SubState") == "running"
    assert packaged.show("relay-queue.path", "SubState") == "waiting"
    # tmpfiles.d's modes survive the units starting (no StateDirectory= chown to relay:relay).
    stat = ["stat", "-c", "%A %U %G", DATA, f"{DATA}/queue"]
    assert packaged.c.run(stat).stdout == (
        "drwxr-x--- relay relay-clients\ndrwxrws--T relay relay-clients\n"
    )


@system
def test_watchdog_kills_a_hung_service_and_systemd_restarts_it(packaged: Packaged) -> None:
    with packaged.dropin(CONVERSATION, "[Service]\nWatchdogSec=3s\n"):
        packaged.c.systemctl("restart", CONVERSATION)
        assert packaged.show(CONVERSATION, "WatchdogUSec") == "3s"
        restarts = int(packaged.show(CONVERSATION, "NRestarts"))
        hung = packaged.main_pid()
        packaged.c.run(["kill", "-STOP", str(hung)])
        try:
            packaged.submit("session-1", "sent while hung")
            packaged.submit("session-2", "also sent while hung")
            packaged.wait_for(lambda: packaged.queue_names() == [], "intake meanwhile")
            packaged.wait_restarted(hung)
        finally:
            packaged.c.run(["kill", "-CONT", str(hung)], check=False)  # gone by now, normally
        assert packaged.consume("session-1") == "ack: [from session-1] sent while hung"
        assert packaged.consume("session-2") == "ack: [from session-2] also sent while hung"
        log = packaged.journal_text("-u", CONVERSATION)
        assert "Watchdog timeout (limit 3s)!" in log, log
        assert "Killing process" in log and "with signal SIGABRT" in log, log
        assert "Failed with result 'watchdog'" in log, log
        # faulthandler (PYTHONFAULTHANDLER=1; systemd also sends SIGCONT): the hung stack.
        assert "Fatal Python error: Aborted" in log, log
        assert re.search(r'File "/usr/lib/relay/lib/python3[^"]*/relay/\w+\.py", line \d+', log)
        assert "Scheduled restart job" in log, log
        # Restart= keeps the unit out of "failed", so no alert for a restart that worked.
        assert "Triggering OnFailure=" not in log, log
        assert int(packaged.show(CONVERSATION, "NRestarts")) == restarts + 1


@system
def test_hung_handler_times_out_with_a_traceback_and_the_queue_goes_on(
    packaged: Packaged,
) -> None:
    with packaged.dropin("relay-queue.service", "[Service]\nTimeoutStartSec=6s\n"):
        packaged.submit("session-1", "taken by a handler that hangs")
        # Once it has drained the queue it lingers for 2 s, in relay's code: stop it there.
        hung = packaged.wait_for(
            lambda: packaged.queue_names() == [] and packaged.main_pid(HANDLERS[0]),
            "a handler lingering",
        )
        packaged.c.run(["kill", "-STOP", str(hung)])
        packaged.wait_for(
            lambda: "Failed with result 'timeout'" in packaged.journal_text("-u", HANDLERS[0]),
            "the handler's start timeout",
        )
        log = packaged.journal_text("-u", HANDLERS[0])
        # TimeoutStartFailureMode=abort: SIGABRT, so faulthandler shows where it hung.
        assert "Fatal Python error: Aborted" in log, log
        assert re.search(r'File "/usr/lib/relay/lib/python3[^"]*/relay/\w+\.py", line \d+', log)
        packaged.wait_for(
            lambda: packaged.show("relay-queue.path", "ActiveState") == "active", "re-armed"
        )
        packaged.submit("session-2", "after the hang")
        assert packaged.consume("session-2") == "ack: [from session-2] after the hang"
        expected = "ack: [from session-1] taken by a handler that hangs"
        assert packaged.consume("session-1") == expected


@system
def test_failing_handler_fails_its_path_unit_which_alerts(
    packaged: Packaged, ntfy: StandinNtfy
) -> None:
    """A handler that keeps failing (here: its config is gone) burns its start limit within
    seconds; the path unit fails, and its OnFailure= pushes an urgent alert through ntfy."""
    missing = "[Service]\nEnvironment=RELAY_CONFIG=/etc/relay/missing.yaml\n"
    with packaged.dropin("relay-queue.service", missing):
        packaged.submit("session-1", "stuck until the operator acts")
        packaged.wait_for(
            lambda: packaged.show("relay-queue.path", "Result") == "unit-start-limit-hit",
            "relay-queue.path to fail",
            timeout=60,
        )
        (push,) = ntfy.wait_for(1, timeout=20)
    assert push.title == "relay: relay-queue.path failed"
    assert push.priority == 5
    recovery = push.message.split("Recover with: ", 1)[1]
    packaged.c.run(["sh", "-c", recovery])  # what the push tells the operator to run
    expected = "ack: [from session-1] stuck until the operator acts"
    assert packaged.consume("session-1") == expected


@system
def test_journal_tells_one_sessions_story(packaged: Packaged) -> None:
    packaged.submit("session-1", "my story")
    other = packaged.submit("session-2", "someone else's story")
    packaged.consume("session-1")
    packaged.consume("session-2")
    reply(packaged, "@session-1: straight from the operator")
    assert packaged.consume("session-1") == "straight from the operator"
    # The handlers' entries are final once they have exited (the queue handler lingers 2 s).
    packaged.wait_for(
        lambda: all(packaged.show(u, "ActiveState") == "inactive" for u in HANDLERS),
        "the handlers to finish",
    )
    entries = packaged.journal("-u", "relay-*", "RELAY_SESSION=session-1")
    events = [(e.get("RELAY_EVENT"), e.get("SYSLOG_IDENTIFIER")) for e in entries]
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"].startswith("relay-"), entry
        assert entry["RELAY_SESSION"] == "session-1", entry
        assert entry["RELAY_EVENT"] and entry["RELAY_ENVELOPE"], entry
        assert other not in entry["RELAY_ENVELOPE"], entry
    accepted = [e for e in entries if e["RELAY_EVENT"] == "accepted"]
    if not accepted:
        lost = packaged.journal("-t", "relay-queue", "RELAY_SESSION=session-1")
        units = [(e.get("RELAY_EVENT"), e.get("_SYSTEMD_UNIT")) for e in lost]
        pytest.fail(f"no `accepted` via -u 'relay-*': {events}; by identifier: {units}")
    (first,) = accepted
    assert first["SYSLOG_IDENTIFIER"] == "relay-queue"
    assert first["_SYSTEMD_UNIT"] == "relay-queue.service"
    envelope = first["RELAY_ENVELOPE"]
    story = [e["RELAY_EVENT"] for e in entries if e["RELAY_ENVELOPE"] == envelope]
    assert story == ["accepted", "api_call", "dispatched"], events
    (call,) = [e for e in entries if e["RELAY_EVENT"] == "api_call"]
    assert call["SYSLOG_IDENTIFIER"] == "relay-conversation"
    assert float(call["RELAY_COST_USD"]) > 0
    direct = [e for e in entries if e["RELAY_ENVELOPE"] != envelope]
    assert [e["RELAY_EVENT"] for e in direct] == ["direct", "dispatched"], events
    assert all(e["_SYSTEMD_UNIT"] == CONVERSATION for e in direct)


SECRET_KEY = f"sk-ant-api03-relaysystemtest-{secrets.token_hex(16)}"


@system
@installed_with(key=SECRET_KEY)
def test_api_key_never_leaks(packaged: Packaged, api: StandinAPI) -> None:
    key = SECRET_KEY
    seen: list[dict[str, Any]] = json.loads(
        packaged.run_program("key_scanner.py", stdin=key + "\n")
    )
    assert packaged.consume("session-1") == "ack: [from session-1] is it safe?"
    assert packaged.consume("session-2") == "and this?"
    # The key was really in use (so its absence below means something) ...
    assert sent_key(api.message_calls()[-1]) == key
    # ... and no relay process had it in its environment or command line.
    cmdlines = [p["cmdline"] for p in seen]
    for needle in ("relay serve", "relay intake queue", "relay intake jc"):
        assert any(needle in cmd for cmd in cmdlines), f"never caught {needle!r}: {cmdlines}"
    for proc in seen:
        assert not proc["key_in_environ"], f"key in a relay process's environment: {proc}"
        assert not proc["key_in_cmdline"], f"key on a relay process's command line: {proc}"
        assert "ANTHROPIC_API_KEY" not in proc["environ_names"], proc
    (serve,) = [p for p in seen if p["cmdline"].endswith("relay serve")]
    assert serve["unit"] == CONVERSATION
    assert "CREDENTIALS_DIRECTORY" in serve["environ_names"]
    environ = packaged.c.run(["cat", f"/proc/{packaged.main_pid()}/environ"]).stdout
    assert "CREDENTIALS_DIRECTORY=" in environ and key not in environ
    # The credential: readable by relay alone.
    credential = f"/run/credentials/{CONVERSATION}/anthropic-api-key"
    assert packaged.c.run(["stat", "-c", "%a %U", credential]).stdout.split() == ["400", "relay"]
    # Not in the journal (every field, however long), not in status, nowhere in relay's data.
    assert key not in packaged.c.run(["journalctl", "--no-pager", "-o", "json", "--all"]).stdout
    assert key not in (packaged.read("state/status.json") or "")
    assert key not in packaged.cli("status", "--json").stdout
    assert key not in packaged.cli("status").stdout
    found = packaged.c.run(["grep", "-rlF", key, DATA, "/etc/relay"], check=False)
    assert found.returncode == 1, f"key found in {found.stdout}"


@system
def test_installed_units_verify_and_stay_within_exposure_limits(
    packaged_container: Container,
) -> None:
    c = packaged_container
    installed = sorted(n for n in c.run(["ls", UNIT_DIR]).stdout.split() if n.startswith("relay"))
    assert installed == [p.name for p in unit_files(UNITS_DIR)]
    verify = c.run(["systemd-analyze", "verify", *(f"{UNIT_DIR}/{n}" for n in installed)])
    assert (verify.stdout + verify.stderr) == ""

    def security(name: str, threshold: float) -> tuple[int, str]:
        args = ["--offline=yes", "--no-pager", f"--threshold={round(threshold * 10)}", f"./{name}"]
        script = f'cd {UNIT_DIR} && exec systemd-analyze security "$@"'
        done = c.run(["sh", "-c", script, "sh", *args], check=False)
        return done.returncode, done.stdout

    for name in installed:
        if name.endswith(".service"):
            code, out = security(name, EXPOSURE_LIMITS[name])
            score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
            assert score, out
            assert code == 0 and float(score[1]) <= EXPOSURE_LIMITS[name], (name, score[1])
    # The threshold really is enforced (so the loop above can fail).
    assert security(CONVERSATION, 0.1)[0] != 0
