"""How large an update from a neighbour may be: derived from the adapter's own schema.

A fixed limit (64 MiB before) is far above a small adapter, so a member could make every
neighbour read and decrypt tens of MiB per exchange. The largest legitimate encoding of a
schema is the top-k codec at fraction 1 (an int32 index and a float32 value per entry, twice a
float32 tensor); the limit is that, plus each tensor's record (name, dtype, shape, msgpack
framing), plus the envelope's own overhead, plus a margin. Nothing a site accepts can be
larger, and a neighbour's honest update is never refused for its size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gossipmed.wire.envelope_format import BOX_OVERHEAD, MAX_HEADER_BYTES, SIGNATURE_BYTES
from gossipmed.wire.tensors import DTYPES, MAX_NAME_LEN, normalise_schema

BYTES_PER_SPARSE_ENTRY = 8  # int32 index + float32 value
RECORD_OVERHEAD = MAX_NAME_LEN + 128  # a tensor's name, dtype, shape and map framing
ENVELOPE_OVERHEAD = MAX_HEADER_BYTES + BOX_OVERHEAD + SIGNATURE_BYTES + 256
MARGIN = 64 * 1024


def update_size_limit(schema: Mapping[str, tuple[Any, Any]]) -> int:
    """The most bytes one update of this schema may take, in any codec, sealed."""
    total = 0
    for _name, (dtype, shape) in normalise_schema(schema).items():
        numel = math.prod(shape)
        total += max(numel * DTYPES[dtype].itemsize, numel * BYTES_PER_SPARSE_ENTRY)
        total += RECORD_OVERHEAD
    return total + ENVELOPE_OVERHEAD + MARGIN
