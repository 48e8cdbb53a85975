"""The systemd deployment, scenario by scenario: relay installed from its .deb in a booted
container (a real systemd 252 as PID 1, see nspawn.py) and driven only the way a user drives
it: files under /var/lib/relay, `systemctl`, `journalctl` and the `relay` command line inside
the container. The Messages API and ntfy are the loopback stand-ins, started here (the
container shares the host's network namespace).

One container serves the whole module (boot and `apt install` cost ~10 s). Before each test
the `relay` fixture stops relay, wipes its data, rewrites config and key and starts
relay.target again (~1.5 s), so every test starts from a fresh install's state.

Journal reads are scoped with `--cursor=C` and the cursor's own entry dropped, never with
`--after-cursor=C` plus field matches: journalctl 252 then skips the first *matching* entry
after the cursor (systemd issue #30288, fixed in v255 by PR #30336).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.check_units import EXPOSURE_LIMITS, UNITS_DIR, unit_files
from tests.relayproc import MALFORMED_ENVELOPES
from tests.standin.api import (
    RecordedRequest,
    Reply,
    StandinAPI,
    credit_balance_too_low,
    overloaded,
    without_breakpoints,
)
from tests.standin.ntfy import StandinNtfy

from .nspawn import CommandError, Container
from .relaydeb import DATA, KEY_PATH, config_yaml, install, place_config, wait_ready

pytestmark = pytest.mark.system

CONVERSATION = "relay-conversation.service"
UNIT_DIR = "/lib/systemd/system"
DROPIN_DIR = f"/etc/systemd/system/{CONVERSATION}.d"
QUEUE = f"{DATA}/queue"
REJECTED = f"{QUEUE}/.rejected"
STATE = f"{DATA}/state"
STATUS = f"{STATE}/status.json"
JC_INPUT = f"{STATE}/jc_input.txt"
TOPIC = "relay-system-test"  # config_yaml's fixed ntfy topic
DEFAULT_KEY = "sk-system-test"
RELAY_UNITS = (
    "relay.target",
    CONVERSATION,
    "relay-queue.path",
    "relay-jc.path",
    "relay-queue.service",
    "relay-jc.service",
)
# Every way a path unit or its handler can be wedged by its limits (docs/systemd.md §1.3).
LIMIT_HITS = (
    "start-limit-hit",
    "unit-start-limit-hit",
    "trigger-limit-hit",
    "Start request repeated too quickly",
    "Trigger limit hit",
)


# ----- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api() -> Iterator[StandinAPI]:
    with StandinAPI() as server:
        yield server


@pytest.fixture(scope="module")
def ntfy() -> Iterator[StandinNtfy]:
    with StandinNtfy() as server:
        yield server


@pytest.fixture(scope="module")
def booted(relay_deb: Path) -> Iterator[Container]:
    """The module's container with the package installed (configured per test)."""
    with Container() as container:
        container.boot()
        install(container, relay_deb)
        yield container


@pytest.fixture
def relay(booted: Container, api: StandinAPI, ntfy: StandinNtfy) -> Container:
    """The container with relay freshly installed-and-configured, running, and the stand-ins
    emptied of earlier tests' calls and pushes."""
    reset(booted, api, ntfy, config_yaml(api.url, ntfy.url))
    return booted


def reset(
    c: Container, api: StandinAPI, ntfy: StandinNtfy, config: str, key: str | None = DEFAULT_KEY
) -> None:
    """Stop everything relay, wipe its data (tmpfiles.d recreates the directories exactly as
    the package's postinst did), write config and key, start relay.target, wait until ready."""
    # Named one by one: `systemctl stop relay.target` returns before its PartOf= members
    # have stopped (the target has no ordering against them).
    c.systemctl("stop", *RELAY_UNITS)
    # Also resets the start-limit counters: every test starts relay again, and manual starts
    # count against StartLimitBurst= like any other.
    c.systemctl("reset-failed", *RELAY_UNITS)
    api.reset()
    ntfy.reset()
    c.run(["rm", "-rf", QUEUE, f"{DATA}/dispatch", STATE])
    c.run(["systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/relay.conf"])
    place_config(c, config, key)
    c.systemctl("start", "relay.target")
    wait_ready(c)


# ----- helpers: the contract, seen from inside the container ------------------------------


def submit(c: Container, session: str, content: str, envelope_id: str | None = None) -> str:
    """`relay submit` as root; returns the queue file's name."""
    args = ["relay", "submit", "--session", session]
    if envelope_id is not None:
        args += ["--id", envelope_id]
    return Path(c.run([*args, "-"], input=content).stdout.strip()).name


def reply(c: Container, text: str) -> None:
    """`relay reply` as root (what the operator runs)."""
    c.run(["relay", "reply", "-"], input=text)


def input_path(session: str) -> str:
    return f"{DATA}/dispatch/{session}/input.txt"


def wait_input(c: Container, session: str, timeout: float = 30.0) -> str:
    path = input_path(session)
    c.wait_for(lambda: c.exists(path), timeout=timeout, what=path)
    return c.read_file(path)


def consume(c: Container, session: str, timeout: float = 30.0) -> str:
    """What a Claude Code session does: read input.txt, then delete it."""
    text = wait_input(c, session, timeout)
    c.run(["rm", input_path(session)])
    return text


def listing(c: Container, directory: str) -> list[str]:
    return sorted(c.run(["ls", "-A", directory]).stdout.split())


def queue_names(c: Container) -> list[str]:
    return [n for n in listing(c, QUEUE) if not n.startswith(".")]


def status(c: Container) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(c.read_file(STATUS))
    return data


def wait_status(
    c: Container, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def check() -> bool:
        try:
            current = status(c)
        except (CommandError, ValueError):  # not written yet (it is replaced atomically)
            return False
        seen[:] = [current]
        return predicate(current)

    try:
        c.wait_for(check, timeout=timeout, what="status.json to match")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\nlast status.json: {seen}") from None
    return seen[0]


def history(c: Container) -> list[dict[str, Any]]:
    text = c.read_file(f"{STATE}/history.jsonl")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main_pid(c: Container) -> int:
    return int(c.show(CONVERSATION, "MainPID"))


def journal_from(c: Container, cursor: str, *args: str) -> list[dict[str, Any]]:
    return c.journal_since(cursor, *args)


def journal_text(c: Container, cursor: str, *args: str) -> str:
    return c.journal_text_since(cursor, *args)


def sent_key(call: RecordedRequest) -> str:
    """The API key a Messages call carried (the SDK sends x-api-key or a bearer token)."""
    return call.headers.get("x-api-key") or call.headers.get("authorization", "").removeprefix(
        "Bearer "
    )


def calls_with(api: StandinAPI, text: str) -> list[RecordedRequest]:
    """Messages calls (answered or still in flight) whose newest user turn contains text."""
    found = []
    for call in api.message_calls():
        messages = call.body.get("messages") if isinstance(call.body, dict) else None
        if messages and text in json.dumps(messages[-1]):
            found.append(call)
    return found


# ----- 1. the engine's end-to-end behaviours, through the units ----------------------------


def test_queue_entry_is_sent_and_its_reply_dispatched(relay: Container, api: StandinAPI) -> None:
    submit(relay, "session-1", "What should I do next?")
    assert consume(relay, "session-1") == "ack: [from session-1] What should I do next?"
    assert queue_names(relay) == []
    (call,) = api.message_calls()
    body = call.body
    assert body["messages"][-1]["content"][-1]["text"].startswith("[from session-1]\n")
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent_key(call) == DEFAULT_KEY
    # The next reply is readable by relay-clients (what a CC session's user is in).
    submit(relay, "session-1", "again")
    wait_input(relay, "session-1")
    mode = relay.run(["stat", "-c", "%U:%G %a", input_path("session-1")]).stdout.split()
    assert mode == ["relay:relay-clients", "640"]


def test_conversation_prefix_is_byte_stable_and_read_from_cache(
    relay: Container, api: StandinAPI
) -> None:
    submit(relay, "session-1", "first")
    consume(relay, "session-1")
    submit(relay, "session-2", "second")
    consume(relay, "session-2")
    first, second = api.message_calls()[-2:]

    assert without_breakpoints(second.body["messages"][:1]) == without_breakpoints(
        first.body["messages"]
    )
    assert second.body["messages"][1]["content"][0]["text"] == "ack: [from session-1] first"
    ledger = [json.loads(line) for line in relay.read_file(f"{STATE}/ledger.jsonl").splitlines()]
    assert len(ledger) == 2
    assert ledger[0]["usage"]["cache_write_tokens"] > 0
    assert ledger[1]["usage"]["cache_read_tokens"] > 0
    assert all(entry["cost_usd"] > 0 for entry in ledger)


def test_needs_jc_pauses_without_dispatch_and_pushes(relay: Container, ntfy: StandinNtfy) -> None:
    submit(relay, "session-1", "[[reply: [NEEDS-JC] Should we delete the old branch?]]")
    current = wait_status(relay, lambda s: s["state"] == "needs_jc")
    assert current["last_needs_jc_text"].startswith("[NEEDS-JC] Should we delete")
    assert current["needs_jc_session"] == "session-1"
    (push,) = ntfy.wait_for(1, timeout=10)
    assert push.topic == TOPIC
    assert push.priority >= 4
    assert "delete the old branch" in push.message
    assert push.title and "session-1" in push.title
    time.sleep(0.5)
    assert not relay.exists(input_path("session-1"))
    assert listing(relay, f"{DATA}/dispatch/session-1/.pending") == []
    assert "needs_jc" in relay.show(CONVERSATION, "StatusText")


def test_pause_holds_later_queue_entries(relay: Container, api: StandinAPI) -> None:
    submit(relay, "session-1", "[[reply: [NEEDS-JC] approve?]]")
    wait_status(relay, lambda s: s["state"] == "needs_jc")
    calls = len(api.message_calls())
    submit(relay, "session-2", "held 1")
    submit(relay, "session-1", "held 2")
    # Accepted by the queue handler (the queue empties) but not sent while paused.
    relay.wait_for(lambda: queue_names(relay) == [], timeout=15, what="intake")
    current = wait_status(relay, lambda s: s["inbox"] == 2)
    time.sleep(0.5)
    assert len(api.message_calls()) == calls
    assert current["state"] == "needs_jc"
    assert not relay.exists(input_path("session-2"))
    assert not relay.exists(input_path("session-1"))


def test_direct_operator_message_skips_the_api(relay: Container, api: StandinAPI) -> None:
    submit(relay, "session-1", "[[reply: [NEEDS-JC] which database?]]")
    wait_status(relay, lambda s: s["state"] == "needs_jc")
    calls = len(api.message_calls())
    reply(relay, "@session-2: please run the tests\nand report back")
    assert consume(relay, "session-2") == "please run the tests\nand report back"
    assert not relay.exists(JC_INPUT)
    assert len(api.message_calls()) == calls
    # A direct message does not lift the pause.
    assert wait_status(relay, lambda s: s["state"] == "needs_jc")["inbox"] == 0


def test_direct_operator_message_is_dispatched_at_once(relay: Container) -> None:
    # Five tries, because another inotify event sometimes wakes the loop in time (about one
    # try in five here); each must be delivered as promptly as a queue entry's reply is.
    for attempt in range(5):
        sent = time.monotonic()
        reply(relay, f"@session-2: direct {attempt}")
        assert consume(relay, "session-2", timeout=2.5) == f"direct {attempt}"
        print(f"direct message {attempt} delivered in {time.monotonic() - sent:.2f}s")


def test_operator_answer_lifts_the_pause_and_goes_to_the_raising_session(
    relay: Container,
) -> None:
    submit(relay, "session-2", "[[reply: [NEEDS-JC] may I force-push?]]")
    wait_status(relay, lambda s: s["state"] == "needs_jc")
    submit(relay, "session-1", "held while paused")
    relay.wait_for(lambda: queue_names(relay) == [], timeout=15, what="intake")
    reply(relay, "No force-push. Rebase instead.")
    assert consume(relay, "session-2") == "ack: [from operator] No force-push. Rebase instead."
    assert not relay.exists(JC_INPUT)
    # The held entry now goes through.
    assert consume(relay, "session-1") == "ack: [from session-1] held while paused"
    current = wait_status(relay, lambda s: s["state"] == "running" and s["inbox"] == 0)
    assert current["last_dispatch_session"] == "session-1"
    operator_turn = next(r for r in history(relay) if r.get("session") == "operator")
    assert operator_turn["target"] == "session-2"


def test_operator_turn_without_a_pause_goes_to_the_last_active_session(relay: Container) -> None:
    submit(relay, "session-2", "status report")
    consume(relay, "session-2")
    reply(relay, "Good work; continue.")
    assert consume(relay, "session-2") == "ack: [from operator] Good work; continue."


def test_malformed_files_are_rejected_and_the_loop_goes_on(relay: Container) -> None:
    bad = MALFORMED_ENVELOPES
    for name, data in bad.items():
        relay.write_file(f"{QUEUE}/{name}", data, mode=0o640)
    # A symlink is refused, never followed (here it would point at a root-only file).
    relay.run(["ln", "-s", "/etc/shadow", f"{QUEUE}/link.json"])
    submit(relay, "session-1", "still alive?")
    assert consume(relay, "session-1") == "ack: [from session-1] still alive?"
    relay.wait_for(
        lambda: len(listing(relay, REJECTED)) == 2 * (len(bad) + 1), timeout=15, what="rejects"
    )
    for name, data in bad.items():
        same = relay.run(["cmp", "-", f"{REJECTED}/{name}"], input=data, check=False)
        assert same.returncode == 0, f"{name} not kept byte for byte: {same.stdout}"
        reason = relay.read_file(f"{REJECTED}/{name}.reason")
        assert reason.endswith("\n") and reason.count("\n") == 1, reason
    assert "unknown session_id 'session-9'" in relay.read_file(f"{REJECTED}/unknown.json.reason")
    assert "symlink" in relay.read_file(f"{REJECTED}/link.json.reason")
    assert not relay.exists(f"{DATA}/dispatch/session-9")
    assert queue_names(relay) == []
    assert relay.show("relay-queue.path", "ActiveState") == "active"


def test_second_reply_waits_until_the_first_is_consumed(relay: Container) -> None:
    submit(relay, "session-1", "one")
    assert wait_input(relay, "session-1") == "ack: [from session-1] one"
    submit(relay, "session-1", "two")
    submit(relay, "session-1", "three")
    wait_status(relay, lambda s: s["pending"]["session-1"] == 2)
    assert relay.read_file(input_path("session-1")) == "ack: [from session-1] one"
    relay.run(["rm", input_path("session-1")])
    assert consume(relay, "session-1") == "ack: [from session-1] two"
    assert consume(relay, "session-1") == "ack: [from session-1] three"


def test_status_persists_across_a_restart(relay: Container) -> None:
    submit(relay, "session-2", "hello")
    consume(relay, "session-2")
    before = wait_status(relay, lambda s: s["history_turns"] == 1)
    assert before["state"] == "running"
    assert before["last_dispatch_session"] == "session-2"
    relay.systemctl("stop", CONVERSATION)
    assert status(relay)["state"] == "stopped"
    shown = relay.run(["relay", "status"]).stdout
    assert "stopped" in shown and f"{CONVERSATION} inactive" in shown
    old_pid = before["pid"]
    relay.systemctl("start", CONVERSATION)
    relay.systemctl("restart", CONVERSATION)
    after = wait_status(relay, lambda s: s["state"] == "running" and s["pid"] != old_pid)
    assert after["pid"] == main_pid(relay)
    assert after["history_turns"] == 1
    assert after["last_dispatch_session"] == "session-2"
    shown = relay.run(["relay", "status"]).stdout
    assert "running" in shown and "session-2" in shown
    as_json = json.loads(relay.run(["relay", "status", "--json"]).stdout)
    assert as_json["history_turns"] == 1
    assert as_json["units"] == {
        "relay.target": "active",
        CONVERSATION: "active",
        "relay-queue.path": "active",
        "relay-jc.path": "active",
    }


def test_summarization_at_the_cap(relay: Container, api: StandinAPI, ntfy: StandinNtfy) -> None:
    config = config_yaml(
        api.url,
        ntfy.url,
        history_char_cap="2000",
        keep_recent_turns="2",
        summarization_prompt="SUMMARIZE-NOW",
    )
    reset(relay, api, ntfy, config)
    cursor = relay.cursor()
    for i in range(6):
        submit(relay, "session-1", f"turn {i} " + "x" * 400)
        assert consume(relay, "session-1").startswith(f"ack: [from session-1] turn {i}")
    relay.wait_for(lambda: history(relay)[0]["kind"] == "summary", timeout=15, what="a summary")
    records = history(relay)
    assert records[0]["text"].startswith("ack: [from relay] SUMMARIZE-NOW")
    assert [r["kind"] for r in records[1:]] == ["turn"] * (len(records) - 1)
    assert listing(relay, f"{STATE}/archive"), "the old history is archived"
    summary_calls = calls_with(api, "SUMMARIZE-NOW")
    assert len(summary_calls) >= 1
    assert all("turn 0" not in r.get("user", "") for r in records)
    submit(relay, "session-2", "after the summary")
    consume(relay, "session-2")
    head = api.message_calls()[-1].body["messages"][0]["content"][0]["text"]
    assert head.startswith("Summary of the conversation so far")
    summarized = journal_from(relay, cursor, "-u", CONVERSATION, "RELAY_EVENT=summarized")
    assert summarized and all(float(e["RELAY_COST_USD"]) > 0 for e in summarized)


def test_transient_api_error_backs_off_and_retries(relay: Container, api: StandinAPI) -> None:
    api.script(overloaded(retry_after=0.5))
    cursor = relay.cursor()
    submit(relay, "session-1", "patience")
    assert consume(relay, "session-1") == "ack: [from session-1] patience"
    assert [c.status for c in api.message_calls()] == [529, 200]
    errors = journal_from(relay, cursor, "-u", CONVERSATION, "RELAY_EVENT=api_error")
    assert len(errors) == 1 and errors[0]["RELAY_SESSION"] == "session-1"


def test_idempotent_submission_by_id(relay: Container, api: StandinAPI) -> None:
    submit(relay, "session-1", "once", envelope_id="abc-1")
    consume(relay, "session-1")
    submit(relay, "session-1", "once", envelope_id="abc-1")
    relay.wait_for(
        lambda: any(n.endswith(".reason") for n in listing(relay, REJECTED)),
        timeout=15,
        what="the duplicate rejected",
    )
    (reason,) = [n for n in listing(relay, REJECTED) if n.endswith(".reason")]
    assert "duplicate id" in relay.read_file(f"{REJECTED}/{reason}")
    assert len(api.message_calls()) == 1


def test_credit_exhaustion_blocks_and_keeps_the_envelope(
    relay: Container, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    api.script(credit_balance_too_low())
    submit(relay, "session-1", "costly")
    current = wait_status(relay, lambda s: s["state"] == "blocked")
    assert "credit balance" in current["last_error"]
    assert current["inbox"] == 1
    (push,) = ntfy.wait_for(1, timeout=10)
    assert "credit" in push.message
    # Blocked is not failed: the service runs on and says why.
    assert relay.show(CONVERSATION, "ActiveState") == "active"
    assert "blocked" in relay.show(CONVERSATION, "StatusText")


def test_scripted_reply_text_is_delivered_verbatim(relay: Container, api: StandinAPI) -> None:
    api.script(Reply("line one\nline two — ünïcödé"))
    submit(relay, "session-2", "go")
    assert consume(relay, "session-2") == "line one\nline two — ünïcödé"


# ----- 2. a burst from many writers -------------------------------------------------------

# Writers: forked together and released at once, each staging `.NAME.tmp` in queue/ and
# renaming it in (what `relay submit` does and the contract asks of clients). Each writes in
# three waves: the second starts 3.5 s after the first, when the queue handler (which ends
# after 2 s without new envelopes) has exited, so the path unit must start it again; the
# third 2.05 s after the second, about when the handler is exiting, when the path unit has no
# inotify watch and only its re-check after the handler stops sees the files (docs/systemd.md
# §1.2). A writer's file names sort in its own order, so even where mtimes are coarse
# (jiffies) two of its files with the same mtime keep their order; across writers the order
# is whatever the clock says.
BURST_WRITER = r"""
import json, os, sys, time
queue, writers, per, waves = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 3
go_r, go_w = os.pipe()
children = []
for w in range(writers):
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.read(go_r, 1)
        start = time.monotonic()
        for seq in range(per):
            wave = (0.0, 3.5, 5.55)[seq * waves // per]
            time.sleep(max(0.0, start + wave + 0.02 * w - time.monotonic()))
            session = ("session-1", "session-2")[(seq // (w + 1)) % 2]
            name = f"w{w}-{seq:04d}.json"
            body = {"session_id": session, "timestamp": "2026-11-25T00:00:00Z",
                    "content": f"burst w{w} n{seq:04d}"}
            tmp = os.path.join(queue, f".{name}.tmp")
            with open(tmp, "w") as f:
                json.dump(body, f)
            os.rename(tmp, os.path.join(queue, name))
        os._exit(0)
    children.append(pid)
os.close(go_r)
os.close(go_w)
sys.exit(1 if any(os.waitpid(pid, 0)[1] for pid in children) else 0)
"""

# The Claude Code side: read each input.txt as it appears, log it, delete it.
BURST_CONSUMER = r"""
import json, os, sys, time
data, log_path, sessions = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(log_path, "a", buffering=1, encoding="utf-8") as log:
    while True:
        idle = True
        for s in sessions:
            path = f"{data}/dispatch/{s}/input.txt"
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            os.unlink(path)
            log.write(json.dumps({"session": s, "text": text}) + "\n")
            idle = False
        if idle:
            time.sleep(0.002)
"""

BURST_REPLY = re.compile(r"ack: \[from (session-[12])\] burst w(\d+) n(\d+)")


def start_background(c: Container, argv: list[str], stderr: str) -> int:
    """Start argv inside the container, detached from our nsenter; return its PID there."""
    script = '"$@" </dev/null >/dev/null 2>"$ERR" & echo $!'
    done = c.run(["sh", "-c", script, "sh", *argv], env={"ERR": stderr})
    return int(done.stdout.strip())


def stop_background(c: Container, pid: int) -> None:
    c.run(["kill", str(pid)], check=False)
    c.wait_for(
        lambda: c.run(["kill", "-0", str(pid)], check=False).returncode != 0,
        timeout=10,
        what=f"pid {pid} to exit",
    )


def test_burst_from_many_writers_is_answered_exactly_once_in_order(
    relay: Container, api: StandinAPI
) -> None:
    writers, per = 6, 84
    total = writers * per
    work = "/root/relay-burst"
    log = f"{work}/consumed.jsonl"
    relay.write_file(f"{work}/writer.py", BURST_WRITER)
    relay.write_file(f"{work}/consumer.py", BURST_CONSUMER)
    relay.write_file(log, "")
    consumer = start_background(
        relay,
        ["python3", f"{work}/consumer.py", DATA, log, "session-1", "session-2"],
        f"{work}/consumer.err",
    )
    try:
        cursor = relay.cursor()
        started = time.monotonic()
        relay.run(["python3", f"{work}/writer.py", QUEUE, str(writers), str(per)])
        written = time.monotonic() - started

        def consumed() -> int:
            return int(relay.run(["wc", "-l", log]).stdout.split()[0])

        relay.wait_for(lambda: consumed() >= total, timeout=180, what=f"{total} replies")
        elapsed = time.monotonic() - started
        after_last = elapsed - written
        time.sleep(1.0)  # anything answered twice would show up now
        lines = relay.read_file(log).splitlines()
    finally:
        stop_background(relay, consumer)
    print(
        f"\nburst: {total} envelopes from {writers} writers (3 waves) written in {written:.2f}s, "
        f"the last reply consumed {elapsed:.1f}s after the first write, {after_last:.1f}s "
        "after the last"
    )
    assert relay.read_file(f"{work}/consumer.err") == ""
    records = [json.loads(line) for line in lines]
    assert len(records) == total, f"{len(records)} replies for {total} envelopes"
    order: dict[tuple[str, int], list[int]] = {}
    for record in records:
        match = BURST_REPLY.fullmatch(record["text"])
        assert match, record
        assert match[1] == record["session"], f"reply for {match[1]} went to {record}"
        order.setdefault((match[1], int(match[2])), []).append(int(match[3]))
    expected = {
        (("session-1", "session-2")[(seq // (w + 1)) % 2], w, seq)
        for w in range(writers)
        for seq in range(per)
    }
    answered = [(s, w, seq) for (s, w), seqs in order.items() for seq in seqs]
    assert len(set(answered)) == len(answered), "an envelope was answered twice"
    assert set(answered) == expected
    for (session, writer), seqs in order.items():
        assert seqs == sorted(seqs), f"writer {writer}'s {session} replies out of order: {seqs}"
    assert len(api.message_calls()) == total
    current = wait_status(relay, lambda s: s["inbox"] == 0)
    assert current["pending"] == {"session-1": 0, "session-2": 0}
    assert current["history_turns"] == total
    assert queue_names(relay) == [] and listing(relay, REJECTED) == []
    assert relay.show("relay-queue.path", "ActiveState") == "active"
    log_text = journal_text(relay, cursor)
    assert not [hit for hit in LIMIT_HITS if hit in log_text]
    runs = re.findall(
        r"intake queue: (\d+) accepted", journal_text(relay, cursor, "-t", "relay-queue")
    )
    print(f"burst: {len(runs)} relay-queue.service runs took them in")
    assert sum(int(n) for n in runs) == total
    assert len(runs) >= 2, "the waves are meant to need several path-triggered runs"


# ----- 3. the watchdog ----------------------------------------------------------------------


def test_watchdog_kills_a_hung_service_and_systemd_restarts_it(relay: Container) -> None:
    dropin = f"{DROPIN_DIR}/watchdog.conf"
    hung: int | None = None
    try:
        relay.write_file(dropin, "[Service]\nWatchdogSec=3s\n")
        relay.systemctl("daemon-reload")
        relay.systemctl("restart", CONVERSATION)
        wait_ready(relay)
        assert relay.show(CONVERSATION, "WatchdogUSec") == "3s"
        restarts = int(relay.show(CONVERSATION, "NRestarts"))
        hung = main_pid(relay)
        cursor = relay.cursor()
        relay.run(["kill", "-STOP", str(hung)])
        started = time.monotonic()
        submit(relay, "session-1", "sent while hung")
        submit(relay, "session-2", "also sent while hung")
        relay.wait_for(lambda: queue_names(relay) == [], timeout=15, what="intake meanwhile")
        relay.wait_for(
            lambda: "Watchdog timeout" in journal_text(relay, cursor, "-u", CONVERSATION),
            timeout=15,
            what="the watchdog to fire",
        )
        fired = time.monotonic() - started
        relay.wait_for(
            lambda: (
                main_pid(relay) not in (0, hung)
                and relay.show(CONVERSATION, "ActiveState") == "active"
            ),
            timeout=40,
            what="the restart",
        )
        hung = None  # gone: systemd killed it
        assert consume(relay, "session-1") == "ack: [from session-1] sent while hung"
        assert consume(relay, "session-2") == "ack: [from session-2] also sent while hung"
        answered = time.monotonic() - started
        print(f"\nwatchdog: fired {fired:.1f}s after SIGSTOP, replies out {answered:.1f}s after")
        log = journal_text(relay, cursor, "-u", CONVERSATION)
        assert "Killing process" in log and "with signal SIGABRT" in log, log
        assert "Failed with result 'watchdog'" in log, log
        # faulthandler (PYTHONFAULTHANDLER=1): the stack of the hung process, in the journal.
        assert "Fatal Python error: Aborted" in log, log
        assert re.search(r'File "/usr/lib/relay/lib/python3[^"]*/relay/\w+\.py", line \d+', log)
        assert int(relay.show(CONVERSATION, "NRestarts")) == restarts + 1
    finally:
        if hung is not None:
            relay.run(["kill", "-CONT", str(hung)], check=False)
        relay.run(["rm", "-rf", DROPIN_DIR])
        relay.systemctl("daemon-reload")
        relay.systemctl("reset-failed", CONVERSATION)
        relay.systemctl("restart", CONVERSATION)
    assert relay.show(CONVERSATION, "WatchdogUSec") == "30s"


# ----- 4. SIGKILL in the middle of an API call -------------------------------------------


def test_sigkill_during_an_api_call_restarts_and_dispatches_exactly_once(
    relay: Container, api: StandinAPI
) -> None:
    restarts = int(relay.show(CONVERSATION, "NRestarts"))
    victim = main_pid(relay)
    cursor = relay.cursor()
    submit(relay, "session-1", "[[delay: 3]] slow question")
    relay.wait_for(lambda: bool(calls_with(api, "slow question")), timeout=15, what="the call")
    assert calls_with(api, "slow question")[0].status is None, "the call is still in flight"
    relay.run(["kill", "-KILL", str(victim)])
    relay.wait_for(
        lambda: (
            main_pid(relay) not in (0, victim)
            and relay.show(CONVERSATION, "ActiveState") == "active"
        ),
        timeout=30,
        what="the restart",
    )
    assert consume(relay, "session-1") == "ack: [from session-1] [[delay: 3]] slow question"
    wait_status(relay, lambda s: s["inbox"] == 0 and s["state"] == "running")
    time.sleep(1.0)  # a second reply would be delivered at once
    assert not relay.exists(input_path("session-1"))
    assert listing(relay, f"{DATA}/dispatch/session-1/.pending") == []
    (turn,) = [r for r in history(relay) if r.get("kind") == "turn"]
    dispatched = journal_from(relay, cursor, "RELAY_EVENT=dispatched")
    assert [e["RELAY_ENVELOPE"] for e in dispatched] == [turn["key"]]
    # The first call died with the process; the restarted service asked again, once.
    assert len(calls_with(api, "slow question")) == 2
    log = journal_text(relay, cursor, "-u", CONVERSATION)
    assert "code=killed, status=9/KILL" in log, log
    assert int(relay.show(CONVERSATION, "NRestarts")) == restarts + 1


# ----- 5. the journal tells one session's story --------------------------------------------


def test_journal_tells_one_sessions_story(relay: Container) -> None:
    cursor = relay.cursor()
    submit(relay, "session-1", "my story")
    other = submit(relay, "session-2", "someone else's story")
    consume(relay, "session-1")
    consume(relay, "session-2")
    reply(relay, "@session-1: straight from the operator")
    assert consume(relay, "session-1") == "straight from the operator"
    # The handlers' entries are final once they have exited (the queue handler lingers 2 s).
    relay.wait_for(
        lambda: (
            relay.show("relay-queue.service", "ActiveState") == "inactive"
            and relay.show("relay-jc.service", "ActiveState") == "inactive"
        ),
        timeout=15,
        what="the handlers to finish",
    )
    entries = journal_from(relay, cursor, "-u", "relay-*", "RELAY_SESSION=session-1")
    events = [(e.get("RELAY_EVENT"), e.get("SYSLOG_IDENTIFIER")) for e in entries]
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"].startswith("relay-"), entry
        assert entry["RELAY_SESSION"] == "session-1", entry
        assert entry["RELAY_EVENT"] and entry["RELAY_ENVELOPE"], entry
        assert other not in entry["RELAY_ENVELOPE"], entry
    accepted = [e for e in entries if e["RELAY_EVENT"] == "accepted"]
    if not accepted:
        lost = journal_from(relay, cursor, "-t", "relay-queue", "RELAY_SESSION=session-1")
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


# ----- 6. the API key stays secret ----------------------------------------------------------

# Run inside the container (the key comes on stdin): submit an envelope and an operator
# message, and meanwhile look at every process in a relay-*.service cgroup, the conversation
# service and both handlers included.
KEY_SCANNER = r"""
import json, os, re, subprocess, sys, time
key = sys.stdin.buffer.read().strip()
unit_re = re.compile(rb"/system\.slice/(relay-[^/\s]+\.service)")
seen = {}

def scan():
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cgroup", "rb") as f:
                unit = unit_re.search(f.read())
            if unit is None:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            if (pid, cmd) in seen:  # a PID is seen again after exec() ("(relay)" -> relay)
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        seen[(pid, cmd)] = {
            "pid": int(pid),
            "unit": unit[1].decode(),
            "cmdline": cmd.replace(b"\0", b" ").decode(errors="replace").strip(),
            "key_in_environ": key in env,
            "key_in_cmdline": key in cmd,
            "environ_names": sorted(v.split(b"=", 1)[0].decode() for v in env.split(b"\0") if v),
        }

def caught(what):
    return any(what in p["cmdline"] for p in seen.values())

scan()
subprocess.run(["relay", "submit", "--session", "session-1", "-"], input=b"is it safe?",
               check=True, stdout=subprocess.DEVNULL)
subprocess.run(["relay", "reply", "@session-2: and this?"], check=True)
deadline = time.monotonic() + 6
while time.monotonic() < deadline:
    scan()
    if all(caught(w) for w in ("relay serve", "relay intake queue", "relay intake jc")):
        break
    time.sleep(0.003)
print(json.dumps(list(seen.values())))
"""


def test_api_key_never_leaks(relay: Container, api: StandinAPI, ntfy: StandinNtfy) -> None:
    key = f"sk-ant-api03-relaysystemtest-{secrets.token_hex(16)}"
    reset(relay, api, ntfy, config_yaml(api.url, ntfy.url), key=key)
    relay.write_file("/root/key-scanner.py", KEY_SCANNER)
    seen: list[dict[str, Any]] = json.loads(
        relay.run(["python3", "/root/key-scanner.py"], input=key + "\n").stdout
    )
    assert consume(relay, "session-1") == "ack: [from session-1] is it safe?"
    assert consume(relay, "session-2") == "and this?"
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
    environ = relay.run(["cat", f"/proc/{main_pid(relay)}/environ"]).stdout
    assert "CREDENTIALS_DIRECTORY=" in environ and key not in environ
    # Not in the journal (every field, however long), not in status, nowhere in relay's data.
    assert key not in relay.run(["journalctl", "--no-pager", "-o", "json", "--all"]).stdout
    assert key not in relay.read_file(STATUS)
    assert key not in relay.run(["relay", "status", "--json"]).stdout
    assert key not in relay.run(["relay", "status"]).stdout
    found = relay.run(["grep", "-rlF", key, DATA, "/etc/relay"], check=False)
    assert found.returncode == 1, f"key found in {found.stdout}"


# ----- 7. no key: up, blocked, and saying why -------------------------------------------------


def test_missing_key_keeps_the_service_up_and_says_so(
    relay: Container, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    reset(relay, api, ntfy, config_yaml(api.url, ntfy.url), key=None)
    started = time.monotonic()
    pid = main_pid(relay)
    restarts = relay.show(CONVERSATION, "NRestarts")
    submit(relay, "session-1", "anyone?")
    current = wait_status(relay, lambda s: s["inbox"] == 1)
    assert current["state"] == "blocked"
    assert current["api_key"] is False and "credstore" in current["api_key_help"]
    shown = relay.systemctl("status", CONVERSATION).stdout
    (line,) = [x.strip() for x in shown.splitlines() if x.strip().startswith("Status:")]
    assert "no API key" in line and "/etc/credstore/relay.anthropic-api-key" in line, shown
    assert "MISSING" in relay.run(["relay", "status"]).stdout
    # Longer than RestartSec=5s: a crash and restart would show in MainPID and NRestarts.
    time.sleep(max(0.0, started + 6.0 - time.monotonic()))
    assert relay.show(CONVERSATION, "ActiveState") == "active"
    assert relay.show(CONVERSATION, "SubState") == "running"
    assert main_pid(relay) == pid
    assert relay.show(CONVERSATION, "NRestarts") == restarts
    assert api.message_calls() == []
    # The key appears; a restart loads the credential and the waiting envelope goes through.
    relay.write_file(KEY_PATH, DEFAULT_KEY + "\n", mode=0o600, owner="root:root")
    relay.systemctl("restart", CONVERSATION)
    assert consume(relay, "session-1") == "ack: [from session-1] anyone?"
    assert wait_status(relay, lambda s: s["inbox"] == 0)["api_key"] is True


# ----- the installed units, checked where they are installed ------------------------------


def test_installed_units_verify_and_stay_within_exposure_limits(booted: Container) -> None:
    installed = sorted(n for n in listing(booted, UNIT_DIR) if n.startswith("relay"))
    assert installed == [p.name for p in unit_files(UNITS_DIR)]
    paths = [f"{UNIT_DIR}/{name}" for name in installed]
    verify = booted.run(["systemd-analyze", "verify", *paths], check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    for name in installed:
        if not name.endswith(".service"):
            continue
        limit = EXPOSURE_LIMITS[name]
        args = ["--offline=yes", "--no-pager", f"--threshold={round(limit * 10)}", f"./{name}"]
        done = booted.run(
            ["sh", "-c", f'cd {UNIT_DIR} && exec systemd-analyze security "$@"', "sh", *args],
            check=False,
        )
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert score, done
        assert done.returncode == 0 and float(score[1]) <= limit, (name, score[1], limit)
    # The threshold really is enforced (so the loop above can fail).
    strict = booted.run(
        [
            "sh",
            "-c",
            f"cd {UNIT_DIR} && exec systemd-analyze security --offline=yes "
            f"--no-pager --threshold=1 ./{CONVERSATION}",
        ],
        check=False,
    )
    assert strict.returncode != 0
