"""`gossipmed cluster up/status/down` and `gossipmed inspect DIR` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from node.daemon.cluster import cluster_status, read_cluster, stop_cluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.network]


def gossipmed(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cluster_up_status_inspect_down(tmp_path: Path) -> None:
    directory = tmp_path / "cl"
    up = gossipmed(
        "cluster", "up", "--names", "alpha,beta", "--epsilon", "4", "--topology", "ring",
        "--dir", str(directory), "--toy-base", "--steps", "1", "--round-timeout", "20", "--json",
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        summary = json.loads(up.stdout)
        assert summary["sites"] == ["alpha", "beta"] and summary["failed"] == []
        sites, _doc = read_cluster(directory)
        assert [s.pid for s in sites] == summary["pids"]
        for site in sites:  # named sites, each with the budget asked for
            assert tomllib.loads((site.directory / "site.toml").read_text())["dp"]["epsilon"] == 4
            url = summary["dashboards"][site.name]
            assert url.startswith("http://127.0.0.1:") and "/#token=" in url

        def rounds_done() -> bool:
            return all(s.get("completed", 0) >= 2 for s in cluster_status(directory))

        wait_until(rounds_done, timeout=120, what="two rounds on every site")
        status = gossipmed("cluster", "status", str(directory), "--json")
        assert status.returncode == 0
        rows: list[dict[str, Any]] = json.loads(status.stdout)
        assert [r["site"] for r in rows] == ["alpha", "beta"]
        assert all(r["up"] and r["peers"][0]["connected"] for r in rows)
        assert all(r["dashboard"].startswith("http://127.0.0.1:") for r in rows)
        table = gossipmed("cluster", "status", str(directory))
        assert "dashboards" in table.stdout and "#token=" in table.stdout

        inspect = gossipmed("inspect", str(directory), "--json")
        assert inspect.returncode == 0, inspect.stderr
        report = json.loads(inspect.stdout)
        first = report["per_round"]["gossip"][0]
        assert first["sites"] == 2 and first["heard_fraction"] == 1.0
    finally:
        down = gossipmed("cluster", "down", str(directory), "--json")
    assert down.returncode == 0
    assert json.loads(down.stdout) == {"alpha": "stopped", "beta": "stopped"}
    assert stop_cluster(directory) == {"alpha": "not running", "beta": "not running"}
    gone = gossipmed("cluster", "status", str(directory), "--json")
    assert not any(r["up"] for r in json.loads(gone.stdout))
