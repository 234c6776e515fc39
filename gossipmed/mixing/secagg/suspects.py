"""Finding the contributor behind a receiver's failing sums, one exclusion per exchange.

The receiver sees only the sum, so a sum outside the public bounds (SumOutOfRange: the
per-coordinate range or the L2 norm) says that someone sent a bad masked input, not who. A
persistent offender (random words every exchange) would otherwise deny the receiver every
sum, anonymously. The search: after an exchange fails a bound, the next exchange excludes
one contributor (the protocol treats it as dropped after sharing, see Aggregator), taking
the neighbourhood's contributors in sorted order, round-robin, one per exchange, only where
n - 1 >= t. The first excluded contributor whose exclusion makes the sum pass is named (the
integration audits it) and stays excluded from this receiver's exchanges; if a sum fails
again even without it, the naming was wrong (or there is a second offender) and the search
resumes with the next contributor. A persistent single offender among n contributors is
therefore named within n + 1 exchanges after its first; honest exchanges that pass never
exclude anyone.

An intermittent offender can get an honest contributor named at one receiver (it stays out
of that receiver's sums, as a dropout would); it cannot make more than one name stick at a
time, and the receiver never excludes more than one contributor per exchange.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gossipmed.mixing.secagg.errors import ExchangeAborted, SumOutOfRange


@dataclass(frozen=True)
class Verdict:
    """What one finished exchange taught the search (for the audit log)."""

    excluded: str | None  # whom that exchange excluded
    named: str | None = None  # set when this exchange's pass names the excluded offender
    cleared: str | None = None  # a named contributor whose exclusion no longer helps


class SuspectSearch:
    """One receiver's search state, across its exchanges (rounds)."""

    def __init__(self) -> None:
        self.named: str | None = None
        self._failing = False
        self._cursor = 0
        self._pending: str | None = None  # the exclusion handed out for the open exchange

    def exclusion(self, contributors: Sequence[str], threshold: int) -> frozenset[str]:
        """Whom the next exchange excludes: the named offender, or the next suspect while
        sums fail; nobody when excluding one would leave fewer than `threshold`."""
        ordered = sorted(contributors)
        self._pending = None
        if len(ordered) - 1 < threshold:
            return frozenset()
        if self.named is not None and self.named in ordered:
            self._pending = self.named
        elif self._failing:
            candidates = [c for c in ordered if c != self.named]
            self._pending = candidates[self._cursor % len(candidates)]
        return frozenset() if self._pending is None else frozenset({self._pending})

    def record(self, outcome: object) -> Verdict:
        """Feed the exchange's end: its result, or the ExchangeAborted that ended it. Only a
        bound failure (SumOutOfRange) counts as evidence; other aborts change nothing."""
        excluded, self._pending = self._pending, None
        if isinstance(outcome, SumOutOfRange):
            verdict = Verdict(excluded=excluded)
            if excluded is not None and excluded == self.named:
                verdict = Verdict(excluded=excluded, cleared=self.named)
                self.named = None
                self._cursor += 1
            elif excluded is not None:
                self._cursor += 1
            self._failing = True
            return verdict
        if isinstance(outcome, ExchangeAborted):
            return Verdict(excluded=excluded)
        if excluded is not None and excluded != self.named:
            self.named = excluded
            self._failing = False
            return Verdict(excluded=excluded, named=excluded)
        self._failing = False
        return Verdict(excluded=excluded)
