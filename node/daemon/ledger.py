"""A site's privacy ledger on disk: where it lives, when the daemon may trust it, how to reset.

The ledger is the only record of how much of a site's privacy budget is spent, so it lives in
`SITE/privacy/`, apart from `SITE/state/` (the folder an operator clears after a crash loop).
A missing ledger must never mean "nothing spent": before opening it the daemon compares it
with every other record of spending -- the checkpoint's epsilon, the metrics' epsilons, and
whether the site has ever run (checkpoint, metrics or audit lines) -- and refuses to start
(exit 2) when the ledger is missing or accounts for less. Starting a new budget on purpose is
`gossipmed ledger reset`: the old ledger is archived next to the new one, the new ledger
carries the old total as `carried_over`, and the reset is written to the audit log.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from gossipmed.consortium.audit import EVENT, AuditLog, audit_files
from gossipmed.errors import PrivacyError
from gossipmed.metrics import METRICS_FILE, read_metrics
from gossipmed.privacy.ledger import PrivacyLedger
from gossipmed.storage.checkpoint import META_FILE
from gossipmed.storage.files import fsync_dir, private_dir
from node.daemon.config import DaemonSettings

PRIVACY_DIR = "privacy"
LEDGER_FILE = "ledger.json"
OLD_LEDGER = "state/ledger.json"  # where it lived before issue #13
TOLERANCE = 1e-9


class LedgerMismatch(PrivacyError):
    """The ledger is missing, or accounts for less than the site's own records show spent."""


def ledger_path(site_dir: Path) -> Path:
    return site_dir / PRIVACY_DIR / LEDGER_FILE


@dataclass(frozen=True)
class Recorded:
    """What the site's other files say about its spending."""

    epsilon: float  # the largest epsilon any of them records
    sources: tuple[str, ...]  # which files show that the site has run

    @property
    def ran(self) -> bool:
        return bool(self.sources)


def recorded_spending(settings: DaemonSettings) -> Recorded:
    epsilon, sources = 0.0, []
    meta = settings.state_dir / META_FILE
    if meta.is_file():
        sources.append(str(meta))
        try:
            value = json.loads(meta.read_text(encoding="utf-8")).get("epsilon")
        except (OSError, ValueError):
            value = None  # unreadable: the checkpoint reader will say so
        if isinstance(value, int | float):
            epsilon = max(epsilon, float(value))
    metrics = settings.directory / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size:
        sources.append(str(metrics))
        for record in read_metrics(metrics):
            if record.epsilon is not None:
                epsilon = max(epsilon, float(record.epsilon))
    sources += [str(p) for p in audit_files(settings.site.audit_path) if p.stat().st_size]
    return Recorded(epsilon=epsilon, sources=tuple(sources))


def _migrate(settings: DaemonSettings) -> None:
    """Move a ledger from its pre-#13 place inside state/ (once)."""
    old, new = settings.directory / OLD_LEDGER, ledger_path(settings.directory)
    if old.is_file() and not new.exists():
        private_dir(new.parent, tighten=True)
        old.rename(new)
        fsync_dir(new.parent)
        fsync_dir(old.parent)


def open_site_ledger(settings: DaemonSettings) -> PrivacyLedger:
    """The site's ledger, after checking it accounts for everything the site recorded."""
    _migrate(settings)
    path = ledger_path(settings.directory)
    recorded = recorded_spending(settings)
    fix = (
        f"restore {path} from a backup, or start a new budget on purpose with "
        f"`gossipmed ledger reset --site {settings.directory}`"
    )
    if not path.exists() and recorded.ran:
        raise LedgerMismatch(
            f"this site has run before ({', '.join(recorded.sources)}) but its privacy "
            f"ledger {path} is missing; refusing to start with nothing spent: {fix}"
        )
    dp = settings.learning.dp
    private_dir(path.parent, tighten=True)
    ledger = PrivacyLedger.open(path, budget=dp.epsilon, delta=dp.delta, accountant=dp.accountant)
    if ledger.total_spent + TOLERANCE < recorded.epsilon:
        raise LedgerMismatch(
            f"the privacy ledger {path} accounts for epsilon {ledger.total_spent:.4f}, but "
            f"this site's records show {recorded.epsilon:.4f} spent; refusing to start: {fix}"
        )
    return ledger


@dataclass(frozen=True)
class Reset:
    archived: Path | None
    carried_over: float


def reset_budget(settings: DaemonSettings, *, now: dt.datetime | None = None) -> Reset:
    """Archive the ledger and start a new budget that carries the old total forward."""
    _migrate(settings)
    path = ledger_path(settings.directory)
    private_dir(path.parent, tighten=True)
    recorded = recorded_spending(settings)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    archived: Path | None = None
    carried = recorded.epsilon
    if path.exists():
        old = PrivacyLedger.load(path)
        carried = max(carried, old.total_spent)
        archived = path.with_name(f"ledger-{stamp}.json")
        if archived.exists():
            raise PrivacyError(f"{archived} exists already; try again in a second")
        shutil.copy2(path, archived)
        fsync_dir(path.parent)
    dp = settings.learning.dp
    fresh = PrivacyLedger(
        budget=dp.epsilon, delta=dp.delta, accountant=dp.accountant, carried_over=carried
    )
    fresh.save(path)
    AuditLog(settings.site.audit_path).record(
        outcome=EVENT,
        reason=(
            f"privacy budget reset: a new budget of epsilon {dp.epsilon:g} starts; "
            f"epsilon {carried:.4f} spent before is carried over"
            + (f"; old ledger archived as {archived.name}" if archived else "")
        ),
        sender=None,
        round=None,
        payload_hash="",
    )
    return Reset(archived=archived, carried_over=carried)
