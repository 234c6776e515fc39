"""Names are matched in full: a trailing newline is not a second spelling of a member.

With `^...$` a name "site-01\\n" passes (`$` matches before a final newline), so a roster
could hold "site-01" and "site-01\\n" as two members that print identically."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_roster import ring

from gossipmed.consortium.member import check_site_name
from gossipmed.consortium.roster import load_roster, save_roster
from gossipmed.errors import RosterError
from gossipmed.mixing.secagg.params import valid_name

VALID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True)


def test_a_roster_member_named_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "roster.toml"
    save_roster(ring("abc"), path)
    # member c (own keys, own edges) renamed to "a" plus a newline: distinct only by "\n"
    path.write_text(path.read_text().replace('"c"', '"a\\n"'))
    with pytest.raises(RosterError, match="invalid site name"):
        load_roster(path)


@settings(max_examples=60, deadline=None)
@given(name=VALID, tail=st.sampled_from(["\n", "\r\n", " ", "\x00", "\t"]))
def test_a_valid_name_with_any_trailing_character_is_refused_everywhere(
    name: str, tail: str
) -> None:
    assert check_site_name(name) == name
    assert valid_name(name)
    with pytest.raises(RosterError):
        check_site_name(name + tail)
    assert not valid_name(name + tail)
