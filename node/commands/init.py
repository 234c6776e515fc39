"""`gossipmed init`: create a site folder with its identity and print its public card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gossipmed.errors import ConfigError
from gossipmed.strict_json import dumps


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="create a site folder: site.toml, keys and the site's public card",
        description=(
            "Create SITE_DIR/site.toml (complete and commented: every table the daemon reads, "
            "at its defaults; it runs once the consortium file is saved as "
            "SITE_DIR/consortium.toml) and the site's identity: an Ed25519 signing key (its "
            "public key is the site's libp2p peer ID) and an X25519 key that neighbours "
            "encrypt updates to. Key files are written with mode 0600 and never overwritten. "
            "Prints the site's card (name, peer ID, public keys, addresses) as TOML and saves "
            "it to SITE_DIR/card.toml: send the card to whoever builds the consortium file."
        ),
    )
    p.add_argument("site_dir", type=Path, metavar="SITE_DIR", help="folder for this site")
    p.add_argument("--name", required=True, help="site name in the consortium, e.g. st-marys")
    p.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="address to listen on and advertise, repeatable (default /ip4/0.0.0.0/tcp/4001)",
    )
    p.add_argument(
        "--unreachable",
        action="store_true",
        help=(
            "this site accepts no inbound connections (a firewall that allows only outbound "
            "ones): the card says reachable = false and the site dials its neighbours itself"
        ),
    )
    p.add_argument("--json", action="store_true", help="print the card as one JSON object")
    p.set_defaults(func=run)


def _check_multiaddr(addr: str) -> None:
    from multiaddr import Multiaddr

    try:
        Multiaddr(addr)
    except Exception as exc:  # multiaddr raises several unrelated types
        raise ConfigError(f"--listen {addr!r} is not a valid multiaddr: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from gossipmed.consortium.setup import create_site
    from gossipmed.consortium.site import CARD_FILE, DEFAULT_LISTEN, SITE_FILE, load_site
    from gossipmed.storage.files import open_private
    from node.daemon.site_template import site_template

    listen = tuple(args.listen) if args.listen else DEFAULT_LISTEN
    for addr in listen:
        _check_multiaddr(addr)
    card = create_site(args.site_dir, name=args.name, listen=listen, reachable=not args.unreachable)
    # the complete, commented file: what create_site wrote plus every table the daemon reads
    text = site_template(load_site(args.site_dir).config)
    with open_private(args.site_dir / SITE_FILE, "w") as f:
        f.write(text)
    card_file = args.site_dir / CARD_FILE
    if args.json:
        doc = card.to_mapping()
        del doc["revoked"]
        print(dumps(doc))
    else:
        print(f"# card of site {card.name!r} (also saved to {card_file})")
        print(card.card_toml(), end="")
    return 0
