"""Time and count the secure exchange alone: all 8 instances of one round on the 8-site random
4-regular graph of seed 0, on the schema of an adapter a simulation saved (or on a synthetic
one of N values), with random values of RMS 0.01.

    python scripts/bench_secagg_protocol.py RUN_DIR
    python scripts/bench_secagg_protocol.py --coords 8192 [--legacy-64bit]

Bytes are what the simulator counts (every protocol message's encoding, without the daemon's
frame header), per site per round, so they compare with a simulated run's `bytes_sent`. A
masked input's length depends only on the number of values, not on the tensor names.
--legacy-64bit uses 428312f's fixed point (range 32, 32 fraction bits, 64-bit words) to
reproduce the bytes measured before.
"""

from __future__ import annotations

import argparse
import glob
import time

import torch
from safetensors.torch import load_file

from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.mixing.secagg import FixedPoint
from node.sim.secure import SecureNetwork
from topology.graphs import graph_schedule
from topology.schedule import MixingSchedule


def _schema(run_dir: str | None, coords: int | None) -> dict[str, tuple[int, ...]]:
    if run_dir is not None:
        state = load_file(glob.glob(f"{run_dir}/adapters/site-00/*.safetensors")[0])
        return {k: tuple(v.shape) for k, v in state.items()}
    assert coords is not None
    return {"values": (coords,)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--coords", type=int)
    parser.add_argument("--legacy-64bit", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if (args.run_dir is None) == (args.coords is None):
        parser.error("give RUN_DIR or --coords")
    schema = _schema(args.run_dir, args.coords)
    graphs = graph_schedule("random-regular", nodes=8, degree=4, p=None, seed=0, path=None)
    schedule = MixingSchedule.from_graphs(graphs)
    gen = torch.Generator().manual_seed(0)
    states = {
        n: {k: torch.randn(s, generator=gen) * 0.01 for k, s in schema.items()}
        for n in schedule.sites
    }
    encoding = (
        FixedPoint(range=32.0, frac_bits=32, modulus_bits=64)
        if args.legacy_64bit
        else ConsortiumSettings(secure_aggregation=True).envelope  # the default consortium's
    )
    net = SecureNetwork(sites=tuple(schedule.sites), roster_hash=b"b" * 32, fixed_point=encoding)
    times, sent = [], []
    for r in range(args.repeats):
        started = time.perf_counter()
        out = net.exchange(
            round=r,
            schedule=schedule,
            states=states,
            dropped=lambda _j, _i: False,
            audit=lambda *_a, **_k: None,
        )
        times.append(time.perf_counter() - started)
        assert all(o.result is not None for o in out.values())
        sent.append(sum(o.bytes_sent for o in out.values()) / len(out))
    coords = sum(torch.Size(s).numel() for s in schema.values())
    print(f"{coords} values, {'legacy 64-bit' if args.legacy_64bit else 'consortium envelope'}")
    print(f"seconds per round (8 instances): {[round(t, 3) for t in times]}")
    print(f"protocol bytes sent per site per round: {[round(b) for b in sent]}")


if __name__ == "__main__":
    main()
