"""One module per ``bloomlink`` subcommand (see ``bloomlink/cli.py`` for the contract)."""
