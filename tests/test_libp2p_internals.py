"""What the transport relies on inside py-libp2p 0.8.1 (pinned: an upgrade that changes any of
it fails here, loudly), and the transport's own bookkeeping: buckets, reports, address keys,
member addresses, the per-site inbox, the rate deadline and the flow-control guard."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from importlib.metadata import version

import pytest
import trio
import trio._highlevel_serve_listeners as serve_listeners
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.swarm import Swarm
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, Yamux, YamuxStream
from libp2p.transport.upgrader import TransportUpgrader
from libp2p_support import FAST, Rejections, introduce, open_site, roster, run, seed

import node.net.libp2p.guard as guard
from gossipmed.errors import ConfigError, TransportError
from node.net.libp2p.admission import Admission, Pending
from node.net.libp2p.buckets import BucketTable, Reporter
from node.net.libp2p.config import Libp2pLimits, Libp2pTimeouts, PeerInfo
from node.net.libp2p.host import build_host
from node.net.libp2p.inbound import Inbox, QueueFull, RateDeadline
from node.net.libp2p.roster import Roster, address_key
from node.net.libp2p.transport import key_pair_from_seed, peer_id_from_seed


def params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


# ---- pins on py-libp2p and trio ------------------------------------------------------------


def test_libp2p_is_the_version_these_pins_were_read_from() -> None:
    assert version("libp2p") == "0.8.1"


def test_the_listener_hands_each_connection_to_the_swarm_method_the_gate_replaces() -> None:
    assert params(Swarm._handle_inbound_connection) == ["self", "read_write_closer", "maddr"]
    assert "await self._handle_inbound_connection(read_write_closer, _maddr)" in (
        inspect.getsource(Swarm.listen)
    )


def test_libp2p_itself_keeps_an_inbound_slot_until_the_swarm_stops() -> None:
    """Why the gate exists; if this changes, re-read libp2p before dropping the gate."""
    inner = inspect.getsource(Swarm._do_handle_inbound_connection)
    assert "await self.upgrade_inbound_raw_conn(raw_conn, maddr)" in inner
    assert "await self.manager.wait_finished()" in inner
    assert "self._inbound_limiter.release()" in inspect.getsource(Swarm._handle_inbound_connection)


def test_trio_closes_a_connection_when_the_listener_handler_returns() -> None:
    """Why the gate's handler waits for the connection to close instead of returning."""
    assert "aclose_forcefully(stream)" in inspect.getsource(serve_listeners._run_handler)


def test_the_upgrade_steps_the_gate_calls_have_the_expected_signatures() -> None:
    assert params(TransportUpgrader.upgrade_security) == [
        "self",
        "raw_conn",
        "is_initiator",
        "peer_id",
    ]
    assert params(TransportUpgrader.upgrade_connection) == ["self", "conn", "peer_id"]
    assert params(Swarm.add_conn) == ["self", "muxed_conn", "direction"]
    # Outbound connections are registered through the same (instance-patched) add_conn.
    assert 'await self.add_conn(muxed_conn, direction="outbound")' in inspect.getsource(Swarm)
    assert "event_closed" in inspect.getsource(SwarmConn.close)


def test_a_stream_is_announced_to_notifees_before_its_protocol_is_negotiated() -> None:
    src = inspect.getsource(SwarmConn._handle_muxed_stream)
    assert src.index("self._add_stream(muxed_stream)") < src.index("common_stream_handler")
    assert "notify_opened_stream" in inspect.getsource(SwarmConn._add_stream)
    assert "is_initiator" in params(YamuxStream.__init__)


def test_yamux_reads_frame_bodies_through_the_method_the_flow_guard_wraps() -> None:
    src = inspect.getsource(Yamux.handle_incoming)
    assert src.count("self._read_data_body(") >= 2  # SYN data and plain data frames
    handler = src[src.rindex("except trio.TooSlowError:") :]
    assert handler.index("_cleanup_on_error") < handler.index("break")
    assert params(Yamux._read_data_body) == ["self", "length"]


def test_the_host_has_no_shared_resource_pools() -> None:
    host = build_host(key_pair_from_seed(seed("a")), FAST)
    network = host.get_network()
    assert network._resource_manager is None  # type: ignore[attr-defined]
    assert network._stream_semaphore is None  # type: ignore[attr-defined]
    assert network.retry_config.max_retries == 0  # type: ignore[attr-defined]


def test_the_host_never_dials_members_on_its_own() -> None:
    assert "await self.maybe_connect()" in inspect.getsource(AutoConnector._periodic_check_task)
    assert "self.auto_connector.maybe_connect" in inspect.getsource(Swarm._schedule_auto_connect)
    network = build_host(key_pair_from_seed(seed("a")), FAST).get_network()
    assert "maybe_connect" in vars(network.auto_connector)  # type: ignore[attr-defined]


# ---- buckets and reports -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_burst_then_its_rate() -> None:
    clock = FakeClock()
    table = BucketTable(size=10, burst=3, per_s=0.5, clock=clock)
    assert [table.spend("x") for _ in range(4)] == [True, True, True, False]
    assert table.empty("x") and not table.empty("y")
    clock.now = 2.0  # one token back
    assert table.spend("x") and not table.spend("x")


def test_the_bucket_table_forgets_the_least_recently_used_address() -> None:
    clock = FakeClock()
    table = BucketTable(size=2, burst=1, per_s=0.001, clock=clock)
    table.spend("a")
    table.spend("b")
    table.spend("a")  # a is now the most recent
    table.spend("c")  # b goes
    assert len(table) == 2
    assert table.empty("a") and table.empty("c") and not table.empty("b")


def test_reports_are_rate_limited_per_key_and_the_rest_counted() -> None:
    clock = FakeClock()
    rejections = Rejections()
    reporter = Reporter(rejections, burst=2, per_s=0.1, table=8, clock=clock)
    for i in range(5):
        reporter.report("eve", f"bad {i}")
    reporter.report("bob", "bad")
    assert rejections.items == [("eve", "bad 0"), ("eve", "bad 1"), ("bob", "bad")]
    clock.now = 10.0
    reporter.report("eve", "bad 5")
    assert rejections.items[-1] == ("eve", "bad 5 (+3 similar not reported)")


def test_a_raising_on_reject_callback_does_not_escape() -> None:
    def boom(peer: str, reason: str) -> None:
        raise RuntimeError("audit disk full")

    Reporter(boom, burst=1, per_s=1, table=1, clock=FakeClock()).report("eve", "x")


# ---- addresses and roster ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # same /64, same key
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-ip", None),
    ],
)
def test_address_keys_group_ipv6_by_64(host: str, key: str | None) -> None:
    assert address_key(host) == key


def test_member_addresses_come_from_the_roster_and_from_authenticated_connections() -> None:
    r = Roster()
    pid = peer_id_from_seed(seed("m"))
    r.set("m", PeerInfo(pid, ["/ip4/192.0.2.7/tcp/4001", "/ip4/0.0.0.0/tcp/1"]))
    assert r.is_member_address("192.0.2.7")
    assert not r.is_member_address("0.0.0.0")
    assert not r.is_member_address("198.51.100.1")
    for i in range(10):  # only the last few stay
        r.saw("m", f"198.51.100.{i}")
    assert r.is_member_address("198.51.100.9") and not r.is_member_address("198.51.100.0")
    r.remove("m")
    assert not r.is_member_address("192.0.2.7") and not r.is_member_address("198.51.100.9")


def test_admission_throttles_outsider_addresses_and_never_member_addresses() -> None:
    clock = FakeClock()
    r = Roster()
    r.set("m", PeerInfo(peer_id_from_seed(seed("m")), ["/ip4/192.0.2.7/tcp/4001"]))
    limits = Libp2pLimits(
        handshakes=6,
        handshakes_per_address=2,
        member_handshakes=3,
        member_handshakes_per_address=4,
        outsider_burst=2,
        outsider_per_s=0.5,
    )
    gate = Admission(roster=r, limits=limits, clock=clock)

    def admit(key: str) -> Pending | None:
        return gate.admit(key, trio.CancelScope())

    # An outsider address: two handshakes at once; a third takes the oldest one's slot.
    first, second = admit("198.51.100.1"), admit("198.51.100.1")
    assert first is not None and second is not None and first.pool == "general"
    third = admit("198.51.100.1")
    assert third is not None and first.evicted and first.scope.cancel_called
    assert gate.general == 2
    for p in (first, second, third):
        gate.release(p)  # idempotent for the evicted one
    assert gate.general == 0
    gate.charge("198.51.100.1")
    gate.charge("198.51.100.1")  # bucket empty: refused before any handshake
    assert admit("198.51.100.1") is None
    assert "outsider" in gate.refusal_reason("198.51.100.1")
    other = admit("198.51.100.2")  # other addresses are unaffected
    assert other is not None
    clock.now = 2.0  # one token back
    assert admit("198.51.100.1") is not None

    # A member address: never charged out, reserved slots first, then the general pool.
    for _ in range(10):
        gate.charge("192.0.2.7")
    members = [admit("192.0.2.7") for _ in range(4)]
    assert [p.pool for p in members if p] == ["member", "member", "member", "general"]
    assert (gate.reserved, gate.general) == (3, 3)
    for p in members:
        assert p is not None
        p.authenticated = True  # Noise named a member: nobody takes these slots
    assert admit("192.0.2.7") is None  # 4 per address, all authenticated


def test_neighbours_must_be_members() -> None:
    r = Roster()
    r.set("b", PeerInfo(peer_id_from_seed(seed("b"))))
    with pytest.raises(ConfigError, match="not roster members"):
        r.set_neighbours(["b", "zed"])
    r.set_neighbours(["b"])
    r.remove("b")
    assert r.neighbours == frozenset()


def test_limits_and_timeouts_are_validated() -> None:
    with pytest.raises(ConfigError):
        Libp2pLimits(queue_per_neighbour=0)
    with pytest.raises(ConfigError):
        Libp2pLimits(outsider_per_s=0.0)
    with pytest.raises(ConfigError):
        Libp2pTimeouts(min_rate_bps=float("nan"))
    with pytest.raises(ConfigError):
        Libp2pTimeouts(rate_grace_s=-1.0)


# ---- inbox and rate deadline ---------------------------------------------------------------


def test_the_inbox_bounds_each_site_separately_and_keeps_order() -> None:
    async def main() -> None:
        inbox = Inbox(per_site=2)
        inbox.put_nowait("b", b"1")
        inbox.put_nowait("b", b"2")
        with pytest.raises(QueueFull):
            inbox.put_nowait("b", b"3")
        inbox.put_nowait("c", b"1")
        assert await inbox.get() == ("b", b"1")
        inbox.put_nowait("b", b"3")
        assert [await inbox.get() for _ in range(3)] == [("b", b"2"), ("c", b"1"), ("b", b"3")]
        assert inbox.waiting("b") == 0
        inbox.close()
        with pytest.raises(TransportError):
            await inbox.get()

    trio.run(main)


def test_the_rate_deadline_moves_with_the_bytes_received() -> None:
    t = Libp2pTimeouts(io_s=100, message_s=300, min_rate_bps=1000, rate_grace_s=10)
    d = RateDeadline(start=0.0, timeouts=t)
    assert d.next(0.0) == 10.0  # grace only
    d.received = 5000
    assert d.next(1.0) == 15.0  # 5 s of credit at 1000 B/s
    assert "minimum rate" in d.why(15.0)
    d.received = 10**9
    assert d.next(250.0) == 300.0  # the whole-message limit
    assert "message limit" in d.why(300.0)
    assert d.next(1.0) == 101.0 and "stalled" in d.why(101.0)


# ---- flow control --------------------------------------------------------------------------


@dataclass
class FakeStream:
    target_recv_window: int = DEFAULT_WINDOW_SIZE


@dataclass
class FakeYamux:
    streams: dict[int, FakeStream] = field(default_factory=dict)
    stream_buffers: dict[int, bytearray] = field(default_factory=dict)
    reads: list[int] = field(default_factory=list)

    async def _read_data_body(self, length: int) -> bytes:
        self.reads.append(length)
        return bytes(length)


def test_the_flow_guard_allows_what_the_windows_allow_and_nothing_more() -> None:
    muxed = FakeYamux(streams={1: FakeStream()}, stream_buffers={1: bytearray()})
    violations: list[tuple[int, int]] = []
    guard.guard_flow_control(muxed, lambda w, a: violations.append((w, a)))  # type: ignore[arg-type]
    allowance = 2 * DEFAULT_WINDOW_SIZE + guard.FLOW_SLACK_BYTES

    async def main() -> None:
        assert await muxed._read_data_body(1000) == bytes(1000)
        muxed.stream_buffers[1] += bytes(allowance - 1000)
        await muxed._read_data_body(1000)  # exactly at the allowance
        with pytest.raises(trio.TooSlowError):
            await muxed._read_data_body(1001)

    trio.run(main)
    assert muxed.reads == [1000, 1000]
    assert violations == [(allowance + 1, allowance)]


def test_a_member_ignoring_flow_control_is_disconnected_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no allowance at all every DATA frame is a violation: this exercises the real wiring
    # (yamux calls the wrapper, turns TooSlowError into closing the connection, we report).
    monkeypatch.setattr(guard, "FLOW_SLACK_BYTES", -(1 << 40))

    async def main() -> None:
        rejections = Rejections()
        peers = roster("a", "b")
        async with open_site("a", peers, on_reject=rejections) as a, open_site("b", peers) as b:
            introduce(a, b)
            with pytest.raises(TransportError):
                await b.send("a", b"x")
            await rejections.wait_for("b", "flow control violated")

    run(main)
