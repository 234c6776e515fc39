"""Length-prefixed frames: an unsigned varint (multiformats/LEB128) then the body.

Pure helpers, no sockets and no trio: the reader takes a `read_some` callable so the caller
decides how each read is bounded in time, and the frame length is checked against the limit
*before* a single body byte is read, so a peer can never make us allocate more than
`max_bytes` (the body buffer only grows by what actually arrived; the final copy into
immutable bytes briefly doubles that, still bounded by 2 x max_bytes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gossipmed.errors import WireError
from gossipmed.wire.varint import MAX_VARINT_BYTES, encode_uvarint

# 9 bytes carry 63 bits, the multiformats maximum; anything longer is garbage.
DEFAULT_CHUNK_BYTES = 1 << 20

ReadSome = Callable[[int], Awaitable[bytes]]


class FrameError(WireError):
    """A frame is malformed, truncated or over the size limit."""


class FrameTooLarge(FrameError):
    """The length prefix announces more bytes than the receiver accepts."""


class FrameTruncated(FrameError):
    """The stream ended before the announced number of bytes arrived."""


class StreamEndedEmpty(FrameTruncated):
    """The stream closed before its first byte: a sender that stopped, not a malformed frame."""


def decode_uvarint(buf: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Decode a varint at the start of `buf`; returns (value, bytes consumed).

    Raises FrameTruncated if `buf` ends inside the varint, FrameError if it is over-long or
    not minimally encoded (the multiformats spec forbids padding, which would let two byte
    strings mean the same frame).
    """
    value = 0
    for i in range(min(len(buf), MAX_VARINT_BYTES)):
        byte = buf[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise FrameError("varint is not minimally encoded")
            return value, i + 1
    if len(buf) >= MAX_VARINT_BYTES:
        raise FrameError(f"varint longer than {MAX_VARINT_BYTES} bytes")
    raise FrameTruncated("input ends inside the varint")


def frame_header(body_len: int) -> bytes:
    """The prefix to write before a body of `body_len` bytes (body sent separately: no copy)."""
    return encode_uvarint(body_len)


def encode_frame(body: bytes) -> bytes:
    return frame_header(len(body)) + body


async def read_uvarint(read_some: ReadSome) -> int:
    """Read one varint a byte at a time, so no byte of the body is consumed by accident."""
    buf = bytearray()
    while True:
        chunk = await read_some(1)
        if not chunk:
            if not buf:
                raise StreamEndedEmpty("stream ended before a frame")
            raise FrameTruncated("stream ended inside the length prefix")
        buf += chunk[:1]
        if not buf[-1] & 0x80:
            value, _ = decode_uvarint(buf)
            return value
        if len(buf) >= MAX_VARINT_BYTES:
            raise FrameError(f"varint longer than {MAX_VARINT_BYTES} bytes")


async def read_frame(
    read_some: ReadSome, *, max_bytes: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> bytes:
    """Read one length-prefixed frame and return its body.

    `read_some(n)` must return between 1 and n bytes, or b"" at end of stream. Our own loop
    rather than a library "read exactly": many small partial reads are normal on a muxed
    stream and must not count as failure.
    """
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    length = await read_uvarint(read_some)
    if length > max_bytes:
        raise FrameTooLarge(f"frame announces {length} bytes, limit is {max_bytes}")
    body = bytearray()
    while len(body) < length:
        chunk = await read_some(min(chunk_bytes, length - len(body)))
        if not chunk:
            raise FrameTruncated(f"stream ended after {len(body)} of {length} body bytes")
        if len(chunk) > length - len(body):
            raise FrameError("reader returned more bytes than requested")
        body += chunk
    return bytes(body)
