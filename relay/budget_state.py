"""state/budget.json: what the budgets have already told the operator (so a restart does
not push the same warning again), and until when the Console's workspace limit refuses
calls (so a restart does not spend a call to learn it again). Small, rewritten rarely:
at a warning, a block, or a limit."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from relay import fsutil
from relay.layout import PRIVATE_FILE_MODE
from relay.ledger import iso
from relay.records import parse_ts

log = logging.getLogger(__name__)
MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class BudgetState:
    marks: frozenset[str] = field(default_factory=frozenset)
    workspace_until: datetime | None = None
    workspace_reason: str | None = None
    workspace_pushed: str | None = None  # the limit's end already pushed (ISO), once per date

    def without_limit(self) -> BudgetState:
        """The workspace limit forgotten (it has passed, or the operator says it was raised);
        the date already pushed is kept, so the same refusal again is not pushed again."""
        return replace(self, workspace_until=None, workspace_reason=None)

    def to_json(self) -> dict[str, object]:
        return {
            "marks": sorted(self.marks),
            "workspace_until": iso(self.workspace_until) if self.workspace_until else None,
            "workspace_reason": self.workspace_reason,
            "workspace_pushed": self.workspace_pushed,
        }


def load(path: Path) -> BudgetState:
    """The saved state; a missing or damaged file is an empty one (at worst a warning is
    pushed twice, or one call learns the limit again)."""
    try:
        raw = json.loads(fsutil.read_regular(path, MAX_BYTES))
        marks = frozenset(m for m in raw.get("marks", []) if isinstance(m, str))
        until_text = raw.get("workspace_until")
        until = None
        if isinstance(until_text, str):
            with contextlib.suppress(ValueError):  # a damaged date alone: no limit known
                until = parse_ts(until_text)
        reason = raw.get("workspace_reason")
        pushed = raw.get("workspace_pushed")
        return BudgetState(
            marks,
            until,
            reason if isinstance(reason, str) else None,
            pushed if isinstance(pushed, str) else None,
        )
    except FileNotFoundError:
        return BudgetState()
    except (OSError, ValueError, AttributeError, TypeError, RecursionError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return BudgetState()


def save(path: Path, state: BudgetState) -> None:
    data = json.dumps(state.to_json(), indent=1).encode() + b"\n"
    fsutil.atomic_write(path, data, PRIVATE_FILE_MODE)
