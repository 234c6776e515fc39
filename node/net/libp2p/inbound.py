"""Inbound update streams: graph neighbours only, a slot and a queue share per neighbour, and
a minimum transfer rate.

`UpdateReceiver.handle` is the `/gossipmed/update/1.0.0` stream handler. It refuses streams
from members that are not neighbours (the connection guard already resets them when they
open; this re-checks after a roster change), takes one of the neighbour's own
`streams_per_neighbour` slots (never waiting: a neighbour has no reason to open more), reads
one frame against a deadline that enforces `min_rate_bps`, and queues the envelope in the
neighbour's own share of the inbox. The ack byte is written only once the envelope is queued.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from gossipmed.errors import TransportError
from node.net.framing import FrameError, StreamEndedEmpty, read_frame
from node.net.libp2p.buckets import Reporter
from node.net.libp2p.config import ACK_ACCEPTED, Libp2pLimits, Libp2pTimeouts
from node.net.libp2p.roster import Roster

# Under the transport's logger, so one level setting (the daemon's) covers all of it.
log = logging.getLogger("node.net.libp2p.transport").getChild("inbound")

CLOSE_WAIT_S = 1.0


class QueueFull(TransportError):
    """The sender's share of the inbox is full."""


class Inbox:
    """FIFO of (site, envelope) in which each site holds at most `per_site` entries.

    Total memory is bounded by (number of neighbours) x per_site x max_bytes, and one
    neighbour filling its share never delays another's envelopes.
    """

    def __init__(self, *, per_site: int) -> None:
        self._per_site = per_site
        self._counts: dict[str, int] = {}
        self._send, self._recv = trio.open_memory_channel[tuple[str, bytes]](math.inf)

    def put_nowait(self, site: str, data: bytes) -> None:
        if self._counts.get(site, 0) >= self._per_site:
            raise QueueFull(f"{site!r} already has {self._per_site} envelopes waiting")
        self._send.send_nowait((site, data))  # never blocks: the bound is the counts
        self._counts[site] = self._counts.get(site, 0) + 1

    async def get(self) -> tuple[str, bytes]:
        try:
            site, data = await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
            raise TransportError("transport is closed") from exc
        left = self._counts[site] - 1
        if left:
            self._counts[site] = left
        else:
            del self._counts[site]
        return site, data

    def waiting(self, site: str) -> int:
        return self._counts.get(site, 0)

    def close(self) -> None:
        self._send.close()


@dataclass
class RateDeadline:
    """Deadline of the next read so the stream keeps >= min_rate after its grace period.

    A stream that received `n` bytes by time `t` is too slow once
    t > start + grace + n / min_rate; it also gets at most `io_s` per read and `message_s`
    for the whole frame.
    """

    start: float
    timeouts: Libp2pTimeouts
    received: int = 0

    def _rate_deadline(self) -> float:
        t = self.timeouts
        return self.start + t.rate_grace_s + self.received / t.min_rate_bps

    def next(self, now: float) -> float:
        return min(
            self._rate_deadline(), self.start + self.timeouts.message_s, now + self.timeouts.io_s
        )

    def why(self, now: float) -> str:
        """The report for a stream cut at `now` (which limit it hit)."""
        t = self.timeouts
        got = f"{self.received} bytes in {now - self.start:.1f} s"
        if now >= self.start + t.message_s:
            return f"stream too slow: {got}, over the {t.message_s:.0f} s message limit"
        if now >= self._rate_deadline():
            return (
                f"stream too slow: {got}, below the minimum rate of "
                f"{t.min_rate_bps:.0f} B/s after {t.rate_grace_s:.0f} s"
            )
        return f"stream too slow: {got}, stalled for {t.io_s:.0f} s"


class StreamTooSlow(TransportError):
    """An inbound stream fell below the minimum rate, stalled, or ran over `message_s`."""


class UpdateReceiver:
    def __init__(
        self,
        *,
        roster: Roster,
        inbox: Inbox,
        reporter: Reporter,
        limits: Libp2pLimits,
        timeouts: Libp2pTimeouts,
        max_bytes: int,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._roster = roster
        self._inbox = inbox
        self._reporter = reporter
        self._limits = limits
        self._timeouts = timeouts
        self._max_bytes = max_bytes
        self._clock = clock
        self._active: dict[str, int] = {}

    def active(self, site: str) -> int:
        return self._active.get(site, 0)

    async def handle(self, stream: INetStream) -> None:
        pid = stream.muxed_conn.peer_id
        site = self._roster.site_of(pid)
        if site is None:
            self._reporter.report(pid.to_base58(), "stream from a peer not in the roster")
            await finish_stream(stream, graceful=False)
            return
        if not self._roster.is_neighbour(site):
            self._reporter.report(site, f"refused at the stream: {site!r} is not a neighbour")
            await finish_stream(stream, graceful=False)
            return
        if self._active.get(site, 0) >= self._limits.streams_per_neighbour:
            self._reporter.report(site, "too many concurrent update streams")
            await finish_stream(stream, graceful=False)
            return
        self._active[site] = self._active.get(site, 0) + 1
        accepted = False
        try:
            accepted = await self._receive(site, stream)
        except Exception as exc:  # never let a peer's bytes reach libp2p's task tree
            log.exception("unexpected error on inbound stream from %s", site)
            self._reporter.report(site, f"internal error: {type(exc).__name__}")
        finally:
            left = self._active[site] - 1
            if left:
                self._active[site] = left
            else:
                del self._active[site]
            await finish_stream(stream, graceful=accepted)

    async def _receive(self, site: str, stream: INetStream) -> bool:
        deadline = RateDeadline(start=self._clock(), timeouts=self._timeouts)

        async def read_some(n: int) -> bytes:
            with trio.move_on_at(deadline.next(self._clock())):
                try:
                    chunk = await stream.read(n)
                except StreamEOF:
                    return b""
                deadline.received += len(chunk)
                return chunk
            raise StreamTooSlow(deadline.why(self._clock()))

        try:
            body = await read_frame(read_some, max_bytes=self._max_bytes)
        except StreamEndedEmpty as exc:  # a neighbour stopping mid-round, or a probe: audited,
            self._reporter.report(site, str(exc), level=logging.INFO)  # but no warning
            return False
        except FrameError as exc:
            self._reporter.report(site, f"bad frame: {exc}")
            return False
        except StreamTooSlow as exc:
            self._reporter.report(site, str(exc))
            return False
        except Exception as exc:  # reset, connection lost: the peer's problem, not a crash
            self._reporter.report(site, f"stream failed: {type(exc).__name__}: {exc}")
            return False
        if not self._roster.is_neighbour(site):  # the roster changed while we read
            self._reporter.report(site, f"refused at the stream: {site!r} is not a neighbour")
            return False
        try:
            self._inbox.put_nowait(site, body)
        except QueueFull as exc:
            self._reporter.report(site, f"receive queue full: {exc}")
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        try:
            with trio.fail_after(self._timeouts.io_s):
                await stream.write(ACK_ACCEPTED)
        except Exception as exc:
            log.debug("ack to %s failed: %s: %s", site, type(exc).__name__, exc)
            return False
        return True


async def finish_stream(stream: INetStream, *, graceful: bool) -> None:
    """Close (or reset) without letting a dead peer stall us or cancellation skip cleanup."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_WAIT_S):
        try:
            if graceful:
                await stream.close()
            else:
                await stream.reset()
        except Exception as exc:
            log.debug("closing stream: %s: %s", type(exc).__name__, exc)
