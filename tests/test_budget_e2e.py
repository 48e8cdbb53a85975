"""Budgets end to end, over every deployment (tests/deployment.py: `relay run`, and the .deb
under systemd in a container): warnings, the block with no further API calls, envelopes
still accepted, a direct operator message passing, resumption at the period boundary (on
relay's test clock) and when the budget is raised by a reload, and the Console's workspace
limit. Only the ⚑ contract is touched: the config, `relay submit`/`reply`/`reload`,
status.json, the ledger, the pushes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from tests.deployment import TOPIC, Deployment
from tests.standin.api import StandinAPI, workspace_limit_reached
from tests.standin.ntfy import NtfyMessage, StandinNtfy

# Output is the only priced token kind here, and each reply is 10 tokens: $0.10 a call.
PRICES = {
    "claude-opus-4-7": {
        "input": 0,
        "output": 10_000,
        "cache_write": 0,
        "cache_write_1h": 0,
        "cache_read": 0,
    }
}
TEN_TOKENS = "[[reply: " + "x" * 40 + "]]"
# A new inbox item wakes relay at once: had it started a call, the stand-in would have it.
QUIET_S = 3.0


def budget_pushes(ntfy: StandinNtfy) -> list[NtfyMessage]:
    return [m for m in ntfy.messages if m.topic == TOPIC and "budget" in (m.title or "")]


def spend_to_the_cap(deployment: Deployment, api: StandinAPI) -> None:
    """Three calls of $0.10 against a $0.30 daily cap, with a warning at 50 %."""
    for n in range(3):
        deployment.submit("session-1", f"task {n} {TEN_TOKENS}")
        deployment.consume("session-1")
    assert len(api.message_calls()) == 3


def test_budget_warns_blocks_and_resumes_at_the_boundary(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    deployment.reset(budget={"daily_usd": 0.3, "warn_at": [0.5], "timezone": "UTC"}, prices=PRICES)
    deployment.use_test_clock()
    spend_to_the_cap(deployment, api)
    status = deployment.wait_status(lambda s: s["state"] == "blocked")
    assert "daily budget of $0.30" in status["state_detail"]
    assert status["budget"]["blocked"] == "daily"
    assert status["cost_today_usd"] == 0.3
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert status["budget"]["resets_at"].startswith(f"{tomorrow}T00:00:00")
    warn, block = deployment.wait_for(
        lambda: budget_pushes(ntfy) if len(budget_pushes(ntfy)) >= 2 else None, "two pushes"
    )
    assert warn.title == "relay: 50% of the daily budget" and warn.priority == 3
    assert block.title == "relay paused: daily budget reached" and block.priority == 4
    assert "$0.20" in warn.message and "$0.30" in block.message

    # At the cap: a new envelope is accepted and waits; no call starts.
    deployment.submit("session-1", f"after the cap {TEN_TOKENS}")
    deployment.wait_status(lambda s: s["inbox"] == 1)
    # A direct operator message needs no call and goes through.
    done = deployment.cli("reply", "-", stdin="@session-2: stop for today")
    assert done.returncode == 0, done
    assert deployment.consume("session-2") == "stop for today"
    time.sleep(QUIET_S)
    assert len(api.message_calls()) == 3
    assert len(budget_pushes(ntfy)) == 2  # the block was pushed once
    assert deployment.status()["state"] == "blocked"  # type: ignore[index]

    # Past midnight (UTC here) the day's budget is new: the waiting envelope is answered.
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    deployment.shift_clock((midnight - now).total_seconds() + 5)
    assert deployment.consume("session-1") == "x" * 40
    assert "after the cap" in str(api.message_calls()[-1].body["messages"][-1])
    status = deployment.wait_status(lambda s: s["state"] == "running")
    assert status["cost_today_usd"] == 0.1
    assert len(api.message_calls()) == 4
    ledger = deployment.lines("state/ledger.jsonl")
    assert [round(e["cost_usd"], 6) for e in ledger] == [0.1] * 4
    assert ledger[-1]["ts"].startswith(midnight.strftime("%Y-%m-%d"))


def test_the_workspace_limit_blocks_until_its_date_with_one_push(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    deployment.reset()
    api.script(workspace_limit_reached("2031-01-01 at 00:00 UTC"))
    deployment.submit("session-1", "first")
    status = deployment.wait_status(lambda s: s["state"] == "blocked")
    assert "2031-01-01 00:00 UTC" in status["state_detail"]
    assert status["budget"]["blocked"] == "workspace"
    deployment.submit("session-1", "second")
    deployment.wait_status(lambda s: s["inbox"] == 2)
    time.sleep(QUIET_S)
    assert len(api.message_calls()) == 1  # never a retry loop
    pushes = [m for m in ntfy.messages if m.topic == TOPIC and m.priority >= 4]
    assert [m.title for m in pushes] == ["relay is blocked: workspace usage limit"]
    assert "2031-01-01" in pushes[0].message
    # A restart remembers the date: still no call.
    deployment.stop()
    deployment.start()
    time.sleep(QUIET_S)
    assert len(api.message_calls()) == 1
    assert deployment.status()["budget"]["blocked"] == "workspace"  # type: ignore[index]


def test_a_raised_budget_applies_on_reload_without_a_restart(
    deployment: Deployment, api: StandinAPI, ntfy: StandinNtfy
) -> None:
    capped = {"daily_usd": 0.3, "warn_at": [0.5], "timezone": "UTC"}
    deployment.reset(budget=capped, prices=PRICES)
    spend_to_the_cap(deployment, api)
    deployment.submit("session-1", f"waiting {TEN_TOKENS}")
    status = deployment.wait_status(lambda s: s["state"] == "blocked" and s["inbox"] == 1)
    pid = status["pid"]
    deployment.rewrite_config(budget={**capped, "daily_usd": 1.0}, prices=PRICES)
    done = deployment.reload()
    assert done.returncode == 0, done
    assert deployment.consume("session-1") == "x" * 40
    status = deployment.wait_status(lambda s: s["state"] == "running")
    assert status["pid"] == pid and status["budget"]["daily_usd"] == 1.0
    assert len(api.message_calls()) == 4
    # The 50 % warning of the new cap ($0.50) comes once, as the fifth call crosses it.
    deployment.submit("session-1", f"more {TEN_TOKENS}")
    deployment.consume("session-1")
    deployment.wait_for(
        lambda: [m for m in budget_pushes(ntfy) if "$1.00" in m.message] or None, "a warning"
    )
    titles = [m.title for m in budget_pushes(ntfy)]
    assert titles.count("relay: 50% of the daily budget") == 2  # one per cap
