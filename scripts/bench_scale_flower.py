"""Flower's Ray simulation of gossipmed's synthetic quadratic problem, for bench_scale.py.

Runs inside a separate virtualenv that has `flwr[simulation]` and numpy (never this
repository's packages): `bench_scale.py --only sites --flower-venv DIR` creates that venv and
calls this file with its python. Site i minimises 0.5||x - c_i||^2 in dimension 256 with 10
local steps; every site trains every round and FedAvg averages them, as gossipmed's quadratic
problem does with gossip. Prints one JSON line: seconds per round, Flower's and Ray's
versions.

    DIR/bin/python scripts/bench_scale_flower.py --sites 256 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np

DIM = 256
LOCAL_STEPS = 10
LR = 0.02


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sites", type=int, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus-per-client", type=float, default=1.0)
    args = p.parse_args()

    import flwr
    import ray
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    rng = np.random.default_rng(args.seed)
    consensus = rng.standard_normal(DIM).astype(np.float32)
    skew = rng.standard_normal((args.sites, DIM)).astype(np.float32) * 2.0
    targets = consensus + skew - skew.mean(axis=0)
    start = rng.standard_normal(DIM).astype(np.float32)

    class QuadraticClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, target: np.ndarray) -> None:
            self.target = target

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            x = parameters[0].copy()
            for _ in range(LOCAL_STEPS):
                x = x - LR * (x - self.target)
            loss = 0.5 * float(((x - self.target) ** 2).mean())
            return [x], 1, {"loss": loss}

    def client_fn(context: Context) -> Any:
        site = int(context.node_config["partition-id"])
        return QuadraticClient(targets[site]).to_client()

    starts: dict[int, float] = {}
    ends: dict[int, float] = {}

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            starts[server_round] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            ends[server_round] = time.perf_counter()
            if failures:
                raise RuntimeError(f"{len(failures)} Flower clients failed in round {server_round}")
            return out

    def server_fn(context: Context) -> ServerAppComponents:
        from flwr.common import ndarrays_to_parameters

        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=args.sites,
            min_evaluate_clients=0,
            min_available_clients=args.sites,
            initial_parameters=ndarrays_to_parameters([start]),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    began = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=args.sites,
        backend_config={
            "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
        },
    )
    total = time.perf_counter() - began
    rounds = [ends[r] - starts[r] for r in sorted(ends) if r in starts]
    if len(rounds) != args.rounds:
        raise SystemExit(f"bench_scale_flower: {len(rounds)} of {args.rounds} rounds finished")
    row = {
        "kind": "flower",
        "sites": args.sites,
        "rounds": args.rounds,
        "s_rounds": rounds,
        "s_per_round": statistics.median(rounds),
        "wall_s": total,
        "flwr": flwr.__version__,
        "ray": ray.__version__,
    }
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
