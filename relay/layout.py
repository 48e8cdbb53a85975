"""Where everything lives under the data root (README: Files; docs/architecture.md: On disk)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relay import fsutil

# Modes match packaging/tmpfiles.d/relay.conf; the code only applies them to directories
# it has to create itself (development, containers without tmpfiles).
ROOT_MODE = 0o750
QUEUE_MODE = 0o3770
REJECTED_MODE = 0o2750
DISPATCH_MODE = 0o2750
SESSION_DIR_MODE = 0o2770
# state/: relay-operators may pass through (to status.json and ntfy-topic) but not list it;
# setgid, so the files relay creates there get that group (see OPERATOR_FILE_MODE).
STATE_MODE = 0o2710
PRIVATE_MODE = 0o700

CLIENT_FILE_MODE = 0o640  # input.txt and rejected envelopes: clients read them
OPERATOR_FILE_MODE = 0o640  # status.json, ntfy-topic, replies in operator/: operators read them
PRIVATE_FILE_MODE = 0o600


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def queue(self) -> Path:
        return self.root / "queue"

    @property
    def rejected(self) -> Path:
        return self.queue / ".rejected"

    @property
    def operator_rejected(self) -> Path:
        # The operator's refused input: private, unlike queue/.rejected/ which clients read.
        return self.state / "rejected"

    @property
    def dispatch(self) -> Path:
        return self.root / "dispatch"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def inbox(self) -> Path:
        return self.state / "inbox"

    @property
    def ids(self) -> Path:
        return self.state / "ids"

    @property
    def history(self) -> Path:
        return self.state / "history.jsonl"

    @property
    def archive(self) -> Path:
        return self.state / "archive"

    @property
    def ledger(self) -> Path:
        return self.state / "ledger.jsonl"

    @property
    def status(self) -> Path:
        return self.state / "status.json"

    @property
    def jc_input(self) -> Path:
        return self.state / "jc_input.txt"

    @property
    def operator_drop(self) -> Path:
        # Where members of relay-operators, who may not write state/, leave their replies
        # (relay/operator_drop.py moves each one to jc_input.txt).
        return self.root / "operator"

    @property
    def lock(self) -> Path:
        return self.state / "lock"

    @property
    def topic(self) -> Path:
        return self.state / "ntfy-topic"

    @property
    def reply_topic(self) -> Path:
        # The answer topic: the phone publishes answers there (relay/subscriber.py).
        return self.state / "ntfy-reply-topic"

    @property
    def subscriber_state(self) -> Path:
        # The answer stream's cursor and the answers already handled (relay/subscriber.py).
        return self.state / "ntfy-answers.json"

    @property
    def answers_applied(self) -> Path:
        # Phone answers the conversation has taken, by ntfy message id (relay/engine.py).
        return self.state / "answers-applied.json"

    @property
    def budget_state(self) -> Path:
        # Budget pushes already sent, and a workspace limit's end (relay/budget_state.py).
        return self.state / "budget.json"

    def session_dir(self, session: str) -> Path:
        return self.dispatch / session

    def input_file(self, session: str) -> Path:
        return self.dispatch / session / "input.txt"

    def pending_dir(self, session: str) -> Path:
        # Replies waiting for the session live beside input.txt so that delivering one
        # is a single rename: the reply is either pending or delivered, never both.
        return self.dispatch / session / ".pending"

    def ensure_intake(self) -> None:
        """The directories the intake handlers write to."""
        fsutil.makedirs(self.root, ROOT_MODE)
        fsutil.makedirs(self.queue, QUEUE_MODE)
        fsutil.makedirs(self.rejected, REJECTED_MODE)
        fsutil.makedirs(self.state, STATE_MODE)
        fsutil.makedirs(self.inbox, PRIVATE_MODE)
        fsutil.makedirs(self.ids, PRIVATE_MODE)

    def ensure_all(self, sessions: tuple[str, ...]) -> None:
        self.ensure_intake()
        fsutil.makedirs(self.dispatch, DISPATCH_MODE)
        fsutil.makedirs(self.archive, PRIVATE_MODE)
        for session in sessions:
            fsutil.makedirs(self.session_dir(session), SESSION_DIR_MODE)
            fsutil.makedirs(self.pending_dir(session), PRIVATE_MODE)
