"""`gossipmed run`'s exit codes, which a supervisor (systemd) relies on:
0 stopped or done, 1 crashed (restart it), 2 configuration error (do not restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.cli import main
from node.daemon.cluster import create_cluster
from node.daemon.site_daemon import SiteDaemon

pytestmark = pytest.mark.network


def site(tmp_path: Path, **daemon: Any) -> Path:
    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {
            "daemon": {"rounds": 2, "site_index": i, "problem": "quadratic", **daemon},
            "gossip": {"round_timeout_s": 0.2},
        }

    return create_cluster(tmp_path / "c", nodes=2, topology="ring", sections=sections)[0]


def test_a_daemon_that_finishes_its_rounds_exits_0(tmp_path: Path) -> None:
    assert main(["run", "--site", str(site(tmp_path))]) == 0


def test_a_configuration_error_exits_2(tmp_path: Path) -> None:
    assert main(["run", "--site", str(site(tmp_path, eval_every=0))]) == 2


def test_a_crash_while_running_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_disk(self: SiteDaemon, round: int, step: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SiteDaemon, "mark_sealed", broken_disk)
    assert main(["run", "--site", str(site(tmp_path))]) == 1
