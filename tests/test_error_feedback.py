"""Top-k gossip with error feedback: nothing a site changes is ever lost, replicas track the
sender exactly, out-of-order deltas are refused, and the residual survives a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gossipmed.codecs import topk_sparsify
from gossipmed.crypto import generate_identity
from gossipmed.envelope import EnvelopeSealer
from gossipmed.error_feedback import CompressedSealer, DeltaOutOfSync, ErrorFeedback, header_codec
from gossipmed.errors import WireError
from gossipmed.roster import Member, Roster

SCHEMA = {"w": ("float32", (32, 16)), "b": ("float32", (7,))}


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(32, 16, generator=gen), "b": torch.randn(7, generator=gen)}


def test_reference_plus_residual_is_always_the_current_state() -> None:
    ef = ErrorFeedback(fraction=0.05)
    state = _state(0)
    ef.keyframe(state)
    replica = {k: v.clone() for k, v in state.items()}
    for r in range(1, 30):
        state = {k: v + 0.1 * _state(r)[k] for k, v in state.items()}
        sent = ef.compress(state)
        for k in replica:
            assert int((sent[k] != 0).sum()) <= -(-state[k].numel() * 5 // 100)
            replica[k] += sent[k]
            torch.testing.assert_close(replica[k] + ef.residual[k], state[k])


def test_error_feedback_delivers_a_change_that_top_k_alone_would_drop() -> None:
    # One small coordinate keeps changing; plain top-k would never send it, error feedback
    # accumulates it until it wins a slot.
    ef = ErrorFeedback(fraction=0.1)
    x = torch.zeros(10)
    ef.keyframe({"x": x})
    replica, plain = torch.zeros(10), torch.zeros(10)
    for r in range(1, 60):
        prev = x
        x = x.clone()
        x[0] += 0.01  # slow drift
        x[1:] = 0.05 * torch.randn(9, generator=torch.Generator().manual_seed(r))  # louder noise
        replica += ef.compress({"x": x})["x"]
        plain += topk_sparsify(x - prev, fraction=0.1)
    assert float(plain[0]) == 0.0  # without feedback the drift never wins a slot
    assert float(replica[0]) > 0.4  # with it, most of the 0.59 drift arrived


def test_compress_needs_a_keyframe_first() -> None:
    with pytest.raises(WireError, match="keyframe"):
        ErrorFeedback(fraction=0.1).compress(_state(0))
    with pytest.raises(ValueError):
        ErrorFeedback(fraction=0.0)


def test_checkpoint_round_trip_keeps_the_residual_bit_exact() -> None:
    ef = ErrorFeedback(fraction=0.02)
    ef.keyframe(_state(0))
    ef.compress(_state(1))
    back = ErrorFeedback.from_bytes(ef.to_bytes(), expected=SCHEMA)
    assert back.fraction == ef.fraction
    for k in SCHEMA:
        assert torch.equal(back.residual[k], ef.residual[k])
        assert back.last is not None and ef.last is not None
        assert torch.equal(back.last[k], ef.last[k])
    nxt = _state(2)
    a, b = ef.compress(nxt), back.compress(nxt)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = ErrorFeedback.from_dict(ErrorFeedback(fraction=0.5).to_dict(), expected=SCHEMA)
    assert not fresh.started


def test_checkpoint_refuses_another_schema_or_garbage() -> None:
    ef = ErrorFeedback(fraction=0.02)
    ef.keyframe(_state(0))
    with pytest.raises(WireError):
        ErrorFeedback.from_bytes(ef.to_bytes(), expected={"w": ("float32", (16, 32))})
    with pytest.raises(WireError):
        ErrorFeedback.from_bytes(b"\xc1garbage", expected=SCHEMA)
    bad = ef.to_dict()
    bad["fraction"] = 2.0
    with pytest.raises(WireError):
        ErrorFeedback.from_dict(bad, expected=SCHEMA)


# --- the sealer: keyframes, deltas, replicas over real envelopes ---------------------------


def _pair(
    refresh_every: int = 0, exchanges_per_round: int = 1
) -> tuple[CompressedSealer, CompressedSealer]:
    ids = {n: generate_identity() for n in ("a", "b")}
    roster = Roster(
        members=tuple(
            Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
            for n, i in ids.items()
        ),
        edges=(("a", "b"),),
    )
    return tuple(  # type: ignore[return-value]
        CompressedSealer(
            EnvelopeSealer(identity=ids[n], roster=roster),
            fraction=0.02,
            refresh_every=refresh_every,
            exchanges_per_round=exchanges_per_round,
        )
        for n in ("a", "b")
    )


def _send(a: CompressedSealer, state: dict[str, torch.Tensor], r: int) -> bytes:
    return a.seal(update_tensors=state, round=r, recipient="b", n_examples=1, epsilon=0.0)


def test_receiver_replica_equals_sender_state_minus_residual() -> None:
    a, b = _pair()
    state = _state(0)
    first = _send(a, state, 0)
    assert header_codec(first) == "raw"
    assert torch.equal(b.open(first, expected_schema=SCHEMA).tensors["w"], state["w"])
    for r in range(1, 8):
        state = {k: v + 0.05 * _state(100 + r)[k] for k, v in state.items()}
        data = _send(a, state, r)
        assert header_codec(data) == "topk"
        assert len(data) < len(first) / 4  # ~300 bytes of envelope framing on both
        got = b.open(data, expected_schema=SCHEMA).tensors
        for k in state:
            torch.testing.assert_close(got[k], state[k] - a.feedback.residual[k])


def test_a_missed_delta_drops_the_replica_until_the_next_keyframe() -> None:
    a, b = _pair(refresh_every=4)
    b.open(_send(a, _state(0), 0), expected_schema=SCHEMA)
    b.open(_send(a, _state(1), 1), expected_schema=SCHEMA)
    _send(a, _state(2), 2)  # lost on the way
    with pytest.raises(DeltaOutOfSync):
        b.open(_send(a, _state(3), 3), expected_schema=SCHEMA)
    keyframe = _send(a, _state(4), 4)
    assert header_codec(keyframe) == "raw"
    assert torch.equal(b.open(keyframe, expected_schema=SCHEMA).tensors["b"], _state(4)["b"])
    b.open(_send(a, _state(5), 5), expected_schema=SCHEMA)  # in sync again


def test_refresh_every_counts_rounds_when_a_round_has_several_exchanges() -> None:
    """Wire rounds are exchange indices (round * 3 + step here); a keyframe every 2 rounds
    is the first exchange of rounds 0, 2, 4: wire rounds 0, 6, 12."""
    a, b = _pair(refresh_every=2, exchanges_per_round=3)
    codecs = []
    for e in range(15):
        data = _send(a, _state(e), e)
        codecs.append(header_codec(data))
        b.open(data, expected_schema=SCHEMA)  # the replica stays in step throughout
    assert [e for e, c in enumerate(codecs) if c == "raw"] == [0, 6, 12]


def test_a_delta_without_any_replica_is_refused() -> None:
    a, b = _pair()
    _send(a, _state(0), 0)  # keyframe lost
    with pytest.raises(DeltaOutOfSync):
        b.open(_send(a, _state(1), 1), expected_schema=SCHEMA)


def test_compression_needs_a_sealer_that_names_its_codec() -> None:
    with pytest.raises(WireError):
        CompressedSealer(object(), fraction=0.1)


def test_topk_through_the_simulator_cuts_bytes_sent_and_keeps_every_replica() -> None:
    from node.sim_config import sim_config_from_mapping
    from node.simulate import Simulation

    def run(**sim: object) -> tuple[int, int]:
        config = sim_config_from_mapping(
            {
                "sim": {"problem": "quadratic", "topology": "ring", "rounds": 6, **sim},
                "data": {"n_sites": 6},
            }
        )
        simulation = Simulation(config)
        records = simulation.run_gossip().records
        rejected = sum(1 for e in simulation.audit.events if e["event"] == "rejected")
        return sum(r.bytes_sent for r in records if r.round == 5), rejected

    raw, raw_rejected = run()
    sparse, sparse_rejected = run(codec="topk", topk_fraction=0.05)
    assert raw_rejected == sparse_rejected == 0  # every delta found its replica in sync
    assert sparse < raw / 3  # 13 of 256 floats + indices, plus the envelope framing


def test_the_residual_survives_a_checkpoint_on_disk(tmp_path: Path) -> None:
    from gossipmed.error_feedback import FEEDBACK_FILE, load_feedback, save_feedback

    assert load_feedback(tmp_path, expected=SCHEMA) is None  # no checkpoint: keyframe next
    ef = ErrorFeedback(fraction=0.05)
    ef.keyframe(_state(0))
    ef.compress(_state(1))
    save_feedback(tmp_path, ef)
    assert (tmp_path / FEEDBACK_FILE).stat().st_mode & 0o777 == 0o600
    back = load_feedback(tmp_path, expected=SCHEMA)
    assert back is not None and back.residual_norm() == ef.residual_norm() > 0
    a, _b = _pair()
    resumed = CompressedSealer(a.inner, fraction=0.05, feedback=back)
    assert not resumed.is_keyframe(2)  # continues with deltas from the saved reference
    (tmp_path / FEEDBACK_FILE).write_bytes(b"\x00not msgpack")
    with pytest.raises(WireError):
        load_feedback(tmp_path, expected=SCHEMA)
