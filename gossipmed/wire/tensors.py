"""Adapter tensors <-> bytes, and the typed errors for every way such bytes can be wrong.

Untrusted bytes are parsed with msgpack under hard limits (string/bin/array/map lengths and
a budget on the number of decoded objects), so the memory an input can make us allocate is
bounded by its own length plus a small constant, never by a length it *claims*. Tensors
travel as name -> {dtype, shape, data}; codecs are registered by name so compressed
encodings (fp16, int8, top-k) can be added without touching the envelope.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np
import torch

from gossipmed.errors import WireError
from gossipmed.registry import Registry

PAYLOAD_VERSION = 2
MAX_TENSORS = 4096
MAX_NAME_LEN = 256
MAX_DIMS = 8
MAX_DIM = 2**31 - 1


# --- errors, in the order the opener checks them ---------------------------------------------


class EnvelopeTooLarge(WireError):
    """The bytes exceed the configured size limit (checked before any parsing)."""


class MalformedEnvelope(WireError):
    """Not a well-formed envelope: bad msgpack, wrong structure or field types."""


class UnsupportedVersion(WireError):
    """The envelope speaks a protocol version this site does not."""


class UnknownCodec(WireError):
    """The header names a tensor codec this site does not have."""


class WrongRecipient(WireError):
    """The envelope is addressed to another site."""


class BadSignature(WireError):
    """The Ed25519 signature does not verify under the sender's roster key."""


class FreshnessError(WireError):
    """The envelope is not fresh (replayed, stale, or outside the clock window)."""


class ReplayedRound(FreshnessError):
    """This sender's envelope for this round was already accepted."""


class StaleRound(FreshnessError):
    """The round is lower than one already accepted from this sender."""


class TimestampOutOfWindow(FreshnessError):
    """The header timestamp is too far from this site's clock."""


class DecryptionFailed(WireError):
    """The ciphertext does not open with the sender's box key (tampered or misaddressed)."""


class PayloadSchemaError(WireError):
    """The decrypted payload is not the adapter update this site expects."""


class DtypeNotAllowed(PayloadSchemaError):
    """A tensor uses a dtype outside the allow-list, or not the one expected."""


class ShapeMismatch(PayloadSchemaError):
    """A tensor's shape differs from the schema, or its bytes do not match shape x dtype."""


class TensorSetMismatch(PayloadSchemaError):
    """The tensor names are not exactly the expected adapter's (extra or missing)."""


class NonFiniteTensor(PayloadSchemaError):
    """A tensor holds NaN or Inf."""


# --- dtypes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireDtype:
    name: str
    torch_dtype: torch.dtype
    numpy_wire: str  # explicit little-endian numpy dtype of the bytes on the wire
    itemsize: int


_WIRE_DTYPES = (
    WireDtype("float32", torch.float32, "<f4", 4),
    WireDtype("float16", torch.float16, "<f2", 2),
    WireDtype("bfloat16", torch.bfloat16, "<i2", 2),  # numpy has no bf16: carried as int16
    WireDtype("int8", torch.int8, "i1", 1),
    WireDtype("int32", torch.int32, "<i4", 4),
    WireDtype("uint8", torch.uint8, "u1", 1),
)
DTYPES: dict[str, WireDtype] = {d.name: d for d in _WIRE_DTYPES}
ADAPTER_DTYPES = frozenset({"float32", "float16", "bfloat16"})
"""dtypes an adapter tensor may have; the integer ones are reserved for codec internals."""
_BY_TORCH = {d.torch_dtype: d for d in _WIRE_DTYPES}

TensorSpec = tuple[str, tuple[int, ...]]
AdapterSchema = Mapping[str, TensorSpec]


def dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise DtypeNotAllowed(f"dtype {dtype!r} is not allowed")
        return dtype
    wd = _BY_TORCH.get(dtype)
    if wd is None:
        raise DtypeNotAllowed(f"dtype {dtype} is not allowed")
    return wd.name


def normalise_schema(schema: Mapping[str, tuple[torch.dtype | str, Any]]) -> dict[str, TensorSpec]:
    """name -> (dtype name, shape tuple); accepts torch dtypes and any int sequence/Size."""
    out: dict[str, TensorSpec] = {}
    for name, (dtype, shape) in schema.items():
        dn = dtype_name(dtype)
        if dn not in ADAPTER_DTYPES:
            raise DtypeNotAllowed(f"{name}: adapter tensors must be float32/float16/bfloat16")
        out[name] = (dn, tuple(int(s) for s in shape))
    return out


def schema_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """The schema a receiver should expect for these tensors."""
    return normalise_schema({k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()})


def tensor_to_bytes(tensor: torch.Tensor) -> tuple[str, list[int], bytes]:
    wd = DTYPES[dtype_name(tensor.dtype)]
    t = tensor.detach().to("cpu").contiguous()
    if wd.torch_dtype == torch.bfloat16:
        t = t.view(torch.int16)
    arr = t.numpy()
    data = arr.astype(wd.numpy_wire, copy=False).tobytes()
    return wd.name, list(t.shape), data


def tensor_from_bytes(data: bytes, *, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A fresh, writable tensor from validated bytes (raises before allocating on mismatch)."""
    wd = DTYPES[dtype]
    expected = math.prod(shape) * wd.itemsize
    if len(data) != expected:
        raise ShapeMismatch(
            f"{len(data)} bytes cannot hold shape {list(shape)} of {dtype} ({expected} bytes)"
        )
    native = np.dtype(wd.numpy_wire).newbyteorder("=")
    arr = np.frombuffer(data, dtype=wd.numpy_wire).astype(native)  # the one copy
    t = torch.from_numpy(arr).reshape(shape)
    if wd.torch_dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    return t


def check_finite(name: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise NonFiniteTensor(f"tensor {name!r} contains NaN or Inf")


# --- bounded msgpack -----------------------------------------------------------------------


def unpack_bounded(
    data: bytes,
    *,
    max_bin: int,
    max_str: int,
    max_array: int,
    max_map: int,
    max_items: int,
    what: str,
) -> Any:
    """msgpack.unpackb with per-object limits and a total object budget: every container is
    counted as it completes, so the decoded structure can never outgrow `max_items` objects
    (plus one container's worth) whatever the input claims. Ext types are refused."""
    budget = [max_items]

    def count(obj: Any) -> Any:
        budget[0] -= len(obj) + 1
        if budget[0] < 0:
            raise MalformedEnvelope(f"{what} has too many elements")
        return obj

    def no_ext(code: int, _data: bytes) -> Any:
        raise MalformedEnvelope(f"{what} uses msgpack ext type {code}, which is not allowed")

    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            list_hook=count,
            object_hook=count,
            ext_hook=no_ext,
            max_bin_len=max_bin,
            max_str_len=max_str,
            max_array_len=max_array,
            max_map_len=max_map,
            max_ext_len=0,
        )
    except WireError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # ExtraData, FormatError, StackError, OutOfData, UnicodeDecodeError are ValueErrors.
        detail = f"{type(exc).__name__}: {str(exc)[:80]}"
        raise MalformedEnvelope(f"{what} is not valid msgpack ({detail})") from exc


def require_map(obj: object, *, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedEnvelope(f"{what} must be a map")
    if set(obj) != keys:
        missing, extra = sorted(keys - set(obj)), sorted(str(k)[:40] for k in set(obj) - keys)
        raise MalformedEnvelope(f"{what} fields wrong (missing {missing}, unexpected {extra})")
    return obj


def require_int(value: object, *, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise MalformedEnvelope(f"{what} must be an integer in [{lo}, {hi}]")
    return value


# --- codecs --------------------------------------------------------------------------------


class Codec(Protocol):
    """Turns adapter tensors into a msgpack-able map and back, checking the expected schema."""

    name: str

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]: ...

    def decode(
        self, encoded: object, *, expected: Mapping[str, TensorSpec]
    ) -> dict[str, torch.Tensor]:
        """Returns name -> torch.Tensor with exactly the expected names, dtypes and shapes."""
        ...


_TENSOR_KEYS = frozenset({"dtype", "shape", "data"})


def check_tensor_names(encoded: Mapping[str, Any], expected: Mapping[str, TensorSpec]) -> None:
    got, want = set(encoded), set(expected)
    if got != want:
        extra = sorted(str(n)[:80] for n in got - want)[:5]
        missing = sorted(want - got)[:5]
        raise TensorSetMismatch(
            f"tensor names differ from the adapter schema: extra {extra}, missing {missing}"
        )


def parse_shape(value: object, *, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise ShapeMismatch(f"tensor {name!r}: shape must be a list of at most {MAX_DIMS} ints")
    dims = []
    for d in value:
        if type(d) is not int or not 0 <= d <= MAX_DIM:
            raise ShapeMismatch(f"tensor {name!r}: shape entries must be ints in [0, 2^31)")
        dims.append(d)
    return tuple(dims)


class RawCodec:
    """Tensors verbatim in their own dtype: exact, no compression."""

    name = "raw"

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        out = {}
        for name, tensor in tensors.items():
            dtype, shape, data = tensor_to_bytes(tensor)
            out[name] = {"dtype": dtype, "shape": shape, "data": data}
        return out

    def decode(
        self, encoded: object, *, expected: Mapping[str, TensorSpec]
    ) -> dict[str, torch.Tensor]:
        if not isinstance(encoded, dict):
            raise PayloadSchemaError("payload tensors must be a map")
        check_tensor_names(encoded, expected)
        # Validate everything before copying any tensor bytes.
        for name, (want_dtype, want_shape) in expected.items():
            rec = encoded[name]
            if not isinstance(rec, dict) or set(rec) != _TENSOR_KEYS:
                raise PayloadSchemaError(f"tensor {name!r} must be a map of dtype, shape, data")
            dtype, data = rec["dtype"], rec["data"]
            if not isinstance(dtype, str) or dtype not in DTYPES:
                raise DtypeNotAllowed(f"tensor {name!r}: dtype {str(dtype)[:40]!r} not allowed")
            if dtype != want_dtype:
                raise DtypeNotAllowed(f"tensor {name!r}: dtype {dtype}, expected {want_dtype}")
            shape = parse_shape(rec["shape"], name=name)
            if shape != want_shape:
                raise ShapeMismatch(
                    f"tensor {name!r}: shape {list(shape)}, expected {list(want_shape)}"
                )
            if not isinstance(data, bytes):
                raise PayloadSchemaError(f"tensor {name!r}: data must be bytes")
            if len(data) != math.prod(shape) * DTYPES[dtype].itemsize:
                raise ShapeMismatch(
                    f"tensor {name!r}: {len(data)} bytes do not match shape {list(shape)} x {dtype}"
                )
        out = {}
        for name, (dtype, shape) in expected.items():
            rec = encoded.pop(name)  # drop each source buffer as soon as it is copied
            out[name] = tensor_from_bytes(rec["data"], dtype=dtype, shape=shape)
            check_finite(name, out[name])
        return out


CODECS: Registry[Codec] = Registry("codec", unknown=UnknownCodec)
"""name -> codec; the name travels in the update, so a receiver decodes with the sender's."""


def register_codec(codec: Codec) -> None:
    CODECS.register(codec.name, codec)


def get_codec(name: str) -> Codec:
    return CODECS.get(name)


register_codec(RawCodec())


# --- payload -------------------------------------------------------------------------------

_PAYLOAD_KEYS = frozenset({"v", "tensors", "epsilon"})


@dataclass(frozen=True)
class Payload:
    """What an update carries besides its header. Nothing computed from the site's data
    without noise travels: version 1 also sent the real Poisson batch size, which DP-SGD
    assumes secret, and is refused."""

    tensors: dict[str, torch.Tensor]
    epsilon: float


def encode_payload(
    tensors: Mapping[str, torch.Tensor], *, epsilon: float, codec: str = "raw"
) -> bytes:
    if not isinstance(epsilon, float | int) or math.isnan(epsilon) or epsilon < 0:
        raise WireError("epsilon must be a non-negative number (inf: no privacy guarantee)")
    if len(tensors) > MAX_TENSORS:
        raise WireError(f"at most {MAX_TENSORS} tensors per update")
    for name, t in tensors.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
            raise WireError(f"tensor names must be 1-{MAX_NAME_LEN} character strings")
        check_finite(name, t)
    payload = {
        "v": PAYLOAD_VERSION,
        "tensors": get_codec(codec).encode(tensors),
        "epsilon": float(epsilon),
    }
    return msgpack.packb(payload, use_bin_type=True)


def decode_payload(
    data: bytes, *, codec: str, expected: Mapping[str, TensorSpec], max_bytes: int
) -> Payload:
    obj = unpack_bounded(
        data,
        max_bin=max_bytes,
        max_str=MAX_NAME_LEN,
        max_array=MAX_DIMS,
        max_map=MAX_TENSORS,
        max_items=4 * MAX_TENSORS + 16,
        what="payload",
    )
    del data
    if not isinstance(obj, dict) or set(obj) != _PAYLOAD_KEYS:
        raise PayloadSchemaError("payload must be a map of v, tensors, epsilon")
    if obj["v"] != PAYLOAD_VERSION or type(obj["v"]) is not int:
        raise PayloadSchemaError(f"unsupported payload version {str(obj['v'])[:20]}")
    epsilon = obj["epsilon"]
    if type(epsilon) is not float or math.isnan(epsilon) or epsilon < 0:
        raise PayloadSchemaError("epsilon must be a non-negative float")
    tensors = get_codec(codec).decode(obj.pop("tensors"), expected=expected)
    return Payload(tensors=tensors, epsilon=epsilon)
