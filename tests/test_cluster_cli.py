"""`gossipmed cluster up/status/down` and `gossipmed inspect DIR` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.daemon.cluster import cluster_status, read_cluster, stop_cluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.network]


def gossipmed(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cluster_up_status_inspect_down(tmp_path: Path) -> None:
    directory = tmp_path / "cl"
    up = gossipmed(
        "cluster", "up", "--nodes", "2", "--topology", "ring", "--dir", str(directory),
        "--toy-base", "--steps", "1", "--round-timeout", "20", "--json",
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        summary = json.loads(up.stdout)
        assert summary["sites"] == ["site-00", "site-01"] and summary["failed"] == []
        sites, _doc = read_cluster(directory)
        assert [s.pid for s in sites] == summary["pids"]

        def rounds_done() -> bool:
            return all(s.get("completed", 0) >= 2 for s in cluster_status(directory))

        wait_until(rounds_done, timeout=120, what="two rounds on every site")
        status = gossipmed("cluster", "status", str(directory), "--json")
        assert status.returncode == 0
        rows: list[dict[str, Any]] = json.loads(status.stdout)
        assert [r["site"] for r in rows] == ["site-00", "site-01"]
        assert all(r["up"] and r["peers"][0]["connected"] for r in rows)

        inspect = gossipmed("inspect", str(directory), "--json")
        assert inspect.returncode == 0, inspect.stderr
        report = json.loads(inspect.stdout)
        first = report["per_round"]["gossip"][0]
        assert first["sites"] == 2 and first["heard_fraction"] == 1.0
    finally:
        down = gossipmed("cluster", "down", str(directory), "--json")
    assert down.returncode == 0
    assert json.loads(down.stdout) == {"site-00": "stopped", "site-01": "stopped"}
    assert stop_cluster(directory) == {"site-00": "not running", "site-01": "not running"}
    gone = gossipmed("cluster", "status", str(directory), "--json")
    assert not any(r["up"] for r in json.loads(gone.stdout))
