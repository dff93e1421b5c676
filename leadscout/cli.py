"""The ``leadscout`` command line (SPEC 8). Commands that print JSON print only that."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer
from pydantic import ValidationError

from core import logs
from core.settings import ConfigurationError, get_settings

cli = typer.Typer(
    help="LeadScout Outbound: AI-initiated WhatsApp conversations.", no_args_is_help=True
)
workspace_cli = typer.Typer(help="Manage workspaces.", no_args_is_help=True)
catalog_cli = typer.Typer(help="Manage a workspace's catalog.", no_args_is_help=True)
cli.add_typer(workspace_cli, name="workspace")
events_cli = typer.Typer(help="Read the event stream.", no_args_is_help=True)
cli.add_typer(catalog_cli, name="catalog")
cli.add_typer(events_cli, name="events")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"leadscout: {message}", err=True)
    return typer.Exit(code)


def _database_url() -> str:
    from worker.runtime import resolved_urls

    return resolved_urls()[0]


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data))


@cli.command()
def migrate() -> None:
    """Apply every database migration (alembic upgrade head)."""
    from worker.store.migrate import upgrade

    upgrade(_database_url())
    typer.echo("leadscout: database at head", err=True)


@workspace_cli.command("create")
def workspace_create(name: Annotated[str, typer.Option("--name", help="Workspace name.")]) -> None:
    """Create a workspace and print {"workspaceId", "apiKey"} as JSON."""
    from worker.store import workspaces
    from worker.store.db import get_engine

    with get_engine(_database_url()).begin() as conn:
        workspace_id, api_key = workspaces.create(conn, name)
    _print_json({"workspaceId": str(workspace_id), "apiKey": api_key})


@catalog_cli.command("import")
def catalog_import(
    file: Annotated[Path, typer.Argument(help="Catalog JSON file (SPEC 3).")],
    workspace: Annotated[UUID, typer.Option("--workspace", help="Workspace id.")],
) -> None:
    """Upsert a catalog file into a workspace, all or nothing; print counts as JSON."""
    from schemas.catalog import CatalogFile
    from worker.store import catalog
    from worker.store.db import get_engine
    from worker.store.tables import workspaces

    try:
        parsed = CatalogFile.model_validate_json(file.read_bytes())
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from None
    except ValidationError as exc:
        raise _fail(f"{file}: {_first_error(exc)}") from None
    with get_engine(_database_url()).begin() as conn:
        if conn.execute(workspaces.select().where(workspaces.c.id == workspace)).first() is None:
            raise _fail(f"workspace {workspace} does not exist")
        try:
            counts = catalog.import_file(conn, workspace, parsed)
        except catalog.CatalogImportError as exc:
            raise _fail(f"{file}: {exc}; nothing imported") from None
    _print_json(counts)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"]) or "file"
    return f"{location}: {error['msg']}; nothing imported"


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes or threads.")] = 2,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
) -> None:
    """Run a Celery worker that processes initiation commands."""
    from worker.celery_app import use_broker
    from worker.runtime import resolved_urls

    app = use_broker(resolved_urls()[1])
    app.worker_main(
        [
            "--quiet",
            "worker",
            "--loglevel=WARNING",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            "--queues=leadscout",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the HTTP API (FastAPI on uvicorn)."""
    import uvicorn

    from api_shim.app import create_app

    uvicorn.run(create_app(), host=host, port=port, log_config=None, access_log=False)


@cli.command()
def relay() -> None:
    """Move outbox rows to the event stream (several relays may run at once)."""
    from worker import relay as outbox_relay
    from worker.runtime import resolved_urls

    outbox_relay.run_forever(*resolved_urls(), get_settings().events_stream)


@events_cli.command("tail")
def events_tail(
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Print the whole stream first.")
    ] = False,
) -> None:
    """Follow the event stream, one line per event."""
    from leadscout.tail import tail
    from worker.runtime import resolved_urls

    tail(resolved_urls()[1], get_settings().events_stream, from_start=from_start)


@cli.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface the API binds.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API listens on.")] = 8000,
) -> None:
    """The whole stack on embedded PostgreSQL and Redis (data under .leadscout/)."""
    from leadscout import dev as dev_stack

    dev_stack.run(get_settings(), host, port)


def main() -> None:
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        typer.echo(f"leadscout: {exc}", err=True)
        sys.exit(2)
    logs.configure(settings.log_format)
    cli()
