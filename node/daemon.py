"""`gossipmed run`: one site's peer daemon (libp2p transport, one process per site).

The daemon assembles exactly what the simulator assembles for one site (learner, envelope
sealer, node.peer.Peer) and drives it with real time:

    round r:  train + seal (worker thread)  ->  deliver to every neighbour, retrying until
              the round deadline  ->  wait until every neighbour is heard, or has moved past
              r, or the deadline (`round_timeout_s` after sending) passes  ->  mix what
              arrived, checkpoint, write the metrics record  ->  round r + 1

With `gossip_steps` k > 1 (the default picks k from the roster graph's lambda2, node.peer)
the send-wait-mix part runs k times per round, each with its own deadline; after the first
exchange a site waits only for neighbours it heard in the previous one, so a dead neighbour
still costs one timeout per round.

Round pacing: nobody waits longer than one timeout for anybody, so a slow or dead site costs
its neighbours one timeout per round and never stalls them. A site that learns (from an
authenticated envelope) that a neighbour is already past its round jumps ahead to that
round, without training for the rounds it skipped; that is how a restarted site rejoins.
Envelopes of past rounds are dropped as stale (and audited); up to `max_future_rounds`
ahead are buffered.

Crash safety: the privacy ledger is written (atomically) when a round is charged, before
any update leaves; after mixing, the adapter, round, epsilon and replay-guard state go to
one atomic checkpoint, and only then the metrics record. After kill -9 the daemon resumes
at the round after its last checkpoint with the ledger's epsilon (never lower).

Codec and drift options (`codec`, `topk_fraction`, `codec_refresh_every`, `drift` in
[daemon]) are wired by node.peer_options exactly as in the simulator; their state between
rounds (top-k residual, D² memory) is part of the checkpoint. A top-k sender's neighbours
hold a replica of it that only consecutive deltas keep right, so the daemon sends a dense
keyframe instead of a delta whenever a replica may be out of step: after rounds it skipped,
after a delivery it gave up on, and (twice: the first may collide with a same-round envelope
of its previous life, which replay protection refuses) after a resume that cannot rule out
that an envelope of the resumed round already left. A neighbour that restarts loses its
replicas and needs this site's next keyframe: set `codec_refresh_every` to bound that wait.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
import trio

from gossipmed.audit import REJECTED, AuditLog, payload_hash
from gossipmed.checkpoint import META_FILE, atomic_write_json, load_state, save_state
from gossipmed.crypto import Identity
from gossipmed.errors import ConfigError, GossipmedError, TransportError
from gossipmed.learner import Learner
from gossipmed.metrics import METRICS_FILE, MetricsWriter, RoundRecord
from gossipmed.roster import Roster
from node.control import serve_control
from node.daemon_config import DaemonSettings
from node.peer import AuditLogSink, MixingSchedule, Peer, resolve_gossip_steps
from node.peer_options import (
    apply_peer_options,
    restart_compression,
    restore_option_state,
    save_option_state,
)
from topology.mixing import mixing_matrix
from topology.spectral import lambda2

log = logging.getLogger("gossipmed.daemon")

LEDGER_FILE = "ledger.json"
SEALED_FILE = "sealed.json"  # top-k only: the last round whose envelopes may have left
OPTION_STATE_KEY = "option_state"  # checkpoint.json: option state file -> digest


def resume_keyframes(gossip_steps: int) -> int:
    """Keyframes to send after a resume that cannot rule out that envelopes of the resumed
    round already left: each exchange of that round may be refused as a replay of its
    previous life's, so every one of them and the next round's first are dense."""
    return gossip_steps + 1


RETRY_PAUSE_S = 1.0


class DaemonError(GossipmedError):
    """The daemon cannot start (already running, bad state on disk)."""


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """BLAKE2b over names, dtypes, shapes and bytes: compares adapters across processes."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def roster_graph(roster: Roster) -> nx.Graph:
    """The gossip graph is the roster's: active members and the edges between them."""
    active = set(roster.active_names)
    graph = nx.Graph()
    graph.add_nodes_from(sorted(active))
    graph.add_edges_from((a, b) for a, b in roster.edges if a in active and b in active)
    return graph


def schedule_from_roster(roster: Roster, *, rule: str) -> MixingSchedule:
    return MixingSchedule.from_graphs([roster_graph(roster)], rule=rule)


def roster_gossip_steps(roster: Roster, *, rule: str, setting: int) -> int:
    """Exchanges per round; 'auto' (0) reads lambda2 off the roster graph, which every site of
    the consortium shares, so all sites pick the same number."""
    graph = roster_graph(roster)
    lam2 = lambda2(mixing_matrix(graph, rule=rule)) if graph.number_of_nodes() > 1 else 0.0
    return resolve_gossip_steps(setting, lam2=lam2)


@dataclass
class PeerSeen:
    last_heard: float | None = None
    last_round: int | None = None  # highest authenticated round from this neighbour
    accepted: int = 0


class DaemonAudit:
    """Peer events -> the site's audit log, plus what status and round pacing need."""

    def __init__(self, log_file: AuditLog) -> None:
        self.log = log_file
        self._sink = AuditLogSink(log_file)
        self.seen: dict[str, PeerSeen] = {}
        self.current_hash = ""  # hash of the message the pump is handing to the peer
        self.rejected = 0
        self.bytes_received = 0

    def record(self, event: str, **fields: Any) -> None:
        if event in ("accepted", "rejected") and "payload_hash" not in fields:
            fields["payload_hash"] = self.current_hash
        self._sink.record(event, **fields)
        sender, msg_round = fields.get("sender"), fields.get("msg_round")
        if event == "rejected":
            self.rejected += 1
        if isinstance(sender, str) and isinstance(msg_round, int):
            # every event with a sender and round came from an authenticated envelope
            seen = self.seen.setdefault(sender, PeerSeen())
            seen.last_heard = time.time()
            seen.last_round = max(msg_round, seen.last_round or 0)
            if event == "accepted":
                seen.accepted += 1
                self.bytes_received += int(fields.get("size") or 0)

    def transport_reject(self, peer_id: str, reason: str) -> None:
        self.rejected += 1
        self.log.record(
            outcome=REJECTED,
            reason=f"transport: {reason}",
            sender=peer_id,
            round=None,
            payload_hash="",
        )

    def max_round_seen(self) -> int | None:
        rounds = [s.last_round for s in self.seen.values() if s.last_round is not None]
        return max(rounds) if rounds else None


@dataclass
class Resumed:
    round: int
    epsilon: float
    adapter_digest: str


@dataclass
class DaemonState:
    round: int = 0
    phase: str = "starting"
    completed: int = 0
    bytes_sent: int = 0
    failures: int = 0
    last_record: RoundRecord | None = None
    skipped: list[int] = field(default_factory=list)


def build_learner(settings: DaemonSettings, *, roster: Roster) -> Learner:
    """This site's learner (the simulator's factories, one site only)."""
    d = settings.daemon
    if d.problem == "quadratic":
        from node.simulate import QuadraticFactory

        n = len(roster.members)
        if d.site_index >= n:
            raise ConfigError(f"daemon.site_index {d.site_index} >= {n} roster members")
        factory = QuadraticFactory(n_sites=n, seed=d.seed, lr=min(settings.learning.train.lr, 1.0))
        return factory.site_learners()[d.site_index]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gossipmed.ledger import PrivacyLedger
    from gossipmed.train import build_site_learners

    learner = build_site_learners(settings.learning).learners[d.site_index]
    dp = settings.learning.dp
    if dp.enabled:
        # one ledger in this site's own state folder, persisted on every charge
        learner.ledger = PrivacyLedger.open(
            settings.state_dir / LEDGER_FILE,
            budget=dp.epsilon,
            delta=dp.delta,
            accountant=dp.accountant,
        )
    return learner


def _ledger_budget(learner: Learner) -> tuple[float | None, float | None]:
    ledger = getattr(learner, "ledger", None)
    if ledger is None:
        return None, None
    return float(ledger.epsilon), float(ledger.budget)


class SiteDaemon:
    def __init__(self, settings: DaemonSettings) -> None:
        from gossipmed.envelope import EnvelopeSealer, ReplayGuard

        self.settings = settings
        self.started_at = time.time()
        site = settings.site
        self.identity: Identity = site.identity()
        self.roster = site.roster()
        self.name = _own_name(self.roster, self.identity)
        if self.name != site.config.name:
            raise ConfigError(
                f"site.toml names this site {site.config.name!r} but the roster knows its "
                f"key as {self.name!r}"
            )
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.audit = DaemonAudit(AuditLog(site.audit_path))
        learner = build_learner(settings, roster=self.roster)
        self.resumed: Resumed | None = None
        start_round, guard = 0, ReplayGuard()
        meta: dict[str, Any] = {}
        if (settings.state_dir / META_FILE).is_file():
            state, meta = load_state(settings.state_dir)
            if meta.get("site") != self.name:
                raise DaemonError(f"checkpoint in {settings.state_dir} is not {self.name}'s")
            learner.set_state(state)
            start_round = int(meta["round"]) + 1
            guard = ReplayGuard.from_dict(meta["replay_guard"])
            self._reseed(learner, start_round)
        d = settings.daemon
        # the envelope layer itself: its replay guard is checkpointed (a top-k codec wraps it)
        self.sealer = EnvelopeSealer(
            identity=self.identity, roster=self.roster, max_bytes=d.max_bytes, replay_guard=guard
        )
        self.schedule = schedule_from_roster(self.roster, rule=d.mixing)
        self.peer = Peer(
            name=self.name,
            learner=learner,
            sealer=self.sealer,
            schedule=self.schedule,
            local_steps=settings.learning.train.steps_per_round,
            gossip_steps=roster_gossip_steps(self.roster, rule=d.mixing, setting=d.gossip_steps),
            aggregation=d.aggregation,
            eval_every=d.eval_every,
            total_rounds=d.rounds or None,
            start_round=start_round,
            max_future_rounds=d.max_future_rounds,
            audit=self.audit,
        )
        self.options = d.peer_options
        apply_peer_options({self.name: self.peer}, options=self.options, seed=d.seed)
        self.learner: Learner = self.peer.learner
        self.options_restored: list[str] = []
        self.keyframes_due = 0
        if start_round:
            self.options_restored = restore_option_state(
                settings.state_dir, self.peer, digests=meta.get(OPTION_STATE_KEY, {})
            )
            if self.options.codec == "topk" and _sealed_round(settings) != start_round - 1:
                self.keyframes_due = resume_keyframes(self.peer.gossip_steps)
        spent, _budget = _ledger_budget(self.learner)
        self.peer.epsilon = spent or 0.0
        if start_round:
            self.resumed = Resumed(
                round=start_round - 1,
                epsilon=self.peer.epsilon,
                adapter_digest=state_digest(self.learner.get_state()),
            )
            log.info(
                "resuming %s after round %d (epsilon %.4f, adapter %s)",
                self.name,
                start_round - 1,
                self.peer.epsilon,
                self.resumed.adapter_digest,
            )
        self.metrics = MetricsWriter(settings.directory / METRICS_FILE)
        self.state = DaemonState(round=start_round)
        self._receive_lock = threading.Lock()  # replay guard: pump vs checkpoint snapshot
        self._arrival = trio.Event()
        self.transport: Any = None
        self.stopping = False

    def _reseed(self, learner: Learner, start_round: int) -> None:
        """A resumed site must not redraw the noise and samples of rounds it already ran."""
        generator = getattr(learner, "generator", None)
        if isinstance(generator, torch.Generator):
            tag = f"gossipmed-resume:{self.settings.learning.train.seed}:{self.name}:{start_round}"
            digest = hashlib.blake2b(tag.encode(), digest_size=8).digest()
            generator.manual_seed(int.from_bytes(digest, "big") >> 1)

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        spent, budget = _ledger_budget(self.learner)
        peers = []
        for name in sorted(self.schedule.neighbours(self.state.round, self.name)):
            seen = self.audit.seen.get(name, PeerSeen())
            peers.append(
                {
                    "name": name,
                    "peer_id": self.roster.member(name).peer_id,
                    "connected": self._connected(name),
                    "last_heard": seen.last_heard,
                    "last_round": seen.last_round,
                    "accepted": seen.accepted,
                }
            )
        last = self.state.last_record
        return _finite(
            {
                "v": 1,
                "site": self.name,
                "pid": os.getpid(),
                "peer_id": self.identity.peer_id,
                "listen": list(self.transport.listen_addrs) if self.transport else [],
                "round": self.state.round,
                "phase": self.state.phase,
                "completed": self.state.completed,
                "skipped_rounds": list(self.state.skipped),
                "rounds_planned": self.settings.daemon.rounds or None,
                "round_timeout_s": self.settings.daemon.round_timeout_s,
                "gossip_steps": self.peer.gossip_steps,
                "uptime_s": time.time() - self.started_at,
                "resumed": vars(self.resumed) if self.resumed else None,
                "options": self._options_status(),
                "epsilon": {
                    "spent": spent if spent is not None else self.peer.epsilon,
                    "budget": budget,
                },
                "peers": peers,
                "last_metrics": last.to_json() if last else None,
                "bytes": {"sent": self.state.bytes_sent, "received": self.audit.bytes_received},
                "rejected": self.audit.rejected,
                "failures": self.state.failures,
            }
        )

    def _options_status(self) -> dict[str, Any]:
        o = self.options
        topk = o.codec == "topk"
        return {
            "codec": o.codec,
            "topk_fraction": o.topk_fraction if topk else None,
            "codec_refresh_every": o.codec_refresh_every if topk else None,
            "drift": o.drift,
            "restored": list(self.options_restored),
        }

    def _connected(self, name: str) -> bool:
        if self.transport is None:
            return False
        try:
            from libp2p.peer.id import ID

            pid = ID.from_base58(self.roster.member(name).peer_id)
            conns = self.transport.host.get_network().get_connections(pid)
            return any(not c.is_closed for c in conns)
        except Exception:
            return False

    # --- the run -------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from node.libp2p_transport import Libp2pTimeouts, Libp2pTransport, PeerInfo

        d = self.settings.daemon
        peers = {
            m.name: PeerInfo(peer_id=m.peer_id, addrs=m.addrs)
            for m in self.roster.members
            if not m.revoked and m.name != self.name
        }
        timeouts = Libp2pTimeouts(dial_s=d.dial_timeout_s)
        async with (
            Libp2pTransport.open(
                local_name=self.name,
                seed=self.identity.ed25519_seed,
                peers=peers,
                listen=list(self.settings.site.config.listen),
                max_bytes=d.max_bytes,
                on_reject=self.audit.transport_reject,
                timeouts=timeouts,
            ) as transport,
            trio.open_nursery() as nursery,
        ):
            self.transport = transport
            log.info(
                "%s listening on %s as %s", self.name, transport.listen_addrs, transport.peer_id
            )
            nursery.start_soon(self._pump)
            nursery.start_soon(self._watch_signals, nursery.cancel_scope)
            await nursery.start(
                functools.partial(
                    serve_control,
                    self.status,
                    port=d.control_port,
                    control_file=self.settings.control_file,
                )
            )
            task_status.started()
            await self._round_loop()
            nursery.cancel_scope.cancel()
        self.metrics.close()
        last = self.state.last_record
        log.info("%s stopped (last completed round %s)", self.name, last.round if last else None)

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                self.stopping = True
                self.state.phase = "stopping"
                scope.cancel()
                return

    async def _pump(self) -> None:
        while True:
            try:
                _sender, data = await self.transport.receive_from()
            except TransportError:
                return
            await trio.to_thread.run_sync(self._receive, data)
            arrived, self._arrival = self._arrival, trio.Event()
            arrived.set()

    def _receive(self, data: bytes) -> None:
        with self._receive_lock:
            self.audit.current_hash = payload_hash(data)
            self.peer.receive(data)

    async def _round_loop(self) -> None:
        limit = self.settings.daemon.rounds
        r = self.peer.round
        while not limit or r < limit:
            ahead = self.audit.max_round_seen()
            if ahead is not None and ahead > r:
                log.info("neighbours are at round %d: skipping rounds %d..%d", ahead, r, ahead - 1)
                self.state.skipped.extend(range(r, ahead))
                self.keyframes_due = max(self.keyframes_due, 1)  # replicas see a gap
                r = ahead if not limit else min(ahead, limit - 1)
            record = await self.run_round(r)
            log.info(
                "round %d done: heard %d/%d, loss %s, eps %.3f, local D %.3e, %.2f s",
                r,
                record.neighbours_heard,
                record.neighbours_expected,
                record.train_loss,
                record.epsilon,
                record.consensus_distance or 0.0,
                record.seconds,
            )
            r += 1

    async def run_round(self, r: int) -> RoundRecord:
        timeout = self.settings.daemon.round_timeout_s
        self.state.round, self.state.phase = r, "training"
        envelopes = await trio.to_thread.run_sync(  # type: ignore[call-arg]
            self._train_and_seal, r, abandon_on_cancel=True
        )
        for step in range(self.peer.gossip_steps):
            if step > 0:
                envelopes = await trio.to_thread.run_sync(  # type: ignore[call-arg]
                    self._mix_and_seal, r, step, abandon_on_cancel=True
                )
            deadline = trio.current_time() + timeout
            self.state.phase = "exchanging"
            awaited = self.peer.expected(r, step)
            optional: list[trio.CancelScope] = []
            async with trio.open_nursery() as sends:
                for recipient, data in envelopes.items():
                    scope = trio.CancelScope()
                    if recipient not in awaited:  # silent in the previous exchange
                        optional.append(scope)
                    sends.start_soon(self._deliver, recipient, data, deadline, scope)
                with trio.move_on_at(deadline):
                    while self._pending(r, step):
                        await self._arrival.wait()
                for scope in optional:  # so a dead neighbour costs one timeout per round
                    scope.cancel()
        self.state.phase = "mixing"
        record = await trio.to_thread.run_sync(self._complete, r)
        self.state.completed += 1
        self.state.last_record = record
        return record

    def _pending(self, r: int, step: int = 0) -> set[str]:
        heard = self.peer.heard(r, step)
        out = set()
        for name in self.peer.expected(r, step):
            seen = self.audit.seen.get(name)
            moved_on = seen is not None and seen.last_round is not None and seen.last_round > r
            if name not in heard and not moved_on:
                out.add(name)
        return out

    def _train_and_seal(self, r: int) -> dict[str, bytes]:
        self.peer.train(r)
        return self._seal(r, 0)

    def _mix_and_seal(self, r: int, step: int) -> dict[str, bytes]:
        self.peer.mix_step(r, step - 1)
        return self._seal(r, step)

    def _seal(self, r: int, step: int) -> dict[str, bytes]:
        if self.keyframes_due and restart_compression(self.peer):
            log.info("round %d.%d: sending a keyframe (neighbours' replicas may be stale)", r, step)
        self.keyframes_due = max(0, self.keyframes_due - 1)
        envelopes = self.peer.seal_outgoing(r, step)
        if self.options.codec == "topk" and step == 0:  # before anything leaves, as the ledger
            atomic_write_json(self.settings.state_dir / SEALED_FILE, {"v": 1, "round": r})
        return envelopes

    async def _deliver(
        self, recipient: str, data: bytes, deadline: float, scope: trio.CancelScope
    ) -> None:
        """Keep trying until the exchange's deadline: a neighbour that is (re)starting still
        gets this round's update if it comes up in time. `scope` is cancelled once the wait
        is over when the neighbour was silent in the previous exchange."""
        with scope:
            with trio.move_on_at(deadline):
                while True:
                    try:
                        await self.transport.send(recipient, data)
                        self.state.bytes_sent += len(data)
                        return
                    except TransportError as exc:
                        log.info("round send to %s failed, retrying: %s", recipient, exc)
                    await trio.sleep(RETRY_PAUSE_S)
            self.state.failures += 1
            log.warning("gave up sending to %s at the exchange deadline", recipient)
        self.keyframes_due = max(self.keyframes_due, 1)  # its replica of us misses an exchange

    def _complete(self, r: int) -> RoundRecord:
        record = self.peer.complete_round(r)
        with self._receive_lock:
            guard = self.sealer.replay_guard.to_dict()
        # option state first: the metadata written last vouches for it by digest
        option_state = save_option_state(self.settings.state_dir, self.peer)
        save_state(
            self.settings.state_dir,
            self.learner.get_state(),
            {
                "round": r,
                "site": self.name,
                "epsilon": self.peer.epsilon,
                "replay_guard": guard,
                OPTION_STATE_KEY: option_state,
                "saved_at": time.time(),
            },
        )
        self.metrics.write(record)  # after the checkpoint: a record always means a saved round
        return record


def _sealed_round(settings: DaemonSettings) -> int | None:
    """The round whose top-k envelopes were last sealed, or None when unknown."""
    try:
        doc = json.loads((settings.state_dir / SEALED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = doc.get("round") if isinstance(doc, dict) else None
    return value if type(value) is int else None


def _own_name(roster: Roster, identity: Identity) -> str:
    for m in roster.members:
        if m.peer_id == identity.peer_id:
            if m.revoked:
                raise ConfigError(f"this site ({m.name}) is revoked in the consortium file")
            return m.name
    raise ConfigError(f"this site's peer ID {identity.peer_id} is not in the consortium file")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def check_not_running(settings: DaemonSettings) -> None:
    """Refuse to start a second daemon on the same site folder."""
    from node.control import DaemonNotRunning, read_control_file

    try:
        info = read_control_file(settings.control_file)
    except DaemonNotRunning:
        return
    pid = info.get("pid")
    if isinstance(pid, int) and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        raise DaemonError(
            f"a daemon (pid {pid}) already runs on {settings.directory}; stop it first"
        )


def configure_logging(log_file: Path | None, *, verbose: bool = False) -> None:
    """Log to stderr (or a file); libp2p's logger does not propagate, so attach it too."""
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file is not None else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    libp2p_log = logging.getLogger("libp2p")
    libp2p_log.addHandler(handler)
    libp2p_log.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("node.libp2p_transport").setLevel(
        logging.INFO if verbose else logging.WARNING
    )


def run_daemon(settings: DaemonSettings) -> int:
    check_not_running(settings)
    daemon = SiteDaemon(settings)
    trio.run(daemon.run)
    return 0
