"""relay.api: HTTP errors translated into ApiError, and the real SDK against the stand-in."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from relay.api import MAX_RETRY_AFTER_S, AnthropicApi, ApiReply, retry_after, translate_status
from relay.errors import ApiError
from relay.prices import Usage
from tests.standin.api import (
    Delay,
    Drop,
    Fail,
    Reply,
    StandinAPI,
    Trickle,
    credit_balance_too_low,
    overloaded,
    prompt_too_long,
    rate_limited,
    workspace_limit_reached,
)

MODEL = "claude-opus-4-7"
SYSTEM = [{"type": "text", "text": "You coordinate.", "cache_control": {"type": "ephemeral"}}]


def ask(api: AnthropicApi, text: str = "hello") -> ApiReply:
    return api.create(
        model=MODEL,
        max_tokens=256,
        system=SYSTEM,
        messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
    )


# ---- translate_status ---------------------------------------------------------------------


def test_credit_balance_400_is_not_transient() -> None:
    error = translate_status(
        400,
        "invalid_request_error: Your credit balance is too low to access the Anthropic API.",
        {},
        "req_1",
    )
    assert error.transient is False
    assert error.retry_after is None
    assert "credit balance" in error.message
    assert "(request req_1)" in error.message
    # No credit concerns every request, not this one: block, don't set the item aside.
    assert error.blocked is True
    assert error.per_item is False
    assert error.status == 400


def test_other_400_is_a_refusal_of_this_request_only() -> None:
    error = translate_status(400, "invalid_request_error: messages: bad", {"retry-after": "5"})
    assert error.transient is False
    assert error.retry_after is None
    assert error.message == "HTTP 400: invalid_request_error: messages: bad"
    assert error.per_item is True
    assert error.blocked is False
    assert error.context_overflow is False
    assert error.status == 400


def test_workspace_usage_limit_blocks_and_names_the_date() -> None:
    text = (
        "invalid_request_error: You have reached your specified workspace API usage limits. "
        "You will regain access on 2025-06-01 at 00:00 UTC."
    )
    error = translate_status(400, text, {}, "req_2")
    assert error.blocked is True
    assert error.per_item is False
    assert error.status == 400
    assert "until 2025-06-01 at 00:00 UTC" in error.message
    assert "Console" in error.message
    assert "(request req_2)" in error.message


@pytest.mark.parametrize(
    "text",
    [
        "invalid_request_error: prompt is too long: 210883 tokens > 200000 maximum",
        "invalid_request_error: input length and `max_tokens` exceed context limit: "
        "197202 + 21333 > 200000, decrease input length or `max_tokens` and try again",
    ],
)
def test_context_overflow_is_a_per_item_refusal_of_its_own(text: str) -> None:
    error = translate_status(400, text, {})
    assert error.context_overflow is True
    assert error.per_item is True
    assert error.blocked is False
    assert error.transient is False
    assert error.message == f"HTTP 400: {text}"


@pytest.mark.parametrize(("status", "word"), [(401, "key"), (402, "billing"), (403, "permission")])
def test_auth_and_billing_errors_are_not_transient(status: int, word: str) -> None:
    error = translate_status(status, "some text", {"x-should-retry": "true"})
    # x-should-retry does not make a rejected key worth hammering.
    assert error.transient is False
    assert error.blocked is True
    assert error.status == status
    assert word in error.message
    assert str(status) in error.message


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retryable_statuses_are_transient(status: int) -> None:
    error = translate_status(status, "text", {})
    assert error.transient is True
    assert error.per_item is False
    assert error.status == status
    assert error.message.startswith(f"HTTP {status}: text")


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (404, "not_found_error: Not found"),
        (413, "request_too_large: Request exceeds the maximum allowed number of bytes."),
    ],
)
def test_not_found_and_too_large_refuse_this_request_only(status: int, text: str) -> None:
    error = translate_status(status, text, {})
    assert (error.transient, error.per_item, error.context_overflow) == (False, True, False)
    assert error.status == status


@pytest.mark.parametrize(
    ("status", "text", "setting"),
    [
        (404, "not_found_error: model: claude-opus-9", "model"),
        (404, "not_found_error: Claude Fable 5 is not available. Please use Opus 4.8.", "model"),
        (
            400,
            "invalid_request_error: max_tokens: 200000 > 128000, which is the maximum "
            "allowed number of output tokens for claude-opus-4-7",
            "max_tokens",
        ),
    ],
)
def test_refusals_naming_the_config_block_instead(status: int, text: str, setting: str) -> None:
    # Every request would get these: setting items aside one by one would discard them all.
    error = translate_status(status, text, {})
    assert error.blocked is True
    assert error.per_item is False
    assert f"check {setting} in the config" in error.message


def test_unlisted_client_errors_block() -> None:
    error = translate_status(422, "text", {})
    assert (error.transient, error.per_item, error.blocked) == (False, False, True)


def test_an_error_is_not_both_transient_and_per_item() -> None:
    with pytest.raises(ValueError):
        ApiError("x", transient=True, per_item=True)
    assert ApiError("x", transient=False, context_overflow=True).per_item is True
    plain = ApiError("x", transient=True)
    assert (plain.status, plain.per_item, plain.context_overflow) == (None, False, False)


def test_x_should_retry_overrides_both_ways() -> None:
    assert translate_status(500, "t", {"x-should-retry": "false"}).transient is False
    assert translate_status(529, "t", {"x-should-retry": " FALSE "}).transient is False
    assert translate_status(400, "t", {"x-should-retry": "true"}).transient is True
    assert translate_status(404, "t", {"x-should-retry": "true"}).transient is True
    assert translate_status(400, "t", {"x-should-retry": "true"}).per_item is False
    # Anything but true/false is ignored.
    assert translate_status(500, "t", {"x-should-retry": "maybe"}).transient is True
    assert translate_status(400, "t", {"x-should-retry": "maybe"}).transient is False


def test_transient_error_carries_retry_after() -> None:
    assert translate_status(529, "t", {"retry-after": "7"}).retry_after == 7.0
    assert translate_status(529, "t", {}).retry_after is None


def test_headers_without_get_are_tolerated() -> None:
    error = translate_status(503, "t", None)
    assert error.transient is True
    assert error.retry_after is None


# ---- retry_after --------------------------------------------------------------------------


def test_retry_after_ms_wins_over_seconds() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "30"}) == 1.5


def test_retry_after_seconds() -> None:
    assert retry_after({"retry-after": "30"}) == 30.0
    assert retry_after({"retry-after": "0.25"}) == 0.25
    assert retry_after({"retry-after": "-5"}) == 0.0


def test_garbage_retry_after_ms_falls_back_to_seconds() -> None:
    assert retry_after({"retry-after-ms": "soon", "retry-after": "2"}) == 2.0


def test_retry_after_http_date_uses_the_injected_now() -> None:
    when = datetime(2026, 5, 2, 12, 0, 0, tzinfo=UTC)
    header = {"retry-after": format_datetime(when, usegmt=True)}
    assert header["retry-after"] == "Sat, 02 May 2026 12:00:00 GMT"
    assert retry_after(header, now=when.timestamp() - 90) == 90.0
    assert retry_after(header, now=when.timestamp() + 90) == 0.0  # in the past


@pytest.mark.parametrize("value", ["soon", "Someday, 99 Foo 20xx", ""])
def test_garbage_retry_after_is_none(value: str) -> None:
    assert retry_after({"retry-after": value}, now=0.0) is None


def test_missing_retry_after_is_none() -> None:
    assert retry_after({}) is None
    assert retry_after(None) is None


def test_retry_after_is_capped() -> None:
    assert retry_after({"retry-after": "86400"}) == MAX_RETRY_AFTER_S
    assert retry_after({"retry-after-ms": "99999999"}) == MAX_RETRY_AFTER_S
    assert retry_after({"retry-after": "1e400"}) is None  # overflows to inf: garbage
    far = {"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"}
    assert retry_after(far, now=0.0) == MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    "header",
    [
        {"retry-after": "nan"},
        {"retry-after-ms": "NaN"},
        {"retry-after": "inf"},
        {"retry-after-ms": "-inf"},
    ],
)
def test_non_finite_retry_after_is_treated_as_garbage(header: dict[str, str]) -> None:
    # Was a bug (fixed in 742ade1): "nan" came back as nan, so the engine's retry_at became
    # nan and `monotonic() >= retry_at` was never true again.
    assert retry_after(header) is None


def test_non_finite_retry_after_ms_falls_back_to_seconds() -> None:
    assert retry_after({"retry-after-ms": "nan", "retry-after": "3"}) == 3.0


# ---- AnthropicApi with the real SDK against the stand-in ----------------------------------


MakeApi = Callable[..., AnthropicApi]


@pytest.fixture
def make_api() -> Iterator[MakeApi]:
    """AnthropicApi instances whose SDK connection pools are closed after the test."""
    made: list[AnthropicApi] = []

    def make(base_url: str, api_key: str = "sk-test", timeout_s: float = 10) -> AnthropicApi:
        made.append(AnthropicApi(api_key=api_key, base_url=base_url, timeout_s=timeout_s))
        return made[-1]

    yield make
    for client in made:
        client._client.close()


@pytest.fixture
def client(api: StandinAPI, make_api: MakeApi) -> AnthropicApi:
    return make_api(api.url)


def test_success_gives_text_usage_request_id_and_model(
    api: StandinAPI, client: AnthropicApi
) -> None:
    api.script(Reply("All good."))

    reply = ask(client)

    assert reply.text == "All good."
    assert reply.model == MODEL
    assert reply.stop_reason == "end_turn"
    assert reply.request_id is not None
    assert reply.request_id.startswith("req_")
    assert reply.usage.output_tokens == 3  # ceil(9 / 4) in the stand-in's token model
    assert reply.usage.input_tokens >= 0
    # The system block has a breakpoint, so the first call writes it to the 5m cache...
    assert reply.usage.cache_write_tokens > 0
    assert reply.usage.cache_read_tokens == 0
    # ...and the same prefix is read back on the next call.
    again = ask(client, "hello again")
    assert again.usage.cache_read_tokens == reply.usage.cache_write_tokens

    (call, _) = api.message_calls()
    sent_key = call.headers.get("x-api-key") or call.headers.get("authorization", "")
    assert sent_key.removeprefix("Bearer ") == "sk-test"
    assert call.body["system"] == SYSTEM
    assert call.body["max_tokens"] == 256


def test_max_tokens_stop_reason_is_passed_on(api: StandinAPI, client: AnthropicApi) -> None:
    api.script(Reply("x" * 2000))
    reply = ask(client)
    assert reply.stop_reason == "max_tokens"
    assert len(reply.text) == 256 * 4


def test_529_is_transient_with_retry_after(api: StandinAPI, client: AnthropicApi) -> None:
    api.script(overloaded(retry_after=2.5))

    with pytest.raises(ApiError) as caught:
        ask(client)

    assert caught.value.transient is True
    assert caught.value.retry_after == 2.5
    assert "529" in caught.value.message
    assert "overloaded_error" in caught.value.message
    assert "(request req_" in caught.value.message


def test_429_is_transient_with_retry_after(api: StandinAPI, client: AnthropicApi) -> None:
    api.script(rate_limited(retry_after=12))
    with pytest.raises(ApiError) as caught:
        ask(client)
    assert caught.value.transient is True
    assert caught.value.retry_after == 12.0


def test_retry_after_ms_header_from_the_server(api: StandinAPI, client: AnthropicApi) -> None:
    api.script(Fail(503, headers={"retry-after-ms": "250"}))
    with pytest.raises(ApiError) as caught:
        ask(client)
    assert caught.value.transient is True
    assert caught.value.retry_after == 0.25


def test_server_says_do_not_retry(api: StandinAPI, client: AnthropicApi) -> None:
    api.script(Fail(500, headers={"x-should-retry": "false"}))
    with pytest.raises(ApiError) as caught:
        ask(client)
    assert caught.value.transient is False


def test_credit_balance_is_not_transient(api: StandinAPI, client: AnthropicApi) -> None:
    api.script(credit_balance_too_low())

    with pytest.raises(ApiError) as caught:
        ask(client)

    assert caught.value.transient is False
    assert "credit balance" in caught.value.message


def test_workspace_limit_from_the_server_blocks(api: StandinAPI, client: AnthropicApi) -> None:
    api.script(workspace_limit_reached("2026-12-01 at 00:00 UTC"))
    with pytest.raises(ApiError) as caught:
        ask(client)
    assert caught.value.blocked is True
    assert "until 2026-12-01 at 00:00 UTC" in caught.value.message


def test_prompt_too_long_from_the_server_is_a_context_overflow(
    api: StandinAPI, client: AnthropicApi
) -> None:
    api.context_window = 10
    with pytest.raises(ApiError) as caught:
        ask(client, "a long question " * 10)
    assert caught.value.context_overflow is True
    assert caught.value.per_item is True
    assert caught.value.status == 400
    assert "prompt is too long: " in caught.value.message
    api.context_window = None
    assert ask(client).text == "ack: hello"


@pytest.mark.parametrize(
    ("action", "status"),
    [
        (Fail(400, message="messages.0.content.0: unsupported"), 400),
        (Fail(404), 404),
        (prompt_too_long(300_000, 200_000), 400),
    ],
    ids=["400", "404", "too-long"],
)
def test_refusals_of_one_request_from_the_server(
    api: StandinAPI, client: AnthropicApi, action: Fail, status: int
) -> None:
    api.script(action)
    with pytest.raises(ApiError) as caught:
        ask(client)
    assert caught.value.per_item is True
    assert caught.value.status == status
    assert "(request req_" in caught.value.message


def test_too_large_a_request_is_refused_by_size(api: StandinAPI, client: AnthropicApi) -> None:
    api.max_request_bytes = 1000
    with pytest.raises(ApiError) as caught:
        ask(client, "x" * 2000)
    assert caught.value.status == 413
    assert caught.value.per_item is True
    assert "request_too_large" in caught.value.message


def test_wrong_key_is_not_transient(make_api: MakeApi) -> None:
    with StandinAPI(api_key="right") as server:
        client = make_api(server.url, api_key="wrong")
        with pytest.raises(ApiError) as caught:
            ask(client)
        assert len(server.message_calls()) == 1
    assert caught.value.transient is False
    assert "401" in caught.value.message
    assert "wrong" not in caught.value.message  # never echo the key


def test_right_key_is_accepted(make_api: MakeApi) -> None:
    with StandinAPI(api_key="right") as server:
        server.script(Reply("ok"))
        assert ask(make_api(server.url, api_key="right")).text == "ok"


def test_dropped_connection_is_transient(api: StandinAPI, client: AnthropicApi) -> None:
    api.script(Drop())

    with pytest.raises(ApiError) as caught:
        ask(client)

    assert caught.value.transient is True
    assert caught.value.retry_after is None
    assert caught.value.message.startswith("cannot reach the API")


def test_timeout_is_transient(api: StandinAPI, make_api: MakeApi) -> None:
    api.script(Delay(5.0, Reply("too late")))
    client = make_api(api.url, timeout_s=0.3)

    with pytest.raises(ApiError) as caught:
        ask(client)

    assert caught.value.transient is True
    assert caught.value.status is None
    assert caught.value.message == "the API call timed out (no whole answer within 0.3 s)"


def test_a_trickling_server_times_out_at_the_total_deadline(
    api: StandinAPI, make_api: MakeApi
) -> None:
    # Headers at once, then a byte every 0.1 s: no single read ever waits 1 s, so a per-read
    # time-out alone would wait for the whole body (~2 minutes at this pace).
    api.script(Trickle(0.1, Reply("x" * 1000)))
    client = make_api(api.url, timeout_s=1.0)
    outcome: list[BaseException | ApiReply] = []

    def call() -> None:
        try:
            outcome.append(ask(client))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=10.0)  # 10x the deadline; the fixture's stop() ends a stuck call
    assert not worker.is_alive(), "the call outlived 10x its deadline"
    (error,) = outcome
    assert isinstance(error, ApiError)
    assert error.transient is True
    assert error.message == "the API call timed out (no whole answer within 1 s)"
    # The call's deadline was its own: the next call gets the whole time again.
    assert ask(client).text == "ack: hello"


@pytest.mark.parametrize(
    "action",
    [overloaded(retry_after=0), rate_limited(retry_after=0), Fail(500), Fail(408), Drop()],
    ids=["529", "429", "500", "408", "drop"],
)
def test_no_retries_inside_the_sdk(api: StandinAPI, client: AnthropicApi, action: Any) -> None:
    # relay owns backoff: one failed call is exactly one request on the wire.
    api.script(action, Reply("a retry would have got this"))

    with pytest.raises(ApiError):
        ask(client)

    assert len(api.message_calls()) == 1
    assert api.pending_script() == 1


def test_unreachable_server_is_transient(make_api: MakeApi) -> None:
    with StandinAPI() as server:
        url = server.url
    client = make_api(url, timeout_s=2)
    with pytest.raises(ApiError) as caught:
        ask(client)
    assert caught.value.transient is True


# ---- several content blocks: a canned server, since the stand-in answers with one -------


class _CannedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body: bytes = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("request-id", "req_canned")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[str, type[_CannedHandler]]]:
    handler = type("Handler", (_CannedHandler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_text_blocks_are_concatenated_and_other_blocks_skipped(
    canned: tuple[str, type[_CannedHandler]], make_api: MakeApi
) -> None:
    url, handler = canned
    handler.body = json.dumps(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-opus-4-7-20260101",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Hello, "},
                {"type": "some_future_block", "data": 1},
                {"type": "text", "text": "world."},
            ],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 3,
                "output_tokens": 4,
                "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 20,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 4,
                    "ephemeral_1h_input_tokens": 6,
                },
            },
        }
    ).encode()

    reply = ask(make_api(url))

    assert reply.text == "Hello, world."
    assert reply.model == "claude-opus-4-7-20260101"
    assert reply.request_id == "req_canned"
    assert reply.usage == Usage(3, 4, 4, 6, 20)
