"""docker-compose.yml against the Compose Specification and against the CLI it runs."""

from __future__ import annotations

import copy
import inspect
import itertools
import json
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML
from typer.testing import CliRunner

from core.settings import Settings
from leadscout.cli import cli

ROOT = Path(__file__).resolve().parents[2]
APP_IMAGE = "leadscout-outbound:dev"
APP_SERVICES = ("migrate", "api", "worker", "campaign-worker", "relay", "reporter")
# check-jsonschema vendors the schema published by github.com/compose-spec/compose-spec.
COMPOSE_SPEC = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"

Compose = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Compose:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    loaded: Compose = YAML(typ="safe", pure=True).load(text)
    return loaded


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(COMPOSE_SPEC.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def conditions(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}; the short list form means service_started."""
    depends_on = service.get("depends_on", {})
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {name: spec["condition"] for name, spec in depends_on.items()}


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def dockerfile_instructions(keyword: str) -> list[str]:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    return [line.split(maxsplit=1)[1] for line in lines if line.startswith(f"{keyword} ")]


def resolve(args: list[str]) -> tuple[list[str], str]:
    """What ``leadscout ARGS`` runs: its subcommand path and its docstring's first line."""
    path = list(itertools.takewhile(lambda arg: not arg.startswith("-"), args))
    command = typer.main.get_command(cli)
    for name in path:
        subcommands = getattr(command, "commands", {})
        assert name in subcommands, f"leadscout has no command {name!r} there"
        command = subcommands[name]
    doc = inspect.getdoc(command.callback)
    assert doc is not None
    return path, doc.splitlines()[0]


def words(text: str) -> str:
    return " ".join(text.split())


class TestSchema:
    """The file is valid under the Compose Specification's JSON Schema."""

    def test_validates_against_the_compose_specification(
        self, compose: Compose, validator: Draft202012Validator
    ) -> None:
        errors = [error.message for error in validator.iter_errors(compose)]
        assert errors == []

    def test_schema_rejects_a_misspelt_service_key(
        self, compose: Compose, validator: Draft202012Validator
    ) -> None:
        broken = copy.deepcopy(compose)
        broken["services"]["api"]["comand"] = broken["services"]["api"].pop("command")
        assert not validator.is_valid(broken)

    def test_uses_the_versionless_compose_specification(self, compose: Compose) -> None:
        assert "version" not in compose


class TestAppCommands:
    """Every service on the app image runs a real ``leadscout`` subcommand."""

    def test_app_services_share_one_image_built_from_this_dockerfile(
        self, compose: Compose
    ) -> None:
        services = compose["services"]
        on_app_image = {name for name, spec in services.items() if spec.get("image") == APP_IMAGE}
        assert on_app_image == set(APP_SERVICES)
        assert {services[name]["build"] for name in APP_SERVICES} == {"."}
        assert (ROOT / "Dockerfile").is_file()

    @pytest.mark.parametrize("name", APP_SERVICES)
    def test_command_is_a_cli_subcommand(self, compose: Compose, name: str) -> None:
        program, *args = compose["services"][name]["command"]
        path, summary = resolve(args)

        result = CliRunner().invoke(cli, [*args, "--help"], prog_name="leadscout")

        assert program == "leadscout"
        assert result.exit_code == 0, result.output
        assert f"Usage: leadscout {' '.join(path)} [OPTIONS]" in words(result.output)
        assert words(summary) in words(result.output)

    def test_image_default_command_is_the_api_service_command(self, compose: Compose) -> None:
        assert [json.loads(cmd) for cmd in dockerfile_instructions("CMD")] == [
            compose["services"]["api"]["command"]
        ]


class TestDependencies:
    """Services wait for migrations and for stores that can report their health."""

    def test_app_services_wait_for_migrations_and_healthy_stores(self, compose: Compose) -> None:
        stores = {"postgres": "service_healthy", "redis": "service_healthy"}
        after_migrate = {**stores, "migrate": "service_completed_successfully"}
        waits = {name: conditions(compose["services"][name]) for name in APP_SERVICES}
        assert waits == {
            "migrate": {"postgres": "service_healthy"},
            "api": after_migrate,
            "worker": after_migrate,
            "campaign-worker": after_migrate,
            "relay": after_migrate,
            "reporter": after_migrate,
        }

    def test_every_dependency_names_a_service(self, compose: Compose) -> None:
        services = compose["services"]
        unknown = {
            (name, target)
            for name, spec in services.items()
            for target in conditions(spec)
            if target not in services
        }
        assert unknown == set()

    def test_service_healthy_targets_define_a_healthcheck(self, compose: Compose) -> None:
        services = compose["services"]
        targets = {
            target
            for spec in services.values()
            for target, condition in conditions(spec).items()
            if condition == "service_healthy"
        }
        assert targets == {"postgres", "redis"}
        for target in targets:
            healthcheck = services[target]["healthcheck"]
            assert healthcheck["test"][0] == "CMD"
            assert healthcheck.get("disable", False) is False

    def test_completed_successfully_targets_run_once(self, compose: Compose) -> None:
        services = compose["services"]
        targets = {
            target
            for spec in services.values()
            for target, condition in conditions(spec).items()
            if condition == "service_completed_successfully"
        }
        assert targets == {"migrate"}
        assert services["migrate"]["restart"] == "no"


class TestApiPort:
    """The api publishes, probes and exposes the port its command listens on."""

    def test_published_port_is_the_command_port(self, compose: Compose) -> None:
        api = compose["services"]["api"]
        port = option(api["command"], "--port")
        assert option(api["command"], "--host") == "0.0.0.0"
        assert api["ports"] == [f"{port}:{port}"]

    def test_healthcheck_asks_readyz_on_the_command_port(self, compose: Compose) -> None:
        api = compose["services"]["api"]
        port = option(api["command"], "--port")
        check, interpreter, flag, code = api["healthcheck"]["test"]
        assert (check, interpreter, flag) == ("CMD", "python", "-c")
        assert f"urlopen('http://127.0.0.1:{port}/readyz'" in code

    def test_dockerfile_exposes_the_command_port(self, compose: Compose) -> None:
        port = option(compose["services"]["api"]["command"], "--port")
        assert dockerfile_instructions("EXPOSE") == [port]


class TestSharedEnvironment:
    """App services share one environment whose URLs reach the compose stores."""

    def test_app_services_use_the_shared_environment(self, compose: Compose) -> None:
        shared = compose["x-leadscout-env"]
        assert {name: compose["services"][name]["environment"] for name in APP_SERVICES} == (
            dict.fromkeys(APP_SERVICES, shared)
        )

    def test_database_url_carries_the_postgres_credentials(self, compose: Compose) -> None:
        postgres = compose["services"]["postgres"]["environment"]
        url = urlsplit(compose["x-leadscout-env"]["LEADSCOUT_DATABASE_URL"])
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
        assert (url.username, url.password, url.path) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            f"/{postgres['POSTGRES_DB']}",
        )

    def test_postgres_healthcheck_asks_for_the_app_database(self, compose: Compose) -> None:
        postgres = compose["services"]["postgres"]
        env = postgres["environment"]
        assert postgres["healthcheck"]["test"] == [
            "CMD",
            "pg_isready",
            f"--username={env['POSTGRES_USER']}",
            f"--dbname={env['POSTGRES_DB']}",
        ]

    def test_redis_url_points_at_the_redis_service(self, compose: Compose) -> None:
        url = urlsplit(compose["x-leadscout-env"]["LEADSCOUT_REDIS_URL"])
        assert (url.scheme, url.hostname, url.port, url.path) == ("redis", "redis", 6379, "/0")
        assert "redis" in compose["services"]

    def test_settings_accept_the_shared_environment(
        self, compose: Compose, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        shared = compose["x-leadscout-env"]
        for name, value in shared.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        assert (settings.database_url, settings.redis_url, settings.log_format) == (
            shared["LEADSCOUT_DATABASE_URL"],
            shared["LEADSCOUT_REDIS_URL"],
            "json",
        )


class TestStores:
    """Postgres and the Redis broker keep their data in named volumes."""

    def test_stores_mount_declared_named_volumes(self, compose: Compose) -> None:
        mounts = {
            name: [volume.split(":")[0] for volume in compose["services"][name]["volumes"]]
            for name in ("postgres", "redis")
        }
        assert mounts == {"postgres": ["postgres-data"], "redis": ["redis-data"]}
        assert set(compose["volumes"]) == {"postgres-data", "redis-data"}

    def test_redis_appends_every_write_to_its_log(self, compose: Compose) -> None:
        assert compose["services"]["redis"]["command"] == ["redis-server", "--appendonly", "yes"]
