"""A member cannot rotate a site's audit history away with messages the site refuses.

The audit log limits refused records per sender (the rest of a window becomes one
`suppressed` record), so that one peer's flood cannot push everyone else's records out of
the size-capped, rotating log. Refusals reach the log as `rejected` records from the plain
path, but as events from the secure-aggregation session (`secure_frame_refused`) and from
the driver's pump (`receive_failed`); these must count against the sender's budget too.
Here a signed-in member (it holds a real key; the transport has authenticated it) sends
malformed secure-aggregation frames to a real SecureSession whose audit is the daemon's
sink over a real AuditLog.
"""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx
from adversary import enrol
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmed.consortium.audit import AuditLog, read_audit
from gossipmed.mixing.secagg import FixedPoint
from node.round.audit import AuditLogSink
from node.round.secure_frame import MAGIC
from node.round.secure_session import SecureSession
from topology.schedule import MixingSchedule

NAMES = ["mallory", "site-00", "site-01", "site-02"]
PER_WINDOW = 5


def _victim(tmp: Path) -> tuple[SecureSession, AuditLog]:
    world = enrol(NAMES, edges=[(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1 :]])
    graph = nx.Graph(world.roster.edges)
    log = AuditLog(tmp / "audit.jsonl", refused_per_window=PER_WINDOW, window_s=3600.0)
    session = SecureSession(
        name="site-00",
        signing_key=world.identities["site-00"].signing_key,
        sign_keys={m.name: m.sign_key for m in world.roster.members},
        roster_hash=world.roster.hash,
        schedule=MixingSchedule.from_graphs([graph]),
        schema={"x": (4,)},
        fixed_point=FixedPoint(),
        timeout_s=10.0,
        audit=AuditLogSink(log).record,
    )
    return session, log


@settings(max_examples=5, deadline=None)
@given(flood=st.integers(min_value=PER_WINDOW + 1, max_value=200))
def test_refused_frames_are_rate_limited_per_sender(tmp_path_factory, flood: int) -> None:
    session, log = _victim(tmp_path_factory.mktemp("audit"))
    for _ in range(flood):
        session.handle("mallory", MAGIC + os.urandom(64))
    assert session.refused == flood  # every one refused...
    log.flush_suppressed()
    records = [r for r in read_audit(log.path) if r["sender"] == "mallory"]
    # ...but at most the sender's budget is written, plus one record summing the rest
    assert len(records) <= PER_WINDOW + 1
    assert sum(r.get("suppressed", 1) for r in records) == flood
