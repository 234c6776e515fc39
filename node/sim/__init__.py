"""`gossipmed simulate`: many sites in one process over the same Peer, faults and attacks."""
