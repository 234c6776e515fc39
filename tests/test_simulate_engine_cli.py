"""`gossipmed simulate --engine`: its keys, its errors, and what it never changes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from gossipmed.errors import ConfigError
from node.cli import main
from node.sim.config import SimSection, sim_config_from_mapping
from node.sim.engine.ray_group import WorkerLost, plan_workers, worker_gpus
from node.sim.simulation import Simulation

QUADRATIC = ["simulate", "--problem", "quadratic", "--nodes", "4", "--rounds", "2"]


def test_without_ray_the_ray_engine_is_a_one_line_error_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    code = main([*QUADRATIC, "--engine", "ray", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "gossipmed[ray]" in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_lost_worker_exits_1_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def dies(*_args: object, **_kwargs: object) -> None:
        raise WorkerLost("Ray worker 1 on 10.0.0.2 died holding sites site-02, site-03")

    monkeypatch.setattr("node.sim.run.run_simulation", dies)
    assert main([*QUADRATIC, "--json", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "site-02, site-03" in err


@pytest.mark.parametrize(
    "changes",
    [
        {"engine": "spark"},
        {"worker_cpus": 0},
        {"worker_gpus": -1},
        {"sites_per_worker": 0},
        {"ray_address": " "},
    ],
)
def test_engine_keys_are_validated(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="sim\\."):
        SimSection(**changes)  # type: ignore[arg-type]


def test_engine_keys_are_not_part_of_what_sites_agree_on() -> None:
    raw = {"sim": {"problem": "quadratic", "topology": "complete"}, "data": {"n_sites": 4}}
    base = sim_config_from_mapping({**raw, "consortium": {"secure_aggregation": True}})
    elsewhere = dataclasses.replace(
        base,
        sim=dataclasses.replace(
            base.sim, engine="ray", ray_address="10.0.0.1:6379", sites_per_worker=2, worker_gpus=1
        ),
    )
    assert Simulation(base).roster_hash() == Simulation(elsewhere).roster_hash()
    changed = dataclasses.replace(base, sim=dataclasses.replace(base.sim, seed=1))
    assert Simulation(changed).roster_hash() != Simulation(base).roster_hash()
    assert elsewhere.to_mapping()["sim"]["engine"] == "ray"  # config.toml keeps them


def test_sites_are_split_in_order_over_workers() -> None:
    sites = [f"s{i}" for i in range(5)]
    assert plan_workers(sites, sites_per_worker=2, slots=8) == [("s0", "s1"), ("s2", "s3"), ("s4",)]
    assert plan_workers(sites, sites_per_worker=None, slots=2) == [("s0", "s1", "s2"), ("s3", "s4")]
    assert plan_workers(sites, sites_per_worker=None, slots=64) == [(s,) for s in sites]


def test_help_lists_the_engines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--help"]) == 0
    out = capsys.readouterr().out
    for text in (
        "--engine",
        "{inprocess,ray}",
        "--ray-address",
        "--sites-per-worker",
        "--worker-gpus",
    ):
        assert text in out


def test_an_in_process_run_never_imports_ray(tmp_path: Path) -> None:
    """Ray reads its loopback switch when imported: only the Ray engine may import it."""
    script = (
        "import sys; from node.cli import main; "
        f"code = main({[*QUADRATIC, '--json', '--out', str(tmp_path / 'run')]!r}); "
        "print(code, 'ray' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr[-2000:]


def test_a_cuda_base_gives_each_ray_worker_one_gpu_unless_told_otherwise() -> None:
    ray_sim = SimSection(engine="ray")
    assert worker_gpus(ray_sim, device="cuda") == 1.0
    assert worker_gpus(ray_sim, device="cuda:0") == 1.0
    assert worker_gpus(ray_sim, device="cpu") == 0.0
    with pytest.raises(ConfigError, match="use cuda"):  # Ray numbers each worker's GPUs from 0
        worker_gpus(ray_sim, device="cuda:1")
    halves = dataclasses.replace(ray_sim, worker_gpus=0.5)
    assert worker_gpus(halves, device="cuda") == 0.5 and worker_gpus(halves, device="cpu") == 0.5


def test_a_dead_workers_reason_keeps_rays_cause_not_its_identifiers() -> None:
    from node.sim.engine.ray_group import _reason

    died = RuntimeError(
        "The actor died unexpectedly before finishing this task.\n"
        "\tclass_name: HostProcess\n\tactor_id: " + "ab" * 16 + "\n\tpid: 4242\n"
        "\tnamespace: " + "0" * 36 + "\n\tip: 127.0.0.1\n"
        "The actor is dead because its worker process has died. Worker exit type: "
        "SYSTEM_ERROR Worker exit detail: the worker was killed for using too much memory"
    )
    reason = _reason(died)
    assert reason.endswith("killed for using too much memory") and "\n" not in reason
