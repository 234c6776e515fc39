"""The peer: one site's round, transports, daemon, simulator and the command line.

    round/     the Peer's phases, its builder, inbox, the async round driver, [gossip] config
    net/       the Transport protocol, in-memory and libp2p transports, framing
    daemon/    `gossipmed run`: the site daemon, settings, status, control endpoint, clusters
    sim/       `gossipmed simulate`: lockstep simulation, learner factories, faults, attacks
    report/    `gossipmed inspect`: run summaries and plots
    commands/  one module per `gossipmed` subcommand
Imports flow one way: node -> gossipmed, topology.
"""
