"""The `gossipmed` subcommands, one module each (discovered by node.cli)."""
