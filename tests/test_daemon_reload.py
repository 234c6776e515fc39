"""A revocation takes effect on SIGHUP, and a site can pin the consortium file it agreed to.

Real daemons (separate processes, quadratic problem, libp2p on 127.0.0.1): after site-02 is
revoked in the consortium file, SIGHUP makes site-00 and site-01 adopt the new file without a
restart -- they go on gossiping with each other and no longer take site-02's updates. A
consortium file whose hash is not the one site.toml pins is refused, at start (exit 2) and on
reload (audited, the old roster kept).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from daemon_support import STARTUP_S, completed, rounds_done

from gossipmed.consortium.audit import read_audit
from gossipmed.consortium.roster import load_roster, save_roster
from gossipmed.consortium.site import SITE_FILE
from node.cli import main
from node.daemon.cluster import CONSORTIUM_FILE, create_cluster, start_daemon, wait_until
from node.daemon.config import load_daemon_settings
from node.daemon.site_daemon import SiteDaemon

pytest_plugins = ["daemon_support"]  # fixture: processes
pytestmark = [pytest.mark.slow, pytest.mark.network]


def quadratic(i: int) -> dict[str, dict[str, Any]]:
    return {
        "daemon": {"rounds": 0, "site_index": i, "problem": "quadratic", "seed": 3},
        "gossip": {"round_timeout_s": 2.0},
        "train": {"lr": 0.1},
    }


def reasons(site: Path) -> list[str]:
    return [e["reason"] for e in read_audit(site / "audit.jsonl")]


def test_sighup_adopts_a_revocation_without_a_restart(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "c"
    sites = create_cluster(root, nodes=3, topology="ring", sections=quadratic)
    processes.extend(start_daemon(s) for s in sites)
    wait_until(
        lambda: min(completed(s) for s in sites) >= 2 or any(p.poll() for p in processes),
        timeout=STARTUP_S,
        what="three daemons to complete two rounds",
    )
    roster = load_roster(root / CONSORTIUM_FILE)
    save_roster(roster.revoke("site-02"), root / CONSORTIUM_FILE)
    for p in processes[:2]:
        p.send_signal(signal.SIGHUP)
    wait_until(
        lambda: all(any("roster_reloaded" in r for r in reasons(s)) for s in sites[:2]),
        timeout=30,
        what="site-00 and site-01 to reload",
    )
    before = len(rounds_done(sites[0]))
    wait_until(
        lambda: (
            sum(
                1
                for r in rounds_done(sites[0])[before:]
                if (r.neighbours_expected, r.neighbours_heard) == (1, 1)
            )
            >= 2
        ),
        timeout=60,
        what="site-00 to gossip with site-01 alone",
    )
    assert all(p.poll() is None for p in processes[:2])
    late = [r for r in rounds_done(sites[0])[before:]]
    assert all(r.neighbours_expected == 1 for r in late[1:])  # site-02 is no neighbour now


def test_a_substituted_consortium_file_is_refused_when_pinned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "c"
    sites = create_cluster(root, nodes=3, topology="ring", sections=quadratic)
    roster = load_roster(root / CONSORTIUM_FILE)
    site_toml = sites[0] / SITE_FILE
    text = site_toml.read_text()
    assert 'consortium_hash = ""' in text
    site_toml.write_text(
        text.replace('consortium_hash = ""', f'consortium_hash = "{roster.hash_hex}"')
    )
    daemon = SiteDaemon(load_daemon_settings(sites[0]))  # the pinned file: accepted
    save_roster(roster.revoke("site-01"), root / CONSORTIUM_FILE)  # not what site-00 agreed to
    assert main(["run", "--site", str(sites[0])]) == 2
    err = capsys.readouterr().err
    assert "pins" in err and err.count("\n") == 1
    assert not daemon.reload_roster()  # SIGHUP with the substituted file: refused
    assert daemon.roster.hash == roster.hash
    assert any("roster_reload_refused" in r and "pins" in r for r in reasons(sites[0]))
    daemon.metrics.close()
