"""Which neighbours a site cannot reach right now, so an outage is logged twice, not per try.

A neighbour that is down (restarting, a maintenance window) makes every exchange's sends
fail and be retried until the exchange's deadline; that is expected and the driver keeps
retrying round after round. Logging each give-up at WARNING filled logs with one line per
round per neighbour (and libp2p's own ERROR per dial). Instead: one WARNING when a neighbour
first becomes unreachable, one INFO line when a send to it goes through again, and DEBUG
for the give-ups in between.
"""

from __future__ import annotations

import logging


class Reachability:
    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._down: set[str] = set()

    def gave_up(self, name: str) -> None:
        """A send to `name` was abandoned when its exchange's wait ended."""
        if name in self._down:
            self._log.debug("still cannot reach %s", name)
            return
        self._down.add(name)
        self._log.warning(
            "cannot reach %s: it is down or unreachable; retrying every round (logged again "
            "when it answers)",
            name,
        )

    def delivered(self, name: str) -> None:
        """A send to `name` went through."""
        if name in self._down:
            self._down.discard(name)
            self._log.info("%s is reachable again", name)

    @property
    def unreachable(self) -> frozenset[str]:
        return frozenset(self._down)
