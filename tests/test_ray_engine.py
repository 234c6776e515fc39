"""The Ray engine computes exactly what the in-process engine does, for any number of workers.

One local Ray (2 CPUs, no dashboard, loopback only) serves the whole module; the engine
reuses the actors a clean run leaves, so only the first run pays for starting them.
Everything the sites compute must match bit for bit: metrics (timing aside), final states,
adapter files' tensors, audit events.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from node.sim.config import SimConfig, sim_config_from_mapping
from node.sim.engine.ray_group import LOOPBACK_ENV
from node.sim.simulation import RunResult, Simulation

os.environ.setdefault(LOOPBACK_ENV, "0")  # before Ray is imported: see start_local_ray
ray = pytest.importorskip("ray")

from gossipmed.errors import ConfigError  # noqa: E402
from node.cli import main  # noqa: E402
from node.sim.engine.ray_group import RayGroup, WorkerLost, start_local_ray  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[dict[str, Any]]:
    before = _listening()
    start_local_ray(num_cpus=2)
    try:
        yield {"listening_before": before}
    finally:
        ray.shutdown()


def _listening() -> list[tuple[str, str]]:
    """(address, process line) of every listening TCP socket this user's processes hold."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            rows.append((fields[3].rsplit(":", 1)[0].strip("[]"), line))
    return rows


def _config(**sections: dict[str, Any]) -> SimConfig:
    raw: dict[str, Any] = {"sim": {"problem": "quadratic", "rounds": 4, "seed": 3}}
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    return sim_config_from_mapping(raw)


def _on(config: SimConfig, **engine: Any) -> SimConfig:
    return dataclasses.replace(config, sim=dataclasses.replace(config.sim, **engine))


def _run(config: SimConfig) -> tuple[RunResult, list[dict[str, Any]]]:
    with Simulation(config) as sim:
        result = sim.run_gossip()
        events = sorted(sim.audit.events, key=lambda e: json.dumps(e, sort_keys=True))
    return result, events


def _comparable(result: RunResult) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in result.records
    ]


def _assert_same(a: RunResult, b: RunResult) -> None:
    assert json.dumps(_comparable(a)) == json.dumps(_comparable(b))  # byte-identical JSON
    assert a.states.keys() == b.states.keys()
    for site, state in a.states.items():
        for key, tensor in state.items():
            assert torch.equal(tensor, b.states[site][key]), (site, key)
    assert a.adapters.keys() == b.adapters.keys()


def _assert_engines_agree(config: SimConfig, *, workers: tuple[int, ...] = (1, 2)) -> RunResult:
    reference, events = _run(config)
    for n in workers:
        per = -(-config.nodes // n)
        result, ray_events = _run(_on(config, engine="ray", sites_per_worker=per))
        _assert_same(reference, result)
        assert ray_events == events
    return reference


def test_a_faulty_attacked_quadratic_run_is_the_same_on_both_engines(local_ray: Any) -> None:
    config = _config(
        sim={"topology": "random-regular", "degree": 3},
        data={"n_sites": 6},
        faults={
            "drop_prob": 0.2,
            "offline_prob": 0.15,
            "straggler_prob": 0.2,
            "straggler_delay": 99.0,
        },
        attack={"kind": "scale", "attackers": 1, "scale": 50.0},
        consortium={"gossip_steps": 2},
    )
    reference = _assert_engines_agree(config)
    # the faults did happen: offline rounds, silent neighbours
    assert any(not r.trained for r in reference.records)
    assert any(r.neighbours_heard < 3 for r in reference.records if r.trained)


def test_a_secure_aggregation_run_is_the_same_on_both_engines(local_ray: Any) -> None:
    config = _config(
        sim={"topology": "complete"},
        data={"n_sites": 5},
        faults={"drop_prob": 0.15, "offline_prob": 0.1},
        consortium={"secure_aggregation": True},
    )
    reference = _assert_engines_agree(config)
    assert any(r.neighbours_heard >= 3 for r in reference.records)  # sums were mixed


def test_a_language_model_run_is_the_same_on_both_engines(local_ray: Any, tiny_base: Path) -> None:
    config = sim_config_from_mapping(
        {
            "sim": {"problem": "lm", "rounds": 2, "seed": 1, "topology": "ring"},
            "base_model": str(tiny_base),
            "data": {"dataset": "notes", "n_sites": 4, "max_train_examples": 64, "eval_size": 8},
            "train": {"steps_per_round": 1, "batch_size": 4, "microbatch": 4},
            "dp": {"noise_multiplier": 1.0, "epsilon": 1000.0},  # seeded noise, no calibration
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' count (one CPU each)
    try:
        reference, events = _run(config)
        results = [
            _run(_on(config, engine="ray", sites_per_worker=per)) for per in (4, 2)
        ]  # one worker, then two
    finally:
        torch.set_num_threads(threads)
    for result, ray_events in results:
        _assert_same(reference, result)
        assert ray_events == events
        for site, files in reference.adapters.items():  # the same adapter files, anywhere
            assert sorted(files) == sorted(result.adapters[site])
    assert all(r.accuracy is not None for r in reference.records if r.round == 1)


def test_a_dead_worker_stops_the_run_naming_its_sites(local_ray: Any) -> None:
    config = _on(_config(data={"n_sites": 4}), engine="ray", sites_per_worker=2)
    sim = Simulation(config)

    def kill_second_worker(_run: str, done: int, _total: int) -> None:
        if done == 1:
            group = sim.hosts()
            ray.kill(group.actors[1])  # type: ignore[attr-defined]

    sim.on_progress = kill_second_worker
    with pytest.raises(WorkerLost, match=r"worker 1 .*site-02, site-03"), sim:
        sim.run_gossip()


def test_a_ray_run_directory_says_where_each_site_ran(
    local_ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["simulate", "--problem", "quadratic", "--nodes", "4", "--rounds", "2", "--json"]
    assert main([*args, "--engine", "ray", "--sites-per-worker", "2", "--out", str(run)]) == 0
    engine = json.loads((run / "summary.json").read_text())["engine"]
    assert engine["engine"] == "ray" and engine["ray_version"] == ray.__version__
    assert [w["sites"] for w in engine["workers"]] == [
        ["site-00", "site-01"],
        ["site-02", "site-03"],
    ]
    for worker in engine["workers"]:
        assert worker["pid"] != os.getpid() and ipaddress.ip_address(worker["node_ip"]).is_loopback
    capsys.readouterr()
    assert main(["inspect", str(run), "--json"]) == 0  # read as any run directory
    assert json.loads(capsys.readouterr().out)


def test_an_error_raised_in_a_worker_reaches_the_driver_as_itself(local_ray: Any) -> None:
    @ray.remote(num_cpus=0)  # idle actors of earlier tests may hold both CPUs
    def refuses() -> None:
        raise ConfigError("the data gives 3 sites but the topology has 4")

    group = object.__new__(RayGroup)  # only its transport: no actors needed
    group.ray = ray
    with pytest.raises(ConfigError) as caught:
        group._get([refuses.remote()])
    assert str(caught.value) == "the data gives 3 sites but the topology has 4"  # no traceback


@pytest.mark.timeout(120, method="thread")  # a wait inside ray.get ignores signals
def test_a_new_worker_shape_does_not_wait_for_the_last_runs_idle_actors(local_ray: Any) -> None:
    config = _config(data={"n_sites": 4})
    with Simulation(_on(config, engine="ray", sites_per_worker=2, worker_cpus=1.0)) as sim:
        one_cpu_each = sim.run_gossip()  # its two actors then idle, holding both CPUs
    with Simulation(_on(config, engine="ray", worker_cpus=2.0)) as sim:
        both_cpus = sim.run_gossip()  # one actor of 2 CPUs: placed only if those are freed
    _assert_same(one_cpu_each, both_cpus)


def test_an_interrupted_run_stops_every_actor(local_ray: Any) -> None:
    config = _on(_config(data={"n_sites": 4}), engine="ray", sites_per_worker=2)
    sim = Simulation(config)
    actors: list[Any] = []

    def interrupt(_run: str, done: int, _total: int) -> None:
        actors.extend(sim.hosts().actors)  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    sim.on_progress = interrupt
    with pytest.raises(KeyboardInterrupt), sim:
        sim.run_gossip()
    assert actors
    for actor in actors:
        assert _dies(actor, within_s=60)


def _dies(actor: Any, *, within_s: float) -> bool:
    """Whether calls to `actor` fail within `within_s` (a kill lands asynchronously: a call
    sent just after it may still be served)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.release.remote(), timeout=within_s)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.2)
    return False


def test_ray_listens_on_loopback_only(local_ray: Any) -> None:
    import psutil

    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    before = {line for _, line in local_ray["listening_before"]}
    new = [
        (address, line)
        for address, line in _listening()
        if line not in before and any(int(p) in ours for p in re.findall(r"pid=(\d+)", line))
    ]
    assert new, "Ray's services should be listening"
    exposed = [line for address, line in new if not _loopback(address)]
    assert not exposed, exposed


def _loopback(address: str) -> bool:
    address = address.removeprefix("::ffff:")
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # "*": every interface
        return False
