"""The control endpoint serves local readers only, and no client can hurt the daemon with it.

Request handling is tested as plain functions; the server itself runs in this process with
trio on 127.0.0.1 port 0, each test one `trio.run` bounded by `trio.fail_after`. Issue #13,
finding 6: bounded concurrent connections, an idle timeout for the request head, a Host
check against DNS rebinding, and the endpoint still answers after a flood.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from node.daemon.control import (
    ControlLimits,
    ControlServer,
    connection_cap,
    fetch_status,
    handle_request,
    serve_control,
)
from node.daemon.control_routes import PUBLIC_PATHS, Response, StatusProvider, text
from node.daemon.control_server import FD_RESERVE, MAX_CONNECTIONS_CEILING, parse_head, respond

pytestmark = pytest.mark.network

SECRET = "site-with-a-secret-name"
TOKEN = "test-token-0123456789"
PORT = 4242
BOUND_S = 20.0  # outer bound on every in-process test


def status() -> dict[str, Any]:
    return {"site": SECRET, "round": 7, "completed": 6, "epsilon": {"spent": 1.5, "budget": 8.0}}


def request(
    host: str | None, path: str = "/status", method: str = "GET", token: str | None = TOKEN
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    return (head + "Accept: */*\r\n\r\n").encode("latin-1")


def answer(head: bytes, provider: StatusProvider = status) -> tuple[str, bytes]:
    """(status line, body) of the endpoint's answer to one request head."""
    from node.daemon.control_routes import DEFAULT_ROUTES

    raw = respond(head, port=PORT, status=provider, routes=DEFAULT_ROUTES, token=TOKEN).encode()
    return split(raw)


def split(raw: bytes) -> tuple[str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode("latin-1"), body


# --- the Host check (DNS rebinding) ---------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", f"127.0.0.1:{PORT}", "localhost", f"localhost:{PORT}", "LocalHost"]
)
def test_our_own_names_are_served(host: str) -> None:
    line, body = answer(request(host))
    assert line == "HTTP/1.0 200 OK"
    assert json.loads(body)["site"] == SECRET


@pytest.mark.parametrize(
    "host",
    [
        None,  # HTTP/1.0 without Host: cannot tell a rebound page from us
        "",
        "attacker.example",
        f"attacker.example:{PORT}",  # what a browser sends after DNS rebinding
        f"127.0.0.1:{PORT + 1}",
        "127.0.0.1.attacker.example",
        "localhost.",
        "localhost.attacker.example",
        "127.0.0.2",
        "[::1]",
        f"localhost:{PORT}:{PORT}",
    ],
)
def test_any_other_host_gets_421_and_no_data(host: str | None) -> None:
    line, body = answer(request(host))
    assert line == "HTTP/1.0 421 Misdirected Request"
    assert SECRET.encode() not in body and b"epsilon" not in body


def test_two_host_headers_are_refused() -> None:
    head = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\n\r\n"
    assert answer(head)[0] == "HTTP/1.0 421 Misdirected Request"


def test_the_host_check_comes_before_any_page_is_built() -> None:
    calls: list[int] = []

    def counted() -> dict[str, Any]:
        calls.append(1)
        return status()

    answer(request("attacker.example"), counted)
    answer(request("attacker.example", "/metrics"), counted)
    assert calls == []


# --- the token (issue #20 finding 6) --------------------------------------------------------

DATA_PATHS = ("/status", "/metrics", "/dashboard.json", "/status?x", "/nope")


@pytest.mark.parametrize("path", DATA_PATHS)
def test_without_the_token_no_page_is_built_and_nothing_is_told(path: str) -> None:
    calls: list[int] = []

    def counted() -> dict[str, Any]:
        calls.append(1)
        return status()

    for token in (None, "", "guess", TOKEN + "x", TOKEN[:-1], TOKEN.upper()):
        line, body = answer(request("localhost", path, token=token), counted)
        assert line == "HTTP/1.0 401 Unauthorized"
        assert SECRET.encode() not in body and b"epsilon" not in body
    assert calls == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255)),
            st.sampled_from([f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN}"]),
        ),
        max_size=3,
    )
)
def test_only_exactly_one_header_with_the_token_opens_the_data(values: list[str]) -> None:
    head = "GET /status HTTP/1.1\r\nHost: localhost\r\n"
    head += "".join(f"Authorization: {v}\r\n" for v in values)
    line, body = answer((head + "\r\n").encode("latin-1"))
    scheme, _, offered = values[0].strip(" \t").partition(" ") if values else ("", "", "")
    opened = len(values) == 1 and scheme.lower() == "bearer" and offered == TOKEN
    if opened:
        assert line == "HTTP/1.0 200 OK"
    else:
        assert line in ("HTTP/1.0 401 Unauthorized", "HTTP/1.0 400 Bad Request")
        assert SECRET.encode() not in body


def test_the_pages_own_files_need_no_token_and_carry_no_data() -> None:
    for path in PUBLIC_PATHS:
        line, body = answer(request("localhost", path, token=None))
        assert line == "HTTP/1.0 200 OK"
        assert SECRET.encode() not in body


# --- request parsing and routing ------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET /status\r\n\r\n",  # HTTP/0.9 style
        b"GET status HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /status HTTP/2\r\nHost: localhost\r\n\r\n",
        b"GET  /status HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost : localhost\r\n\r\n",  # space before the colon
        b"GET /status HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /status HTTP/1.1\r\n folded: header\r\n\r\n",
    ],
)
def test_malformed_requests_get_400(head: bytes) -> None:
    line, body = answer(head)
    assert line == "HTTP/1.0 400 Bad Request"
    assert SECRET.encode() not in body


def test_headers_are_parsed_case_insensitively() -> None:
    req = parse_head(b"GET /x?y HTTP/1.0\nHOST:localhost\nX-A: 1 \n\n")
    assert (req.method, req.target, req.header("host"), req.header("x-a")) == (
        "GET",
        "/x?y",
        ["localhost"],
        ["1"],
    )


def test_only_get_is_served() -> None:
    assert answer(request("localhost", method="POST"))[0] == "HTTP/1.0 405 Method Not Allowed"


def test_pages_and_unknown_paths() -> None:
    assert json.loads(answer(request("localhost", "/status?pretty"))[1])["round"] == 7
    line, body = answer(request("localhost", "/metrics"))
    assert line == "HTTP/1.0 200 OK"
    assert f'gossipmed_round{{site="{SECRET}"}} 7' in body.decode()
    assert answer(request("localhost", "/nope"))[0] == "HTTP/1.0 404 Not Found"
    assert handle_request("/status", status).startswith(b"HTTP/1.0 200 OK\r\n")


def test_a_failing_page_answers_500_and_does_not_raise() -> None:
    def broken() -> dict[str, Any]:
        return {"not json": object()}

    line, body = answer(request("localhost"), broken)
    assert line == "HTTP/1.0 500 Internal Server Error"
    assert b"not json" not in body


# --- the connection cap ---------------------------------------------------------------------


def test_the_cap_leaves_a_reserve_below_the_file_limit() -> None:
    assert connection_cap(1024) == MAX_CONNECTIONS_CEILING == 64
    assert connection_cap(256) == (256 - FD_RESERVE) // 4 == 32
    assert connection_cap(FD_RESERVE) == 1
    assert connection_cap(100_000) == MAX_CONNECTIONS_CEILING
    import resource

    assert connection_cap(resource.RLIM_INFINITY) == MAX_CONNECTIONS_CEILING
    for soft in (192, 256, 512, 1024, 4096):
        assert connection_cap(soft) <= (soft - FD_RESERVE) // 4


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        ControlLimits(max_connections=0)
    with pytest.raises(ValueError):
        ControlLimits(max_connections=1, head_timeout_s=0)


# --- the server, in process -----------------------------------------------------------------


def run_with_server(
    limits: ControlLimits,
    body: Callable[[ControlServer], Awaitable[None]],
    *,
    control_file: Path | None = None,
    routes: dict[str, Callable[[StatusProvider], Response]] | None = None,
) -> None:
    async def main() -> None:
        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                extra = {"routes": routes} if routes is not None else {}
                server = await nursery.start(
                    lambda task_status: serve_control(
                        status,
                        limits=limits,
                        control_file=control_file,
                        task_status=task_status,
                        **extra,
                    )
                )
                await body(server)
                nursery.cancel_scope.cancel()

    trio.run(main)


async def connect(server: ControlServer) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", server.port)


async def answer_of_new_connection(server: ControlServer) -> bytes:
    """What a fresh connection that sends nothing receives; a connection reset before the
    connect call returned counts as closed with no data."""
    try:
        stream = await connect(server)
    except OSError:
        return b""
    try:
        return await read_to_end(stream)
    finally:
        await stream.aclose()


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    out = bytearray()
    try:
        while chunk := await stream.receive_some(65536):
            out += chunk
    except trio.BrokenResourceError:
        pass
    return bytes(out)


async def get(server: ControlServer, path: str = "/status", host: str | None = None) -> bytes:
    stream = await connect(server)
    try:
        await stream.send_all(request(host or f"127.0.0.1:{server.port}", path, token=server.token))
        return await read_to_end(stream)
    finally:
        await stream.aclose()


async def until(check: Callable[[], bool]) -> None:
    """Yield to the server until `check` holds (bounded by the test's fail_after)."""
    while not check():
        await trio.sleep(0.01)


def test_at_the_cap_the_oldest_connection_without_the_token_gives_way() -> None:
    async def body(server: ControlServer) -> None:
        held = [await connect(server) for _ in range(3)]
        await until(lambda: server.active == 3)
        newcomer = await connect(server)
        assert await read_to_end(held[0]) == b""  # the oldest idle one, closed
        assert (server.active, server.peak, server.evicted, server.refused) == (3, 3, 1, 0)
        line, _ = split(await get(server))  # the owner takes the next oldest one's slot
        assert line == "HTTP/1.0 200 OK"
        assert await read_to_end(held[1]) == b""
        assert server.evicted == 2
        for stream in (*held, newcomer):
            await stream.aclose()

    # the head timeout is long so the held connections stay while the extra ones come
    run_with_server(ControlLimits(max_connections=3, head_timeout_s=60.0), body)


def test_a_new_connection_is_closed_at_once_only_when_token_holders_fill_every_slot() -> None:
    big = b"x" * (16 << 20)  # more than the socket buffers: the server waits for the reader

    def large(_status: StatusProvider) -> Response:
        return Response("200 OK", "application/octet-stream", big)

    async def body(server: ControlServer) -> None:
        holders = [await connect(server) for _ in range(2)]
        for stream in holders:  # a whole request with the token, then not reading
            await stream.send_all(request(f"127.0.0.1:{server.port}", "/large", token=server.token))
        await until(lambda: server.active == 2)
        assert await answer_of_new_connection(server) == b""  # closed, not queued
        assert (server.refused, server.evicted) == (1, 0)
        for stream in holders:
            line, data = split(await read_to_end(stream))
            assert line == "HTTP/1.0 200 OK" and data == big
            await stream.aclose()

    limits = ControlLimits(max_connections=2, head_timeout_s=60.0, response_timeout_s=60.0)
    run_with_server(limits, body, routes={"/large": large})


def test_a_client_that_sends_nothing_is_dropped_after_the_head_timeout() -> None:
    async def body(server: ControlServer) -> None:
        idle = await connect(server)
        assert await read_to_end(idle) == b""
        partial = await connect(server)
        await partial.send_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert await read_to_end(partial) == b""
        await until(lambda: server.active == 0)
        await idle.aclose()
        await partial.aclose()

    run_with_server(ControlLimits(max_connections=4, head_timeout_s=0.2), body)


def test_a_trickling_client_cannot_hold_its_slot_past_the_head_timeout() -> None:
    async def body(server: ControlServer) -> None:
        stream = await connect(server)
        closed = trio.Event()

        async def trickle() -> None:
            try:
                await stream.send_all(b"GET /status HTTP/1.1\r\nX-Pad: ")
                while not closed.is_set():  # one byte at a time, never the blank line
                    await stream.send_all(b"a")
                    await trio.sleep(0.02)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            assert await read_to_end(stream) == b""
            closed.set()
        await stream.aclose()
        assert server.active == 0

    run_with_server(ControlLimits(max_connections=2, head_timeout_s=0.3), body)


def test_an_oversized_head_gets_431_and_is_not_read_further() -> None:
    async def body(server: ControlServer) -> None:
        stream = await connect(server)
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(b"GET /status HTTP/1.1\r\nX-Pad: " + b"a" * 4096)
        line, body = split(await read_to_end(stream))
        assert line == "HTTP/1.0 431 Request Header Fields Too Large"
        assert SECRET.encode() not in body
        await stream.aclose()

    run_with_server(ControlLimits(max_connections=2, max_head_bytes=1024), body)


def test_a_rebound_browser_page_gets_no_data_over_the_socket() -> None:
    async def body(server: ControlServer) -> None:
        line, data = split(await get(server, host=f"attacker.example:{server.port}"))
        assert line == "HTTP/1.0 421 Misdirected Request"
        assert SECRET.encode() not in data
        line, data = split(await get(server, host=f"localhost:{server.port}"))
        assert line == "HTTP/1.0 200 OK" and json.loads(data)["site"] == SECRET

    run_with_server(ControlLimits(max_connections=2), body)


def test_status_still_answers_after_a_flood() -> None:
    flood, cap = 200, 4

    async def body(server: ControlServer) -> None:
        answers: list[bytes] = []

        async def flooder() -> None:
            answers.append(await answer_of_new_connection(server))  # held until closed

        async with trio.open_nursery() as nursery:
            for _ in range(flood):
                nursery.start_soon(flooder)
        assert answers == [b""] * flood  # each closed by the server, none answered
        assert server.peak == cap
        assert server.accepted == flood and server.evicted > 0
        await until(lambda: server.active == 0)
        line, data = split(await get(server))
        assert line == "HTTP/1.0 200 OK" and json.loads(data)["round"] == 7

    run_with_server(ControlLimits(max_connections=cap, head_timeout_s=0.3), body)


def test_the_route_table_takes_new_pages_with_the_same_checks() -> None:
    def hello(_status: StatusProvider) -> Response:
        return text("200 OK", "hello\n")

    async def body(server: ControlServer) -> None:
        assert split(await get(server, "/hello"))[1] == b"hello\n"
        refused = await get(server, "/hello", host="attacker.example")
        assert split(refused)[0] == "HTTP/1.0 421 Misdirected Request"
        assert split(await get(server, "/status"))[0] == "HTTP/1.0 404 Not Found"

    run_with_server(ControlLimits(max_connections=2), body, routes={"/hello": hello})


def test_the_control_file_is_private_names_the_port_and_goes_with_the_server(
    tmp_path: Path,
) -> None:
    control_file = tmp_path / "site" / "control.json"
    seen: dict[str, Any] = {}

    async def body(server: ControlServer) -> None:
        info = json.loads(control_file.read_text())
        seen.update(info, mode=stat.S_IMODE(control_file.stat().st_mode))
        seen["status"] = await trio.to_thread.run_sync(
            lambda: fetch_status(control_file, timeout=10.0)
        )
        assert info["port"] == server.port and info["token"] == server.token
        tokens.append(info["token"])

    tokens: list[str] = []
    old = os.umask(0o022)
    try:
        for _ in range(2):
            run_with_server(ControlLimits(max_connections=2), body, control_file=control_file)
    finally:
        os.umask(old)
    assert tokens[0] != tokens[1]  # a fresh token at every start
    assert seen["mode"] == 0o600
    assert seen["pid"] == os.getpid()
    assert isinstance(seen["token"], str) and len(seen["token"]) >= 43  # 256 bits
    assert seen["status"]["site"] == SECRET  # the client's Host header passes the check
    assert not control_file.exists()


def test_status_url_prints_the_dashboard_address_with_this_starts_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main
    from node.daemon.config import CONTROL_FILE

    site = tmp_path / "site"
    printed: list[str] = []

    async def body(server: ControlServer) -> None:
        code = await trio.to_thread.run_sync(lambda: main(["status", "--site", str(site), "--url"]))
        assert code == 0
        printed.append(capsys.readouterr().out.strip())
        assert printed[0] == f"http://127.0.0.1:{server.port}/#token={server.token}"

    run_with_server(ControlLimits(max_connections=2), body, control_file=site / CONTROL_FILE)
