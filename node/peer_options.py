"""The robustness/efficiency options of a run, applied to already-built peers.

One place turns the config choices of issue #7 into objects, so the simulator (and the
daemon, for the codec and drift choices) wire them the same way:

    codec    raw | fp16 | bf16 | int8: the envelope's codec; topk: CompressedSealer
             (top-k deltas with error feedback, gossipmed.error_feedback)
    drift    none | d2: the learner wrapped in gossipmed.drift.D2Learner
    attack   simulator only: node.attacks turns the seed's chosen sites into attackers

Robust mixing needs nothing here: the peer already selects its aggregation rule by name.

The state these options carry from round to round (the top-k sender's residual, D²'s last
state and pseudo-gradient) is checkpointed by `save_option_state` next to the adapter and
brought back by `restore_option_state`, so a resumed site continues exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipmed.checkpoint import atomic_write_bytes
from gossipmed.codecs import CODEC_NAMES
from gossipmed.drift import DRIFT_MODES, D2Learner, with_drift_correction
from gossipmed.error_feedback import (
    FEEDBACK_FILE,
    SPARSE_CODEC,
    CompressedSealer,
    ErrorFeedback,
    save_feedback,
)
from gossipmed.errors import CheckpointError, ConfigError, WireError
from node.attacks import AttackConfig, apply_attack


@dataclass(frozen=True)
class PeerOptions:
    codec: str = "raw"
    topk_fraction: float = 0.01
    codec_refresh_every: int = 0
    drift: str = "none"
    attack: AttackConfig = field(default_factory=AttackConfig)

    def __post_init__(self) -> None:
        if self.codec not in CODEC_NAMES:
            raise ConfigError(f"codec must be one of {', '.join(CODEC_NAMES)}")
        if not _is_number(self.topk_fraction) or not 0.0 < self.topk_fraction <= 1.0:
            raise ConfigError("topk_fraction must be a number in (0, 1]")
        if type(self.codec_refresh_every) is not int or self.codec_refresh_every < 0:
            raise ConfigError("codec_refresh_every must be an integer >= 0")
        if self.drift not in DRIFT_MODES:
            raise ConfigError(f"drift must be one of {', '.join(DRIFT_MODES)}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def options_from_sim(sim: Any) -> PeerOptions:
    """PeerOptions from a node.sim_config.SimSection (fields with the same names)."""
    return PeerOptions(
        codec=sim.codec,
        topk_fraction=sim.topk_fraction,
        codec_refresh_every=sim.codec_refresh_every,
        drift=sim.drift,
        attack=AttackConfig(kind=sim.attack, attackers=sim.attackers, scale=sim.attack_scale),
    )


def apply_peer_options(peers: Mapping[str, Any], *, options: PeerOptions, seed: int) -> list[str]:
    """Rewire each peer's learner and sealer in place; returns the attackers' names."""
    for peer in peers.values():
        peer.learner = with_drift_correction(peer.learner, mode=options.drift)
        peer.sealer = _with_codec(peer.sealer, options, exchanges_per_round=peer.gossip_steps)
    sealers = {name: peer.sealer for name, peer in peers.items()}
    learners = {name: peer.learner for name, peer in peers.items()}
    attackers = apply_attack(sealers=sealers, learners=learners, config=options.attack, seed=seed)
    for name in attackers:
        peers[name].sealer = sealers[name]
    return attackers


def _with_codec(sealer: Any, options: PeerOptions, *, exchanges_per_round: int) -> Any:
    if options.codec == "raw":
        return sealer
    if not hasattr(sealer, "codec"):
        raise ConfigError(f"codec {options.codec!r} needs envelope sealing (not plaintext)")
    if options.codec == SPARSE_CODEC:
        return CompressedSealer(
            sealer,
            fraction=options.topk_fraction,
            refresh_every=options.codec_refresh_every,
            exchanges_per_round=exchanges_per_round,
        )
    sealer.codec = options.codec
    return sealer


def robustness_summary(
    *, options: PeerOptions, aggregation: str, attackers: Sequence[str], records: Sequence[Any]
) -> dict[str, Any]:
    """What `gossipmed inspect` shows: the run's attack, mixing rule, codec and drift, plus
    the honest sites' accuracy at the last evaluated round."""
    honest = [r for r in records if r.site not in attackers and r.accuracy is not None]
    last = max((r.round for r in honest), default=None)
    accs = [r.accuracy for r in honest if r.round == last]
    return {
        "attack": options.attack.kind,
        "attackers": list(attackers),
        "aggregation": aggregation,
        "codec": options.codec,
        "topk_fraction": options.topk_fraction if options.codec == SPARSE_CODEC else None,
        "drift": options.drift,
        "honest_accuracy_mean": sum(accs) / len(accs) if accs else None,
        "honest_round": last,
    }


# --- the options' own state across rounds: checkpoint and resume ------------------------------

DRIFT_FILE = "drift.msgpack"
OPTION_FILES = (FEEDBACK_FILE, DRIFT_FILE)


def save_option_state(directory: Path, peer: Any) -> dict[str, str]:
    """Write the option state of `peer` (after a round is mixed) next to its adapter.

    Returns file name -> BLAKE2b of the bytes written. The caller records that map in the
    checkpoint's metadata, which it writes last: a crash between the two leaves files the
    metadata does not vouch for, and `restore_option_state` then ignores them (a fresh
    residual means a keyframe; a fresh D² a plain step; both lose nothing)."""
    digests: dict[str, str] = {}
    if isinstance(peer.sealer, CompressedSealer):
        save_feedback(directory, peer.sealer.feedback)
        digests[FEEDBACK_FILE] = _file_digest(directory / FEEDBACK_FILE)
    if isinstance(peer.learner, D2Learner):
        atomic_write_bytes(directory / DRIFT_FILE, peer.learner.memory_to_bytes(), mode=0o600)
        digests[DRIFT_FILE] = _file_digest(directory / DRIFT_FILE)
    return digests


def restore_option_state(directory: Path, peer: Any, *, digests: Mapping[str, str]) -> list[str]:
    """Load what `save_option_state` wrote into the rewired `peer`, after its adapter state
    is set (D2Learner.set_state outside a round resets D²). Returns the files restored.

    A file is used only when its digest is the one the checkpoint recorded; otherwise it is
    from another round or another configuration and the option starts fresh. A restored
    residual takes the configured top-k fraction (the residual itself does not depend on it).
    """
    restored = []
    if isinstance(peer.sealer, CompressedSealer):
        raw = _vouched_bytes(directory / FEEDBACK_FILE, digests.get(FEEDBACK_FILE))
        if raw is not None:
            try:
                feedback = ErrorFeedback.from_bytes(raw, expected=peer.schema)
            except WireError as exc:
                raise CheckpointError(f"{directory / FEEDBACK_FILE}: {exc}") from exc
            feedback.fraction = peer.sealer.feedback.fraction
            peer.sealer.feedback = feedback
            restored.append(FEEDBACK_FILE)
    if isinstance(peer.learner, D2Learner):
        raw = _vouched_bytes(directory / DRIFT_FILE, digests.get(DRIFT_FILE))
        if raw is not None:
            try:
                peer.learner.load_memory(raw, expected=peer.schema)
            except WireError as exc:
                raise CheckpointError(f"{directory / DRIFT_FILE}: {exc}") from exc
            restored.append(DRIFT_FILE)
    return restored


def restart_compression(peer: Any) -> bool:
    """Make the next top-k send a dense keyframe (for when neighbours' replicas of this site
    may be out of step); False when the peer does not compress."""
    if not isinstance(peer.sealer, CompressedSealer):
        return False
    peer.sealer.feedback = ErrorFeedback(fraction=peer.sealer.feedback.fraction)
    return True


def _file_digest(path: Path) -> str:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError as exc:
        raise CheckpointError(f"cannot read back {path}: {exc.strerror}") from exc


def _vouched_bytes(path: Path, digest: str | None) -> bytes | None:
    """The file's bytes if the checkpoint recorded exactly these bytes, else None."""
    if digest is None or not path.is_file():
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from exc
    if hashlib.blake2b(raw, digest_size=16).hexdigest() != digest:
        return None
    return raw
