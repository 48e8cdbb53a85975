"""The command line (README: Command line). The only place that exits the process.

Exit codes: 0 ok, 2 usage or configuration error (one line, no traceback), 3 state relay
cannot read safely (`relay serve` is not restarted on it), 1 otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

from relay import __version__, fsutil
from relay.config import Config, config_path, load_config
from relay.errors import RelayError, StateError, UsageError
from relay.layout import Layout

REPLY_WAIT_S = 10.0
OPERATOR_HINT = (
    "relay status, costs, topic and reply are for root and the relay-operators group: "
    "sudo usermod -aG relay-operators $USER, then log in again"
)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(f"{self.prog}: {message}")

    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="configuration file (default: $RELAY_CONFIG or /etc/relay/config.yaml)",
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)

    parser = _Parser(
        prog="relay",
        parents=[common],
        description="Carry messages between Claude Code sessions and a "
        "coordinating Claude conversation.",
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("run", parents=[common], help="everything in one foreground process")
    sub.add_parser("serve", parents=[common], help="the conversation service (systemd unit)")
    sub.add_parser("subscribe", parents=[common], help="take answers from the phone (systemd unit)")
    status = sub.add_parser("status", parents=[common], help="show state, pending, cost")
    status.add_argument("--json", action="store_true", help="print status.json as JSON")
    costs = sub.add_parser("costs", parents=[common], help="what the API calls cost, and where")
    costs.add_argument("--since", metavar="DATE", help="from this day on (YYYY-MM-DD)")
    costs.add_argument("--until", metavar="DATE", help="up to and including this day")
    costs.add_argument(
        "--by", choices=["day", "session", "model", "kind"], default="day", help="one row per"
    )
    costs.add_argument("--json", action="store_true", help="the report as JSON")
    sub.add_parser(
        "topic", parents=[common], help="print the ntfy topics, and where to subscribe and answer"
    )
    submit = sub.add_parser("submit", parents=[common], help="queue an envelope atomically")
    submit.add_argument("--session", required=True, help="the sending session id")
    submit.add_argument("--id", dest="envelope_id", help="unique id: resubmitting it is a no-op")
    submit.add_argument("file", nargs="?", default="-", help="content file, or - for stdin")
    reply = sub.add_parser("reply", parents=[common], help="write operator input atomically")
    reply.add_argument(
        "text",
        nargs="?",
        default="-",
        help="the text ('@session-N: ...' goes straight to that session), or - for stdin",
    )
    intake_p = sub.add_parser("intake", parents=[common], help="what the path units run")
    intake_p.add_argument("what", choices=["queue", "jc"])
    intake_p.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="queue: keep taking new envelopes until quiet this long",
    )
    reload_p = sub.add_parser(
        "reload", parents=[common], help="re-read the configuration without a restart"
    )
    reload_p.add_argument(
        "--pid", type=int, metavar="PID", help="signal this process (what ExecReload= passes)"
    )
    alert = sub.add_parser("alert", parents=[common], help="push an ntfy alert that UNIT failed")
    alert.add_argument("unit")
    from relay.cc.cli import add_parser as add_cc

    add_cc(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if len(args_list) == 3 and args_list[:2] == ["cc", "hook"]:
        # Runs on every turn of every Claude Code session: no argparse, no parser build.
        from relay.cc import hooks

        code = hooks.main(args_list[2], sys.stdin, os.environ)
        if argv is None:  # the console script: skip the interpreter's ~10 ms teardown
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        return code
    try:
        args = build_parser().parse_args(args_list)
        return dispatch(args)
    except UsageError as exc:
        print(f"relay: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except RelayError as exc:
        print(f"relay: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except PermissionError as exc:
        # Expected on a packaged install: state/ is for relay, root and relay-operators
        # (status, topic), queue/ and dispatch/ for relay-clients.
        where = exc.filename or "a file"
        print(
            f"relay: permission denied: {where} ({OPERATOR_HINT}; submitting needs the "
            "relay-clients group)",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:
        return 1
    except OSError as exc:
        # A data_dir that is a file, a read-only file system, a full disk at start: one
        # line naming the path, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"relay: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _config(args: argparse.Namespace) -> Config:
    return load_config(config_path(getattr(args, "config", None), os.environ))


def dispatch(args: argparse.Namespace) -> int:
    from relay import log as relay_log

    verbose = bool(getattr(args, "verbose", False))
    command = args.command
    if command in ("run", "serve"):
        return _serve(args, with_intake=command == "run", verbose=verbose)
    if command == "subscribe":
        return _subscribe(args, verbose=verbose)
    if command == "cc":
        from relay.cc.cli import dispatch as cc_dispatch

        return cc_dispatch(args, os.environ)
    if command == "reload":
        return _reload(args)
    config = _config(args)
    if command == "intake":
        relay_log.setup(f"relay-{'queue' if args.what == 'queue' else 'jc'}", verbose=verbose)
        return _intake(config, args.what, args.linger)
    if command == "status":
        return _status(config, as_json=args.json)
    if command == "costs":
        return _costs(config, args)
    if command == "topic":
        return _topic(config)
    if command == "submit":
        return _submit(config, args.session, args.file, args.envelope_id)
    if command == "reply":
        return _reply(config, args.text)
    if command == "alert":
        relay_log.setup("relay-alert", verbose=verbose)
        return _alert(config, args.unit)
    raise UsageError(f"unknown command {command!r}")


def _serve(args: argparse.Namespace, *, with_intake: bool, verbose: bool) -> int:
    from relay import log as relay_log

    relay_log.setup("relay-run" if with_intake else "relay-conversation", verbose=verbose)
    config = _config(args)
    from relay.service import Service, install_signal_handlers

    try:
        service = Service(config, with_intake=with_intake)
        install_signal_handlers(service)
        return service.run()
    except StateError as exc:
        restart = "start relay run again" if with_intake else "systemctl restart relay.target"
        _report_failed(Layout(config.data_dir), exc, restart)
        raise


def _subscribe(args: argparse.Namespace, *, verbose: bool) -> int:
    import logging
    import signal

    from relay import log as relay_log
    from relay import systemd

    relay_log.setup("relay-answers", verbose=verbose)
    config = _config(args)
    sd = systemd.Notifier(os.environ)
    if config.ntfy.server is None:
        logging.getLogger(__name__).info(
            "ntfy.server is null in the config: no answers to take, nothing to do"
        )
        sd.ready("ntfy is off (ntfy.server: null)")
        return 0
    from relay.subscriber import Subscriber

    subscriber = Subscriber(config, Layout(config.data_dir), os.environ)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: subscriber.stop())
    sd.ready("taking answers from the answer topic")
    try:
        return subscriber.run()
    finally:
        sd.stopping()
        sd.close()


def _report_failed(layout: Layout, exc: StateError, restart: str) -> None:
    """Say in the journal and in status.json that relay stopped on state it cannot read
    safely, and what to do: restarting alone cannot help, so systemd does not (exit code 3,
    RestartPreventExitStatus=) and `relay status` keeps saying so."""
    import logging
    from datetime import UTC, datetime

    from relay import log as relay_log
    from relay import status as status_file

    detail = f"{exc.message}; then {restart}"
    relay_log.event(
        logging.getLogger(__name__), "state_error", "stopped: %s", detail, level=logging.ERROR
    )
    try:
        current = json.loads(fsutil.read_regular(layout.status, 1 << 20))
    except (OSError, ValueError, RecursionError):
        current = None
    report = current if isinstance(current, dict) else {}
    report.update(
        state="failed",
        state_detail=detail,
        last_error=exc.message,
        pid=os.getpid(),
        updated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )
    with contextlib.suppress(OSError):  # the journal has it either way
        status_file.write(layout.status, report)


def _reload(args: argparse.Namespace) -> int:
    """Check the file, then have the running relay read it again (relay/reload.py)."""
    from relay import reload
    from relay.errors import ConfigError

    path = config_path(getattr(args, "config", None), os.environ)
    try:
        config = load_config(path)
    except ConfigError as exc:
        # Every problem on a line of its own; nothing is sent, relay keeps what it runs.
        print(f"relay: {exc.source} is not valid, nothing was reloaded:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return exc.exit_code
    layout = Layout(config.data_dir)
    if args.pid is not None:
        result = reload.signal_and_wait(layout, args.pid)
    else:
        how, pid = reload.find_target(layout)
        if how == "systemd":
            result = reload.through_systemd(layout, pid)
        else:
            result = reload.signal_and_wait(layout, pid)
    if not result.ok:
        print(
            "relay: the new configuration was refused; relay keeps running on the old one:",
            file=sys.stderr,
        )
        for error in result.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    print(f"relay: reloaded ({reload.summary(result.changed)})")
    return 0


def _intake(config: Config, what: str, linger_s: float) -> int:
    from relay import intake

    layout = Layout(config.data_dir)
    if what == "queue":
        result = intake.drain_queue_lingering(config, layout, linger_s)
    else:
        from relay import operator_drop

        # state/jc_input.txt first, then each reply operators left in operator/.
        result = operator_drop.drain(layout, intake.drain_operator)
    # One summary line on stdout: stream logging keeps the unit name even if the process
    # exits before journald reads it (docs/systemd.md §3.2).
    print(f"intake {what}: {len(result.accepted)} accepted, {len(result.rejected)} rejected")
    return 0


def _status(config: Config, *, as_json: bool) -> int:
    from relay import status as status_file

    layout = Layout(config.data_dir)
    try:
        current = status_file.read(layout.status)
    except FileNotFoundError:
        raise RelayError(
            f"no status yet: {layout.status} does not exist "
            "(has relay run with this configuration?)"
        ) from None
    except PermissionError:
        raise
    except (OSError, ValueError) as exc:
        raise RelayError(f"cannot read {layout.status}: {exc}") from exc
    health = status_file.unit_health()
    final = current.get("state") in ("stopped", "failed")  # written by relay as it exited
    if not final and not status_file.pid_alive(current.get("pid")):
        # The writer died without saying so (SIGKILL, power loss): don't claim it runs.
        current["state_detail"] = f"not running (last seen {current.get('state')}, pid gone)"
        current["state"] = "stopped"
        current["stale"] = True
    if as_json:
        if health is not None:
            current["units"] = health
        print(json.dumps(current, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(status_file.format_status(current, health))
    return 0


def _costs(config: Config, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from relay import costs

    try:
        since = costs.parse_date(args.since, "--since") if args.since else None
        until = costs.parse_date(args.until, "--until") if args.until else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if since and until and since > until:
        raise UsageError(f"--since {since} is after --until {until}")
    query = costs.Query(args.by, since, until, config.budget.zone)
    report = costs.read_ledger(Layout(config.data_dir).ledger, query, config, datetime.now(UTC))
    out, err = costs.render_text(report)
    sys.stdout.write(costs.render_json(report) if args.json else out)
    sys.stderr.write(err)  # damaged lines: in the JSON too, and said on stderr either way
    return 0


def _topic(config: Config) -> int:
    from relay.topic import may_create, resolve_reply_topic, resolve_topic, subscribe_url

    layout = Layout(config.data_dir)
    create = may_create(layout)
    topic = resolve_topic(config, layout, create=create)
    reply_topic = resolve_reply_topic(config, layout, create=create)
    if topic is None:
        raise RelayError(
            f"no ntfy topic yet in {layout.topic}: relay makes one when it starts with "
            "ntfy.server set; or make it now with sudo relay topic"
        )
    print(f"topic:        {topic}")
    print(f"subscribe:    {subscribe_url(config, topic)}   (in the ntfy app, for the questions)")
    if reply_topic is None:
        print(
            f"answer topic: none yet in {layout.reply_topic} (relay makes one when it "
            "starts; or sudo relay topic)"
        )
    else:
        print(f"answer topic: {reply_topic}")
        print(
            f"answer at:    {subscribe_url(config, reply_topic)}   (the web app, in a phone "
            "browser: type an answer and send it)"
        )
    if config.ntfy.server is None:
        print("note:         ntfy.server is null in the config, so no pushes are sent")
    return 0


def _read_input(source: str, what: str) -> str:
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} from {source}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} is not valid UTF-8") from None


def _submit(config: Config, session: str, source: str, envelope_id: str | None) -> int:
    from relay.client import check_session, submit

    check_session(config, session)
    print(submit(config, session, _read_input(source, "content"), envelope_id))
    return 0


def _reply(config: Config, text: str) -> int:
    body = _read_input(text, "reply") if text == "-" else text
    if not body.strip():
        raise UsageError("refusing to send an empty reply")
    layout = Layout(config.data_dir)
    try:
        os.stat(layout.state)
    except PermissionError:
        raise _reply_denied(layout) from None
    except FileNotFoundError:
        raise RelayError(
            f"{layout.state} does not exist: is relay installed, and is data_dir in the "
            "config right?"
        ) from None
    if os.access(layout.state, os.W_OK | os.X_OK):
        _reply_to_state(layout, body)  # root; or, in development, relay's own user
    else:
        _reply_to_drop(layout, body)  # a member of relay-operators
    return 0


def _reply_denied(layout: Layout) -> RelayError:
    return RelayError(
        f"cannot write to {layout.operator_drop}: permission denied; only root and "
        "members of the relay-operators group may reply (sudo usermod -aG relay-operators "
        "$USER, then log in again)"
    )


def _reply_to_drop(layout: Layout, body: str) -> None:
    """Leave the reply in operator/, which relay moves to state/jc_input.txt in turn: no
    waiting here, and no reply, root's or another operator's, is ever replaced."""
    from relay import operator_drop

    try:
        operator_drop.write_reply(layout, body.encode("utf-8"))
    except PermissionError:
        raise _reply_denied(layout) from None
    except FileNotFoundError:
        raise RelayError(
            f"{layout.operator_drop} does not exist: only root may reply here (sudo relay "
            "reply); relay's package creates it for the relay-operators group"
        ) from None


def _reply_to_state(layout: Layout, body: str) -> None:
    """Write state/jc_input.txt (the contract), never replacing one not yet consumed."""
    from relay import operator_drop

    if not operator_drop.write_jc_input(layout, body.encode("utf-8"), REPLY_WAIT_S):
        raise RelayError(
            f"{layout.jc_input} still holds an earlier reply that relay has not consumed; "
            "is relay running?"
        )


def _alert(config: Config, unit: str) -> int:
    from relay.config import find_ntfy_token
    from relay.ntfy import Push, post
    from relay.topic import resolve_topic

    topic = resolve_topic(config, Layout(config.data_dir), create=False)
    if not config.ntfy.server or not topic:
        print(f"relay alert: {unit} failed, but ntfy is not configured", file=sys.stderr)
        return 0
    push = Push(
        f"relay: {unit} failed",
        f"{unit} failed. See: journalctl -u {unit}\nRecover with: "
        f"systemctl reset-failed {unit} && systemctl start relay.target",
        "urgent",
        ("rotating_light", "relay"),
    )
    try:
        token, _ = find_ntfy_token(config, os.environ)
        post(config.ntfy.server, topic, push, config.ntfy.timeout_s, token)
    except OSError as exc:
        raise RelayError(f"could not send the alert for {unit}: {exc}") from exc
    return 0
