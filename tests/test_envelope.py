"""Envelopes: everything a site accepts is authentic, fresh, addressed to it and well-formed;
everything else is refused with the error that names the first check it failed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey, PublicKey

from gossipmed.consortium.audit import AuditLog, read_audit
from gossipmed.consortium.crypto import Identity, derive_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import NotAMember, RevokedMember, Roster, RosterMismatch
from gossipmed.errors import GossipmedError, RosterError, WireError
from gossipmed.wire.envelope import DEFAULT_SKEW_S, EnvelopeSealer, ReplayGuard
from gossipmed.wire.envelope_format import signed_message
from gossipmed.wire.tensors import (
    BadSignature,
    DtypeNotAllowed,
    EnvelopeTooLarge,
    MalformedEnvelope,
    NonFiniteTensor,
    ReplayedRound,
    ShapeMismatch,
    StaleRound,
    TensorSetMismatch,
    TimestampOutOfWindow,
    UnknownCodec,
    UnsupportedVersion,
    WrongRecipient,
    encode_payload,
    schema_of,
)
from gossipmed.wire.update import MAX_ROUND, MAX_STEPS_PER_ROUND, Update

SECRET = b"envelope-test-secret-0123456789"
NOW = 1_700_000_000.0
IDS = {n: derive_identity(SECRET, n) for n in ("a", "b", "c", "d", "mallory")}
PROP = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _member(name: str) -> Member:
    i = IDS[name]
    return Member(name=name, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)


ROSTER = Roster(
    members=tuple(_member(n) for n in "abcd"),
    edges=(("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")),
)
TENSORS = {
    "layer0.lora_A": torch.linspace(-1, 1, 8 * 4).reshape(8, 4),
    "layer0.lora_B": torch.linspace(0, 2, 4 * 8).reshape(4, 8).half(),
}
SCHEMA = schema_of(TENSORS)


def sealer(name: str, roster: Roster = ROSTER, **kw: Any) -> EnvelopeSealer:
    return EnvelopeSealer(identity=IDS[name], roster=roster, clock=lambda: NOW, **kw)


def seal(frm: str = "a", to: str = "b", round: int = 1, step: int = 0, **kw: Any) -> bytes:
    return sealer(frm, **kw).seal(
        update_tensors=TENSORS, round=round, step=step, recipient=to, epsilon=0.5
    )


def forge(
    *,
    signer: str = "a",
    box_from: str = "a",
    box_to: str = "b",
    payload: bytes | None = None,
    **header: Any,
) -> bytes:
    """Build an envelope field by field, to reach checks an honest sealer never trips."""
    if payload is None:
        payload = encode_payload(TENSORS, epsilon=0.5)
    h = {
        "v": 2,
        "sender": "a",
        "recipient": "b",
        "round": 1,
        "step": 0,
        "ts": NOW,
        "codec": "raw",
        "size": len(payload),
        "roster": ROSTER.hash,
    }
    h.update(header)
    h = {k: v for k, v in h.items() if v is not None}  # None: leave the field out
    hbytes = msgpack.packb(h, use_bin_type=True)
    box = Box(PrivateKey(IDS[box_from].x25519_secret), PublicKey(IDS[box_to].box_key))
    ct = bytes(box.encrypt(payload))
    sig = IDS[signer].sign(signed_message(hbytes, ct))
    return msgpack.packb({"h": hbytes, "c": ct, "s": sig}, use_bin_type=True)


def raw_payload(tensors: dict[str, Any]) -> bytes:
    body = {"v": 2, "tensors": tensors, "epsilon": 0.0}
    return msgpack.packb(body, use_bin_type=True)


def open_b(data: bytes, **kw: Any) -> Any:
    return sealer("b", **kw).open(data, expected_schema=SCHEMA)


# --- round trip ------------------------------------------------------------------------------


@PROP
@given(
    shapes=st.dictionaries(
        st.text("abcxyz._", min_size=1, max_size=12),
        st.tuples(
            st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
            st.lists(st.integers(0, 6), max_size=3),
        ),
        max_size=5,
    ),
    round=st.integers(0, MAX_ROUND),
    step=st.integers(0, MAX_STEPS_PER_ROUND - 1),
    epsilon=st.floats(0, 100),
    seed=st.integers(0, 1000),
)
def test_round_trip_returns_exactly_what_was_sealed(
    shapes: dict[str, Any], round: int, step: int, epsilon: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(s, generator=gen).to(dt) for k, (dt, s) in shapes.items()}
    data = sealer("a").seal(
        update_tensors=tensors, round=round, step=step, recipient="b", epsilon=epsilon
    )
    update = sealer("b").open(data, expected_schema=schema_of(tensors))
    assert (update.sender, update.recipient, update.exchange) == ("a", "b", (round, step))
    assert (update.codec, update.epsilon, update.sent_at) == ("raw", epsilon, NOW)
    assert update.tensors.keys() == tensors.keys()
    for k, t in tensors.items():
        assert update.tensors[k].dtype == t.dtype and torch.equal(update.tensors[k], t)


def test_seal_many_gives_each_neighbour_its_own_envelope() -> None:
    out = sealer("a").seal_many(
        update_tensors=TENSORS, round=3, step=0, recipients=["b", "d"], epsilon=0.0
    )
    assert sealer("b").open(out["b"], expected_schema=SCHEMA).round == 3
    assert sealer("d").open(out["d"], expected_schema=SCHEMA).round == 3
    with pytest.raises(WrongRecipient):
        sealer("d").open(out["b"], expected_schema=SCHEMA)


# --- tampering -------------------------------------------------------------------------------

HEADER_ERRORS = (
    MalformedEnvelope,
    UnsupportedVersion,
    UnknownCodec,
    RosterMismatch,
    NotAMember,
    WrongRecipient,
    BadSignature,
)


def _regions(data: bytes) -> dict[str, range]:
    outer = msgpack.unpackb(data)
    out = {}
    for key in ("h", "c", "s"):
        start = data.rfind(outer[key])
        out[key] = range(start, start + len(outer[key]))
    return out


def _expected_for_flip(data: bytes, byte: int) -> tuple[type[Exception], ...]:
    regions = _regions(data)
    if byte in regions["c"] or byte in regions["s"]:
        return (BadSignature,)
    if byte in regions["h"]:
        return HEADER_ERRORS
    return (MalformedEnvelope,)


@PROP
@given(bit=st.integers(0, 10**9), round=st.integers(0, 1000))
def test_a_flipped_bit_anywhere_is_rejected(bit: int, round: int) -> None:
    data = seal(round=round)
    bit %= len(data) * 8
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(_expected_for_flip(data, bit // 8)):
        open_b(bytes(flipped))


def test_every_single_bit_flip_of_a_small_envelope_is_rejected() -> None:
    tiny = {"w": torch.tensor([1.0, 2.0])}
    data = sealer("a").seal(update_tensors=tiny, round=1, recipient="b", epsilon=0)
    opener = sealer("b")
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(_expected_for_flip(data, bit // 8)):
            opener.open(bytes(flipped), expected_schema=schema_of(tiny))
    assert opener.open(data, expected_schema=schema_of(tiny)).round == 1  # state untouched


@PROP
@given(signer=st.sampled_from(["mallory", "c", "d"]))
def test_wrong_signing_key_is_a_bad_signature(signer: str) -> None:
    with pytest.raises(BadSignature):
        open_b(forge(signer=signer))


def test_non_member_is_refused_even_with_a_valid_signature_of_its_own() -> None:
    with pytest.raises(NotAMember):
        open_b(forge(signer="mallory", box_from="mallory", sender="mallory"))


def test_revoked_member_is_refused_under_the_new_roster_and_the_old_roster_is_refused_too() -> None:
    revoked = ROSTER.revoke("c")
    opener = sealer("b", roster=revoked)
    with pytest.raises(RevokedMember):
        opener.open(
            forge(signer="c", box_from="c", sender="c", roster=revoked.hash),
            expected_schema=SCHEMA,
        )
    with pytest.raises(RosterMismatch):
        opener.open(seal(frm="c"), expected_schema=SCHEMA)
    with pytest.raises(RevokedMember):
        sealer("c", roster=revoked)


def test_envelope_for_another_site_is_refused() -> None:
    with pytest.raises(WrongRecipient):
        open_b(seal(to="c"))


@PROP
@given(first=st.integers(0, 100), second=st.integers(0, 100))
def test_rounds_must_increase_per_sender(first: int, second: int) -> None:
    opener = sealer("b")
    opener.open(seal(round=first), expected_schema=SCHEMA)
    again = seal(round=second)
    if second == first:
        with pytest.raises(ReplayedRound):
            opener.open(again, expected_schema=SCHEMA)
    elif second < first:
        with pytest.raises(StaleRound):
            opener.open(again, expected_schema=SCHEMA)
    else:
        assert opener.open(again, expected_schema=SCHEMA).round == second


def test_exchanges_are_ordered_by_round_then_step() -> None:
    opener = sealer("b")
    opener.open(seal(round=2, step=1), expected_schema=SCHEMA)
    with pytest.raises(ReplayedRound):
        opener.open(seal(round=2, step=1), expected_schema=SCHEMA)
    with pytest.raises(StaleRound):
        opener.open(seal(round=2, step=0), expected_schema=SCHEMA)
    with pytest.raises(StaleRound):  # a later step of an older round is still older
        opener.open(seal(round=1, step=5), expected_schema=SCHEMA)
    assert opener.open(seal(round=2, step=2), expected_schema=SCHEMA).exchange == (2, 2)
    assert opener.open(seal(round=3, step=0), expected_schema=SCHEMA).exchange == (3, 0)


def test_version_1_envelopes_are_refused_by_their_version() -> None:
    """Version 1 flattened (round, step) into one number and sent the real batch size."""
    payload = msgpack.packb(
        {"v": 1, "tensors": {}, "n_examples": 7, "epsilon": 0.0}, use_bin_type=True
    )
    old = forge(payload=payload, v=1, round=5, step=None)
    with pytest.raises(UnsupportedVersion, match="protocol version 1"):
        open_b(old)


@pytest.mark.parametrize(
    ("round", "step"), [(MAX_ROUND + 1, 0), (2**63 - 1, 0), (1, MAX_STEPS_PER_ROUND), (-1, 0)]
)
def test_exchanges_outside_the_bounds_are_refused_on_both_sides(round: int, step: int) -> None:
    with pytest.raises(MalformedEnvelope):
        open_b(forge(round=round, step=step))
    with pytest.raises(WireError):
        seal(round=round, step=step)


def test_a_refusal_by_the_caller_leaves_the_replay_state_alone() -> None:
    opener = sealer("b")
    seen: list[Update] = []

    def refuse(update: Update) -> None:
        seen.append(update)
        raise WireError("not now")

    with pytest.raises(WireError, match="not now"):
        opener.open(seal(round=3), expected_schema=SCHEMA, admit=refuse)
    assert [u.exchange for u in seen] == [(3, 0)]  # verified and decoded before the call
    assert opener.replay_guard.last("a") is None
    assert opener.open(seal(round=3), expected_schema=SCHEMA).round == 3


def test_rounds_are_tracked_per_sender() -> None:
    opener = sealer("b")
    opener.open(seal(round=5), expected_schema=SCHEMA)
    assert opener.open(seal(frm="c", round=1), expected_schema=SCHEMA).sender == "c"


@PROP
@given(offset=st.floats(-3 * DEFAULT_SKEW_S, 3 * DEFAULT_SKEW_S))
def test_timestamp_must_lie_within_the_clock_window(offset: float) -> None:
    data = forge(ts=NOW + offset)
    if abs(offset) > DEFAULT_SKEW_S:
        with pytest.raises(TimestampOutOfWindow):
            open_b(data)
    else:
        assert open_b(data).sent_at == NOW + offset


def test_envelope_made_under_another_roster_is_refused_with_a_clear_reason() -> None:
    other = Roster(members=ROSTER.members, edges=(*ROSTER.edges, ("a", "c")))
    with pytest.raises(RosterMismatch, match="same consortium file"):
        open_b(seal(roster=other))


@PROP
@given(extra=st.integers(1, 10_000), fill=st.binary(min_size=1, max_size=1))
def test_oversize_input_is_refused_before_parsing(extra: int, fill: bytes) -> None:
    limit = 4096
    with pytest.raises(EnvelopeTooLarge):
        open_b(fill * (limit + extra), max_bytes=limit)


def test_header_claiming_more_than_the_limit_is_malformed() -> None:
    with pytest.raises(MalformedEnvelope):
        open_b(forge(size=2**40))


def test_sealer_refuses_updates_that_do_not_fit_the_limit() -> None:
    with pytest.raises(EnvelopeTooLarge):
        seal(max_bytes=1024)


@PROP
@given(cut=st.integers(0, 10**6))
def test_truncated_envelope_is_malformed(cut: int) -> None:
    data = seal()
    with pytest.raises(MalformedEnvelope):
        open_b(data[: cut % len(data)])


def test_unknown_version_and_codec_are_refused() -> None:
    with pytest.raises(UnsupportedVersion):
        open_b(forge(v=3))
    with pytest.raises(UnknownCodec):
        open_b(forge(codec="zstd"))


# --- payload schema --------------------------------------------------------------------------


def test_expected_schema_decides_dtype_and_shape() -> None:
    wrong_dtype = dict(SCHEMA, **{"layer0.lora_A": ("bfloat16", (8, 4))})
    with pytest.raises(DtypeNotAllowed):
        sealer("b").open(seal(), expected_schema=wrong_dtype)
    wrong_shape = dict(SCHEMA, **{"layer0.lora_A": ("float32", (4, 8))})
    with pytest.raises(ShapeMismatch):
        sealer("b").open(seal(), expected_schema=wrong_shape)


def test_disallowed_wire_dtype_is_refused() -> None:
    payload = raw_payload({"w": {"dtype": "float64", "shape": [1], "data": b"\0" * 8}})
    with pytest.raises(DtypeNotAllowed):
        sealer("b").open(forge(payload=payload), expected_schema={"w": ("float32", (1,))})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_are_refused(bad: float) -> None:
    data = torch.tensor([1.0, bad]).numpy().tobytes()
    payload = raw_payload({"w": {"dtype": "float32", "shape": [2], "data": data}})
    with pytest.raises(NonFiniteTensor):
        sealer("b").open(forge(payload=payload), expected_schema={"w": ("float32", (2,))})


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_extra_or_missing_tensors_are_refused(change: str) -> None:
    tensors = dict(TENSORS)
    if change == "extra":
        tensors["layer1.lora_A"] = torch.zeros(2)
    else:
        del tensors["layer0.lora_B"]
    with pytest.raises(TensorSetMismatch, match=change):
        open_b(sealer("a").seal(update_tensors=tensors, round=1, recipient="b", epsilon=0.0))


def test_payload_that_does_not_decrypt_is_refused() -> None:
    from gossipmed.wire.tensors import DecryptionFailed

    with pytest.raises(DecryptionFailed):
        open_b(forge(box_from="c"))  # signed by a, but encrypted with c's box key


# --- check order and state -------------------------------------------------------------------


def test_checks_run_in_the_documented_order() -> None:
    other = Roster(members=ROSTER.members, edges=(*ROSTER.edges, ("a", "c")))
    with pytest.raises(RosterMismatch):  # roster before membership
        open_b(forge(sender="mallory", roster=other.hash))
    with pytest.raises(NotAMember):  # membership before recipient
        open_b(forge(sender="mallory", recipient="c"))
    with pytest.raises(WrongRecipient):  # recipient before signature
        open_b(forge(signer="mallory", recipient="c"))
    opener = sealer("b")
    opener.open(seal(round=1), expected_schema=SCHEMA)
    with pytest.raises(BadSignature):  # signature before freshness: no probing replay state
        opener.open(forge(signer="mallory", round=1), expected_schema=SCHEMA)
    with pytest.raises(ReplayedRound):  # freshness before decryption
        opener.open(forge(box_from="c", round=1), expected_schema=SCHEMA)


def test_a_rejected_envelope_does_not_move_the_replay_state() -> None:
    opener = sealer("b")
    bad = raw_payload({"w": {"dtype": "float32", "shape": [1], "data": b"\0\0\xc0\x7f"}})  # NaN
    with pytest.raises(NonFiniteTensor):
        opener.open(forge(payload=bad, round=7), expected_schema={"w": ("float32", (1,))})
    assert opener.replay_guard.last("a") is None
    assert opener.open(seal(round=7), expected_schema=SCHEMA).round == 7


def test_replay_guard_state_survives_a_restart() -> None:
    opener = sealer("b")
    opener.open(seal(round=4), expected_schema=SCHEMA)
    state = json.loads(json.dumps(opener.replay_guard.state_dict()))
    restarted = sealer("b", replay_guard=ReplayGuard.from_state_dict(state))
    with pytest.raises(ReplayedRound):
        restarted.open(seal(round=4), expected_schema=SCHEMA)
    with pytest.raises(WireError):
        ReplayGuard.from_state_dict({"v": 2, "last": {"a": [-1, 0]}})
    with pytest.raises(WireError):  # the format of the exchange-index era
        ReplayGuard.from_state_dict({"v": 1, "last_round": {"a": 4}})


def test_sealer_refuses_to_send_to_itself_or_to_revoked_members() -> None:
    with pytest.raises(WireError):
        seal(to="a")
    with pytest.raises(RevokedMember):
        sealer("a", roster=ROSTER.revoke("b")).seal(
            update_tensors=TENSORS, round=1, recipient="b", epsilon=0.0
        )


def test_identity_outside_the_roster_cannot_build_a_sealer() -> None:
    with pytest.raises(NotAMember):
        sealer("mallory")
    wrong_box = Identity(ed25519_seed=IDS["a"].ed25519_seed, x25519_secret=b"\x05" * 32)
    with pytest.raises(RosterError):
        EnvelopeSealer(identity=wrong_box, roster=ROSTER)


# --- audit -----------------------------------------------------------------------------------


def test_every_outcome_is_audited_with_sender_round_and_reason(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", clock=lambda: NOW)
    opener = sealer("b")
    good = seal(round=2)
    opener.open(good, expected_schema=SCHEMA, audit=audit)
    for data in (good, seal(round=1), b"\x00garbage", forge(signer="mallory", round=9)):
        with pytest.raises(GossipmedError):
            opener.open(data, expected_schema=SCHEMA, audit=audit)
    lines = read_audit(tmp_path / "audit.jsonl")
    assert [x["outcome"] for x in lines] == ["accepted"] + ["rejected"] * 4
    assert [x["error"] for x in lines] == [
        None,
        "ReplayedRound",
        "StaleRound",
        "MalformedEnvelope",
        "BadSignature",
    ]
    assert [x["sender"] for x in lines] == ["a", "a", "a", None, "a"]
    assert [x["round"] for x in lines] == [2, 2, 1, None, 9]
    assert all(len(x["payload_hash"]) == 64 and x["time"] == NOW and x["reason"] for x in lines)


# --- fuzz (short; the 100k run is scripts/fuzz_envelope.py) ------------------------------------


def _load_fuzz_script() -> Any:
    path = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_envelope.py"
    spec = importlib.util.spec_from_file_location("fuzz_envelope", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_fuzzed_inputs_only_ever_raise_typed_errors_within_the_memory_bound() -> None:
    report = _load_fuzz_script().run_fuzz(n=2000, seed=1, trace_memory=True)
    assert report.count == 2000
    assert report.unexpected == []
    assert report.accepted >= 1  # the unmutated control inputs still open
    assert report.max_peak_bytes <= report.max_bytes
    assert report.bound_violations == 0
