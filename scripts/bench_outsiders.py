"""What outsiders cost a site: its CPU per outsider handshake, and per connection refused
before the handshake once the address is throttled (issue #13, finding 2).

The victim (a Libp2pTransport) runs in this process; the attacker runs in a child process and
dials it from 127.0.0.2 with a fresh Ed25519 key per connection, one connection at a time.
The victim's CPU is measured with `time.process_time()` over the attack, so it includes
everything the site's process did (libp2p's background tasks too).

    .venv/bin/python scripts/bench_outsiders.py --connections 300
    .venv/bin/python scripts/bench_outsiders.py --connections 300 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.net.libp2p.transport import Libp2pLimits, Libp2pTransport, PeerInfo, peer_id_from_seed

VICTIM = "bench-victim"
SOURCE = "127.0.0.2"


def seed(name: str) -> bytes:
    return hashlib.sha256(f"gossipmed-bench-{name}".encode()).digest()


async def attack(addr: str, peer_id: str, connections: int) -> dict[str, int]:
    """Child process: `connections` dials with throwaway keys; counts completed handshakes."""
    import multiaddr
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.connection.raw_connection import RawConnection
    from libp2p.peer.id import ID
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
    from libp2p.stream_muxer.yamux.yamux import Yamux
    from libp2p.transport.upgrader import TransportUpgrader

    maddr = multiaddr.Multiaddr(addr)
    host, port = str(maddr.value_for_protocol("ip4")), int(maddr.value_for_protocol("tcp"))
    target = ID.from_base58(peer_id)
    completed = refused = 0
    for _ in range(connections):
        key = create_new_key_pair()
        noise = NoiseTransport(key, noise_privkey=create_new_x25519_key_pair().private_key)
        upgrader = TransportUpgrader({TProtocol(NOISE): noise}, {TProtocol(YAMUX): Yamux})
        stream = await trio.open_tcp_stream(host, port, local_address=SOURCE)
        raw = RawConnection(TrioTCPStream(stream), True)
        try:
            secured = await upgrader.upgrade_security(raw, True, target)
        except Exception:
            refused += 1
            await raw.close()
            continue
        completed += 1
        await secured.close()
    return {"completed": completed, "refused": refused}


async def measure(connections: int, limits: Libp2pLimits) -> dict[str, Any]:
    async with Libp2pTransport.open(
        local_name=VICTIM,
        seed=seed(VICTIM),
        members={VICTIM: PeerInfo(peer_id_from_seed(seed(VICTIM)))},
        neighbours=[],
        listen=["/ip4/127.0.0.1/tcp/0"],
        max_bytes=1 << 20,
        limits=limits,
    ) as victim:
        cmd = [
            sys.executable,
            __file__,
            "--attack",
            victim.listen_addrs[0],
            victim.peer_id,
            str(connections),
        ]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = await trio.run_process(cmd, capture_stdout=True, check=True)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        client = json.loads(done.stdout)
        stats = victim.stats()
        return {
            "connections": connections,
            "outsider_handshakes": stats.outsiders_closed,
            "refused_before_handshake": stats.refused_before_handshake,
            "attacker_saw_completed": client["completed"],
            "wall_s": round(wall, 2),
            "victim_cpu_s": round(cpu, 3),
            "victim_cpu_ms_per_connection": round(1000 * cpu / connections, 3),
            "connections_per_s": round(connections / wall, 1),
        }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--attack":
        result = trio.run(attack, sys.argv[2], sys.argv[3], int(sys.argv[4]))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("node").setLevel(logging.ERROR)  # one warning per rejection otherwise
    unthrottled = Libp2pLimits(
        outsider_burst=10**6, handshakes_per_address=10**6, reports_burst=10**6
    )
    results = {
        "every connection gets a handshake": trio.run(measure, args.connections, unthrottled),
        "default limits (throttled)": trio.run(measure, args.connections, Libp2pLimits()),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(f"{name}: {r}")


if __name__ == "__main__":
    main()
