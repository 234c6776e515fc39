"""Token buckets in a bounded table, and an `on_reject` reporter that an attacker cannot flood.

Pure bookkeeping with an injected clock (tests pass a fake one): no sockets, no trio.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# Under the transport's logger, so one level setting (the daemon's) covers all of it.
log = logging.getLogger("node.net.libp2p.transport").getChild("reports")

Clock = Callable[[], float]
RejectCallback = Callable[[str, str], None]


@dataclass
class TokenBucket:
    """`burst` tokens, refilled at `per_s`; a spend fails (returns False) when none is left."""

    burst: float
    per_s: float
    tokens: float
    stamp: float

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_s)
            self.stamp = now

    def spend(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def empty(self, now: float) -> bool:
        self._refill(now)
        return self.tokens < 1.0


class BucketTable:
    """One bucket per key, at most `size` keys: the least recently used key is forgotten.

    Forgetting a key gives it a full bucket again, so the table bounds memory, not an attacker
    who controls more than `size` keys (documented where the table is used).
    """

    def __init__(self, *, size: int, burst: float, per_s: float, clock: Clock) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._size = size
        self._burst = burst
        self._per_s = per_s
        self._clock = clock
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _get(self, key: Hashable) -> TokenBucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self._burst, self._per_s, self._burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self._size:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def spend(self, key: Hashable) -> bool:
        return self._get(key).spend(self._clock())

    def empty(self, key: Hashable) -> bool:
        bucket = self._buckets.get(key)
        return bucket is not None and bucket.empty(self._clock())

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)


class Reporter:
    """Calls `on_reject(peer, reason)` at most `burst` times per key, then `per_s` per second.

    Suppressed reports are counted and the count is appended to the next report of that key,
    so the audit log shows the volume of an attack without one line per attempt.
    """

    def __init__(
        self,
        on_reject: RejectCallback | None,
        *,
        burst: int,
        per_s: float,
        table: int,
        clock: Clock,
    ) -> None:
        self._on_reject = on_reject
        self._buckets = BucketTable(size=table, burst=burst, per_s=per_s, clock=clock)
        self._suppressed: OrderedDict[Hashable, int] = OrderedDict()
        self._table = table

    def report(
        self, peer: str, reason: str, *, key: Hashable | None = None, level: int = logging.WARNING
    ) -> None:
        """`level`: of the log line only; the callback (the audit log) hears every report."""
        key = peer if key is None else key
        if not self._buckets.spend(key):
            self._suppressed[key] = self._suppressed.pop(key, 0) + 1
            while len(self._suppressed) > self._table:
                self._suppressed.popitem(last=False)
            return
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            reason = f"{reason} (+{skipped} similar not reported)"
        log.log(level, "rejected inbound from %s: %s", peer, reason)
        if self._on_reject is None:
            return
        try:
            self._on_reject(peer, reason)
        except Exception:
            log.exception("on_reject callback raised")
