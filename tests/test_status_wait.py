"""`gossipmed status --wait`: a script that has just started a daemon asks once and is told
when it answers, without a shell loop, and is told at once when the daemon ends instead."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import node.commands.status as status_command
from node.cli import main
from node.daemon.control_auth import auth_header
from node.daemon.control_client import CONTROL_FILE
from node.daemon.exit_record import write_exit_record

TOKEN = "test-token"
STATUS = {"site": "st-marys", "pid": 1, "round": 0, "phase": "training", "completed": 0}


@pytest.fixture
def daemon_port() -> Iterator[int]:
    """A stand-in control endpoint on loopback that answers /status to the right token."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name, value = auth_header(TOKEN)
            ok = self.path == "/status" and self.headers.get(name) == value
            body = json.dumps(STATUS).encode() if ok else b"{}"
            self.send_response(200 if ok else 403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _announce(site: Path, port: int) -> None:
    """What a daemon writes once its control endpoint is up."""
    (site / CONTROL_FILE).write_text(json.dumps({"port": port, "token": TOKEN, "pid": 1}))


def _pauses(monkeypatch: pytest.MonkeyPatch, on_pause: list[Callable[[], None]]) -> list[int]:
    """Replace the poll interval by the next scripted event (the daemon progressing)."""
    calls: list[int] = []

    def pause() -> None:
        calls.append(1)
        on_pause[len(calls) - 1]()

    monkeypatch.setattr(status_command, "_pause", pause)
    return calls


def test_wait_asks_again_until_the_daemon_answers(
    tmp_path: Path,
    daemon_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = _pauses(monkeypatch, [lambda: None, lambda: _announce(tmp_path, daemon_port)])
    assert main(["status", "--site", str(tmp_path), "--wait", "600", "--json"]) == 0
    assert len(calls) == 2
    assert json.loads(capsys.readouterr().out)["site"] == "st-marys"


def test_without_wait_a_starting_daemon_is_asked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _pauses(monkeypatch, [])
    assert main(["status", "--site", str(tmp_path)]) == 2
    assert calls == []
    assert "not found: is the daemon running" in capsys.readouterr().err


def test_a_daemon_that_ends_while_waited_for_ends_the_wait_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused() -> None:
        write_exit_record(
            tmp_path, code=2, outcome="refused", last_round=None, completed=0, message="bad key"
        )

    calls = _pauses(monkeypatch, [refused])
    assert main(["status", "--site", str(tmp_path), "--wait", "600"]) == 2
    assert len(calls) == 1
    err = capsys.readouterr().err
    assert "its last run refused before its first round (exit 2: bad key)" in err


def test_the_record_of_an_earlier_run_does_not_end_the_wait(
    tmp_path: Path,
    daemon_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_exit_record(tmp_path, code=0, outcome="done", last_round=3, completed=3)
    record = json.loads((tmp_path / "exit.json").read_text())
    record["at"] = time.time() - 3600  # the run before this start
    (tmp_path / "exit.json").write_text(json.dumps(record))
    calls = _pauses(monkeypatch, [lambda: None, lambda: _announce(tmp_path, daemon_port)])
    assert main(["status", "--site", str(tmp_path), "--wait", "600", "--json"]) == 0
    assert len(calls) == 2


@pytest.mark.parametrize("bad", ["-1", "nan", "inf"])
def test_wait_takes_a_finite_number_of_seconds(
    tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--site", str(tmp_path), f"--wait={bad}"]) == 2
    assert "--wait takes a number of seconds" in capsys.readouterr().err


def test_a_damaged_exit_record_neither_crashes_nor_ends_the_wait(
    tmp_path: Path, daemon_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_exit_record(tmp_path, code=0, outcome="done", last_round=3, completed=3)
    record = json.loads((tmp_path / "exit.json").read_text())
    record["at"] = "tomorrow"
    (tmp_path / "exit.json").write_text(json.dumps(record))
    calls = _pauses(monkeypatch, [lambda: _announce(tmp_path, daemon_port)])
    assert main(["status", "--site", str(tmp_path), "--wait", "600", "--json"]) == 0
    assert len(calls) == 1
