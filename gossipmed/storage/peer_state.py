"""A site's checkpoint: its adapter state, round, and the state of every stateful component.

One call writes it and one reads it back; the components (replay guard, top-k residual, D²
memory, ...) are whatever the peer was composed with, looped over by name through their
`state_dict()` / `load_state_dict()`.

    state.safetensors        the adapter state (safetensors, never pickle)
    <component>.msgpack      a component's state, when it has one (tensors as bytes)
    checkpoint.json          written last: round, site, epsilon, the replay guard, and the
                             BLAKE2b of every component file it vouches for

A crash between the component files and checkpoint.json leaves files the metadata does not
vouch for; they are ignored on resume and those components start fresh (a top-k encoder then
sends a keyframe, D² a plain step: nothing is lost). The replay guard is small and must never
be older than the round it protects, so it lives inside checkpoint.json itself. A state with
NaN or Inf is never written, and never resumed from.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgpack
import torch

from gossipmed.errors import CheckpointError, GossipmedError
from gossipmed.storage.checkpoint import META_FILE, atomic_write_bytes, load_state, save_state
from gossipmed.wire.update import MAX_ROUND

CHECKPOINT_FORMAT = 2
REPLAY_KEY = "replay_guard"
MAX_COMPONENT_BYTES = 1 << 32


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any] | None:
        """Plain data (msgpack-able: dicts, lists, numbers, str, bytes); None: nothing now."""
        ...

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Mapping[str, Any]) -> None:
        """Raise a GossipmedError when `state` does not fit this component or the schema."""
        ...


def component_file(name: str) -> str:
    return f"{name}.msgpack"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _finite(state: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def save_checkpoint(
    directory: Path,
    *,
    site: str,
    round: int,
    epsilon: float,
    state: Mapping[str, torch.Tensor],
    replay_state: Mapping[str, Any] | None,
    components: Mapping[str, Stateful],
) -> None:
    """Write component files, then the adapter state and the metadata that vouches for them."""
    if not _finite(state):
        raise CheckpointError(f"refusing to checkpoint a non-finite state of round {round}")
    digests: dict[str, str] = {}
    for name, component in components.items():
        doc = component.state_dict()
        if doc is None:
            continue
        data = bytes(msgpack.packb(doc, use_bin_type=True))
        atomic_write_bytes(directory / component_file(name), data, mode=0o600)
        digests[name] = _digest(data)
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "round": round,
        "site": site,
        "epsilon": epsilon if math.isfinite(epsilon) else None,
        "components": digests,
        "saved_at": time.time(),
    }
    if replay_state is not None:
        meta[REPLAY_KEY] = dict(replay_state)
    save_state(directory, state, meta)


@dataclass
class Checkpoint:
    """What a site saved after its last completed round."""

    round: int
    epsilon: float
    state: dict[str, torch.Tensor]
    replay_state: dict[str, Any] | None
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Component states whose files the metadata vouches for (others start fresh)."""


def has_checkpoint(directory: Path) -> bool:
    return (directory / META_FILE).is_file()


def read_checkpoint(directory: Path, *, site: str) -> Checkpoint:
    state, meta = load_state(directory)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"the checkpoint in {directory} was written by an older gossipmed (format "
            f"{meta.get('format', 1)}, this one reads {CHECKPOINT_FORMAT}); move that folder "
            "aside to start this site from its initial state"
        )
    if meta.get("site") != site:
        raise CheckpointError(f"the checkpoint in {directory} is not {site}'s")
    round_ = meta.get("round")
    if type(round_) is not int or not 0 <= round_ < MAX_ROUND:
        # a round of MAX_ROUND or more cannot be sealed: resuming after it would train,
        # charge the ledger and fail at the first seal, on every supervised restart
        raise CheckpointError(
            f"the checkpoint in {directory} has no valid round (an integer in [0, {MAX_ROUND}))"
        )
    if not _finite(state):
        raise CheckpointError(f"the checkpoint in {directory} holds NaN or Inf; not resuming")
    epsilon = meta.get("epsilon")
    digests = meta.get("components") or {}
    components: dict[str, dict[str, Any]] = {}
    for name, digest in digests.items() if isinstance(digests, dict) else []:
        doc = _vouched(directory / component_file(str(name)), digest)
        if doc is not None:
            components[str(name)] = doc
    replay = meta.get(REPLAY_KEY)
    return Checkpoint(
        round=round_,
        epsilon=float(epsilon) if isinstance(epsilon, int | float) else 0.0,
        state=dict(state),
        replay_state=replay if isinstance(replay, dict) else None,
        components=components,
    )


def _vouched(path: Path, digest: object) -> dict[str, Any] | None:
    """The component state in `path` if the metadata recorded exactly these bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from exc
    if _digest(data) != digest:
        return None
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False, max_bin_len=len(data))
    except (ValueError, msgpack.ExtraData) as exc:
        raise CheckpointError(f"{path} is not a component state: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} is not a component state")
    return doc


def restore_components(
    checkpoint: Checkpoint,
    components: Mapping[str, Stateful],
    *,
    schema: Mapping[str, Any],
    directory: Path,
) -> list[str]:
    """Load every vouched component state into the matching component; their names."""
    restored = []
    for name, component in components.items():
        doc = checkpoint.components.get(name)
        if doc is None:
            continue
        try:
            component.load_state_dict(doc, schema=schema)
        except GossipmedError as exc:
            raise CheckpointError(f"{directory / component_file(name)}: {exc}") from exc
        restored.append(name)
    return restored
