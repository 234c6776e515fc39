"""`gossipmed ledger show|reset`: a site's privacy ledger (what it has spent, a new budget)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gossipmed.strict_json import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ledger",
        help="show a site's privacy ledger, or start a new budget on purpose",
        description=(
            "A site's privacy ledger (SITE_DIR/privacy/ledger.json) records every DP step it "
            "was charged for. The daemon refuses to start when the ledger is missing or "
            "accounts for less than the site's checkpoint and metrics show spent. `reset` "
            "starts a new budget deliberately: it archives the old ledger next to the new one, "
            "carries the old total forward (still reported as `carried_over`), and writes the "
            "reset to the site's audit log. Stop the daemon first."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    show = actions.add_parser("show", help="epsilon spent, budget, carried over")
    show.add_argument("--site", type=Path, required=True, metavar="SITE_DIR")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=run_show)
    reset = actions.add_parser("reset", help="archive the ledger and start a new budget")
    reset.add_argument("--site", type=Path, required=True, metavar="SITE_DIR")
    reset.add_argument(
        "--confirm", action="store_true", help="required: a reset is recorded and final"
    )
    reset.add_argument("--json", action="store_true", help="print one JSON object")
    reset.set_defaults(func=run_reset)


def run_show(args: argparse.Namespace) -> int:
    from gossipmed.privacy.ledger import PrivacyLedger
    from node.daemon.config import load_daemon_settings
    from node.daemon.ledger import ledger_path, recorded_spending

    settings = load_daemon_settings(args.site)
    path = ledger_path(settings.directory)
    recorded = recorded_spending(settings)
    doc: dict[str, object] = {"ledger": str(path), "exists": path.exists()}
    if path.exists():
        ledger = PrivacyLedger.load(path)
        doc |= {
            "epsilon": ledger.epsilon,
            "budget": ledger.budget,
            "delta": ledger.delta,
            "carried_over": ledger.carried_over,
            "total_spent": ledger.total_spent,
        }
    doc["recorded_elsewhere"] = recorded.epsilon
    if args.json:
        print(dumps(doc))
    elif path.exists():
        print(
            f"{path}: epsilon {doc['epsilon']:.4f} of {doc['budget']:g} at delta "
            f"{doc['delta']:g}; {doc['carried_over']:.4f} carried over from earlier budgets"
        )
    else:
        print(f"{path}: no ledger (largest epsilon in the site's records: {recorded.epsilon:.4f})")
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from gossipmed.errors import ConfigError
    from gossipmed.storage.site_lock import site_lock
    from node.daemon.config import load_daemon_settings
    from node.daemon.ledger import ledger_path, reset_budget
    from node.daemon.process import check_not_running

    if not args.confirm:
        raise ConfigError("a budget reset is final and recorded; add --confirm to do it")
    settings = load_daemon_settings(args.site)
    with site_lock(settings.directory, purpose="resetting its ledger"):
        check_not_running(settings)
        done = reset_budget(settings)
    doc = {
        "ledger": str(ledger_path(settings.directory)),
        "archived": str(done.archived) if done.archived else None,
        "carried_over": done.carried_over,
        "budget": settings.learning.dp.epsilon,
    }
    if args.json:
        print(dumps(doc))
    else:
        print(
            f"new budget of epsilon {doc['budget']:g} started; {done.carried_over:.4f} spent "
            f"before is carried over"
            + (f"; old ledger kept as {done.archived}" if done.archived else "")
        )
    return 0
