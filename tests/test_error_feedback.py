"""Top-k gossip with error feedback: nothing a site changes is ever lost, replicas track the
sender exactly, out-of-order deltas are refused, and the residual survives a checkpoint."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import torch

from gossipmed.consortium.crypto import generate_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster
from gossipmed.errors import WireError
from gossipmed.wire.codecs import topk_sparsify
from gossipmed.wire.compression import ReplicaDecoder, TopkEncoder
from gossipmed.wire.envelope import EnvelopeSealer
from gossipmed.wire.error_feedback import DeltaOutOfSync, ErrorFeedback

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


# --- encoder and decoder: keyframes, deltas, replicas over real envelopes -------------------


class Link:
    """Site a's top-k encoder, a -> b over real envelopes, b's replica decoder."""

    def __init__(self, refresh_every: int = 0, steps_per_round: int = 1) -> None:
        ids = {n: generate_identity() for n in ("a", "b")}
        roster = Roster(
            members=tuple(
                Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
                for n, i in ids.items()
            ),
            edges=(("a", "b"),),
        )
        self.encoder = TopkEncoder(fraction=0.02, refresh_every=refresh_every)
        self.sender = EnvelopeSealer(identity=ids["a"], roster=roster)
        self.receiver = EnvelopeSealer(identity=ids["b"], roster=roster)
        self.decoder = ReplicaDecoder(steps_per_round=steps_per_round)

    def send(self, state: dict[str, torch.Tensor], r: int, step: int = 0) -> bytes:
        tensors, codec = self.encoder.encode(state, round=r, step=step)
        return self.sender.seal(
            update_tensors=tensors, round=r, step=step, recipient="b", epsilon=0.0, codec=codec
        )

    def receive(self, data: bytes) -> dict[str, torch.Tensor]:
        return self.decoder.decode(self.receiver.open(data, expected_schema=SCHEMA))


def codec_of(data: bytes) -> str:
    """The codec named in an envelope's (verified) header."""
    outer = msgpack.unpackb(data, raw=False)
    return str(msgpack.unpackb(outer["h"], raw=False)["codec"])


def test_receiver_replica_equals_sender_state_minus_residual() -> None:
    link = Link()
    state = _state(0)
    first = link.send(state, 0)
    assert codec_of(first) == "raw"
    assert torch.equal(link.receive(first)["w"], state["w"])
    for r in range(1, 8):
        state = {k: v + 0.05 * _state(100 + r)[k] for k, v in state.items()}
        data = link.send(state, r)
        assert codec_of(data) == "topk"
        assert len(data) < len(first) / 4  # ~300 bytes of envelope framing on both
        got = link.receive(data)
        for k in state:
            torch.testing.assert_close(got[k], state[k] - link.encoder.feedback.residual[k])


def test_a_missed_delta_drops_the_replica_until_the_next_keyframe() -> None:
    link = Link(refresh_every=4)
    link.receive(link.send(_state(0), 0))
    link.receive(link.send(_state(1), 1))
    link.send(_state(2), 2)  # lost on the way
    with pytest.raises(DeltaOutOfSync):
        link.receive(link.send(_state(3), 3))
    keyframe = link.send(_state(4), 4)
    assert codec_of(keyframe) == "raw"
    assert torch.equal(link.receive(keyframe)["b"], _state(4)["b"])
    link.receive(link.send(_state(5), 5))  # in sync again


def test_refresh_every_counts_rounds_when_a_round_has_several_exchanges() -> None:
    """A keyframe every 2 rounds is the first exchange of rounds 0, 2, 4 (3 exchanges each)."""
    link = Link(refresh_every=2, steps_per_round=3)
    keyframes = []
    for r in range(5):
        for step in range(3):
            data = link.send(_state(3 * r + step), r, step)
            if codec_of(data) == "raw":
                keyframes.append((r, step))
            link.receive(data)  # the replica stays in step throughout
    assert keyframes == [(0, 0), (2, 0), (4, 0)]


def test_a_delta_without_any_replica_is_refused() -> None:
    link = Link()
    link.send(_state(0), 0)  # keyframe lost
    with pytest.raises(DeltaOutOfSync):
        link.receive(link.send(_state(1), 1))


def test_forced_keyframes_are_dense_and_then_deltas_resume() -> None:
    link = Link()
    link.receive(link.send(_state(0), 0))
    assert link.encoder.force_keyframes(2)
    assert [codec_of(link.send(_state(r), r)) for r in (1, 2, 3)] == ["raw", "raw", "topk"]


def test_any_receiver_decodes_a_top_k_sender() -> None:
    """The codec travels in the signed header, so a site that itself sends raw still keeps
    the replica of a top-k neighbour (sites may choose different codecs)."""
    link = Link()
    state = _state(0)
    link.receive(link.send(state, 0))
    state = {k: v + 0.05 * _state(7)[k] for k, v in state.items()}
    got = link.receive(link.send(state, 1))
    assert not torch.equal(got["w"], state["w"])  # a sparse delta, not the state
    torch.testing.assert_close(got["w"], state["w"] - link.encoder.feedback.residual["w"])


def test_topk_through_the_simulator_cuts_bytes_sent_and_keeps_every_replica() -> None:
    from node.sim.config import sim_config_from_mapping
    from node.sim.simulation import Simulation

    def run(**gossip: object) -> tuple[int, int]:
        config = sim_config_from_mapping(
            {
                "sim": {"problem": "quadratic", "topology": "ring", "rounds": 6},
                "gossip": gossip,
                "data": {"n_sites": 6},
            }
        )
        simulation = Simulation(config)
        records = simulation.run_gossip().records
        rejected = sum(1 for e in simulation.audit.events if e["event"] == "rejected")
        return sum(r.bytes_sent for r in records if r.round == 5), rejected

    raw, raw_rejected = run()
    sparse, sparse_rejected = run(codec={"name": "topk", "fraction": 0.05})
    assert raw_rejected == sparse_rejected == 0  # every delta found its replica in sync
    assert sparse < raw / 3  # 13 of 256 floats + indices, plus the envelope framing


def test_the_residual_survives_a_checkpoint_on_disk(tmp_path: Path) -> None:
    from gossipmed.storage.peer_state import component_file, read_checkpoint, save_checkpoint

    encoder = TopkEncoder(fraction=0.05)
    encoder.encode(_state(0), round=0, step=0)
    encoder.encode(_state(1), round=1, step=0)
    save_checkpoint(
        tmp_path,
        site="a",
        round=1,
        epsilon=0.0,
        state=_state(1),
        replay_state=None,
        components={"encoder": encoder},
    )
    path = tmp_path / component_file("encoder")
    assert path.stat().st_mode & 0o777 == 0o600
    saved = read_checkpoint(tmp_path, site="a").components["encoder"]
    resumed = TopkEncoder(fraction=0.05)
    resumed.load_state_dict(saved, schema=SCHEMA)
    assert resumed.feedback.residual_norm() == encoder.feedback.residual_norm() > 0
    assert not resumed.is_keyframe(2, 0)  # continues with deltas from the saved reference
