"""How `gossipmed simulate` places its sites: every site in this process (`inprocess`, the
default), or in Ray actors that each host several (`ray`). Both run the one round loop of
node.sim.engine.rounds over site hosts (node.sim.engine.host)."""
