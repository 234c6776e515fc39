"""`Transport` over py-libp2p: Noise-only security, yamux-only muxing, one envelope per stream.

Wire protocol `/gossipmed/update/1.0.0`: the sender opens a stream, writes
`uvarint(len) || envelope`, and waits for one ack byte (0x00) that the receiver writes only
after the envelope passed the roster and size checks and was queued. Anything else (reset,
EOF, timeout) is a failed send; the sender disconnects, redials with exponential backoff and
sends again (envelopes are replay-guarded, so a duplicate after a lost ack is harmless).

Why the knobs below exist (all measured on py-libp2p 0.8.1):
- the default security options include plaintext, which lets a peer claim any peer ID, so
  the host gets an explicit Noise-only `sec_opt` and a yamux-only `muxer_opt`;
- every dial waits ~250 ms (happy-eyeballs delay) even when it succeeds, so connections are
  kept and reused across rounds, and only redialled when they died;
- a failed dial puts the peer in a 60 s negative cache: we unblock it ourselves before each
  redial, and close dead connections first (`host.disconnect`) so a stale one is not reused;
- `read_exactly` gives up after ~100 partial reads, so frames are read by our own loop
  (node.framing) with a timeout per read and one for the whole message;
- yamux resets a stream after 5 s without reads, so nothing here blocks the trio loop.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import RetryConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PERMANENT_ADDR_TTL
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from gossipmed.errors import ConfigError, IdentityError, TransportError
from node.framing import FrameError, frame_header, read_frame

PROTOCOL_ID = TProtocol("/gossipmed/update/1.0.0")
ACK_ACCEPTED = b"\x00"
SEED_BYTES = 32
CHUNK_BYTES = 1 << 20
INBOUND_SLOT_WAIT_S = 2.0

log = logging.getLogger(__name__)

RejectCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class PeerInfo:
    """Where to reach one roster member: its libp2p peer ID and multiaddrs (no /p2p suffix)."""

    peer_id: str
    addrs: Sequence[str] = ()

    def __post_init__(self) -> None:
        try:
            ID.from_base58(self.peer_id)
        except Exception as exc:
            raise ConfigError(f"invalid libp2p peer ID {self.peer_id!r}: {exc}") from exc
        addrs = tuple(self.addrs)
        for addr in addrs:
            try:
                multiaddr.Multiaddr(addr)
            except Exception as exc:
                raise ConfigError(f"invalid multiaddr {addr!r}: {exc}") from exc
        object.__setattr__(self, "addrs", addrs)


@dataclass(frozen=True)
class Libp2pTimeouts:
    """Bounds on every network wait; a missing peer costs the round timeout, never forever."""

    dial_s: float = 5.0
    stream_open_s: float = 5.0
    io_s: float = 10.0  # one read or one write of <= 1 MiB
    message_s: float = 300.0  # a whole envelope, either direction
    send_attempts: int = 3
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    negotiate_s: int = 5  # multistream-select, inbound and outbound

    def __post_init__(self) -> None:
        for name in ("dial_s", "stream_open_s", "io_s", "message_s", "backoff_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.backoff_initial_s) and self.backoff_initial_s >= 0):
            raise ConfigError("backoff_initial_s must be >= 0")
        if self.send_attempts < 1:
            raise ConfigError("send_attempts must be >= 1")
        if self.negotiate_s < 1:
            raise ConfigError("negotiate_s must be >= 1")


def key_pair_from_seed(seed: bytes) -> KeyPair:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise IdentityError(f"an Ed25519 seed must be {SEED_BYTES} bytes")
    try:
        return create_new_key_pair(bytes(seed))
    except ValueError as exc:
        raise IdentityError(f"seed does not give a usable Ed25519 key: {exc}") from exc


def peer_id_from_seed(seed: bytes) -> str:
    """The libp2p peer ID a site with this identity seed will have (for the roster)."""
    return ID.from_pubkey(key_pair_from_seed(seed).public_key).to_base58()


def build_host(key_pair: KeyPair, timeouts: Libp2pTimeouts) -> IHost:
    """A libp2p host that speaks only Noise and yamux (never plaintext, secio, TLS or mplex)."""
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        negotiate_timeout=timeouts.negotiate_s,
    )
    # Our own send loop does the retrying (with the negative cache lifted); the swarm's
    # internal retries would only stack hidden sleeps under our timeouts.
    network: Any = host.get_network()
    network.retry_config = RetryConfig(max_retries=0)
    return host


def _refuse_ports_in_use(listen_addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """Fail if a fixed TCP port is taken, which libp2p alone would not notice.

    libp2p listens with SO_REUSEPORT (for hole punching), so a second daemon on the same port
    would silently share incoming connections with the first. A plain bind detects that.
    """
    for addr in listen_addrs:
        protocols = {p.name for p in addr.protocols()}
        if "tcp" not in protocols:
            continue
        port = int(addr.value_for_protocol("tcp"))
        if port == 0:
            continue
        family, host = (
            (socket.AF_INET6, addr.value_for_protocol("ip6"))
            if "ip6" in protocols
            else (socket.AF_INET, addr.value_for_protocol("ip4"))
        )
        if host is None:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((str(host), port))
            except OSError as exc:
                raise TransportError(f"cannot listen on {addr}: {exc.strerror}") from exc


class _RosterGate(INotifee):
    """Drops connections from peers outside the roster as soon as Noise authenticated them."""

    def __init__(self, transport: Libp2pTransport) -> None:
        self._transport = transport

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


@dataclass
class _Roster:
    by_site: dict[str, PeerInfo] = field(default_factory=dict)
    site_by_peer: dict[ID, str] = field(default_factory=dict)

    def set(self, site: str, info: PeerInfo) -> ID | None:
        """Add or replace `site`; returns the peer ID it no longer has, if it changed."""
        pid = ID.from_base58(info.peer_id)
        owner = self.site_by_peer.get(pid)
        if owner is not None and owner != site:
            raise ConfigError(f"peer ID {info.peer_id} is both {owner!r} and {site!r}")
        old = self.by_site.get(site)
        old_pid = ID.from_base58(old.peer_id) if old is not None else None
        if old_pid is not None and old_pid != pid:
            del self.site_by_peer[old_pid]
        self.by_site[site] = info
        self.site_by_peer[pid] = site
        return old_pid if old_pid is not None and old_pid != pid else None

    def remove(self, site: str) -> ID | None:
        info = self.by_site.pop(site, None)
        if info is None:
            return None
        pid = ID.from_base58(info.peer_id)
        self.site_by_peer.pop(pid, None)
        return pid


class Libp2pTransport:
    """Transport for one site daemon; create it with `async with Libp2pTransport.open(...)`.

    Memory held for inbound data is bounded by (queue_size + max_inbound_streams) * max_bytes:
    a frame's announced length is checked before its body is read, a full inbox refuses new
    envelopes (the sender retries with backoff) instead of blocking libp2p's tasks.
    """

    def __init__(
        self,
        *,
        local_name: str,
        key_pair: KeyPair,
        peers: Mapping[str, PeerInfo],
        max_bytes: int,
        on_reject: RejectCallback | None,
        timeouts: Libp2pTimeouts,
        queue_size: int,
        max_inbound_streams: int,
    ) -> None:
        if max_bytes < 1:
            raise ConfigError("max_bytes must be >= 1")
        if queue_size < 1 or max_inbound_streams < 1:
            raise ConfigError("queue_size and max_inbound_streams must be >= 1")
        self._local_name = local_name
        self._max_bytes = max_bytes
        self._on_reject = on_reject
        self._timeouts = timeouts
        self._roster = _Roster()
        for site, info in peers.items():
            self._roster.set(site, info)
        self._host = build_host(key_pair, timeouts)
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[tuple[str, bytes]](queue_size)
        self._inbound_slots = trio.Semaphore(max_inbound_streams)
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._host_done = trio.Event()
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        local_name: str,
        seed: bytes,
        peers: Mapping[str, PeerInfo],
        listen: Sequence[str],
        max_bytes: int,
        on_reject: RejectCallback | None = None,
        timeouts: Libp2pTimeouts | None = None,
        queue_size: int = 32,
        max_inbound_streams: int = 8,
    ) -> AsyncIterator[Libp2pTransport]:
        """Start the host listening on `listen` and yield the transport; closes on exit."""
        try:
            listen_addrs = [multiaddr.Multiaddr(a) for a in listen]
        except Exception as exc:
            raise ConfigError(f"invalid listen multiaddr in {list(listen)!r}: {exc}") from exc
        transport = cls(
            local_name=local_name,
            key_pair=key_pair_from_seed(seed),
            peers=peers,
            max_bytes=max_bytes,
            on_reject=on_reject,
            timeouts=timeouts or Libp2pTimeouts(),
            queue_size=queue_size,
            max_inbound_streams=max_inbound_streams,
        )
        _refuse_ports_in_use(listen_addrs)
        try:
            async with trio.open_nursery() as nursery:
                transport._nursery = nursery
                await nursery.start(transport._run_host, listen_addrs)
                try:
                    listening = transport.listen_addrs
                    if len(listening) < len(listen_addrs):  # libp2p only logs a failed listen
                        raise TransportError(
                            f"could not listen on all of {[str(a) for a in listen_addrs]}; "
                            f"listening on {listening}"
                        )
                    yield transport
                finally:
                    await transport.aclose()
        except BaseExceptionGroup as group:
            # Hand the caller's own exception back unwrapped (e.g. a GossipmedError raised in
            # the `async with` body) instead of a group created by our private nursery.
            inner: BaseException = group
            while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
                inner = inner.exceptions[0]
            if inner is group:
                raise
            raise inner from inner.__cause__  # keep its cause, hide the group as context

    async def _run_host(
        self,
        listen_addrs: list[multiaddr.Multiaddr],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,  # trio-stubs (via libp2p) lack TaskStatus
    ) -> None:
        try:
            async with self._host.run(listen_addrs):
                self._host.get_network().register_notifee(_RosterGate(self))
                self._host.set_stream_handler(PROTOCOL_ID, self._handle_stream)
                self._sync_peerstore()
                task_status.started()
                try:
                    await self._stop.wait()
                finally:
                    # Leaving host.run() alone leaves the TCP listener accepting (0.8.1).
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await self._host.close()
        finally:
            self._host_done.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox_send.close()
        self._stop.set()
        with trio.CancelScope(shield=True):
            await self._host_done.wait()

    # ---- identity and roster ---------------------------------------------------------

    @property
    def local_name(self) -> str:
        return self._local_name

    @property
    def peer_id(self) -> str:
        return self._host.get_id().to_base58()

    @property
    def listen_addrs(self) -> list[str]:
        """Actual listening multiaddrs (port 0 resolved), without the /p2p suffix."""
        return [str(a) for a in self._host.get_transport_addrs()]

    @property
    def host(self) -> IHost:
        """The underlying libp2p host, for inspection (tests, status); do not reconfigure."""
        return self._host

    def _swarm(self) -> Any:
        # unblock_peer lives on Swarm, not on the INetworkService interface.
        return self._host.get_network()

    def connected(self, site: str) -> bool:
        """Whether an open connection to `site` exists (status only; no I/O)."""
        info = self._roster.by_site.get(site)
        if info is None:
            return False
        conns = self._swarm().get_connections(ID.from_base58(info.peer_id))
        return any(not c.is_closed for c in conns)

    def site_for_peer(self, peer_id: str) -> str | None:
        try:
            return self._roster.site_by_peer.get(ID.from_base58(peer_id))
        except Exception:
            return None

    def update_peer(self, site: str, info: PeerInfo) -> None:
        """Add a member or change its addresses (e.g. it restarted on a new port)."""
        replaced = self._roster.set(site, info)
        if replaced is not None:
            self._spawn_drop(replaced)
        self._set_addrs(ID.from_base58(info.peer_id), info.addrs)

    def remove_peer(self, site: str) -> None:
        """Revoke a member: its inbound streams are refused and its connections closed."""
        pid = self._roster.remove(site)
        if pid is not None:
            self._host.get_peerstore().clear_addrs(pid)
            self._spawn_drop(pid)

    def _sync_peerstore(self) -> None:
        for info in self._roster.by_site.values():
            self._set_addrs(ID.from_base58(info.peer_id), info.addrs)

    def _set_addrs(self, pid: ID, addrs: Sequence[str]) -> None:
        # Replace, not merge: the swarm dials one TCP address per peer, possibly a stale one.
        store = self._host.get_peerstore()
        store.clear_addrs(pid)
        if addrs:
            store.add_addrs(pid, [multiaddr.Multiaddr(a) for a in addrs], PERMANENT_ADDR_TTL)
        self._swarm().unblock_peer(pid)

    # ---- sending ---------------------------------------------------------------------

    async def send(self, recipient: str, data: bytes) -> None:
        if self._closed:
            raise TransportError("transport is closed")
        info = self._roster.by_site.get(recipient)
        if info is None:
            raise TransportError(f"{recipient!r} is not in the roster")
        if len(data) > self._max_bytes:
            raise TransportError(
                f"message of {len(data)} bytes exceeds the {self._max_bytes}-byte limit"
            )
        pid = ID.from_base58(info.peer_id)
        delay = self._timeouts.backoff_initial_s
        last: Exception | None = None
        for attempt in range(1, self._timeouts.send_attempts + 1):
            try:
                await self._send_once(pid, data)
                return
            except Exception as exc:  # libp2p raises many unrelated types; all mean "failed"
                last = exc
                log.info(
                    "send to %s failed (attempt %d/%d): %s: %s",
                    recipient,
                    attempt,
                    self._timeouts.send_attempts,
                    type(exc).__name__,
                    exc,
                )
                await self._forget_connection(pid)
                if attempt < self._timeouts.send_attempts:
                    await trio.sleep(delay)
                    delay = min(delay * 2, self._timeouts.backoff_max_s)
        raise TransportError(
            f"cannot deliver to {recipient!r} after {self._timeouts.send_attempts} attempts: "
            f"{type(last).__name__}: {last}"
        ) from last

    async def _send_once(self, pid: ID, data: bytes) -> None:
        t = self._timeouts
        await self._ensure_connected(pid)
        with trio.fail_after(t.stream_open_s):
            stream = await self._host.new_stream(pid, [PROTOCOL_ID])
        ok = False
        try:
            with trio.fail_after(t.message_s):
                with trio.fail_after(t.io_s):
                    await stream.write(frame_header(len(data)))
                for offset in range(0, len(data), CHUNK_BYTES):
                    with trio.fail_after(t.io_s):
                        await stream.write(data[offset : offset + CHUNK_BYTES])
                with trio.fail_after(t.io_s):
                    ack = await stream.read(1)
            if ack != ACK_ACCEPTED:
                raise TransportError("receiver did not acknowledge the envelope")
            ok = True
        finally:
            await _finish_stream(stream, graceful=ok)

    async def _ensure_connected(self, pid: ID) -> None:
        network = self._swarm()
        if any(not c.is_closed for c in network.get_connections(pid)):
            return
        network.unblock_peer(pid)
        with trio.fail_after(self._timeouts.dial_s):
            await network.dial_peer(pid)

    async def _forget_connection(self, pid: ID) -> None:
        """Close whatever is left of the connection so the next attempt dials afresh."""
        with trio.move_on_after(self._timeouts.io_s):
            try:
                await self._host.disconnect(pid)
            except Exception as exc:
                log.debug("disconnect %s: %s: %s", pid, type(exc).__name__, exc)
        self._swarm().unblock_peer(pid)

    # ---- receiving -------------------------------------------------------------------

    async def receive(self) -> bytes:
        _, data = await self.receive_from()
        return data

    async def receive_from(self) -> tuple[str, bytes]:
        """Next inbound envelope with the Noise-authenticated sender peer ID."""
        try:
            return await self._inbox_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
            raise TransportError("transport is closed") from exc

    def _on_connected(self, pid: ID) -> None:
        if pid not in self._roster.site_by_peer:
            self._reject(pid, "connection from a peer not in the roster")
            self._spawn_drop(pid)

    def _spawn_drop(self, pid: ID) -> None:
        if self._nursery is not None and not self._closed:
            self._nursery.start_soon(self._forget_connection, pid)

    async def _handle_stream(self, stream: INetStream) -> None:
        pid = stream.muxed_conn.peer_id
        if pid not in self._roster.site_by_peer:
            self._reject(pid, "stream from a peer not in the roster")
            await _finish_stream(stream, graceful=False)
            return
        # Wait briefly for a slot: neighbours legitimately send at the same moment, but a
        # stream left unread for ~5 s is reset by yamux anyway.
        with trio.move_on_after(INBOUND_SLOT_WAIT_S) as waited:
            await self._inbound_slots.acquire()
        if waited.cancelled_caught:
            self._reject(pid, "too many concurrent inbound streams")
            await _finish_stream(stream, graceful=False)
            return
        accepted = False
        try:
            accepted = await self._receive_envelope(pid, stream)
        except Exception as exc:  # never let a peer's bytes reach libp2p's task tree
            log.exception("unexpected error on inbound stream from %s", pid)
            self._reject(pid, f"internal error: {type(exc).__name__}")
        finally:
            self._inbound_slots.release()
            await _finish_stream(stream, graceful=accepted)

    async def _receive_envelope(self, pid: ID, stream: INetStream) -> bool:
        t = self._timeouts

        async def read_some(n: int) -> bytes:
            with trio.fail_after(t.io_s):
                try:
                    return await stream.read(n)
                except StreamEOF:
                    return b""

        try:
            with trio.fail_after(t.message_s):
                body = await read_frame(read_some, max_bytes=self._max_bytes)
        except FrameError as exc:
            self._reject(pid, f"bad frame: {exc}")
            return False
        except trio.TooSlowError:
            self._reject(pid, "stream stalled")
            return False
        except Exception as exc:  # reset, connection lost: the peer's problem, not a crash
            self._reject(pid, f"stream failed: {type(exc).__name__}: {exc}")
            return False
        try:
            self._inbox_send.send_nowait((pid.to_base58(), body))
        except trio.WouldBlock:
            self._reject(pid, "receive queue full")
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        try:
            with trio.fail_after(t.io_s):
                await stream.write(ACK_ACCEPTED)
        except Exception as exc:
            log.debug("ack to %s failed: %s: %s", pid, type(exc).__name__, exc)
            return False
        return True

    def _reject(self, pid: ID, reason: str) -> None:
        peer = pid.to_base58()
        log.warning("rejected inbound from %s: %s", peer, reason)
        if self._on_reject is None:
            return
        try:
            self._on_reject(peer, reason)
        except Exception:
            log.exception("on_reject callback raised")


async def _finish_stream(stream: INetStream, *, graceful: bool) -> None:
    """Close (or reset) without letting a dead peer stall us or cancellation skip cleanup."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            if graceful:
                await stream.close()
            else:
                await stream.reset()
        except Exception as exc:
            log.debug("closing stream: %s: %s", type(exc).__name__, exc)
