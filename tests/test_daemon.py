"""Three real daemons (separate processes) gossip on loopback; an outsider is refused.

Sites start from *different* adapters (a per-site adapter seed) so that reaching consensus
is something gossip has to do: without mixing, their distance would stay where it started.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from daemon_support import STARTUP_S, rounds_done

from gossipmed.consortium.audit import read_audit
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster, load_roster, save_roster
from node.daemon.cluster import (
    LOOPBACK,
    create_cluster,
    free_port,
    init_site,
    site_status,
    start_daemon,
    toy_sections,
    wait_until,
    write_site_toml,
)
from node.daemon.config import CONTROL_FILE

pytest_plugins = ["daemon_support"]  # fixtures: toy_base, processes
pytestmark = [pytest.mark.slow, pytest.mark.network]

ROUNDS = 3


def rms(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def make_intruder(root: Path, *, victim: Path, toy_base: Path) -> Path:
    """A site with a valid libp2p key whose own consortium file claims the victim as its
    neighbour; the victim's roster does not list it."""
    site = root / "intruder"
    listen = [f"/ip4/{LOOPBACK}/tcp/{free_port()}"]
    card = init_site(site, name="intruder", listen=listen)
    roster = Roster(
        members=(Member.from_mapping(_toml(victim / "card.toml")), Member.from_mapping(card)),
        edges=(("intruder", victim.name),),
        # the victim's shared settings (task included), so it starts and dials: only the
        # victim's roster refuses it
        settings=load_roster(victim.parent / "consortium.toml").settings,
    )
    save_roster(roster, site / "consortium.toml")
    # it retries its send until its exchange deadline: long enough to outlast a victim that
    # starts slowly on a busy machine
    sections = toy_sections(index=0, nodes=2, base_model=toy_base, rounds=1, round_timeout_s=60.0)
    write_site_toml(
        site, name="intruder", listen=listen, consortium="consortium.toml", sections=sections
    )
    return site


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_three_daemons_reach_consensus_and_refuse_an_outsider(
    tmp_path: Path, toy_base: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    def sections(i: int) -> dict[str, Any]:
        s = toy_sections(index=i, nodes=3, base_model=toy_base, rounds=ROUNDS, round_timeout_s=60.0)
        s["adapter"] = {"shared_seed": 100 + i}  # different starting adapters
        return s

    sites = create_cluster(tmp_path / "cluster", nodes=3, topology="ring", sections=sections)
    intruder = make_intruder(tmp_path, victim=sites[0], toy_base=toy_base)
    processes.extend(start_daemon(s) for s in sites)
    processes.append(start_daemon(intruder))

    # the control endpoint answers while the daemon runs
    live = {}

    def first_status() -> bool:
        st = site_status(sites[0])
        if st["up"]:
            live.update(st)
        return bool(live) or processes[0].poll() is not None

    wait_until(first_status, timeout=STARTUP_S, what="site-00 status")
    assert live, "site-00 exited before its control endpoint answered"
    assert live["site"] == "site-00"
    assert {p["name"] for p in live["peers"]} == {"site-01", "site-02"}
    assert live["epsilon"]["budget"] == pytest.approx(8.0)

    for p in processes[:3]:
        p.wait(timeout=STARTUP_S)
    assert [p.returncode for p in processes[:3]] == [0, 0, 0]
    intruder_id = Member.from_mapping(_toml(intruder / "card.toml")).peer_id

    def intruder_refused() -> list[dict[str, Any]]:
        return [e for e in read_audit(sites[0] / "audit.jsonl") if e["sender"] == intruder_id]

    # the intruder retries until its own deadline; once the victim has refused it, stop it
    wait_until(lambda: bool(intruder_refused()), timeout=STARTUP_S, what="the refusal")
    processes[3].terminate()
    processes[3].wait(timeout=STARTUP_S)

    records = {s.name: rounds_done(s) for s in sites}
    for name, recs in records.items():
        assert [r.round for r in recs] == list(range(ROUNDS)), name
        assert all(r.neighbours_heard == r.neighbours_expected == 2 for r in recs), name
        assert recs[-1].epsilon > recs[0].epsilon > 0
    first = rms([recs[0].consensus_distance or 0.0 for recs in records.values()])
    last = rms([recs[-1].consensus_distance or 0.0 for recs in records.values()])
    assert last < first / 3, (first, last)

    for site in sites:
        entries = read_audit(site / "audit.jsonl")
        from_members = [e for e in entries if e["sender"] != intruder_id]
        assert len(from_members) == 2 * ROUNDS
        assert all(e["outcome"] == "accepted" for e in from_members), from_members
    refused = intruder_refused()
    assert refused and all(e["outcome"] == "rejected" for e in refused)
    assert any("not in the roster" in e["reason"] for e in refused)
    assert not (sites[0] / CONTROL_FILE).exists()  # removed on a clean exit


def test_sigterm_stops_a_daemon_cleanly(
    tmp_path: Path, toy_base: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A daemon whose neighbour never comes stays in its round's wait; SIGTERM ends it, exit 0,
    and its `gossipmed status` then says it is not running and how its last run ended."""
    sites = create_cluster(
        tmp_path / "c",
        nodes=2,
        topology="ring",
        sections=lambda i: toy_sections(
            index=i, nodes=2, base_model=toy_base, rounds=0, round_timeout_s=600.0
        ),
    )
    proc = start_daemon(sites[0])
    processes.append(proc)
    wait_until(
        lambda: site_status(sites[0]).get("phase") == "exchanging" or proc.poll() is not None,
        timeout=STARTUP_S,
        what="site-00 to wait for its neighbour",
    )
    out = subprocess.run(
        [*_python_cli(), "status", "--site", str(sites[0]), "--json"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout)["round"] == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    gone = subprocess.run(
        [*_python_cli(), "status", "--site", str(sites[0])], capture_output=True, timeout=60
    )
    assert gone.returncode == 2
    assert b"site-00 is not running; its last run stopped" in gone.stderr


def _python_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "node.cli"]
