"""`relay costs`: a ledger written by relay's own writer from known usages, every column
checked against numbers worked out by hand; days in three time zones across a month's end;
the filter; damaged lines; the JSON shape; the command end to end."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from relay import cli, costs
from relay.config import BudgetConfig, Config
from relay.ledger import Ledger
from relay.prices import DEFAULT_PRICES, Usage, cost_usd, price_for
from relay.records import OPERATOR, RELAY, LedgerEntry, Sender, session

MILLION = 1_000_000
PARIS, NEW_YORK, UTC_ZONE = ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York"), ZoneInfo("UTC")
NOW = datetime(2026, 4, 1, 13, 0, tzinfo=UTC)  # 15:00 in Paris, 09:00 in New York

# Four calls around the end of March 2026 (Paris is UTC+2 from 29 March, New York UTC-4):
#        UTC                Paris              New York
#   A    03-31 21:30        03-31 23:30        03-31 17:30
#   B    03-31 23:30        04-01 01:30        03-31 19:30
#   C    04-01 03:30        04-01 05:30        03-31 23:30
#   D    04-01 12:00        04-01 14:00        04-01 08:00
#
# A  opus-4-7 ($5 in, $25 out, 5m write $6.25, read $0.50): 10 in, 100 out, 1,000 written 5m.
#    cost (50 + 2,500 + 6,250) / 1M = 0.0088; saved (1,000 x 5 - 1,000 x 6.25) / 1M = -0.00125
# B  opus-5-5 ($4 in, $20 out, 1h write $8, read 0.05x = $0.20): 20 in, 200 out, 2,000 written
#    1h, 10,000 read. cost (80 + 4,000 + 16,000 + 2,000) / 1M = 0.02208;
#    saved (12,000 x 4 - 16,000 - 2,000) / 1M = 0.03
# C  haiku-4-5 ($1 in, $5 out, 5m $1.25, read $0.10), a summary: 1,000 in, 50 out, 500 written
#    5m, 4,000 read. cost (1,000 + 250 + 625 + 400) / 1M = 0.002275;
#    saved (4,500 x 1 - 625 - 400) / 1M = 0.003475
# D  a model with no price (recorded $0, price_known false): 5 in, 5 out, 100 read. Saves 0.
A = LedgerEntry(
    "2026-03-31T21:30:00.000000Z", "turn", "k-a", session("session-1"), "claude-opus-4-7",
    "req_a", "end_turn", Usage(10, 100, 1_000, 0, 0), 0.0088, True,
)  # fmt: skip
B = LedgerEntry(
    "2026-03-31T23:30:00.000000Z", "turn", "k-b", session("session-2"),
    "claude-opus-5-5-20261101", "req_b", "end_turn", Usage(20, 200, 0, 2_000, 10_000), 0.02208,
    True,
)  # fmt: skip
C = LedgerEntry(
    "2026-04-01T03:30:00.000000Z", "summary", "k-c", RELAY, "claude-haiku-4-5", "req_c",
    "end_turn", Usage(1_000, 50, 500, 0, 4_000), 0.002275, True,
)  # fmt: skip
D = LedgerEntry(
    "2026-04-01T12:00:00.000000Z", "turn", "k-d", OPERATOR, "gpt-x", None, "end_turn",
    Usage(5, 5, 0, 0, 100), 0.0, False,
)  # fmt: skip
ENTRIES = (A, B, C, D)
COST = {"A": 0.0088, "B": 0.02208, "C": 0.002275, "D": 0.0}
SAVED = {"A": -0.00125, "B": 0.03, "C": 0.003475, "D": 0.0}


def config(zone: str = "UTC", daily: float | None = None, monthly: float | None = None) -> Config:
    return Config(
        sessions=("session-1", "session-2"), budget=BudgetConfig(daily, monthly, (), zone)
    )


def write_ledger(path: Path, entries: tuple[LedgerEntry, ...] = ENTRIES) -> None:
    ledger = Ledger(path)  # relay's own writer, so the test reads what relay writes
    for entry in entries:
        ledger.record(entry.to_json())


def report(
    path: Path,
    zone: str = "UTC",
    by: costs.Grouping = "day",
    since: date | None = None,
    until: date | None = None,
    **budget: float,
) -> costs.Report:
    cfg = config(zone, budget.get("daily"), budget.get("monthly"))
    return costs.read_ledger(path, costs.Query(by, since, until, cfg.budget.zone), cfg, NOW)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path)
    return path


def test_the_recorded_costs_are_the_price_table_s() -> None:
    # The ledger's costs above are what accounting would have charged: the table agrees.
    for entry in (A, B, C):
        price = price_for(entry.model, DEFAULT_PRICES)
        assert price is not None
        assert cost_usd(entry.usage, price) == pytest.approx(entry.cost_usd, abs=1e-12)
    assert price_for(D.model, DEFAULT_PRICES) is None


def test_each_column_by_day_in_utc(ledger: Path) -> None:
    got = report(ledger)
    assert [row.key for row in got.rows] == ["2026-03-31", "2026-04-01"]
    march, april = got.rows
    assert (march.calls, march.input_tokens, march.output_tokens) == (2, 30, 300)
    assert (march.cache_write_tokens, march.cache_write_1h_tokens) == (1_000, 2_000)
    assert march.cache_read_tokens == 10_000
    assert march.cost_usd == pytest.approx(COST["A"] + COST["B"])
    assert (april.calls, april.input_tokens, april.output_tokens) == (2, 1_005, 55)
    assert (april.cache_write_tokens, april.cache_write_1h_tokens) == (500, 0)
    assert april.cache_read_tokens == 4_100
    assert april.cost_usd == pytest.approx(COST["C"])
    total = got.total
    assert (total.key, total.calls, total.input_tokens, total.output_tokens) == (
        "Total", 4, 1_035, 355,
    )  # fmt: skip
    assert (total.cache_write_tokens, total.cache_write_1h_tokens) == (1_500, 2_000)
    assert total.cache_read_tokens == 14_100
    assert total.cost_usd == pytest.approx(0.033155)
    assert got.damaged == ()


def test_cache_share_and_what_the_cache_saved(ledger: Path) -> None:
    got = report(ledger)
    # Read from the cache over every input token: uncached + written + read.
    assert got.total.cache_read_share == pytest.approx(14_100 / (1_035 + 1_500 + 2_000 + 14_100))
    assert got.total.saved_usd == pytest.approx(sum(SAVED.values()))  # 0.032225
    assert got.total.unpriced_calls == 1  # D
    march, april = got.rows
    assert march.saved_usd == pytest.approx(SAVED["A"] + SAVED["B"])
    assert april.cache_read_share == pytest.approx(4_100 / (1_005 + 500 + 4_100))
    # A call that only wrote to the cache saved less than nothing: writes cost more.
    (only_a,) = report(ledger, by="session", until=date(2026, 3, 31), zone="Europe/Paris").rows
    assert only_a.saved_usd == pytest.approx(-0.00125)


def test_a_price_of_its_own_for_1h_writes_and_per_model_reads() -> None:
    price = DEFAULT_PRICES["claude-opus-5-5"]
    assert (price.cache_write_1h, price.cache_read) == (8.0, 0.2)
    placed = costs.place(B, UTC_ZONE, DEFAULT_PRICES, "claude-opus-4-7")
    assert placed.saved_usd == pytest.approx((12_000 * 4.0 - 2_000 * 8.0 - 10_000 * 0.2) / MILLION)


@pytest.mark.parametrize(
    ("by", "keys", "calls"),
    [
        # Most expensive first: where the money went.
        ("session", ["session-2", "session-1", "relay", "operator"], [1, 1, 1, 1]),
        ("model", ["claude-opus-5-5-20261101", "claude-opus-4-7", "claude-haiku-4-5", "gpt-x"],
         [1, 1, 1, 1]),
        ("kind", ["turn", "summary"], [3, 1]),
        ("day", ["2026-03-31", "2026-04-01"], [2, 2]),
    ],
)  # fmt: skip
def test_rows_by_each_grouping(
    ledger: Path, by: costs.Grouping, keys: list[str], calls: list[int]
) -> None:
    got = report(ledger, by=by)
    assert [row.key for row in got.rows] == keys
    assert [row.calls for row in got.rows] == calls
    assert got.total.cost_usd == pytest.approx(0.033155)  # the total does not depend on it
    if by == "kind":
        turn, summary = got.rows
        assert turn.cost_usd == pytest.approx(COST["A"] + COST["B"])
        assert summary.cost_usd == pytest.approx(COST["C"])
        assert (summary.input_tokens, summary.cache_read_tokens) == (1_000, 4_000)


@pytest.mark.parametrize(
    ("zone", "days", "april_usd", "april_calls"),
    [
        ("UTC", {"2026-03-31": 2, "2026-04-01": 2}, COST["C"], 2),
        ("Europe/Paris", {"2026-03-31": 1, "2026-04-01": 3}, COST["B"] + COST["C"], 3),
        ("America/New_York", {"2026-03-31": 3, "2026-04-01": 1}, 0.0, 1),
    ],
)
def test_days_and_months_begin_at_midnight_in_the_configured_zone(
    ledger: Path, zone: str, days: dict[str, int], april_usd: float, april_calls: int
) -> None:
    got = report(ledger, zone, monthly=1.0, daily=0.01)
    assert {row.key: row.calls for row in got.rows} == days
    assert got.timezone == zone
    # NOW is 1 April in all three zones, so today and the month hold the same calls.
    assert got.month_to_date.name == "2026-04" and got.today.name == "2026-04-01"
    assert got.month_to_date.usd == pytest.approx(april_usd)
    assert got.month_to_date.calls == april_calls
    assert got.today.usd == pytest.approx(april_usd) and got.today.calls == april_calls
    assert got.month_to_date.used == pytest.approx(april_usd / 1.0)
    assert got.today.used == pytest.approx(april_usd / 0.01)


def test_since_and_until_are_inclusive_days_in_the_zone(ledger: Path) -> None:
    april = date(2026, 4, 1)
    got = report(ledger, "Europe/Paris", since=april)
    assert got.total.calls == 3 and got.total.cost_usd == pytest.approx(COST["B"] + COST["C"])
    got = report(ledger, "Europe/Paris", until=date(2026, 3, 31))
    assert got.total.calls == 1 and got.total.cost_usd == pytest.approx(COST["A"])
    got = report(ledger, "America/New_York", since=april, until=april)
    assert [row.key for row in got.rows] == ["2026-04-01"] and got.total.calls == 1
    # The budget lines count every call of the period, whatever the filter shows.
    assert got.month_to_date.calls == 1
    got = report(ledger, "Europe/Paris", until=date(2026, 3, 31))
    assert got.month_to_date.calls == 3


def test_damaged_lines_are_reported_by_number_and_the_rest_counted(ledger: Path) -> None:
    good = ledger.read_bytes().splitlines(keepends=True)
    bad_usage = dict(A.to_json(), usage={**A.usage.as_dict(), "input_tokens": "10"})
    damaged = [
        good[0],
        b"this is not json\n",  # line 2
        json.dumps(bad_usage).encode() + b"\n",  # 3
        json.dumps(dict(A.to_json(), cost_usd=math.nan)).encode() + b"\n",  # 4: NaN
        good[1],
        b"[1, 2]\n",  # 6
        json.dumps(dict(A.to_json(), ts="yesterday")).encode() + b"\n",  # 7
        json.dumps(dict(A.to_json(), cost_usd=-1)).encode() + b"\n",  # 8
        b"\xff\xfe\n",  # 9
        b"\n",  # 10: blank, no call and no damage
        b"x" * (costs.MAX_LINE + 10) + b"\n",  # 11
        good[2],
        good[3],
        json.dumps(dict(A.to_json(), ts="9999-12-31T23:59:59+00:00")).encode() + b"\n",  # 14
        good[0][:40],  # 15: torn, as a crash mid-write leaves it
    ]
    ledger.write_bytes(b"".join(damaged))
    got = report(ledger)
    assert [(d.line, d.reason) for d in got.damaged] == [
        (2, "not JSON"),
        (3, "usage.input_tokens is not a token count"),
        (4, "cost_usd is not a non-negative number"),
        (6, "not an object"),
        (7, "ts 'yesterday' is not an ISO time"),
        (8, "cost_usd is not a non-negative number"),
        (9, "not UTF-8"),
        (11, f"longer than {costs.MAX_LINE} bytes"),
        (14, "ts '9999-12-31T23:59:59+00:00' is out of range"),
        (15, "incomplete last line (a write cut short)"),
    ]
    assert got.total.calls == 4 and got.total.cost_usd == pytest.approx(0.033155)
    out, err = costs.render_text(got)
    assert "Total" in out
    assert (
        err.splitlines()[0]
        == "relay: 10 damaged ledger lines skipped (the report counts the rest):"
    )
    assert "relay:   line 15: incomplete last line (a write cut short)" in err.splitlines()
    assert [d["line"] for d in got.to_json()["damaged"]] == [2, 3, 4, 6, 7, 8, 9, 11, 14, 15]


def test_a_ledger_from_an_older_release_is_read_with_defaults(tmp_path: Path) -> None:
    old = A.to_json()
    del old["price_known"]
    del old["usage"]["cache_write_1h_tokens"]
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps(old) + "\n")
    got = report(path)
    assert got.damaged == () and got.total.calls == 1
    assert got.total.cost_usd == pytest.approx(COST["A"])
    assert got.total.saved_usd == pytest.approx(SAVED["A"])


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_no_ledger_yet_is_an_empty_report(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ledger.jsonl"
    if kind == "empty":
        path.write_bytes(b"")
    got = report(path, monthly=50.0)
    assert got.rows == () and got.total.calls == 0 and got.damaged == ()
    assert got.total.cache_read_share is None
    out, err = costs.render_text(got)
    assert "no API calls recorded yet" in out and err == ""
    assert "month to date (2026-04): $0.0000 in 0 call(s) of $50.00 budget (0.0%" in out
    shape = got.to_json()
    assert shape["rows"] == [] and shape["total"]["calls"] == 0
    assert shape["cache_read_share"] is None and shape["saved_usd"] == 0.0


def test_the_json_shape(ledger: Path) -> None:
    got = json.loads(costs.render_json(report(ledger, "Europe/Paris", monthly=100.0)))
    assert list(got) == [
        "ledger", "by", "timezone", "since", "until", "rows", "total", "cache_read_share",
        "saved_usd", "unpriced_calls", "today", "month_to_date", "damaged",
    ]  # fmt: skip
    row_keys = [
        "key", "calls", "input_tokens", "output_tokens", "cache_write_tokens",
        "cache_write_1h_tokens", "cache_read_tokens", "cost_usd", "cache_read_share",
        "saved_usd", "unpriced_calls",
    ]  # fmt: skip
    assert all(list(row) == row_keys for row in got["rows"])
    assert got["total"] == {
        "key": "Total",
        "calls": 4,
        "input_tokens": 1_035,
        "output_tokens": 355,
        "cache_write_tokens": 1_500,
        "cache_write_1h_tokens": 2_000,
        "cache_read_tokens": 14_100,
        "cost_usd": 0.033155,
        "cache_read_share": round(14_100 / 18_635, 6),
        "saved_usd": 0.032225,
        "unpriced_calls": 1,
    }
    assert got["saved_usd"] == 0.032225 and got["unpriced_calls"] == 1
    assert got["month_to_date"] == {
        "period": "2026-04",
        "usd": 0.024355,
        "calls": 3,
        "budget_usd": 100.0,
        "used": 0.000244,
        "remaining_usd": 99.975645,
    }
    assert got["today"]["period"] == "2026-04-01" and got["today"]["budget_usd"] is None
    assert got["today"]["used"] is None and got["today"]["remaining_usd"] is None
    assert (got["by"], got["timezone"], got["since"], got["damaged"]) == (
        "day", "Europe/Paris", None, [],
    )  # fmt: skip


def test_the_table_is_aligned_with_a_total_row_and_the_summary_below(ledger: Path) -> None:
    out, err = costs.render_text(report(ledger, "Europe/Paris", daily=0.02, monthly=10.0))
    assert err == ""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Day"))
    table = lines[header : header + 6]
    assert table[0].split("  ")[0] == "Day" and "Cache write 1h" in table[0]
    assert [line.split()[0] for line in table[2:4]] == ["2026-03-31", "2026-04-01"]
    assert table[5].split() == [
        "Total", "4", "1,035", "355", "1,500", "2,000", "14,100", "$0.0332",
    ]  # fmt: skip
    assert len({len(line) for line in table}) == 1  # right-aligned to one width
    assert f"cache: {14_100 / 18_635:.1%} of input tokens read from the cache" in out
    assert "saved $0.0322 against no caching" in out
    assert "month to date (2026-04): $0.0244 in 3 call(s) of $10.00 budget (0.2%" in out
    assert "today (2026-04-01): $0.0244 in 3 call(s) of $0.02 budget (121.8%; $0.0000 left)" in out
    assert "1 call(s) of a model with no price" in out


def test_numbered_lines_streams_and_skips_an_endless_line() -> None:
    data = b"one\n" + b"y" * (3 * costs.MAX_LINE) + b"\nthree"
    assert list(costs.numbered_lines(io.BytesIO(data))) == [(1, b"one\n"), (2, None), (3, b"three")]


def test_the_ledger_is_created_for_operators_to_read(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    old = os.umask(0o077)  # what the units run with
    try:
        write_ledger(path, (A,))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    path.chmod(0o600)  # as an older release left it
    write_ledger(path, (B,))
    assert path.stat().st_mode & 0o777 == 0o640
    assert len(path.read_bytes().splitlines()) == 2


# ---- the command -----------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "relay", "costs", *args],
        text=True,
        capture_output=True,
        env=environ,
        timeout=60,
    )


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"sessions: [session-1, session-2]\ndata_dir: {tmp_path / 'data'}\nntfy: {{server: null}}\n"
        "budget: {monthly_usd: 25, timezone: Europe/Paris}\n"
    )
    (tmp_path / "data" / "state").mkdir(parents=True)
    return path


def test_the_command_end_to_end(cfg_file: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "data" / "state" / "ledger.jsonl"
    done = run("--config", str(cfg_file))
    assert done.returncode == 0, done.stderr
    assert "no API calls recorded yet" in done.stdout and done.stderr == ""
    write_ledger(ledger)
    with ledger.open("ab") as handle:
        handle.write(b"{torn")
    done = run("--config", str(cfg_file), "--since", "2026-04-01", "--until", "2026-04-01")
    assert done.returncode == 0, done.stderr
    assert "relay costs by day, 2026-04-01 to 2026-04-01, days in Europe/Paris" in done.stdout
    (total,) = (line for line in done.stdout.splitlines() if line.startswith("Total"))
    assert total.split()[:2] == ["Total", "3"]  # B, C and D are on 1 April in Paris
    assert "line 5: incomplete last line" in done.stderr
    assert "month to date (" in done.stdout and "of $25.00 budget" in done.stdout
    done = run("--config", str(cfg_file), "--by", "model", "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["by"] == "model" and got["timezone"] == "Europe/Paris"
    assert got["total"]["calls"] == 4 and got["total"]["cost_usd"] == 0.033155
    assert got["damaged"] == [{"line": 5, "reason": "incomplete last line (a write cut short)"}]
    assert got["month_to_date"]["budget_usd"] == 25.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2026-4-1"], "--since: expected a date as YYYY-MM-DD (or YYYYMMDD), got"),
        (["--until", "2026-02-30"], "--until: expected a date as YYYY-MM-DD (or YYYYMMDD), got"),
        (["--until", "20260230"], "got '20260230'"),
        (["--since", "2026-04-02", "--until", "2026-04-01"], "--since 2026-04-02 is after"),
        (["--by", "week"], "invalid choice: 'week'"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(cfg_file: Path, args: list[str], message: str) -> None:
    done = run("--config", str(cfg_file), *args)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("relay: ") and message in line
    assert done.stdout == ""


def test_dates_as_ccusage_takes_them() -> None:
    assert costs.parse_date("20260401", "--since") == costs.parse_date("2026-04-01", "--since")


def test_a_ledger_the_user_may_not_read_gives_the_operator_hint(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Root reads any file, so inject what a user outside relay-operators meets.
    def denied(path: Path, *args: object) -> costs.Report:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(costs, "read_ledger", denied)
    assert cli.main(["costs", "--config", str(cfg_file)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "permission denied: " in line and "ledger.jsonl" in line
    assert "relay status, costs, topic and reply" in line
    assert "sudo usermod -aG relay-operators $USER" in line


def test_a_sender_decodes_back_from_the_ledger() -> None:
    # Sessions, the operator and relay itself: the `--by session` keys are their wire names.
    for sender in (session("session-1"), OPERATOR, RELAY, Sender("session", "ops")):
        entry = LedgerEntry("2026-04-01T00:00:00Z", "turn", "k", sender, "m", None, None,
                            Usage(), 0.0, True)  # fmt: skip
        line = costs.decode_lines([(1, json.dumps(entry.to_json()).encode() + b"\n")])
        assert list(line) == [entry]
