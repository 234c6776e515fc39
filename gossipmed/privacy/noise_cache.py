"""Noise multipliers remembered across runs, checked before every use.

Opacus' search for the smallest noise multiplier costs seconds at a high sample rate (small
sites, large batches), and every start of a daemon, every simulation and every baseline asks
for the same figures again. The answer is a deterministic function of public numbers (target
epsilon, delta, sample rate, steps, accountant, Opacus version), so it can be kept in a file.

The file is advice, never trusted: a remembered multiplier is used only after one accountant
call shows that it spends at most the target epsilon. A stale, corrupted or edited file can
therefore cost utility (more noise than needed) or time (the search runs again), never
privacy.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from gossipmed.errors import GossipmedError
from gossipmed.storage.atomic import atomic_write_json

CACHE_FILE = "noise-multipliers.json"
MAX_ENTRIES = 512
MAX_FILE_BYTES = 1 << 20  # read nothing larger: a bounded file, whoever wrote it


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gossipmed" / CACHE_FILE


def cache_key(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> str:
    from opacus import __version__ as opacus_version

    # repr keeps every bit of each float, so a key names exactly one search
    return (
        f"opacus {opacus_version} {accountant} eps {target_epsilon!r} delta {delta!r} "
        f"q {sample_rate!r} steps {steps}"
    )


def _read(path: Path) -> dict[str, float]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return {}
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        k: float(v)
        for k, v in raw.items()
        if isinstance(k, str) and isinstance(v, int | float) and math.isfinite(v) and v > 0
    }


def remembered_noise(
    key: str, *, spends: Callable[[float], float], target_epsilon: float, path: Path
) -> float | None:
    """The remembered multiplier for `key` if `spends(it) <= target_epsilon`, else None."""
    sigma = _read(path).get(key)
    if sigma is None:
        return None
    return sigma if spends(sigma) <= target_epsilon else None


def remember_noise(key: str, sigma: float, *, path: Path) -> None:
    """Add `key` (best effort: a read-only home or a full disk only means no cache)."""
    entries = _read(path)
    entries.pop(key, None)
    entries[key] = sigma
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, entries)
    except (OSError, GossipmedError):
        pass
