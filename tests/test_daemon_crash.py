"""kill -9 one of three daemons mid-run: the others go on through their round timeouts; the
restarted daemon resumes after its last checkpointed round with the ledger's epsilon (never
lower than the checkpoint's) and the checkpointed adapter, and rejoins the gossip."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from daemon_support import STARTUP_S, completed, rounds_done

from gossipmed.storage.checkpoint import META_FILE, load_state
from node.daemon.cluster import (
    create_cluster,
    site_status,
    start_daemon,
    toy_sections,
    wait_until,
)
from node.daemon.config import STATE_DIR
from node.daemon.ledger import ledger_path
from node.daemon.site_daemon import state_digest
from node.round.progress import recent_window_s

pytest_plugins = ["daemon_support"]  # fixtures: toy_base, processes
pytestmark = [pytest.mark.slow, pytest.mark.network]

TIMEOUT_S = 4.0


def test_killed_daemon_resumes_with_its_epsilon_and_adapter_and_rejoins(
    tmp_path: Path, toy_base: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    def sections(i: int) -> dict[str, Any]:
        s = toy_sections(index=i, nodes=3, base_model=toy_base, rounds=0, round_timeout_s=TIMEOUT_S)
        # a budget that lasts the whole test, so every round really spends epsilon
        s["dp"] = {"epsilon": 1000.0, "noise_multiplier": 1.0}
        return s

    sites = create_cluster(tmp_path / "cluster", nodes=3, topology="ring", sections=sections)
    processes.extend(start_daemon(s) for s in sites)
    victim = sites[1]
    wait_until(
        lambda: completed(victim) >= 2 or any(p.poll() is not None for p in processes),
        timeout=STARTUP_S,
        what="site-01 to complete 2 rounds",
    )
    assert all(p.poll() is None for p in processes)

    processes[1].send_signal(signal.SIGKILL)
    processes[1].wait(timeout=10)
    meta = json.loads((victim / STATE_DIR / META_FILE).read_text())
    ledger = json.loads(ledger_path(victim).read_text())
    checkpoint_round, checkpoint_eps = meta["round"], meta["epsilon"]
    assert ledger["epsilon"] >= checkpoint_eps > 0  # the ledger is written before sending
    state, _meta = load_state(victim / STATE_DIR)
    digest = state_digest(state)

    # the survivors keep completing rounds, each waiting out the timeout for site-01. One
    # that noticed the death a round earlier may be ahead of the other; the one behind
    # follows it once site-01's last claim leaves the quorum window, and they mix again
    killed_at = {s.name: len(rounds_done(s)) for s in (sites[0], sites[2])}
    wait_until(
        lambda: all(
            sum(1 for r in rounds_done(s)[killed_at[s.name] :] if r.neighbours_heard == 1) >= 2
            for s in (sites[0], sites[2])
        ),
        timeout=recent_window_s(TIMEOUT_S) + 6 * TIMEOUT_S + 30,
        what="survivors to complete rounds without site-01",
    )

    restarted = start_daemon(victim)
    processes.append(restarted)
    status: dict[str, Any] = {}

    def resumed() -> bool:
        st = site_status(victim)
        if st["up"]:
            status.update(st)
        return bool(status) or restarted.poll() is not None

    wait_until(resumed, timeout=STARTUP_S, what="restarted site-01 to answer")
    assert status["resumed"] == {
        "round": checkpoint_round,
        "epsilon": pytest.approx(ledger["epsilon"]),
        "adapter_digest": digest,
    }
    assert status["epsilon"]["spent"] >= checkpoint_eps

    # it rejoins: a later round where both sides hear each other again
    before = len(rounds_done(victim))
    wait_until(
        lambda: (
            any(r.neighbours_heard == 2 for r in rounds_done(victim)[before:])
            and any(
                r.neighbours_heard == 2 and r.round > checkpoint_round + 2
                for r in rounds_done(sites[0])[killed_at["site-00"] :]
            )
        ),
        timeout=STARTUP_S,
        what="site-01 to rejoin",
    )
    after = [r for r in rounds_done(victim)[before:]]
    assert after[0].round > checkpoint_round
    assert min(r.epsilon for r in after) >= ledger["epsilon"]

    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=60) for p in processes] == [0, -signal.SIGKILL, 0, 0]
