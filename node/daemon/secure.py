"""The daemon's secure-aggregation session (node.round.secure_session), from the consortium
file and the site's identity, with its ContributionGuard kept in the site's state folder.

The guard file is written (atomically, 0600) before any contribution of an exchange leaves,
so a site killed at any point and restarted never contributes twice to one instance: its
neighbours' instances of that round see it as dropped instead. Ephemeral keys and self-mask
seeds are never written anywhere, so a restarted site never reuses a mask. A restarted site
never resumes an instance: it starts at the round after its checkpoint, and an instance it
had already opened as receiver fails below the threshold (its neighbours' guards refuse to
contribute again) and is skipped, audited.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from gossipmed.consortium.crypto import Identity
from gossipmed.consortium.roster import Roster
from gossipmed.errors import CheckpointError, ConfigError
from gossipmed.mixing.secagg import ContributionGuard
from gossipmed.storage.atomic import atomic_write_json
from node.round.secure_frame import FRAME_OVERHEAD
from node.round.secure_session import SecureSession
from topology.schedule import MixingSchedule

GUARD_FILE = "secagg_guard.json"


def load_guard(state_dir: Path) -> ContributionGuard:
    guard = ContributionGuard()
    path = state_dir / GUARD_FILE
    if not path.exists():
        return guard
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    guard.load_state_dict(doc)
    return guard


def guard_writer(state_dir: Path) -> Callable[[ContributionGuard], None]:
    def persist(guard: ContributionGuard) -> None:
        atomic_write_json(state_dir / GUARD_FILE, guard.state_dict())

    return persist


def roster_sign_keys(roster: Roster) -> dict[str, bytes]:
    return {m.name: m.sign_key for m in roster.members if not m.revoked}


def build_session(
    *,
    name: str,
    identity: Identity,
    roster: Roster,
    schedule: MixingSchedule,
    state: Mapping[str, torch.Tensor],
    timeout_s: float,
    state_dir: Path,
    audit: Callable[..., None],
) -> SecureSession:
    """The session, or ConfigError when some neighbourhood cannot reach the threshold."""
    short = roster.secagg_short_sites()
    if short:
        raise ConfigError(
            "secure aggregation: the consortium graph leaves too few neighbours at: "
            + ", ".join(short)
        )
    return SecureSession(
        name=name,
        signing_key=identity.signing_key,
        sign_keys=roster_sign_keys(roster),
        roster_hash=roster.hash,
        schedule=schedule,
        schema={k: tuple(v.shape) for k, v in state.items()},
        fixed_point=roster.settings.envelope,
        timeout_s=timeout_s,
        guard=load_guard(state_dir),
        persist_guard=guard_writer(state_dir),
        audit=audit,
    )


def frame_limit(session: SecureSession) -> int:
    """The largest frame a neighbour may send (the transport's max_bytes must allow it)."""
    return session.limits.max_bytes + FRAME_OVERHEAD


def secure_status(session: SecureSession | None, last: Any) -> dict[str, Any]:
    if session is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "fixed_point": {
            "range": session.fixed_point.range,
            "frac_bits": session.fixed_point.frac_bits,
            "modulus_bits": session.fixed_point.modulus_bits,
            "l2": session.fixed_point.l2,
        },
        "refused_frames": session.refused,
        "last_exchange": None
        if last is None
        else {
            "round": last.round,
            "securely_aggregated": last.secure_contributors is not None,
            "contributors": last.secure_contributors,
            "reconstructed": last.secure_reconstructed,
            "skipped": last.secure_skipped,
        },
        "consensus_distance": "sum-based: ||x_i - s_i / W_i|| (no neighbour state is held)",
    }
