"""The receiver role: site i relays its neighbourhood's messages and learns only their sum.

Each phase collects one message kind from the parties that completed the previous phase and
closes when all of them have sent or when the integration says the phase deadline passed;
whoever has not sent by then is dropped for the rest of the exchange, and anything they send
later is refused. Below the threshold in any phase the exchange is aborted: no sum, never a
sum in the clear. Masked inputs are added into one running sum as they arrive, so memory is
one vector whatever the neighbourhood size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from gossipmed.errors import ConfigError
from gossipmed.mixing.secagg import primitives as pr
from gossipmed.mixing.secagg.errors import (
    BelowThreshold,
    DeclaredDropped,
    DuplicateMessage,
    ExchangeAborted,
    ForgedMessage,
    InconsistentView,
    MalformedMessage,
    NotAContributor,
    OutOfPhase,
    ReconstructionFailed,
    WrongInstance,
)
from gossipmed.mixing.secagg.fixedpoint import decode, to_tensors
from gossipmed.mixing.secagg.messages import (
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
from gossipmed.mixing.secagg.params import FixedPoint, InstanceConfig, InstanceId, Phase
from gossipmed.mixing.secagg.shamir import reconstruct, share_from_bytes

MAX_RECONSTRUCTION_ATTEMPTS = 64
"""Threshold-sized subsets of shares tried per secret before blaming corrupted shares."""

Outgoing = list[tuple[str, Message]]


def _commits_to(inst: InstanceId, name: str, commit: bytes) -> Callable[[bytes], bool]:
    return lambda b: pr.commitment(inst, name=name, b=b) == commit


def _opens_to(public: bytes) -> Callable[[bytes], bool]:
    return lambda secret: pr.public_from_secret(secret) == public


_CLIENT_KINDS: dict[type, Phase] = {
    AdvertiseKeys: Phase.ADVERTISE,
    SharedKeys: Phase.SHARE,
    MaskedInput: Phase.MASK,
    ListSignature: Phase.CONSISTENCY,
    UnmaskShares: Phase.UNMASK,
}


@dataclass(frozen=True)
class AggregateResult:
    """The unmasked sum of sum_{j in contributors} w_ij * clip(x_j), as exact fixed point."""

    instance: InstanceId
    contributors: tuple[str, ...]  # U3: whose weighted values are in the sum
    reconstructed: tuple[str, ...]  # shared keys then dropped: their pairwise masks rebuilt
    weight_sum: float  # sum of the contributors' weights
    fixed_sum: np.ndarray  # int64, the sum in units of 2**-frac_bits, schema order
    schema: Mapping[str, tuple[int, ...]]
    fixed_point: FixedPoint

    def tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The sum as tensors; within fixed_point.error_bound(len(contributors)) of the exact
        float64 sum per coordinate (plus the rounding of `dtype`)."""
        return to_tensors(
            self.fixed_sum, schema=self.schema, fixed_point=self.fixed_point, dtype=dtype
        )


class Aggregator:
    """Receiver state machine: `receive()` each client message, `deadline()` when a phase's
    time is up; both return the messages to relay. `result()` once `finished`.

    `exclude` names contributors the receiver treats as dropped after sharing their keys:
    their masked inputs are refused (never added), and their pairwise masks are rebuilt from
    the survivors' shares, exactly as for a contributor whose masked input was lost. Their
    self-mask seeds are never revealed, so excluding reveals nothing about their values. It
    is how a receiver whose sums keep failing the public bounds finds the contributor
    responsible (gossipmed.mixing.secagg.suspects); it needs n - |exclude| >= t."""

    def __init__(self, config: InstanceConfig, *, exclude: frozenset[str] = frozenset()) -> None:
        unknown = set(exclude) - set(config.contributors)
        if unknown:
            raise ConfigError(f"cannot exclude non-contributors {sorted(unknown)[:5]}")
        if len(config.contributors) - len(exclude) < config.threshold:
            raise ConfigError(
                f"excluding {len(exclude)} of {len(config.contributors)} contributors leaves "
                f"fewer than the threshold {config.threshold}"
            )
        self.config = config
        self.excluded = frozenset(exclude)
        self.phase = Phase.ADVERTISE
        self.error: ExchangeAborted | None = None
        self._result: AggregateResult | None = None
        self._sent: dict[Phase, dict[str, Message]] = {p: {} for p in _CLIENT_KINDS.values()}
        self._expected: set[str] = set(config.contributors)  # who may send in this phase
        self._total = np.zeros(config.coords, dtype=config.fixed_point.word.newbyteorder("="))
        self._survivors: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.ABORTED)

    def counts(self) -> dict[str, int]:
        """How many parties completed each phase so far (for audit and status)."""
        return {p.name.lower(): len(got) for p, got in self._sent.items()}

    def result(self) -> AggregateResult:
        if self.error is not None:
            raise self.error
        if self._result is None:
            raise OutOfPhase(f"the exchange is still in phase {self.phase.name}")
        return self._result

    def receive(self, sender: str, message: Message) -> Outgoing:
        """Accept one client message from the authenticated `sender`, or raise a typed error
        and change nothing. Returns the relayed messages if this closed the phase."""
        cfg = self.config
        if message.instance != cfg.instance:
            raise WrongInstance("message is bound to another exchange")
        kind_phase = _CLIENT_KINDS.get(type(message))
        if kind_phase is None:
            raise OutOfPhase(f"{message.KIND} is not a message a receiver accepts")
        if sender not in cfg.weights:
            raise NotAContributor(f"{sender!r} is not in {cfg.instance.receiver!r}'s neighbourhood")
        if getattr(message, "sender", None) != sender:
            raise ForgedMessage(f"message names a sender other than {sender!r}")
        if sender in self._sent[kind_phase]:
            raise DuplicateMessage(f"{sender!r} already sent its {message.KIND}")
        if self.finished:
            raise OutOfPhase(f"the exchange is over ({self.phase.name})")
        if kind_phase < self.phase or sender not in self._expected:
            raise DeclaredDropped(f"{sender!r} was declared dropped before its {message.KIND}")
        if kind_phase > self.phase:
            raise OutOfPhase(f"{message.KIND} refused in phase {self.phase.name}")
        self._accept(sender, message)
        if isinstance(message, MaskedInput):  # already in the running sum: keep no copy
            message = replace(message, masked=b"")
        self._sent[self.phase][sender] = message
        if set(self._sent[self.phase]) >= self._expected:
            return self._close()
        return []

    def deadline(self) -> Outgoing:
        """The current phase's deadline passed: whoever has not sent is dropped."""
        if self.finished:
            return []
        return self._close()

    # --- validation on arrival -----------------------------------------------------------

    def _accept(self, sender: str, message: Message) -> None:
        cfg = self.config
        if isinstance(message, AdvertiseKeys):
            transcript = pr.advertise_transcript(cfg.instance, sender, message.c_pk, message.s_pk)
            pr.verify(cfg.sign_keys[sender], transcript, message.signature, who=sender)
            pr.check_public_key(message.c_pk)
            pr.check_public_key(message.s_pk)
            seen = {
                k
                for m in self._sent[Phase.ADVERTISE].values()
                if isinstance(m, AdvertiseKeys)
                for k in (m.c_pk, m.s_pk)
            }
            if message.c_pk == message.s_pk or {message.c_pk, message.s_pk} & seen:
                raise InconsistentView(f"{sender!r} advertised a key already in use")
        elif isinstance(message, SharedKeys):
            if set(message.ciphertexts) != set(self._sent[Phase.ADVERTISE]) - {sender}:
                raise InconsistentView(f"{sender!r} did not encrypt shares to exactly U1")
        elif isinstance(message, MaskedInput):
            if len(message.masked) != cfg.masked_bytes:
                raise MalformedMessage("masked vector length differs from the schema")
            words = np.frombuffer(message.masked, dtype=cfg.fixed_point.word)
            np.add(self._total, words, out=self._total, casting="unsafe")
        elif isinstance(message, ListSignature):
            transcript = pr.survivors_transcript(cfg.instance, self._survivors)
            pr.verify(cfg.sign_keys[sender], transcript, message.signature, who=sender)
        elif isinstance(message, UnmaskShares):
            dropped = set(self._sent[Phase.SHARE]) - set(self._survivors)
            if set(message.pair_shares) != dropped or set(message.self_shares) != set(
                self._survivors
            ):
                raise InconsistentView(f"{sender!r} revealed shares for the wrong parties")
            for kind, shares in (("pair", message.pair_shares), ("self", message.self_shares)):
                for party, share in shares.items():
                    share_from_bytes(share, what=f"{kind} share of {party!r}")

    # --- phase transitions ---------------------------------------------------------------

    def _abort(self, error: ExchangeAborted) -> Outgoing:
        self.error = error
        self.phase = Phase.ABORTED
        self._total = np.zeros(0, dtype=self._total.dtype)
        return []

    def _close(self) -> Outgoing:
        got = self._sent[self.phase]
        t = self.config.threshold
        if len(got) < t:
            name = self.phase.name.lower()
            return self._abort(BelowThreshold(f"{len(got)} parties completed {name}; need {t}"))
        self._expected = set(got)
        if self.phase == Phase.SHARE:  # the excluded are dropped after sharing their keys
            self._expected -= self.excluded
        inst = self.config.instance
        out: Outgoing
        if self.phase == Phase.ADVERTISE:
            entries = tuple(m for _, m in sorted(got.items()) if isinstance(m, AdvertiseKeys))
            out = [(j, KeyRoster(inst, entries)) for j in sorted(got)]
        elif self.phase == Phase.SHARE:
            cts = {j: m.ciphertexts for j, m in got.items() if isinstance(m, SharedKeys)}
            out = [
                (k, ForwardedShares(inst, {j: c[k] for j, c in sorted(cts.items()) if j != k}))
                for k in sorted(got)
            ]
        elif self.phase == Phase.MASK:
            self._survivors = tuple(sorted(got))
            # the excluded are told at once, so they stop waiting (they reveal nothing)
            told = sorted(set(self._survivors) | (self.excluded & set(self._sent[Phase.SHARE])))
            out = [(j, SurvivorList(inst, self._survivors)) for j in told]
        elif self.phase == Phase.CONSISTENCY:
            sigs = {j: m.signature for j, m in sorted(got.items()) if isinstance(m, ListSignature)}
            out = [(j, SignedSurvivors(inst, self._survivors, sigs)) for j in sorted(got)]
        else:
            try:
                self._result = self._unmask()
            except ExchangeAborted as exc:
                return self._abort(exc)
            self.phase = Phase.DONE
            return []
        self.phase = Phase(self.phase + 1)
        return out

    def _unmask(self) -> AggregateResult:
        cfg, inst = self.config, self.config.instance
        adverts = {
            j: m for j, m in self._sent[Phase.ADVERTISE].items() if isinstance(m, AdvertiseKeys)
        }
        commits = {
            j: m.commitment for j, m in self._sent[Phase.SHARE].items() if isinstance(m, SharedKeys)
        }
        answers = {j: m for j, m in self._sent[Phase.UNMASK].items() if isinstance(m, UnmaskShares)}
        survivors = self._survivors
        dropped = sorted(set(commits) - set(survivors))
        total = self._total
        for j in survivors:
            b = self._recover(j, "self", answers, _commits_to(inst, j, commits[j]))
            pr.apply_mask(total, pr.self_seed(inst, name=j, b=b), negate=True)
        for d in dropped:
            s_sk = self._recover(d, "pair", answers, _opens_to(adverts[d].s_pk))
            for j in survivors:
                shared = pr.agree(s_sk, adverts[j].s_pk)
                seed = pr.pair_seed(
                    inst, a=j, b=d, shared=shared, pk_a=adverts[j].s_pk, pk_b=adverts[d].s_pk
                )
                # j added +PRG when j sorts after d, -PRG otherwise: take it back out.
                pr.apply_mask(total, seed, negate=j > d)
        weight_sum = math.fsum(cfg.weights[j] for j in survivors)
        ints = decode(
            total, weight_sum=weight_sum, terms=len(survivors), fixed_point=cfg.fixed_point
        )
        return AggregateResult(
            inst, survivors, tuple(dropped), weight_sum, ints, cfg.schema, cfg.fixed_point
        )

    def _recover(
        self,
        party: str,
        kind: str,
        answers: Mapping[str, UnmaskShares],
        matches: Callable[[bytes], bool],
    ) -> bytes:
        """Reconstruct `party`'s secret from threshold-sized subsets of the revealed shares
        until one matches its public key / commitment (tolerates a few corrupted shares)."""
        points = {}
        for sender, msg in answers.items():
            shares = msg.pair_shares if kind == "pair" else msg.self_shares
            points[self.config.share_x(sender)] = share_from_bytes(shares[party], what=kind)
        subsets = itertools.combinations(sorted(points), self.config.threshold)
        for xs in itertools.islice(subsets, MAX_RECONSTRUCTION_ATTEMPTS):
            secret = reconstruct({x: points[x] for x in xs})
            if secret and matches(secret):
                return secret
        raise ReconstructionFailed(f"the {kind}-mask secret of {party!r} does not reconstruct")
