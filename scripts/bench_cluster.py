"""Daemon benchmarks: (1) round wall time of a 4-site loopback cluster of real daemons vs the
same config in the simulator; (2) one 8 MiB update through the daemon's path (seal, send over
libp2p, receive, open) between two hosts.

    .venv/bin/python scripts/bench_cluster.py                  # both, default tiny base
    .venv/bin/python scripts/bench_cluster.py --rounds 8 --json
    .venv/bin/python scripts/bench_cluster.py --skip-cluster   # only the 8 MiB update

Cluster round wall time = (time all sites finished round K-1 - time all finished round 0) /
(K-1): start-up (model loading) is excluded, waiting for the slowest neighbour is included.
The simulator runs the same sites one after another in one process, so its round time is
the sum of the sites' compute; the daemons run in parallel on however many cores there are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NODES = 4


def learning_sections(*, index: int, base: str, rounds: int, steps: int) -> dict[str, Any]:
    return {
        "daemon": {"rounds": rounds, "site_index": index, "base_model": base},
        "gossip": {"round_timeout_s": 120.0},
        "data": {"dataset": "notes", "n_sites": NODES, "max_train_examples": 2000},
        "train": {"steps_per_round": steps},
    }


def bench_cluster(*, base: str, rounds: int, steps: int, gossip_steps: int) -> dict[str, Any]:
    from gossipmed.consortium.settings import ConsortiumSettings
    from gossipmed.metrics import METRICS_FILE, read_metrics
    from node.daemon.cluster import create_cluster, start_cluster

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        directory = Path(tmp) / "cluster"
        sites = create_cluster(
            directory,
            nodes=NODES,
            topology="ring",
            sections=lambda i: learning_sections(index=i, base=base, rounds=rounds, steps=steps),
            settings=ConsortiumSettings(gossip_steps=gossip_steps),
        )
        started = time.perf_counter()
        procs = start_cluster(directory)
        done_at: dict[int, float] = {}
        try:
            while len(done_at) < rounds:
                counts = [
                    len(read_metrics(s / METRICS_FILE)) if (s / METRICS_FILE).is_file() else 0
                    for s in sites
                ]
                now = time.perf_counter()
                for k in range(min(counts)):
                    done_at.setdefault(k, now)
                if any(p.poll() not in (None, 0) for p in procs):
                    raise RuntimeError("a daemon failed; see its daemon.log")
                if now - started > 900:
                    raise RuntimeError("cluster benchmark timed out")
                time.sleep(0.02)
            for p in procs:
                p.wait(timeout=120)
            records = [r for s in sites for r in read_metrics(s / METRICS_FILE)]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    per_round = (done_at[rounds - 1] - done_at[0]) / (rounds - 1)
    return {
        "startup_to_round0_s": round(done_at[0] - started, 2),
        "round_wall_s": round(per_round, 3),
        "heard_fraction": sum(r.neighbours_heard for r in records)
        / max(1, sum(r.neighbours_expected for r in records)),
        "site_compute_s_median": round(statistics.median(r.seconds for r in records), 3),
    }


def bench_simulator(*, base: str, rounds: int, steps: int, gossip_steps: int) -> dict[str, Any]:
    from gossipmed.consortium.settings import ConsortiumSettings
    from gossipmed.learn.config import DataConfig, LearningConfig, TrainConfig
    from node.sim.config import SimConfig, SimSection
    from node.sim.simulation import Simulation

    learning = LearningConfig(
        data=DataConfig(dataset="notes", n_sites=NODES, max_train_examples=2000),
        train=dataclasses.replace(TrainConfig(), steps_per_round=steps),
        base_model=base,
    )
    sim = SimSection(topology="ring", rounds=rounds)
    consortium = ConsortiumSettings(gossip_steps=gossip_steps)
    config = SimConfig(sim=sim, consortium=consortium, learning=learning)
    result = Simulation(config).run_gossip()
    return {"round_wall_s": round(result.wall_seconds / rounds, 3)}


def bench_update(*, size_mib: int, repeats: int) -> dict[str, Any]:
    """Seal -> libp2p send (ack) -> receive -> open, timed end to end per update."""
    import torch
    import trio

    from gossipmed.consortium.crypto import generate_identity
    from gossipmed.consortium.member import Member
    from gossipmed.consortium.roster import Roster
    from gossipmed.wire.envelope import EnvelopeSealer
    from node.net.libp2p.transport import Libp2pTransport, PeerInfo

    ids = {n: generate_identity() for n in ("a", "b")}
    roster = Roster(
        members=tuple(
            Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
            for n, i in ids.items()
        ),
        edges=(("a", "b"),),
    )
    state = {
        "w": torch.randn(size_mib * (1 << 20) // 4, generator=torch.Generator().manual_seed(0))
    }
    schema = {"w": ("float32", tuple(state["w"].shape))}
    max_bytes = size_mib * (1 << 20) + (1 << 16)
    sealers = {
        n: EnvelopeSealer(identity=i, roster=roster, max_bytes=max_bytes) for n, i in ids.items()
    }

    async def main() -> list[float]:
        peers = {n: PeerInfo(i.peer_id) for n, i in ids.items()}
        listen = ["/ip4/127.0.0.1/tcp/0"]
        async with (
            Libp2pTransport.open(
                local_name="b", seed=ids["b"].ed25519_seed, members=peers, neighbours=["a"],
                listen=listen,
                max_bytes=max_bytes,
            ) as rx,
            Libp2pTransport.open(
                local_name="a", seed=ids["a"].ed25519_seed, members=peers, neighbours=["b"],
                listen=listen,
                max_bytes=max_bytes,
            ) as tx,
        ):  # fmt: skip
            tx.update_peer("b", PeerInfo(rx.peer_id, rx.listen_addrs))
            samples = []
            for r in range(repeats + 1):  # the first also dials
                t0 = time.perf_counter()
                data = await trio.to_thread.run_sync(
                    lambda r=r: sealers["a"].seal(
                        update_tensors=state, round=r, recipient="b", epsilon=0.0
                    )
                )
                await tx.send("b", data)
                got = await rx.receive()
                update = await trio.to_thread.run_sync(
                    lambda got=got: sealers["b"].open(got, expected_schema=schema)
                )
                elapsed = time.perf_counter() - t0
                if not torch.equal(update.tensors["w"], state["w"]):
                    raise RuntimeError("update changed in transit")
                if r:
                    samples.append(elapsed)
            return samples

    samples = trio.run(main)
    median = statistics.median(samples)
    size = size_mib * (1 << 20)
    return {
        "size_mib": size_mib,
        "repeats": repeats,
        "median_s": round(median, 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
        "median_mib_per_s": round(size / median / (1 << 20), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="local steps per round")
    parser.add_argument(
        "--gossip-steps", type=int, default=0, help="exchanges per round (0: auto, as shipped)"
    )
    parser.add_argument("--base-model", help="HF folder (default: the built-in tiny base)")
    parser.add_argument("--size-mib", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {"nodes": NODES, "rounds": args.rounds, "steps": args.steps}
    if not args.skip_cluster:
        if args.base_model:
            base = args.base_model
        else:
            from gossipmed.learn.base_model import ensure_base_model

            base = str(ensure_base_model(progress=False))
        out["cluster"] = bench_cluster(
            base=base, rounds=args.rounds, steps=args.steps, gossip_steps=args.gossip_steps
        )
        out["simulator"] = bench_simulator(
            base=base, rounds=args.rounds, steps=args.steps, gossip_steps=args.gossip_steps
        )
        out["cluster_over_simulator"] = round(
            out["cluster"]["round_wall_s"] / out["simulator"]["round_wall_s"], 2
        )
    out["update"] = bench_update(size_mib=args.size_mib, repeats=args.repeats)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
