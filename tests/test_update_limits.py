"""The size limit follows the adapter: every honest encoding fits, nothing much larger does."""

from __future__ import annotations

import pytest
import torch

from gossipmed.consortium.crypto import derive_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster
from gossipmed.wire.compression import TopkEncoder
from gossipmed.wire.envelope import EnvelopeSealer
from gossipmed.wire.limits import update_size_limit
from gossipmed.wire.tensors import EnvelopeTooLarge, schema_of

IDS = {n: derive_identity(b"limits-test-secret-0123456789abc", n) for n in ("a", "b")}
ROSTER = Roster(
    members=tuple(
        Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
        for n, i in IDS.items()
    ),
    edges=(("a", "b"),),
)
STATE = {f"l{i}.lora_{ab}": torch.randn(8, 512) for i in range(4) for ab in "AB"}
SCHEMA = schema_of(STATE)
LIMIT = update_size_limit(SCHEMA)


def sealers() -> tuple[EnvelopeSealer, EnvelopeSealer]:
    a = EnvelopeSealer(identity=IDS["a"], roster=ROSTER, max_bytes=LIMIT)
    b = EnvelopeSealer(identity=IDS["b"], roster=ROSTER, max_bytes=LIMIT)
    return a, b


@pytest.mark.parametrize("codec", ["raw", "fp16", "bf16", "int8"])
def test_every_dense_codec_fits(codec: str) -> None:
    a, b = sealers()
    data = a.seal(update_tensors=STATE, round=1, recipient="b", epsilon=0.0, codec=codec)
    assert len(data) <= LIMIT
    b.open(data, expected_schema=SCHEMA)


def test_the_largest_encoding_top_k_of_everything_fits() -> None:
    a, b = sealers()
    encoder = TopkEncoder(fraction=1.0)
    encoder.encode(STATE, round=0, step=0)  # keyframe
    moved = {k: v + 1.0 for k, v in STATE.items()}  # every entry changed
    tensors, codec = encoder.encode(moved, round=1, step=0)
    assert codec == "topk"
    data = a.seal(update_tensors=tensors, round=1, recipient="b", epsilon=0.0, codec=codec)
    assert len(data) <= LIMIT
    b.open(data, expected_schema=SCHEMA)


def test_the_limit_is_about_twice_the_raw_adapter_not_a_fixed_64_mib() -> None:
    raw = sum(t.numel() * 4 for t in STATE.values())
    assert 2 * raw < LIMIT < 2 * raw + 128 * 1024


def test_an_update_of_a_larger_adapter_is_refused_before_parsing() -> None:
    big = {k: torch.randn(8, 2048) for k in STATE}  # 4x the schema's entries
    sender = EnvelopeSealer(identity=IDS["a"], roster=ROSTER, max_bytes=64 << 20)
    data = sender.seal(update_tensors=big, round=1, recipient="b", epsilon=0.0)
    with pytest.raises(EnvelopeTooLarge):
        sealers()[1].open(data, expected_schema=SCHEMA)
