"""The libp2p transport: Noise + yamux host, connection gate, per-neighbour inbound, sending."""
