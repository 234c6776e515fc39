"""A neighbour that is down is an expected outage: its redials are logged once at WARNING
(not libp2p's ERROR per dial and a WARNING per round), and once more when it answers."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import STARTUP_S, completed

from node.daemon.cluster import create_cluster, start_daemon, wait_until
from node.daemon.process import EXPECTED_REDIAL_ERRORS, configure_logging
from node.round.reachability import Reachability

pytest_plugins = ["daemon_support"]  # fixtures: processes
pytestmark = pytest.mark.network


def test_an_outage_is_one_warning_and_its_end_one_line(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.reachability")
    seen = Reachability(log)
    with caplog.at_level(logging.DEBUG, logger="test.reachability"):
        for _ in range(24):
            seen.gave_up("city")
        seen.delivered("city")
        seen.delivered("city")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot reach city" in warnings[0].getMessage()
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.getMessage() for r in infos] == ["city is reachable again"]
    assert seen.unreachable == frozenset()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers: give the next test the ones it had."""
    names = ["", "libp2p", *EXPECTED_REDIAL_ERRORS, "node.net.libp2p.transport"]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.filters[:], lg.level) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, filters, level) in zip(loggers, saved, strict=True):
            for handler in lg.handlers[:]:
                if handler not in handlers:
                    lg.removeHandler(handler)
                    handler.close()
            lg.handlers[:] = handlers
            lg.filters[:] = filters
            lg.setLevel(level)


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.usefixtures("restored_logging")
def test_a_connection_a_neighbour_closed_is_not_an_error_unless_verbose(
    tmp_path: Path, verbose: bool
) -> None:
    """A stopping neighbour closes the connection under yamux's reader, which libp2p logs at
    ERROR (and itself treats as the connection's end); any other error in it still shows."""
    log_file = tmp_path / "daemon.log"
    configure_logging(log_file, verbose=verbose)
    yamux = logging.getLogger("libp2p.stream_muxer.yamux.yamux")
    for error in ("ClosedResourceError", "BrokenResourceError", "ValueError"):
        yamux.error(f"Error in handle_incoming for peer 12D3KooWx: {error}: ")
    yamux.error("Error in handle_incoming for peer 12D3KooWy: KeyError: ': ClosedResourceError: '")
    for handler in logging.getLogger("libp2p").handlers:
        handler.flush()
    logged = log_file.read_text()
    assert ("12D3KooWx: ClosedResourceError" in logged) is verbose
    assert ("12D3KooWx: BrokenResourceError" in logged) is verbose
    assert "Error in handle_incoming for peer 12D3KooWx: ValueError" in logged
    assert "12D3KooWy: KeyError" in logged  # the name inside another error's text hides nothing


def test_a_daemon_logs_a_down_neighbour_once_and_its_return(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {
            "daemon": {"rounds": 0, "site_index": i, "problem": "quadratic"},
            "gossip": {"round_timeout_s": 0.3},
        }

    first, second = create_cluster(tmp_path / "c", nodes=2, topology="ring", sections=sections)
    processes.append(start_daemon(first))
    wait_until(lambda: completed(first) >= 2, timeout=STARTUP_S, what="2 rounds alone")
    processes.append(start_daemon(second))
    log_file = first / "daemon.log"
    wait_until(
        lambda: "is reachable again" in log_file.read_text(),
        timeout=STARTUP_S,
        what="site-00 to log that site-01 answers",
    )
    for p in processes:
        p.terminate()
        p.wait(timeout=STARTUP_S)
    lines = log_file.read_text().splitlines()
    assert not [line for line in lines if " ERROR " in line]
    down = [line for line in lines if " WARNING " in line and "site-01" in line]
    assert len(down) == 1 and "cannot reach site-01" in down[0]
    assert sum("site-01 is reachable again" in line for line in lines) == 1
