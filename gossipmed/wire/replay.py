"""Replay protection: exactly one update per sender and exchange, and never an older one.

Keyed on `(round, step)` itself rather than a flattened exchange index, so changing the
number of exchanges per round (a consortium decision) never makes an honest neighbour's
next exchange look older than one already accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gossipmed.errors import WireError
from gossipmed.wire.tensors import ReplayedRound, StaleRound
from gossipmed.wire.update import check_exchange

REPLAY_STATE_VERSION = 2


class ReplayGuard:
    """Highest `(round, step)` accepted per sender."""

    def __init__(self, last: Mapping[str, tuple[int, int]] | None = None) -> None:
        self._last: dict[str, tuple[int, int]] = dict(last or {})

    def check(self, sender: str, round: int, step: int = 0) -> None:
        last = self._last.get(sender)
        if last is None:
            return
        if (round, step) == last:
            raise ReplayedRound(f"exchange {round}.{step} from {sender!r} was already accepted")
        if (round, step) < last:
            raise StaleRound(
                f"exchange {round}.{step} from {sender!r} is older than the accepted "
                f"{last[0]}.{last[1]}"
            )

    def accept(self, sender: str, round: int, step: int = 0) -> None:
        self.check(sender, round, step)
        self._last[sender] = (round, step)

    def last(self, sender: str) -> tuple[int, int] | None:
        return self._last.get(sender)

    # -- checkpoint --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "v": REPLAY_STATE_VERSION,
            "last": {k: list(v) for k, v in sorted(self._last.items())},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        last = state.get("last") if isinstance(state, Mapping) else None
        if not isinstance(state, Mapping) or state.get("v") != REPLAY_STATE_VERSION:
            raise WireError(f"replay-guard state must be version {REPLAY_STATE_VERSION}")
        if not isinstance(last, Mapping):
            raise WireError("replay-guard state needs a map of sender -> [round, step]")
        parsed: dict[str, tuple[int, int]] = {}
        for sender, exchange in last.items():
            if not isinstance(sender, str) or not isinstance(exchange, list | tuple):
                raise WireError(f"replay-guard state: bad entry {str(sender)[:40]!r}")
            if len(exchange) != 2:
                raise WireError(f"replay-guard state: {sender!r} needs [round, step]")
            check_exchange(exchange[0], exchange[1])
            parsed[sender] = (exchange[0], exchange[1])
        self._last = parsed

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ReplayGuard:
        guard = cls()
        guard.load_state_dict(state)
        return guard
