"""`gossipmed consortium`: build, show and revoke in the consortium roster file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gossipmed.errors import ConfigError
from gossipmed.strict_json import dumps


def register(sub: Any) -> None:
    p = sub.add_parser(
        "consortium",
        help="build, show or revoke members of the consortium roster",
        description=(
            "The consortium file lists every member site (name, peer ID, public keys, "
            "addresses), the gossip edges between them and the gossip settings every site "
            "must share (exchanges per round, mixing weights). Its content hash travels in every "
            "update envelope: sites only accept updates made under the very same roster, so "
            "after any change (e.g. a revocation) every site needs the new file."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True

    b = actions.add_parser(
        "build",
        help="make a roster from site cards and a topology",
        description=(
            "Read the cards printed by `gossipmed init`, sort them by name, build the graph "
            "with node i = i-th card, and write the roster. Refuses a disconnected graph."
        ),
    )
    b.add_argument("cards", nargs="+", type=Path, metavar="CARD", help="card.toml of each site")
    from topology.graphs import KINDS

    b.add_argument(
        "--topology", required=True, choices=KINDS, metavar="KIND", help=", ".join(KINDS)
    )
    b.add_argument("--degree", type=int, help="degree for random-regular / small-world")
    b.add_argument("--p", type=float, help="edge probability (erdos-renyi) or rewiring")
    b.add_argument("--seed", type=int, default=0, help="seed for random graphs (default 0)")
    b.add_argument(
        "--graph-file", type=Path, help="for --topology file: graph whose nodes are site names"
    )
    from topology.mixing import RULES as MIXING_RULES

    b.add_argument(
        "--gossip-steps",
        type=int,
        help="exchanges per round every site uses (default 0: auto from the graph's lambda2)",
    )
    b.add_argument(
        "--mixing",
        choices=MIXING_RULES,
        help="how mixing weights follow from the graph (default metropolis-hastings)",
    )
    b.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="each site learns only the weighted sum of its neighbours' states (one exchange "
        "per round; needs at least 3 neighbours per site)",
    )
    b.add_argument(
        "--secagg-rms",
        type=float,
        help="with --secure-aggregation: the public norm envelope, the largest RMS per "
        "coordinate one contribution carries (default 4.0; set it near your adapters' scale: "
        "it bounds what one dishonest contributor can do to a receiver)",
    )
    from gossipmed.consortium.task import DEFAULT_MAX_LENGTH, FORMATS

    b.add_argument(
        "--task",
        choices=FORMATS,
        help="the task every site trains: label (the default: text to one of a shared label "
        "set), text (plain text), instruction (prompt/response or chat records) or "
        "multiple_choice; a site whose own data and settings give another task is refused",
    )
    b.add_argument(
        "--max-length",
        type=int,
        help=f"with --task: the sites' data.max_length (default {DEFAULT_MAX_LENGTH})",
    )
    b.add_argument("--out", type=Path, required=True, help="roster file to write")
    b.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    b.add_argument("--json", action="store_true", help="print a JSON summary")
    b.set_defaults(func=run_build)

    s = actions.add_parser("show", help="print a roster and its hash")
    s.add_argument("file", type=Path, metavar="FILE")
    s.add_argument("--json", action="store_true", help="print the roster as JSON")
    s.set_defaults(func=run_show)

    r = actions.add_parser(
        "revoke",
        help="mark a member revoked (rewrites FILE; the hash changes)",
        description=(
            "Mark NAME revoked. Other sites refuse its envelopes once they load the new file, "
            "and refuse envelopes made under the old roster. A revocation that disconnects the "
            "graph is allowed (with a warning): removing a compromised site comes first."
        ),
    )
    r.add_argument("file", type=Path, metavar="FILE")
    r.add_argument("name", metavar="NAME")
    r.add_argument("--out", type=Path, help="write here instead of rewriting FILE")
    r.add_argument("--json", action="store_true", help="print a JSON summary")
    r.set_defaults(func=run_revoke)


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        sys.stderr.write(f"warning: {w}\n")


def _summary(roster: Any, path: Path) -> dict[str, Any]:
    return {
        "file": str(path),
        "hash": roster.hash_hex,
        "topology": roster.topology,
        "members": len(roster.members),
        "active": len(roster.active_names),
        "edges": len(roster.edges),
        "gossip": roster.settings.to_mapping(),
        "task": roster.settings.task.to_mapping(),
        "warnings": roster.warnings(),
    }


def run_build(args: argparse.Namespace) -> int:
    from gossipmed.consortium.member import load_card
    from gossipmed.consortium.roster import save_roster
    from gossipmed.consortium.settings import ConsortiumSettings
    from gossipmed.consortium.setup import build_consortium
    from gossipmed.consortium.task import DEFAULT_MAX_LENGTH, TaskDigest

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} exists (use --force to replace it)")
    if args.max_length is not None and args.task is None:
        raise ConfigError("--max-length goes with --task")
    task = TaskDigest.of(args.task or "label", max_length=args.max_length or DEFAULT_MAX_LENGTH)
    settings = ConsortiumSettings(
        task=task,
        gossip_steps=args.gossip_steps if args.gossip_steps is not None else 0,
        mixing=args.mixing or ConsortiumSettings().mixing,
        secure_aggregation=args.secure_aggregation,
        **({"secagg_rms": args.secagg_rms} if args.secagg_rms is not None else {}),
    )
    roster = build_consortium(
        [load_card(path) for path in args.cards],
        topology=args.topology,
        degree=args.degree,
        p=args.p,
        seed=args.seed,
        graph_file=args.graph_file,
        settings=settings,
    )
    save_roster(roster, args.out)
    if args.json:
        print(dumps(_summary(roster, args.out)))
    else:
        print(
            f"wrote {args.out}: {len(roster.members)} members, {len(roster.edges)} edges "
            f"({args.topology}), hash {roster.hash_hex}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    from gossipmed.consortium.roster import load_roster

    roster = load_roster(args.file)
    if args.json:
        from dataclasses import asdict

        from gossipmed.consortium.secure_margins import secure_margins

        doc = roster.to_mapping()
        doc["task"] = roster.settings.task.to_mapping()
        listed = secure_margins(roster)
        if listed:
            doc["secure_margins"] = [asdict(m) for m in listed]
        print(dumps(doc))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{args.file}[/bold]  topology {roster.topology}  created {roster.created}")
    console.print(f"hash {roster.hash_hex}")
    gossip = roster.settings
    steps = "auto" if gossip.gossip_steps == 0 else str(gossip.gossip_steps)
    console.print(f"gossip: {steps} exchanges per round, {gossip.mixing} mixing weights")
    console.print(f"task: {gossip.task.describe()}")
    if gossip.secure_aggregation:
        console.print(
            f"secure aggregation: on (norm envelope: RMS {gossip.secagg_rms} per coordinate; "
            f"one contributor can move a sum anywhere within W x that envelope)"
        )
    from gossipmed.consortium.secure_margins import secure_margins, spent_neighbour_warnings

    margins = {m.site: m for m in secure_margins(roster)}
    columns = ["name", "peer id", "status", "neighbours", "addrs"]
    if margins:
        columns += ["threshold", "collusion", "dropouts"]
    table = Table(*columns)
    for m in roster.members:
        row = [
            m.name,
            m.peer_id,
            "[red]revoked[/red]" if m.revoked else "active",
            ", ".join(roster.neighbours(m.name)),
            " ".join(m.addrs),
        ]
        if margins:
            margin = margins.get(m.name)
            row += (
                [
                    f"{margin.threshold} of {margin.neighbours}",
                    str(margin.collusion),
                    str(margin.dropouts),
                ]
                if margin is not None
                else ["", "", ""]
            )
        table.add_row(*row)
    console.print(table)
    if margins:
        console.print(
            "secure aggregation per site: threshold (contributors needed), collusion "
            "(neighbours a lying receiver may have colluding without unmasking anyone), "
            "dropouts (silent or spent neighbours tolerated)"
        )
    _warn(roster.warnings() + spent_neighbour_warnings(roster))
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from gossipmed.consortium.roster import load_roster, save_roster

    roster = load_roster(args.file)
    new = roster.revoke(args.name)
    out = args.out or args.file
    save_roster(new, out)
    _warn(new.warnings())
    if args.json:
        print(dumps({**_summary(new, out), "revoked": args.name, "old_hash": roster.hash_hex}))
    else:
        print(f"revoked {args.name} in {out}: hash {roster.hash_hex} -> {new.hash_hex}")
        print("distribute the new file to every site; envelopes under the old hash are refused")
    return 0
