"""One process per site folder: the daemon and `ledger reset` hold an flock on SITE_DIR/site.lock
with the holder's PID in it, taken before the ledger or checkpoint is opened. A second one
exits 2 in one line naming that PID; so does a daemon whose port is taken."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import STARTUP_S

from gossipmed.storage.site_lock import LOCK_FILE, SiteInUse, site_lock
from node.cli import main
from node.daemon.cluster import create_cluster, site_status, start_daemon, wait_until
from node.daemon.config import CONTROL_FILE

pytest_plugins = ["daemon_support"]  # fixtures: processes
pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def own_log_handlers() -> Iterator[None]:
    """`main(["run"])` attaches a stderr handler; one left over from an earlier test would
    write into that test's closed capture."""
    loggers = [logging.getLogger(), logging.getLogger("libp2p")]
    before = [list(lg.handlers) for lg in loggers]
    yield
    for lg, handlers in zip(loggers, before, strict=True):
        lg.handlers[:] = handlers


def quadratic_sites(tmp_path: Path, *, rounds: int, **daemon: Any) -> list[Path]:
    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {
            "daemon": {"rounds": rounds, "site_index": i, "problem": "quadratic", **daemon},
            "gossip": {"round_timeout_s": 0.2},
        }

    return create_cluster(tmp_path / "c", nodes=2, topology="ring", sections=sections)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_S,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        check=False,
    )


@pytest.mark.slow
def test_a_second_daemon_on_a_loading_site_exits_2_naming_the_first(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    site = quadratic_sites(tmp_path, rounds=0)[0]
    first = start_daemon(site)
    processes.append(first)
    wait_until(
        lambda: site_status(site)["up"] or first.poll() is not None,
        timeout=STARTUP_S,
        what="the first daemon to serve",
    )
    assert first.poll() is None
    # A daemon that is still loading has no control file yet; that is the window in which a
    # control-file check let a second daemon open the live ledger and checkpoint.
    (site / CONTROL_FILE).unlink()

    second = cli("run", "--site", str(site))

    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert f"pid {first.pid}" in last and "gossipmed run: error:" in last
    assert first.poll() is None  # the first one is untouched
    assert (site / LOCK_FILE).read_text().strip() == str(first.pid)


def test_ledger_reset_waits_for_no_one_and_names_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = quadratic_sites(tmp_path, rounds=1)[0]
    with site_lock(site, purpose="testing"):
        with (
            pytest.raises(SiteInUse, match=rf"pid {os.getpid()}\b"),
            site_lock(site, purpose="a second holder"),
        ):
            pass  # pragma: no cover
        assert main(["ledger", "reset", "--site", str(site), "--confirm"]) == 2
        assert f"in use by pid {os.getpid()}" in capsys.readouterr().err
    with site_lock(site, purpose="after the holder left"):
        assert (site / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert oct((site / LOCK_FILE).stat().st_mode & 0o777) == oct(0o600)


def test_a_port_in_use_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = quadratic_sites(tmp_path, rounds=1)[0]
    port = int(re.search(r"tcp/(\d+)", (site / "site.toml").read_text()).group(1))  # type: ignore[union-attr]
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert main(["run", "--site", str(site)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"tcp/{port}" in err.strip().splitlines()[-1]


def test_a_control_port_in_use_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site = quadratic_sites(tmp_path, rounds=1, control_port=port)[0]
        assert main(["run", "--site", str(site)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "already in use" in err.strip().splitlines()[-1]


def test_a_dashboard_port_in_use_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = quadratic_sites(tmp_path, rounds=1)[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(site), "--port", str(port), "--no-live"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and "already in use" in err
