"""The dashboard's data and pages without a browser: the incremental metrics reader, the
daemon's `/` and `/dashboard.json`, folders that `gossipmed dashboard` reads, and the command's
read-only 127.0.0.1 server with the control endpoint's Host check."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gossipmed.metrics import METRICS_FILE, MetricsWriter, RoundRecord
from node.daemon.cluster import create_cluster
from node.daemon.control_routes import (
    CONTENT_SECURITY_POLICY,
    DEFAULT_ROUTES,
    directory_routes,
    route_response,
    site_routes,
)
from node.daemon.control_server import respond
from node.report.dashboard import ASSETS, DirectoryView, asset, site_snapshot
from node.report.history import COLUMNS, MetricsTail

ROOT = Path(__file__).resolve().parents[1]


def rec(site: str, r: int, **kw: Any) -> RoundRecord:
    fields: dict[str, Any] = dict(
        round=r,
        site=site,
        train_loss=1.0,
        eval_loss=2.0 - 0.1 * r,
        accuracy=0.1 * r,
        consensus_distance=1.0 / (r + 1),
        epsilon=0.5 * r,
        bytes_sent=1000,
        bytes_received=900,
        neighbours_heard=2,
        seconds=0.1,
        neighbours_expected=2,
    )
    fields.update(kw)
    return RoundRecord(**fields)


def write(path: Path, *records: RoundRecord) -> None:
    writer = MetricsWriter(path)
    for r in records:
        writer.write(r)
    writer.close()


def test_the_tail_reads_only_new_complete_lines_and_keeps_the_last_few(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    write(path, *(rec("a", r) for r in range(5)))
    tail = MetricsTail(path, limit=3)
    rows = tail.rows()["a"]
    assert [row[0] for row in rows] == [2, 3, 4]
    assert dict(zip(COLUMNS, rows[-1], strict=True))["accuracy"] == pytest.approx(0.4)
    with open(path, "ab") as f:  # a torn line: skipped until it is complete
        f.write(json.dumps(rec("a", 5).to_json()).encode()[:20])
    assert [row[0] for row in tail.rows()["a"]] == [2, 3, 4]
    with open(path, "ab") as f:
        f.write(json.dumps(rec("a", 5).to_json()).encode()[20:] + b"\nnot json\n")
    assert [row[0] for row in tail.rows()["a"]] == [3, 4, 5]
    path.unlink()
    write(path, rec("a", 0, accuracy=float("nan")))  # replaced: read afresh, NaN -> None
    (only,) = tail.rows()["a"]
    assert only[0] == 0 and only[COLUMNS.index("accuracy")] is None


def test_a_huge_backlog_is_skipped_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    write(path, *(rec("a", r) for r in range(400)))
    tail = MetricsTail(path, limit=1000, max_read_bytes=4096)
    rows = tail.rows()["a"]
    assert 0 < len(rows) < 40 and rows[-1][0] == 399


def status(**extra: Any) -> dict[str, Any]:
    return {
        "site": "st-marys",
        "round": 7,
        "phase": "exchanging",
        "completed": 7,
        "ready": True,
        "epsilon": {"spent": 2.5, "budget": 8.0},
        "bytes": {"sent": 10, "received": 20},
        "peers": [{"name": "city", "connected": True, "last_round": 7, "link": None}],
        **extra,
    }


def test_the_daemon_serves_the_page_its_assets_and_its_data(tmp_path: Path) -> None:
    write(tmp_path / METRICS_FILE, *(rec("st-marys", r) for r in range(3)))
    routes = site_routes(tmp_path / METRICS_FILE)
    page = route_response("/", status, routes)
    assert page.status == "200 OK" and page.content_type.startswith("text/html")
    assert page.body == asset("index.html") and b'id="round"' in page.body
    for name in ASSETS:  # no CDN, no external fetch: nothing names another origin
        assert b"http" not in asset(name).replace(b'"http://www.w3.org/2000/svg"', b"")
    head = page.encode().split(b"\r\n\r\n", 1)[0].decode()
    assert f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}" in head
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    for name in ASSETS:
        if name != "index.html":
            assert route_response(f"/{name}", status, routes).body == asset(name)
    doc = json.loads(route_response("/dashboard.json", status, routes).body)
    assert doc["mode"] == "site" and doc["focus"] == "st-marys"
    assert doc["sites"][0]["round"] == 7 and doc["sites"][0]["epsilon_budget"] == 8.0
    assert [row[0] for row in doc["history"]["st-marys"]] == [0, 1, 2]
    assert doc["graph"]["edges"] == [["st-marys", "city"]]
    assert json.loads(route_response("/status", status, routes).body)["round"] == 7
    assert route_response("/dashboard.json", status, DEFAULT_ROUTES).status == "200 OK"


def test_the_page_keeps_the_endpoints_host_check_and_stays_read_only() -> None:
    def ask(method: str, host: str) -> bytes:
        head = f"{method} / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        return respond(head, port=8000, status=status, routes=DEFAULT_ROUTES, token="t").encode()

    assert ask("GET", "127.0.0.1:8000").startswith(b"HTTP/1.0 200")
    assert ask("GET", "evil.example:8000").startswith(b"HTTP/1.0 421")
    assert ask("POST", "127.0.0.1:8000").startswith(b"HTTP/1.0 405")


def test_site_snapshot_carries_no_non_finite_numbers() -> None:
    doc = site_snapshot(status(epsilon={"spent": float("inf"), "budget": 8.0}), {})
    from node.report.dashboard import encode

    assert json.loads(encode(doc))["sites"][0]["epsilon_spent"] is None


def test_a_cluster_folder_shows_the_consortium_graph_and_each_sites_history(
    tmp_path: Path,
) -> None:
    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {"daemon": {"site_index": i, "problem": "quadratic"}}

    sites = create_cluster(tmp_path, nodes=4, topology="ring", sections=sections)
    for i, site in enumerate(sites[:3]):  # site-03 has not run yet
        write(site / METRICS_FILE, *(rec(site.name, r) for r in range(2 + i)))
    view = DirectoryView(tmp_path, live=False)
    doc = view.snapshot()
    assert doc["mode"] == "cluster"
    assert doc["graph"]["nodes"] == [s.name for s in sites]
    assert ["site-00", "site-01"] in doc["graph"]["edges"] and len(doc["graph"]["edges"]) == 4
    assert doc["graph"]["rounds"] == {"site-00": 1, "site-01": 2, "site-02": 3, "site-03": None}
    assert [len(doc["history"].get(s.name, [])) for s in sites] == [2, 3, 4, 0]
    write(sites[3] / METRICS_FILE, rec("site-03", 0))
    view.refresh()
    assert view.snapshot()["graph"]["rounds"]["site-03"] == 0
    site_doc = DirectoryView(sites[1], live=False).snapshot()
    assert site_doc["mode"] == "site" and len(site_doc["graph"]["nodes"]) == 4
    routes = directory_routes()
    body = route_response("/dashboard.json", view.snapshot, routes).body
    assert json.loads(body)["mode"] == "cluster"
    assert route_response("/", view.snapshot, routes).body == asset("index.html")


def test_a_simulation_run_folder_shows_its_topology(tmp_path: Path) -> None:
    from node.cli import main

    out = tmp_path / "run"
    argv = ["simulate", "--problem", "quadratic", "--nodes", "6", "--topology", "ring"]
    assert main([*argv, "--rounds", "3", "--out", str(out), "--json"]) == 0
    doc = DirectoryView(out, live=False).snapshot()
    assert doc["mode"] == "run"
    assert len(doc["graph"]["nodes"]) == 6 and len(doc["graph"]["edges"]) == 6
    assert all(len(rows) == 3 for rows in doc["history"].values())
    assert {card["round"] for card in doc["sites"]} == {2}


def test_an_empty_folder_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main

    assert main(["dashboard", str(tmp_path), "--json"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def get(port: int, path: str, host: str = "127.0.0.1", token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.network
def test_the_dashboard_command_serves_on_loopback_until_stopped(tmp_path: Path) -> None:
    write(tmp_path / METRICS_FILE, *(rec(f"site-0{i}", 0) for i in range(3)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "dashboard", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split(": ", 1)[1].split(" ", 1)[0]
        address, _, fragment = url.partition("/#token=")
        assert address.startswith("http://127.0.0.1:") and fragment
        port = int(address.rsplit(":", 1)[1])
        assert get(port, "/").startswith(b"HTTP/1.0 200")  # the page itself: no data in it
        assert get(port, "/dashboard.json").startswith(b"HTTP/1.0 401")
        body = get(port, "/dashboard.json", token=fragment).split(b"\r\n\r\n", 1)[1]
        assert len(json.loads(body)["sites"]) == 3
        assert get(port, "/", host="attacker.example").startswith(b"HTTP/1.0 421")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
