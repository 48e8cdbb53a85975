"""`relay cc install` / `uninstall` with the real `claude plugin` commands: installing twice
leaves the same bytes, uninstalling leaves the files as they were, and nobody else's hooks,
plugins or keys are touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.claudecode import cc_env, relay_cli, seed_home, tree_snapshot
from tests.relayproc import write_config

USER_SETTINGS: dict[str, Any] = {
    "theme": "dark",
    "zeta": 1,
    "hooks": {
        "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "echo mine"}]}]
    },
    "enabledPlugins": {"other@elsewhere": True},
}
PROJECT_SETTINGS: dict[str, Any] = {
    "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "echo project stop"}]}]},
    "env": {"A": "b"},
}


class Env:
    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.project = tmp / "project"
        seed_home(self.home, tmp)
        (self.home / ".claude").mkdir()
        # Not Claude Code's own key order or layout: reformatting would show.
        (self.home / ".claude" / "settings.json").write_text(json.dumps(USER_SETTINGS))
        (self.project / ".claude").mkdir(parents=True)
        (self.project / ".claude" / "settings.json").write_text(
            json.dumps(PROJECT_SETTINGS, indent=4)
        )
        config = write_config(tmp, "http://127.0.0.1:9")
        self.env = cc_env(self.home, "http://127.0.0.1:9", RELAY_CONFIG=str(config))

    def relay(self, *args: str) -> str:
        done = relay_cli(self.env, "cc", *args, cwd=self.project)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def snapshot(self) -> dict[str, tuple[str, int, bytes | str | None]]:
        return tree_snapshot(self.home, self.project)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def settings(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--scope", "project", "--project", "{project}"],
        ["--settings"],
        ["--scope", "project", "--project", "{project}", "--settings"],
        ["--project", "{project}", "--session", "session-1"],
        ["--scope", "project", "--project", "{project}", "--session", "session-2", "--settings"],
    ],
    ids=[
        "plugin-user",
        "plugin-project",
        "settings-user",
        "settings-project",
        "bind",
        "bind-settings",
    ],
)
def test_install_twice_is_a_no_op_and_uninstall_restores_every_byte(
    env: Env, options: list[str]
) -> None:
    args = [o.replace("{project}", str(env.project)) for o in options]
    before = env.snapshot()
    env.relay("install", *args)
    once = env.snapshot()
    assert once != before
    second = env.relay("install", *args)
    assert "already" in second
    assert env.snapshot() == once
    env.relay("uninstall", *args)
    after = env.snapshot()
    assert sorted(set(after) ^ set(before)) == []
    assert after == before


def test_plugin_install_keeps_the_user_s_own_settings(env: Env) -> None:
    env.relay("install")
    user = settings(env.home / ".claude" / "settings.json")
    assert user["theme"] == "dark" and user["hooks"] == USER_SETTINGS["hooks"]
    assert user["enabledPlugins"] == {"other@elsewhere": True, "relay@relay": True}
    status = json.loads(env.relay("status", "--json"))
    assert status["plugin"]["installed"] == ["user"]


def test_settings_hooks_are_merged_beside_the_user_s_own(env: Env) -> None:
    env.relay("install", "--settings")
    user = settings(env.home / ".claude" / "settings.json")
    assert user["hooks"]["PreToolUse"] == USER_SETTINGS["hooks"]["PreToolUse"]
    commands = [h["command"] for g in user["hooks"]["Stop"] for h in g["hooks"]]
    assert len(commands) == 1 and commands[0].endswith("/hooks/relay-hook stop")
    assert "${CLAUDE_PLUGIN_ROOT}" not in json.dumps(user)
    # A hook of the user's added after the install stays through the uninstall.
    user["hooks"]["Stop"].append({"hooks": [{"type": "command", "command": "echo later"}]})
    (env.home / ".claude" / "settings.json").write_text(json.dumps(user, indent=2))
    env.relay("uninstall", "--settings")
    left = settings(env.home / ".claude" / "settings.json")
    assert left["hooks"]["Stop"] == [{"hooks": [{"type": "command", "command": "echo later"}]}]
    assert left["hooks"]["PreToolUse"] == USER_SETTINGS["hooks"]["PreToolUse"]


def test_a_plugin_enabled_after_the_install_survives_the_uninstall(env: Env) -> None:
    env.relay("install")
    path = env.home / ".claude" / "settings.json"
    user = settings(path)
    user["enabledPlugins"]["third@party"] = True
    path.write_text(json.dumps(user, indent=2) + "\n")
    plugins = env.home / ".claude" / "plugins"
    registry = settings(plugins / "installed_plugins.json")
    registry["plugins"]["third@party"] = [{"scope": "user", "version": "1.0.0"}]
    (plugins / "installed_plugins.json").write_text(json.dumps(registry, indent=2))
    env.relay("uninstall")
    assert settings(plugins / "installed_plugins.json") == {
        "version": registry["version"],
        "plugins": {"third@party": [{"scope": "user", "version": "1.0.0"}]},
    }
    assert settings(path)["enabledPlugins"] == {"other@elsewhere": True, "third@party": True}
    assert "extraKnownMarketplaces" not in settings(path)


def test_without_claude_the_hooks_go_into_settings(env: Env) -> None:
    env.env["RELAY_CLAUDE"] = str(env.home / "no-such-claude")
    out = env.relay("install")
    assert "merging the hooks into settings.json instead" in out
    assert "relay-hook" in (env.home / ".claude" / "settings.json").read_text()


def test_bad_input_is_one_clear_line_and_changes_nothing(env: Env) -> None:
    path = env.home / ".claude" / "settings.json"
    path.write_text("{not json")
    before = env.snapshot()
    done = relay_cli(env.env, "cc", "install", "--settings", cwd=env.project)
    assert done.returncode == 1
    assert "is not valid JSON" in done.stderr and "Traceback" not in done.stderr
    assert env.snapshot() == before
    for args, message in (
        (["--session", "session-1"], "--session binds a project"),
        (["--scope", "project"], "--scope project needs --project DIR"),
        (["--project", "/nonexistent", "--session", "session-1"], "no such directory"),
        (["--project", str(env.project), "--session", "session-9"], "unknown session"),
    ):
        done = relay_cli(env.env, "cc", "install", *args, cwd=env.project)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr


def test_a_symlinked_settings_file_stays_a_link(env: Env) -> None:
    dotfiles = env.home / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "claude-settings.json"
    link = env.home / ".claude" / "settings.json"
    real.write_text(link.read_text())
    link.unlink()
    link.symlink_to("../dotfiles/claude-settings.json")
    for options in ([], ["--settings"]):
        before = env.snapshot()
        env.relay("install", *options)
        assert link.is_symlink() and "relay" in real.read_text()
        env.relay("uninstall", *options)
        assert env.snapshot() == before


def test_hooks_of_an_unknown_shape_are_refused_untouched(env: Env) -> None:
    path = env.home / ".claude" / "settings.json"
    values: list[Any] = [None, [], {"Stop": {"not": "a list"}}]
    for value in values:
        path.write_text(json.dumps({"hooks": value}))
        before = env.snapshot()
        done = relay_cli(env.env, "cc", "install", "--settings", cwd=env.project)
        assert done.returncode == 1, done.stderr
        assert '"hooks" must map each event' in done.stderr and "Traceback" not in done.stderr
        assert env.snapshot() == before


def test_a_plugin_path_is_quoted_for_the_shell(env: Env, tmp_path: Path) -> None:
    import shutil

    from tests.claudecode import ROOT

    odd = tmp_path / "it's $(touch pwned)"
    shutil.copytree(ROOT / "claude-code", odd)
    env.env["RELAY_CC_PLUGIN"] = str(odd)
    env.relay("install", "--settings")
    user = settings(env.home / ".claude" / "settings.json")
    command = user["hooks"]["Stop"][0]["hooks"][0]["command"]
    import shlex

    assert shlex.split(command) == [str(odd / "relay" / "hooks" / "relay-hook"), "stop"]
