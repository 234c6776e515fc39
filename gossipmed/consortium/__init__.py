"""Who takes part: site identities, the roster and its shared settings, site folders, audit."""
