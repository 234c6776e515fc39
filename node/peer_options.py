"""The robustness/efficiency options of a run, applied to already-built peers.

One place turns the config choices of issue #7 into objects, so the simulator (and the
daemon, for the codec and drift choices) wire them the same way:

    codec    raw | fp16 | bf16 | int8: the envelope's codec; topk: CompressedSealer
             (top-k deltas with error feedback, gossipmed.error_feedback)
    drift    none | d2: the learner wrapped in gossipmed.drift.D2Learner
    attack   simulator only: node.attacks turns the seed's chosen sites into attackers

Robust mixing needs nothing here: the peer already selects its aggregation rule by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gossipmed.codecs import CODEC_NAMES
from gossipmed.drift import DRIFT_MODES, with_drift_correction
from gossipmed.error_feedback import SPARSE_CODEC, CompressedSealer
from gossipmed.errors import ConfigError
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
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ConfigError("topk_fraction must be in (0, 1]")
        if self.codec_refresh_every < 0:
            raise ConfigError("codec_refresh_every must be >= 0")
        if self.drift not in DRIFT_MODES:
            raise ConfigError(f"drift must be one of {', '.join(DRIFT_MODES)}")


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
        peer.sealer = _with_codec(peer.sealer, options)
    sealers = {name: peer.sealer for name, peer in peers.items()}
    learners = {name: peer.learner for name, peer in peers.items()}
    attackers = apply_attack(sealers=sealers, learners=learners, config=options.attack, seed=seed)
    for name in attackers:
        peers[name].sealer = sealers[name]
    return attackers


def _with_codec(sealer: Any, options: PeerOptions) -> Any:
    if options.codec == "raw":
        return sealer
    if not hasattr(sealer, "codec"):
        raise ConfigError(f"codec {options.codec!r} needs envelope sealing (not plaintext)")
    if options.codec == SPARSE_CODEC:
        return CompressedSealer(
            sealer, fraction=options.topk_fraction, refresh_every=options.codec_refresh_every
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
