"""gossipmed: the learning library (pure computation: no sockets, no event loops).

learn/       base model, adapters, data and datasets, DP-SGD training, evaluation
privacy/     the DP mechanism, accounting, the site's privacy ledger
mixing/      mixing rules (weighted, robust), drift correction, secure aggregation
wire/        the update type, tensors <-> bytes, codecs, compression, envelopes
consortium/  identities, the roster and its shared settings, site folders, audit log
storage/     private atomic files, a site's checkpoint
registry, choice, toml_writer, metrics, errors: shared by all of the above
"""

from gossipmed.errors import GossipmedError

__version__ = "0.1.0"
__all__ = ["GossipmedError", "__version__"]
