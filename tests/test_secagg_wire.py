"""Message bytes: round trips, hard limits before allocation, and a fixed-seed fuzz loop in
which every malformed, oversized or misbound input ends in a typed error, never another
exception, and never a state change the protocol did not allow."""

from __future__ import annotations

import copy
import random
from typing import Any

import msgpack
import pytest
import torch
from nacl.signing import SigningKey

from gossipmed.errors import SecAggError, WireError
from gossipmed.mixing.secagg import (
    Aggregator,
    ContributionGuard,
    Contributor,
    FixedPoint,
    InstanceConfig,
    InstanceId,
    MalformedMessage,
    MaskedInput,
    Message,
    MessageLimits,
    decode_message,
)
from gossipmed.mixing.secagg.messages import (
    AdvertiseKeys,
    ForwardedShares,
    KeyRoster,
    ListSignature,
    SharedKeys,
    SignedSurvivors,
    SurvivorList,
    UnmaskShares,
)

ROSTER = b"\x5a" * 32
NAMES = ["b", "c", "d", "e"]
KEYS = {n: SigningKey.generate() for n in NAMES}
CONFIG = InstanceConfig(
    instance=InstanceId(ROSTER, "hub", 2, 0),
    weights={n: 0.2 for n in NAMES},
    sign_keys={n: bytes(KEYS[n].verify_key) for n in NAMES},
    schema={"a": (3, 2), "b": (5,)},
    threshold=3,
    fixed_point=FixedPoint(),
)
LIMITS = MessageLimits.of(CONFIG)
KINDS = (
    AdvertiseKeys,
    KeyRoster,
    SharedKeys,
    ForwardedShares,
    MaskedInput,
    SurvivorList,
    ListSignature,
    SignedSurvivors,
    UnmaskShares,
)


def _honest_run() -> tuple[dict[str, Message], dict[str, Aggregator | Contributor]]:
    """One message of each kind, and a snapshot of the party that was about to receive it:
    for the receiver the last message of each phase (so delivering it closes the phase and,
    for unmask shares, runs the reconstruction), for clients what site b received."""
    agg = Aggregator(CONFIG)
    clients = {
        n: Contributor(
            CONFIG,
            name=n,
            signing_key=KEYS[n],
            values={"a": torch.ones(3, 2), "b": torch.zeros(5)},
            guard=ContributionGuard.after_training(CONFIG.instance.round),
        )
        for n in NAMES
    }
    samples: dict[str, Message] = {}
    states: dict[str, Aggregator | Contributor] = {}
    replies: list[tuple[str, Message]] = [(n, c.advertise()) for n, c in clients.items()]
    while not agg.finished:
        relayed: list[tuple[str, Message]] = []
        for j, m in replies:
            samples[m.KIND], states[m.KIND] = m, copy.deepcopy(agg)
            relayed += agg.receive(j, m)
        replies = []
        for j, m in relayed:
            if m.KIND not in samples and j == "b":
                samples[m.KIND], states[m.KIND] = m, copy.deepcopy(clients["b"])
            replies.append((j, clients[j].handle("hub", m)))
    return samples, states


SAMPLES, STATES = _honest_run()


def test_every_message_kind_round_trips() -> None:
    assert set(SAMPLES) == {k.KIND for k in KINDS}
    for kind in KINDS:
        message = SAMPLES[kind.KIND]
        data = message.to_bytes()
        assert decode_message(data, limits=LIMITS) == message
        assert kind.from_bytes(data, limits=LIMITS) == message
        assert msgpack.unpackb(data)["v"] == 1


def test_from_bytes_refuses_another_kind() -> None:
    with pytest.raises(MalformedMessage):
        KeyRoster.from_bytes(SAMPLES["advertise"].to_bytes(), limits=LIMITS)


def test_malformed_messages_are_wire_errors_of_the_secagg_family() -> None:
    assert issubclass(MalformedMessage, WireError) and issubclass(MalformedMessage, SecAggError)


def test_oversized_input_is_refused_before_parsing() -> None:
    big = b"\xc4" + b"\x00" * (LIMITS.max_bytes + 1)
    with pytest.raises(MalformedMessage, match="exceeds"):
        decode_message(big, limits=LIMITS)


def test_the_masked_vector_length_comes_from_the_schema() -> None:
    masked = SAMPLES["masked"]
    assert isinstance(masked, MaskedInput) and len(masked.masked) == CONFIG.masked_bytes
    for size in (0, CONFIG.masked_bytes - 8, CONFIG.masked_bytes + 8):
        forged = MaskedInput(masked.instance, masked.sender, bytes(size)).to_bytes()
        with pytest.raises(MalformedMessage):
            decode_message(forged, limits=LIMITS)
    # a claimed bin length far beyond the data is refused without allocating it
    header = msgpack.packb({"v": 1, "kind": "masked"})[:-1]
    with pytest.raises(MalformedMessage):
        decode_message(header + b"\xc6\x7f\xff\xff\xff", limits=LIMITS)


def _body(message: Message) -> dict[str, Any]:
    body: dict[str, Any] = msgpack.unpackb(message.to_bytes())
    return body


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("advertise", {"v": 2}),
        ("advertise", {"v": True}),
        ("advertise", {"kind": "nope"}),
        ("advertise", {"extra": 1}),
        ("advertise", {"sender": "bad name"}),
        ("advertise", {"sender": 7}),
        ("advertise", {"c_pk": b"\x00" * 31}),
        ("advertise", {"sig": "not bytes"}),
        ("advertise", {"inst": {"roster": ROSTER, "receiver": "hub", "round": -1, "step": 0}}),
        ("advertise", {"inst": {"roster": ROSTER[:31], "receiver": "hub", "round": 1, "step": 0}}),
        ("advertise", {"inst": [1, 2]}),
        ("keys", {"entries": [{"sender": "b"}]}),
        ("keys", {"entries": "x"}),
        ("shares", {"cts": {"c": b"\x00" * 10}}),
        ("shares", {"cts": {f"s{i}": b"" for i in range(5)}}),  # more than the neighbourhood
        ("forward", {"cts": []}),
        ("survivors", {"names": ["c", "b", "d"]}),  # not canonical
        ("survivors", {"names": ["b", "b", "c"]}),
        ("signed", {"sigs": {"b": b"\x00" * 63}}),
        ("unmask", {"pair": {"b": b"\x00" * 66}, "self": {"b": b"\x00" * 66}}),
        ("unmask", {"self": {"b": b"\xff" * 66}}),  # not a field element
    ],
)
def test_malformed_fields_are_refused(kind: str, change: dict[str, Any]) -> None:
    body = _body(SAMPLES[kind])
    body.update(change)
    with pytest.raises(MalformedMessage):
        decode_message(msgpack.packb(body, use_bin_type=True), limits=LIMITS)


def _deliver(kind: str, message: Message) -> None:
    """Hand a parsed message to a copy of the party that expected its kind."""
    state = copy.deepcopy(STATES[kind])
    if isinstance(state, Aggregator):
        state.receive(str(getattr(message, "sender", "b")), message)
    else:
        state.handle("hub", message)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(5)
    buf = bytearray(data)
    if op == 0:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        del buf[rng.randrange(len(buf)) :]
    elif op == 2:
        buf += rng.randbytes(rng.randint(1, 64))
    elif op == 3:
        i = rng.randrange(len(buf))
        buf[i : i + 8] = rng.randbytes(8)
    else:
        return _mutate_structure(rng, data)
    return bytes(buf)


_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**64 - 1,
    2**63,
    1.5,
    "",
    "x" * 65,
    b"",
    b"\x00" * 32,
    b"\x00" * 66,
    [],
    ["b"],
    {},
    {"b": b""},
    [[[[]]]],
    {"b": {"c": {}}},
    "hub",
    "b",
    3,
]


def _mutate_structure(rng: random.Random, data: bytes) -> bytes:
    body = msgpack.unpackb(data)
    target = body
    if rng.random() < 0.3 and isinstance(body.get("inst"), dict):
        target = body["inst"]
    key = rng.choice([*target.keys(), "zzz"])
    if rng.random() < 0.2:
        target.pop(key, None)
    else:
        target[key] = rng.choice(_VALUES)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def test_fuzzed_messages_only_ever_raise_typed_errors() -> None:
    rng = random.Random(20240615)
    outcomes = {"malformed": 0, "refused": 0, "accepted": 0}
    kinds = sorted(SAMPLES)
    for _ in range(3000):
        kind = rng.choice(kinds)
        data = _mutate(rng, SAMPLES[kind].to_bytes())
        try:
            message = decode_message(data, limits=LIMITS)
        except MalformedMessage:
            outcomes["malformed"] += 1
            continue
        try:
            _deliver(message.KIND, message)
        except SecAggError:
            outcomes["refused"] += 1
            continue
        outcomes["accepted"] += 1
    # All three outcomes happen, and no other exception escaped.
    assert outcomes["malformed"] > 1000 and outcomes["refused"] > 100, outcomes


def test_every_honest_sample_is_accepted_by_its_recipient() -> None:
    # The fuzz loop's "refused" count means something only if the unmutated messages pass.
    for kind, message in SAMPLES.items():
        _deliver(kind, decode_message(message.to_bytes(), limits=LIMITS))
