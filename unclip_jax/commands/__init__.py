"""Subcommands of the `unclip` console script (see `unclip_jax.cli.SUBCOMMANDS`)."""
