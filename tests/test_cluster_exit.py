"""`cluster status` tells a site that finished its rounds (done, at which round) from one that
stopped on a signal and one that failed (crashed or refused, with the exit code), instead of
`up: no` with dashes for all of them."""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import STARTUP_S

from node.cli import main
from node.commands.cluster import describe_exit
from node.daemon.cluster import (
    create_cluster,
    site_status,
    start_cluster,
    start_daemon,
    wait_until,
)
from node.daemon.config import CONTROL_FILE
from node.daemon.control_client import site_dashboard_url
from node.daemon.exit_record import read_exit_record

pytest_plugins = ["daemon_support"]  # fixtures: processes
pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def own_log_handlers() -> Iterator[None]:
    """`main(["run"])` attaches a stderr handler; drop it after the test."""
    loggers = [logging.getLogger(), logging.getLogger("libp2p")]
    before = [list(lg.handlers) for lg in loggers]
    yield
    for lg, handlers in zip(loggers, before, strict=True):
        lg.handlers[:] = handlers


def quadratic(names: list[str], tmp_path: Path, *, rounds: int, **daemon: Any) -> list[Path]:
    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {
            "daemon": {"rounds": rounds, "site_index": i, "problem": "quadratic", **daemon},
            "gossip": {"round_timeout_s": 0.5},
        }

    return create_cluster(
        tmp_path / "c", nodes=len(names), topology="ring", sections=sections, names=names
    )


def test_finished_sites_read_done_with_their_last_round(
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    sites = quadratic(["st-marys", "royal-free"], tmp_path, rounds=2)
    assert [s.name for s in sites] == ["st-marys", "royal-free"]
    processes.extend(start_cluster(tmp_path / "c"))
    wait_until(
        lambda: all(p.poll() is not None for p in processes),
        timeout=STARTUP_S,
        what="both daemons to finish their rounds",
    )
    assert [p.returncode for p in processes] == [0, 0]
    records = [read_exit_record(s) for s in sites]
    assert all(r is not None and r["outcome"] == "done" and r["code"] == 0 for r in records)
    assert all(r["last_round"] == 2 and r["completed"] == 2 for r in records if r)  # 1-based

    assert main(["cluster", "status", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    for name in ("st-marys", "royal-free"):
        row = next(line for line in out.splitlines() if name in line)
        assert "done" in row and " 2 " in row
    log = (sites[0] / "daemon.log").read_text()  # `run` named its page, token included
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/#token=\S{43}", log)
    # one numbering for people (node.rounds): the records of rounds 0 and 1 are rounds 1 and 2
    assert "round 1 done" in log and "round 2 done" in log and "round 0 done" not in log
    assert "stopped (last completed round 2)" in log


def test_status_prints_the_dashboard_and_a_signal_reads_as_stopped(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    site = quadratic(["a", "b"], tmp_path, rounds=0)[0]
    processes.append(start_daemon(site))
    wait_until(lambda: site_status(site)["up"], timeout=STARTUP_S, what="the daemon to serve")
    assert main(["status", "--site", str(site)]) == 0
    url = site_dashboard_url(site / CONTROL_FILE)
    out = capsys.readouterr().out
    assert f"dashboard: {url}" in out
    assert re.search(r"round \d+ \(\w+\), \d+ completed since start", out)
    assert site_status(site)["round"] >= 0  # /status keeps the 0-based index
    processes[0].send_signal(signal.SIGTERM)
    assert processes[0].wait(timeout=STARTUP_S) == 0
    record = read_exit_record(site)
    assert record is not None and record["outcome"] == "stopped" and record["code"] == 0


def test_a_refused_start_reads_as_refused_with_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site = quadratic(["a", "b"], tmp_path, rounds=1, control_port=port)[0]
        assert main(["run", "--site", str(site)]) == 2
    record = read_exit_record(site)
    assert record is not None and record["outcome"] == "refused" and record["code"] == 2
    assert "already in use" in record["message"]
    capsys.readouterr()
    assert main(["cluster", "status", str(tmp_path / "c"), "--json"]) == 0
    import json

    rows = {r["site"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["a"]["exit"]["outcome"] == "refused" and rows["b"]["exit"] is None


def test_each_ending_is_described_apart() -> None:
    crashed = {"outcome": "crashed", "code": 1, "last_round": 4, "message": "OSError: disk"}
    assert describe_exit(crashed) == ("[red]crashed[/red] (exit 1: OSError: disk)", "4")
    assert (
        describe_exit({"outcome": "done", "code": 0, "last_round": 7})[0] == "[green]done[/green]"
    )
    assert describe_exit({"outcome": "stopped", "code": 0, "last_round": None}) == ("stopped", "-")
    assert "not running" in describe_exit(None)[0]


@pytest.mark.parametrize(
    ("outcome", "code", "last", "said"),
    [
        ("done", 0, 3, "its last run done after round 3"),
        ("stopped", 0, None, "its last run stopped before its first round"),
        ("crashed", 1, 7, "its last run crashed after round 7 (exit 1: boom)"),
    ],
)
def test_status_of_a_stopped_site_says_how_its_last_run_ended(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    outcome: str,
    code: int,
    last: int | None,
    said: str,
) -> None:
    from node.cli import main
    from node.daemon.exit_record import write_exit_record

    site = tmp_path / "st-marys"
    site.mkdir()
    message = "boom" if outcome == "crashed" else ""
    write_exit_record(
        site, code=code, outcome=outcome, last_round=last, completed=0, message=message
    )
    assert main(["status", "--site", str(site)]) == 2  # still "not running" for scripts
    assert f"st-marys is not running; {said}" in capsys.readouterr().err
