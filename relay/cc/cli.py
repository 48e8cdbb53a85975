"""`relay cc …`: the Claude Code side on the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.errors import RelayError, UsageError

if TYPE_CHECKING:
    from relay.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    cc = sub.add_parser("cc", parents=[common], help="connect Claude Code to relay")
    cc_sub = cc.add_subparsers(dest="cc_command", metavar="COMMAND", parser_class=type(cc))
    cc_sub.required = True
    for name, text in (
        ("install", "install relay's Claude Code plugin (or hooks), bind a project"),
        ("uninstall", "reverse `relay cc install` with the same options"),
    ):
        p = cc_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--scope", choices=("user", "project"), default="user")
        p.add_argument("--project", metavar="DIR", type=Path, help="the project directory")
        p.add_argument("--session", metavar="ID", help="bind --project to this relay session")
        p.add_argument(
            "--settings",
            action="store_true",
            help="merge the hooks into the scope's settings.json instead of using the plugin",
        )
    status = cc_sub.add_parser("status", parents=[common], help="what is installed and attached")
    status.add_argument("--json", action="store_true")
    run = cc_sub.add_parser("run", parents=[common], help="interactive claude bound to a session")
    run.add_argument("--session", metavar="ID", required=True)
    run.add_argument("claude_args", nargs=argparse.REMAINDER, help="-- arguments for claude")
    worker = cc_sub.add_parser("worker", parents=[common], help="a headless claude for a session")
    worker.add_argument("--session", metavar="ID", required=True)
    worker.add_argument("--task", metavar="TEXT", help="its first message")
    worker.add_argument("claude_args", nargs=argparse.REMAINDER, help="-- arguments for claude")
    hook = cc_sub.add_parser("hook", parents=[common], help="what the Claude Code hooks run")
    hook.add_argument("event", help="session-start, deliver, prompt, stop or session-end")


def _claude_args(args: argparse.Namespace) -> list[str]:
    rest = list(args.claude_args or [])
    return rest[1:] if rest[:1] == ["--"] else rest


def _config_file(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    from relay.config import config_path

    return config_path(getattr(args, "config", None), environ)


def dispatch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    command = args.cc_command
    if command == "hook":
        from relay.cc import hooks

        return hooks.main(args.event, sys.stdin, environ)
    if command in ("install", "uninstall"):
        return _install(args, environ)
    if command == "status":
        return _status(args, environ)
    if command == "run":
        return _run(args, environ)
    if command == "worker":
        return _worker(args, environ)
    raise UsageError(f"unknown command cc {command}")


def _install(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from relay.cc import install

    config = getattr(args, "config", None)
    if args.session is not None:
        from relay.client import check_session
        from relay.config import load_config

        check_session(load_config(_config_file(args, environ)), args.session)
    request = install.Request(
        scope=args.scope,
        project=args.project.resolve() if args.project else None,
        session=args.session,
        settings=args.settings,
        config=Path(config) if config else None,
    )
    action = install.install if args.cc_command == "install" else install.uninstall
    for line in action(request, environ):
        print(line)
    return 0


def _require_claude(environ: Mapping[str, str]) -> str:
    from relay.cc.install import claude_binary

    claude = claude_binary(environ)
    if claude is None:
        where = environ.get("RELAY_CLAUDE") or "claude on PATH"
        raise RelayError(
            f"cannot find Claude Code ({where}): install it (npm install -g "
            "@anthropic-ai/claude-code) or set RELAY_CLAUDE to its path"
        )
    return claude


def _bound_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    from relay.client import check_connected, check_session
    from relay.config import load_config

    config = load_config(_config_file(args, environ))
    check_session(config, args.session)
    check_connected(config, args.session)
    return config


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from relay.cc import identity, install

    config = _bound_config(args, environ)
    claude = _require_claude(environ)
    env = {k: v for k, v in environ.items() if k not in ("CLAUDECODE", identity.WORKER_ENV)}
    env[identity.SESSION_ENV] = args.session
    env[identity.PID_ENV] = str(os.getpid())  # execve keeps it: claude will be this PID
    env["RELAY_CONFIG"] = str((config.source or _config_file(args, environ)).resolve())
    argv = [claude, *_claude_args(args)]
    project = Path.cwd()
    if not hooks_present(environ, project):
        # Not installed: load the plugin for this one session, so `run` works regardless.
        argv[1:1] = ["--plugin-dir", str(install.plugin_dir(environ))]
    os.execve(claude, argv, env)
    return 1  # not reached


def hooks_present(environ: Mapping[str, str], project: Path) -> bool:
    from relay.cc import install

    for scope, where in (("user", None), ("project", project)):
        if install.plugin_enabled(environ, scope, where):
            return True
        if install.settings_hooks_installed(install.settings_file(scope, environ, where)):
            return True
    return False


def _worker(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from relay.cc.worker import Worker

    config = _bound_config(args, environ)
    worker = Worker(
        config,
        args.session,
        claude=_require_claude(environ),
        claude_args=_claude_args(args),
        environ=environ,
        task=args.task,
    )
    return worker.run()


def _status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    report = status_report(args, environ)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    plugin = report["plugin"]
    print(f"claude:        {report['claude'] or 'not found (set RELAY_CLAUDE or PATH)'}")
    print(f"plugin source: {plugin['source'] or '-'}")
    scopes = ", ".join(plugin["installed"]) or "not installed"
    print(f"plugin:        {scopes}")
    print(f"settings hooks: {', '.join(report['settings_hooks']) or '-'}")
    print("bound projects:")
    for binding in report["bindings"] or [{"project": "-", "session": ""}]:
        print(f"  {binding['project']}  {binding['session']}")
    print("sessions:")
    for name, info in sorted(report["sessions"].items()):
        attached = (
            ", ".join(f"{a['kind']} pid {a['pid']}" for a in info["attached"]) or "none attached"
        )
        extra = " (reply waiting)" if info["reply_waiting"] else ""
        print(f"  {name}: {attached}{extra}")
    if report.get("config_error"):
        print(f"  ({report['config_error']})")
    return 0


def status_report(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    from relay.cc import identity, install
    from relay.cc.mailbox import Mailbox
    from relay.config import load_config
    from relay.layout import Layout

    try:
        source: str | None = str(install.marketplace_dir(environ))
    except RelayError:
        source = None
    project = Path.cwd()
    installed = [
        scope
        for scope, where in (("user", None), ("project", project))
        if install.plugin_installed(environ, scope, where)
        and install.plugin_enabled(environ, scope, where)
    ]
    settings_hooks = [
        str(path)
        for path in (
            install.settings_file("user", environ, None),
            install.settings_file("project", environ, project),
        )
        if install.settings_hooks_installed(path)
    ]
    bindings = [
        {"project": c["project"], "session": c["session"]}
        for c in install.Manifest(environ).bindings()
    ]
    here = identity.binding_file(project)
    if here.exists() and not any(b["project"] == str(project) for b in bindings):
        with_session = identity.read_binding_file(here)
        bindings.append({"project": str(project), "session": with_session["session"]})
    report: dict[str, Any] = {
        "claude": install.claude_binary(environ),
        "plugin": {"source": source, "installed": installed},
        "settings_hooks": settings_hooks,
        "bindings": bindings,
        "sessions": {},
    }
    try:
        config = load_config(_config_file(args, environ))
    except RelayError as exc:
        report["config_error"] = exc.message
        return report
    layout = Layout(config.data_dir)
    for session in config.sessions:
        mailbox = Mailbox(layout, session)
        report["sessions"][session] = {
            "attached": [
                {
                    "pid": a.owner.pid,
                    "kind": a.kind,
                    "cc_session": a.cc_session,
                    "cwd": a.cwd,
                    "since": a.since,
                }
                for a in mailbox.attached()
            ],
            "reply_waiting": mailbox.pending_reply(),
        }
    return report
