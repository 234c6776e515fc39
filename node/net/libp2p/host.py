"""Building the libp2p host: Noise and yamux only, no hidden retries, no shared resource pools.

Why each knob (all measured on py-libp2p 0.8.1):
- the default security options include plaintext, which lets a peer claim any peer ID, so
  the host gets an explicit Noise-only `sec_opt` and a yamux-only `muxer_opt`;
- the swarm's own dial retries would stack hidden sleeps under our timeouts: our send loop
  retries instead;
- `new_host` always attaches a default ResourceManager: global connection, stream and memory
  pools with a circuit breaker and "graceful degradation" that lowers the limits for
  everyone under load. Any one peer can drain a global pool, so we detach it and enforce
  per-peer and per-address limits ourselves (node.net.libp2p.gate, node.net.libp2p.guard,
  node.net.libp2p.inbound). Detaching it also removes the swarm-wide inbound stream semaphore;
- the swarm's auto-connector dials every peer in the peerstore (all members) to keep ~150
  connections: it would connect sites that are not neighbours, whose identify streams the
  other side then refuses and audits. We dial neighbours on demand, so it is switched off.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import RetryConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from gossipmed.errors import TransportError
from node.net.libp2p.config import Libp2pTimeouts


def build_host(key_pair: KeyPair, timeouts: Libp2pTimeouts) -> IHost:
    """A libp2p host that speaks only Noise and yamux (never plaintext, secio, TLS or mplex)."""
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        negotiate_timeout=timeouts.negotiate_s,
    )
    network: Any = host.get_network()
    network.retry_config = RetryConfig(max_retries=0)
    network.set_resource_manager(None)
    network.auto_connector.maybe_connect = _no_auto_connect
    # Inbound protocol negotiation: bounded by our timeout, not libp2p's 10 s default.
    network.connection_config.inbound_stream_protocol_negotiation_timeout = float(
        timeouts.negotiate_s
    )
    return host


async def _no_auto_connect() -> None:
    return None


def refuse_ports_in_use(listen_addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """Fail if a fixed TCP port is taken, which libp2p alone would not notice.

    libp2p listens with SO_REUSEPORT (for hole punching), so a second daemon on the same port
    would silently share incoming connections with the first. A plain bind detects that.
    """
    for addr in listen_addrs:
        protocols = {p.name for p in addr.protocols()}
        if "tcp" not in protocols:
            continue
        port = int(addr.value_for_protocol("tcp"))
        if port == 0:
            continue
        family, host = (
            (socket.AF_INET6, addr.value_for_protocol("ip6"))
            if "ip6" in protocols
            else (socket.AF_INET, addr.value_for_protocol("ip4"))
        )
        if host is None:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((str(host), port))
            except OSError as exc:
                raise TransportError(f"cannot listen on {addr}: {exc.strerror}") from exc
