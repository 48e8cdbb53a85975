"""Configuration: YAML in, one frozen `Config` out, every problem reported at once.

Errors name the key path (`sessions[2]: ...`) so the operator can find them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from relay import fsutil
from relay.errors import ConfigError
from relay.prices import DEFAULT_PRICES, Price

DEFAULT_CONFIG_PATH = Path("/etc/relay/config.yaml")
# Generous for hand-written YAML and prompts, and small enough that a file named by mistake
# (a log, an image, /dev/zero) is refused at once instead of being read into memory.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_PROMPT_BYTES = 1024 * 1024

# A session id names a directory under dispatch/, so it must be a plain, safe name.
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_SENDERS = frozenset({"operator", "relay"})

DEFAULT_SYSTEM_PROMPT = """\
You coordinate a team of Claude Code sessions working for one operator.
Each user turn starts with a line saying who wrote it: "[from session-N]" for a
Claude Code session, "[from operator]" for the human operator. Your reply goes back
to whoever wrote the turn (for an operator turn: to the session that was waiting).
Be concise and concrete: the session acts on your reply as its next instruction.
When a decision needs the human operator, start your reply with [NEEDS-JC]
followed by the question; nothing is sent to any session until the operator answers.
If the question has a few short answers, end that reply with one line
"Options: <first> | <second> | <third>" (at most three): the operator's phone shows
each as a button. The operator may also answer in their own words.
A session run as an unattended worker ends when your reply to it starts with
[RELAY-STOP]; use it when that session's work is done."""

DEFAULT_SUMMARIZATION_PROMPT = """\
Summarize the conversation so far for your own future reference: the goals, what each
session is doing and has done, decisions made and by whom, open questions, and anything
promised. Keep names, paths, numbers and commitments exact. Write only the summary."""


@dataclass(frozen=True)
class AnthropicConfig:
    base_url: str | None = None
    timeout_s: float = 300.0


@dataclass(frozen=True)
class NtfyConfig:
    server: str | None = "https://ntfy.sh"
    topic: str | None = None  # the question topic relay pushes to; None: generated once
    reply_topic: str | None = None  # the answer topic the phone publishes to; None: generated
    timeout_s: float = 5.0
    max_answer_bytes: int = 4096
    max_answers_per_minute: int = 30
    # Streams send a keepalive every 45 s (ntfy's default, ntfy.sh's too): two missed,
    # and the connection is taken for dead and made again.
    read_timeout_s: float = 100.0


CACHE_TTLS = ("auto", "5m", "1h")


@dataclass(frozen=True)
class BudgetConfig:
    """Spend caps in USD per day and per calendar month (None: no cap), and the fractions of
    a cap at which the operator is warned. Days and months begin at midnight in `timezone`."""

    daily_usd: float | None = None
    monthly_usd: float | None = None
    warn_at: tuple[float, ...] = (0.75, 0.95)
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def capped(self) -> bool:
        return self.daily_usd is not None or self.monthly_usd is not None


@dataclass(frozen=True)
class Config:
    sessions: tuple[str, ...]
    model: str = "claude-opus-4-7"
    max_tokens: int = 4096
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    summarization_prompt: str = DEFAULT_SUMMARIZATION_PROMPT
    history_char_cap: int = 400_000
    keep_recent_turns: int = 10
    needs_jc_marker: str = "[NEEDS-JC]"
    needs_jc_window: int = 200
    data_dir: Path = Path("/var/lib/relay")
    max_envelope_bytes: int = 256 * 1024
    anthropic: AnthropicConfig = field(default_factory=AnthropicConfig)
    ntfy: NtfyConfig = field(default_factory=NtfyConfig)
    prices: Mapping[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    cache_ttl: str = "auto"  # one of CACHE_TTLS
    source: Path | None = None  # the file this came from, for `.env` lookup and messages


def config_path(arg: str | None, environ: Mapping[str, str]) -> Path:
    """`--config` wins over `RELAY_CONFIG`, which wins over /etc/relay/config.yaml."""
    chosen = arg or environ.get("RELAY_CONFIG")
    return Path(chosen) if chosen else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Config:
    try:
        text = read_text(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(
            str(path), ["no such file (give one with --config or RELAY_CONFIG)"]
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(str(path), [f"cannot read: {_reason(exc)}"]) from exc
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader, without aliases
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}not valid YAML ({problem})"]) from exc
    except RecursionError:
        raise ConfigError(str(path), ["not a relay config: nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(str(path), [f"not a relay config: {exc}"]) from None
    return parse_config(raw if raw is not None else {}, source=path)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases. relay's config has no use for them, and a few
    nested ones ("billion laughs") make a tiny file stand for a structure too large to walk,
    or to print in an error message."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in relay's config", event.start_mark
            )
        return super().compose_node(parent, index)


def read_text(path: Path, limit: int) -> str:
    """A regular file of at most `limit` bytes, as UTF-8: never blocks on a FIFO and never
    reads a device without end (fsutil.read_regular). ValueError if it is larger."""
    data = fsutil.read_regular(path, limit)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 1024} KiB")
    return data.decode("utf-8")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, fsutil.NotRegularFile) and exc.strerror:
        return exc.strerror
    return str(exc)


class _Checker:
    """Collects problems with key paths instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def integer(self, data: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, got {value!r}")
            return default
        if value < minimum:
            self.fail(key, f"must be at least {minimum}, got {value}")
            return default
        return value

    def number(
        self, data: Mapping[str, Any], key: str, default: float, path: str, maximum: float
    ) -> float:
        value = data.get(key, default)
        # YAML reads .nan and .inf as floats; neither is a time-out.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            self.fail(path, f"must be a positive number, got {value!r}")
            return default
        if value > maximum:
            self.fail(path, f"must be at most {maximum:g}, got {value!r}")
            return default
        return float(value)

    def text(
        self, data: Mapping[str, Any], key: str, default: str | None, path: str, *, nullable: bool
    ) -> str | None:
        value = data.get(key, default)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"must be a non-empty string, got {value!r}")
            return default
        return value

    def mapping(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def unknown(self, data: Mapping[str, Any], known: set[str], prefix: str = "") -> None:
        for key in data:
            if key not in known:
                self.fail(f"{prefix}{key}", "unknown key")


_TOP_KEYS = {
    "model",
    "max_tokens",
    "system_prompt",
    "system_prompt_file",
    "summarization_prompt",
    "history_char_cap",
    "keep_recent_turns",
    "needs_jc_marker",
    "needs_jc_window",
    "data_dir",
    "sessions",
    "max_envelope_bytes",
    "anthropic",
    "ntfy",
    "prices",
    "budget",
    "cache_ttl",
}


def parse_config(raw: Any, source: Path | None = None) -> Config:
    """Given parsed YAML, return a `Config` or raise `ConfigError` listing every problem."""
    name = str(source) if source else "config"
    if not isinstance(raw, Mapping):
        raise ConfigError(name, [f"the top level must be a mapping, got {type(raw).__name__}"])
    check = _Checker()
    check.unknown(raw, _TOP_KEYS)
    base_dir = source.parent if source else Path.cwd()

    model = check.text(raw, "model", Config.model, "model", nullable=False) or Config.model
    system_prompt = _system_prompt(raw, check, base_dir)
    summarization_prompt = (
        check.text(
            raw,
            "summarization_prompt",
            DEFAULT_SUMMARIZATION_PROMPT,
            "summarization_prompt",
            nullable=False,
        )
        or DEFAULT_SUMMARIZATION_PROMPT
    )
    marker = check.text(raw, "needs_jc_marker", "[NEEDS-JC]", "needs_jc_marker", nullable=False)
    marker = marker or "[NEEDS-JC]"
    window = check.integer(raw, "needs_jc_window", 200, 1)
    if window < len(marker):
        check.fail("needs_jc_window", f"must be at least the marker's length ({len(marker)})")

    data_dir_raw = check.text(raw, "data_dir", "/var/lib/relay", "data_dir", nullable=False)
    data_dir = base_dir / Path(data_dir_raw or "/var/lib/relay")

    return _finish(
        check,
        name,
        Config(
            sessions=_sessions(raw, check),
            model=model,
            max_tokens=check.integer(raw, "max_tokens", 4096, 1),
            system_prompt=system_prompt,
            summarization_prompt=summarization_prompt,
            history_char_cap=check.integer(raw, "history_char_cap", 400_000, 1000),
            keep_recent_turns=check.integer(raw, "keep_recent_turns", 10, 0),
            needs_jc_marker=marker,
            needs_jc_window=window,
            data_dir=data_dir,
            max_envelope_bytes=check.integer(raw, "max_envelope_bytes", 256 * 1024, 64),
            anthropic=_anthropic(raw, check),
            ntfy=_ntfy(raw, check),
            prices=_prices(raw, check),
            budget=_budget(raw, check),
            cache_ttl=_cache_ttl(raw, check),
            source=source,
        ),
    )


def _finish(check: _Checker, name: str, config: Config) -> Config:
    if check.problems:
        raise ConfigError(name, check.problems)
    return config


def _system_prompt(raw: Mapping[str, Any], check: _Checker, base_dir: Path) -> str:
    if "system_prompt" in raw and "system_prompt_file" in raw:
        check.fail("system_prompt_file", "give either system_prompt or system_prompt_file")
    if "system_prompt_file" in raw:
        file_name = check.text(
            raw, "system_prompt_file", None, "system_prompt_file", nullable=False
        )
        if file_name:
            try:
                text = read_text(base_dir / file_name, MAX_PROMPT_BYTES)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                check.fail("system_prompt_file", f"cannot read {file_name}: {_reason(exc)}")
                return DEFAULT_SYSTEM_PROMPT
            if not text.strip():
                check.fail("system_prompt_file", f"{file_name} is empty")
            return text
    return (
        check.text(raw, "system_prompt", DEFAULT_SYSTEM_PROMPT, "system_prompt", nullable=False)
        or DEFAULT_SYSTEM_PROMPT
    )


def _sessions(raw: Mapping[str, Any], check: _Checker) -> tuple[str, ...]:
    value = raw.get("sessions")
    if value is None:
        check.fail("sessions", "required: the list of session ids, e.g. [session-1, session-2]")
        return ()
    if not isinstance(value, list) or not value:
        check.fail("sessions", f"must be a non-empty list, got {value!r}")
        return ()
    seen: set[str] = set()
    for index, session in enumerate(value):
        key = f"sessions[{index}]"
        if not isinstance(session, str) or not SESSION_ID_RE.match(session):
            check.fail(key, f"{session!r} is not a valid session id (letters, digits, . _ -)")
        elif session.lower() in RESERVED_SENDERS:
            # chat-Claude is told who wrote each turn by name: a session called "operator"
            # would read exactly like the human.
            check.fail(key, f"{session!r} is reserved for relay's own senders; choose another")
        elif session in seen:
            check.fail(key, f"{session!r} is listed twice")
        else:
            seen.add(session)
    return tuple(s for s in value if isinstance(s, str))


def _anthropic(raw: Mapping[str, Any], check: _Checker) -> AnthropicConfig:
    section = check.mapping(raw, "anthropic")
    check.unknown(section, {"base_url", "timeout_s"}, "anthropic.")
    base_url = check.text(section, "base_url", None, "anthropic.base_url", nullable=True)
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        check.fail("anthropic.base_url", f"must be an http(s) URL, got {base_url!r}")
    return AnthropicConfig(
        base_url=base_url,
        timeout_s=check.number(section, "timeout_s", 300.0, "anthropic.timeout_s", 3600.0),
    )


def _ntfy(raw: Mapping[str, Any], check: _Checker) -> NtfyConfig:
    section = check.mapping(raw, "ntfy")
    check.unknown(
        section,
        {
            "server",
            "topic",
            "reply_topic",
            "timeout_s",
            "max_answer_bytes",
            "max_answers_per_minute",
            "read_timeout_s",
        },
        "ntfy.",
    )
    server = check.text(section, "server", "https://ntfy.sh", "ntfy.server", nullable=True)
    if server is not None and not server.startswith(("http://", "https://")):
        check.fail("ntfy.server", f"must be an http(s) URL or null, got {server!r}")
    topics: dict[str, str | None] = {}
    for name in ("topic", "reply_topic"):
        topic = check.text(section, name, None, f"ntfy.{name}", nullable=True)
        if topic is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", topic):
            check.fail(
                f"ntfy.{name}", "must be 1-64 letters, digits, - or _ (or null to generate one)"
            )
        topics[name] = topic
    if topics["topic"] is not None and topics["topic"] == topics["reply_topic"]:
        # relay would read its own questions as answers.
        check.fail("ntfy.reply_topic", "must differ from ntfy.topic")
    return NtfyConfig(
        server=server.rstrip("/") if server else None,
        topic=topics["topic"],
        reply_topic=topics["reply_topic"],
        timeout_s=check.number(section, "timeout_s", 5.0, "ntfy.timeout_s", 300.0),
        max_answer_bytes=check.integer(section, "max_answer_bytes", 4096, 16),
        max_answers_per_minute=check.integer(section, "max_answers_per_minute", 30, 1),
        read_timeout_s=check.number(section, "read_timeout_s", 100.0, "ntfy.read_timeout_s", 3600),
    )


def _cache_ttl(raw: Mapping[str, Any], check: _Checker) -> str:
    value = raw.get("cache_ttl", "auto")
    if value not in CACHE_TTLS:
        check.fail("cache_ttl", f"must be one of auto, 5m, 1h, got {value!r}")
        return "auto"
    return str(value)


def _is_amount(value: Any) -> bool:
    """A finite number >= 0 (USD, or USD per million tokens). YAML reads .nan and .inf as
    floats and true as a bool, which is an int to Python: none of them is an amount."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
    )


def _budget(raw: Mapping[str, Any], check: _Checker) -> BudgetConfig:
    section = check.mapping(raw, "budget")
    check.unknown(section, {"daily_usd", "monthly_usd", "warn_at", "timezone"}, "budget.")
    caps: dict[str, float | None] = {}
    for name in ("daily_usd", "monthly_usd"):
        value = section.get(name)
        if value is None:
            caps[name] = None
        elif not _is_amount(value):
            # 0 is a cap too: no API calls at all until it is raised.
            check.fail(f"budget.{name}", f"must be a number of USD >= 0 or null, got {value!r}")
            caps[name] = None
        else:
            caps[name] = float(value)
    warn_raw = section.get("warn_at", list(BudgetConfig.warn_at))
    warn_at: tuple[float, ...] = BudgetConfig.warn_at
    if warn_raw is None:
        warn_at = ()
    elif not isinstance(warn_raw, list) or not all(
        not isinstance(v, bool) and isinstance(v, int | float) and 0 < v <= 1 for v in warn_raw
    ):
        check.fail(
            "budget.warn_at",
            f"must be a list of fractions of the cap (0 < f <= 1) such as [0.75, 0.95], "
            f"got {warn_raw!r}",
        )
    else:
        warn_at = tuple(sorted({float(v) for v in warn_raw}))
    zone = section.get("timezone", "UTC")
    timezone = "UTC"
    if not isinstance(zone, str) or not zone.strip():
        check.fail("budget.timezone", f"must be a time zone name (Europe/Paris), got {zone!r}")
    else:
        try:
            ZoneInfo(zone)
            timezone = zone
        except (ZoneInfoNotFoundError, ValueError):
            check.fail(
                "budget.timezone",
                f"unknown time zone {zone!r} (a name from the tz database, such as "
                "Europe/Paris or America/New_York)",
            )
    return BudgetConfig(caps["daily_usd"], caps["monthly_usd"], warn_at, timezone)


_PRICE_KEYS = ("input", "output", "cache_write", "cache_write_1h", "cache_read")


def _prices(raw: Mapping[str, Any], check: _Checker) -> dict[str, Price]:
    table = dict(DEFAULT_PRICES)
    section = check.mapping(raw, "prices")
    for model, entry in section.items():
        key = f"prices.{model}"
        if not isinstance(entry, Mapping):
            check.fail(key, "must be a mapping of USD per million tokens")
            continue
        check.unknown(entry, set(_PRICE_KEYS), f"{key}.")
        values: dict[str, float] = {}
        for name in _PRICE_KEYS:
            value = entry.get(name)
            if value is None:
                continue
            if not _is_amount(value):
                check.fail(f"{key}.{name}", f"must be a number >= 0, got {value!r}")
                continue
            values[name] = float(value)
        if "input" not in values or "output" not in values:
            check.fail(key, "needs at least input and output")
            continue
        # Missing cache prices keep a known model's own multipliers (some read at 0.05x or
        # 0.025x), else the standard ones.
        known = DEFAULT_PRICES.get(str(model))
        read_ratio = known.cache_read / known.input if known and known.input else 0.1
        multipliers = {"cache_write": 1.25, "cache_write_1h": 2.0, "cache_read": read_ratio}
        for name, multiplier in multipliers.items():
            values.setdefault(name, values["input"] * multiplier)
        table[str(model)] = Price(**values)
    return table


def dotenv_value(config_file: Path | None, name: str) -> str | None:
    """`name` from a `.env` beside the config file (development only)."""
    if config_file is None:
        return None
    try:
        lines = read_text(config_file.parent / ".env", MAX_CONFIG_BYTES).splitlines()
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    for line in lines:
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key.strip() == name:
            return value.strip().strip("'\"") or None
    return None


def _find_secret(
    config: Config, environ: Mapping[str, str], credential: str, variable: str
) -> tuple[str | None, str | None]:
    """(secret, where it came from) from the systemd credential `credential`, the
    environment variable `variable`, or `.env` beside the config, in that order."""
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        try:
            secret = read_text(Path(cred_dir) / credential, MAX_CONFIG_BYTES).strip()
        except (OSError, UnicodeDecodeError, ValueError):
            secret = ""
        if secret:
            return secret, f"credential {credential}"
    secret = environ.get(variable, "").strip()
    if secret:
        return secret, variable
    secret = dotenv_value(config.source, variable) or ""
    if secret:
        return secret, ".env beside the config"
    return None, None


def find_ntfy_token(config: Config, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The optional ntfy access token and where it came from (never the token itself):
    the systemd credential relay.ntfy-token, RELAY_NTFY_TOKEN, or `.env` beside the config."""
    token, where = _find_secret(config, environ, "ntfy-token", "RELAY_NTFY_TOKEN")
    return token, where or "no ntfy token (none is needed unless the server requires one)"


def find_api_key(config: Config, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """Return (key, where it came from), or (None, what was looked at).

    Order: systemd credential, environment, `.env` beside the config.
    """
    key, where = _find_secret(config, environ, "anthropic-api-key", "ANTHROPIC_API_KEY")
    return key, where or (
        "no API key: put it in /etc/credstore/relay.anthropic-api-key (root, 0600) and restart "
        "relay-conversation.service, or set ANTHROPIC_API_KEY"
    )
