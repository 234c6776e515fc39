"""The test-side adversary seals what the honest sealer refuses to, and it is authentic."""

from __future__ import annotations

import torch
from adversary import enrol

from gossipmed.wire.update import MAX_ROUND

SCHEMA = {"x": ("float32", (2,))}


def test_an_adversarys_envelope_of_any_round_is_authentic_to_its_recipient() -> None:
    world = enrol(["site-00", "mallory"], edges=[("site-00", "mallory")])
    mallory = world.adversary("mallory")
    receiver = world.sealer("site-00")
    seen = []
    for round in (0, 7, MAX_ROUND - 1, MAX_ROUND):
        data = mallory.envelope(to="site-00", round=round, tensors={"x": torch.ones(2)})
        update = receiver.open(
            data, expected_schema=SCHEMA, admit=lambda u: seen.append(u.exchange)
        )
        assert update.sender == "mallory" and update.exchange == (round, 0)
    assert [r for r, _ in seen] == [0, 7, MAX_ROUND - 1, MAX_ROUND]


def test_out_of_range_rounds_are_sealed_and_the_wire_refuses_them() -> None:
    world = enrol(["site-00", "mallory"], edges=[("site-00", "mallory")])
    mallory = world.adversary("mallory")
    receiver = world.sealer("site-00")
    for round in (MAX_ROUND + 1, -1, "7", 2**63 - 1):
        data = mallory.envelope(to="site-00", round=round, tensors={"x": torch.ones(2)})
        try:
            receiver.open(data, expected_schema=SCHEMA)
        except Exception as exc:  # any refusal; none may pass
            assert "round" in str(exc)
        else:
            raise AssertionError(f"round {round!r} passed the wire")
