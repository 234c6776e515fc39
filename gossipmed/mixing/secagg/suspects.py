"""Finding the contributor behind a receiver's failing sums, without being led by it.

The receiver sees only the sum, so a sum outside the public bounds (SumOutOfRange: the
per-coordinate range or the L2 norm) says that someone sent a bad masked input, not who. A
persistent offender (random words every exchange) would otherwise deny the receiver every
sum, anonymously. The offender also sees everything the search does: it knows when a sum
failed (it sent the words) and, from the survivor list, whom an exchange excluded. So the
search must not name on evidence the offender can arrange:

- It starts only when sums keep failing: START_AFTER consecutive bound failures.
- It picks each suspect X from the OS CSPRNG among the contributors not yet cleared, and
  tests X in trials of two exchanges, one excluding X (the protocol treats it as dropped
  after sharing, see Aggregator) and one including everybody, in a secret random order. The
  exclusion is revealed only after the masked inputs are committed, so a contributor does
  not know which of the two it is in when it chooses what to send.
- A trial is consistent when the sum passes without X and fails with X. X is named (the
  integration audits it) after K_TRIALS consistent trials in a row and then stays excluded
  from this receiver's exchanges. A failing sum without X, or an exchange of its trial that
  aborts for another reason, clears X (the search moves on); a passing sum with everybody in
  ends the search (nobody is offending now).
- A failing sum without the named contributor withdraws the name.

Only where n - 1 >= t is anyone excluded, and never more than one per exchange. Honest
exchanges never exclude anyone. A persistent single offender among n contributors is named
within START_AFTER + 2 (n - 1) + 2 K_TRIALS exchanges from its first (at most two per
honest suspect, 2 K_TRIALS for itself). An intermittent offender cannot start a search by
failing fewer than START_AFTER sums in a row, and to get an honest X named it must guess,
blind, which exchange of each trial excludes X: at most 2**-K_TRIALS per suspect tested, at
a cost of at least K_TRIALS failed sums each (after the START_AFTER that start the search),
and the name lasts only until it fails a sum again.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gossipmed.mixing.secagg.errors import ExchangeAborted, SumOutOfRange

START_AFTER = 2  # consecutive failed sums before anyone is excluded
K_TRIALS = 3  # consistent trials (pass without X, fail with X) before X is named


@dataclass(frozen=True)
class Verdict:
    """What one finished exchange taught the search (for the audit log)."""

    excluded: str | None  # whom that exchange excluded
    named: str | None = None  # set when this exchange completes the evidence against it
    cleared: str | None = None  # a named contributor whose exclusion no longer helps

    def audit(self, audit: Callable[..., None], *, site: str, round: int) -> None:
        """One audit event per finding, the same from the daemon and the simulator."""
        if self.excluded is not None:
            audit("secure_suspect_excluded", site=site, round=round, suspect=self.excluded)
        if self.named is not None:
            audit("secure_offender_named", site=site, round=round, offender=self.named)
        if self.cleared is not None:
            audit("secure_offender_cleared", site=site, round=round, offender=self.cleared)


@dataclass
class _Trial:
    suspect: str
    order: tuple[bool, bool]  # per exchange of the trial: does it exclude the suspect
    step: int = 0


class SuspectSearch:
    """One receiver's search state, across its exchanges (rounds). `rng` picks suspects and
    trial orders; it must be unpredictable to contributors, so the default is the OS CSPRNG
    and only tests and reproducible simulations pass a seeded one."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.SystemRandom()
        self.named: str | None = None
        self._failures = 0  # consecutive bound failures while nobody is under test
        self._searching = False
        self._cleared: set[str] = set()  # suspects a failing sum without them cleared
        self._trial: _Trial | None = None
        self._consistent = 0  # consistent trials of the current suspect
        self._pending: tuple[str, bool] | None = None  # the open exchange: (whom, excluded?)

    @property
    def searching(self) -> bool:
        return self._searching

    def exclusion(self, contributors: Sequence[str], threshold: int) -> frozenset[str]:
        """Whom the next exchange excludes: the named offender, or the current suspect in its
        trial's excluding exchange; nobody when excluding one would leave fewer than
        `threshold`."""
        self._pending = None
        present = set(contributors)
        if len(present) - 1 < threshold:
            return frozenset()
        if self.named is not None:
            if self.named in present:
                self._pending = (self.named, True)
                return frozenset({self.named})
            return frozenset()
        if not self._searching:
            return frozenset()
        trial = self._current_trial(present)
        if trial is None:
            return frozenset()
        excludes = trial.order[trial.step]
        self._pending = (trial.suspect, excludes)
        return frozenset({trial.suspect}) if excludes else frozenset()

    def record(self, outcome: object) -> Verdict:
        """Feed the exchange's end: its result, or the ExchangeAborted that ended it. Only a
        bound failure (SumOutOfRange) or a passing sum counts as evidence. Another abort (a
        dropout) in a trial clears its suspect: a contributor that learnt the trial's order
        from the survivor list and then withheld its shares must not get a second guess."""
        pending, self._pending = self._pending, None
        excluded = pending[0] if pending is not None and pending[1] else None
        failed = isinstance(outcome, SumOutOfRange)
        if not failed and isinstance(outcome, ExchangeAborted):
            if self.named is None and pending is not None and self._trial is not None:
                self._cleared.add(self._trial.suspect)
                self._trial = None
            return Verdict(excluded=excluded)
        if self.named is not None:
            return self._judge_name(failed, excluded)
        if not self._searching:
            self._failures = self._failures + 1 if failed else 0
            self._searching = self._failures >= START_AFTER
            return Verdict(excluded=excluded)
        if pending is None:  # no trial could run in this exchange
            if not failed:
                self._stop()
            return Verdict(excluded=excluded)
        return self._judge_trial(pending[0], pending[1], failed)

    def _judge_name(self, failed: bool, excluded: str | None) -> Verdict:
        if not failed:
            return Verdict(excluded=excluded)
        cleared, self.named = self.named, None  # it failed without the named one
        self._stop()
        self._failures = 1
        return Verdict(excluded=excluded, cleared=cleared)

    def _judge_trial(self, suspect: str, excludes: bool, failed: bool) -> Verdict:
        excluded = suspect if excludes else None
        trial = self._trial
        assert trial is not None and trial.suspect == suspect
        if excludes and failed:  # fails without the suspect: not (only) it
            self._cleared.add(suspect)
            self._trial = None
            return Verdict(excluded=excluded)
        if not excludes and not failed:  # passes with everybody: nobody offends now
            self._stop()
            return Verdict(excluded=excluded)
        trial.step += 1
        if trial.step < len(trial.order):
            return Verdict(excluded=excluded)
        self._consistent += 1
        if self._consistent < K_TRIALS:
            self._trial = self._new_trial(suspect)
            return Verdict(excluded=excluded)
        self.named = suspect
        self._stop()
        return Verdict(excluded=excluded, named=suspect)

    def _current_trial(self, present: set[str]) -> _Trial | None:
        if self._trial is not None and self._trial.suspect in present:
            return self._trial
        candidates = sorted(present - self._cleared)
        if not candidates:  # everyone cleared: two offenders, or one that changes its mind
            self._cleared.clear()
            candidates = sorted(present)
        self._trial = self._new_trial(self._rng.choice(candidates))
        self._consistent = 0
        return self._trial

    def _new_trial(self, suspect: str) -> _Trial:
        first = self._rng.random() < 0.5
        return _Trial(suspect=suspect, order=(first, not first))

    def _stop(self) -> None:
        self._searching = False
        self._failures = 0
        self._cleared.clear()
        self._trial = None
        self._consistent = 0
