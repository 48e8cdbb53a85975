"""The one error base class: its message is meant for the user, shown without a traceback."""

from __future__ import annotations

from datetime import datetime


class RelayError(Exception):
    """An expected failure with a message fit to show the operator."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(RelayError):
    """Bad command line or configuration: exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file is missing, unreadable or invalid."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class StateError(RelayError):
    """State relay cannot read safely (a damaged history record that is not a torn last
    line, a state file that is not a regular file): exit code 3.

    Restarting cannot fix it, so the unit does not restart on it (RestartPreventExitStatus=3)
    and the operator is alerted; the message says what to do.
    """

    exit_code = 3


class ApiError(RelayError):
    """A failed call to the Messages API, translated at the SDK boundary.

    Three kinds, because each asks for something different:

    - `transient` (rate limits, overload, 5xx, network, time-outs): retry the same request
      later, honouring `retry_after`.
    - `per_item`: the API refused this request itself (400 invalid_request_error, 404, 413):
      sending it again unchanged gets the same answer, but other items may well go through,
      so only this one should be set aside. `context_overflow` is the per-item refusal
      that a shorter history can fix (the prompt does not fit the context window), so
      summarizing first is worth a try.
    - `blocked` (neither): nothing can go through until the operator acts (bad key, no
      credit, billing, permission, the workspace's usage limit, a model the API does not
      know); retrying other items would fail the same way.

    `status` is the HTTP status, or None when no answer came (network, time-out).
    `blocked_until` is when a blocking refusal says access returns (the workspace's usage
    limit names the date): nothing is tried before then.
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        retry_after: float | None = None,
        status: int | None = None,
        per_item: bool = False,
        context_overflow: bool = False,
        blocked_until: datetime | None = None,
    ) -> None:
        super().__init__(message)
        per_item = per_item or context_overflow
        if transient and per_item:
            raise ValueError("an API error is either transient or a per-item refusal")
        self.transient = transient
        self.retry_after = retry_after
        self.status = status
        self.per_item = per_item
        self.context_overflow = context_overflow
        self.blocked_until = blocked_until

    @property
    def blocked(self) -> bool:
        """Nothing can be sent until the operator fixes something."""
        return not self.transient and not self.per_item
