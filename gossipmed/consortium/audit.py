"""The site's audit log: one JSON line per envelope received, accepted or not.

Operators need to see *why* a neighbour's updates are dropped (stale roster, clock skew, a
revoked peer still sending) without a debugger, and a security review needs a record of
every refusal. Lines are flushed but not fsynced: losing the last few lines in a power cut
is acceptable, slowing every round down is not. The file is 0600 (it names peers and when
they spoke): created so, and tightened on the next record if an older version left it wider.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossipmed.storage.files import open_private, private_dir

ACCEPTED = "accepted"
REJECTED = "rejected"
EVENT = "event"  # something the site did about what it received (a mix rolled back, ...)
MAX_FIELD_CHARS = 200  # claimed sender names etc. are untrusted: keep lines short


def payload_hash(data: bytes) -> str:
    """BLAKE2b-256 (hex) of the bytes exactly as received, to match log lines to captures."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def _short(value: object) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "..."
    return value


class AuditLog:
    """Append-only JSONL file; each record is written with a single write() call."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        private_dir(self.path.parent)

    def record(
        self,
        *,
        outcome: str,
        reason: str,
        sender: str | None,
        round: int | None,
        payload_hash: str,
        size: int | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        if outcome not in (ACCEPTED, REJECTED, EVENT):
            raise ValueError(f"outcome must be {ACCEPTED!r}, {REJECTED!r} or {EVENT!r}")
        entry = {
            "time": self._clock(),
            "sender": _short(sender),
            "round": round,
            "outcome": outcome,
            "reason": _short(reason),
            "error": error,
            "payload_hash": payload_hash,
            "bytes": size,
        }
        line = json.dumps(entry, ensure_ascii=True, allow_nan=False) + "\n"
        with open_private(self.path, "a", encoding="ascii") as f:
            f.write(line)
            f.flush()
        return entry


def read_audit(path: Path) -> list[dict[str, Any]]:
    """All records (for tests and `inspect`); a torn last line is skipped."""
    out: list[dict[str, Any]] = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text(encoding="ascii").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
