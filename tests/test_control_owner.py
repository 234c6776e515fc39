"""Issue #20 finding 6: the control endpoint and `gossipmed dashboard` serve their owner only.

Another local account (a subprocess dropped to uid 65534) knows the port but cannot read the
0600 control file: it gets no metrics from any page, with no token or a guessed one, and
holding every connection slot with idle connections it re-opens as fast as they are closed
does not keep the owner (who has the token) off /status.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from node.daemon.control import ControlLimits, ControlServer, serve_control
from node.daemon.control_routes import DEFAULT_ROUTES, Route, directory_routes

pytestmark = pytest.mark.network

OTHER_UID = 65534  # nobody
INTRUDER = Path(__file__).with_name("control_intruder.py")
ROOT = Path(__file__).resolve().parents[1]
# The owner is `gossipmed status`'s client in its own process, as on a real host: it asks
# three times, each with at most OWNER_TRIES tries (a refused try is what a person retries).
OWNER_TRIES = 3
OWNER = f"""
import json, sys
from node.daemon.control_client import DaemonNotRunning, fetch_status
answers, tries = [], []
for _ in range(3):
    for attempt in range({OWNER_TRIES}):
        try:
            answers.append(fetch_status(__import__("pathlib").Path(sys.argv[1]), timeout=10.0))
            tries.append(attempt + 1)
            break
        except DaemonNotRunning as exc:
            error = str(exc)
    else:
        raise SystemExit("held off: " + error)
print(json.dumps(answers))
print("tries", tries, file=sys.stderr)
"""
CAP = 8
BOUND_S = 30.0
TRAIN_LOSS = 0.8137264  # un-noised metrics only the site's owner may read
ACCURACY = 0.6412953


def status() -> dict[str, Any]:
    last = {"round": 6, "train_loss": TRAIN_LOSS, "eval_loss": 0.9, "accuracy": ACCURACY}
    return {"site": "st-marys", "round": 7, "completed": 6, "last_metrics": last}


def python_for_other_user() -> str:
    """An interpreter uid 65534 may execute (the venv may live under /root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the other account's client as uid 65534")
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            ok = subprocess.run([exe, "-c", "pass"], user=OTHER_UID, timeout=30).returncode == 0
        except OSError:
            continue
        if ok:
            return exe
    pytest.skip("no Python interpreter that uid 65534 may execute")


async def owner_and_intruder(
    routes: Mapping[str, Route], control_file: Path, python: str, *, hold: int
) -> tuple[dict[str, Any], list[dict[str, Any]], ControlServer]:
    """Serve `status`; run the other account's client (holding `hold` connections once it
    has tried every page), then, while it holds them, ask for /status as the owner."""
    limits = ControlLimits(max_connections=CAP, head_timeout_s=60.0)
    owner: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        server: ControlServer = await nursery.start(
            functools.partial(
                serve_control, status, limits=limits, control_file=control_file, routes=routes
            )
        )
        script = INTRUDER.read_text(encoding="utf-8")  # the venv's tree may be closed to it
        proc = await trio.lowlevel.open_process(
            [python, "-c", script, str(server.port), str(control_file), str(hold)],
            user=OTHER_UID,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd="/",
        )
        assert proc.stdout is not None and proc.stdin is not None
        lines = LineReader(proc.stdout)
        try:
            seen = json.loads(await lines.next())
            if hold:
                assert await lines.next() == "holding"
                while server.active < hold:  # every slot held by the other account
                    await trio.sleep(0.01)
                done = await trio.run_process(
                    [sys.executable, "-c", OWNER, str(control_file)],
                    capture_stdout=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                owner.extend(json.loads(done.stdout))
        finally:
            await proc.stdin.aclose()
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        nursery.cancel_scope.cancel()
    return seen, owner, server


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"the other account's client ended: {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


def run_against(
    endpoint: str, tmp_path: Path, *, hold: int
) -> tuple[dict[str, Any], list[dict[str, Any]], ControlServer]:
    python = python_for_other_user()
    os.chmod(tmp_path, 0o755)  # even with the folder open, control.json stays 0600
    routes = DEFAULT_ROUTES if endpoint == "daemon" else directory_routes()
    control_file = tmp_path / "control.json"

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]], ControlServer]:
        with trio.fail_after(BOUND_S):
            return await owner_and_intruder(routes, control_file, python, hold=hold)

    return trio.run(main)


ENDPOINTS = pytest.mark.parametrize("endpoint", ["daemon", "dashboard"])


@ENDPOINTS
def test_another_account_gets_no_metrics(endpoint: str, tmp_path: Path) -> None:
    seen, _, _ = run_against(endpoint, tmp_path, hold=0)
    assert seen["control_file"] == "denied"
    for answer in seen["answers"]:
        assert answer.startswith("HTTP/1.0 401 "), answer[:300]
        for secret in (str(TRAIN_LOSS), str(ACCURACY), "train_loss", "st-marys"):
            assert secret not in answer


@ENDPOINTS
def test_another_account_holding_every_slot_cannot_keep_the_owner_off_status(
    endpoint: str, tmp_path: Path
) -> None:
    _, owner, server = run_against(endpoint, tmp_path, hold=CAP)
    assert [got["last_metrics"]["train_loss"] for got in owner] == [TRAIN_LOSS] * 3
    assert server.evicted > 0  # the owner got in by taking an idle connection's slot
