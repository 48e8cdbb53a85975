"""The command line through `main()` and as a subprocess: exit codes, messages, atomic writes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay import cli, fsutil
from relay.config import load_config
from relay.envelope import parse_envelope


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"sessions: [session-1, session-2]\ndata_dir: {tmp_path / 'data'}\n"
        "ntfy: {server: 'http://127.0.0.1:9', topic: null}\n"
    )
    (tmp_path / "data" / "queue").mkdir(parents=True)
    (tmp_path / "data" / "state").mkdir(parents=True)
    return path


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        input=stdin,
        text=True,
        capture_output=True,
        env={**environ, **(env or {})},
        timeout=60,
    )


def test_config_errors_are_one_line_with_every_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sessions: [ok, 'bad name', ok]\nmax_tokens: -1\nbogus: 1\nanthropic: {timeout_s: fast}\n"
    )
    done = run("status", "--config", str(bad))
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    for expected in (
        "sessions[1]",
        "sessions[2]",
        "max_tokens",
        "bogus: unknown key",
        "anthropic.timeout_s",
    ):
        assert expected in line
    assert "Traceback" not in done.stderr


def test_missing_config_is_explained(tmp_path: Path) -> None:
    done = run("run", "--config", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert "no such file" in done.stderr and "RELAY_CONFIG" in done.stderr


def test_relay_config_environment_variable(config: Path) -> None:
    done = run("topic", env={"RELAY_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr


def test_usage_error_exits_2() -> None:
    done = run("frobnicate")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert run("submit").returncode == 2  # --session is required


def test_submit_writes_a_valid_envelope_atomically(config: Path) -> None:
    done = run(
        "submit",
        "--config",
        str(config),
        "--session",
        "session-2",
        "--id",
        "x1",
        "-",
        stdin="please review\n",
    )
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent.name == "queue" and not path.name.startswith(".")
    envelope = parse_envelope(path.read_bytes(), ("session-2",), 10_000)
    assert envelope.content == "please review\n" and envelope.id == "x1"
    assert envelope.timestamp and envelope.timestamp.endswith("Z")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_submit_from_a_file(config: Path, tmp_path: Path) -> None:
    content = tmp_path / "msg.txt"
    content.write_text("from a file")
    done = run("submit", "--config", str(config), "--session", "session-1", str(content))
    assert done.returncode == 0, done.stderr
    assert json.loads(Path(done.stdout.strip()).read_text())["content"] == "from a file"


def test_submit_refuses_an_unknown_session(config: Path) -> None:
    done = run("submit", "--config", str(config), "--session", "session-9", "-", stdin="x")
    assert done.returncode == 2
    assert "unknown session 'session-9'" in done.stderr and "session-1" in done.stderr
    assert list((config.parent / "data" / "queue").iterdir()) == []


def test_submit_refuses_empty_and_oversized(config: Path) -> None:
    assert (
        run("submit", "--config", str(config), "--session", "session-1", "-", stdin="  ").returncode
        == 2
    )
    big = run("submit", "--config", str(config), "--session", "session-1", "-", stdin="x" * 300_000)
    assert big.returncode == 2 and "limit" in big.stderr


def test_reply_writes_jc_input_and_never_overwrites(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reply", "--config", str(config), "@session-1: hi"]) == 0
    jc = config.parent / "data" / "state" / "jc_input.txt"
    assert jc.read_text() == "@session-1: hi"
    monkeypatch.setattr(cli, "REPLY_WAIT_S", 0.2)
    assert cli.main(["reply", "--config", str(config), "second"]) == 1
    assert "not consumed" in capsys.readouterr().err
    assert jc.read_text() == "@session-1: hi"
    assert [p.name for p in jc.parent.iterdir()] == ["jc_input.txt"]


def test_topic_is_generated_once_and_kept(config: Path) -> None:
    first = run("topic", "--config", str(config))
    second = run("topic", "--config", str(config))
    assert first.returncode == 0 and first.stdout == second.stdout
    topic = first.stdout.split()[1]
    assert topic.startswith("relay-") and len(topic) >= 6 + 32  # >= 192 random bits
    assert f"http://127.0.0.1:9/{topic}" in first.stdout
    stored = config.parent / "data" / "state" / "ntfy-topic"
    assert oct(stored.stat().st_mode & 0o777) == "0o640"  # relay-operators read it
    cfg = load_config(config)
    assert cfg.ntfy.topic is None  # the config is never rewritten


def test_configured_topic_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"sessions: [s]\ndata_dir: {tmp_path}\nntfy: {{topic: my-topic}}\n")
    done = run("topic", "--config", str(path))
    assert "my-topic" in done.stdout and "https://ntfy.sh/my-topic" in done.stdout


def test_status_before_any_run_is_a_clear_error(config: Path) -> None:
    done = run("status", "--config", str(config))
    assert done.returncode == 1
    assert "no status yet" in done.stderr and "Traceback" not in done.stderr


def test_alert_with_unreachable_ntfy_fails_clearly(config: Path) -> None:
    run("topic", "--config", str(config))
    done = run("alert", "--config", str(config), "relay-queue.path")
    assert done.returncode == 1 and "could not send the alert" in done.stderr


def test_submit_without_permission_says_who_may(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Root ignores directory modes, so inject the refusal a non-member would get.
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fsutil, "atomic_write", refuse)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello")))
    code = cli.main(["submit", "--config", str(config), "--session", "session-1", "-"])
    err = capsys.readouterr().err
    assert code == 1
    assert "permission denied" in err and "relay-clients" in err
    assert "Traceback" not in err


def test_alert_pushes_an_urgent_message_naming_the_unit(tmp_path: Path) -> None:
    from tests.standin.ntfy import StandinNtfy

    with StandinNtfy() as ntfy:
        path = tmp_path / "c.yaml"
        path.write_text(
            f"sessions: [s]\ndata_dir: {tmp_path / 'data'}\n"
            f"ntfy: {{server: '{ntfy.url}', topic: ops-alerts}}\n"
        )
        done = run("alert", "--config", str(path), "relay-queue.path")
        assert done.returncode == 0, done.stderr
        (push,) = ntfy.wait_for(1)
    assert push.topic == "ops-alerts" and push.priority == 5
    assert push.title is not None and "relay-queue.path" in push.title
    assert "journalctl -u relay-queue.path" in push.message
    assert "reset-failed" in push.message


def test_permission_denied_is_one_line_not_a_traceback(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import relay.topic

    def denied(*args: object, **kwargs: object) -> str:  # what a non-root user meets
        raise PermissionError(13, "Permission denied", "/var/lib/relay/state/ntfy-topic")

    monkeypatch.setattr(relay.topic, "resolve_topic", denied)
    assert cli.main(["topic", "--config", str(config)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "permission denied: /var/lib/relay/state/ntfy-topic" in line and "sudo" in line


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    path = tmp_path / "bad.yaml"
    path.write_text(f"sessions: [s1]\ndata_dir: {tmp_path / 'a-file'}\nntfy: {{server: null}}\n")
    for args in (["intake", "queue"], ["intake", "jc"], ["run"]):
        done = run(*args, "--config", str(path), env={"ANTHROPIC_API_KEY": "k"})
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr == f"relay: not a directory: {tmp_path / 'a-file'}\n", args


def test_a_reply_never_has_two_links_while_intake_may_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Intake refuses a file with more than one link; `relay reply` must never show one,
    even to an intake run that looks at the worst moment."""
    from relay import intake
    from relay.layout import Layout

    layout = Layout(tmp_path / "data")
    layout.ensure_intake()
    seen: list[intake.IntakeResult] = []
    real_unlink = os.unlink

    def unlink_after_intake_looked(path: object, *args: object, **kwargs: object) -> None:
        seen.append(intake.drain_operator(layout))  # intake runs right before the unlink
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    real_rename = fsutil.rename_noreplace

    def rename_then_look(source: Path, target: Path) -> None:
        real_rename(source, target)
        seen.append(intake.drain_operator(layout))

    monkeypatch.setattr(os, "unlink", unlink_after_intake_looked)
    monkeypatch.setattr(fsutil, "rename_noreplace", rename_then_look)
    cli._reply_to_state(layout, "@session-1: go")
    monkeypatch.undo()
    assert [r.rejected for r in seen if r.rejected] == []
    assert sum(len(r.accepted) for r in seen) == 1
