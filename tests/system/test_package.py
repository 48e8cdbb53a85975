"""The Debian package, used the way an administrator and the machine's users would.

Each test boots its own container, `apt install`s the built .deb and then drives relay only
through apt, systemctl, journalctl, files and the relay command line: install and first start
without a key, users in and outside relay-clients, an upgrade with work in flight, remove and
purge, lintian, and the package's own autopkgtest.

The host (and so every container, an overlay of the host root) is a Docker image whose
/usr/sbin/policy-rc.d exits 101, "never start services": deb-systemd-invoke obeys it, so the
postinst would neither start relay.target on install nor restart it on upgrade. A real Debian
machine has no policy-rc.d, so relaydeb.install() removes it before installing.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.standin.api import StandinAPI
from tests.standin.ntfy import StandinNtfy

from .nspawn import Container
from .relaydeb import (
    CONFIG_PATH,
    DATA,
    KEY_PATH,
    ROOT,
    config_yaml,
    copy_deb,
    install,
    wait_input,
)

pytestmark = pytest.mark.system

CONVERSATION = "relay-conversation.service"
ANSWERS = "relay-answers.service"
UNITS = ("relay.target", CONVERSATION, ANSWERS, "relay-queue.path", "relay-jc.path")
KEY = "sk-ant-package-test-key"
HISTORY = f"{DATA}/state/history.jsonl"


# ----- helpers ------------------------------------------------------------------------------


@contextmanager
def installed(deb: Path) -> Iterator[Container]:
    """A freshly booted container with `deb` installed by apt (nothing configured)."""
    with Container() as container:
        container.boot()
        install(container, deb)  # also drops the host image's policy-rc.d
        yield container


@pytest.fixture
def api() -> Iterator[StandinAPI]:
    """The stand-in Messages API; it refuses (401) any key but KEY."""
    with StandinAPI(api_key=KEY) as server:
        yield server


def apt(container: Container, *args: str) -> subprocess.CompletedProcess[str]:
    return container.run(
        ["apt-get", "-y", "-q", *args],
        timeout=300,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )


def edit_config(container: Container, text: str) -> None:
    """Rewrite the conffile in place, as an editor would (its mode and owner stay the package's)."""
    container.run(["sh", "-c", 'cat > "$1"', "sh", CONFIG_PATH], input=text)


def put_key(container: Container, key: str = KEY) -> None:
    """The API key, the way README.Debian step 2 says."""
    container.run(["install", "-d", "-m", "0700", "/etc/credstore"])
    container.run(["sh", "-c", 'umask 077; cat > "$1"', "sh", KEY_PATH], input=key + "\n")


def status(container: Container) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(container.run(["relay", "status", "--json"]).stdout)
    return data


def wait_running(container: Container, timeout: float = 30) -> None:
    """Until the conversation unit's current process reports `running` with a key."""

    def ready() -> bool:
        if container.show(CONVERSATION, "ActiveState") != "active":
            return False
        done = container.run(["relay", "status", "--json"], check=False)
        if done.returncode != 0:
            return False
        now = json.loads(done.stdout)
        pid = container.show(CONVERSATION, "MainPID")
        return bool(
            now.get("state") == "running" and now.get("api_key") and str(now.get("pid")) == pid
        )

    container.wait_for(ready, timeout=timeout, what="relay running with its API key")


def configure(
    container: Container, api: StandinAPI, extra: str = "", *, ntfy: StandinNtfy | None = None
) -> None:
    """Point relay at the stand-in, put the key in place, restart (README.Debian steps 1-2).
    ntfy is off (`server: null`) unless `ntfy` is given; its topics are then generated."""
    text = config_yaml(api.url, None)
    if ntfy is not None:
        text = text.replace("ntfy: {server: null}", f'ntfy: {{server: "{ntfy.url}"}}')
    edit_config(container, text + extra)
    put_key(container)
    container.systemctl("restart", "relay.target")
    wait_running(container)


def submit(container: Container, session: str, content: str) -> str:
    done = container.run(["relay", "submit", "--session", session, "-"], input=content)
    return done.stdout.strip()


def take(container: Container, session: str, timeout: float = 30) -> str:
    """Read and delete the session's input.txt, as the Claude Code side does."""
    text = wait_input(container, session, timeout)
    container.run(["rm", f"{DATA}/dispatch/{session}/input.txt"])
    return text


def as_user(
    container: Container, user: str, *cmd: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return container.run(["runuser", "-u", user, "--", *cmd], input=input, check=False)


def sha256(container: Container, path: str) -> str:
    return container.run(["sha256sum", path]).stdout.split()[0]


def lines(container: Container, path: str) -> int:
    return int(container.run(["sh", "-c", 'wc -l < "$1"', "sh", path]).stdout)


def queued(container: Container) -> list[str]:
    """Envelopes waiting in queue/ (dot-files are not envelopes)."""
    names = container.run(["ls", "-A", f"{DATA}/queue"]).stdout.split()
    return [name for name in names if not name.startswith(".")]


def invocations(container: Container) -> dict[str, str]:
    return {unit: container.show(unit, "InvocationID") for unit in UNITS}


def deleted_mappings(container: Container, pid: str) -> list[str]:
    """Files of the package a process still maps after dpkg replaced them (old code running)."""
    maps = container.run(["cat", f"/proc/{pid}/maps"]).stdout.splitlines()
    return sorted({m for m in maps if "/usr/lib/relay/" in m and m.endswith("(deleted)")})


# ----- 1. install -----------------------------------------------------------------------------


def test_install_starts_relay_which_waits_for_a_key_then_carries_an_envelope(
    relay_deb: Path, api: StandinAPI
) -> None:
    with installed(relay_deb) as c:
        # The postinst enabled and started relay.target, which pulled in its members.
        assert c.systemctl("is-enabled", "relay.target").stdout.strip() == "enabled"
        assert c.systemctl("is-active", "relay.target").stdout.strip() == "active"
        c.wait_for(
            lambda: all(c.show(u, "ActiveState") == "active" for u in UNITS),
            timeout=15,
            what="every relay unit active after install",
        )

        # No key, shipped config: it runs, blocked, and says what to do, where an operator looks.
        shipped = hashlib.sha256((ROOT / "packaging/config.yaml").read_bytes()).hexdigest()
        assert sha256(c, CONFIG_PATH) == shipped
        assert not c.exists(KEY_PATH)
        unit_status = c.systemctl("status", CONVERSATION).stdout
        assert "Active: active (running)" in unit_status, unit_status
        assert "no API key" in unit_status and KEY_PATH in unit_status, unit_status
        report = c.run(["relay", "status"]).stdout
        assert "state:          blocked" in report, report
        assert "MISSING" in report and KEY_PATH in report, report
        assert "no API key" in c.journal("-u", CONVERSATION, "-o", "cat")

        # Not a crash loop: one RestartSec=5s later it is still the same process, never restarted.
        pid = c.show(CONVERSATION, "MainPID")
        time.sleep(6)
        assert c.show(CONVERSATION, "NRestarts") == "0"
        assert c.show(CONVERSATION, "MainPID") == pid
        assert c.show(CONVERSATION, "ActiveState") == "active"
        assert c.show(CONVERSATION, "Result") == "success"
        # The shipped config pushes to (and takes answers from) ntfy.sh, which this container
        # cannot reach: the subscriber keeps trying, it neither exits nor restarts.
        assert c.show(ANSWERS, "ActiveState") == "active"
        assert c.show(ANSWERS, "NRestarts") == "0"
        assert "cannot connect to https://ntfy.sh" in c.journal("-u", ANSWERS, "-o", "cat")

        # The postinst made the credential store's directory (README.Debian step 2).
        assert c.run(["stat", "-c", "%a %U:%G", "/etc/credstore"]).stdout.strip() == "700 root:root"

        # Configure as README.Debian says, then turn it on.
        edit_config(c, config_yaml(api.url, None))
        put_key(c)
        key_stat = c.run(["stat", "-c", "%a %U:%G", KEY_PATH]).stdout.strip()
        assert key_stat == "600 root:root"
        c.systemctl("enable", "--now", "relay.target")
        # relay.target was already running since the install, so `enable --now` changes nothing;
        # the new config and key are loaded by the restart README.Debian step 2 asks for.
        c.systemctl("restart", "relay.target")
        wait_running(c)
        assert "MISSING" not in c.run(["relay", "status"]).stdout

        submit(c, "session-1", "first envelope after install")
        assert take(c, "session-1") == "ack: [from session-1] first envelope after install"
        (call,) = api.message_calls()
        assert call.status == 200  # the stand-in accepts only KEY: it came from the credstore
        assert c.show(CONVERSATION, "NRestarts") == "0"
        # ntfy is off in this config (server: null): the subscriber had nothing to do, said
        # so and exited 0 after READY=1; not failed, not restarted, no alert.
        assert c.show(ANSWERS, "ActiveState") == "inactive"
        assert c.show(ANSWERS, "Result") == "success"
        assert c.show(ANSWERS, "NRestarts") == "0"
        assert "ntfy.server is null" in c.journal("-u", ANSWERS, "-o", "cat")
        alerts = c.systemctl("list-units", "--failed", "--no-legend", "relay*").stdout
        assert alerts.strip() == "", alerts


# ----- 2. users -------------------------------------------------------------------------------


def test_clients_group_submits_and_reads_its_replies_others_cannot(
    relay_deb: Path, api: StandinAPI
) -> None:
    with installed(relay_deb) as c:
        # `relay submit` reads the config, so clients must be able to: it holds no secrets.
        assert c.run(["stat", "-c", "%a %U:%G", CONFIG_PATH]).stdout.strip() == "644 root:root"
        configure(c, api)
        c.run(["useradd", "-m", "-G", "relay-clients", "alice"])
        c.run(["useradd", "-m", "bob"])
        assert as_user(c, "alice", "cat", CONFIG_PATH).returncode == 0

        # alice (relay-clients) submits, reads her reply and deletes it.
        done = as_user(c, "alice", "relay", "submit", "--session", "session-1", "-", input="hi")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{DATA}/queue/"), done.stdout
        wait_input(c, "session-1")
        reply = as_user(c, "alice", "cat", f"{DATA}/dispatch/session-1/input.txt")
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout == "ack: [from session-1] hi"
        gone = as_user(c, "alice", "rm", f"{DATA}/dispatch/session-1/input.txt")
        assert gone.returncode == 0, gone.stderr
        assert not c.exists(f"{DATA}/dispatch/session-1/input.txt")

        # state/ is relay's alone, for alice too (`relay status` needs root).
        for cmd in (["ls", f"{DATA}/state"], ["cat", f"{DATA}/state/status.json"]):
            denied = as_user(c, "alice", *cmd)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        denied = as_user(c, "alice", "relay", "status")
        assert denied.returncode == 1, denied
        # One line that says what to do, no traceback.
        assert denied.stderr.startswith("relay: permission denied: ") and "sudo" in denied.stderr
        assert denied.stderr.count("\n") == 1, denied

        # bob (not in relay-clients) cannot submit: one clear line, exit 1, nothing queued or sent.
        refused = as_user(c, "bob", "relay", "submit", "--session", "session-1", "-", input="x")
        assert refused.returncode == 1, refused
        assert refused.stderr.startswith("relay: ") and refused.stderr.count("\n") == 1, refused
        assert "permission denied" in refused.stderr and "relay-clients" in refused.stderr
        assert queued(c) == []
        # ... and cannot read anyone's dispatch files, even with a reply waiting there.
        submit(c, "session-1", "for alice only")
        wait_input(c, "session-1")
        for cmd in (
            ["cat", f"{DATA}/dispatch/session-1/input.txt"],
            ["ls", f"{DATA}/dispatch/session-1"],
            ["ls", f"{DATA}/dispatch"],
            ["ls", f"{DATA}/queue"],
        ):
            denied = as_user(c, "bob", *cmd)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, (cmd, denied)
        assert as_user(c, "alice", "cat", f"{DATA}/dispatch/session-1/input.txt").stdout == (
            "ack: [from session-1] for alice only"
        )
        assert len(api.message_calls()) == 2


# ----- 3. upgrade -----------------------------------------------------------------------------


def test_upgrade_keeps_history_pending_replies_queue_topic_and_config(
    relay_deb: Path, relay_deb_upgrade: Path, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    with installed(relay_deb) as c:
        # ntfy on (both topics generated, kept in state/), so the answer subscriber runs.
        configure(c, api, ntfy=ntfy)
        ntfy.wait_for_subscribers(1, timeout=15)
        submit(c, "session-2", "before the upgrade")
        assert take(c, "session-2") == "ack: [from session-2] before the upgrade"

        # Three replies for session-1, none read: one delivered, two pending.
        for n in (1, 2, 3):
            submit(c, "session-1", f"pending {n}")
        c.wait_for(
            lambda: status(c).get("pending", {}).get("session-1") == 2,
            what="two replies pending behind session-1's input.txt",
        )
        assert c.read_file(f"{DATA}/dispatch/session-1/input.txt") == (
            "ack: [from session-1] pending 1"
        )

        # One envelope left in queue/: the watcher is stopped (and its lingering handler done).
        c.systemctl("stop", "relay-queue.path")
        c.wait_for(
            lambda: c.show("relay-queue.service", "ActiveState") in ("inactive", "failed"),
            what="relay-queue.service finished",
        )
        submit(c, "session-2", "queued across the upgrade")
        time.sleep(1)
        (waiting,) = queued(c)

        # The admin edits the conffile (not applied yet: no restart).
        edit = 'printf "# tuned by the admin\\nmax_tokens: 2048\\n" >> "$1"'
        c.run(["sh", "-c", edit, "sh", CONFIG_PATH])
        config_sum = sha256(c, CONFIG_PATH)
        topic = c.run(["relay", "topic"]).stdout
        assert re.search(r"^topic: +relay-", topic, re.MULTILINE), topic
        # The answer topic, generated too: phones publish answers there.
        assert re.search(r"^answer topic: +relay-answers-", topic, re.MULTILINE), topic
        history = c.read_file(HISTORY)
        turns = lines(c, HISTORY)
        assert turns == 4
        before = invocations(c)
        old_pid = c.show(CONVERSATION, "MainPID")
        calls = len(api.message_calls())
        assert calls == 4

        started = time.monotonic()
        upgrade = apt(c, "install", "--no-install-recommends", copy_deb(c, relay_deb_upgrade))
        print(f"upgrade took {time.monotonic() - started:.1f}s")
        out = upgrade.stdout + upgrade.stderr
        assert "Unpacking relay (0.1.0-2) over (0.1.0-1)" in out, out
        version = c.run(["dpkg-query", "-W", "-f", "${Version}", "relay"]).stdout
        assert version == "0.1.0-2"

        # The edited conffile is untouched and dpkg did not ask about it.
        assert sha256(c, CONFIG_PATH) == config_sum
        assert "Configuration file" not in out, out
        leftovers = c.run(["sh", "-c", "ls -A /etc/relay"]).stdout.split()
        assert leftovers == ["config.yaml"]

        # Every unit was restarted and runs the new files (no replaced library still mapped).
        wait_running(c)
        after = invocations(c)
        for unit in UNITS:
            assert after[unit] != before[unit], f"{unit} was not restarted by the upgrade"
            assert c.show(unit, "ActiveState") == "active", unit
        new_pid = c.show(CONVERSATION, "MainPID")
        assert new_pid != old_pid
        assert deleted_mappings(c, new_pid) == []
        assert deleted_mappings(c, c.show(ANSWERS, "MainPID")) == []
        # prerm removed the old bytecode, postinst compiled the new files.
        pyc = c.run(["find", "/usr/lib/relay/lib", "-path", "*/relay/__pycache__/cli.*.pyc"])
        assert pyc.stdout.strip(), "no bytecode after the upgrade"

        # The queued envelope is answered, with the edited config (max_tokens) in force.
        assert take(c, "session-2") == "ack: [from session-2] queued across the upgrade"
        assert queued(c) == []
        assert not c.exists(f"{DATA}/queue/{waiting}")
        newest = api.message_calls()[-1]
        assert newest.body["max_tokens"] == 2048

        # History: the old turns untouched, one more appended. Same topic.
        assert c.read_file(HISTORY).startswith(history)
        assert lines(c, HISTORY) == turns + 1
        assert c.run(["relay", "topic"]).stdout == topic

        # The pending replies appear one at a time, in order, as input.txt is deleted.
        for n in (1, 2, 3):
            assert take(c, "session-1") == f"ack: [from session-1] pending {n}"
        time.sleep(0.5)
        assert not c.exists(f"{DATA}/dispatch/session-1/input.txt")
        assert status(c)["pending"] == {"session-1": 0, "session-2": 0}
        # Nothing was asked twice: 4 calls before the upgrade, 1 after.
        assert len(api.message_calls()) == calls + 1


def test_upgrade_leaves_a_disabled_relay_disabled_and_stopped(
    relay_deb: Path, relay_deb_upgrade: Path
) -> None:
    """README.Debian: `systemctl disable --now relay.target` is kept across upgrades."""
    with installed(relay_deb) as c:
        c.systemctl("disable", "--now", "relay.target")
        # systemctl waits for the target's stop job; the members follow through PartOf=.
        c.wait_for(
            lambda: all(c.show(u, "ActiveState") == "inactive" for u in UNITS),
            what="every relay unit stopped",
        )
        apt(c, "install", "--no-install-recommends", copy_deb(c, relay_deb_upgrade))
        assert c.run(["dpkg-query", "-W", "-f", "${Version}", "relay"]).stdout == "0.1.0-2"
        assert c.systemctl("is-enabled", "relay.target", check=False).stdout.strip() == "disabled"
        for unit in UNITS:
            assert c.show(unit, "ActiveState") == "inactive", unit


# ----- 4. remove and purge --------------------------------------------------------------------


def test_remove_keeps_config_and_data_purge_deletes_them_and_keeps_the_key(
    relay_deb: Path, api: StandinAPI
) -> None:
    with installed(relay_deb) as c:
        configure(c, api)
        submit(c, "session-1", "to be kept")
        assert take(c, "session-1") == "ack: [from session-1] to be kept"
        history = c.read_file(HISTORY)
        config_sum = sha256(c, CONFIG_PATH)
        doc = c.run(["zcat", "/usr/share/doc/relay/README.Debian.gz"]).stdout
        doc = " ".join(doc.split())
        # What the package promises, which the rest of this test holds it to.
        assert '"apt remove relay" stops the units and keeps the configuration and the data' in doc
        assert '"apt purge relay" also deletes /etc/relay and /var/lib/relay' in doc
        assert "The relay user and group, /etc/credstore and the key stay." in doc

        apt(c, "remove", "relay")
        state = c.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "relay"]).stdout
        assert state.strip() == "rc"
        for unit in UNITS:
            assert c.show(unit, "ActiveState") == "inactive", unit
        assert c.run(["pgrep", "-u", "relay"], check=False).returncode == 1  # no relay process
        listed = c.systemctl("list-unit-files", "--no-legend", "relay*", check=False).stdout
        assert listed.strip() == "", listed
        for path in ("/usr/lib/relay", "/usr/bin/relay", "/lib/systemd/system/relay.target"):
            assert not c.exists(path), path
        assert c.read_file(HISTORY) == history
        assert sha256(c, CONFIG_PATH) == config_sum
        assert c.exists(KEY_PATH)

        apt(c, "purge", "relay")
        assert c.run(["dpkg-query", "-W", "relay"], check=False).returncode != 0
        units = c.run(["sh", "-c", "ls -d /lib/systemd/system/relay* 2>/dev/null"], check=False)
        assert units.stdout == ""
        for path in (
            "/etc/relay",
            DATA,
            "/etc/systemd/system/multi-user.target.wants/relay.target",
        ):
            assert not c.exists(path), path
        # The key is the admin's: left in place, unread and unchanged.
        assert c.read_file(KEY_PATH) == KEY + "\n"
        assert c.run(["stat", "-c", "%a %U:%G", KEY_PATH]).stdout.strip() == "600 root:root"
        assert c.run(["getent", "passwd", "relay"], check=False).returncode == 0


# ----- 5. lintian -----------------------------------------------------------------------------


def test_lintian_finds_no_errors_or_warnings(relay_deb: Path) -> None:
    (changes,) = relay_deb.parent.glob("relay_*.changes")
    done = subprocess.run(
        ["lintian", "--fail-on", "error,warning", str(changes)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout, done.stderr)
    assert done.returncode == 0, f"lintian:\n{done.stdout}\n{done.stderr}"


# ----- 6. autopkgtest ---------------------------------------------------------------------------


def _source_tree() -> bytes:
    """The source package's files (what autopkgtest unpacks into the testbed), as a tar."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names:
            path = ROOT / name.decode()
            if name and path.is_file():
                tar.add(path, arcname=name.decode(), recursive=False)
    return buffer.getvalue()


def test_autopkgtest_smoke_passes(relay_deb: Path) -> None:
    control = (ROOT / "debian/tests/control").read_text()
    assert "Tests: smoke" in control and "needs-root" in control
    src = "/srv/autopkgtest/relay"
    with installed(relay_deb) as c:
        # As autopkgtest does: the unbuilt source tree in the testbed, read-only, as the cwd;
        # a fresh $AUTOPKGTEST_TMP; the test run as root (needs-root); stderr allowed.
        c.run(["mkdir", "-p", src])
        c.run(["tar", "-x", "-C", src], input=_source_tree())
        c.run(["mount", "--bind", src, src])
        c.run(["mount", "-o", "remount,bind,ro", src])
        tmp = c.run(["mktemp", "-d"]).stdout.strip()
        artifacts = c.run(["mktemp", "-d"]).stdout.strip()
        started = time.monotonic()
        done = c.run(
            ["sh", "-c", 'cd "$1" && exec debian/tests/smoke', "sh", src],
            check=False,
            timeout=180,
            env={
                "AUTOPKGTEST_TMP": tmp,
                "ADTTMP": tmp,
                "AUTOPKGTEST_ARTIFACTS": artifacts,
                "ADT_ARTIFACTS": artifacts,
                "DEBIAN_FRONTEND": "noninteractive",
            },
        )
        print(f"smoke took {time.monotonic() - started:.1f}s\n{done.stdout}")
        assert done.returncode == 0, f"smoke failed:\n{done.stdout}\n{done.stderr}"
        assert "PASS: envelope dispatched to session-1" in done.stdout
        # It cleaned up after itself: the shipped config is back, no key left behind.
        shipped = (ROOT / "packaging/config.yaml").read_bytes()
        assert sha256(c, CONFIG_PATH) == hashlib.sha256(shipped).hexdigest()
        assert not c.exists(KEY_PATH)
