"""An intermittent offender must not get an honest contributor named (not fixed: xfail).

The suspect search (gossipmed.mixing.secagg.suspects) names the first contributor whose
exclusion makes a sum pass, after one failing sum, taking suspects in sorted order. All of
that is predictable by a contributor, and so is the outcome: the attacker knows when the sum
failed (it sent the bad words) and whom the next exchange excludes (sorted order, one step
per failure). So one failed exchange followed by honest behaviour names the first honest
contributor in sorted order, who then stays excluded from that receiver's sums and is named
in its audit log; repeating it moves the name on. The module's docstring concedes this; the
property the issue asks for ("no honest member named") does not hold. A fix needs the
receiver's choice of whom to exclude to be secret until the masked inputs are committed
(OS CSPRNG, with exchanges that exclude nobody mixed in) and a name to need repeated,
consistent evidence; see the attack report.
"""

from __future__ import annotations

import pytest
from test_secagg_bound import (
    ATTACKER,
    SITES,
    _dishonest,
    _exchange,
    _named,
    _network,
    _random_words,
    _states,
)


@pytest.mark.xfail(strict=True, reason="suspect search names on one predictable pass")
def test_one_failed_exchange_then_honesty_names_no_honest_contributor() -> None:
    net, schedule, events = _network()
    with _dishonest(_random_words(3)):
        _exchange(net, schedule, events, round=0, states=_states(0))
    for r in range(1, SITES + 1):  # from now on the attacker behaves
        _exchange(net, schedule, events, round=r, states=_states(r))
    wrongly = {site: who for site, (_, who) in _named(events).items() if who != ATTACKER}
    assert not wrongly, f"honest contributors named: {wrongly}"
