"""The audit log is bounded whatever peers send: it rotates past a size cap (a bounded number
of 0600 files), and refused records are rate-limited per sender, the excess summed into one
`suppressed` record, so every refusal is still counted."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_envelope import SCHEMA, seal, sealer

from gossipmed.consortium.audit import (
    ACCEPTED,
    EVENT,
    MAX_TRACKED_SENDERS,
    REFUSED_PER_WINDOW,
    REJECTED,
    WINDOW_S,
    AuditLog,
    audit_files,
    read_audit,
)
from gossipmed.errors import GossipmedError

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def refused_count(records: list[dict[str, object]]) -> int:
    """Refusals a reader can account for: written records plus the suppressed counts."""
    rejected = [r for r in records if r["outcome"] == REJECTED]
    return sum(int(r.get("suppressed", 0) or 1) for r in rejected)  # type: ignore[call-overload]


def test_a_member_replaying_a_refused_envelope_cannot_grow_the_log_past_its_rate(
    tmp_path: Path,
) -> None:
    clock = Clock()
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, clock=clock)  # the daemon's defaults
    opener = sealer("b")
    envelope = seal(frm="a", to="b", round=2)
    opener.open(envelope, expected_schema=SCHEMA, audit=audit)
    replays = 4 * REFUSED_PER_WINDOW
    for _ in range(replays):
        with pytest.raises(GossipmedError):
            opener.open(envelope, expected_schema=SCHEMA, audit=audit)

    written = read_audit(path)
    assert len(written) == 1 + REFUSED_PER_WINDOW  # the accepted one and the window's share

    clock.now += WINDOW_S  # the next record of any kind closes the window
    audit.record(outcome=EVENT, reason="tick", sender=None, round=None, payload_hash="")
    records = read_audit(path)
    summary = [r for r in records if r.get("suppressed")]
    assert len(summary) == 1 and summary[0]["sender"] == "a"
    assert summary[0]["suppressed"] == replays - REFUSED_PER_WINDOW
    assert "suppressed" in summary[0]["reason"]
    assert refused_count(records) == replays


def test_senders_beyond_the_tracked_number_share_one_budget(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, clock=Clock(), refused_per_window=2)
    senders = MAX_TRACKED_SENDERS + 100  # an outsider may claim any number of peer IDs
    for i in range(senders):
        audit.record(outcome=REJECTED, reason="r", sender=f"p{i}", round=None, payload_hash="")
    audit.flush_suppressed()
    records = read_audit(path)
    assert len(records) <= MAX_TRACKED_SENDERS + 2 + 1
    assert refused_count(records) == senders


EVENTS = st.lists(
    st.tuples(
        st.sampled_from([ACCEPTED, REJECTED, REJECTED, REJECTED, EVENT]),
        st.sampled_from(["a", "b", "x" * 300, None]),
        st.floats(min_value=0.0, max_value=30.0),  # seconds since the previous record
        st.integers(min_value=0, max_value=400),  # reason length
    ),
    max_size=120,
)


@settings(max_examples=40, deadline=None)
@given(events=EVENTS)
def test_the_log_stays_bounded_private_and_accounts_for_every_refusal(
    tmp_path_factory: pytest.TempPathFactory, events: list[tuple[str, str | None, float, int]]
) -> None:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    clock = Clock()
    max_bytes, keep, per_window, window_s = 2048, 2, 3, 20.0
    audit = AuditLog(
        path,
        clock=clock,
        max_bytes=max_bytes,
        keep=keep,
        refused_per_window=per_window,
        window_s=window_s,
    )
    refused = 0
    longest = 0
    for outcome, sender, dt, reason_len in events:
        clock.now += dt
        entry = audit.record(
            outcome=outcome, reason="r" * reason_len, sender=sender, round=1, payload_hash=""
        )
        longest = max(longest, len(str(entry)) + 64)
        refused += outcome == REJECTED
        files = audit_files(path, keep=keep + 3)
        assert len(files) <= keep + 1
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        assert all(f.stat().st_size <= max_bytes + longest for f in files)
    audit.flush_suppressed()
    records = read_audit(path)
    lost = [r for r in records if r["outcome"] == REJECTED]
    if len(audit_files(path)) <= keep:  # nothing rotated away yet: every refusal is there
        assert refused_count(records) == refused
    else:
        assert refused_count(lost) <= refused
    # per sender and window, at most `per_window` refused records were written one by one
    by_sender: dict[object, list[float]] = {}
    for r in records:
        if r["outcome"] == REJECTED and not r.get("suppressed"):
            by_sender.setdefault(r["sender"], []).append(float(r["time"]))  # type: ignore[arg-type]
    for times in by_sender.values():
        for t in times:
            assert sum(1 for u in times if t <= u < t + window_s) <= 2 * per_window
