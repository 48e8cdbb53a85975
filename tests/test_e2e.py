"""The original design's end-to-end behaviours, through a real `relay run` process, the
real SDK and a stand-in Messages API on loopback. Driven only through the ⚑ contract."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.relayproc import MALFORMED_ENVELOPES, RelayProcess, wait_for, write_config
from tests.standin.api import Reply, StandinAPI, overloaded, without_breakpoints
from tests.standin.ntfy import StandinNtfy


def test_queue_entry_is_sent_and_its_reply_dispatched(relay: RelayProcess, api: StandinAPI) -> None:
    relay.submit("session-1", "What should I do next?")
    reply = relay.wait_input("session-1")
    assert reply == "ack: [from session-1] What should I do next?"
    assert relay.queue_names() == []
    call = api.message_calls()[-1]
    body = call.body
    # The user turn names its session; the system prompt and the new turn are cacheable.
    assert body["messages"][-1]["content"][-1]["text"].startswith("[from session-1]\n")
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "authorization" in call.headers or "x-api-key" in call.headers


def test_conversation_prefix_is_byte_stable_and_read_from_cache(
    relay: RelayProcess, api: StandinAPI
) -> None:
    relay.submit("session-1", "first")
    relay.consume("session-1")
    relay.submit("session-2", "second")
    relay.consume("session-2")
    first, second = api.message_calls()[-2:]

    assert without_breakpoints(second.body["messages"][:1]) == without_breakpoints(
        first.body["messages"]
    )
    assert second.body["messages"][1]["content"][0]["text"] == "ack: [from session-1] first"
    ledger = [
        json.loads(line)
        for line in (relay.data / "state" / "ledger.jsonl").read_text().splitlines()
    ]
    assert ledger[1]["usage"]["cache_read_tokens"] > 0
    assert ledger[0]["usage"]["cache_write_tokens"] > 0
    assert all(entry["cost_usd"] > 0 for entry in ledger)


def test_needs_jc_pauses_without_dispatch_and_pushes(
    relay: RelayProcess, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    relay.submit("session-1", "[[reply: [NEEDS-JC] Should we delete the old branch?]]")
    status = relay.wait_status(lambda s: s["state"] == "needs_jc")
    assert status["last_needs_jc_text"].startswith("[NEEDS-JC] Should we delete")
    (push,) = ntfy.wait_for(1)
    assert push.topic == "relay-test"
    assert push.priority >= 4
    assert "delete the old branch" in push.message
    assert push.title and "session-1" in push.title
    time.sleep(0.3)
    assert not relay.input_file("session-1").exists()
    assert list((relay.data / "dispatch" / "session-1" / ".pending").iterdir()) == []


def test_pause_holds_later_queue_entries(relay: RelayProcess, api: StandinAPI) -> None:
    relay.submit("session-1", "[[reply: [NEEDS-JC] approve?]]")
    relay.wait_status(lambda s: s["state"] == "needs_jc")
    calls = len(api.message_calls())
    relay.submit("session-2", "held 1")
    relay.submit("session-1", "held 2")
    # Accepted (the queue empties) but not sent to the API while paused.
    wait_for(lambda: relay.queue_names() == [], what="intake")
    status = relay.wait_status(lambda s: s["inbox"] == 2)
    time.sleep(0.3)
    assert len(api.message_calls()) == calls
    assert status["state"] == "needs_jc"
    assert not relay.input_file("session-2").exists()


def test_direct_operator_message_skips_the_api(relay: RelayProcess, api: StandinAPI) -> None:
    relay.submit("session-1", "[[reply: [NEEDS-JC] which database?]]")
    relay.wait_status(lambda s: s["state"] == "needs_jc")
    calls = len(api.message_calls())
    done = relay.cli("reply", "-", stdin="@session-2: please run the tests\nand report back")
    assert done.returncode == 0, done.stderr
    assert relay.wait_input("session-2") == "please run the tests\nand report back"
    assert not (relay.data / "state" / "jc_input.txt").exists()
    assert len(api.message_calls()) == calls
    # A direct message does not lift the pause.
    assert relay.wait_status(lambda s: s["state"] == "needs_jc")


def test_operator_answer_lifts_the_pause_and_goes_to_the_raising_session(
    relay: RelayProcess, api: StandinAPI
) -> None:
    relay.submit("session-2", "[[reply: [NEEDS-JC] may I force-push?]]")
    relay.wait_status(lambda s: s["state"] == "needs_jc")
    relay.submit("session-1", "held while paused")
    wait_for(lambda: relay.queue_names() == [], what="intake")
    relay.reply("No force-push. Rebase instead.")
    answer = relay.consume("session-2")
    assert answer == "ack: [from operator] No force-push. Rebase instead."
    assert not (relay.data / "state" / "jc_input.txt").exists()
    # The held entry now goes through.
    assert relay.consume("session-1") == "ack: [from session-1] held while paused"
    status = relay.wait_status(lambda s: s["state"] == "running" and s["inbox"] == 0)
    assert status["last_dispatch_session"] == "session-1"
    operator_turn = next(r for r in relay.history() if r.get("session") == "operator")
    assert operator_turn["target"] == "session-2"


def test_operator_turn_without_a_pause_goes_to_the_last_active_session(
    relay: RelayProcess,
) -> None:
    relay.submit("session-2", "status report")
    relay.consume("session-2")
    relay.reply("Good work; continue.")
    assert relay.consume("session-2") == "ack: [from operator] Good work; continue."


def test_malformed_files_are_rejected_and_the_loop_goes_on(relay: RelayProcess) -> None:
    bad = MALFORMED_ENVELOPES
    for name, data in bad.items():
        relay.drop(name, data)
    relay.submit("session-1", "still alive?")
    assert relay.consume("session-1") == "ack: [from session-1] still alive?"
    rejected = relay.data / "queue" / ".rejected"
    for name, data in bad.items():
        assert (rejected / name).read_bytes() == data
        reason = (rejected / f"{name}.reason").read_text()
        assert reason.endswith("\n") and reason.count("\n") == 1
    assert "unknown session_id 'session-9'" in (rejected / "unknown.json.reason").read_text()
    assert not (relay.data / "dispatch" / "session-9").exists()
    assert relay.queue_names() == []


def test_second_reply_waits_until_the_first_is_consumed(relay: RelayProcess) -> None:
    relay.submit("session-1", "one")
    assert relay.wait_input("session-1") == "ack: [from session-1] one"
    relay.submit("session-1", "two")
    relay.submit("session-1", "three")
    relay.wait_status(lambda s: s["pending"]["session-1"] == 2)
    assert relay.input_file("session-1").read_text() == "ack: [from session-1] one"
    relay.input_file("session-1").unlink()
    assert relay.consume("session-1") == "ack: [from session-1] two"
    assert relay.consume("session-1") == "ack: [from session-1] three"


def test_status_persists_across_a_restart(relay: RelayProcess) -> None:
    relay.submit("session-2", "hello")
    relay.consume("session-2")
    status = relay.wait_status(lambda s: s["history_turns"] == 1)
    assert status["state"] == "running"
    assert status["last_dispatch_session"] == "session-2"
    assert relay.stop() == 0
    stopped = relay.status()
    assert stopped is not None and stopped["state"] == "stopped"
    relay.start()
    status = relay.wait_status(lambda s: s["state"] == "running")
    assert status["history_turns"] == 1
    assert status["last_dispatch_session"] == "session-2"
    shown = relay.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "running" in shown.stdout and "session-2" in shown.stdout
    as_json = json.loads(relay.cli("status", "--json").stdout)
    assert as_json["history_turns"] == 1
    relay.kill()  # a SIGKILL leaves "running" in status.json; `relay status` knows better
    killed = json.loads(relay.cli("status", "--json").stdout)
    assert killed["state"] == "stopped" and killed["stale"] is True


def test_summarization_at_the_cap(
    tmp_path: Path, api: StandinAPI, relay_factory: list[RelayProcess]
) -> None:
    config = write_config(
        tmp_path,
        api.url,
        history_char_cap=2000,
        keep_recent_turns=2,
        summarization_prompt="SUMMARIZE-NOW",
    )
    relay = RelayProcess(config)
    relay_factory.append(relay)
    relay.start()
    for i in range(6):
        relay.submit("session-1", f"turn {i} " + "x" * 400)
        assert relay.consume("session-1").startswith(f"ack: [from session-1] turn {i}")
    wait_for(lambda: relay.history()[0]["kind"] == "summary", what="a summary")
    records = relay.history()
    assert records[0]["kind"] == "summary"
    assert records[0]["text"].startswith("ack: [from relay] SUMMARIZE-NOW")
    assert [r["kind"] for r in records[1:]] == ["turn"] * (len(records) - 1)
    archives = list((relay.data / "state" / "archive").iterdir())
    assert archives, "the old history is archived"
    summary_calls = [
        c for c in api.message_calls() if "SUMMARIZE-NOW" in json.dumps(c.body["messages"][-1])
    ]
    assert len(summary_calls) >= 1
    # Each summarization replaced the history once: summarized turns are gone from it.
    assert all("turn 0" not in r.get("user", "") for r in records)
    # The next turn carries the summary at the head of the conversation.
    relay.submit("session-2", "after the summary")
    relay.consume("session-2")
    head = api.message_calls()[-1].body["messages"][0]["content"][0]["text"]
    assert head.startswith("Summary of the conversation so far")


def test_transient_api_error_backs_off_and_retries(relay: RelayProcess, api: StandinAPI) -> None:
    api.script(overloaded(retry_after=0.2))
    relay.submit("session-1", "patience")
    assert relay.consume("session-1") == "ack: [from session-1] patience"
    assert [c.status for c in api.message_calls()][-2:] == [529, 200]


def test_no_key_runs_processes_nothing_and_says_so(
    tmp_path: Path, api: StandinAPI, relay_factory: list[RelayProcess]
) -> None:
    config = write_config(tmp_path, api.url)
    relay = RelayProcess(config, env={"ANTHROPIC_API_KEY": ""})
    relay_factory.append(relay)
    relay.start()
    relay.submit("session-1", "anyone?")
    status = relay.wait_status(lambda s: s["inbox"] == 1)
    assert status["state"] == "blocked"
    assert status["api_key"] is False and "credstore" in status["api_key_help"]
    shown = relay.cli("status")
    assert "MISSING" in shown.stdout
    assert api.message_calls() == []
    # The key appears (a .env beside the config): processing starts without a restart.
    (tmp_path / ".env").write_text("ANTHROPIC_API_KEY=sk-late\n")
    assert relay.consume("session-1") == "ack: [from session-1] anyone?"
    assert "sk-late" not in relay.log() and "sk-late" not in json.dumps(relay.status())


def test_idempotent_submission_by_id(relay: RelayProcess, api: StandinAPI) -> None:
    relay.submit("session-1", "once", envelope_id="abc-1")
    relay.consume("session-1")
    relay.submit("session-1", "once", envelope_id="abc-1")
    wait_for(lambda: list((relay.data / "queue" / ".rejected").glob("*.reason")), what="reject")
    reason = next((relay.data / "queue" / ".rejected").glob("*.reason")).read_text()
    assert "duplicate id" in reason
    assert len(api.message_calls()) == 1


def test_credit_exhaustion_blocks_and_keeps_the_envelope(
    relay: RelayProcess, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    from tests.standin.api import credit_balance_too_low

    api.script(credit_balance_too_low())
    relay.submit("session-1", "costly")
    status = relay.wait_status(lambda s: s["state"] == "blocked")
    assert "credit balance" in status["last_error"]
    assert status["inbox"] == 1
    (push,) = ntfy.wait_for(1)
    assert "credit" in push.message


def test_scripted_reply_text_is_delivered_verbatim(relay: RelayProcess, api: StandinAPI) -> None:
    api.script(Reply("line one\nline two — ünïcödé"))
    relay.submit("session-2", "go")
    assert relay.consume("session-2") == "line one\nline two — ünïcödé"
