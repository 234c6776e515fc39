"""Adversaries: a lying receiver, late and misplaced messages, forged or misbound content,
corrupted shares and wrapped inputs. Every refusal is a typed error and changes no state."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from nacl.signing import SigningKey

from gossipmed.mixing.secagg import (
    AdvertiseKeys,
    AggregateResult,
    Aggregator,
    BelowThreshold,
    ContributionGuard,
    Contributor,
    DeclaredDropped,
    DuplicateMessage,
    ExchangeAborted,
    FixedPoint,
    ForgedMessage,
    ForwardedShares,
    InconsistentView,
    InstanceConfig,
    InstanceId,
    KeyRoster,
    ListSignature,
    MaskedInput,
    Message,
    NotAContributor,
    OutOfPhase,
    Phase,
    ProtocolViolation,
    ReconstructionFailed,
    SharedKeys,
    SignedSurvivors,
    SumOutOfRange,
    SurvivorList,
    UnmaskShares,
    WrongInstance,
)
from gossipmed.mixing.secagg import primitives as pr
from gossipmed.mixing.secagg.shamir import SHARE_BYTES

ROSTER = b"\x33" * 32
RECEIVER = "hub"
FP = FixedPoint()
SCHEMA = {"x": (6,)}
WEIGHT = 0.12  # each contributor; the weights of a neighbourhood of up to 7 sum below 1
ALL_KEYS = {n: SigningKey.generate() for n in "bcdefgh"}


class Hood:
    """One receiver's neighbourhood driven by hand, so a test can play the receiver."""

    def __init__(self, names: str = "bcde", threshold: int = 3, round: int = 1) -> None:
        self.names = list(names)
        self.config = InstanceConfig(
            instance=InstanceId(ROSTER, RECEIVER, round, 0),
            weights={n: WEIGHT for n in self.names},
            sign_keys={n: bytes(ALL_KEYS[n].verify_key) for n in self.names},
            schema=SCHEMA,
            threshold=threshold,
            fixed_point=FP,
        )
        self.values = {
            n: {"x": torch.linspace(-1, 1, 6) * (i + 1)} for i, n in enumerate(self.names)
        }
        self.clients = {
            n: Contributor(
                self.config,
                name=n,
                signing_key=ALL_KEYS[n],
                values=self.values[n],
                guard=ContributionGuard.after_training(round),
            )
            for n in self.names
        }
        self.agg = Aggregator(self.config)

    def expected(self, names: tuple[str, ...]) -> np.ndarray:
        return sum(WEIGHT * self.values[n]["x"].double() for n in names).numpy()  # type: ignore[union-attr]

    def to_clients(self, relayed: list[tuple[str, Message]]) -> list[tuple[str, Message]]:
        return [(j, self.clients[j].handle(RECEIVER, m)) for j, m in relayed]

    def to_agg(self, replies: list[tuple[str, Message]]) -> list[tuple[str, Message]]:
        out: list[tuple[str, Message]] = []
        for j, m in replies:
            out += self.agg.receive(j, m)
        return out

    def honest_until(self, phase: Phase) -> list[tuple[str, Message]]:
        """Run honestly; return the client replies of `phase`, not yet delivered."""
        replies: list[tuple[str, Message]] = [(n, c.advertise()) for n, c in self.clients.items()]
        while self.agg.phase < phase:
            replies = self.to_clients(self.to_agg(replies))
        return replies


def _assert_close(result: AggregateResult, expected: np.ndarray) -> None:
    got = result.tensors(torch.float64)["x"].numpy()
    assert np.abs(got - expected).max() <= FP.error_bound(len(result.contributors))


# --- the lying receiver --------------------------------------------------------------------


def _revealed_kinds(replies: list[UnmaskShares]) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    for r in replies:
        for party in r.pair_shares:
            kinds.setdefault(party, set()).add("pair")
        for party in r.self_shares:
            kinds.setdefault(party, set()).add("self")
    return kinds


def _lists(names: str, threshold: int) -> list[tuple[str, ...]]:
    return [
        tuple(c) for k in range(threshold, len(names) + 1) for c in itertools.combinations(names, k)
    ]


def _strategies(names: str, threshold: int) -> list[dict[str, tuple[str, ...]]]:
    """Which survivor list the liar tells each client: the same list to all, or the first k
    clients one list and the rest another (every list against the full one, and for the
    smallest neighbourhood every ordered pair of lists)."""
    lists, full = _lists(names, threshold), tuple(names)
    pairs = (
        list(itertools.permutations(lists, 2))
        if len(names) == 4
        else [(a, full) for a in lists if a != full]
    )
    told = [{n: lst for n in names} for lst in lists]
    for first, second in pairs:
        for k in range(1, len(names)):
            told.append({n: first if i < k else second for i, n in enumerate(names)})
    return told


def _play_liar(
    names: str, threshold: int, told: dict[str, tuple[str, ...]]
) -> tuple[list[UnmaskShares], dict[tuple[str, ...], dict[str, bytes]]]:
    """The liar holds every masked input, tells each client its list, then forwards to every
    client every list it told anyone, with the signatures over it (all of them, and only
    those by its members) and with every signature it has."""
    hood = Hood(names, threshold)
    assert len(hood.honest_until(Phase.MASK)) == len(names)  # every masked input is in hand
    inst, clients = hood.config.instance, hood.clients
    signed: dict[tuple[str, ...], dict[str, bytes]] = {}
    for n, survivors in told.items():
        if n not in survivors:  # a client left out of its list stops: it signs nothing
            with pytest.raises(DeclaredDropped):
                clients[n].handle(RECEIVER, SurvivorList(inst, survivors))
            assert clients[n].finished
            continue
        reply = clients[n].handle(RECEIVER, SurvivorList(inst, survivors))
        assert isinstance(reply, ListSignature)
        signed.setdefault(survivors, {})[n] = reply.signature
        with pytest.raises(OutOfPhase):  # a client signs one list only
            clients[n].handle(RECEIVER, SurvivorList(inst, tuple(names)))
    every_sig = {n: sig for sigs in signed.values() for n, sig in sigs.items()}
    revealed: list[UnmaskShares] = []
    for n in names:
        for survivors, sigs in signed.items():
            members = {k: v for k, v in sigs.items() if k in survivors}
            for offered in (sigs, members, every_sig):
                try:
                    reply = clients[n].handle(RECEIVER, SignedSurvivors(inst, survivors, offered))
                except (ProtocolViolation, BelowThreshold):
                    continue
                assert isinstance(reply, UnmaskShares)
                revealed.append(reply)
    return revealed, signed


@pytest.mark.parametrize(("names", "threshold"), [("bcde", 3), ("bcdef", 4), ("bcdefg", 4)])
def test_a_lying_receiver_never_obtains_both_kinds_of_share_of_any_party(
    names: str, threshold: int
) -> None:
    """Whatever lists the liar tells whom, no party's mask-key shares and self-mask shares
    are both revealed, so no masked input it holds can be opened."""
    opened_dropped = 0
    for told in _strategies(names, threshold):
        revealed, signed = _play_liar(names, threshold, told)
        kinds = _revealed_kinds(revealed)
        assert all(len(k) == 1 for k in kinds.values()), (told, kinds)
        # With a strict-majority threshold at most one list gathers t signatures, and only
        # its signers reveal, exactly the shares that list calls for.
        winners = [lst for lst, sigs in signed.items() if len(set(sigs) & set(lst)) >= threshold]
        assert len(winners) <= 1
        if winners:
            (winner,) = winners
            assert {r.sender for r in revealed} == set(signed[winner])
            assert all(set(r.self_shares) == set(winner) for r in revealed)
            opened_dropped += any(r.pair_shares for r in revealed)
        else:
            assert revealed == []
    assert opened_dropped > 0  # the liar did get dropped parties' key shares somewhere


def test_without_the_signature_threshold_the_liar_would_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same liar against clients that skip the threshold check on signatures: it then gets
    # a party's mask-key shares from one group and its self-mask shares from the other.
    monkeypatch.setattr(Contributor, "_need", lambda self, count, what: None)
    told = {"b": ("b", "c", "d"), "c": ("b", "c", "d"), "d": tuple("bcde"), "e": tuple("bcde")}
    revealed, _ = _play_liar("bcde", 3, told)
    assert _revealed_kinds(revealed)["e"] == {"pair", "self"}


def test_a_receiver_splitting_the_clients_between_two_lists_gets_nothing() -> None:
    hood = Hood("bcde", 3)
    hood.honest_until(Phase.MASK)
    inst, c = hood.config.instance, hood.clients
    l1, l2 = ("b", "c", "d"), ("b", "c", "d", "e")  # "e dropped" vs "nobody dropped"
    sig = {
        n: c[n].handle(RECEIVER, SurvivorList(inst, told))
        for n, told in (("b", l1), ("c", l1), ("d", l2), ("e", l2))
    }
    s1 = {n: m.signature for n, m in sig.items() if n in "bc" and isinstance(m, ListSignature)}
    s2 = {n: m.signature for n, m in sig.items() if n in "de" and isinstance(m, ListSignature)}
    with pytest.raises(BelowThreshold):  # two signatures, threshold three
        c["b"].handle(RECEIVER, SignedSurvivors(inst, l1, s1))
    with pytest.raises(ForgedMessage):  # d and e signed l2, not l1
        c["b"].handle(RECEIVER, SignedSurvivors(inst, l1, {**s1, "d": s2["d"]}))
    with pytest.raises(InconsistentView):  # b signed l1, not l2
        c["b"].handle(RECEIVER, SignedSurvivors(inst, l2, {**s1, **s2}))
    with pytest.raises(BelowThreshold):
        c["d"].handle(RECEIVER, SignedSurvivors(inst, l2, s2))


def test_a_client_reveals_shares_once_whatever_it_is_asked_later() -> None:
    hood = Hood("bcde", 3)
    signed = hood.to_agg(hood.honest_until(Phase.CONSISTENCY))
    name, message = signed[0]
    reply = hood.clients[name].handle(RECEIVER, message)
    assert isinstance(reply, UnmaskShares) and reply.pair_shares == {}
    for again in (message, SurvivorList(hood.config.instance, ("b", "c", "d"))):
        with pytest.raises(OutOfPhase):
            hood.clients[name].handle(RECEIVER, again)


# --- the receiver refuses misplaced, late and forged messages ------------------------------


def test_a_late_masked_input_from_a_party_declared_dropped_is_refused() -> None:
    hood = Hood("bcde", 3)
    replies = hood.honest_until(Phase.MASK)
    late = [(j, m) for j, m in replies if j == "e"]
    on_time = [(j, m) for j, m in replies if j != "e"]
    assert hood.to_agg(on_time) == []  # still waiting for e
    relayed = hood.agg.deadline()  # the masked-input deadline passes: e is dropped
    assert all(isinstance(m, SurvivorList) and m.survivors == ("b", "c", "d") for _, m in relayed)
    with pytest.raises(DeclaredDropped):
        hood.agg.receive("e", late[0][1])
    replies = hood.to_clients(relayed)
    with pytest.raises(DeclaredDropped):
        hood.agg.receive("e", late[0][1])  # still refused in the next phase
    unmask = hood.to_clients(hood.to_agg(replies))
    assert hood.to_agg(unmask) == [] and hood.agg.finished
    result = hood.agg.result()
    assert result.contributors == ("b", "c", "d") and result.reconstructed == ("e",)
    _assert_close(result, hood.expected(("b", "c", "d")))


def _signed_advert(inst: InstanceId, name: str, c_pk: bytes, s_pk: bytes) -> AdvertiseKeys:
    sig = pr.sign(ALL_KEYS[name], pr.advertise_transcript(inst, name, c_pk, s_pk))
    return AdvertiseKeys(inst, name, c_pk, s_pk, sig)


def test_misplaced_duplicate_foreign_and_misbound_messages_are_refused() -> None:
    hood = Hood("bcde", 3)
    agg, inst = hood.agg, hood.config.instance
    advert = hood.clients["b"].advertise()
    outsider = Hood("bcdef", 4).clients["f"].advertise()
    other_round = Hood("bcde", 3, round=2).clients["c"].advertise()
    agg.receive("b", advert)
    cases: list[tuple[str, Message, type[Exception]]] = [
        ("b", advert, DuplicateMessage),
        ("f", outsider, NotAContributor),
        ("c", advert, ForgedMessage),  # c relays b's message as its own
        ("c", other_round, WrongInstance),
        ("c", MaskedInput(inst, "c", bytes(hood.config.masked_bytes)), OutOfPhase),
        ("c", KeyRoster(inst, (advert,)), OutOfPhase),  # a receiver-to-client kind
        ("c", replace(hood.clients["c"].advertise(), signature=bytes(64)), ForgedMessage),
        ("c", replace(hood.clients["c"].advertise(), s_pk=advert.s_pk), ForgedMessage),
        ("c", _signed_advert(inst, "c", bytes(32), advert.c_pk[::-1]), ForgedMessage),  # low order
        ("c", _signed_advert(inst, "c", advert.c_pk, b"\x09" * 32), InconsistentView),  # b's key
    ]
    for sender, message, error in cases:
        with pytest.raises(error):
            agg.receive(sender, message)
    assert agg.counts()["advertise"] == 1  # nothing refused was recorded
    # and the exchange still completes exactly
    rest = [(n, hood.clients[n].advertise()) for n in "cde"]
    replies = hood.to_clients(hood.to_agg(rest))
    while not agg.finished:
        replies = hood.to_clients(hood.to_agg(replies))
    _assert_close(agg.result(), hood.expected(("b", "c", "d", "e")))


def test_shares_not_encrypted_to_exactly_the_key_roster_are_refused() -> None:
    hood = Hood("bcde", 3)
    b = dict(hood.honest_until(Phase.SHARE))["b"]
    assert isinstance(b, SharedKeys)
    short = replace(b, ciphertexts={k: v for k, v in b.ciphertexts.items() if k != "c"})
    with pytest.raises(InconsistentView):
        hood.agg.receive("b", short)
    extra = replace(b, ciphertexts={**b.ciphertexts, "b": b.ciphertexts["c"]})
    with pytest.raises(InconsistentView):
        hood.agg.receive("b", extra)
    hood.agg.receive("b", b)


def test_a_signature_over_another_survivor_list_is_refused() -> None:
    hood = Hood("bcde", 3)
    hood.honest_until(Phase.CONSISTENCY)
    inst = hood.config.instance
    wrong = pr.sign(ALL_KEYS["b"], pr.survivors_transcript(inst, ["b", "c", "d"]))
    with pytest.raises(ForgedMessage):
        hood.agg.receive("b", ListSignature(inst, "b", wrong))


def test_unmask_shares_for_the_wrong_parties_are_refused() -> None:
    hood = Hood("bcde", 3)
    u = dict(hood.honest_until(Phase.UNMASK))["b"]
    assert isinstance(u, UnmaskShares)
    moved = replace(
        u,
        self_shares={k: v for k, v in u.self_shares.items() if k != "c"},
        pair_shares={"c": u.self_shares["c"]},
    )
    missing = replace(u, self_shares={k: v for k, v in u.self_shares.items() if k != "c"})
    for bad in (moved, missing):
        with pytest.raises(InconsistentView):
            hood.agg.receive("b", bad)
    hood.agg.receive("b", u)


# --- the contributor refuses what an honest receiver would never relay ---------------------


def test_a_contributor_checks_everything_the_receiver_relays() -> None:
    hood = Hood("bcde", 3)
    inst, client = hood.config.instance, hood.clients["b"]
    relayed = hood.to_agg([(n, c.advertise()) for n, c in hood.clients.items()])
    roster = dict(relayed)["b"]
    assert isinstance(roster, KeyRoster)
    entries = list(roster.entries)
    mine = next(e for e in entries if e.sender == "b")
    outsider = Hood("bcdef", 4).clients["f"].advertise()
    bad_rosters: list[tuple[str, Message, type[Exception]]] = [
        ("c", roster, WrongInstance),  # not from the receiver
        (RECEIVER, replace(roster, instance=replace(inst, round=9)), WrongInstance),
        (RECEIVER, KeyRoster(inst, tuple(e for e in entries if e.sender != "b")), InconsistentView),
        (
            RECEIVER,
            KeyRoster(
                inst,
                tuple(replace(e, signature=bytes(64)) if e.sender == "c" else e for e in entries),
            ),
            ForgedMessage,
        ),
        (RECEIVER, KeyRoster(inst, (*entries, replace(outsider, instance=inst))), NotAContributor),
        (RECEIVER, KeyRoster(inst, (mine, *entries[2:3])), BelowThreshold),
        (RECEIVER, ForwardedShares(inst, {}), OutOfPhase),
    ]
    for sender, message, error in bad_rosters:
        with pytest.raises(error):
            client.handle(sender, message)
    forwarded = dict(hood.to_agg(hood.to_clients(relayed)))
    fwd = forwarded["b"]
    assert isinstance(fwd, ForwardedShares)
    ct = fwd.ciphertexts["c"]
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    swapped = {"c": fwd.ciphertexts["d"], "d": fwd.ciphertexts["c"], "e": fwd.ciphertexts["e"]}
    for message, error in (
        (replace(fwd, ciphertexts={**fwd.ciphertexts, "c": tampered}), ForgedMessage),
        (replace(fwd, ciphertexts=swapped), ForgedMessage),  # c's shares passed off as d's
        (replace(fwd, ciphertexts={**fwd.ciphertexts, "b": ct}), InconsistentView),
        (replace(fwd, ciphertexts={"c": ct}), BelowThreshold),
    ):
        with pytest.raises(error):
            client.handle(RECEIVER, message)
    reply = client.handle(RECEIVER, fwd)  # the genuine message still works
    assert isinstance(reply, MaskedInput)
    for message, error in (
        (SurvivorList(inst, ("b", "c", "f")), InconsistentView),
        (SurvivorList(inst, ("b", "c")), BelowThreshold),
    ):
        with pytest.raises(error):
            client.handle(RECEIVER, message)


def test_an_aborted_contributor_forgets_its_secrets_and_refuses_everything() -> None:
    hood = Hood("bcde", 3)
    relayed = hood.to_agg([(n, c.advertise()) for n, c in hood.clients.items()])
    client = hood.clients["b"]
    client.abort()
    assert client.finished and client.phase == Phase.ABORTED
    with pytest.raises(OutOfPhase):
        client.handle(RECEIVER, dict(relayed)["b"])


# --- corrupted shares and wrapped inputs ---------------------------------------------------


def _corrupt(u: UnmaskShares, party: str) -> UnmaskShares:
    bad = (int.from_bytes(u.self_shares[party], "big") ^ 1).to_bytes(SHARE_BYTES, "big")
    return replace(u, self_shares={**u.self_shares, party: bad})


def test_a_corrupted_unmask_share_is_outvoted_when_more_than_t_answer() -> None:
    hood = Hood("bcdef", 4)
    unmask = hood.honest_until(Phase.UNMASK)
    unmask = [
        (j, _corrupt(m, "c") if j == "d" and isinstance(m, UnmaskShares) else m) for j, m in unmask
    ]
    hood.to_agg(unmask)
    result = hood.agg.result()
    _assert_close(result, hood.expected(tuple("bcdef")))


def test_shares_that_reconstruct_nothing_abort_the_exchange() -> None:
    hood = Hood("bcde", 3)
    unmask = hood.honest_until(Phase.UNMASK)
    unmask = [
        (j, _corrupt(m, "c") if j in "de" and isinstance(m, UnmaskShares) else m) for j, m in unmask
    ]
    hood.to_agg(unmask)
    assert hood.agg.phase == Phase.ABORTED
    with pytest.raises(ReconstructionFailed):
        hood.agg.result()


def test_a_wrapped_masked_input_aborts_the_exchange_instead_of_moving_the_sum() -> None:
    hood = Hood("bcde", 3)
    masked = hood.honest_until(Phase.MASK)
    evil = []
    for j, m in masked:
        if j == "c" and isinstance(m, MaskedInput):
            words = np.frombuffer(m.masked, dtype=FP.word).copy()
            words[3] += np.uint64(2**60)  # far outside sum(w) x range, invisible under masks
            m = replace(m, masked=words.tobytes())
        evil.append((j, m))
    replies = hood.to_clients(hood.to_agg(evil))
    while not hood.agg.finished:
        replies = hood.to_clients(hood.to_agg(replies))
    with pytest.raises(SumOutOfRange):
        hood.agg.result()
    assert isinstance(hood.agg.error, ExchangeAborted)


def test_a_refused_message_leaves_the_exchange_able_to_finish() -> None:
    hood = Hood("bcde", 3)
    advert = hood.clients["b"].advertise()
    with pytest.raises(ForgedMessage):
        hood.agg.receive("b", replace(advert, signature=bytes(64)))
    replies: list[tuple[str, Message]] = [(n, c.advertise()) for n, c in hood.clients.items()]
    while not hood.agg.finished:
        replies = hood.to_clients(hood.to_agg(replies))
    _assert_close(hood.agg.result(), hood.expected(tuple("bcde")))


def test_the_result_is_unavailable_until_the_exchange_ends() -> None:
    hood = Hood("bcde", 3)
    with pytest.raises(OutOfPhase):
        hood.agg.result()
    assert hood.agg.deadline() == [] and isinstance(hood.agg.error, BelowThreshold)
    assert hood.agg.deadline() == []
    with pytest.raises(BelowThreshold):
        hood.agg.result()
    with pytest.raises(OutOfPhase):
        hood.agg.receive("b", hood.clients["b"].advertise())


def test_messages_to_the_wrong_role_are_refused() -> None:
    hood = Hood("bcde", 3)
    advert = hood.clients["b"].advertise()
    assert isinstance(advert, AdvertiseKeys)
    with pytest.raises(OutOfPhase):
        hood.clients["c"].handle(RECEIVER, advert)
