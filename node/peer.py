"""One site's gossip round, transport-agnostic and synchronous.

The round is split into phases so the same object serves a lockstep, deterministic simulator
(which calls the phases itself) and the async daemon (node.round_driver, which interleaves
`receive` with waiting):

    outgoing(r)        train the local steps, then seal the new state once per neighbour
    receive(data)      open/verify one envelope, buffer it by exchange; never raises
    heard(r, s)        which neighbours' updates for exchange s of round r have arrived
    mix_step(r, s)     mix exchange s (not the last) into the state sent at exchange s + 1
    complete_round(r)  mix the last exchange (silent neighbours' weight -> self), checkpoint,
                       evaluate, return (and optionally write) one metrics record

A round has `gossip_steps` exchanges (multi-gossip): training happens once, then the state is
sent and mixed `gossip_steps` times, so one round contracts disagreement by about
lambda2 ** gossip_steps instead of lambda2. On a sparse graph (a ring: lambda2 0.8) one
exchange cannot undo what a round of non-IID training pulls sites apart; a few cheap
exchanges can (BENCHMARKS.md, issue #4). On the wire an envelope's round field carries the
exchange index round * gossip_steps + step, so the replay guard and the top-k replicas see
one strictly increasing sequence per sender; every site of a run must use the same value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgpack
import networkx as nx
import torch

from gossipmed.aggregate import DEFAULT_RULE, get_rule, mix
from gossipmed.checkpoint import save_state
from gossipmed.errors import GossipmedError, PrivacyBudgetExceeded, WireError
from gossipmed.learner import AdapterState, Learner
from gossipmed.metrics import MetricsWriter, RoundRecord, local_consensus_distance
from topology.mixing import DEFAULT_RULE as DEFAULT_MIXING_RULE
from topology.mixing import mixing_weights
from topology.spectral import gossip_steps_for

Schema = dict[str, tuple[str, tuple[int, ...]]]
"""Tensor name -> (dtype name, shape): what a neighbour's update must look like, exactly."""


@dataclass(frozen=True)
class OpenedUpdate:
    """A verified, decrypted, decoded neighbour update (what PlaintextSealer returns)."""

    sender: str
    round: int
    tensors: dict[str, torch.Tensor]
    n_examples: int
    epsilon: float


class ReceivedUpdate(Protocol):
    """What the peer needs from an opened update (gossipmed.envelope.Update has it)."""

    @property
    def sender(self) -> str: ...

    @property
    def round(self) -> int: ...

    @property
    def tensors(self) -> dict[str, torch.Tensor]: ...


class Sealer(Protocol):
    """Turns a state into bytes for one recipient and back (gossipmed.envelope in production)."""

    def seal(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        recipient: str,
        n_examples: int,
        epsilon: float,
    ) -> bytes: ...

    def open(self, data: bytes, *, expected_schema: Schema) -> ReceivedUpdate:
        """Verify then decode; raises a GossipmedError subclass on anything wrong."""
        ...


class AuditSink(Protocol):
    def record(self, event: str, **fields: Any) -> None: ...


class AuditLogSink:
    """Routes peer events to a site's gossipmed.audit.AuditLog file (the daemon's sink)."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def record(self, event: str, **fields: Any) -> None:
        if event not in ("accepted", "rejected"):
            return
        self.log.record(
            outcome=event,
            reason=str(fields.get("reason", "ok"))
            + (f": {fields['detail']}" if "detail" in fields else ""),
            sender=fields.get("sender"),
            round=fields.get("msg_round", fields.get("round")),
            payload_hash=str(fields.get("payload_hash", "")),
            size=fields.get("size"),
        )


class NullAudit:
    def record(self, event: str, **fields: Any) -> None:
        return None


class ListAudit:
    """Keeps audit events in memory (simulator, tests)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


def state_schema(state: Mapping[str, torch.Tensor]) -> Schema:
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in state.items()}


# --- plaintext sealing: an explicit, unauthenticated option for fast experiments -----------

PLAINTEXT_VERSION = 1
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class PlaintextSealer:
    """msgpack framing with no signature or encryption.

    Only for simulations that ask for `sealing = "plaintext"`: it exercises the same
    schema/size checks as the real envelope but proves nothing about who sent the bytes.
    """

    def __init__(self, *, identity: str, max_bytes: int = 1 << 30) -> None:
        self.identity = identity
        self.max_bytes = max_bytes

    def seal(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        recipient: str,
        n_examples: int,
        epsilon: float,
    ) -> bytes:
        tensors = {
            k: {
                "dtype": str(v.dtype).removeprefix("torch."),
                "shape": list(v.shape),
                "data": v.detach()
                .contiguous()
                .cpu()
                .reshape(-1)
                .view(torch.uint8)
                .numpy()
                .tobytes(),
            }
            for k, v in update_tensors.items()
        }
        body = {
            "v": PLAINTEXT_VERSION,
            "sender": self.identity,
            "recipient": recipient,
            "round": round,
            "n_examples": n_examples,
            "epsilon": epsilon,
            "tensors": tensors,
        }
        return bytes(msgpack.packb(body, use_bin_type=True))

    def open(self, data: bytes, *, expected_schema: Schema) -> OpenedUpdate:
        if len(data) > self.max_bytes:
            raise WireError(f"message of {len(data)} bytes exceeds the {self.max_bytes} limit")
        try:
            body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=len(data))
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise WireError(f"not a msgpack update: {exc}") from None
        if not isinstance(body, dict) or body.get("v") != PLAINTEXT_VERSION:
            raise WireError("unknown update version")
        try:
            sender, recipient = str(body["sender"]), str(body["recipient"])
            round_ = int(body["round"])
            n_examples, epsilon = int(body["n_examples"]), float(body["epsilon"])
            raw = body["tensors"]
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed update header: {exc}") from None
        if recipient != self.identity:
            raise WireError(f"update addressed to {recipient!r}, not to {self.identity!r}")
        if not isinstance(raw, dict) or set(raw) != set(expected_schema):
            raise WireError("update tensors do not match the expected schema")
        tensors: AdapterState = {}
        for name, (dtype_name, shape) in expected_schema.items():
            entry = raw[name]
            if not isinstance(entry, dict) or entry.get("dtype") != dtype_name:
                raise WireError(f"tensor {name!r} has the wrong dtype")
            if list(entry.get("shape", [])) != list(shape):
                raise WireError(f"tensor {name!r} has the wrong shape")
            dtype = _DTYPES.get(dtype_name)
            if dtype is None:
                raise WireError(f"dtype {dtype_name!r} is not allowed")
            payload = entry.get("data")
            numel = 1
            for dim in shape:
                numel *= dim
            if not isinstance(payload, bytes) or len(payload) != numel * dtype.itemsize:
                raise WireError(f"tensor {name!r} has {len(payload or b'')} bytes, expected more")
            tensors[name] = torch.frombuffer(bytearray(payload), dtype=dtype).reshape(shape)
        return OpenedUpdate(
            sender=sender,
            round=round_,
            tensors=tensors,
            n_examples=n_examples,
            epsilon=epsilon,
        )


# --- who mixes with whom, per round ---------------------------------------------------------


def site_names(nodes: Sequence[Hashable]) -> dict[Hashable, str]:
    """Roster names for graph nodes: ints become site-00, site-01...; strings stay as they are."""
    width = max(2, len(str(max(len(nodes) - 1, 0))))
    return {v: (f"site-{v:0{width}d}" if isinstance(v, int) else str(v)) for v in nodes}


@dataclass(frozen=True)
class MixingSchedule:
    """Per-round mixing rows by site name; round r uses rows[r % len(rows)]."""

    rows: tuple[Mapping[str, Mapping[str, float]], ...]

    @classmethod
    def from_graphs(
        cls, graphs: Sequence[nx.Graph], *, rule: str = DEFAULT_MIXING_RULE
    ) -> MixingSchedule:
        names = site_names(list(graphs[0].nodes))
        rows = []
        for g in graphs:
            w = mixing_weights(g, rule=rule)
            rows.append({names[u]: {names[v]: x for v, x in row.items()} for u, row in w.items()})
        return cls(rows=tuple(rows))

    @property
    def sites(self) -> list[str]:
        return list(self.rows[0])

    def row(self, round: int, site: str) -> Mapping[str, float]:
        return self.rows[round % len(self.rows)][site]

    def neighbours(self, round: int, site: str) -> frozenset[str]:
        return frozenset(self.row(round, site)) - {site}


# --- the peer -------------------------------------------------------------------------------

AUTO_GOSSIP_STEPS = 0
MAX_GOSSIP_STEPS = 64


def resolve_gossip_steps(setting: int, *, lam2: float) -> int:
    """`gossip_steps` from sim.toml/site.toml: 0 (the default) picks the fewest exchanges per
    round that shrink disagreement to AUTO_CONTRACTION (topology.spectral), so every site
    that reads the same topology picks the same number."""
    if setting == AUTO_GOSSIP_STEPS:
        return gossip_steps_for(lam2)
    if not 1 <= setting <= MAX_GOSSIP_STEPS:
        raise GossipmedError(f"gossip_steps must be 0 (auto) or 1..{MAX_GOSSIP_STEPS}")
    return setting


@dataclass
class _RoundWork:
    """What outgoing(r) left for the exchanges and complete_round(r)."""

    round: int
    state: AdapterState
    step: int = 0  # the exchange now open (0 .. gossip_steps - 1)
    train_loss: float | None = None
    trained: bool = False
    bytes_sent: int = 0
    bytes_received: int = 0
    heard: set[str] = field(default_factory=set)  # in any exchange of the round
    heard_last: frozenset[str] | None = None  # in the previous exchange
    local_cd: float | None = None  # before the first exchange's mix
    seconds: float = 0.0


@dataclass
class _Inbox:
    updates: dict[str, ReceivedUpdate] = field(default_factory=dict)
    bytes_received: int = 0


class Peer:
    """The gossip logic of one site; see the module docstring for the phase order."""

    def __init__(
        self,
        *,
        name: str,
        learner: Learner,
        sealer: Sealer,
        schedule: MixingSchedule,
        local_steps: int,
        gossip_steps: int = 1,
        train: bool = True,
        aggregation: str = DEFAULT_RULE,
        eval_every: int = 1,
        total_rounds: int | None = None,
        start_round: int = 0,
        max_future_rounds: int = 2,
        audit: AuditSink | None = None,
        checkpoint_dir: Path | None = None,
        metrics: MetricsWriter | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        get_rule(aggregation)  # fail at construction, not in round 40
        if name not in schedule.sites:
            raise GossipmedError(f"site {name!r} is not in the topology")
        if gossip_steps < 1:
            raise GossipmedError("gossip_steps must be >= 1 (resolve 'auto' before the peer)")
        self.name = name
        self.learner = learner
        self.sealer = sealer
        self.schedule = schedule
        self.local_steps = local_steps
        self.gossip_steps = gossip_steps
        self.train_enabled = train
        self.aggregation = aggregation
        self.eval_every = max(1, eval_every)
        self.total_rounds = total_rounds
        self.max_future_rounds = max_future_rounds
        self.audit: AuditSink = audit or NullAudit()
        self.checkpoint_dir = checkpoint_dir
        self.metrics = metrics
        self.clock = clock
        self.round = start_round
        self.epsilon = 0.0
        self.schema = state_schema(learner.get_state())
        self.rejected = 0
        self._budget_spent = False
        self._n_examples = 0
        self._work: _RoundWork | None = None
        self._inbox: dict[int, _Inbox] = {}
        self._lock = threading.Lock()  # receive() may run while another thread trains

    # -- phase 1+2+3: train, encode, seal ---------------------------------------------------

    def train(self, round: int) -> None:
        """Local steps for `round` (skipped when training is off or the budget is spent)."""
        self._start(round)
        work = self._work
        assert work is not None
        started = self.clock()
        if self.train_enabled and not self._budget_spent:
            try:
                stats = self.learner.train_round(steps=self.local_steps)
            except PrivacyBudgetExceeded as exc:
                self._budget_spent = True
                self.audit.record("budget_spent", round=round, site=self.name, reason=str(exc))
            else:
                work.train_loss = stats.train_loss
                work.trained = True
                self.epsilon = stats.epsilon
                self._n_examples = stats.n_examples
        work.state = _snapshot(self.learner.get_state())
        work.seconds += self.clock() - started

    def seal_outgoing(self, round: int, step: int = 0) -> dict[str, bytes]:
        """The state of exchange `step` of this round, sealed once per neighbour of this
        round's graph (after training for step 0, after mix_step(step - 1) otherwise)."""
        work = self._require_work(round)
        if step != work.step:
            raise GossipmedError(f"{self.name}: exchange {step} of round {round} is not open")
        exchange = self.exchange_index(round, step)
        started = self.clock()
        out: dict[str, bytes] = {}
        neighbours = sorted(self.schedule.neighbours(round, self.name))
        seal_many = getattr(self.sealer, "seal_many", None)  # encodes once for all recipients
        with self._lock:
            if callable(seal_many) and neighbours:
                out = dict(
                    seal_many(
                        update_tensors=work.state,
                        round=exchange,
                        recipients=neighbours,
                        n_examples=self._n_examples,
                        epsilon=self.epsilon,
                    )
                )
            for neighbour in neighbours:
                if neighbour not in out:
                    out[neighbour] = self.sealer.seal(
                        update_tensors=work.state,
                        round=exchange,
                        recipient=neighbour,
                        n_examples=self._n_examples,
                        epsilon=self.epsilon,
                    )
        work.bytes_sent += sum(len(b) for b in out.values())
        work.seconds += self.clock() - started
        return out

    def outgoing(self, round: int) -> dict[str, bytes]:
        self.train(round)
        return self.seal_outgoing(round)

    # -- phase 4+5: receive and verify ------------------------------------------------------

    def receive(self, data: bytes) -> bool:
        """Verify and buffer one envelope; True if kept. Bad input is audited, never raised."""
        with self._lock:
            try:
                update = self.sealer.open(data, expected_schema=self.schema)
            except GossipmedError as exc:
                return self._reject("invalid", detail=str(exc), size=len(data))
            e = update.round
            r, step = divmod(e, self.gossip_steps)
            where = {"sender": update.sender, "msg_round": r, "step": step}
            if e < self._open_exchange():
                return self._reject("stale", **where)
            if r > self.round + self.max_future_rounds:
                return self._reject("too_early", **where)
            if update.sender not in self.schedule.neighbours(r, self.name):
                return self._reject("not_a_neighbour", **where)
            inbox = self._inbox.setdefault(e, _Inbox())
            if update.sender in inbox.updates:
                return self._reject("duplicate", **where)
            inbox.updates[update.sender] = update
            inbox.bytes_received += len(data)
            self.audit.record("accepted", site=self.name, size=len(data), **where)
            return True

    def exchange_index(self, round: int, step: int = 0) -> int:
        """The round number an envelope of exchange `step` of `round` carries on the wire."""
        if not 0 <= step < self.gossip_steps:
            raise GossipmedError(f"exchange {step} is outside 0..{self.gossip_steps - 1}")
        return round * self.gossip_steps + step

    def heard(self, round: int, step: int = 0) -> set[str]:
        with self._lock:
            inbox = self._inbox.get(self.exchange_index(round, step))
            return set(inbox.updates) if inbox else set()

    def expected(self, round: int, step: int = 0) -> frozenset[str]:
        """Whom to wait for. After the first exchange, only those heard in the previous one:
        a neighbour that is offline costs one timeout per round, not one per exchange."""
        neighbours = self.schedule.neighbours(round, self.name)
        work = self._work
        if step == 0 or work is None or work.round != round or work.heard_last is None:
            return neighbours
        return neighbours & work.heard_last

    def mix_step(self, round: int, step: int) -> None:
        """Mix exchange `step` (not the last one) and open exchange `step + 1`."""
        work = self._require_work(round)
        if step != work.step or step >= self.gossip_steps - 1:
            raise GossipmedError(
                f"{self.name}: mix_step({round}, {step}) but exchange {work.step} of "
                f"{self.gossip_steps} is open (the last one is mixed by complete_round)"
            )
        started = self.clock()
        work.state = self._mix_exchange(work, round, step)
        work.seconds += self.clock() - started

    # -- phase 6+7: mix, checkpoint, record -------------------------------------------------

    def complete_round(self, round: int) -> RoundRecord:
        """Mix the updates heard for `round`; a neighbour not heard counts as our own state."""
        if self._work is None or self._work.round != round:
            self._start(round)
            assert self._work is not None
            self._work.state = _snapshot(self.learner.get_state())
        work = self._work
        started = self.clock()
        mixed = self._mix_exchange(work, round, work.step)
        self.learner.set_state(mixed)
        local_cd = work.local_cd
        eval_loss = accuracy = None
        if self._should_evaluate(round):
            ev = self.learner.evaluate()
            eval_loss, accuracy = ev.loss, ev.accuracy
        if self.checkpoint_dir is not None:
            save_state(
                self.checkpoint_dir,
                mixed,
                {"round": round, "site": self.name, "epsilon": self.epsilon},
            )
        work.seconds += self.clock() - started
        record = RoundRecord(
            round=round,
            site=self.name,
            train_loss=work.train_loss,
            eval_loss=eval_loss,
            accuracy=accuracy,
            consensus_distance=local_cd,
            epsilon=self.epsilon,
            bytes_sent=work.bytes_sent,
            bytes_received=work.bytes_received,
            neighbours_heard=len(work.heard),
            seconds=work.seconds,
            neighbours_expected=len(self.expected(round)),
            local_consensus_distance=local_cd,
            trained=work.trained,
            rejected=self._take_rejected(),
        )
        self._work = None
        if self.metrics is not None:
            self.metrics.write(record)
        return record

    def skip_round(self, round: int) -> RoundRecord:
        """The site was offline for `round`: no training, no mixing; its state stays put."""
        with self._lock:
            self.round = round + 1
            for old in [k for k in self._inbox if k < self.round * self.gossip_steps]:
                del self._inbox[old]
        self._work = None
        return RoundRecord(
            round=round,
            site=self.name,
            train_loss=None,
            eval_loss=None,
            accuracy=None,
            consensus_distance=None,
            epsilon=self.epsilon,
            bytes_sent=0,
            bytes_received=0,
            neighbours_heard=0,
            seconds=0.0,
            neighbours_expected=len(self.expected(round)),
            trained=False,
            online=False,
            rejected=self._take_rejected(),
        )

    # -- helpers ------------------------------------------------------------------------------

    def _start(self, round: int) -> None:
        if round < self.round:
            raise GossipmedError(f"{self.name}: round {round} is already complete")
        with self._lock:
            self.round = round
            self._work = _RoundWork(round=round, state={})
            for old in [k for k in self._inbox if k < round * self.gossip_steps]:
                del self._inbox[old]

    def _open_exchange(self) -> int:
        """Envelopes for exchanges before this one can no longer be mixed (stale)."""
        work = self._work
        step = work.step if work is not None and work.round == self.round else 0
        return self.round * self.gossip_steps + step

    def _mix_exchange(self, work: _RoundWork, round: int, step: int) -> AdapterState:
        """Mix what arrived for one exchange into `work.state`. The exchange closes in the same
        locked step that takes its buffer, so an envelope that arrives while we mix is
        refused as stale instead of being accepted and then silently dropped."""
        with self._lock:
            inbox = self._inbox.pop(self.exchange_index(round, step), _Inbox())
            if step < self.gossip_steps - 1:
                work.step = step + 1
            else:  # the round's last exchange
                self.round = round + 1
                for old in [k for k in self._inbox if k < self.round * self.gossip_steps]:
                    del self._inbox[old]
        neighbour_states = {s: u.tensors for s, u in inbox.updates.items()}
        if step == 0:
            work.local_cd = local_consensus_distance(work.state, neighbour_states.values())
        work.bytes_received += inbox.bytes_received
        work.heard |= set(inbox.updates)
        work.heard_last = frozenset(inbox.updates)
        return mix(
            rule=self.aggregation,
            self_name=self.name,
            row=self.schedule.row(round, self.name),
            states={self.name: work.state, **neighbour_states},
        )

    def _require_work(self, round: int) -> _RoundWork:
        if self._work is None or self._work.round != round:
            raise GossipmedError(f"{self.name}: seal_outgoing({round}) before train({round})")
        return self._work

    def _should_evaluate(self, round: int) -> bool:
        last = self.total_rounds is not None and round == self.total_rounds - 1
        return last or (round + 1) % self.eval_every == 0

    def _reject(self, reason: str, **fields: Any) -> bool:
        self.rejected += 1
        self.audit.record("rejected", site=self.name, reason=reason, round=self.round, **fields)
        return False

    def _take_rejected(self) -> int:
        with self._lock:
            n, self.rejected = self.rejected, 0
        return n


def _snapshot(state: Mapping[str, torch.Tensor]) -> AdapterState:
    return {k: v.detach().clone() for k, v in state.items()}
