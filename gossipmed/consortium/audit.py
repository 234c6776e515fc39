"""The site's audit log: one JSON line per envelope received, accepted or not.

Operators need to see *why* a neighbour's updates are dropped (stale roster, clock skew, a
revoked peer still sending) without a debugger, and a security review needs a record of
every refusal. Lines are flushed but not fsynced: losing the last few lines in a power cut
is acceptable, slowing every round down is not. The file is 0600 (it names peers and when
they spoke): created so, and tightened on the next record if an older version left it wider.

Nothing a peer sends may fill the disk through this file, so it is bounded twice:
- Size: past `max_bytes` the file rotates (audit.jsonl -> audit.1.jsonl -> ... ->
  audit.{keep}.jsonl, the oldest dropped), so the log never holds more than
  (keep + 1) * max_bytes plus one line. Readers take the rotated files too (`audit_files`).
- Rate: refused records are limited per sender (at most `refused_per_window` per `window_s`);
  the rest of a window is summed into one `suppressed` record, so a flood from one peer
  cannot rotate everyone else's history away. The sender is untrusted (an outsider picks
  its peer ID), so only `MAX_TRACKED_SENDERS` get a budget of their own; the others share one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossipmed.storage.files import open_private, private_dir

ACCEPTED = "accepted"
REJECTED = "rejected"
EVENT = "event"  # something the site did about what it received (a mix rolled back, ...)
MAX_FIELD_CHARS = 200  # claimed sender names etc. are untrusted: keep lines short
MAX_AUDIT_BYTES = 16 * 1024 * 1024  # one file, before it rotates
KEEP_ROTATED = 4  # audit.1.jsonl .. audit.4.jsonl
REFUSED_PER_WINDOW = 50  # refused records per sender per window; the rest are summed
WINDOW_S = 60.0
MAX_TRACKED_SENDERS = 256
OTHER_SENDERS = "*"  # the shared budget of senders beyond MAX_TRACKED_SENDERS


def payload_hash(data: bytes) -> str:
    """BLAKE2b-256 (hex) of the bytes exactly as received, to match log lines to captures."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def _short(value: object) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "..."
    return value


def rotated_path(path: Path, index: int) -> Path:
    """audit.jsonl -> audit.{index}.jsonl (index 0 is the live file)."""
    path = Path(path)
    return path if index == 0 else path.with_name(f"{path.stem}.{index}{path.suffix}")


def audit_files(path: Path, *, keep: int = KEEP_ROTATED) -> list[Path]:
    """The live file and its rotated predecessors that exist, oldest first."""
    candidates = [rotated_path(path, i) for i in range(keep, -1, -1)]
    return [p for p in candidates if p.is_file()]


class _Window:
    __slots__ = ("first_reason", "start", "suppressed", "written")

    def __init__(self, start: float) -> None:
        self.start = start
        self.written = 0
        self.suppressed = 0
        self.first_reason = ""


class AuditLog:
    """Append-only JSONL file; each record is written with a single write() call."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_bytes: int = MAX_AUDIT_BYTES,
        keep: int = KEEP_ROTATED,
        refused_per_window: int = REFUSED_PER_WINDOW,
        window_s: float = WINDOW_S,
    ) -> None:
        if max_bytes < 1 or keep < 1 or refused_per_window < 1 or not window_s > 0:
            raise ValueError("audit limits must be positive")
        self.path = Path(path)
        self._clock = clock
        self.max_bytes = max_bytes
        self.keep = keep
        self.refused_per_window = refused_per_window
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}
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
        now = self._clock()
        self._close_windows(now)
        entry = {
            "time": now,
            "sender": _short(sender),
            "round": round,
            "outcome": outcome,
            "reason": _short(reason),
            "error": error,
            "payload_hash": payload_hash,
            "bytes": size,
        }
        if outcome == REJECTED and not self._admit_refused(sender, reason, now):
            return entry  # counted: the window's `suppressed` record will carry it
        self._write(entry)
        return entry

    def _admit_refused(self, sender: str | None, reason: str, now: float) -> bool:
        key = str(_short(sender)) if sender is not None else ""
        if key not in self._windows and len(self._windows) >= MAX_TRACKED_SENDERS:
            key = OTHER_SENDERS
        window = self._windows.setdefault(key, _Window(now))
        if window.written < self.refused_per_window:
            window.written += 1
            return True
        if not window.suppressed:
            window.first_reason = str(_short(reason))
        window.suppressed += 1
        return False

    def _close_windows(self, now: float) -> None:
        """Windows that ended (or a clock that went back) -> their `suppressed` records."""
        for key, window in list(self._windows.items()):
            if window.start <= now < window.start + self.window_s:
                continue
            del self._windows[key]
            if window.suppressed:
                self._write(self._summary(key, window, now))

    def _summary(self, key: str, window: _Window, now: float) -> dict[str, Any]:
        return {
            "time": now,
            "sender": None if key in ("", OTHER_SENDERS) else key,
            "round": None,
            "outcome": REJECTED,
            "reason": (
                f"suppressed: {window.suppressed} more refused records from "
                f"{'other senders' if key == OTHER_SENDERS else 'this sender'} within "
                f"{self.window_s:g} s (the first: {window.first_reason})"
            ),
            "error": None,
            "payload_hash": "",
            "bytes": None,
            "suppressed": window.suppressed,
        }

    def flush_suppressed(self) -> None:
        """Write the `suppressed` records of every open window (at a clean stop)."""
        for key, window in list(self._windows.items()):
            del self._windows[key]
            if window.suppressed:
                self._write(self._summary(key, window, self._clock()))

    def _write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=True, allow_nan=False) + "\n"
        with open_private(self.path, "a", encoding="ascii") as f:
            size = os.fstat(f.fileno()).st_size
            if not size or size + len(line) <= self.max_bytes:
                f.write(line)
                f.flush()
                return
        self._rotate()
        with open_private(self.path, "a", encoding="ascii") as f:
            f.write(line)
            f.flush()

    def _rotate(self) -> None:
        """audit.jsonl -> audit.1.jsonl -> ... ; the oldest beyond `keep` is dropped."""
        rotated_path(self.path, self.keep).unlink(missing_ok=True)
        for i in range(self.keep - 1, -1, -1):
            src = rotated_path(self.path, i)
            if src.is_file():
                os.replace(src, rotated_path(self.path, i + 1))


def read_audit(path: Path, *, keep: int = KEEP_ROTATED) -> list[dict[str, Any]]:
    """All records, the rotated files' first (for tests and `inspect`); a torn line is
    skipped."""
    out: list[dict[str, Any]] = []
    for part in audit_files(path, keep=keep):
        for line in part.read_text(encoding="ascii", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
