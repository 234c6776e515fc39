"""Never contribute twice to one exchange, even across a restart; never contribute a state
that has not been freshly trained.

Masks are fresh per Contributor and never persisted, so a restarted site can never reuse a
mask. What a restart could still do is contribute a second time to the same exchange (new
masks, possibly a new value, possibly a different set of co-contributors): two sums of
overlapping sets from one receiver would reveal their difference. The guard records, per
receiver, the last (round, step) this site started contributing to, and refuses anything
not strictly later. The integration persists `state_dict()` (atomically) before the first
message of an exchange leaves, and loads it before creating any Contributor.

Fresh training only: without training, a site's next state is a public linear function of
states its neighbours already received summed (x <- (1 - W) x + s), so the sums of a few
training-free rounds let one receiver solve for individual states (issue #20, finding 3). A
contribution therefore needs a ticket: `note_trained(round)` says a local training step for
`round` completed, and that one fresh state may go once to each receiver of `round`. The
ticket is not persisted: a restarted site trains again before it contributes. The same
ticket gates aggregating (`fresh_for`): a site that did not train this round runs no exchange.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gossipmed.errors import CheckpointError, ConfigError
from gossipmed.mixing.secagg.errors import ReusedInstance, StaleState
from gossipmed.mixing.secagg.params import MAX_ROUND, MAX_STEP, InstanceId, valid_name

_STATE_VERSION = 1
MAX_RECEIVERS = 4096


class ContributionGuard:
    """Per receiver, the last exchange this site contributed to (strictly increasing)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}
        self._fresh: tuple[int, set[str]] | None = None  # (trained round, receivers served)

    @classmethod
    def after_training(cls, round: int) -> ContributionGuard:
        """A guard of a site that has contributed nothing yet and just trained for `round`."""
        guard = cls()
        guard.note_trained(round)
        return guard

    def note_trained(self, round: int) -> None:
        """A local training step for `round` completed: its state may be contributed once to
        each receiver of `round`. Only the code that trained may call this."""
        if type(round) is not int or not 0 <= round <= MAX_ROUND:
            raise ConfigError(f"training round must be an int in [0, {MAX_ROUND}]")
        self._fresh = (round, set())

    def fresh_for(self, round: int) -> bool:
        """Whether this site trained for `round` (and so may aggregate in it)."""
        return self._fresh is not None and self._fresh[0] == round

    def admit(self, instance: InstanceId) -> None:
        """Record `instance` as started, or raise ReusedInstance if it is not later than the
        last exchange started with the same receiver, or StaleState if no training for its
        round completed since this site last contributed to that receiver."""
        at = (instance.round, instance.step)
        fresh = self._fresh
        if fresh is None or fresh[0] != instance.round or instance.receiver in fresh[1]:
            raise StaleState(
                f"no local training step for round {instance.round} since the last "
                f"contribution to {instance.receiver!r}: a training-free state is a public "
                "linear function of states already summed"
            )
        last = self._last.get(instance.receiver)
        if last is not None and at <= last:
            raise ReusedInstance(
                f"already contributed to {instance.receiver!r} at round {last[0]} step "
                f"{last[1]}; refusing round {at[0]} step {at[1]}"
            )
        if last is None and len(self._last) >= MAX_RECEIVERS:
            raise ReusedInstance(f"guard full ({MAX_RECEIVERS} receivers)")
        self._last[instance.receiver] = at
        fresh[1].add(instance.receiver)

    def last(self, receiver: str) -> tuple[int, int] | None:
        return self._last.get(receiver)

    def state_dict(self) -> dict[str, Any]:
        return {"v": _STATE_VERSION, "last": {r: list(at) for r, at in self._last.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("v") != _STATE_VERSION:
            raise CheckpointError("contribution guard state has the wrong version")
        last = state.get("last")
        if not isinstance(last, Mapping) or len(last) > MAX_RECEIVERS:
            raise CheckpointError("contribution guard state is malformed")
        loaded: dict[str, tuple[int, int]] = {}
        for receiver, at in last.items():
            ok = (
                valid_name(receiver)
                and isinstance(at, list | tuple)
                and len(at) == 2
                and all(type(v) is int for v in at)
                and 0 <= at[0] <= MAX_ROUND
                and 0 <= at[1] <= MAX_STEP
            )
            if not ok:
                raise CheckpointError(f"contribution guard entry {str(receiver)[:80]!r} is bad")
            loaded[receiver] = (at[0], at[1])
        self._last = loaded
