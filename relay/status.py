"""state/status.json: written atomically by the conversation service, read by `relay status`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay import fsutil, systemd
from relay.layout import OPERATOR_FILE_MODE
from relay.records import Status

log = logging.getLogger(__name__)

UNITS = (
    "relay.target",
    "relay-conversation.service",
    "relay-answers.service",
    "relay-queue.path",
    "relay-jc.path",
)


def write(path: Path, status: dict[str, Any]) -> None:
    data = json.dumps(status, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    # Not fsync'd: it is a report, rewritten often, and rebuilt from durable state on start.
    # 0640: state/ is setgid relay-operators, so its members read it (`relay status` without
    # sudo). It is written for the operator (the state, the question waiting for them, the
    # cost); it never holds the key or the history. Clients cannot reach state/.
    fsutil.atomic_write(path, data, OPERATOR_FILE_MODE, durable=False)


STATUS_REFRESH_S = 30.0  # rewritten this often even when nothing changed (updated_at)
STATUS_RETRY_S = 5.0


class StatusWriter:
    """Writes status.json when it changes (and every STATUS_REFRESH_S for updated_at)."""

    def __init__(self, path: Path, monotonic: Callable[[], float]) -> None:
        self.path = path
        self.monotonic = monotonic
        self._written: dict[str, Any] | None = None
        self._time = -1e9
        self._failed = False

    def write(self, snapshot: Status, force: bool = False) -> None:
        current = snapshot.to_json()
        comparable = {k: v for k, v in current.items() if k != "updated_at"}
        since = self.monotonic() - self._time
        # A failed write (a full disk) is tried again only every few seconds: the loop must
        # not spin on it, and the write's own temp file would wake the loop again.
        due = since > (STATUS_RETRY_S if self._failed else STATUS_REFRESH_S)
        if not (force or due or (comparable != self._written and not self._failed)):
            return
        self._time = self.monotonic()
        try:
            write(self.path, current)
        except OSError as exc:  # a report: never worth stopping work for
            if not self._failed:
                log.warning("cannot write %s: %s", self.path, exc)
            self._failed = True
            return
        self._failed = False
        self._written = comparable


def read(path: Path) -> dict[str, Any]:
    # Never blocks on a FIFO or follows a link: `relay status` and recovery both read it.
    data = json.loads(fsutil.read_regular(path, 1 << 20, follow_symlinks=False).decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("status.json is not an object")
    return data


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user (relay, when root is not asking)
    return True


def unit_health() -> dict[str, str] | None:
    """`systemctl is-active` for the relay units, when systemd runs this machine."""
    if not systemd.running_under_systemd() or shutil.which("systemctl") is None:
        return None
    result = subprocess.run(
        ["systemctl", "is-active", *UNITS], capture_output=True, text=True, timeout=10, check=False
    )
    states = result.stdout.split()
    return dict(zip(UNITS, states, strict=False)) if len(states) == len(UNITS) else None


def format_status(status: dict[str, Any], health: dict[str, str] | None) -> str:
    """The human-readable form of `relay status`."""
    lines = [f"state:          {status.get('state', '?')}"]
    if status.get("state_detail"):
        lines.append(f"                {status['state_detail']}")
    if status.get("api_key") is False:
        lines.append(f"api key:        MISSING: {status.get('api_key_help', '')}")
    if status.get("needs_jc_session") or status.get("state") == "needs_jc":
        lines.append(f"waiting for:    operator (raised by {status.get('needs_jc_session')})")
        question = str(status.get("last_needs_jc_text") or "")
        ident = status.get("needs_jc_question")
        lines.append(f"question:       {f'{ident}: ' if ident else ''}{question[:300]}")
    lines.append(f"last dispatch:  {status.get('last_dispatch_session') or '-'}")
    lines.append(f"history turns:  {status.get('history_turns', 0)}")
    lines.append(f"inbox:          {status.get('inbox', 0)} waiting")
    pending = status.get("pending") or {}
    lines.append(
        "pending:        " + (", ".join(f"{s}={n}" for s, n in sorted(pending.items())) or "-")
    )
    lines.append(
        f"cost today:     ${float(status.get('cost_today_usd') or 0):.4f} "
        f"({status.get('calls_today', 0)} calls)"
    )
    budget = status.get("budget")
    if isinstance(budget, dict) and (budget.get("daily_usd") or budget.get("monthly_usd")):
        month = float(status.get("cost_month_usd") or 0)
        caps = []
        if budget.get("daily_usd"):
            today = float(status.get("cost_today_usd") or 0)
            caps.append(f"${today:.2f} of ${budget['daily_usd']:.2f} today")
        if budget.get("monthly_usd"):
            caps.append(f"${month:.2f} of ${budget['monthly_usd']:.2f} this month")
        lines.append(f"budget:         {'; '.join(caps)} ({budget.get('timezone')})")
    if status.get("last_error"):
        lines.append(f"last error:     {status['last_error']}")
    lines.append(f"updated:        {status.get('updated_at', '?')} (pid {status.get('pid', '?')})")
    if health:
        lines.append("units:          " + ", ".join(f"{u} {s}" for u, s in health.items()))
    return "\n".join(lines)
