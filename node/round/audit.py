"""Where a peer's events go: the site's audit log (daemon), memory (simulator, tests), nowhere.

A peer reports every admission decision as an event (`accepted`, `rejected` with a reason,
`budget_spent`, `non_finite_state`, ...); what to keep is the sink's business.
"""

from __future__ import annotations

from typing import Any, Protocol

from gossipmed.consortium.audit import ACCEPTED, EVENT, REJECTED, AuditLog


class AuditSink(Protocol):
    def record(self, event: str, **fields: Any) -> None: ...


def outcome_of(event: str, *, sender: object) -> str:
    """The log's outcome for a peer event. Anything a sender's message caused other than its
    acceptance (a refused secure frame, a message that failed to be handled) is a refusal,
    so it counts against that sender's refused-record budget: otherwise one peer's flood of
    such events would rotate everyone else's history out of the size-capped log."""
    if event in (ACCEPTED, REJECTED):
        return event
    return REJECTED if sender is not None else EVENT


class AuditLogSink:
    """Routes accept/reject events to a site's gossipmed.consortium.audit.AuditLog file."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def record(self, event: str, **fields: Any) -> None:
        where = f" (exchange step {fields['step']})" if fields.get("step") else ""
        reason = str(fields.get("reason", "ok"))
        if event not in (ACCEPTED, REJECTED):  # the site's own decisions: rollbacks, budget
            reason = f"{event}: {reason}" if "reason" in fields else event
            if fields.get("heard"):
                reason += f" (neighbours heard: {', '.join(fields['heard'])})"
        self.log.record(
            outcome=outcome_of(event, sender=fields.get("sender")),
            reason=reason + (f": {fields['detail']}" if "detail" in fields else "") + where,
            sender=fields.get("sender"),
            round=fields.get("msg_round", fields.get("round")),
            payload_hash=str(fields.get("payload_hash", "")),
            size=fields.get("size"),
        )


class NullAudit:
    def record(self, event: str, **fields: Any) -> None:
        return None


class ListAudit:
    """Keeps audit events in memory (simulator, tests)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})
