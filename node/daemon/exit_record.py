"""How a site's daemon last ended, kept in SITE_DIR/exit.json for `cluster status`.

A daemon that finished its rounds and one that crashed both leave no process and no control
endpoint; only the daemon itself knows which it was. It writes this record on its way out
(after taking the site lock, so it is the folder's own daemon) and removes a stale one when
it starts. A daemon killed with SIGKILL (or by the kernel) writes nothing: no record and no
process reads as "not running", with daemon.log to say more.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from gossipmed.storage.atomic import atomic_write_json

EXIT_FILE = "exit.json"
EXIT_VERSION = 1
OUTCOMES = ("done", "stopped", "crashed", "refused")


def clear_exit_record(site_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (site_dir / EXIT_FILE).unlink()


def write_exit_record(
    site_dir: Path,
    *,
    code: int,
    outcome: str,
    last_round: int | None,
    completed: int,
    message: str = "",
) -> None:
    """`outcome`: done (its rounds, or its budget), stopped (a signal), crashed (exit 1:
    restart it), refused (exit 2: a setting to fix first). `last_round` is the last completed
    round as people number it (node.rounds, 1-based); `completed` counts this start's rounds."""
    assert outcome in OUTCOMES
    atomic_write_json(
        site_dir / EXIT_FILE,
        {
            "v": EXIT_VERSION,
            "code": code,
            "outcome": outcome,
            "last_round": last_round,
            "completed": completed,
            "message": message[:500],
            "at": time.time(),
        },
    )


def read_exit_record(site_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((site_dir / EXIT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != EXIT_VERSION:
        return None
    return doc
