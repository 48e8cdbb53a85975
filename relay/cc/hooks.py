"""The Claude Code hooks: what `relay cc hook EVENT` does, reading the hook's JSON on stdin.

- `session-start` (SessionStart): attach this process to its relay session and ask Claude
  Code to watch the session's input.txt; warn if another process is attached.
- `deliver` (SessionStart and FileChanged, asyncRewake): claim input.txt and exit 2 with
  the framed reply, so Claude Code wakes and takes it as its next turn.
- `prompt` (UserPromptSubmit): note that the turn now starting carries the reply.
- `stop` (Stop): submit the turn's last assistant message as the session's envelope, then
  consume the reply the turn took in.
- `stop-failure` (StopFailure: the turn ended on an API error): consume the reply the turn
  took in, since it is in the conversation now; nothing is submitted.
- `session-end` (SessionEnd): detach.

A hook never blocks or breaks the session: in an unbound project it does nothing, and any
problem is one line shown to the user (`systemMessage`) with exit status 0.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from relay import client
from relay.cc import identity
from relay.cc.mailbox import Mailbox, Reply, transcript_has
from relay.config import Config, load_config
from relay.errors import RelayError
from relay.layout import Layout

EVENTS = ("session-start", "deliver", "prompt", "stop", "stop-failure", "session-end")
MAX_INPUT = 16 * 1024 * 1024
START_GAP_S = 15.0
DELIVER_EXIT = 2  # asyncRewake: exit 2 hands stderr to the model and wakes an idle session


@dataclass(frozen=True)
class Outcome:
    exit_code: int = 0
    stdout: dict[str, Any] | None = None
    stderr: str = ""


def frame(session: str, reply: Reply) -> str:
    """The text the model sees. Claude Code labels hook text as not typed by the user; the
    frame says what it is instead: the coordinator's instruction for this session."""
    again = (
        " (offered again: the Claude Code process that first took it ended before acting on it)"
        if reply.reoffered
        else ""
    )
    return (
        f"Message from your coordinator (chat-Claude, through relay) for session "
        f"{session}{again}. Act on it as your next instruction:\n\n"
        f"{reply.text.rstrip()}\n\n[{reply.tag}]"
    )


def envelope_id(hook_input: Mapping[str, Any]) -> str | None:
    """A per-turn id, stable across repeats of the same hook call.

    Claude Code gives every submitted prompt (a typed one or a hook-woken turn) its own
    `prompt_id`, also on the Stop that ends it. The text is part of the id too: a turn
    that another Stop hook keeps going ends twice, with the same prompt_id and different
    text, and both ends are real. The transcript is not used: it can lag the Stop hook.
    Without a prompt_id there is no safe id, and no id is given (a repeat then costs one
    more turn instead of losing one).
    """
    prompt_id = hook_input.get("prompt_id")
    cc_session = hook_input.get("session_id")
    if not isinstance(prompt_id, str) or not prompt_id:
        return None
    text = str(hook_input.get("last_assistant_message") or "")
    digest = hashlib.sha256(f"{cc_session}\0{prompt_id}\0{text}".encode()).hexdigest()
    return f"cc-{digest[:32]}"


def _load(binding: identity.Binding) -> Config:
    try:
        config = load_config(binding.config)
    except RelayError as exc:
        raise RelayError(f"{exc.message} (is relay installed here?)") from None
    client.check_session(config, binding.session)
    return config


def _say(message: str) -> Outcome:
    return Outcome(stdout={"systemMessage": f"relay: {message}"})


def handle(
    event: str,
    hook_input: Mapping[str, Any],
    environ: Mapping[str, str],
    owner: identity.Process | None = None,
) -> Outcome:
    """Hook `event` for the Claude Code process `owner` (default: the one that ran us).

    Problems become one line for the user; a failed delivery is silent (its exit status
    would otherwise hand the error text to the model as an instruction)."""
    try:
        return _run(event, hook_input, environ, owner)
    except RelayError as exc:
        message = exc.message
    except OSError as exc:
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    except Exception as exc:  # a bug of ours must not break the user's session either
        import traceback  # here only: logging costs every hook run ~8 ms of imports

        traceback.print_exc()  # Claude Code keeps a hook's stderr in its debug log
        message = f"internal error in the {event} hook: {exc!r}"
    return _say(message) if event != "deliver" else Outcome()


def _run(
    event: str,
    hook_input: Mapping[str, Any],
    environ: Mapping[str, str],
    owner: identity.Process | None,
) -> Outcome:
    if environ.get(identity.WORKER_ENV):
        return Outcome()  # the headless worker does this work itself
    cwd = hook_input.get("cwd")
    owner = owner or identity.claude_process(environ)
    binding = identity.resolve(environ, cwd if isinstance(cwd, str) else None, owner)
    if binding is None:
        return Outcome()
    config = _load(binding)
    mailbox = Mailbox(Layout(config.data_dir), binding.session)
    cc_session = hook_input.get("session_id")
    cc_session = cc_session if isinstance(cc_session, str) else None
    if event == "session-start":
        return _session_start(binding, config, mailbox, owner, cc_session, str(cwd or ""))
    if owner is None:
        return _say("cannot tell which Claude Code process this is; not delivering replies")
    if event == "deliver":
        at_start = hook_input.get("hook_event_name") == "SessionStart"
        reply = _await_start(mailbox, owner, cc_session) if at_start else None
        reply = reply or mailbox.take(owner, cc_session)
        if reply is None:
            return Outcome()
        return Outcome(exit_code=DELIVER_EXIT, stderr=frame(binding.session, reply))
    if event == "prompt":
        prompt = hook_input.get("prompt")
        if isinstance(prompt, str):
            mailbox.mark_seen(owner, prompt)
        return Outcome()
    if event == "stop":
        return _stop(binding, config, mailbox, owner, hook_input)
    if event == "stop-failure":
        _consume(mailbox, owner, hook_input)
        return Outcome()
    if event == "session-end":
        mailbox.detach(owner)
        return Outcome()
    raise RelayError(f"unknown hook event {event!r} (one of {', '.join(EVENTS)})")


def _await_start(mailbox: Mailbox, owner: identity.Process, cc_session: str | None) -> Reply | None:
    """At start, Claude Code begins watching input.txt only once the session-start hook
    has answered; a reply that lands in between would wait for the next start. So the
    start's delivery hook keeps looking for START_GAP_S (or until Claude Code exits),
    by which time the watch has long been in place."""
    from inotify_simple import INotify
    from inotify_simple import flags as in_flags

    deadline = time.monotonic() + START_GAP_S
    with INotify() as inotify:
        inotify.add_watch(mailbox.directory, in_flags.CREATE | in_flags.MOVED_TO)
        while True:
            reply = mailbox.take(owner, cc_session)
            if reply is not None or time.monotonic() > deadline or not owner.alive():
                return reply
            inotify.read(timeout=250)


def _session_start(
    binding: identity.Binding,
    config: Config,
    mailbox: Mailbox,
    owner: identity.Process | None,
    cc_session: str | None,
    cwd: str,
) -> Outcome:
    client.check_connected(config, binding.session)
    others = [a for a in mailbox.attached() if owner is None or a.owner != owner]
    if owner is not None:
        mailbox.attach(owner, cc_session, "interactive", cwd)
    output: dict[str, Any] = {
        "hookSpecificOutput": {
            "hookEventName": "SessionStart",
            "watchPaths": [str(mailbox.input)],
            "additionalContext": (
                f"This Claude Code session is relay session {binding.session}: at the end "
                "of each turn your final message goes to your coordinator (chat-Claude), "
                "and the coordinator's replies arrive as hook messages that begin with "
                '"Message from your coordinator". Treat those as your instructions; they '
                "are not the user's approval of anything."
            ),
        }
    }
    if others:
        pids = ", ".join(str(a.owner.pid) for a in others)
        output["systemMessage"] = (
            f"relay: warning: another process (pid {pids}) is attached to {binding.session}; "
            "each reply goes to only one of you"
        )
    return Outcome(stdout=output)


def _stop(
    binding: identity.Binding,
    config: Config,
    mailbox: Mailbox,
    owner: identity.Process,
    hook_input: Mapping[str, Any],
) -> Outcome:
    text = hook_input.get("last_assistant_message")
    problem = None
    if isinstance(text, str) and text.strip():
        try:
            client.submit(config, binding.session, text, envelope_id(hook_input))
        except RelayError as exc:
            problem = f"this turn was not sent to {binding.session}: {exc.message}"
    try:
        _consume(mailbox, owner, hook_input)
    except OSError as exc:
        problem = problem or f"cannot use {mailbox.directory}: {exc.strerror}"
    return _say(problem) if problem else Outcome()


def _consume(mailbox: Mailbox, owner: identity.Process, hook_input: Mapping[str, Any]) -> None:
    transcript = hook_input.get("transcript_path")
    path = transcript if isinstance(transcript, str) else None
    mailbox.consume(owner, lambda tag: transcript_has(path, tag))


def main(event: str, stdin: TextIO, environ: Mapping[str, str]) -> int:
    """Run hook `event`; always exit 0 except for a delivery (2)."""
    try:
        raw = stdin.read(MAX_INPUT)
        hook_input = json.loads(raw) if raw.strip() else {}
        if not isinstance(hook_input, dict):
            hook_input = {}
    except (OSError, ValueError):
        hook_input = {}
    outcome = handle(event, hook_input, environ)
    if outcome.stdout is not None:
        print(json.dumps(outcome.stdout))
    if outcome.stderr:
        print(outcome.stderr, file=sys.stderr)
    return outcome.exit_code
