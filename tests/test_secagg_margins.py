"""`consortium show` with secure aggregation: per site the threshold, the collusion and the
dropouts its neighbourhood tolerates, and a warning where one spent neighbour (a site whose
budget is spent stops running rounds) would leave a site below its threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossipmed.consortium.crypto import derive_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import save_roster
from gossipmed.consortium.secure_margins import secure_margins, spent_neighbour_warnings
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.consortium.setup import build_consortium
from node.cli import main

SECURE = ConsortiumSettings(secure_aggregation=True)


def _cards(n: int) -> list[Member]:
    out = []
    for i in range(n):
        ident = derive_identity(b"secagg-margins-secret", f"site-{i}")
        out.append(
            Member(
                name=f"site-{i}",
                peer_id=ident.peer_id,
                sign_key=ident.sign_key,
                box_key=ident.box_key,
                addrs=(f"/ip4/127.0.0.1/tcp/{4001 + i}",),
            )
        )
    return out


def test_margins_follow_the_threshold_rule() -> None:
    four = build_consortium(_cards(6), topology="random-regular", degree=4, settings=SECURE)
    assert {(m.neighbours, m.threshold, m.collusion, m.dropouts) for m in secure_margins(four)} == {
        (4, 3, 1, 1)
    }
    assert spent_neighbour_warnings(four) == []
    five = build_consortium(_cards(6), topology="complete", settings=SECURE)
    assert {(m.neighbours, m.threshold, m.collusion, m.dropouts) for m in secure_margins(five)} == {
        (5, 4, 2, 1)
    }
    plain = build_consortium(_cards(6), topology="complete")
    assert secure_margins(plain) == [] and spent_neighbour_warnings(plain) == []


def test_show_warns_where_one_spent_neighbour_leaves_a_site_below_its_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    three = build_consortium(_cards(6), topology="random-regular", degree=3, settings=SECURE)
    path = tmp_path / "consortium.toml"
    save_roster(three, path)
    assert main(["consortium", "show", str(path)]) == 0
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if "spent" in line]
    assert all(f"site-{i} (3 of 3 needed)" in warning for i in range(6))
    assert "collusion" in captured.out
    assert main(["consortium", "show", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["dropouts"] for m in doc["secure_margins"]] == [0] * 6
    assert [m["collusion"] for m in doc["secure_margins"]] == [2] * 6
