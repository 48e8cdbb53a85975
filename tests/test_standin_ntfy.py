"""The stand-in ntfy server publishes, caches, streams and polls like ntfy for a two-way client."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPResponse
from typing import Any

import pytest

from tests.standin.ntfy import StandinNtfy

TOPIC = "relay-q"
WAIT = 10.0  # generous: only bounds a hang, never asserts speed


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ntfy(clock: Clock) -> Iterator[StandinNtfy]:
    with StandinNtfy(clock=clock, keepalive_s=0.2, cache_s=3600) as server:
        yield server


def publish(
    url: str, body: bytes, headers: dict[str, str] | None = None, path: str = "/" + TOPIC
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url + path, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def poll(url: str, query: str = "", headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    sep = "&" if query else ""
    request = urllib.request.Request(
        f"{url}/{TOPIC}/json?poll=1{sep}{query}", headers=headers or {}
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return [json.loads(line) for line in response.read().splitlines()]


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["message"] for m in messages]


class Stream:
    def __init__(self, ntfy: StandinNtfy, query: str = "") -> None:
        host, port = ntfy.url.removeprefix("http://").split(":")
        self.connection = HTTPConnection(host, int(port), timeout=WAIT)
        self.connection.request("GET", f"/{TOPIC}/json{query}")
        self.response: HTTPResponse = self.connection.getresponse()

    def next(self) -> dict[str, Any]:
        line = self.response.readline()
        assert line, "stream ended"
        event: dict[str, Any] = json.loads(line)
        return event

    def next_message(self) -> dict[str, Any]:
        while (event := self.next())["event"] != "message":
            pass
        return event

    def close(self) -> None:
        self.connection.close()


def test_publish_with_actions_and_read_them_back(ntfy: StandinNtfy, clock: Clock) -> None:
    actions = (
        'http, Approve, https://ntfy.example/answers, body={"q":"q1","answer":"approve"}; '
        "http, Deny, https://ntfy.example/answers, method=PUT, headers.X-Q=q1, clear=true; "
        "view, Reply, https://ntfy.example/answers"
    )
    status, body = publish(
        ntfy.url,
        b"approve?",
        {
            "Title": "relay",
            "Priority": "urgent",
            "Tags": "question",
            "Click": "https://example.org/q1",
            "Actions": actions,
        },
    )
    assert status == 200
    assert len(body["id"]) == 12 and body["id"].isalnum() and body["time"] == int(clock.now)
    (message,) = poll(ntfy.url)
    assert message["id"] == body["id"] and message["event"] == "message"
    assert (message["title"], message["priority"], message["tags"]) == ("relay", 5, ["question"])
    assert message["click"] == "https://example.org/q1"
    got = [{k: v for k, v in a.items() if k != "id"} for a in message["actions"]]
    assert got == [
        {
            "action": "http",
            "label": "Approve",
            "url": "https://ntfy.example/answers",
            "body": '{"q":"q1","answer":"approve"}',
        },
        {
            "action": "http",
            "label": "Deny",
            "url": "https://ntfy.example/answers",
            "method": "PUT",
            "headers": {"X-Q": "q1"},
            "clear": True,
        },
        {"action": "view", "label": "Reply", "url": "https://ntfy.example/answers"},
    ]
    (record,) = ntfy.messages
    assert record.id == body["id"] and record.actions == message["actions"]


def test_json_publish(ntfy: StandinNtfy) -> None:
    action = {"action": "http", "label": "Yes", "url": "https://x.example/a", "body": "yes"}
    status, body = publish(
        ntfy.url,
        json.dumps(
            {
                "topic": TOPIC,
                "message": "m",
                "title": "t",
                "priority": 4,
                "tags": ["a"],
                "click": "https://c.example",
                "actions": [action],
            }
        ).encode(),
        path="/",
    )
    assert status == 200 and body["topic"] == TOPIC
    (message,) = poll(ntfy.url)
    assert (message["message"], message["title"], message["priority"]) == ("m", "t", 4)
    assert message["actions"][0]["body"] == "yes" and message["click"] == "https://c.example"


def test_a_fourth_action_is_refused(ntfy: StandinNtfy) -> None:
    four = "; ".join(f"view, B{i}, https://x.example/{i}" for i in range(4))
    assert publish(ntfy.url, b"m", {"Actions": four})[0] == 400
    action = {"action": "view", "label": "B", "url": "https://x.example"}
    body = json.dumps({"topic": TOPIC, "message": "m", "actions": [action] * 4}).encode()
    assert publish(ntfy.url, body, path="/")[0] == 400
    assert poll(ntfy.url) == []


def test_stream_receives_open_a_live_message_and_keepalives(ntfy: StandinNtfy) -> None:
    publish(ntfy.url, b"before")  # cached, but a stream without since= does not replay it
    stream = Stream(ntfy)
    try:
        assert stream.next()["event"] == "open"
        ntfy.wait_for_subscribers(1, timeout=WAIT)
        publish(ntfy.url, b"live")
        assert stream.next_message()["message"] == "live"
        assert stream.next()["event"] == "keepalive"
    finally:
        stream.close()


def test_since_id_time_all_latest_and_duration(ntfy: StandinNtfy, clock: Clock) -> None:
    first = publish(ntfy.url, b"one")[1]
    clock.now += 60
    second = publish(ntfy.url, b"two")[1]
    clock.now += 60
    publish(ntfy.url, b"three")
    assert ids(poll(ntfy.url)) == ["one", "two", "three"]
    assert ids(poll(ntfy.url, f"since={first['id']}")) == ["two", "three"]
    assert ids(poll(ntfy.url, "since=nosuchid0000")) == ["one", "two", "three"]
    assert ids(poll(ntfy.url, f"since={second['time']}")) == ["two", "three"]  # inclusive
    assert ids(poll(ntfy.url, "since=all")) == ["one", "two", "three"]
    assert ids(poll(ntfy.url, "since=latest")) == ["three"]
    assert ids(poll(ntfy.url, "since=90s")) == ["two", "three"]
    stream = Stream(ntfy, f"?since={first['id']}")
    try:
        assert stream.next()["event"] == "open"
        assert [stream.next_message()["message"] for _ in range(2)] == ["two", "three"]
    finally:
        stream.close()


def test_an_expired_id_replays_the_whole_cache(ntfy: StandinNtfy, clock: Clock) -> None:
    old = publish(ntfy.url, b"old")[1]
    clock.now += 3000
    publish(ntfy.url, b"a")
    publish(ntfy.url, b"b")
    clock.now += 1000  # "old" has left the one-hour cache
    assert ids(poll(ntfy.url)) == ["a", "b"]
    assert ids(poll(ntfy.url, f"since={old['id']}")) == ["a", "b"]


def test_drop_subscribers_and_restart_on_the_same_port(ntfy: StandinNtfy) -> None:
    stream = Stream(ntfy)
    try:
        assert stream.next()["event"] == "open"
        ntfy.wait_for_subscribers(1, timeout=WAIT)
        assert ntfy.drop_subscribers() == 1
        with pytest.raises(Exception):  # noqa: B017 - cut mid-stream: any read error or EOF
            while True:
                stream.next()
    finally:
        stream.close()
    kept = publish(ntfy.url, b"kept")[1]
    url = ntfy.url
    ntfy.stop()
    with pytest.raises(OSError):
        poll(url)
    ntfy.start()
    assert ntfy.url == url
    assert [m["id"] for m in poll(ntfy.url)] == [kept["id"]]


def test_token_required(clock: Clock) -> None:
    with StandinNtfy(token="tk_secret", clock=clock) as ntfy:
        assert publish(ntfy.url, b"m")[0] == 403
        assert publish(ntfy.url, b"m", {"Authorization": "Bearer tk_wrong"})[0] == 401
        good = {"Authorization": "Bearer tk_secret"}
        assert publish(ntfy.url, b"m", good)[0] == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            poll(ntfy.url)
        assert refused.value.code == 403
        refused.value.close()
        assert ids(poll(ntfy.url, headers=good)) == ["m"]
        assert [m.status for m in ntfy.messages] == [403, 401, 200]


def test_concurrent_publishers_reach_every_stream(ntfy: StandinNtfy) -> None:
    streams = [Stream(ntfy) for _ in range(2)]
    try:
        for stream in streams:
            assert stream.next()["event"] == "open"
        ntfy.wait_for_subscribers(2, timeout=WAIT)
        threads = [
            threading.Thread(target=publish, args=(ntfy.url, str(i).encode())) for i in range(5)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT)
        for stream in streams:
            assert sorted(stream.next_message()["message"] for _ in range(5)) == list("01234")
    finally:
        for stream in streams:
            stream.close()
