"""A member behind an address that floods silent connections (issue #20, finding 5): does the
member still deliver, and what does each silent connection cost the site?

The victim and the member (both Libp2pTransport) run in this process on 127.0.0.1; a child
process opens `--per-s` TCP connections a second from 127.0.0.1 (the member's own address,
as behind a hospital NAT) that never send a byte and are held until the victim closes them.
Meanwhile the member sends `--sends` updates, each over a new connection (its transport is
reopened for every send), with the default 3 tries. The victim's CPU is
`time.process_time()` of this process over the flood, so it includes the member's work too
(an upper bound for the victim's).

    .venv/bin/python scripts/bench_silent_flood.py --per-s 200 --sends 10
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.net.libp2p.transport import Libp2pTransport, PeerInfo, peer_id_from_seed

SOURCE = "127.0.0.1"


def seed(name: str) -> bytes:
    return hashlib.sha256(f"gossipmed-bench-{name}".encode()).digest()


async def flood(host: str, port: int, per_s: float) -> None:
    """Child process: silent connections at `per_s` a second until stdin closes."""
    opened = 0

    async def hold() -> None:
        nonlocal opened
        try:
            stream = await trio.open_tcp_stream(host, port, local_address=SOURCE)
        except OSError:
            return
        opened += 1
        async with stream:
            try:
                while await stream.receive_some(1024):
                    pass
            except trio.BrokenResourceError:
                pass

    async def until_stdin_closes(cancel: trio.CancelScope) -> None:
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some(1024):
            pass
        cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_stdin_closes, nursery.cancel_scope)
        start = trio.current_time()
        for i in itertools.count():
            await trio.sleep_until(start + i / per_s)
            nursery.start_soon(hold)
    print(json.dumps({"opened": opened}), flush=True)


def open_site(name: str, members: dict[str, PeerInfo]) -> Any:
    return Libp2pTransport.open(
        local_name=name,
        seed=seed(name),
        members=members,
        neighbours=[m for m in members if m != name],
        listen=["/ip4/127.0.0.1/tcp/0"],
        max_bytes=1 << 20,
    )


async def measure(per_s: float, sends: int) -> dict[str, Any]:
    members = {n: PeerInfo(peer_id_from_seed(seed(n))) for n in ("victim", "member")}
    async with open_site("victim", members) as victim:
        host, port = "127.0.0.1", int(victim.listen_addrs[0].rsplit("/", 1)[1])
        cmd = [sys.executable, __file__, "--flood", host, str(port), str(per_s)]
        proc = await trio.lowlevel.open_process(cmd, stdin=-1, stdout=-1)
        assert proc.stdin is not None and proc.stdout is not None
        flood_start = time.perf_counter()
        await trio.sleep(2.0)  # let the flood fill the address's slots
        delivered = failed = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(sends):
            async with open_site("member", members) as member:
                member.update_peer("victim", PeerInfo(victim.peer_id, victim.listen_addrs))
                victim.update_peer("member", PeerInfo(member.peer_id, member.listen_addrs))
                try:
                    await member.send("victim", f"update {i}".encode())
                    with trio.fail_after(10):
                        await victim.receive_from()
                    delivered += 1
                except Exception:
                    failed += 1
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        flood_s = time.perf_counter() - flood_start
        await proc.stdin.aclose()
        out = await proc.stdout.receive_some(65536)
        await proc.wait()
        stats = victim.stats()
        return {
            "silent_per_s": per_s,
            "silent_opened": json.loads(out)["opened"],
            "silent_achieved_per_s": round(json.loads(out)["opened"] / flood_s, 1),
            "sends": sends,
            "delivered_within_3_tries": delivered,
            "failed": failed,
            "evicted_before_handshake": getattr(stats, "evicted_before_handshake", None),
            "refused_before_handshake": stats.refused_before_handshake,
            "wall_s": round(wall, 2),
            "process_cpu_s": round(cpu, 3),
        }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--flood":
        trio.run(flood, sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-s", type=float, default=200.0)
    parser.add_argument("--sends", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("node").setLevel(logging.ERROR)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    print(json.dumps(trio.run(measure, args.per_s, args.sends), indent=2))


if __name__ == "__main__":
    main()
