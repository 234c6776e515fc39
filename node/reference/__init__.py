"""The generated reference: the config schema with per-key descriptions, the CLI as markdown,
and the declared public Python API. docs/hooks.py renders these at site build time and the
docs tests check pages against them, so the reference never drifts from the code."""
