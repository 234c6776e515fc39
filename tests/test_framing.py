"""Varint length-prefixed frames: round trips, and every malformed input is a typed error."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmed.errors import WireError
from node.net.framing import (
    MAX_VARINT_BYTES,
    FrameError,
    FrameTooLarge,
    FrameTruncated,
    ReadSome,
    StreamEndedEmpty,
    decode_uvarint,
    encode_frame,
    encode_uvarint,
    read_frame,
)


def chunked_reader(data: bytes, *, max_chunk: int) -> tuple[list[int], ReadSome]:
    """A read_some over `data` that never returns more than `max_chunk` bytes per call."""
    pos = 0
    requested: list[int] = []

    async def read_some(n: int) -> bytes:
        nonlocal pos
        requested.append(n)
        chunk = data[pos : pos + min(n, max_chunk)]
        pos += len(chunk)
        return chunk

    return requested, read_some


def read_all(data: bytes, *, max_bytes: int, max_chunk: int = 1 << 20) -> bytes:
    _, read_some = chunked_reader(data, max_chunk=max_chunk)

    async def main() -> bytes:
        return await read_frame(read_some, max_bytes=max_bytes)

    return trio.run(main)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02")],
)
def test_uvarint_matches_the_multiformats_examples(value: int, encoded: bytes) -> None:
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded + b"tail") == (value, len(encoded))


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_uvarint_round_trips_every_63_bit_value(value: int) -> None:
    encoded = encode_uvarint(value)
    assert len(encoded) <= MAX_VARINT_BYTES
    assert decode_uvarint(encoded) == (value, len(encoded))


def test_uvarint_refuses_values_it_cannot_encode() -> None:
    with pytest.raises(ValueError):
        encode_uvarint(-1)
    with pytest.raises(ValueError):
        encode_uvarint(2**63)


def test_decode_rejects_overlong_padded_and_truncated_varints() -> None:
    with pytest.raises(FrameError, match="longer"):
        decode_uvarint(b"\xff" * 12)
    with pytest.raises(FrameError, match="minimally"):
        decode_uvarint(b"\x80\x00")
    with pytest.raises(FrameTruncated):
        decode_uvarint(b"\x80\x80")


@settings(max_examples=50, deadline=None)
@given(body=st.binary(max_size=5000), max_chunk=st.integers(min_value=1, max_value=700))
def test_frames_survive_arbitrarily_small_partial_reads(body: bytes, max_chunk: int) -> None:
    assert read_all(encode_frame(body), max_bytes=5000, max_chunk=max_chunk) == body


def test_thousands_of_one_byte_reads_are_not_a_failure() -> None:
    body = bytes(range(256)) * 20
    assert read_all(encode_frame(body), max_bytes=len(body), max_chunk=1) == body


def test_length_is_checked_before_any_body_byte_is_requested() -> None:
    requested, read_some = chunked_reader(encode_uvarint(2**40) + b"x" * 10, max_chunk=1 << 20)

    async def main() -> None:
        await read_frame(read_some, max_bytes=1024)

    with pytest.raises(FrameTooLarge):
        trio.run(main)
    assert all(n == 1 for n in requested), "only the prefix may be read, byte by byte"


def test_limit_is_inclusive() -> None:
    assert read_all(encode_frame(b"abcd"), max_bytes=4) == b"abcd"
    with pytest.raises(FrameTooLarge):
        read_all(encode_frame(b"abcde"), max_bytes=4)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x85", encode_uvarint(100) + b"short", b"\xff" * 10, b"\x80\x00"],
    ids=["empty", "inside-prefix", "short-body", "overlong-prefix", "padded-prefix"],
)
def test_malformed_input_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        read_all(data, max_bytes=1 << 20)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_give_a_body_or_a_wire_error_never_anything_else(data: bytes) -> None:
    try:
        body = read_all(data, max_bytes=32)
    except WireError:
        return
    assert len(body) <= 32


def test_a_stream_closed_before_its_first_byte_is_told_apart_from_a_cut_frame() -> None:
    """A neighbour that stops mid-round closes its streams empty: not a malformed frame."""
    with pytest.raises(StreamEndedEmpty):
        read_all(b"", max_bytes=1024)
    for cut in (b"\x80", encode_frame(b"abc")[:2]):
        with pytest.raises(FrameTruncated) as caught:
            read_all(cut, max_bytes=1024)
        assert not isinstance(caught.value, StreamEndedEmpty)
