"""Transports that move envelope bytes between sites: the protocol, in-memory, libp2p."""
