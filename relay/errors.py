"""The one error base class: its message is meant for the user, shown without a traceback."""


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

    `transient` errors (rate limits, overload, 5xx, network) are retried with backoff;
    the others (bad key, no credit, bad request) block processing until fixed.
    """

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after
