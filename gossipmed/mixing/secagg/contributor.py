"""The client role: one neighbour j contributing w_ij * x_j to receiver i's exchange.

The contributor trusts nobody: it checks every signature and ciphertext the receiver relays,
shares only among parties whose keys were signed for this instance, signs exactly one
survivor list, and reveals shares exactly once, against that list and only with at least
t valid signatures over it -- so whatever the receiver asks, it never holds both kinds of
share of any party from this contributor. Ephemeral keys and the self-mask seed are made
here from the OS CSPRNG, live only in this object, and are dropped once it finishes.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from nacl.signing import SigningKey

from gossipmed.errors import ConfigError
from gossipmed.mixing.secagg import primitives as pr
from gossipmed.mixing.secagg.errors import (
    BelowThreshold,
    DeclaredDropped,
    InconsistentView,
    NotAContributor,
    OutOfPhase,
    WrongInstance,
)
from gossipmed.mixing.secagg.fixedpoint import encode
from gossipmed.mixing.secagg.guard import ContributionGuard
from gossipmed.mixing.secagg.messages import (
    PLAINTEXT_BYTES,
    AdvertiseKeys,
    ForwardedShares,
    KeyRoster,
    ListSignature,
    MaskedInput,
    Message,
    SharedKeys,
    SignedSurvivors,
    SurvivorList,
    UnmaskShares,
)
from gossipmed.mixing.secagg.params import InstanceConfig, Phase
from gossipmed.mixing.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes, split


@dataclass(frozen=True)
class _Keys:
    c_pk: bytes
    s_pk: bytes


class Contributor:
    """Client state machine. `advertise()` starts it; then feed each message the receiver
    relays to `handle()` and send back what it returns. A ProtocolViolation, or BelowThreshold
    when the receiver relays fewer than t parties, refuses the message and leaves the state
    unchanged; the integration gives up at its deadline with `abort()`."""

    def __init__(
        self,
        config: InstanceConfig,
        *,
        name: str,
        signing_key: SigningKey,
        values: Mapping[str, torch.Tensor],
        guard: ContributionGuard,
    ) -> None:
        if name not in config.weights:
            raise ConfigError(f"{name!r} is not a contributor of {config.instance.receiver!r}")
        if bytes(signing_key.verify_key) != config.sign_keys[name]:
            raise ConfigError(f"the signing key is not {name!r}'s roster key")
        self.config = config
        self.name = name
        self._signing_key = signing_key
        self._encoded: np.ndarray | None = encode(
            values,
            schema=config.schema,
            weight=config.weights[name],
            fixed_point=config.fixed_point,
        )
        guard.admit(config.instance)  # last: a refused value or key never burns the instance
        self._c_sk, c_pk = pr.new_keypair()
        self._s_sk, s_pk = pr.new_keypair()
        self._b: bytes = secrets.token_bytes(32)
        sig = pr.sign(signing_key, pr.advertise_transcript(config.instance, name, c_pk, s_pk))
        self._advert = AdvertiseKeys(config.instance, name, c_pk, s_pk, sig)
        self._keys: dict[str, _Keys] = {}  # U1: party -> its signed ephemeral keys
        self._held: dict[str, tuple[int, int]] = {}  # U2: party -> (s share, b share) for me
        self._survivors: tuple[str, ...] | None = None
        self.phase = Phase.ADVERTISE

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.ABORTED)

    def advertise(self) -> AdvertiseKeys:
        """The phase-0 message (the same object if asked again, so a resend is identical)."""
        return self._advert

    def abort(self) -> None:
        """Give up (the exchange deadline passed): forget every secret of this instance."""
        self._forget()
        self.phase = Phase.ABORTED

    def handle(self, sender: str, message: Message) -> Message:
        """Process a message the receiver relayed; returns the reply for the receiver."""
        inst = self.config.instance
        if message.instance != inst:
            raise WrongInstance("message is bound to another exchange")
        if sender != inst.receiver:
            raise WrongInstance(f"{sender!r} is not the receiver {inst.receiver!r}")
        expected = {
            Phase.ADVERTISE: KeyRoster,
            Phase.SHARE: ForwardedShares,
            Phase.MASK: SurvivorList,
            Phase.CONSISTENCY: SignedSurvivors,
        }.get(self.phase)
        if expected is None or not isinstance(message, expected):
            raise OutOfPhase(f"{message.KIND} refused in phase {self.phase.name}")
        if isinstance(message, KeyRoster):
            return self._on_key_roster(message)
        if isinstance(message, ForwardedShares):
            return self._on_forwarded(message)
        if isinstance(message, SurvivorList):
            return self._on_survivors(message)
        assert isinstance(message, SignedSurvivors)
        return self._on_signed(message)

    # --- phases --------------------------------------------------------------------------

    def _need(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise BelowThreshold(f"{what}: {count} parties, threshold {self.config.threshold}")

    def _on_key_roster(self, msg: KeyRoster) -> SharedKeys:
        cfg, inst = self.config, self.config.instance
        keys: dict[str, _Keys] = {}
        for entry in msg.entries:
            if entry.sender not in cfg.weights:
                raise NotAContributor(f"{entry.sender!r} is not in this neighbourhood")
            pr.verify(
                cfg.sign_keys[entry.sender],
                pr.advertise_transcript(inst, entry.sender, entry.c_pk, entry.s_pk),
                entry.signature,
                who=entry.sender,
            )
            pr.check_public_key(entry.c_pk)
            pr.check_public_key(entry.s_pk)
            keys[entry.sender] = _Keys(entry.c_pk, entry.s_pk)
        mine = keys.get(self.name)
        if mine != _Keys(self._advert.c_pk, self._advert.s_pk):
            raise InconsistentView("the key roster does not carry my own keys")
        all_keys = [k.c_pk for k in keys.values()] + [k.s_pk for k in keys.values()]
        if len(set(all_keys)) != len(all_keys):
            raise InconsistentView("two advertised ephemeral keys are equal")
        self._need(len(keys), "key roster")
        xs = {name: cfg.share_x(name) for name in keys}
        s_shares = split(self._s_sk, xs=list(xs.values()), threshold=cfg.threshold)
        b_shares = split(self._b, xs=list(xs.values()), threshold=cfg.threshold)
        cts = {}
        for other, x in xs.items():
            if other == self.name:
                continue
            key = self._share_key(sender=self.name, recipient=other, keys=keys)
            plain = share_to_bytes(s_shares[x]) + share_to_bytes(b_shares[x])
            cts[other] = pr.seal(key, pr.aad(inst, self.name, other), plain)
        own = cfg.share_x(self.name)
        self._held = {self.name: (s_shares[own], b_shares[own])}
        self._keys = keys
        self.phase = Phase.SHARE
        commit = pr.commitment(inst, name=self.name, b=self._b)
        return SharedKeys(inst, self.name, commit, cts)

    def _share_key(self, *, sender: str, recipient: str, keys: Mapping[str, _Keys]) -> bytes:
        peer = recipient if sender == self.name else sender
        shared = pr.agree(self._c_sk, keys[peer].c_pk)
        return pr.share_key(
            self.config.instance,
            sender=sender,
            recipient=recipient,
            shared=shared,
            sender_pk=keys[sender].c_pk,
            recipient_pk=keys[recipient].c_pk,
        )

    def _on_forwarded(self, msg: ForwardedShares) -> MaskedInput:
        inst = self.config.instance
        authors = set(msg.ciphertexts)
        if self.name in authors or not authors <= set(self._keys):
            raise InconsistentView("forwarded shares come from outside the key roster")
        self._need(len(authors) + 1, "forwarded shares")
        held = dict(self._held)
        for author in sorted(authors):
            key = self._share_key(sender=author, recipient=self.name, keys=self._keys)
            plain = pr.unseal(key, pr.aad(inst, author, self.name), msg.ciphertexts[author])
            if len(plain) != PLAINTEXT_BYTES:
                raise InconsistentView(f"shares from {author!r} have the wrong length")
            held[author] = (
                share_from_bytes(plain[:SHARE_BYTES], what=f"s share from {author!r}"),
                share_from_bytes(plain[SHARE_BYTES:], what=f"b share from {author!r}"),
            )
        seeds = []
        for other in sorted(authors):
            shared = pr.agree(self._s_sk, self._keys[other].s_pk)
            seed = pr.pair_seed(
                inst,
                a=self.name,
                b=other,
                shared=shared,
                pk_a=self._keys[self.name].s_pk,
                pk_b=self._keys[other].s_pk,
            )
            seeds.append((seed, self.name < other))  # +PRG if I sort after the other, else -
        assert self._encoded is not None
        encoded, self._encoded = self._encoded, None
        masked = self._mask(encoded, pr.self_seed(inst, name=self.name, b=self._b), seeds)
        self._held = held
        self.phase = Phase.MASK
        return MaskedInput(inst, self.name, masked.tobytes())

    @staticmethod
    def _mask(
        encoded: np.ndarray, self_seed: bytes, pair_seeds: list[tuple[bytes, bool]]
    ) -> np.ndarray:
        """y = x + PRG(b) + sum of +-PRG(s_jk), in place (tests replace this to prove that
        their checks fail without either kind of mask)."""
        pr.apply_mask(encoded, self_seed)
        for seed, negate in pair_seeds:
            pr.apply_mask(encoded, seed, negate=negate)
        return encoded

    def _on_survivors(self, msg: SurvivorList) -> ListSignature:
        if self.name not in msg.survivors:  # excluded by the receiver: done, nothing to reveal
            self.abort()
            raise DeclaredDropped("the receiver's survivor list leaves this contribution out")
        if not set(msg.survivors) <= set(self._held):
            raise InconsistentView("the survivor list names parties that never shared with me")
        self._need(len(msg.survivors), "survivor list")
        transcript = pr.survivors_transcript(self.config.instance, msg.survivors)
        self._survivors = msg.survivors
        self.phase = Phase.CONSISTENCY
        return ListSignature(
            self.config.instance, self.name, pr.sign(self._signing_key, transcript)
        )

    def _on_signed(self, msg: SignedSurvivors) -> UnmaskShares:
        cfg = self.config
        survivors = self._survivors
        assert survivors is not None
        if msg.survivors != survivors:
            raise InconsistentView("the signed survivor list is not the one I signed")
        if not set(msg.signatures) <= set(survivors):
            raise InconsistentView("a list signature comes from outside the survivor list")
        transcript = pr.survivors_transcript(cfg.instance, survivors)
        for signer, sig in msg.signatures.items():
            pr.verify(cfg.sign_keys[signer], transcript, sig, who=signer)
        self._need(len(msg.signatures), "list signatures")
        dropped = sorted(set(self._held) - set(survivors) - {self.name})
        pair = {d: share_to_bytes(self._held[d][0]) for d in dropped}
        own = {s: share_to_bytes(self._held[s][1]) for s in survivors}
        if set(pair) & set(own):  # cannot happen (disjoint by construction); never risk it
            raise InconsistentView("refusing to reveal both kinds of share of one party")
        self._forget()
        self.phase = Phase.DONE
        return UnmaskShares(cfg.instance, self.name, pair, own)

    def _forget(self) -> None:
        self._c_sk = self._s_sk = self._b = b""
        self._held = {}
        self._encoded = None
