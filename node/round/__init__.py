"""One site's gossip round: the Peer's phases, its builder, its inbox and the async round driver."""
