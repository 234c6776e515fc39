"""A dishonest member for tests: a real member's keys, any signed message, at any time.

Every byte from the network is hostile, including a validly signed message from an enrolled
member. `Adversary` holds a real member's identity and the consortium's roster, so what it
seals passes every authenticity check; what it says inside is up to the test: any round
(2**40, 2**40 - 1, negative, not an integer), any step, size, codec, timestamp or tensor
values, and any secure-aggregation message. The honest sealers refuse to seal rounds outside
the protocol's bounds; this helper builds the envelope itself, so production code keeps its
checks.

    world = enrol(["site-00", "site-01", "mallory"], edges=[("site-00", "mallory"), ...])
    mallory = world.adversary("mallory")
    data = mallory.envelope(to="site-00", round=2**40, tensors={"x": torch.ones(4)})
    peer.receive(data)                         # or: await mallory.send("site-00", data)

Send over any transport with `send` (the in-memory one, or a `Libp2pTransport` opened with
`identity.ed25519_seed`; `Adversary.from_site(site_dir)` takes a daemon site folder's keys).

Importable as `adversary` (pytest puts tests/ on sys.path, as for daemon_support).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import torch
from nacl.public import Box, PublicKey

from gossipmed.consortium.crypto import Identity, generate_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster
from gossipmed.mixing.secagg import Message
from gossipmed.wire.envelope import EnvelopeSealer
from gossipmed.wire.envelope_format import PROTOCOL_VERSION, signed_message
from gossipmed.wire.tensors import encode_payload
from node.net.transport import Transport
from node.round.secure_frame import seal_frame

UNSET: Any = object()


@dataclass
class Adversary:
    """One member's real keys, sealing whatever the test asks for."""

    name: str
    identity: Identity
    roster: Roster
    transport: Transport | None = None
    clock: Callable[[], float] = time.time
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    @classmethod
    def from_site(cls, site_dir: Path, *, transport: Transport | None = None) -> Adversary:
        """The member whose daemon site folder this is (its keys and consortium file)."""
        from gossipmed.consortium.site import load_site

        site = load_site(site_dir)
        return cls(
            name=site.config.name,
            identity=site.identity(),
            roster=site.roster(),
            transport=transport,
        )

    # -- envelopes ----------------------------------------------------------------------------

    def envelope(
        self,
        *,
        to: str,
        round: Any,
        step: Any = 0,
        tensors: Mapping[str, torch.Tensor] | None = None,
        payload: bytes | None = None,
        epsilon: float = 0.0,
        codec: str = "raw",
        ts: Any = UNSET,
        sender: str | None = None,
        version: Any = PROTOCOL_VERSION,
        header: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A signed, encrypted envelope to `to` with exactly these header fields (nothing is
        range-checked). `payload` replaces the encoded `tensors`; `header` overrides or adds
        raw header fields last."""
        if payload is None:
            payload = encode_payload(tensors or {}, epsilon=epsilon, codec=codec)
        box_key = self.roster.member(to).box_key
        ct = bytes(Box(self.identity.box_private_key, PublicKey(box_key)).encrypt(payload))
        fields: dict[str, Any] = {
            "v": version,
            "sender": self.name if sender is None else sender,
            "recipient": to,
            "round": round,
            "step": step,
            "ts": float(self.clock()) if ts is UNSET else ts,
            "codec": codec,
            "size": len(payload),
            "roster": self.roster.hash,
            **(header or {}),
        }
        packed = msgpack.packb(fields, use_bin_type=True)
        sig = self.identity.sign(signed_message(packed, ct))
        return bytes(msgpack.packb({"h": packed, "c": ct, "s": sig}, use_bin_type=True))

    def honest_sealer(self) -> EnvelopeSealer:
        """The member's ordinary sealer (range-checked), for honest-looking traffic."""
        return EnvelopeSealer(identity=self.identity, roster=self.roster)

    # -- secure-aggregation frames ------------------------------------------------------------

    def frame(self, message: Message, *, to: str, roster_hash: bytes | None = None) -> bytes:
        """A secure-aggregation frame carrying `message`, signed with the member's key."""
        return seal_frame(
            message,
            sender=self.name,
            recipient=to,
            roster_hash=self.roster.hash if roster_hash is None else roster_hash,
            key=self.identity.signing_key,
        )

    # -- sending ------------------------------------------------------------------------------

    async def send(self, to: str, data: bytes) -> None:
        """Over the adversary's own transport (TransportError as any sender would see it)."""
        if self.transport is None:
            raise RuntimeError("this adversary has no transport")
        await self.transport.send(to, data)
        self.sent.append((to, data))


@dataclass
class World:
    """Enrolled members: identities, one roster, and the honest sealers."""

    identities: dict[str, Identity]
    roster: Roster

    def sealer(self, name: str) -> EnvelopeSealer:
        return EnvelopeSealer(identity=self.identities[name], roster=self.roster)

    def sealers(self) -> dict[str, EnvelopeSealer]:
        return {n: self.sealer(n) for n in self.identities}

    def adversary(self, name: str, *, transport: Transport | None = None) -> Adversary:
        return Adversary(
            name=name, identity=self.identities[name], roster=self.roster, transport=transport
        )


def enrol(
    names: Iterable[str], *, edges: Iterable[tuple[str, str]], topology: str = "custom"
) -> World:
    """Fresh identities for `names` and one roster of all of them with these edges."""
    identities = {n: generate_identity() for n in names}
    roster = Roster(
        members=tuple(
            Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
            for n, i in identities.items()
        ),
        edges=tuple(edges),
        topology=topology,
    )
    return World(identities=identities, roster=roster)
