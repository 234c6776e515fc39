"""`gossipmed run` under a supervisor: the systemd unit in deploy/, journald's log format on
stderr, sd_notify readiness, readiness in /status, and the exit code a unit must not restart."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path
from typing import Any

import pytest
import trio
from daemon_support import STARTUP_S

from gossipmed.metrics import METRICS_FILE, read_metrics
from node.daemon.cluster import create_cluster, daemon_command
from node.daemon.config import load_daemon_settings
from node.daemon.site_daemon import SiteDaemon
from node.daemon.systemd import (
    JournaldFormatter,
    notify,
    priority,
    stderr_is_journal,
    watchdog_interval_s,
)

pytest_plugins = ["daemon_support"]  # fixtures: processes

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "gossipmed@.service"


def unit() -> ConfigParser:
    parser = ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_the_unit_restarts_crashes_but_not_configuration_errors() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["KillSignal"] == "SIGTERM"
    assert re.fullmatch(r"\S+/gossipmed run --site /var/lib/gossipmed/%i", service["ExecStart"])
    assert service["ReadWritePaths"] == "/var/lib/gossipmed/%i"
    assert service["UMask"] == "0077"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    gossipmed = Path(sys.executable).with_name("gossipmed")
    assert gossipmed.is_file()
    text = UNIT.read_text().replace("/opt/gossipmed/.venv/bin/gossipmed", str(gossipmed))
    rendered = tmp_path / "gossipmed@st-marys.service"
    rendered.write_text(text)
    res = subprocess.run(
        ["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert rendered.name not in res.stderr  # no unknown keys or bad values


def test_a_configuration_error_exits_2(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "node.cli", "run", "--site", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=STARTUP_S,
        cwd=ROOT,
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1


def record(level: int, message: str, *, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("gossipmed.daemon", level, __file__, 1, message, None, exc_info)


def test_journald_lines_carry_a_priority_on_every_line_and_no_time() -> None:
    fmt = JournaldFormatter()
    assert fmt.format(record(logging.INFO, "round 3 done")) == "<6>gossipmed.daemon: round 3 done"
    assert fmt.format(record(logging.WARNING, "x")).startswith("<4>")
    lines = fmt.format(record(logging.ERROR, "crashed", exc=True)).split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"
    assert [priority(level) for level in (5, 15, 25, 35, 45, 55)] == [7, 7, 6, 4, 3, 2]


def test_the_journal_is_recognised_by_the_stream_systemd_names(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as f:
        st = os.fstat(f.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, 0)
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, f.fileno())
        assert not stderr_is_journal({}, f.fileno())


def test_notify_and_watchdog_do_nothing_unsupervised() -> None:
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000"}) == 30.0


def test_status_says_when_the_daemon_became_ready(tmp_path: Path) -> None:
    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {"daemon": {"site_index": i, "problem": "quadratic"}}

    sites = create_cluster(tmp_path, nodes=2, topology="ring", sections=sections)
    daemons = [SiteDaemon(load_daemon_settings(s)) for s in sites]
    before = daemons[0].status()
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        with trio.fail_after(STARTUP_S):
            async with trio.open_nursery() as nursery:
                for d in daemons:
                    await nursery.start(d.run)
                seen.extend(d.status() for d in daemons)
                nursery.cancel_scope.cancel()

    trio.run(main)
    for d in daemons:
        d.metrics.close()
    assert (before["ready"], before["ready_since"]) == (False, None)
    assert all(st["ready"] and st["ready_since"] > 0 for st in seen)
    assert all(st["listen"] for st in seen)


@pytest.mark.slow
def test_daemons_under_a_supervisor_notify_readiness_and_log_for_journald(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """What systemd sees: READY=1 then STOPPING=1 on $NOTIFY_SOCKET, and on the journal stream
    only `<priority>logger: message` lines."""

    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {
            "daemon": {"rounds": 2, "site_index": i, "problem": "quadratic"},
            "gossip": {"round_timeout_s": 60.0},
        }

    sites = create_cluster(tmp_path / "cl", nodes=2, topology="ring", sections=sections)
    sockets, logs = [], []
    for i, site in enumerate(sites):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"gossipmed-test-{os.getpid()}-{i}"
        sock.bind("\0" + name)
        sock.settimeout(STARTUP_S)
        sockets.append(sock)
        stderr = open(tmp_path / f"journal-{i}", "wb")  # noqa: SIM115 (closed below)
        logs.append(stderr)
        st = os.fstat(stderr.fileno())
        env = dict(
            os.environ,
            NOTIFY_SOCKET="@" + name,
            JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
            HF_HUB_OFFLINE="1",
            PYTHONPATH=str(ROOT),
        )
        processes.append(
            subprocess.Popen(
                daemon_command(site), stdout=subprocess.DEVNULL, stderr=stderr, env=env
            )
        )
    try:
        messages = [[sock.recv(4096).decode() for _ in range(2)] for sock in sockets]
        codes = [p.wait(timeout=STARTUP_S) for p in processes]
    finally:
        for sock in sockets:
            sock.close()
        for f in logs:
            f.close()
    assert codes == [0, 0]
    for site, (ready, stopping) in zip(sites, messages, strict=True):
        assert ready.split("\n")[0] == "READY=1" and site.name in ready
        assert stopping == "STOPPING=1"
        assert [r.round for r in read_metrics(site / METRICS_FILE)] == [0, 1]
    for i in range(2):
        lines = (tmp_path / f"journal-{i}").read_text().splitlines()
        assert lines, "the daemon logged nothing"
        assert all(re.match(r"<[2-7]>[\w.]+: ", line) for line in lines), lines[:5]
        assert any(line.startswith("<6>node.round.driver: round 1 done") for line in lines)


@pytest.mark.slow
def test_sigterm_during_training_exits_0_after_the_step_ends(
    tmp_path: Path, toy_base: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A stop abandons the training step, but the process waits for it before exiting: an
    interpreter that ends a thread inside torch aborts (exit -6), which a supervisor counts as
    a failure."""
    from node.daemon.cluster import site_status, start_daemon, toy_sections, wait_until

    def sections(i: int) -> dict[str, Any]:
        tables = toy_sections(
            index=i, nodes=2, base_model=toy_base, rounds=0, round_timeout_s=60.0, steps=400
        )
        tables["dp"] = {"enabled": False}
        return tables

    sites = create_cluster(tmp_path, nodes=2, topology="ring", sections=sections)
    proc = start_daemon(sites[0])  # alone: it trains round 0, then would wait for site-01
    processes.append(proc)
    wait_until(
        lambda: site_status(sites[0]).get("phase") == "training" or proc.poll() is not None,
        timeout=STARTUP_S,
        what="site-00 to train",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STARTUP_S) == 0, (sites[0] / "daemon.log").read_text()[-2000:]
    assert "stopped" in (sites[0] / "daemon.log").read_text()
