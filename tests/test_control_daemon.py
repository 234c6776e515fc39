"""Issue #13, finding 6, against a real daemon process: a local connection flood on the
control port neither kills the daemon nor stops its checkpoints.

Before the fix, 10,000 connections under a 1,024 file limit made the daemon die on its next
checkpoint write (EMFILE). Here the daemon runs with RLIMIT_NOFILE 256 and the flood keeps
400 connections coming (each reconnects as soon as the daemon closes it) until the daemon
has written two more checkpoints. The site solves the quadratic problem alone (its neighbour
is never started), so a round is one short exchange timeout and a checkpoint.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from daemon_support import STARTUP_S

from gossipmed.storage.checkpoint import META_FILE
from node.daemon.cluster import create_cluster, site_status, start_daemon, wait_until
from node.daemon.config import CONTROL_FILE, LOG_FILE, STATE_DIR

pytest_plugins = ["daemon_support"]  # fixtures: processes
pytestmark = [pytest.mark.slow, pytest.mark.network]

FILE_LIMIT = 256
FLOOD = 400
FLOOD_BOUND_S = 120.0  # the daemon must write two checkpoints under the flood within this


def with_file_limit(limit: int) -> list[str]:
    """A command prefix that lowers RLIMIT_NOFILE, then execs the rest of the command line."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code]


def checkpoint_round(site: Path) -> int:
    """Round of the last checkpoint; -1 before the first."""
    try:
        return int(json.loads((site / STATE_DIR / META_FILE).read_text())["round"])
    except (OSError, ValueError, KeyError):
        return -1


def log_tail(site: Path) -> str:
    return (site / LOG_FILE).read_text(errors="replace")[-3000:]


def flood_until(port: int, site: Path, proc: subprocess.Popen[bytes], *, target_round: int) -> int:
    """FLOOD connections that send nothing and reconnect when closed, until the checkpoint
    reaches `target_round` and at least 2 * FLOOD connections were opened, or the daemon
    exits; returns how many were opened."""
    opened = 0

    async def connection(stop: trio.Event) -> None:
        nonlocal opened
        while not stop.is_set():
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            opened += 1
            try:
                while await stream.receive_some(1024):
                    pass
            except trio.BrokenResourceError:
                pass
            finally:
                await stream.aclose()

    async def main() -> None:
        stop = trio.Event()
        with trio.fail_after(FLOOD_BOUND_S):
            async with trio.open_nursery() as nursery:
                for _ in range(FLOOD):
                    nursery.start_soon(connection, stop)
                while proc.poll() is None and (
                    checkpoint_round(site) < target_round or opened < 2 * FLOOD
                ):
                    await trio.sleep(0.1)
                stop.set()
                nursery.cancel_scope.cancel()

    trio.run(main)
    return opened


def raw_get(port: int, host: str, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET /status HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_a_daemon_with_256_files_survives_a_control_flood_and_keeps_checkpointing(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    def sections(i: int) -> dict[str, dict[str, object]]:
        return {
            "daemon": {
                "rounds": 0,  # until stopped
                "site_index": i,
                "problem": "quadratic",
                "seed": 3,
            },
            "gossip": {"round_timeout_s": 0.5},
        }

    site = create_cluster(tmp_path / "c", nodes=2, topology="ring", sections=sections)[0]
    proc = start_daemon(site, prefix=with_file_limit(FILE_LIMIT))
    processes.append(proc)
    wait_until(
        lambda: checkpoint_round(site) >= 1 or proc.poll() is not None,
        timeout=STARTUP_S,
        what="the first checkpoints",
    )
    assert proc.poll() is None, log_tail(site)
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    assert any(f"{FILE_LIMIT}" in line for line in limits.splitlines() if "open files" in line)
    control = json.loads((site / CONTROL_FILE).read_text())
    port, token = control["port"], control["token"]

    before = checkpoint_round(site)
    opened = flood_until(port, site, proc, target_round=before + 2)
    assert proc.poll() is None, log_tail(site)
    assert opened >= 2 * FLOOD

    # after the flood: /status answers a client that names us and has the token, only it
    wait_until(lambda: site_status(site)["up"], timeout=60.0, what="status after the flood")
    assert site_status(site)["site"] == "site-00"
    assert raw_get(port, f"localhost:{port}", token).startswith(b"HTTP/1.0 200 OK")
    refused = raw_get(port, f"rebound.example:{port}", token)
    assert refused.startswith(b"HTTP/1.0 421 ") and b"site-00" not in refused
    tokenless = raw_get(port, f"localhost:{port}", None)
    assert tokenless.startswith(b"HTTP/1.0 401 ") and b"site-00" not in tokenless

    after = checkpoint_round(site)
    wait_until(
        lambda: checkpoint_round(site) > after or proc.poll() is not None,
        timeout=60.0,
        what="a checkpoint after the flood",
    )
    assert proc.poll() is None, log_tail(site)
    assert "Too many open files" not in log_tail(site)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log_tail(site)
