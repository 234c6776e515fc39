"""`gossipmed run`: one site's peer daemon (libp2p transport, one process per site).

The daemon composes exactly what the simulator composes for one site (node.round.builder:
learner, envelope sealer, codec, mixing rule) and drives it in real time with
node.round.driver, next to the local control endpoint (node.daemon.control) and a signal watcher.

Crash safety: the privacy ledger is written (atomically) when a round is charged, before
any update leaves; after mixing, the adapter, round, epsilon, replay-guard state and every
component's state go to one checkpoint (gossipmed.storage.peer_state), and only then the metrics
record. After kill -9 the daemon resumes at the round after its last checkpoint with the
ledger's epsilon (never lower). A checkpoint it cannot resume from (not its own, non-finite,
or of a round at or above MAX_ROUND, which could never be sealed) is refused before the ledger
opens: exit 2, nothing charged.

A top-k sender's neighbours hold a replica of it that only consecutive deltas keep right,
so the daemon sends dense keyframes whenever a replica may be out of step: after rounds it
skipped, after a delivery it gave up on, and after a resume that cannot rule out that
updates of the resumed round already left (every exchange of that round may be refused as a
replay of its previous life's, so all of them and the next round's first are dense). A
neighbour that restarts loses its replicas and needs this site's next keyframe: set the
codec's `refresh_every` to bound that wait.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import trio

from gossipmed.consortium.audit import REJECTED, AuditLog
from gossipmed.consortium.crypto import Identity
from gossipmed.consortium.roster import Roster
from gossipmed.consortium.task import check_site_task
from gossipmed.errors import ConfigError, GossipmedError
from gossipmed.learn.learner import Learner
from gossipmed.metrics import METRICS_FILE, MetricsWriter
from gossipmed.storage.atomic import atomic_write_json
from gossipmed.storage.files import private_dir
from gossipmed.storage.peer_state import has_checkpoint, read_checkpoint
from gossipmed.wire.envelope import EnvelopeSealer
from gossipmed.wire.limits import update_size_limit
from node.daemon import systemd
from node.daemon.config import DaemonSettings
from node.daemon.control import serve_control
from node.daemon.control_auth import log_dashboard
from node.daemon.control_routes import site_routes
from node.daemon.ledger import open_site_ledger
from node.daemon.roster_view import own_name, roster_gossip_steps, schedule_from_roster
from node.daemon.secure import build_session, frame_limit, roster_sign_keys, secure_status
from node.daemon.status import Resumed, build_status
from node.round.audit import AuditLogSink
from node.round.builder import RoundPlan, build_peer
from node.round.driver import DriverState, RoundDriver
from node.round.peer import state_schema
from node.round.secure_config import check_secure_gossip
from node.round.secure_session import SecureSession
from node.rounds import shown

log = logging.getLogger("gossipmed.daemon")

STOP_WAIT_S = 60.0  # for an abandoned training step to finish (the unit waits 90 s)
SEALED_FILE = "sealed.json"  # the last exchange whose updates may have left


def resume_keyframes(gossip_steps: int) -> int:
    """Keyframes after a resume that cannot rule out that updates of the resumed round
    already left: every exchange of that round and the next round's first."""
    return gossip_steps + 1


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """BLAKE2b over names, dtypes, shapes and bytes: compares adapters across processes."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class DaemonAudit:
    """Peer and transport events -> the site's audit log, plus the count status shows."""

    def __init__(self, log_file: AuditLog) -> None:
        self.log = log_file
        self._sink = AuditLogSink(log_file)
        self.rejected = 0

    def record(self, event: str, **fields: Any) -> None:
        if event == "rejected":
            self.rejected += 1
        self._sink.record(event, **fields)

    def transport_reject(self, peer_id: str, reason: str) -> None:
        self.rejected += 1
        self.log.record(
            outcome=REJECTED,
            reason=f"transport: {reason}",
            sender=peer_id,
            round=None,
            payload_hash="",
        )


def build_learner(settings: DaemonSettings, *, roster: Roster) -> Learner:
    """This site's learner (the simulator's factories, one site only)."""
    d = settings.daemon
    if d.problem == "quadratic":
        from node.sim.quadratic import QuadraticFactory

        n = len(roster.members)
        if d.site_index >= n:
            raise ConfigError(f"daemon.site_index {d.site_index} >= {n} roster members")
        factory = QuadraticFactory(n_sites=n, seed=d.seed, lr=min(settings.learning.train.lr, 1.0))
        return factory.site_learners()[d.site_index]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gossipmed.learn.train import build_site_learner
    from gossipmed.privacy.randomness import RandomSource

    # the site's own ledger, checked against its records before anything else loads
    ledger = open_site_ledger(settings) if settings.learning.dp.enabled else None
    # DP sampling and noise from the OS at every start and resume: a neighbour who knows the
    # config must not be able to replay them (a public seed let one strip the noise exactly)
    return build_site_learner(
        settings.learning, site=d.site_index, ledger=ledger, randomness=RandomSource.from_os()
    )


class SiteDaemon:
    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.started_at = time.time()
        site = settings.site
        self.identity: Identity = site.identity()
        self.roster = site.roster()
        self.name = own_name(self.roster, self.identity)
        if self.name != site.config.name:
            raise ConfigError(
                f"site.toml names this site {site.config.name!r} but the roster knows its "
                f"key as {self.name!r}"
            )
        check_secure_gossip(self.roster.settings, settings.gossip)
        if settings.daemon.problem == "lm":  # before anything opens, loads or listens
            check_site_task(self.roster.settings.task, settings.learning)
        private_dir(settings.directory, tighten=True)  # older site folders were 0755
        private_dir(settings.state_dir, tighten=True)
        self.audit = DaemonAudit(AuditLog(site.audit_path))
        checkpoint = None
        if has_checkpoint(settings.state_dir):
            # before the ledger opens: a checkpoint this site cannot resume from (a round at or
            # above MAX_ROUND included) exits 2 without charging anything
            checkpoint = read_checkpoint(settings.state_dir, site=self.name)
        learner = build_learner(settings, roster=self.roster)
        d = settings.daemon
        self.max_bytes = d.max_bytes or update_size_limit(state_schema(learner.get_state()))
        schedule = schedule_from_roster(self.roster)
        self.secure: SecureSession | None = None
        if self.roster.settings.secure_aggregation:
            self.secure = build_session(
                name=self.name,
                identity=self.identity,
                roster=self.roster,
                schedule=schedule,
                state=learner.get_state(),
                timeout_s=settings.gossip.round_timeout_s,
                state_dir=settings.state_dir,
                audit=self.audit.record,
            )
            self.max_bytes = max(self.max_bytes, frame_limit(self.secure))
        self.sealer = EnvelopeSealer(
            identity=self.identity, roster=self.roster, max_bytes=self.max_bytes
        )
        self.metrics = MetricsWriter(settings.directory / METRICS_FILE)
        assembled = build_peer(
            name=self.name,
            learner=learner,
            sealer=self.sealer,
            schedule=schedule,
            plan=RoundPlan(
                local_steps=settings.learning.train.steps_per_round,
                gossip_steps=roster_gossip_steps(self.roster),
                eval_every=d.eval_every,
                total_rounds=d.rounds or None,
                secure=self.secure is not None,
            ),
            gossip=settings.gossip,
            audit=self.audit,
            checkpoint_dir=settings.state_dir,
            metrics=self.metrics,
            resume=checkpoint,
        )
        self.peer = assembled.peer
        self.restored = assembled.restored
        self.learner: Learner = self.peer.learner
        self.resumed: Resumed | None = None
        if checkpoint is not None:
            if sealed_round(settings.state_dir) != checkpoint.round:
                self.peer.force_keyframes(resume_keyframes(self.peer.gossip_steps))
            self.resumed = Resumed(
                round=checkpoint.round,
                epsilon=self.peer.epsilon,
                adapter_digest=state_digest(self.learner.get_state()),
            )
            log.info(
                "resuming %s after round %d (epsilon %.4f, adapter %s)",
                self.name,
                shown(checkpoint.round),
                self.peer.epsilon,
                self.resumed.adapter_digest,
            )
        self.driver: RoundDriver | None = None
        self.transport: Any = None
        self.ready_at: float | None = None  # listening, driving rounds and serving /status

    def mark_sealed(self, round: int, step: int) -> None:
        """Before an exchange's updates leave: on resume, a checkpoint older than this mark
        means neighbours may hold updates of the resumed round (see resume_keyframes)."""
        if step == 0:
            atomic_write_json(self.settings.state_dir / SEALED_FILE, {"v": 1, "round": round})

    @property
    def state(self) -> DriverState:
        return self.driver.state if self.driver is not None else DriverState(round=self.peer.round)

    def status(self) -> dict[str, Any]:
        doc = self._status()
        doc["secure_aggregation"] = secure_status(self.secure, self.state.last_record)
        return doc

    def _status(self) -> dict[str, Any]:
        return build_status(
            settings=self.settings,
            roster=self.roster,
            peer=self.peer,
            peer_id=self.identity.peer_id,
            state=self.state,
            transport=self.transport,
            listen=list(self.transport.listen_addrs) if self.transport else [],
            resumed=self.resumed,
            restored=self.restored,
            rejected=self.audit.rejected,
            max_update_bytes=self.max_bytes,
            started_at=self.started_at,
            ready_at=self.ready_at,
        )

    # --- the run -------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from node.net.libp2p.links import dial_policy
        from node.net.libp2p.transport import Libp2pTimeouts, Libp2pTransport, PeerInfo

        d = self.settings.daemon
        members = {
            m.name: PeerInfo(
                peer_id=m.peer_id,
                addrs=m.addrs,
                dial=dial_policy(self.roster.dialer(self.name, m.name), local=self.name),
            )
            for m in self.roster.members
            if not m.revoked and m.name != self.name
        }
        async with (
            Libp2pTransport.open(
                local_name=self.name,
                seed=self.identity.ed25519_seed,
                members=members,
                neighbours=self.peer.schedule.neighbours(self.peer.round, self.name),
                listen=list(self.settings.site.config.listen),
                max_bytes=self.max_bytes,
                on_reject=self.audit.transport_reject,
                timeouts=Libp2pTimeouts(dial_s=d.dial_timeout_s),
            ) as transport,
            trio.open_nursery() as nursery,
        ):
            self.transport = transport
            self.driver = RoundDriver(
                self.peer,
                transport,
                round_timeout_s=self.settings.gossip.round_timeout_s,
                offload=True,
                before_send=self.mark_sealed,
                audit_hashes=True,
                secure=self.secure,
            )
            log.info(
                "%s listening on %s as %s", self.name, transport.listen_addrs, transport.peer_id
            )
            nursery.start_soon(self.driver.pump)
            nursery.start_soon(self._watch_signals, nursery.cancel_scope)
            control = await nursery.start(
                functools.partial(
                    serve_control,
                    self.status,
                    port=d.control_port,
                    control_file=self.settings.control_file,
                    routes=site_routes(self.settings.directory / METRICS_FILE),
                )
            )
            log_dashboard(log, self.settings.directory, control.port, control.token)
            self.ready_at = time.time()
            systemd.notify(f"READY=1\nSTATUS={self.name}: gossiping")
            nursery.start_soon(systemd.watchdog)
            task_status.started()
            try:
                await self.driver.run(rounds=d.rounds)
            finally:
                systemd.notify("STOPPING=1")
            nursery.cancel_scope.cancel()
        if self.driver is not None:  # a stop abandons training: let it end before we do
            finished = await trio.to_thread.run_sync(self.driver.wait_idle, STOP_WAIT_S)
            if not finished:
                log.warning("a training step still runs %.0f s after the stop", STOP_WAIT_S)
        self.metrics.close()
        self.audit.log.flush_suppressed()
        last = self.state.last_record
        log.info(
            "%s stopped (last completed round %s)",
            self.name,
            shown(last.round) if last else "none",
        )

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        signals_ = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with trio.open_signal_receiver(*signals_) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload_roster()
                    continue
                log.info("signal %d: stopping", signum)
                self.state.phase = "stopping"
                scope.cancel()
                return

    def reload_roster(self) -> bool:
        """SIGHUP: read the consortium file again and adopt it (a revocation, new addresses).
        The exchanges per round and the mixing weights are the peer's composition: a file that
        changes them is refused until a restart. Any refusal is logged and audited; the site
        goes on with the roster it had."""
        try:
            new = self.settings.site.roster()
            if own_name(new, self.identity) != self.name:
                raise ConfigError("the new consortium file knows this site by another name")
            if new.settings != self.roster.settings:
                raise ConfigError(
                    "the new consortium file changes the shared gossip settings "
                    f"({new.settings.to_mapping()} instead of "
                    f"{self.roster.settings.to_mapping()}); restart the daemon to adopt them"
                )
            schedule = schedule_from_roster(new)
            if self.secure is not None and new.secagg_short_sites():
                raise ConfigError("secure aggregation: " + "; ".join(new.warnings()))
        except GossipmedError as exc:
            log.error("consortium reload refused, keeping the current one: %s", exc)
            self.audit.record("roster_reload_refused", reason=str(exc))
            return False
        from node.net.libp2p.config import PeerInfo

        old, self.roster = self.roster, new
        if self.secure is not None:
            self.secure.set_roster(
                roster_hash=new.hash, sign_keys=roster_sign_keys(new), schedule=schedule
            )
        self.sealer.set_roster(new)
        self.peer.set_schedule(schedule)
        if self.transport is not None:
            active = {m.name: m for m in new.members if not m.revoked and m.name != self.name}
            for name in {m.name for m in old.members} - set(active):
                self.transport.remove_peer(name)
            for name, m in active.items():
                self.transport.update_peer(name, PeerInfo(peer_id=m.peer_id, addrs=m.addrs))
            self.transport.set_neighbours(schedule.neighbours(self.peer.round, self.name))
        log.info("consortium reloaded: hash %s -> %s", old.hash_hex[:16], new.hash_hex[:16])
        self.audit.record(
            "roster_reloaded", reason=f"hash {old.hash_hex[:16]} -> {new.hash_hex[:16]}"
        )
        return True


def sealed_round(state_dir: Path) -> int | None:
    """The round whose first exchange was last sealed, or None when unknown."""
    try:
        doc = json.loads((state_dir / SEALED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = doc.get("round") if isinstance(doc, dict) else None
    return value if type(value) is int else None
