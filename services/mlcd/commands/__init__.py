"""`mlcd` sub-commands, one module per command group; each exposes a `typer.Typer` named `app`."""
