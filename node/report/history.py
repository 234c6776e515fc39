"""The recent rounds of a metrics.jsonl file, read incrementally and within fixed bounds.

Dashboards poll every few seconds while a daemon appends one record per round, so the reader
remembers how far it got and parses only new complete lines; it never holds more than `limit`
records nor reads more than `max_read_bytes` at a time (a huge backlog is skipped, keeping its
end). A line that is not a JSON object is skipped: the file is the site's own, but a crash can
leave a torn last line, which the next read completes.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from pathlib import Path
from typing import Any

COLUMNS = (
    "round",
    "accuracy",
    "eval_loss",
    "consensus_distance",
    "bytes_sent",
    "bytes_received",
    "epsilon",
    "neighbours_heard",
    "neighbours_expected",
    "accuracy_norm",
    "eval_perplexity",
)
DEFAULT_LIMIT = 2000
MAX_READ_BYTES = 4 << 20


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def row(record: dict[str, Any]) -> list[float | int | None]:
    """One record as the dashboard's compact row (COLUMNS order; non-finite -> None)."""
    return [_number(record.get(c)) for c in COLUMNS]


class MetricsTail:
    """Rows of the last `limit` records of one metrics file, per site."""

    def __init__(
        self, path: Path, *, limit: int = DEFAULT_LIMIT, max_read_bytes: int = MAX_READ_BYTES
    ) -> None:
        self.path = path
        self.limit = limit
        self.max_read_bytes = max_read_bytes
        self._rows: dict[str, deque[list[float | int | None]]] = {}
        self._offset = 0
        self._identity: tuple[int, int] | None = None

    def rows(self) -> dict[str, list[list[float | int | None]]]:
        """Site name -> rows, oldest first, after reading what was appended since last time."""
        self._update()
        return {site: list(rows) for site, rows in sorted(self._rows.items())}

    def _update(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        identity = (st.st_dev, st.st_ino)
        if identity != self._identity or st.st_size < self._offset:  # replaced or truncated
            self._identity, self._offset = identity, 0
            self._rows.clear()
        if st.st_size == self._offset:
            return
        start = max(self._offset, st.st_size - self.max_read_bytes)
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(st.st_size - start)
        except OSError:
            return
        if start > self._offset:  # skipped a backlog: drop the partial first line
            cut = data.find(b"\n")
            data, start = (b"", st.st_size) if cut < 0 else (data[cut + 1 :], start + cut + 1)
        end = data.rfind(b"\n")
        if end < 0:
            return  # no complete line yet
        for line in data[:end].split(b"\n"):
            self._add(line)
        self._offset = start + end + 1

    def _add(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict) or _number(record.get("round")) is None:
            return
        site = record.get("site")
        name = site if isinstance(site, str) else ""
        rows = self._rows.setdefault(name, deque(maxlen=self.limit))
        rows.append(row(record))
