"""Unsigned LEB128 varints: the length prefix of libp2p multihashes and of our stream frames."""

from __future__ import annotations

MAX_VARINT_BYTES = 9  # 63 bits: more than any length we accept, and what libp2p allows


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint cannot encode a negative number")
    if value >= 1 << (7 * MAX_VARINT_BYTES):
        raise ValueError("uvarint value exceeds 63 bits")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
