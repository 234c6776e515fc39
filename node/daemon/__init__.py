"""`gossipmed run`: one site's daemon, its settings, status and control endpoint, local clusters."""
