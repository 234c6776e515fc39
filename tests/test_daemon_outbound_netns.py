"""A hospital behind a firewall that allows only outbound connections, for real: three daemons
in three Linux network namespaces on one bridge; the hospital's namespace drops every inbound
TCP connection attempt (nftables) and its card says `reachable = false`.

The consortium must learn exactly as it does when every site is reachable (same metrics, round
for round: every site hears every neighbour in every round), and no neighbour may ever try to
dial the hospital (the firewall's drop counter stays where it was). Needs root, iproute2 and
nftables; skipped with the reason otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from daemon_support import STARTUP_S
from netns_support import Namespaces

from gossipmed.consortium.roster import load_roster, save_roster
from gossipmed.consortium.setup import with_outbound_only
from gossipmed.metrics import METRICS_FILE, RoundRecord, read_metrics
from node.daemon.cluster import CONSORTIUM_FILE, create_cluster, start_daemon

pytest_plugins = ["daemon_support"]  # fixtures: processes
pytestmark = [pytest.mark.slow, pytest.mark.network]

ROUNDS = 5
HOSPITAL = 0  # site-00
PORT = 4001  # create_cluster's port for sites at their own address


def sections(i: int) -> dict[str, dict[str, Any]]:
    return {
        "daemon": {"rounds": ROUNDS, "site_index": i, "problem": "quadratic", "seed": 5},
        "gossip": {"round_timeout_s": 60.0},
        "train": {"lr": 0.1},
    }


def make(root: Path, net: Namespaces, *, unreachable: bool) -> list[Path]:
    sites = create_cluster(
        root, nodes=3, topology="ring", addresses=net.addresses, sections=sections
    )
    if unreachable:  # the hospital's card says so, in the same consortium file
        consortium = root / CONSORTIUM_FILE
        roster = with_outbound_only(load_roster(consortium), [sites[HOSPITAL].name])
        save_roster(roster, consortium)
    return sites


def run_cluster(
    sites: list[Path], net: Namespaces, processes: list[subprocess.Popen[bytes]]
) -> list[list[RoundRecord]]:
    started = [start_daemon(s, prefix=net.prefix(i)) for i, s in enumerate(sites)]
    processes.extend(started)
    for p in started:
        p.wait(timeout=STARTUP_S)
    logs = {s.name: (s / "daemon.log").read_text()[-2000:] for s in sites}
    assert [p.returncode for p in started] == [0, 0, 0], logs
    return [read_metrics(s / METRICS_FILE) for s in sites]


def schedule(records: list[list[RoundRecord]]) -> list[tuple[int, str, int]]:
    return [(r.round, r.site, r.neighbours_heard) for site in records for r in site]


def learning(records: list[list[RoundRecord]]) -> list[Any]:
    """Loss, accuracy and consensus distance per site and round; the mix sums neighbours in
    the order they arrived, so floats agree to rounding, not bit for bit."""
    return [
        pytest.approx((r.eval_loss, r.accuracy, r.consensus_distance), rel=1e-5)
        for site in records
        for r in site
    ]


def test_an_unreachable_hospital_gossips_as_if_it_were_reachable(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    net = Namespaces(3)
    try:
        reference = run_cluster(make(tmp_path / "open", net, unreachable=False), net, processes)
        net.firewall(HOSPITAL)
        assert not net.can_connect(1, HOSPITAL, PORT)  # the firewall works...
        assert net.can_connect(HOSPITAL, 1, PORT)  # ...for inbound connections only
        before = net.dropped_connection_attempts(HOSPITAL)
        walled = run_cluster(make(tmp_path / "walled", net, unreachable=True), net, processes)
        assert net.dropped_connection_attempts(HOSPITAL) == before  # nobody dialled in
    finally:
        net.close()
    assert all(r.neighbours_heard == 2 for site in walled for r in site)
    assert [[r.round for r in site] for site in walled] == [list(range(ROUNDS))] * 3
    assert schedule(walled) == schedule(reference)
    assert [(r.eval_loss, r.accuracy, r.consensus_distance) for s in walled for r in s] == (
        learning(reference)
    )
    distances = [r.consensus_distance for r in walled[1]]
    assert distances[-1] is not None and distances[0] is not None
    assert distances[-1] < distances[0]
