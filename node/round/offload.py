"""Running the driver's blocking steps (training, sealing, opening, mixing) in worker threads.

The daemon's trio loop must keep reading streams while a step runs (yamux resets a stream left
unread for 5 s); and a process must not exit while a step it abandoned still runs in a thread
(the interpreter would end it inside torch's C++ code, which aborts), so the steps are counted.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class Offload:
    """Runs steps inline, or (`enabled`) in worker threads it counts until they end."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._offloaded = 0  # steps running in worker threads (abandoned ones included)
        self._idle = threading.Condition()

    async def call(self, fn: Callable[..., T], *args: Any, abandon: bool = False) -> T:
        """`abandon`: a stop request need not wait for this step (training, sealing); the
        checkpoint at the end of a round is always waited for."""
        if self.enabled:
            step = functools.partial(self._counted, fn, *args)
            return await trio.to_thread.run_sync(step, abandon_on_cancel=abandon)  # type: ignore[call-arg]
        return fn(*args)

    def _counted(self, fn: Callable[..., T], *args: Any) -> T:
        with self._idle:
            self._offloaded += 1
        try:
            return fn(*args)
        finally:
            with self._idle:
                self._offloaded -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block (a thread, not the loop) until no offloaded step runs, e.g. training that a
        stop abandoned; False after `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._offloaded == 0, timeout)
