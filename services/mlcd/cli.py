"""The `mlcd` command. Every failure a user can cause ends in one clear line and a non-zero exit.

Command modules import heavy SDKs only inside their commands, so `mlcd --help` starts fast.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any

import typer

from mlcd import logs
from mlcd.commands import db, dlq, events, explain, gates, lineage, pipelines, policy, rollout, serving
from mlcd.config import Settings
from mlcd.errors import MlcdError


def _plain_type_labels() -> None:
    """Help says TEXT, INTEGER, PATH… (nothing for flags), not typer's Python labels `<str>`, `<bool>`."""
    import typer.core

    parameter: Any = typer.core._TyperParameter
    python_label = parameter.display_type
    plain = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "int range": "INTEGER",
             "float range": "NUMBER", "path": "PATH", "file": "FILE", "directory": "DIRECTORY"}  # fmt: skip

    def display_type(self: Any, ctx: Any) -> str:
        if getattr(self, "is_flag", False):
            return ""
        label = str(python_label(self, ctx)).strip("<>")
        listed = label.startswith("list[")
        label = label.removeprefix("list[").removesuffix("]")
        return plain.get(label, label.upper()) + ("..." if listed else "")

    parameter.display_type = display_type


_plain_type_labels()

app = typer.Typer(
    name="mlcd",
    help="Event-driven CI/CD for ML teams: pipelines, retraining, promotion gates and rollouts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(gates.app, name="gates", help="On-call promotion gates: list, show, approve, reject.")
app.add_typer(events.app, name="events", help="The event journal: list and tail.")
app.add_typer(dlq.app, name="dlq", help="Dead-lettered records: list and replay.")
app.add_typer(policy.app, name="policy", help="Policy files: check.")
app.add_typer(pipelines.app, name="pipelines", help="KFP pipelines: compile.")
app.add_typer(db.app, name="db", help="State store migrations.")
app.add_typer(serving.app)  # rollback MODEL, retrain MODEL, status [MODEL]
app.add_typer(rollout.app, name="rollout", help="Rollout control: promote, abort, pause, resume, retry.")
app.add_typer(explain.app)  # explain FILE
app.add_typer(lineage.app)  # lineage MODEL VERSION


def _settings(**overrides: object) -> Settings:
    return Settings.load().model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _configure_logs(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.secret_values())


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Listen address (MLCD_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Listen port (MLCD_HTTP_PORT).")] = None,
) -> None:
    """Run every service in one process on the embedded defaults."""
    from mlcd.local.up import up as run_up

    settings = _settings(http_host=host, http_port=port)
    progress = sys.stderr.isatty()
    if not progress:
        _configure_logs(settings)
    raise typer.Exit(asyncio.run(run_up(settings, progress=progress)))


@app.command()
def demo() -> None:
    """Play the whole story on the embedded defaults and print its timeline."""
    from mlcd.local.demo import run_demo

    settings = _settings()
    # The story and its timeline are the output; the services speak up only when something is wrong.
    logs.configure("WARNING", settings.secret_values())
    raise typer.Exit(asyncio.run(run_demo(settings)))


@app.command()
def serve(
    service: Annotated[
        str,
        typer.Argument(
            help="ingest, builder, validator, trainer, gatekeeper, deployer, notifier or lineage-export"
        ),
    ],
) -> None:
    """Run one microservice against the configured Kafka and PostgreSQL (what the Helm chart runs)."""
    from mlcd.serve import serve as run_serve

    settings = _settings()
    _configure_logs(settings)
    raise typer.Exit(asyncio.run(run_serve(settings, service)))


def main() -> None:
    try:
        app()
    except MlcdError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
