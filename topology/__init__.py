"""Graphs and mixing matrices for gossip (networkx + numpy; imports neither torch nor node)."""
