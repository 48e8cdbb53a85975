"""State relay cannot read safely: StateError, exit code 3, and a status that says what to do.

The real process (`python -m relay`) in a child with a time-out: without the fix a FIFO
topic would hang it, and the child is killed, not the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relay import history
from relay.errors import StateError

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, ntfy_server: str | None = None) -> Path:
    config = {
        "sessions": ["session-1"],
        "data_dir": str(tmp_path / "data"),
        # Nothing listens there: relay must stop before it ever calls the API.
        "anthropic": {"base_url": "http://127.0.0.1:9", "timeout_s": 5},
        "ntfy": {"server": ntfy_server, "topic": None},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "data" / "state").mkdir(parents=True)
    return path


def relay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "NOTIFY_"))}
    for name in ("INVOCATION_ID", "JOURNAL_STREAM", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY"):
        env.pop(name, None)
    env["ANTHROPIC_API_KEY"] = "sk-test"
    try:
        return subprocess.run(
            [sys.executable, "-m", "relay", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"relay {' '.join(args)} did not finish within 30 s")


def test_a_damaged_record_not_at_the_end_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"torn\n{"a": 1}\n')
    with pytest.raises(StateError, match="record at byte 0 is damaged") as caught:
        history.load(path)
    assert caught.value.exit_code == 3
    assert "restore it from state/archive/ or remove the line" in caught.value.message


@pytest.mark.parametrize("command", ["serve", "run"])
def test_relay_stops_with_3_and_status_says_what_to_do(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "data" / "state"
    (state / "history.jsonl").write_bytes(b"not json\n{}\n")

    done = relay(config, command)

    assert done.returncode == 3, done.stderr
    assert "history.jsonl: record at byte 0 is damaged" in done.stderr
    report = json.loads((state / "status.json").read_text(encoding="utf-8"))
    assert report["state"] == "failed"
    restart = "systemctl restart relay.target" if command == "serve" else "start relay run again"
    assert report["state_detail"].endswith(f"; then {restart}")
    assert "restore it from state/archive/ or remove the line" in report["state_detail"]
    assert "state_error" in done.stderr  # the journal event (readable form outside systemd)

    # The process is gone, yet `relay status` still says why and what to do.
    shown = relay(config, "status")
    assert shown.returncode == 0, shown.stderr
    assert "state:          failed" in shown.stdout
    assert "restore it from state/archive/ or remove the line" in shown.stdout
    assert restart in shown.stdout


def test_a_topic_that_is_a_fifo_stops_relay_instead_of_hanging_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, ntfy_server="http://127.0.0.1:9")
    topic = tmp_path / "data" / "state" / "ntfy-topic"
    os.mkfifo(topic)

    done = relay(config, "serve")

    assert done.returncode == 3, done.stderr
    assert f"{topic} cannot be read safely (not a regular file (a FIFO))" in done.stderr
    assert "remove it to have a new one made" in done.stderr
    assert topic.exists()  # never replaced behind the operator's back
