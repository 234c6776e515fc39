"""The round loop over several site hosts: routing between hosts changes nothing, and the
global consensus distance needs only per-host sums. Runs without Ray (hosts in this process),
so the routing is checked wherever the tests run."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gossipmed.metrics import consensus_distances
from node.sim.config import SimConfig, sim_config_from_mapping
from node.sim.engine.consensus import add_band_sums, band_sums, distances_to, mean_of
from node.sim.engine.group import LocalGroup
from node.sim.engine.host import HostSpec, SiteHost
from node.sim.engine.ray_group import plan_workers
from node.sim.simulation import RunResult, Simulation


def _split_over(per_host: int) -> Any:
    def hosts(spec: HostSpec) -> LocalGroup:
        parts = plan_workers(list(spec.sites), sites_per_worker=per_host, slots=1)
        return LocalGroup([SiteHost(dataclasses.replace(spec, sites=p)) for p in parts])

    return hosts


def _records(config: SimConfig, per_host: int | None) -> RunResult:
    hosts = _split_over(per_host) if per_host else None
    with Simulation(config, hosts=hosts) as sim:
        return sim.run_gossip()


def _same(a: RunResult, b: RunResult) -> None:
    strip = [
        [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in x.records]
        for x in (a, b)
    ]
    assert strip[0] == strip[1]
    for site, state in a.states.items():
        assert torch.equal(state["x"], b.states[site]["x"])


def test_sites_spread_over_hosts_compute_what_one_host_does() -> None:
    config = sim_config_from_mapping(
        {
            "sim": {
                "problem": "quadratic",
                "rounds": 4,
                "seed": 5,
                "topology": "random-regular",
                "degree": 4,
            },
            "data": {"n_sites": 7},
            "faults": {
                "drop_prob": 0.2,
                "offline_prob": 0.15,
                "straggler_prob": 0.2,
                "straggler_delay": 99.0,
            },
            "attack": {"kind": "sign-flip", "attackers": 1},
            "consortium": {"gossip_steps": 2},
        }
    )
    one = _records(config, None)
    _same(one, _records(config, 3))
    _same(one, _records(config, 1))


def test_secure_aggregation_between_hosts_is_the_single_host_exchange() -> None:
    config = sim_config_from_mapping(
        {
            "sim": {"problem": "quadratic", "rounds": 3, "seed": 2, "topology": "complete"},
            "data": {"n_sites": 5},
            "faults": {"drop_prob": 0.2, "offline_prob": 0.1},
            "consortium": {"secure_aggregation": True},
        }
    )
    one = _records(config, None)
    assert any(r.bytes_received > 0 for r in one.records)
    _same(one, _records(config, 2))


def test_consensus_from_per_host_sums_is_exact_and_split_free() -> None:
    gen = torch.Generator().manual_seed(0)
    states = [
        {
            "a": torch.randn(300, generator=gen) * 10.0 ** float(k % 5 - 2),
            "b": torch.tensor([1e-40, -3e38]),
        }
        for k in range(9)
    ]
    whole = band_sums(states)
    for cut in (1, 4, 8):
        count, sums = add_band_sums([band_sums(states[:cut]), band_sums(states[cut:])])
        assert count == whole[0]
        assert all(torch.equal(sums[k], whole[1][k]) for k in whole[1])
    mean = mean_of(*whole, size=302)
    exact = torch.stack([torch.cat([s["a"], s["b"]]).double() for s in states]).mean(0)
    assert torch.equal(mean, exact)  # here the float64 mean is exact too
    plain = [{"a": s["a"]} for s in states]
    count, sums = band_sums(plain)
    assert distances_to(plain, mean_of(count, sums, size=300)) == consensus_distances(plain)[1]
