"""An intermittent offender must not get an honest contributor named.

The attacker knows when a sum failed (it sent the bad words) and, from the survivor list,
whom an exchange excluded. On the merge before this fix the suspect search started after one
failing sum, took suspects in sorted order and named the first whose exclusion made a sum
pass: one failed exchange followed by honest behaviour named the first honest contributor in
sorted order at every receiver, who then stayed excluded from that receiver's sums. Now the
search starts only when sums keep failing (START_AFTER in a row), suspects and the order of
each trial come from the OS CSPRNG, and a name needs K_TRIALS consistent trials
(tests/test_secagg_bound.py::test_a_name_always_rests_on_consistent_evidence).
"""

from __future__ import annotations

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


def test_one_failed_exchange_then_honesty_names_no_honest_contributor() -> None:
    net, schedule, events = _network()
    with _dishonest(_random_words(3)):
        _exchange(net, schedule, events, round=0, states=_states(0))
    for r in range(1, SITES + 1):  # from now on the attacker behaves
        _exchange(net, schedule, events, round=r, states=_states(r))
    wrongly = {site: who for site, (_, who) in _named(events).items() if who != ATTACKER}
    assert not wrongly, f"honest contributors named: {wrongly}"
