"""The stand-ins answer the real `anthropic` SDK (and plain HTTP clients) like the real services."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPResponse, IncompleteRead
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.standin.api import (
    CREDIT_BALANCE_MESSAGE,
    Delay,
    Drop,
    Fail,
    Reply,
    StandinAPI,
    Trickle,
    credit_balance_too_low,
    overloaded,
)
from tests.standin.ntfy import StandinNtfy

MODEL = "claude-opus-4-7"
STANDIN_DIR = Path(__file__).parent / "standin"


@pytest.fixture
def api() -> Iterator[StandinAPI]:
    with StandinAPI() as server:
        yield server


@pytest.fixture
def client(api: StandinAPI) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="sk-test", base_url=api.url, max_retries=0) as c:
        yield c


@pytest.fixture
def ntfy() -> Iterator[StandinNtfy]:
    with StandinNtfy() as server:
        yield server


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def ask(client: anthropic.Anthropic, text: str) -> anthropic.types.Message:
    return client.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": text}]
    )


def http(
    url: str, data: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """POST `data` (JSON-encoded unless bytes) or GET; return status, parsed body, headers."""
    body = data if isinstance(data, bytes) or data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)


# --- Messages API: success and caching ---------------------------------------------------------


def test_success_like_the_real_api(api: StandinAPI, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=100,
        system="You coordinate.",
        messages=[{"role": "user", "content": "hello\n  world"}],
    )
    message = raw.parse()

    assert message.id.startswith("msg_")
    assert message._request_id is not None and message._request_id.startswith("req_")
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == "ack: hello world"
    usage = message.usage
    assert usage.input_tokens == tokens("You coordinate.") + tokens("hello\n  world")
    assert usage.output_tokens == tokens("ack: hello world")
    assert usage.cache_creation_input_tokens == 0
    assert usage.cache_read_input_tokens == 0
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert usage.service_tier == "standard"
    assert raw.headers["anthropic-ratelimit-requests-remaining"].isdigit()

    (call,) = api.message_calls()
    assert call.status == 200
    assert call.headers["authorization"] == "Bearer sk-test"
    assert call.body["system"] == "You coordinate."


def test_second_call_reads_the_first_calls_prefix_from_cache(client: anthropic.Anthropic) -> None:
    system = "S" * 4000
    cached_system: Any = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    turn1, reply1, turn2 = "first question " * 20, "first answer " * 20, "second question"

    def newest(text: str) -> Any:
        return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]

    first = client.messages.create(
        model=MODEL,
        max_tokens=100,
        system=cached_system,
        messages=[{"role": "user", "content": newest(turn1)}],
    ).usage
    assert first.cache_read_input_tokens == 0
    assert first.cache_creation_input_tokens == tokens(system) + tokens(turn1)
    assert first.input_tokens == 0

    second = client.messages.create(
        model=MODEL,
        max_tokens=100,
        system=cached_system,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": turn1}]},
            {"role": "assistant", "content": reply1},
            {"role": "user", "content": newest(turn2)},
        ],
    ).usage
    assert second.cache_read_input_tokens == tokens(system) + tokens(turn1)
    assert second.cache_creation_input_tokens == tokens(reply1) + tokens(turn2)
    assert second.cache_creation is not None
    assert second.cache_creation.ephemeral_5m_input_tokens == tokens(reply1) + tokens(turn2)
    assert second.input_tokens == 0


def test_automatic_caching_and_changed_prefix(api: StandinAPI, client: anthropic.Anthropic) -> None:
    def call(system: str, *turns: str) -> anthropic.types.Usage:
        roles = ("user", "assistant")
        messages: Any = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
        return client.messages.create(
            model=MODEL,
            max_tokens=100,
            system=system,
            cache_control={"type": "ephemeral", "ttl": "1h"},
            messages=messages,
        ).usage

    first = call("system A", "one")
    assert first.cache_creation is not None
    assert first.cache_creation.ephemeral_1h_input_tokens == tokens("system A") + tokens("one")
    second = call("system A", "one", "two", "three")
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    # A different system prompt changes the whole prefix: nothing to read.
    assert call("system B", "one", "two", "three").cache_read_input_tokens == 0


def test_cache_lookback_is_twenty_blocks(client: anthropic.Anthropic) -> None:
    def call(blocks: int) -> anthropic.types.Usage:
        content: Any = [{"type": "text", "text": f"block {i}"} for i in range(blocks)]
        content[-1]["cache_control"] = {"type": "ephemeral"}
        return client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": content}]
        ).usage

    call(1)
    assert call(21).cache_read_input_tokens == tokens("block 0")  # 20 blocks back: found
    assert call(42).cache_read_input_tokens == 0  # like the real API: misses silently


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breakpoint_call(
    client: anthropic.Anthropic, system_ttl: str | None, *turns: tuple[str, str | None]
) -> anthropic.types.Usage:
    """A call with a cached system prompt ("S" * 4000, `system_ttl`) and `turns` (text, ttl or
    None for no breakpoint), alternating user and assistant."""
    system: Any = [{"type": "text", "text": "S" * 4000}]
    if system_ttl is not None:
        system[0]["cache_control"] = {"type": "ephemeral", "ttl": system_ttl}
    messages: Any = []
    for i, (text, ttl) in enumerate(turns):
        block: dict[str, Any] = {"type": "text", "text": text}
        if ttl is not None:
            block["cache_control"] = {"type": "ephemeral", "ttl": ttl}
        messages.append({"role": ("user", "assistant")[i % 2], "content": [block]})
    return client.messages.create(
        model=MODEL, max_tokens=10, system=system, messages=messages
    ).usage


def test_cache_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    with (
        StandinAPI(clock=clock) as api,
        anthropic.Anthropic(api_key="sk-test", base_url=api.url, max_retries=0) as client,
    ):
        first = breakpoint_call(client, "1h", ("one " * 100, "5m"))
        assert first.cache_creation is not None
        assert first.cache_creation.ephemeral_1h_input_tokens == 1000
        assert first.cache_creation.ephemeral_5m_input_tokens == tokens("one " * 100)

        clock.now += 299  # both entries still live: everything is read
        again = breakpoint_call(client, "1h", ("one " * 100, "5m"))
        assert again.cache_read_input_tokens == 1000 + tokens("one " * 100)
        assert again.cache_creation_input_tokens == 0

        clock.now += 299  # 598 s after the write, 299 s after the refreshing read: still live
        assert breakpoint_call(client, "1h", ("one " * 100, "5m")).cache_read_input_tokens == (
            1000 + tokens("one " * 100)
        )

        clock.now += 301  # the 5 m entry is gone, the 1 h one was refreshed by each read
        late = breakpoint_call(client, "1h", ("one " * 100, "5m"))
        assert late.cache_read_input_tokens == 1000
        assert late.cache_creation is not None
        assert late.cache_creation.ephemeral_5m_input_tokens == tokens("one " * 100)

        clock.now += 3601  # an hour after the last call: nothing is left
        cold = breakpoint_call(client, "1h", ("one " * 100, "5m"))
        assert cold.cache_read_input_tokens == 0
        assert cold.cache_creation_input_tokens == 1000 + tokens("one " * 100)


def test_mixed_ttls_bill_1h_up_to_the_last_1h_breakpoint(client: anthropic.Anthropic) -> None:
    turn1, reply1, turn2 = "first " * 100, "answer " * 100, "second " * 100
    breakpoint_call(client, "1h", (turn1, "5m"))
    usage = breakpoint_call(client, "1h", (turn1, None), (reply1, "1h"), (turn2, "5m"))
    # Read up to the last hit (the first turn), 1 h writes up to the 1 h breakpoint on the
    # reply, 5 m writes after it; the breakdown adds up to the total.
    assert usage.cache_read_input_tokens == 1000 + tokens(turn1)
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_1h_input_tokens == tokens(reply1)
    assert usage.cache_creation.ephemeral_5m_input_tokens == tokens(turn2)
    assert usage.cache_creation_input_tokens == tokens(reply1) + tokens(turn2)
    assert usage.input_tokens == 0


def test_a_1h_breakpoint_after_a_5m_one_is_refused(
    api: StandinAPI, client: anthropic.Anthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        breakpoint_call(client, "5m", ("one", "1h"))
    assert caught.value.status_code == 400
    assert "ttl='1h' must not come after" in str(caught.value)
    # An absent ttl is 5 m; the top-level (automatic) breakpoint comes last in render order.
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            system=[{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            cache_control={"type": "ephemeral", "ttl": "1h"},
            messages=[{"role": "user", "content": "one"}],
        )
    assert [c.status for c in api.message_calls()] == [400, 400]
    # 1 h before 5 m is fine, and so is the same TTL throughout.
    breakpoint_call(client, "1h", ("one", "1h"), ("two", "5m"), ("three", "5m"))


def test_clock_control_moves_the_cache_clock(api: StandinAPI, client: anthropic.Anthropic) -> None:
    breakpoint_call(client, "5m", ("one", None))
    status, body, _ = http(api.url + "/_clock", {"advance": 301})
    assert status == 200 and body["offset"] == 301
    assert breakpoint_call(client, "5m", ("one", None)).cache_read_input_tokens == 0
    assert http(api.url + "/_clock", {"advance": "soon"})[0] == 400
    assert http(api.url + "/_clock", b'{"advance": NaN}')[0] == 400
    assert http(api.url + "/_reset", b"")[0] == 200
    assert api.cache_now() < api.clock() + 1


def test_only_what_relay_and_claude_code_use_is_served(client: anthropic.Anthropic) -> None:
    # Neither calls count_tokens nor the models API; the real API's 404 shape for anything else.
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.type == "not_found_error"


def test_max_tokens_truncates(client: anthropic.Anthropic) -> None:
    text = "[[reply: " + "x" * 40 + "]]"
    message = client.messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": text}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text" and message.content[0].text == "x" * 8


# --- Messages API: directives, script, responder -----------------------------------------------


def test_reply_directive(client: anthropic.Anthropic) -> None:
    # TEXT runs to the first "]]" and may hold newlines and single brackets.
    message = ask(client, "please [[reply: [NEEDS-JC] decide\n[a] or b]] thanks")
    assert message.content[0].type == "text"
    assert message.content[0].text == "[NEEDS-JC] decide\n[a] or b"


def test_error_directive(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError):
        ask(client, "[[error: 529 overloaded_error]]")
    with pytest.raises(anthropic.BadRequestError, match="credit balance"):
        ask(client, "[[error: credit]]")
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, "[[error: workspace]]")
    assert caught.value.api_message is not None
    assert caught.value.api_message.startswith(
        "You have reached your specified workspace API usage limits. You will regain access on "
    )
    with pytest.raises(anthropic.NotFoundError) as missing:
        ask(client, "[[error: 404]]")
    assert missing.value.type == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as too_long:
        ask(client, "[[error: 400 invalid_request_error prompt is too long: 9 tokens > 8 maximum]]")
    assert too_long.value.api_message == "prompt is too long: 9 tokens > 8 maximum"


def test_context_window_refuses_a_prompt_too_long(
    api: StandinAPI, client: anthropic.Anthropic
) -> None:
    api.context_window = 5
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, "x" * 40)
    assert caught.value.type == "invalid_request_error"
    assert caught.value.api_message == "prompt is too long: 10 tokens > 5 maximum"
    assert api.pending_script() == 0
    assert ask(client, "x" * 20).content[0].type == "text"  # 5 tokens: fits


def test_too_large_a_body_is_413(api: StandinAPI, client: anthropic.Anthropic) -> None:
    api.max_request_bytes = 100
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client, "x" * 200)
    assert caught.value.status_code == 413
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "request_too_large"
    assert caught.value.api_message == "Request exceeds the maximum allowed number of bytes."


def _post_raw(api: StandinAPI, text: str) -> tuple[HTTPConnection, HTTPResponse]:
    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    connection = HTTPConnection(api.url.removeprefix("http://"), timeout=5)
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    connection.request("POST", "/v1/messages", json.dumps(body), headers)
    return connection, connection.getresponse()


def test_trickle_sends_the_headers_then_one_byte(api: StandinAPI) -> None:
    api.script(Trickle(60, Reply("slowly")))  # the next byte would come in a minute
    connection, response = _post_raw(api, "hi")
    try:
        assert response.status == 200  # the headers came at once
        assert int(response.headers["Content-Length"]) > 1
        assert response.read1(100) == b"{"
    finally:
        connection.close()  # the fixture's stop() wakes the trickle


def test_trickle_directive_sends_all_of_it_in_the_end(api: StandinAPI) -> None:
    connection, response = _post_raw(api, "[[trickle: 0.001]] [[reply: slowly]]")
    try:
        assert json.loads(response.read())["content"][0]["text"] == "slowly"
    finally:
        connection.close()


def test_trickle_ends_when_the_server_stops() -> None:
    server = StandinAPI().start()
    server.script(Trickle(0.05))
    connection = HTTPConnection(server.url.removeprefix("http://"), timeout=5)
    try:
        body = json.dumps(
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        )
        connection.request(
            "POST", "/v1/messages", body, {"x-api-key": "k", "anthropic-version": "v"}
        )
        response = connection.getresponse()
        assert response.read(1) == b"{"
        server.stop()  # wakes the trickle and closes its connection
        with pytest.raises((IncompleteRead, OSError)):
            response.read()
    finally:
        connection.close()
        server.stop()


def test_scripted_rate_limit_carries_retry_after(
    api: StandinAPI, client: anthropic.Anthropic
) -> None:
    api.script(Fail(429, "rate_limit_error", retry_after=0.05))
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(client, "hi")
    assert caught.value.response.headers["retry-after"] == "0.05"
    assert caught.value.type == "rate_limit_error"
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")
    body = caught.value.body
    assert isinstance(body, dict) and body["request_id"] == caught.value.request_id
    assert ask(client, "hi").content[0].type == "text"  # script consumed: back to normal


def test_scripted_overloaded_and_error_code(api: StandinAPI, client: anthropic.Anthropic) -> None:
    api.script(overloaded(retry_after=1), Fail(429, error_code="enforced_spend_limit_reached"))
    with pytest.raises(anthropic.OverloadedError) as caught:
        ask(client, "hi")
    assert caught.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.RateLimitError) as limited:
        ask(client, "hi")
    assert limited.value.error_code == "enforced_spend_limit_reached"


def test_credit_balance_is_a_bad_request(api: StandinAPI, client: anthropic.Anthropic) -> None:
    api.script(credit_balance_too_low())
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, "hi")
    assert "credit balance" in caught.value.message
    assert caught.value.api_message == CREDIT_BALANCE_MESSAGE
    assert [c.status for c in api.message_calls()] == [400]


def test_wrong_key_is_rejected() -> None:
    with (
        StandinAPI(api_key="sk-right") as api,
        anthropic.Anthropic(api_key="sk-wrong", base_url=api.url, max_retries=0) as client,
    ):
        with pytest.raises(anthropic.AuthenticationError):
            ask(client, "hi")
        right = client.with_options(api_key="sk-right")
        assert ask(right, "hi").content[0].type == "text"


def test_drop_is_a_connection_error(api: StandinAPI, client: anthropic.Anthropic) -> None:
    api.script(Drop())
    with pytest.raises(anthropic.APIConnectionError):
        ask(client, "hi")
    assert [c.status for c in api.message_calls()] == [0]


def test_sdk_retries_after_scripted_overload(api: StandinAPI, client: anthropic.Anthropic) -> None:
    api.script(Fail(529, headers={"retry-after-ms": "20"}), Reply("finally"))
    message = client.with_options(max_retries=1).messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "finally"
    calls = api.message_calls()
    assert [c.status for c in calls] == [529, 200]
    assert [c.headers["x-stainless-retry-count"] for c in calls] == ["0", "1"]


def test_delay_times_out_the_client(api: StandinAPI, client: anthropic.Anthropic) -> None:
    api.script(Delay(2.0, Reply("late")))
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.2).messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )


def test_responder_and_invalid_requests(api: StandinAPI, client: anthropic.Anthropic) -> None:
    api.responder = lambda body: Reply(f"{len(body['messages'])} messages")
    message = ask(client, "hi")
    assert message.content[0].type == "text" and message.content[0].text == "1 messages"

    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"temperature": 0.5},
        )
    with pytest.raises(anthropic.BadRequestError, match="alternate"):
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        )
    with pytest.raises(anthropic.BadRequestError, match="first message"):
        client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "assistant", "content": "a"}]
        )


def test_concurrent_calls_on_pooled_connections(
    api: StandinAPI, client: anthropic.Anthropic
) -> None:
    api.delay = 0.05  # keep them in flight together
    results: list[str] = []

    def one(i: int) -> None:
        block = ask(client, f"n{i}").content[0]
        results.append(block.text if block.type == "text" else "")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert sorted(results) == sorted(f"ack: n{i}" for i in range(20))
    assert [c.status for c in api.message_calls()] == [200] * 20


def test_stop_closes_kept_alive_connections(client: anthropic.Anthropic) -> None:
    server = StandinAPI().start()
    pooled = client.with_options(base_url=server.url)
    ask(pooled, "warm the pool")
    server.stop()
    with pytest.raises(anthropic.APIConnectionError):
        ask(pooled, "server is gone")


def test_control_endpoints(api: StandinAPI, client: anthropic.Anthropic) -> None:
    status, queued, _ = http(
        api.url + "/_script",
        [{"reply": "one"}, {"fail": {"status": 529, "headers": {"retry-after": "0.1"}}}],
    )
    assert status == 200 and queued == {"queued": 2}
    assert ask(client, "x").content[0].type == "text"
    with pytest.raises(anthropic.OverloadedError):
        ask(client, "y")
    _, records, _ = http(api.url + "/_requests")
    assert [(r["path"], r["status"], r["body"]["messages"][0]["content"]) for r in records] == [
        ("/v1/messages", 200, "x"),
        ("/v1/messages", 529, "y"),
    ]
    assert http(api.url + "/_reset", b"")[0] == 200
    assert api.requests == [] and api.pending_script() == 0


# --- ntfy --------------------------------------------------------------------------------------


def test_ntfy_records_a_publish(ntfy: StandinNtfy) -> None:
    status, body, _ = http(
        ntfy.url + "/relay-abc",
        b"needs you",
        {"Title": "relay", "Priority": "high", "Tags": "warning, robot", "Authorization": "t"},
    )
    assert status == 200
    assert body["event"] == "message" and body["topic"] == "relay-abc"
    assert body["message"] == "needs you" and body["id"] and body["time"]
    (message,) = ntfy.wait_for(1)
    assert (message.topic, message.message, message.title) == ("relay-abc", "needs you", "relay")
    assert message.priority == 4 and message.tags == ["warning", "robot"]
    assert message.headers["authorization"] == "t"


def test_ntfy_fault_injection_and_refusals(ntfy: StandinNtfy) -> None:
    assert http(ntfy.url + "/t1", b"m", {"Priority": "5"})[0] == 200
    ntfy.fail_status = 503
    assert http(ntfy.url + "/t1", b"again")[0] == 503
    messages = ntfy.wait_for(2)
    assert [(m.message, m.priority, m.status) for m in messages] == [
        ("m", 5, 200),
        ("again", 3, 503),
    ]
    assert http(ntfy.url + "/bad.topic", b"x")[0] == 400
    assert http(ntfy.url + "/t1", b"x", {"Priority": "loud"})[0] == 400


def test_ntfy_delay_is_recorded_before_the_answer(ntfy: StandinNtfy) -> None:
    ntfy.delay = 5.0  # a hanging server
    outcome: list[str] = []

    def publish() -> None:
        request = urllib.request.Request(ntfy.url + "/t", data=b"x")
        try:
            urllib.request.urlopen(request, timeout=0.3).close()
            outcome.append("answered")
        except OSError:
            outcome.append("gave up")

    thread = threading.Thread(target=publish)
    thread.start()
    assert ntfy.wait_for(1, timeout=2)[0].message == "x"  # recorded on arrival
    thread.join(timeout=2)
    assert outcome == ["gave up"]
    with pytest.raises(TimeoutError):
        ntfy.wait_for(2, timeout=0.05)


# --- script forms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "args"),
    [("api.py", ["--api-key", "sk-k"]), ("ntfy.py", ["--fail-status", "502"])],
)
def test_script_form_serves_and_stops_on_sigterm(
    tmp_path: Path, script: str, args: list[str]
) -> None:
    port_file = tmp_path / "url"
    command = ["/usr/bin/python3", str(STANDIN_DIR / script), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--port-file", str(port_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # proves it needs nothing from the repo's import path
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert port_file.read_text().strip() == url
        if script == "api.py":
            status, body, headers = http(
                url + "/v1/messages",
                {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                {"x-api-key": "sk-k", "anthropic-version": "2023-06-01"},
            )
            assert (status, body["content"][0]["text"]) == (200, "ack: hi")
            assert headers["request-id"].startswith("req_")
            assert http(url + "/_requests")[1][0]["status"] == 200
        else:
            assert http(url + "/topic", b"hello")[0] == 502
            assert http(url + "/_messages")[1][0]["message"] == "hello"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stderr is not None and process.stderr.read() == ""  # no request logs
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_importable_without_the_sdk() -> None:
    # The stand-ins are stdlib only: importing them must not pull in anything else.
    code = "import tests.standin.api, tests.standin.ntfy, sys; print('anthropic' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
