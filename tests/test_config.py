"""relay.config: validation with key paths, file-relative paths, config and API key lookup."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_SUMMARIZATION_PROMPT,
    DEFAULT_SYSTEM_PROMPT,
    MAX_CONFIG_BYTES,
    MAX_PROMPT_BYTES,
    AnthropicConfig,
    Config,
    NtfyConfig,
    config_path,
    find_api_key,
    load_config,
    parse_config,
)
from relay.errors import ConfigError, UsageError
from relay.prices import DEFAULT_PRICES, Price

KEY = "sk-ant-test-0123456789abcdef"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.problems


# ---- defaults and the happy path ----------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "sessions: [session-1, session-2]\n")

    config = load_config(path)

    assert config.sessions == ("session-1", "session-2")
    assert config.model == "claude-opus-4-7"
    assert config.max_tokens == 4096
    assert config.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert config.summarization_prompt == DEFAULT_SUMMARIZATION_PROMPT
    assert config.history_char_cap == 400_000
    assert config.keep_recent_turns == 10
    assert config.needs_jc_marker == "[NEEDS-JC]"
    assert config.needs_jc_window == 200
    assert config.data_dir == Path("/var/lib/relay")
    assert config.max_envelope_bytes == 256 * 1024
    assert config.anthropic == AnthropicConfig(base_url=None, timeout_s=300.0)
    assert config.ntfy == NtfyConfig(server="https://ntfy.sh", topic=None, timeout_s=5.0)
    assert dict(config.prices) == DEFAULT_PRICES
    assert config.source == path


def test_every_documented_key_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
model: claude-sonnet-4-6
max_tokens: 1000
system_prompt: "You coordinate."
summarization_prompt: "Summarize."
history_char_cap: 5000
keep_recent_turns: 3
needs_jc_marker: "[ASK]"
needs_jc_window: 50
data_dir: /srv/relay
sessions: [a, b.2, c_3]
max_envelope_bytes: 1024
anthropic:
  base_url: http://127.0.0.1:9/
  timeout_s: 12.5
ntfy:
  server: https://push.example/
  topic: my_topic-1
  timeout_s: 2
""",
    )

    config = load_config(path)

    assert config.model == "claude-sonnet-4-6"
    assert config.max_tokens == 1000
    assert config.system_prompt == "You coordinate."
    assert config.summarization_prompt == "Summarize."
    assert config.history_char_cap == 5000
    assert config.keep_recent_turns == 3
    assert config.needs_jc_marker == "[ASK]"
    assert config.needs_jc_window == 50
    assert config.data_dir == Path("/srv/relay")
    assert config.sessions == ("a", "b.2", "c_3")
    assert config.max_envelope_bytes == 1024
    assert config.anthropic == AnthropicConfig(base_url="http://127.0.0.1:9/", timeout_s=12.5)
    # The trailing slash is dropped so "{server}/{topic}" has exactly one.
    assert config.ntfy == NtfyConfig(
        server="https://push.example", topic="my_topic-1", timeout_s=2.0
    )


def test_ntfy_server_null_disables_pushes(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "sessions: [s]\nntfy:\n  server: null\n"))
    assert config.ntfy.server is None


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "sessions: [s]\n"))
    with pytest.raises(AttributeError):
        config.model = "other"  # type: ignore[misc]


# ---- every problem at once, with key paths ------------------------------------------------


def test_all_problems_are_reported_together_with_key_paths(tmp_path: Path) -> None:
    problems = problems_of(
        """\
sessions: [session-1, session-1, "bad/name", 7]
max_tokens: 0
model: ""
frobnicate: true
anthropic:
  timeout_s: -1
  base_url: ftp://example
  colour: blue
ntfy:
  topic: "not a topic!"
  server: smtp://example
  retries: 3
prices:
  my-model:
    input: 1
    output: 2
    surcharge: 3
""",
        tmp_path,
    )
    keys = [p.split(":", 1)[0] for p in problems]

    assert "sessions[1]" in keys  # listed twice
    assert "sessions[2]" in keys  # contains a slash: it would name a directory
    assert "sessions[3]" in keys  # not a string
    assert "sessions[0]" not in keys
    assert "max_tokens" in keys
    assert "model" in keys
    assert "frobnicate" in keys
    assert "anthropic.timeout_s" in keys
    assert "anthropic.base_url" in keys
    assert "anthropic.colour" in keys
    assert "ntfy.topic" in keys
    assert "ntfy.server" in keys
    assert "ntfy.retries" in keys
    assert "prices.my-model.surcharge" in keys
    assert len(problems) == 13
    assert "sessions[1]: 'session-1' is listed twice" in problems
    assert "frobnicate: unknown key" in problems
    assert "anthropic.colour: unknown key" in problems


def test_config_error_message_names_the_file_and_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "sessions: [s]\nmax_tokens: many\nkeep_recent_turns: -1\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    error = caught.value
    assert isinstance(error, UsageError)
    assert error.exit_code == 2
    assert error.problems == [
        "max_tokens: must be an integer, got 'many'",
        "keep_recent_turns: must be at least 0, got -1",
    ]
    assert error.message == f"{path}: " + "; ".join(error.problems)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("sessions: []\n", "sessions"),
        ("sessions: session-1\n", "sessions"),
        ("model: x\n", "sessions"),  # required
        ("sessions: [s]\nmax_tokens: true\n", "max_tokens"),  # a bool is not an integer
        ("sessions: [s]\nhistory_char_cap: 999\n", "history_char_cap"),
        ("sessions: [s]\nmax_envelope_bytes: 63\n", "max_envelope_bytes"),
        ("sessions: [s]\nneeds_jc_window: 5\n", "needs_jc_window"),  # shorter than the marker
        ("sessions: [s]\nneeds_jc_marker: '  '\n", "needs_jc_marker"),
        ("sessions: [s]\nsystem_prompt: 42\n", "system_prompt"),
        ("sessions: [s]\nanthropic: [1]\n", "anthropic"),
        ("sessions: [s]\nanthropic:\n  timeout_s: 0\n", "anthropic.timeout_s"),
        ("sessions: [s]\nanthropic:\n  timeout_s: fast\n", "anthropic.timeout_s"),
        ("sessions: [s]\nntfy:\n  topic: ''\n", "ntfy.topic"),
        ("sessions: [s]\nntfy:\n  topic: " + "t" * 65 + "\n", "ntfy.topic"),
        ("sessions: [s]\nntfy:\n  timeout_s: 0\n", "ntfy.timeout_s"),
        ("sessions: [s]\nprices:\n  m: 5\n", "prices.m"),
        ("sessions: [s]\nprices:\n  m: {input: 1}\n", "prices.m"),  # output missing
        ("sessions: [s]\nprices:\n  m: {input: -1, output: 2}\n", "prices.m.input"),
        (
            "sessions: [s]\nprices:\n  m: {input: 1, output: 2, cache_read: x}\n",
            "prices.m.cache_read",
        ),
    ],
)
def test_bad_value_names_its_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    problems = problems_of(yaml_text, tmp_path)
    assert key in [p.split(":", 1)[0] for p in problems], problems


@pytest.mark.parametrize(
    ("value", "kind"), [("false", "bool"), ("[]", "list"), ("0", "int"), ("''", "str")]
)
def test_falsy_non_mapping_section_is_an_error(tmp_path: Path, value: str, kind: str) -> None:
    # Was a bug (fixed in 742ade1): `ntfy: false` passed as "all defaults" and still
    # pushed to https://ntfy.sh.
    problems = problems_of(f"sessions: [s]\nntfy: {value}\nanthropic: {value}\n", tmp_path)
    assert problems == [
        f"anthropic: must be a mapping, got {kind}",
        f"ntfy: must be a mapping, got {kind}",
    ]


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "sessions: [s]\nntfy:\nanthropic:\n"))
    assert config.ntfy == NtfyConfig()
    assert config.anthropic == AnthropicConfig()


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    problems = problems_of("- session-1\n- session-2\n", tmp_path)
    assert problems == ["the top level must be a mapping, got list"]


def test_empty_file_reports_the_missing_sessions(tmp_path: Path) -> None:
    problems = problems_of("", tmp_path)
    assert [p.split(":", 1)[0] for p in problems] == ["sessions"]


def test_parse_config_without_a_source_names_it_config() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"sessions": ["s"], "model": 3})
    assert caught.value.message.startswith("config: model: ")


# ---- reading the file ---------------------------------------------------------------------


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    problems = problems_of("sessions: [s]\nmax_tokens: 5\nmodel: a: b\n", tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("line 3: not valid YAML")


def test_missing_file_says_how_to_give_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert caught.value.problems == ["no such file (give one with --config or RELAY_CONFIG)"]


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"sessions: [s\xff]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith("cannot read:")


# ---- paths relative to the config file ----------------------------------------------------


def test_system_prompt_file_is_read_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "prompt.md").write_text("Be brief.\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter

    config = load_config(write(etc, "sessions: [s]\nsystem_prompt_file: prompt.md\n"))

    assert config.system_prompt == "Be brief.\n"


def test_system_prompt_file_absolute_path(tmp_path: Path) -> None:
    prompt = tmp_path / "abs-prompt.md"
    prompt.write_text("Absolute.", encoding="utf-8")
    sub = tmp_path / "conf"
    sub.mkdir()
    config = load_config(write(sub, f"sessions: [s]\nsystem_prompt_file: {prompt}\n"))
    assert config.system_prompt == "Absolute."


def test_both_prompt_keys_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "prompt.md").write_text("From file.", encoding="utf-8")
    problems = problems_of(
        "sessions: [s]\nsystem_prompt: inline\nsystem_prompt_file: prompt.md\n", tmp_path
    )
    assert problems == ["system_prompt_file: give either system_prompt or system_prompt_file"]


def test_missing_or_empty_prompt_file_is_an_error(tmp_path: Path) -> None:
    problems = problems_of("sessions: [s]\nsystem_prompt_file: absent.md\n", tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("system_prompt_file: cannot read absent.md")

    (tmp_path / "blank.md").write_text(" \n\n", encoding="utf-8")
    problems = problems_of("sessions: [s]\nsystem_prompt_file: blank.md\n", tmp_path)
    assert problems == ["system_prompt_file: blank.md is empty"]


def test_relative_data_dir_resolves_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)

    config = load_config(write(etc, "sessions: [s]\ndata_dir: data/relay\n"))

    assert config.data_dir == etc / "data" / "relay"
    assert config.data_dir.is_absolute()


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "sessions: [s]\ndata_dir: /srv/elsewhere\n"))
    assert config.data_dir == Path("/srv/elsewhere")


# ---- prices -------------------------------------------------------------------------------


def test_price_override_derives_the_cache_prices(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "sessions: [s]\nprices:\n  my-model: {input: 2, output: 8}\n"
            "  claude-opus-4-7: {input: 4, output: 20, cache_read: 0.5}\n",
        )
    )

    assert config.prices["my-model"] == Price(
        input=2.0, output=8.0, cache_write=2.5, cache_write_1h=4.0, cache_read=0.2
    )
    # An explicit cache price wins over the derived one; the others are still derived.
    assert config.prices["claude-opus-4-7"] == Price(
        input=4.0, output=20.0, cache_write=5.0, cache_write_1h=8.0, cache_read=0.5
    )
    # Models not mentioned keep the built-in price.
    assert config.prices["claude-haiku-4-5"] == DEFAULT_PRICES["claude-haiku-4-5"]
    # The module-level table itself is untouched.
    assert DEFAULT_PRICES["claude-opus-4-7"] == Price.standard(5.0, 25.0)


# ---- which config file --------------------------------------------------------------------


def test_config_path_precedence() -> None:
    env = {"RELAY_CONFIG": "/from/env.yaml"}
    assert config_path("/from/arg.yaml", env) == Path("/from/arg.yaml")
    assert config_path(None, env) == Path("/from/env.yaml")
    assert config_path(None, {}) == DEFAULT_CONFIG_PATH == Path("/etc/relay/config.yaml")
    assert config_path(None, {"RELAY_CONFIG": ""}) == DEFAULT_CONFIG_PATH


# ---- the API key --------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Config:
    etc = tmp_path / "etc"
    etc.mkdir()
    return load_config(write(etc, "sessions: [s]\n"))


def credentials(tmp_path: Path, key: str) -> str:
    creds = tmp_path / "creds"
    creds.mkdir(exist_ok=True)
    (creds / "anthropic-api-key").write_text(key, encoding="utf-8")
    return str(creds)


def dotenv(config: Config, text: str) -> None:
    assert config.source is not None
    (config.source.parent / ".env").write_text(text, encoding="utf-8")


def test_credential_wins_over_environment_and_dotenv(config: Config, tmp_path: Path) -> None:
    dotenv(config, "ANTHROPIC_API_KEY=from-dotenv\n")
    env = {
        "CREDENTIALS_DIRECTORY": credentials(tmp_path, KEY + "\n"),
        "ANTHROPIC_API_KEY": "from-env",
    }

    key, where = find_api_key(config, env)

    assert key == KEY  # trailing newline stripped
    assert where == "credential anthropic-api-key"


def test_environment_wins_over_dotenv(config: Config) -> None:
    dotenv(config, "ANTHROPIC_API_KEY=from-dotenv\n")
    assert find_api_key(config, {"ANTHROPIC_API_KEY": KEY}) == (KEY, "ANTHROPIC_API_KEY")


def test_empty_credential_and_blank_environment_fall_through(
    config: Config, tmp_path: Path
) -> None:
    dotenv(config, f"ANTHROPIC_API_KEY={KEY}\n")
    env = {"CREDENTIALS_DIRECTORY": credentials(tmp_path, "\n"), "ANTHROPIC_API_KEY": "  "}
    assert find_api_key(config, env) == (KEY, ".env beside the config")


def test_credentials_directory_without_our_file_falls_through(
    config: Config, tmp_path: Path
) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "ANTHROPIC_API_KEY": KEY}
    assert find_api_key(config, env) == (KEY, "ANTHROPIC_API_KEY")


@pytest.mark.parametrize(
    "line",
    [
        f"ANTHROPIC_API_KEY={KEY}",
        f"export ANTHROPIC_API_KEY={KEY}",
        f'ANTHROPIC_API_KEY="{KEY}"',
        f"export ANTHROPIC_API_KEY='{KEY}'",
        f"  ANTHROPIC_API_KEY = {KEY}  ",
    ],
)
def test_dotenv_forms(config: Config, line: str) -> None:
    dotenv(config, f"# development key\nOTHER=1\n{line}\n")
    assert find_api_key(config, {}) == (KEY, ".env beside the config")


def test_dotenv_is_looked_for_beside_the_config_only(config: Config, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"ANTHROPIC_API_KEY={KEY}\n", encoding="utf-8")
    dotenv(config, "# ANTHROPIC_API_KEY=commented-out\nANTHROPIC_API_KEY_OLD=nope\n")

    key, where = find_api_key(config, {})

    assert key is None
    assert "ANTHROPIC_API_KEY" in where


def test_no_key_gives_help_text(config: Config) -> None:
    key, where = find_api_key(config, {})
    assert key is None
    assert "/etc/credstore/relay.anthropic-api-key" in where
    assert "relay-conversation.service" in where
    assert "ANTHROPIC_API_KEY" in where


def test_config_without_source_skips_dotenv() -> None:
    assert find_api_key(Config(sessions=("s",)), {})[0] is None


def test_where_never_contains_the_key(config: Config, tmp_path: Path) -> None:
    dotenv(config, f"ANTHROPIC_API_KEY={KEY}\n")
    for env in (
        {"CREDENTIALS_DIRECTORY": credentials(tmp_path, KEY)},
        {"ANTHROPIC_API_KEY": KEY},
        {},
    ):
        key, where = find_api_key(config, env)
        assert key == KEY
        assert KEY not in where
        assert KEY[:12] not in where


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("anthropic: {timeout_s: .nan}", "anthropic.timeout_s"),
        ("anthropic: {timeout_s: .inf}", "anthropic.timeout_s"),
        ("anthropic: {timeout_s: 1.0e+300}", "anthropic.timeout_s"),
        ("ntfy: {timeout_s: -.inf}", "ntfy.timeout_s"),
        ("ntfy: {timeout_s: 86400}", "ntfy.timeout_s"),
        ("prices: {m: {input: .nan, output: 1}}", "prices.m.input"),
        ("prices: {m: {input: 1, output: .inf}}", "prices.m.output"),
    ],
)
def test_non_finite_and_absurd_numbers_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, f"sessions: [s]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    keys = [p.split(":")[0] for p in err.value.problems]
    assert keys[0] == key, keys


@pytest.mark.parametrize("name", ["operator", "relay", "Operator"])
def test_a_session_may_not_be_named_like_relay_s_own_senders(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"sessions: [session-1, {name}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [
        f"sessions[1]: {name!r} is reserved for relay's own senders; choose another"
    ]


# ---- inputs that must not hang relay or eat its memory ------------------------------------

# Run in a child with a time-out and a memory ceiling: without the fix these hang on a FIFO
# or read /dev/zero without end, and the child is killed, not the test run.
_LOAD = """
import sys
from pathlib import Path
from relay.config import load_config
from relay.errors import ConfigError
try:
    load_config(Path(sys.argv[1]))
except ConfigError as exc:
    print(exc.message)
else:
    print("loaded")
"""


def load_in_child(path: Path) -> str:
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD, str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            preexec_fn=limit_memory,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path} did not finish within 30 s")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "prompt.fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("/dev/zero", "a device"),
        ("/dev/urandom", "a device"),
        ("FIFO", "a FIFO"),
        ("DIR", "a directory"),
    ],
)
def test_a_prompt_file_that_is_no_file_is_refused_with_its_key(
    tmp_path: Path, fifo: Path, name: str, kind: str
) -> None:
    target = {"FIFO": str(fifo), "DIR": str(tmp_path)}.get(name, name)
    config = write(tmp_path, f"sessions: [s]\nsystem_prompt_file: {target}\n")
    assert load_in_child(config) == (
        f"{config}: system_prompt_file: cannot read {target}: not a regular file ({kind})"
    )


@pytest.mark.parametrize("name", ["/dev/zero", "FIFO"])
def test_a_config_file_that_is_no_file_is_refused(fifo: Path, name: str) -> None:
    target = str(fifo) if name == "FIFO" else name
    kind = "a FIFO" if name == "FIFO" else "a device"
    assert load_in_child(Path(target)) == f"{target}: cannot read: not a regular file ({kind})"


def test_too_large_a_prompt_or_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.md").write_bytes(b"x" * (MAX_PROMPT_BYTES + 1))
    problems = problems_of("sessions: [s]\nsystem_prompt_file: big.md\n", tmp_path)
    assert problems == ["system_prompt_file: cannot read big.md: larger than 1024 KiB"]
    (tmp_path / "fits.md").write_bytes(b"x" * MAX_PROMPT_BYTES)
    config = load_config(write(tmp_path, "sessions: [s]\nsystem_prompt_file: fits.md\n"))
    assert len(config.system_prompt) == MAX_PROMPT_BYTES

    padded = write(tmp_path, "sessions: [s]\n" + "#" * (MAX_CONFIG_BYTES + 1) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(padded)
    assert caught.value.problems == ["cannot read: larger than 1024 KiB"]


BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
sessions: *i
"""


def test_yaml_aliases_are_refused_so_a_bomb_cannot_go_off(tmp_path: Path) -> None:
    # Nine levels: 9**9 (~387 million) strings once walked, e.g. to print "got [...]".
    config = write(tmp_path, BILLION_LAUGHS)
    assert load_in_child(config) == (
        f"{config}: line 2: not valid YAML (aliases (*name) are not allowed in relay's config)"
    )


def test_anchors_without_aliases_are_harmless(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "sessions: &all [s]\nmodel: &m m1\n")).model == "m1"


def test_absurdly_nested_or_long_yaml_is_a_config_error(tmp_path: Path) -> None:
    deep = write(tmp_path, "sessions: [s]\nx: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(deep)
    assert caught.value.problems == ["not a relay config: nested too deeply"]
    digits = write(tmp_path, "sessions: [s]\nmax_tokens: " + "9" * 10_000 + "\n", "d.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(digits)
    assert caught.value.problems[0].startswith("not a relay config: ")


def test_a_price_override_keeps_the_models_own_cache_read_ratio() -> None:
    # claude-opus-5-5 reads from the cache at 0.05x: overriding only input and output must
    # not quietly double its read price; an unknown model takes the standard 0.1x.
    config = parse_config(
        {
            "sessions": ["s1"],
            "prices": {
                "claude-opus-5-5": {"input": 8, "output": 40},
                "claude-new-1": {"input": 8, "output": 40},
            },
        }
    )
    assert config.prices["claude-opus-5-5"].cache_read == pytest.approx(0.4)
    assert config.prices["claude-new-1"].cache_read == pytest.approx(0.8)
    assert config.prices["claude-new-1"].cache_write_1h == pytest.approx(16.0)


def test_the_budget_settings_and_their_errors() -> None:
    config = parse_config(
        {
            "sessions": ["s1"],
            "budget": {"daily_usd": 0, "monthly_usd": 250, "warn_at": [0.95, 0.5, 1]},
        }
    )
    assert config.budget.daily_usd == 0.0  # a cap of 0: no API calls at all
    assert config.budget.monthly_usd == 250.0
    assert config.budget.warn_at == (0.5, 0.95, 1.0)
    assert config.budget.timezone == "UTC" and config.cache_ttl == "auto"
    assert parse_config({"sessions": ["s1"]}).budget.warn_at == (0.75, 0.95)
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "sessions": ["s1"],
                "budget": {
                    "daily_usd": -1,
                    "monthly_usd": "lots",
                    "warn_at": [0, 1.5],
                    "timezone": "Mars/Olympus",
                    "weekly_usd": 3,
                },
                "cache_ttl": "10m",
            }
        )
    keys = sorted(p.split(":")[0] for p in caught.value.problems)
    assert keys == [
        "budget.daily_usd",
        "budget.monthly_usd",
        "budget.timezone",
        "budget.warn_at",
        "budget.weekly_usd",
        "cache_ttl",
    ]
    assert any("Europe/Paris" in p for p in caught.value.problems)  # an example of a name
