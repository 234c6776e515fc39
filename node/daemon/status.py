"""What `gossipmed status` (and /status, /metrics) shows about a running daemon.

One JSON object, version `v`; every number finite (non-finite values become null) so that
JSON and Prometheus clients never choke on a diverged run.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from gossipmed.consortium.roster import Roster
from gossipmed.learn.learner import Learner
from gossipmed.strict_json import finite
from node.daemon.config import DaemonSettings
from node.net.transport import Transport
from node.round.driver import DriverState
from node.round.peer import Peer

STATUS_VERSION = 2


@dataclass(frozen=True)
class Resumed:
    round: int
    epsilon: float
    adapter_digest: str


def ledger_budget(learner: Learner) -> tuple[float | None, float | None]:
    ledger = learner.ledger
    if ledger is None:
        return None, None
    return float(ledger.epsilon), float(ledger.budget)


def build_status(
    *,
    settings: DaemonSettings,
    roster: Roster,
    peer: Peer,
    peer_id: str,
    state: DriverState,
    transport: Transport | None,
    listen: list[str],
    resumed: Resumed | None,
    restored: tuple[str, ...],
    rejected: int,
    max_update_bytes: int,
    started_at: float,
    ready_at: float | None = None,
) -> dict[str, Any]:
    spent, budget = ledger_budget(peer.learner)
    stats = peer.neighbour_stats()
    peers = []
    for name in sorted(peer.schedule.neighbours(state.round, peer.name)):
        seen = stats.get(name)
        link = getattr(transport, "link", None)  # libp2p only: who dials, which direction
        info = link(name) if link is not None else None
        peers.append(
            {
                "name": name,
                "peer_id": roster.member(name).peer_id,
                "connected": transport.connected(name) if transport is not None else False,
                "last_heard": seen.last_heard if seen else None,
                "last_round": seen.last_round if seen else None,
                "accepted": seen.accepted if seen else 0,
                "reachable": roster.member(name).reachable,
                "link": asdict(info) if info is not None else None,
                "wait_s": state.waits.get(name),  # this exchange's wait for it (adaptive)
            }
        )
    last = state.last_record
    return finite(
        {
            "v": STATUS_VERSION,
            "site": peer.name,
            "pid": os.getpid(),
            "peer_id": peer_id,
            "listen": listen,
            "round": state.round,
            "phase": state.phase,
            "completed": state.completed,
            "skipped_rounds": [list(r) for r in state.skipped],
            "deferred_rounds": state.deferred,
            "rounds_planned": settings.daemon.rounds or None,
            "round_timeout_s": settings.gossip.round_timeout_s,
            "max_update_bytes": max_update_bytes,
            "gossip_steps": peer.gossip_steps,
            "consortium": {"hash": roster.hash_hex, **roster.settings.to_mapping()},
            "gossip": settings.gossip.describe(),
            "restored": list(restored),
            "uptime_s": time.time() - started_at,
            # listening, driving rounds and serving this endpoint (systemd got READY=1)
            "ready": ready_at is not None,
            "ready_since": ready_at,
            "resumed": asdict(resumed) if resumed else None,
            "epsilon": {"spent": spent if spent is not None else peer.epsilon, "budget": budget},
            "peers": peers,
            "last_metrics": last.to_json() if last else None,
            "bytes": {"sent": state.bytes_sent, "received": state.bytes_received},
            "rejected": rejected,
            "failures": state.failures,
            "failed_rounds": state.failed_rounds,
        }
    )
