"""Time the secure exchange alone: all 8 instances of one round on the 8-site random 4-regular
graph of seed 0, on the schema of an adapter a simulation saved (random values).

    python scripts/bench_secagg_protocol.py RUN_DIR
"""

from __future__ import annotations

import glob
import sys
import time

import torch
from safetensors.torch import load_file

from gossipmed.consortium.settings import ConsortiumSettings
from node.sim.secure import SecureNetwork
from topology.graphs import graph_schedule
from topology.schedule import MixingSchedule


def main(run_dir: str, repeats: int = 5) -> None:
    state = load_file(glob.glob(f"{run_dir}/adapters/site-00/*.safetensors")[0])
    graphs = graph_schedule("random-regular", nodes=8, degree=4, p=None, seed=0, path=None)
    schedule = MixingSchedule.from_graphs(graphs)
    gen = torch.Generator().manual_seed(0)
    states = {
        n: {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in state.items()}
        for n in schedule.sites
    }
    envelope = ConsortiumSettings(secure_aggregation=True).envelope  # the default consortium's
    net = SecureNetwork(sites=tuple(schedule.sites), roster_hash=b"b" * 32, fixed_point=envelope)
    times, sent = [], []
    for r in range(repeats):
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
    coords = sum(t.numel() for t in state.values())
    print(f"{coords} parameters; seconds per round (8 instances): {[round(t, 3) for t in times]}")
    print(f"protocol bytes sent per site per round: {[int(b) for b in sent]}")


if __name__ == "__main__":
    main(sys.argv[1])
