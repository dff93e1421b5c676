"""The ``leadscout`` command line (SPEC 8). Commands that print JSON print only that."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer

from core import collector, logs
from core.settings import ConfigurationError, get_settings

cli = typer.Typer(
    help="LeadScout Outbound: AI-initiated WhatsApp conversations.",
    no_args_is_help=True,
    # A traceback's local variables may hold API keys or a catalog file's rows.
    pretty_exceptions_show_locals=False,
)
workspace_cli = typer.Typer(help="Manage workspaces.", no_args_is_help=True)
catalog_cli = typer.Typer(help="Manage a workspace's catalog.", no_args_is_help=True)
cli.add_typer(workspace_cli, name="workspace")
events_cli = typer.Typer(help="Read the event stream.", no_args_is_help=True)
cli.add_typer(catalog_cli, name="catalog")
cli.add_typer(events_cli, name="events")
campaign_cli = typer.Typer(help="Launch campaigns through the HTTP API.", no_args_is_help=True)
cli.add_typer(campaign_cli, name="campaign")


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


@workspace_cli.command("rotate-key")
def workspace_rotate_key(
    workspace: Annotated[UUID, typer.Option("--workspace", help="Workspace id.")],
) -> None:
    """Replace the workspace's API keys with a new one; print {"workspaceId", "apiKey"} as JSON.

    Running APIs forget the old key at once, or within their 30 s key cache if Redis
    could not tell them.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from worker.runtime import resolved_urls
    from worker.store import workspaces
    from worker.store.db import get_engine

    database_url, redis_url = resolved_urls()
    try:
        with get_engine(database_url).begin() as conn:
            api_key, old_hashes = workspaces.rotate_key(conn, workspace)
    except workspaces.UnknownWorkspace:
        raise _fail(f"workspace {workspace} does not exist") from None
    except SQLAlchemyError as exc:
        raise _fail(f"{_failure(exc)}; the key was not rotated") from None
    _tell_running_apis(redis_url, old_hashes)
    _print_json({"workspaceId": str(workspace), "apiKey": api_key})


def _tell_running_apis(redis_url: str, old_hashes: list[str]) -> None:
    from redis import Redis
    from redis.exceptions import RedisError

    from worker.store.workspaces import announce_revoked

    try:
        with Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5) as redis:
            announce_revoked(redis, old_hashes)
    except RedisError as exc:
        from api_shim.guard import KEY_CACHE_S  # here: the API's imports are slow to load

        typer.echo(
            f"leadscout: key rotated, but running APIs were not told ({type(exc).__name__}):"
            f" the old key may work for up to {KEY_CACHE_S:.0f} s more",
            err=True,
        )


@catalog_cli.command("import")
def catalog_import(
    file: Annotated[Path, typer.Argument(help="Catalog JSON file (SPEC 3).")],
    workspace: Annotated[UUID, typer.Option("--workspace", help="Workspace id.")],
) -> None:
    """Upsert a catalog file into a workspace, all or nothing; print counts as JSON."""
    from worker.store.catalog import CatalogImportError

    try:
        counts = _import_catalog(file, workspace)
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror or type(exc).__name__}") from None
    except CatalogImportError as exc:
        raise _fail(f"{file}: {exc}; nothing imported") from None
    except Exception as exc:
        # Never a traceback: its statements, parameters and locals would print the file's data.
        raise _fail(f"{file}: {_failure(exc)}; nothing imported") from None
    _print_json(counts)


def _import_catalog(file: Path, workspace: UUID) -> dict[str, dict[str, int]]:
    from worker.catalog_file import read_catalog
    from worker.runtime import database_url
    from worker.store import catalog
    from worker.store.db import get_engine
    from worker.store.tables import workspaces

    # database_url alone: an import needs no Redis, so none is started.
    with file.open("rb") as fp, get_engine(database_url(get_settings())).begin() as conn:
        if conn.execute(workspaces.select().where(workspaces.c.id == workspace)).first() is None:
            raise catalog.CatalogImportError(f"workspace {workspace} does not exist")
        return catalog.import_rows(conn, workspace, read_catalog(fp))


def _failure(exc: Exception) -> str:
    """What failed, without the message's detail: it may quote the file's data."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    error = exc.orig if isinstance(exc, DBAPIError) else exc
    if not isinstance(error, psycopg.Error):
        return f"unexpected {type(error).__name__}"
    if error.sqlstate is None:  # raised by the client (connection, protocol): quotes no data
        return f"database error: {(str(error) or type(error).__name__).splitlines()[0]}"
    constraint = f", constraint {error.diag.constraint_name}" if error.diag.constraint_name else ""
    return f"database error: {type(error).__name__} (SQLSTATE {error.sqlstate}{constraint})"


@campaign_cli.command("launch")
def campaign_launch(
    workspace: Annotated[UUID, typer.Option("--workspace", help="Workspace id.")],
    template: Annotated[UUID, typer.Option("--template", help="Template of every row.")],
    contacts: Annotated[
        Path,
        typer.Option(
            "--contacts",
            help="CSV with a header row: contactId, then p1, p2, ... (template parameters).",
            exists=True,
            dir_okay=False,
        ),
    ],
    campaign: Annotated[
        str | None,
        typer.Option(
            "--campaign",
            help="Campaign id (1-128 of A-Z a-z 0-9 . _ - :). Default: the CSV's name and a"
            " hash of its contents (e.g. leads-1f0c2a9b3d4e5f60), so running the same file"
            " again resumes the same campaign.",
            show_default=False,
        ),
    ] = None,
    channel: Annotated[
        UUID | None,
        typer.Option("--channel", help="Provider channel for every row.", show_default=False),
    ] = None,
    api_url: Annotated[
        str, typer.Option("--api-url", envvar="LEADSCOUT_API_URL", help="Where the API is.")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LEADSCOUT_API_KEY",
            help="The workspace's API key (`leadscout dev` prints the demo one).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            help="Stop waiting for rows to finish this many seconds after the start.",
            min=0,
        ),
    ] = 1800.0,
    json_summary: Annotated[
        bool, typer.Option("--json", help="Print one JSON summary object instead of the table.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", hidden=True)] = 10_000,
) -> None:
    """Send a CSV of contacts as campaign batches (SPEC 4.3), then show the campaign's results.

    Interrupted? Run the same command again: it resumes, and nothing is created twice.
    """
    from rich.console import Console

    from leadscout import campaign as launcher

    if api_key is None:
        raise _fail("no API key: pass --api-key or set LEADSCOUT_API_KEY", 2)
    launch = launcher.Launch(
        contacts, str(template), campaign, str(channel) if channel else None, batch_size, timeout
    )
    collector.after_start_up()  # a launch of a million rows runs for minutes
    try:
        summary = launcher.launch(launch, api_url, api_key, str(workspace), Console(stderr=True))
    except launcher.UsageError as exc:
        raise _fail(str(exc), 2) from None
    except launcher.LaunchError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted: running the same command again resumes", 130) from None
    if json_summary:
        _print_json(summary.as_json())
    else:
        Console().print(launcher.table(summary))


Nice = Annotated[
    int,
    typer.Option(
        min=0,
        max=19,
        help="Lower this process's CPU priority by N (os.nice), so that on a shared host it"
        " leaves the cores to single initiations first: `leadscout dev` gives campaign workers"
        " and the reporter 10.",
    ),
]


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes or threads.")] = 2,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
    queues: Annotated[
        str,
        typer.Option(
            help="Comma-separated queues: 'leadscout' (single initiations) and"
            " 'leadscout.campaign' (campaign chunks)."
        ),
    ] = "leadscout,leadscout.campaign",
    nice: Nice = 0,
) -> None:
    """Run a Celery worker that processes initiation commands."""
    if nice:
        os.nice(nice)  # before the pool forks: its processes inherit it
    from worker import pool_metrics

    metrics_port = get_settings().metrics_port
    if metrics_port is not None:
        # First: prometheus-client picks multiprocess mode when the metrics are imported.
        pool_metrics.share_between_processes()
    from worker.celery_app import use_broker
    from worker.runtime import resolved_urls

    app = use_broker(resolved_urls()[1])
    if metrics_port is not None:
        pool_metrics.serve(metrics_port)
    app.worker_main(
        [
            "--quiet",
            "worker",
            "--loglevel=WARNING",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--queues={queues}",
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


@cli.command()
def reporter(nice: Nice = 0) -> None:
    """Count events into campaign stats (a consumer group; several reporters may run at once)."""
    if nice:
        os.nice(nice)
    from worker import reporter as stats_reporter
    from worker.runtime import resolved_urls

    stats_reporter.run_forever(*resolved_urls(), get_settings().events_stream)


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
