"""Scaffolding shared by the tests that run real daemons as subprocesses.

A plain module, not a conftest: test files import the fixtures by name, so only they get them.
Importable as `daemon_support` because pytest (rootdir-relative, tests/ has no __init__.py)
puts tests/ on sys.path for its test modules.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gossipmed.metrics import METRICS_FILE, RoundRecord, read_metrics
from node.daemon.cluster import ensure_toy_base, site_status

STARTUP_S = 120.0  # several processes importing torch on two busy cores


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_toy_base(tmp_path_factory.getbasetemp() / "toy-base")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons a test started; any still running at the end are killed and reaped."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def rounds_done(site: Path) -> list[RoundRecord]:
    """The site's metrics so far; none before its first round has been written."""
    path = site / METRICS_FILE
    return read_metrics(path) if path.is_file() else []


def completed(site: Path) -> int:
    """Rounds the running daemon reports as completed; -1 while nothing answers."""
    st = site_status(site)
    return int(st.get("completed", -1)) if st["up"] else -1
