"""The relay-operators group, with the real package under a real systemd 252.

Members run `relay status`, `relay costs`, `relay topic` and `relay reply` without sudo; clients
(relay-clients) and everyone else still cannot read state/, and no one but relay writes the
history. Operators' replies go through operator/, which the jc handler moves to
state/jc_input.txt one at a time; root's still go straight to state/jc_input.txt.

One container for the module (the package installed, configured, running), four users:
olivia and oscar in relay-operators, alice in relay-clients, bob in neither. Each test puts
back what it changes. The upgrade test boots a container of its own.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.standin.api import StandinAPI
from tests.standin.ntfy import StandinNtfy

from .nspawn import Container
from .relaydeb import CONFIG_PATH, DATA, KEY_PATH, copy_deb, install, wait_input

pytestmark = pytest.mark.system

KEY = "sk-ant-operators-test-key"
CONVERSATION = "relay-conversation.service"
STATE = f"{DATA}/state"
DROP = f"{DATA}/operator"
STATUS = f"{STATE}/status.json"
TOPIC = f"{STATE}/ntfy-topic"
HISTORY = f"{STATE}/history.jsonl"
LEDGER = f"{STATE}/ledger.jsonl"
OPERATORS = ("olivia", "oscar")
CLIENT, NOBODY = "alice", "bob"


# ----- the container ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api() -> Iterator[StandinAPI]:
    with StandinAPI(api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def ntfy() -> Iterator[StandinNtfy]:
    with StandinNtfy() as server:
        yield server


def config(api: StandinAPI, ntfy: StandinNtfy) -> str:
    # No topic in the config: relay generates one into state/ntfy-topic, which operators read.
    return (
        "sessions: [session-1, session-2]\n"
        f'anthropic: {{base_url: "{api.url}", timeout_s: 60}}\n'
        f'ntfy: {{server: "{ntfy.url}", topic: null}}\n'
    )


def set_up(c: Container, api: StandinAPI, ntfy: StandinNtfy) -> None:
    """README.Debian steps 1-2, then the users of this module."""
    c.run(["sh", "-c", 'cat > "$1"', "sh", CONFIG_PATH], input=config(api, ntfy))
    c.run(["sh", "-c", 'umask 077; cat > "$1"', "sh", KEY_PATH], input=KEY + "\n")
    c.systemctl("restart", "relay.target")
    wait_running(c)
    for user in OPERATORS:
        c.run(["useradd", "-m", "-G", "relay-operators", user])
    c.run(["useradd", "-m", "-G", "relay-clients", CLIENT])
    c.run(["useradd", "-m", NOBODY])


@pytest.fixture(scope="module")
def relay(relay_deb: Path, api: StandinAPI, ntfy: StandinNtfy) -> Iterator[Container]:
    with Container() as c:
        c.boot()
        install(c, relay_deb)
        set_up(c, api, ntfy)
        yield c


@pytest.fixture
def fresh(relay: Container, ntfy: StandinNtfy) -> Container:
    """The module's container with no reply waiting anywhere and relay running, unpaused."""
    for session in ("session-1", "session-2"):
        relay.run(["rm", "-f", f"{DATA}/dispatch/{session}/input.txt"])
    if status(relay).get("state") == "needs_jc":
        relay.run(["relay", "reply", "(test reset) carry on"])
        take(relay, status(relay).get("needs_jc_session") or "session-1")
    wait_status(relay, lambda s: s.get("state") == "running" and s.get("inbox") == 0)
    for session in ("session-1", "session-2"):
        relay.run(["rm", "-f", f"{DATA}/dispatch/{session}/input.txt"])
    ntfy.reset()
    return relay


# ----- helpers ------------------------------------------------------------------------------


def as_user(
    c: Container, user: str, *cmd: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A command as `user`, with the groups /etc/group gives them (runuser, like a login)."""
    return c.run(["runuser", "-u", user, "--", *cmd], input=input, check=False)


def status(c: Container, user: str | None = None) -> dict[str, Any]:
    cmd = ["relay", "status", "--json"]
    done = as_user(c, user, *cmd) if user else c.run(cmd, check=False)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def wait_status(
    c: Container, predicate: Callable[[dict[str, Any]], bool], user: str | None = None
) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def check() -> bool:
        seen[:] = [status(c, user)]
        return predicate(seen[0])

    c.wait_for(check, timeout=30, what="relay status")
    return seen[0]


def wait_running(c: Container) -> None:
    def ready() -> bool:
        if c.show(CONVERSATION, "ActiveState") != "active" or not c.exists(TOPIC):
            return False
        done = c.run(["relay", "status", "--json"], check=False)
        if done.returncode != 0:
            return False
        now = json.loads(done.stdout)
        pid = c.show(CONVERSATION, "MainPID")
        return bool(now.get("state") == "running" and now.get("api_key") and str(now["pid"]) == pid)

    c.wait_for(ready, timeout=30, what="relay running with its key and a topic")


def take(c: Container, session: str) -> str:
    text = wait_input(c, session)
    c.run(["rm", f"{DATA}/dispatch/{session}/input.txt"])
    return text


def mode(c: Container, path: str) -> str:
    return c.run(["stat", "-c", "%a %U:%G", path]).stdout.strip()


def listing(c: Container, path: str) -> list[str]:
    return sorted(c.run(["ls", "-A", path]).stdout.split())


def denied(done: subprocess.CompletedProcess[str]) -> bool:
    """Refused by the kernel: EACCES, or EPERM (the sticky bit, for someone else's file)."""
    refusals = ("Permission denied", "Operation not permitted")
    return done.returncode != 0 and any(r in done.stderr for r in refusals)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done
    assert done.stderr.startswith("relay: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def rejected_operator_input(c: Container) -> list[str]:
    """What intake refused of the operator's input (state/rejected/, root's eyes only)."""
    return listing(c, f"{STATE}/rejected") if c.exists(f"{STATE}/rejected") else []


def drop_is_empty(c: Container) -> bool:
    return [n for n in listing(c, DROP) if not n.startswith(".")] == []


# ----- modes --------------------------------------------------------------------------------


def test_the_package_makes_the_group_and_opens_only_status_topic_and_ledger(
    fresh: Container,
) -> None:
    c = fresh
    members = c.run(["getent", "group", "relay-operators"]).stdout.strip().split(":")[3]
    assert "relay" in members.split(","), members
    assert mode(c, DATA) == "750 relay:relay-clients"  # plus traversal for relay-operators
    assert mode(c, STATE) == "2710 relay:relay-operators"
    assert mode(c, DROP) == "3770 relay:relay-operators"
    assert mode(c, STATUS) == "640 relay:relay-operators"
    assert mode(c, TOPIC) == "640 relay:relay-operators"
    c.run(["relay", "submit", "--session", "session-1", "-"], input="a turn for the history")
    take(c, "session-1")
    assert mode(c, HISTORY).split()[0] == "600"
    assert mode(c, LEDGER) == "640 relay:relay-operators"  # `relay costs`
    for private in ("inbox", "ids"):
        assert mode(c, f"{STATE}/{private}").split()[0].endswith("700"), private


# ----- what an operator can do ---------------------------------------------------------------


def test_an_operator_runs_status_and_topic_without_sudo(fresh: Container) -> None:
    c = fresh
    for user in OPERATORS:
        shown = as_user(c, user, "relay", "status")
        assert shown.returncode == 0, shown.stderr
        assert "state:          running" in shown.stdout, shown.stdout
        assert status(c, user)["state"] == "running"
        topic = as_user(c, user, "relay", "topic")
        assert topic.returncode == 0, topic.stderr
        assert topic.stdout == c.run(["relay", "topic"]).stdout
        assert "topic:        relay-" in topic.stdout
        costs = as_user(c, user, "relay", "costs")
        assert costs.returncode == 0 and costs.stderr == "", costs.stderr
        assert any(line.startswith("Total") for line in costs.stdout.splitlines()), costs.stdout


def test_an_operator_answers_a_pause_and_messages_a_session(
    fresh: Container, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    c = fresh
    refused_before = rejected_operator_input(c)
    asked = as_user(
        c, CLIENT, "relay", "submit", "--session", "session-2", "-",
        input="[[reply: [NEEDS-JC] may I force-push?]]",
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    paused = wait_status(c, lambda s: s["state"] == "needs_jc", user="olivia")
    assert paused["needs_jc_session"] == "session-2"
    # The push went to the topic olivia reads with `relay topic`.
    (push,) = ntfy.wait_for(1, timeout=10)
    assert f"topic:        {push.topic}\n" in as_user(c, "olivia", "relay", "topic").stdout

    # Straight to a session: no API call, the pause stays.
    calls = len(api.message_calls())
    done = as_user(c, "olivia", "relay", "reply", "@session-1: run the tests first")
    assert done.returncode == 0, done.stderr
    wait_input(c, "session-1")
    assert as_user(c, CLIENT, "cat", f"{DATA}/dispatch/session-1/input.txt").stdout == (
        "run the tests first"
    )
    take(c, "session-1")
    assert len(api.message_calls()) == calls
    assert status(c, "olivia")["state"] == "needs_jc"

    # The answer: the next turn, which lifts the pause and goes to the session that asked.
    done = as_user(c, "olivia", "relay", "reply", "-", input="No force-push. Rebase instead.")
    assert done.returncode == 0, done.stderr
    assert take(c, "session-2") == "ack: [from operator] No force-push. Rebase instead."
    wait_status(c, lambda s: s["state"] == "running", user="olivia")
    assert drop_is_empty(c) and not c.exists(f"{STATE}/jc_input.txt")
    assert rejected_operator_input(c) == refused_before

    # Root still answers through state/jc_input.txt, as the contract says.
    c.run(["relay", "reply", "@session-1: from root"])
    assert take(c, "session-1") == "from root"


def test_operators_cannot_remove_or_rewrite_each_others_replies(fresh: Container) -> None:
    c = fresh
    c.systemctl("stop", "relay-jc.path")  # nothing moves the replies on meanwhile
    try:
        for user, text in (("oscar", "from oscar"), ("olivia", "from olivia")):
            done = as_user(c, user, "relay", "reply", f"@session-1: {text}")
            assert done.returncode == 0, done.stderr
            time.sleep(0.01)  # distinct mtimes: the order they are taken in
        waiting = [n for n in listing(c, DROP) if not n.startswith(".")]
        assert len(waiting) == 2
        owners = {n: c.run(["stat", "-c", "%U %a", f"{DROP}/{n}"]).stdout.split() for n in waiting}
        (oscars,) = (n for n, (owner, _) in owners.items() if owner == "oscar")
        assert owners[oscars][1] == "640"
        for attempt in (
            ["rm", "-f", f"{DROP}/{oscars}"],
            ["mv", f"{DROP}/{oscars}", f"{DROP}/mine"],
            ["sh", "-c", 'echo rewritten > "$1"', "sh", f"{DROP}/{oscars}"],
        ):
            assert denied(as_user(c, "olivia", *attempt)), attempt
        assert c.read_file(f"{DROP}/{oscars}") == "@session-1: from oscar"
        # Clients cannot even look.
        assert denied(as_user(c, CLIENT, "ls", DROP))
        assert denied(as_user(c, CLIENT, "cat", f"{DROP}/{oscars}"))
    finally:
        c.systemctl("start", "relay-jc.path")
    assert take(c, "session-1") == "from oscar"
    assert take(c, "session-1") == "from olivia"
    c.wait_for(lambda: drop_is_empty(c), what="operator/ empty")


def test_what_an_operator_leaves_that_is_no_reply_is_set_aside(fresh: Container) -> None:
    c = fresh
    cursor = c.cursor()
    c.systemctl("stop", "relay-jc.path")
    try:
        script = (
            'set -e; cd "$1"; ln -s ../state/history.jsonl a-link; mkdir b-dir; '
            "echo x > b-dir/inside; mkfifo c-fifo; echo secret > d-private; chmod 600 d-private"
        )
        made = as_user(c, "olivia", "sh", "-c", script, "sh", DROP)
        assert made.returncode == 0, made.stderr
    finally:
        c.systemctl("start", "relay-jc.path")
    done = as_user(c, "olivia", "relay", "reply", "@session-1: still answering")
    assert done.returncode == 0, done.stderr
    assert take(c, "session-1") == "still answering"
    c.wait_for(lambda: drop_is_empty(c), what="operator/ has only set-aside dot-files")
    left = listing(c, DROP)
    assert len(left) == 4 and all(n.startswith(".refused-") for n in left), left
    assert {n.split("-", 2)[2] for n in left} == {"a-link", "b-dir", "c-fifo", "d-private"}
    reasons = c.journal_text_since(cursor, "RELAY_EVENT=rejected")
    for expected in ("a symlink", "a directory", "a FIFO", "relay may not read it"):
        assert expected in reasons, reasons
    # The watcher never looped into its start limit, and the link was never followed.
    assert c.show("relay-jc.path", "ActiveState") == "active"
    assert "start-limit" not in c.journal_text_since(cursor, "-u", "relay-jc.service")
    assert mode(c, HISTORY).split()[0] == "600"
    # They are olivia's, so she can clear them away.
    cleared = as_user(c, "olivia", "sh", "-c", 'cd "$1" && rm -rf .refused-*', "sh", DROP)
    assert cleared.returncode == 0, cleared.stderr
    assert listing(c, DROP) == []


# ----- what they cannot do -------------------------------------------------------------------


def test_operators_read_only_status_topic_and_ledger_and_write_nothing_in_state(
    fresh: Container,
) -> None:
    c = fresh
    for user in OPERATORS:
        for cmd in (
            ["ls", STATE],
            ["cat", HISTORY],
            ["sh", "-c", 'echo forged >> "$1"', "sh", LEDGER],
            ["ls", f"{STATE}/inbox"],
            ["touch", f"{STATE}/jc_input.txt"],
            ["touch", f"{STATE}/spool-serial"],
            ["sh", "-c", 'echo forged >> "$1"', "sh", HISTORY],
            ["rm", "-f", STATUS],
            ["mv", STATUS, f"{STATE}/old"],
        ):
            assert denied(as_user(c, user, *cmd)), (user, cmd)
        assert as_user(c, user, "cat", STATUS).returncode == 0
        assert as_user(c, user, "cat", TOPIC).returncode == 0
        assert as_user(c, user, "cat", LEDGER).returncode == 0
    assert c.exists(STATUS) and not c.exists(f"{STATE}/jc_input.txt")


def test_clients_and_others_cannot_read_state_or_reply(fresh: Container) -> None:
    c = fresh
    history = c.read_file(HISTORY)
    for user in (CLIENT, NOBODY):
        for cmd in (
            ["ls", STATE],
            ["cat", STATUS],
            ["cat", HISTORY],
            ["cat", TOPIC],
            ["cat", LEDGER],
            ["sh", "-c", 'echo forged >> "$1"', "sh", HISTORY],
            ["touch", f"{DROP}/reply"],
        ):
            assert denied(as_user(c, user, *cmd)), (user, cmd)
        for cmd in (["relay", "status"], ["relay", "topic"], ["relay", "costs"]):
            line = one_line(as_user(c, user, *cmd))
            assert "permission denied" in line, line
            assert "sudo usermod -aG relay-operators $USER" in line, line
        line = one_line(as_user(c, user, "relay", "reply", "let me in"))
        assert "relay-operators" in line and "sudo usermod -aG relay-operators $USER" in line
    assert c.read_file(HISTORY) == history
    assert drop_is_empty(c) and not c.exists(f"{STATE}/jc_input.txt")


# ----- upgrade --------------------------------------------------------------------------------


def test_an_upgrade_from_a_private_state_opens_status_topic_and_ledger_to_operators(
    relay_deb: Path, relay_deb_upgrade: Path, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    with Container() as c:
        c.boot()
        install(c, relay_deb)
        c.run(["sh", "-c", 'cat > "$1"', "sh", CONFIG_PATH], input=config(api, ntfy))
        c.run(["sh", "-c", 'umask 077; cat > "$1"', "sh", KEY_PATH], input=KEY + "\n")
        c.systemctl("restart", "relay.target")
        wait_running(c)
        c.run(["relay", "submit", "--session", "session-1", "-"], input="before the upgrade")
        assert take(c, "session-1") == "ack: [from session-1] before the upgrade"
        # What the release before relay-operators left: state/ 0700 relay:relay with its
        # files 0600, no operator/, no ACL on the data root, no group.
        c.systemctl("stop", "relay.target")
        old_layout = (
            f'set -e; rmdir "{DROP}"; chown -R relay:relay "{STATE}"; chmod -R g-s "{STATE}"; '
            f'chmod 0700 "{STATE}"; '
            f'chmod 0600 "{STATUS}" "{TOPIC}" "{LEDGER}"; '
            f'python3 -c \'import os; os.removexattr("{DATA}", "system.posix_acl_access")\'; '
            "gpasswd -d relay relay-operators; groupdel relay-operators"
        )
        c.run(["sh", "-c", old_layout])
        assert mode(c, STATE) == "700 relay:relay"
        history, topic = c.read_file(HISTORY), c.read_file(TOPIC)
        c.systemctl("start", "relay.target")
        wait_running(c)

        c.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends",
             copy_deb(c, relay_deb_upgrade)],
            timeout=300,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )  # fmt: skip
        wait_running(c)
        assert mode(c, STATE) == "2710 relay:relay-operators"
        assert mode(c, DROP) == "3770 relay:relay-operators"
        assert mode(c, STATUS) == "640 relay:relay-operators"
        assert mode(c, TOPIC) == "640 relay:relay-operators"
        assert mode(c, LEDGER) == "640 relay:relay-operators"
        assert mode(c, HISTORY) == "600 relay:relay"
        assert c.read_file(HISTORY) == history and c.read_file(TOPIC) == topic

        c.run(["useradd", "-m", "-G", "relay-operators", "olivia"])
        assert status(c, "olivia")["state"] == "running"
        assert f"topic:        {topic.strip()}\n" in as_user(c, "olivia", "relay", "topic").stdout
        done = as_user(c, "olivia", "relay", "reply", "@session-2: after the upgrade")
        assert done.returncode == 0, done.stderr
        assert take(c, "session-2") == "after the upgrade"
