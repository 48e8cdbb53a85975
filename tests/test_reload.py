"""relay reload: what a new config changes, what is refused, the service's side of a reload
(in process, against a real notify socket), and the command's side (signal, wait, report)
with fake signals and clocks. End to end over both deployments: tests/test_reload_e2e.py."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay import cli, reload, systemd
from relay.api import ApiReply
from relay.config import Config, load_config, parse_config
from relay.errors import RelayError
from relay.layout import Layout
from relay.records import ReloadResult
from relay.service import Service
from tests.test_systemd import NotifySocket

BASE: dict[str, Any] = {"sessions": ["session-1"], "ntfy": {"server": None}}


def config(**overrides: Any) -> Config:
    return parse_config({**BASE, **overrides}, source=Path("/etc/relay/config.yaml"))


# ----- what changed, what is refused ------------------------------------------------------


def test_nothing_changed() -> None:
    assert reload.changes(config(), config()) == []
    assert reload.summary([]) == "nothing changed"


def test_changes_name_key_paths_and_sessions_added_and_removed() -> None:
    old = config(sessions=["session-1", "session-2"])
    new = config(
        sessions=["session-1", "session-3"],
        model="claude-sonnet-4-5",
        budget={"daily_usd": 5},
        anthropic={"timeout_s": 60},
    )
    assert reload.changes(old, new) == [
        "sessions (+session-3, -session-2)",
        "model",
        "anthropic.timeout_s",
        "budget.daily_usd",
    ]
    assert reload.refusals(old, new) == []


def test_a_changed_prompt_is_named_not_shown() -> None:
    changed = reload.changes(config(), config(system_prompt="Be brief. SECRET-PLAN"))
    assert changed == ["system_prompt"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"data_dir": "/srv/relay"}, "data_dir"),
        ({"ntfy": {"server": "https://ntfy.example"}}, "ntfy.server"),
        ({"ntfy": {"server": None, "topic": "other-topic"}}, "ntfy.topic"),
        ({"ntfy": {"server": None, "reply_topic": "answers-2"}}, "ntfy.reply_topic"),
        ({"ntfy": {"server": None, "read_timeout_s": 30}}, "ntfy.read_timeout_s"),
        ({"ntfy": {"server": None, "max_answer_bytes": 100}}, "ntfy.max_answer_bytes"),
    ],
)
def test_what_cannot_change_while_running_is_refused(overrides: dict[str, Any], key: str) -> None:
    (refusal,) = reload.refusals(config(), config(**overrides))
    assert refusal.startswith(f"{key} cannot change while relay runs")
    assert "systemctl restart relay.target" in refusal


def test_the_push_timeout_may_change() -> None:
    assert reload.refusals(config(), config(ntfy={"server": None, "timeout_s": 9})) == []


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_decide_applies_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", yaml.safe_dump({**BASE, "data_dir": "d"}))
    old = load_config(path)
    write(path, yaml.safe_dump({**BASE, "data_dir": "d", "sessions": ["session-1", "s-2"]}))
    decision = reload.decide(old, load_config)
    assert decision.config is not None and decision.config.sessions == ("session-1", "s-2")
    assert decision.changed == ("sessions (+s-2)",) and decision.errors == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sessions: [session-1\n", "not valid YAML"),
        ("sessions: [session-1]\ndata_dir: d\nmax_tokens: -1\nmodel: 7\n", "max_tokens:"),
        ("sessions: [session-1]\ndata_dir: elsewhere\n", "data_dir cannot change"),
    ],
)
def test_decide_refuses_a_bad_file_with_every_error(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "c.yaml", "sessions: [session-1]\ndata_dir: d\n")
    old = load_config(path)
    write(path, text)
    decision = reload.decide(old, load_config)
    assert decision.config is None
    assert expected in "\n".join(decision.errors)
    if "max_tokens" in expected:
        assert len(decision.errors) == 2  # max_tokens and model, each on its own


def test_decide_without_a_file_refuses() -> None:
    bare = Config(sessions=("session-1",))
    assert reload.decide(bare, load_config).errors == (
        "relay was not started from a configuration file",
    )


def test_reload_result_json_round_trip() -> None:
    result = ReloadResult(3, "2026-05-02T00:00:00Z", False, ("a", "b"), ())
    assert ReloadResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    for junk in (None, "x", {"seq": "1"}, {"seq": True}):
        assert ReloadResult.from_json(junk) is None


# ----- the service's side ---------------------------------------------------------------


class NoCalls:
    def create(self, **kwargs: Any) -> ApiReply:
        raise AssertionError("no API call expected")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifySocket]:
    server = NotifySocket(str(tmp_path / "notify"))
    yield server
    server.close()


def make_service(tmp_path: Path, listener: NotifySocket, **overrides: Any) -> Service:
    path = write(tmp_path / "config.yaml", yaml.safe_dump({**BASE, "data_dir": "data"}))
    service = Service(
        load_config(path),
        with_intake=False,
        environ={"NOTIFY_SOCKET": listener.address, "ANTHROPIC_API_KEY": "sk-x"},
        api_factory=lambda key, config: NoCalls(),
    )
    service.engine.recover()
    return service


def status_json(service: Service) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(service.layout.status.read_text())
    return data


def test_a_good_reload_applies_and_says_so(tmp_path: Path, listener: NotifySocket) -> None:
    service = make_service(tmp_path, listener)
    try:
        settings = {**BASE, "data_dir": "data", "sessions": ["session-1", "session-3"]}
        write(tmp_path / "config.yaml", yaml.safe_dump({**settings, "model": "claude-x"}))
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert service.reload() is True
        reloading = listener.receive()
        assert reloading[0] == "RELOADING=1"
        usec = int(reloading[1].removeprefix("MONOTONIC_USEC="))
        assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        ready = listener.receive()
        assert ready[0] == "READY=1" and ready[1].startswith("STATUS=")
        for who in (service, service.engine, service.engine.accounts, service.engine.keys):
            assert who.config.sessions == ("session-1", "session-3")
        assert (tmp_path / "data" / "dispatch" / "session-3" / ".pending").is_dir()
        shown = status_json(service)
        assert shown["model"] == "claude-x"
        assert shown["last_reload"] == {
            "seq": 1,
            "at": shown["last_reload"]["at"],
            "ok": True,
            "errors": [],
            "changed": ["sessions (+session-3)", "model"],
        }
    finally:
        service.engine.close()


def test_a_refused_reload_keeps_the_old_config(tmp_path: Path, listener: NotifySocket) -> None:
    service = make_service(tmp_path, listener)
    try:
        old = service.config
        write(tmp_path / "config.yaml", "sessions: [session-1\n")
        assert service.reload() is False
        assert service.reload() is False  # seq counts every reload, refused or not
        assert listener.receive()[0] == "RELOADING=1"
        assert listener.receive()[0] == "READY=1"  # still ready: on the old config
        assert service.config is old and service.engine.config is old
        last = status_json(service)["last_reload"]
        assert last["seq"] == 2 and last["ok"] is False and last["changed"] == []
        (error,) = last["errors"]
        assert "not valid YAML" in error and str(tmp_path / "config.yaml") in error
    finally:
        service.engine.close()


def test_sighup_only_asks(tmp_path: Path, listener: NotifySocket) -> None:
    service = make_service(tmp_path, listener)
    try:
        service.request_reload(signal.SIGHUP)
        assert service.reload_requested and service.config.source is not None
        assert listener.nothing_waiting()  # the loop does the work, not the handler
    finally:
        service.engine.close()


# ----- the command's side ---------------------------------------------------------------


class FakeRelay:
    """A process that answers SIGHUP by writing status.json as the service does."""

    def __init__(self, layout: Layout, pid: int, answer: ReloadResult | None) -> None:
        self.layout, self.pid, self.answer = layout, pid, answer
        self.signals: list[tuple[int, int]] = []
        self.now = 0.0

    def write(self, pid: int, last: ReloadResult | None) -> None:
        self.layout.state.mkdir(parents=True, exist_ok=True)
        data = {"pid": pid, "last_reload": last.to_json() if last else None}
        self.layout.status.write_text(json.dumps(data))

    def kill(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))
        if pid != self.pid:
            raise ProcessLookupError
        if self.answer is not None:
            self.write(self.pid, self.answer)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def wait(relay: FakeRelay, pid: int) -> ReloadResult:
    return reload.signal_and_wait(
        relay.layout, pid, kill=relay.kill, clock=relay.clock, sleep=relay.sleep
    )


def test_signal_and_wait_returns_the_new_outcome(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    answer = ReloadResult(2, "t", False, ("model: bad",))
    relay = FakeRelay(layout, 41, answer)
    relay.write(41, ReloadResult(1, "t", True))
    assert wait(relay, 41) == answer
    assert relay.signals == [(41, signal.SIGHUP)]


def test_a_status_from_an_earlier_process_is_not_an_answer(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    relay = FakeRelay(layout, 41, ReloadResult(1, "t", True))
    relay.write(40, ReloadResult(7, "t", True))  # the process before, with more reloads
    assert wait(relay, 41).seq == 1


def test_no_answer_times_out_clearly(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    relay = FakeRelay(layout, 41, None)
    relay.write(41, ReloadResult(1, "t", True))
    with pytest.raises(RelayError, match=r"did not report the reload .* within 30s"):
        wait(relay, 41)
    assert relay.now >= reload.WAIT_S


def test_a_process_writing_elsewhere_means_data_dir_changed(tmp_path: Path) -> None:
    relay = FakeRelay(Layout(tmp_path), 41, None)
    with pytest.raises(RelayError, match="data_dir cannot change while relay runs"):
        wait(relay, 41)
    assert relay.now < reload.WAIT_S  # said long before the time-out


def test_no_such_process(tmp_path: Path) -> None:
    relay = FakeRelay(Layout(tmp_path), 41, None)
    with pytest.raises(RelayError, match="no process 99"):
        wait(relay, 99)


def fake_proc(tmp_path: Path, pid: int, *argv: str) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    return proc


def test_is_relay_process(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 7, "/usr/bin/python3", "-m", "relay", "run", "--config", "c")
    fake_proc(tmp_path, 8, "/usr/lib/relay/bin/python", "/usr/bin/relay", "serve")
    fake_proc(tmp_path, 9, "/usr/bin/vim", "relay", "notes")
    assert reload.is_relay_process(7, proc) and reload.is_relay_process(8, proc)
    assert not reload.is_relay_process(9, proc) and not reload.is_relay_process(10, proc)


def done(stdout: str = "", returncode: int = 0, stderr: str = "") -> Any:
    return subprocess.CompletedProcess([], returncode, stdout, stderr)


def test_through_systemd_reports_the_refusal(tmp_path: Path) -> None:
    relay = FakeRelay(Layout(tmp_path), 41, None)
    relay.write(41, ReloadResult(1, "t", True))
    refused = ReloadResult(2, "t", False, ("model: bad",))

    def systemctl(argv: list[str]) -> Any:
        relay.write(41, refused)  # what ExecReload's `relay reload --pid` waited for
        return done(returncode=1)

    assert reload.through_systemd(relay.layout, 41, systemctl) == refused


def test_through_systemd_never_passes_off_an_earlier_refusal(tmp_path: Path) -> None:
    relay = FakeRelay(Layout(tmp_path), 41, None)
    relay.write(41, ReloadResult(3, "t", False, ("model: bad",)))
    denied = done(returncode=1, stderr="Failed to reload: Access denied\n")
    with pytest.raises(RelayError, match="Access denied") as caught:
        reload.through_systemd(relay.layout, 41, lambda argv: denied)
    assert "model: bad" not in str(caught.value)


def test_through_systemd_without_an_answer_points_at_the_journal(tmp_path: Path) -> None:
    relay = FakeRelay(Layout(tmp_path), 41, None)
    relay.write(41, ReloadResult(1, "t", True))
    failed = done(returncode=1, stderr="Job for relay-conversation.service failed.\n")
    with pytest.raises(RelayError, match=r"Job for .* failed.*journalctl -u"):
        reload.through_systemd(relay.layout, 41, lambda argv: failed)


def test_cli_prints_every_config_error_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "c.yaml", "sessions: [session-1]\nmax_tokens: 0\nmodel: 3\n")
    assert cli.main(["reload", "--pid", "1", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"relay: {path} is not valid, nothing was reloaded:"
    assert sorted(line.split(":")[0] for line in err[1:]) == ["  max_tokens", "  model"]


def test_cli_with_nothing_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.yaml", yaml.safe_dump({**BASE, "data_dir": "data"}))
    # A machine without systemd, and no status.json: nothing ran here.
    monkeypatch.setattr(systemd, "running_under_systemd", lambda: False)
    assert cli.main(["reload", "--config", str(path)]) == 1
    assert "relay is not running" in capsys.readouterr().err


def test_a_reload_that_cannot_be_applied_changes_nothing(
    tmp_path: Path, listener: NotifySocket
) -> None:
    service = make_service(tmp_path, listener)
    try:
        old = service.config
        (tmp_path / "data" / "dispatch" / "session-3").write_text("in the way")
        settings = {**BASE, "data_dir": "data", "sessions": ["session-1", "session-3"]}
        write(tmp_path / "config.yaml", yaml.safe_dump(settings))
        assert service.reload() is False
        assert service.config is old and service.engine.config is old
        assert service.engine.keys.config is old and service.engine.accounts.config is old
        (error,) = status_json(service)["last_reload"]["errors"]
        assert error.startswith("cannot create the new sessions' directories")
    finally:
        service.engine.close()
