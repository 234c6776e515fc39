"""Two daemons on two separate network stacks: Linux network namespaces made by this test,
joined by a veth pair with addresses that exist only inside them (10.231.0.1/24 and
10.231.0.2/24). Needs root and iproute2; skipped with the reason otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import STARTUP_S

from gossipmed.metrics import METRICS_FILE, read_metrics
from node.daemon.cluster import create_cluster, start_daemon, toy_sections

pytest_plugins = ["daemon_support"]  # fixtures: toy_base, processes
pytestmark = [pytest.mark.slow, pytest.mark.network]

ADDRESSES = ("10.231.0.1", "10.231.0.2")
ROUNDS = 3


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 `ip` is not installed")
    tag = f"gmt{os.getpid() % 100000}"
    names = [f"{tag}a", f"{tag}b"]
    made: list[str] = []
    try:
        for ns in names:
            res = _ip("netns", "add", ns)
            if res.returncode != 0:
                pytest.skip(f"cannot create network namespaces here: {res.stderr.strip()}")
            made.append(ns)
        steps = [
            ("link", "add", f"{tag}va", "type", "veth", "peer", "name", f"{tag}vb"),
            ("link", "set", f"{tag}va", "netns", names[0]),
            ("link", "set", f"{tag}vb", "netns", names[1]),
        ]
        for ns, dev, addr in (
            (names[0], f"{tag}va", ADDRESSES[0]),
            (names[1], f"{tag}vb", ADDRESSES[1]),
        ):
            steps += [
                ("-n", ns, "addr", "add", f"{addr}/24", "dev", dev),
                ("-n", ns, "link", "set", dev, "up"),
                ("-n", ns, "link", "set", "lo", "up"),
            ]
        for step in steps:
            res = _ip(*step)
            if res.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` not permitted: {res.stderr.strip()}")
        yield names
    finally:
        for ns in made:  # deleting a namespace also removes its end of the veth pair
            _ip("netns", "del", ns)


def test_daemons_in_separate_network_namespaces_gossip(
    tmp_path: Path,
    toy_base: Path,
    namespaces: list[str],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    base = toy_base
    sites = create_cluster(
        tmp_path / "cluster",
        nodes=2,
        topology="ring",
        addresses=ADDRESSES,
        sections=lambda i: toy_sections(
            index=i, nodes=2, base_model=base, rounds=ROUNDS, round_timeout_s=60.0
        ),
    )
    # neither host can reach the other on loopback: only the veth addresses connect them
    assert "10.231.0.2" in (sites[1] / "site.toml").read_text()
    for ns, site in zip(namespaces, sites, strict=True):
        processes.append(start_daemon(site, prefix=["ip", "netns", "exec", ns]))
    for p in processes:
        p.wait(timeout=STARTUP_S)
    assert [p.returncode for p in processes] == [0, 0]
    for site in sites:
        records = read_metrics(site / METRICS_FILE)
        assert [r.round for r in records] == list(range(ROUNDS))
        assert all(r.neighbours_heard == 1 for r in records)
