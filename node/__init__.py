"""The peer: transports, daemon, simulator and the command line (imports gossipmed, topology)."""
