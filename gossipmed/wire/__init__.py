"""What travels between sites: the update type, tensors <-> bytes, codecs, compression and
envelopes."""
