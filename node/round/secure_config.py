"""Which of a site's own `[gossip]` choices secure aggregation allows.

With `secure_aggregation` on in the consortium file, a site never holds a neighbour's
individual state, only the weighted sum of those that completed the protocol
(gossipmed.mixing.secagg). What needs individual updates cannot run, and is refused here, at
config time, with the reason:

- robust rules (median, trimmed-mean, clipped, cosine-clipped) look at each neighbour's
  update separately;
- top-k with error feedback sends sparse deltas against a per-neighbour replica;
- the dense codecs (fp16, bf16, int8) do not apply: the masked input is the consortium's
  public fixed-point encoding (32-bit words, from the norm envelope secagg_rms), not the
  site's codec, so a codec choice would be silently ignored. Only "raw" is accepted.

"weighted" and the default "bounded" are accepted. With secure aggregation "bounded" cannot
scale each neighbour down separately; it holds the contributors' weighted mean to the site's
own norm instead (node.round.secure_mix), so secure mixing never raises a site's norm. Every
contributor clips each coordinate to the public range before encoding, the decoded sum must
lie within sum(w) x range per coordinate and sum(w) x l2 in norm (else SumOutOfRange: the
exchange is skipped and audited, and persistent failures start the search for the
contributor responsible, gossipmed.mixing.secagg.suspects), and the mixed state passes the
same rollback backstop on its norm as every rule (`max_mix_growth`,
rolled back and audited otherwise).
"""

from __future__ import annotations

from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.errors import ConfigError
from node.round.config import GossipConfig

SECURE_RULES = ("weighted", "bounded")
SECURE_CODECS = ("raw",)


def check_secure_gossip(settings: ConsortiumSettings, gossip: GossipConfig) -> None:
    """Raise ConfigError, with the reason, if `gossip` needs what secure aggregation hides."""
    if not settings.secure_aggregation:
        return
    rule = gossip.aggregation.name
    if rule not in SECURE_RULES:
        raise ConfigError(
            f"secure_aggregation cannot use aggregation {rule!r}: robust rules need each "
            f"neighbour's individual update, and a site only learns their sum "
            f"(use {' or '.join(SECURE_RULES)})"
        )
    codec = gossip.codec.name
    if codec == "topk":
        raise ConfigError(
            "secure_aggregation cannot use codec 'topk': top-k with error feedback sends "
            "sparse deltas against each neighbour's replica, and masked inputs are dense sums"
        )
    if codec not in SECURE_CODECS:
        raise ConfigError(
            f"secure_aggregation cannot use codec {codec!r}: masked inputs use the "
            f"consortium's fixed-point encoding, not a codec (use 'raw': 32-bit words)"
        )
