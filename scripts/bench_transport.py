"""Throughput of one envelope over Libp2pTransport (Noise + yamux) on loopback.

Each timed sample is one `send()`: open a stream on the reused connection, write the
varint-framed message, wait for the receiver's ack (sent only after the whole body arrived
and was queued). The first send, which also dials, is reported separately.

    .venv/bin/python scripts/bench_transport.py                 # both hosts in this process
    .venv/bin/python scripts/bench_transport.py --two-processes # receiver in a child process
    .venv/bin/python scripts/bench_transport.py --size-mib 8 --repeats 9 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.net.libp2p.transport import Libp2pTransport, PeerInfo, peer_id_from_seed

LISTEN = ["/ip4/127.0.0.1/tcp/0"]
SENDER, RECEIVER = "bench-sender", "bench-receiver"


def seed(name: str) -> bytes:
    return hashlib.sha256(f"gossipmed-bench-{name}".encode()).digest()


def roster() -> dict[str, PeerInfo]:
    return {n: PeerInfo(peer_id_from_seed(seed(n))) for n in (SENDER, RECEIVER)}


async def timed_sends(
    sender: Libp2pTransport,
    wait_delivered: Callable[[], Awaitable[None]],
    *,
    payload: bytes,
    repeats: int,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    await sender.send(RECEIVER, payload)
    await wait_delivered()
    first_s = time.perf_counter() - t0
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await sender.send(RECEIVER, payload)
        samples.append(time.perf_counter() - t0)
        await wait_delivered()
    median = statistics.median(samples)
    return {
        "size_bytes": len(payload),
        "repeats": repeats,
        "first_send_with_dial_s": round(first_s, 4),
        "median_s": round(median, 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
        "median_mb_per_s": round(len(payload) / median / 1e6, 1),
        "samples_s": [round(s, 4) for s in samples],
    }


async def bench_in_process(payload: bytes, repeats: int) -> dict[str, Any]:
    peers = roster()
    max_bytes = len(payload) + 1024
    async with (
        Libp2pTransport.open(
            local_name=RECEIVER,
            seed=seed(RECEIVER),
            members=peers,
            neighbours=[SENDER],
            listen=LISTEN,
            max_bytes=max_bytes,
        ) as receiver,
        Libp2pTransport.open(
            local_name=SENDER,
            seed=seed(SENDER),
            members=peers,
            neighbours=[RECEIVER],
            listen=LISTEN,
            max_bytes=max_bytes,
        ) as sender,
    ):
        sender.update_peer(RECEIVER, PeerInfo(receiver.peer_id, receiver.listen_addrs))

        async def delivered() -> None:
            with trio.fail_after(30):
                got = await receiver.receive()
            if got != payload:
                raise RuntimeError("received bytes differ from what was sent")

        return await timed_sends(sender, delivered, payload=payload, repeats=repeats)


async def serve(max_bytes: int) -> None:
    """Child-process receiver: announce address on stdout, drain envelopes until stdin closes."""
    async with Libp2pTransport.open(
        local_name=RECEIVER,
        seed=seed(RECEIVER),
        members=roster(),
        neighbours=[SENDER],
        listen=LISTEN,
        max_bytes=max_bytes,
    ) as receiver:
        print(json.dumps({"peer_id": receiver.peer_id, "addrs": receiver.listen_addrs}), flush=True)
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                while True:
                    await receiver.receive()

            nursery.start_soon(drain)
            await trio.to_thread.run_sync(sys.stdin.read)
            nursery.cancel_scope.cancel()


async def bench_two_processes(payload: bytes, repeats: int) -> dict[str, Any]:
    max_bytes = len(payload) + 1024
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--max-bytes", str(max_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(child.stdout.readline)
        announced = json.loads(line)
        async with Libp2pTransport.open(
            local_name=SENDER,
            seed=seed(SENDER),
            members=roster(),
            neighbours=[RECEIVER],
            listen=LISTEN,
            max_bytes=max_bytes,
        ) as sender:
            sender.update_peer(RECEIVER, PeerInfo(announced["peer_id"], announced["addrs"]))

            async def acked() -> None:  # send() returns only after the receiver's ack
                return None

            return await timed_sends(sender, acked, payload=payload, repeats=repeats)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=8.0, help="message size (default 8)")
    parser.add_argument("--repeats", type=int, default=7, help="timed sends (default 7)")
    parser.add_argument(
        "--two-processes", action="store_true", help="run the receiver in a child process"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.max_bytes)
        return 0
    payload = os.urandom(int(args.size_mib * (1 << 20)))
    bench = bench_two_processes if args.two_processes else bench_in_process
    result = trio.run(bench, payload, args.repeats)
    result["mode"] = "two processes" if args.two_processes else "one process"
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['mode']}: {result['size_bytes'] / (1 << 20):.1f} MiB x {args.repeats}: "
            f"median {result['median_s'] * 1000:.1f} ms = {result['median_mb_per_s']} MB/s "
            f"(min {result['min_s'] * 1000:.1f} ms, max {result['max_s'] * 1000:.1f} ms); "
            f"first send incl. dial {result['first_send_with_dial_s'] * 1000:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
