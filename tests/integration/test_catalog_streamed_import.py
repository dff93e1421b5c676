"""Catalog import (SPEC 3, SPEC 8) on real PostgreSQL: upsert by id, all or nothing, one line.

Files are streamed through the same reader and importer as ``leadscout catalog import``;
the last class runs the command itself.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import Engine, func, select

from schemas.catalog import CatalogFile
from worker.catalog_file import read_catalog
from worker.store import catalog, workspaces
from worker.store.tables import agents, brands, channels, contacts, templates, users

TABLES = {
    "brands": brands,
    "users": users,
    "agents": agents,
    "channels": channels,
    "templates": templates,
    "contacts": contacts,
}
NOTHING = {"inserted": 0, "updated": 0}
SECRET = "Zq-private-lead-data"


def new_workspace(engine: Engine) -> UUID:
    with engine.begin() as conn:
        workspace_id, _ = workspaces.create(conn, "Acme")
    return workspace_id


def contact(index: int, **fields: Any) -> dict[str, Any]:
    row = {
        "id": str(UUID(int=index + 1)),
        "name": f"{SECRET} {index}",
        "phone": f"+52155{index:08d}",
        "email": None,
        "optedOut": False,
    }
    return {**row, **fields}


def full_catalog(contact_count: int = 3) -> dict[str, list[dict[str, Any]]]:
    """One row of every kind, the channel referencing the brand, agent and advisor."""
    brand, user, agent = str(uuid4()), str(uuid4()), str(uuid4())
    return {
        "brands": [{"id": brand, "name": "Acme Motors"}],
        "users": [
            {"id": user, "name": "Ana", "email": "ana@acme.test", "role": "advisor", "active": True}
        ],
        "agents": [{"id": agent, "name": "Scout", "kind": "prospection", "active": True}],
        "channels": [
            {
                "id": str(uuid4()),
                "type": "whatsapp",
                "phoneNumber": "+5215512345678",
                "brandId": brand,
                "agentId": agent,
                "defaultAdvisorId": user,
                "active": True,
                "dailyLimit": 1000,
                "priority": 0,
            }
        ],
        "templates": [
            {
                "id": str(uuid4()),
                "name": "welcome_v2",
                "language": "es_MX",
                "category": "MARKETING",
                "status": "APPROVED",
                "body": "Hola {{1}}",
                "brandId": brand,
            }
        ],
        "contacts": [contact(i) for i in range(contact_count)],
    }


def channel_to(**refs: str) -> dict[str, Any]:
    return {
        "id": str(uuid4()),
        "type": "whatsapp",
        "phoneNumber": "+5215512345678",
        "active": True,
        "dailyLimit": 1000,
        "priority": 0,
        **refs,
    }


def import_json(engine: Engine, workspace_id: UUID, data: dict[str, Any] | bytes) -> Any:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with engine.begin() as conn:
        return catalog.import_rows(conn, workspace_id, read_catalog(io.BytesIO(raw)))


def row_counts(engine: Engine, workspace_id: UUID | None = None) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            kind: conn.execute(
                select(func.count())
                .select_from(table)
                .where(*([table.c.workspace_id == workspace_id] if workspace_id else []))
            ).scalar_one()
            for kind, table in TABLES.items()
        }


def refusal(engine: Engine, workspace_id: UUID, data: dict[str, Any] | bytes) -> str:
    """The import's one-line message; every catalog table is as it was before."""
    before = row_counts(engine)
    with pytest.raises(catalog.CatalogImportError) as caught:
        import_json(engine, workspace_id, data)
    assert row_counts(engine) == before
    message = str(caught.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


@pytest.fixture
def workspace(engine: Engine) -> UUID:
    return new_workspace(engine)


@pytest.fixture(params=["inline", "staged"])
def staging(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs a test with small kinds sent inline, and again with every kind COPYed to staging."""
    if request.param == "staged":
        monkeypatch.setattr(catalog, "_INLINE_ROWS", 0)


@pytest.mark.usefixtures("staging")
class TestCounts:
    """Every row is upserted by id; the counts say how many were new and how many existed."""

    def test_first_import_inserts_every_row(self, engine: Engine, workspace: UUID) -> None:
        counts = import_json(engine, workspace, full_catalog(contact_count=3))

        assert counts == {
            "brands": {"inserted": 1, "updated": 0},
            "users": {"inserted": 1, "updated": 0},
            "agents": {"inserted": 1, "updated": 0},
            "channels": {"inserted": 1, "updated": 0},
            "templates": {"inserted": 1, "updated": 0},
            "contacts": {"inserted": 3, "updated": 0},
        }
        assert row_counts(engine, workspace) == {**dict.fromkeys(TABLES, 1), "contacts": 3}

    def test_reimport_updates_existing_rows_and_inserts_new_ones(
        self, engine: Engine, workspace: UUID
    ) -> None:
        data = full_catalog(contact_count=3)
        import_json(engine, workspace, data)
        data["contacts"] = [contact(0, name="Luis", optedOut=True), contact(1), contact(7)]

        counts = import_json(engine, workspace, data)

        assert counts["contacts"] == {"inserted": 1, "updated": 2}
        assert counts["brands"] == counts["channels"] == {"inserted": 0, "updated": 1}
        with engine.connect() as conn:
            stored = conn.execute(
                select(contacts.c.name, contacts.c.opted_out).where(contacts.c.id == UUID(int=1))
            ).one()
        assert tuple(stored) == ("Luis", True)
        assert row_counts(engine, workspace)["contacts"] == 4

    def test_absent_kinds_count_zero_and_absent_references_are_null(
        self, engine: Engine, workspace: UUID
    ) -> None:
        channel = channel_to()
        counts = import_json(engine, workspace, {"channels": [channel]})

        assert counts == {
            **dict.fromkeys(TABLES, NOTHING),
            "channels": {"inserted": 1, "updated": 0},
        }
        with engine.connect() as conn:
            refs = conn.execute(
                select(channels.c.brand_id, channels.c.agent_id, channels.c.default_advisor_id)
            ).one()
        assert tuple(refs) == (None, None, None)

    def test_in_memory_catalog_goes_through_the_same_import(
        self, engine: Engine, workspace: UUID
    ) -> None:
        file = CatalogFile.model_validate(full_catalog(contact_count=2))
        with engine.begin() as conn:
            first = catalog.import_file(conn, workspace, file)
        with engine.begin() as conn:
            second = catalog.import_file(conn, workspace, file)

        assert first["contacts"] == {"inserted": 2, "updated": 0}
        assert second["contacts"] == {"inserted": 0, "updated": 2}

    def test_kinds_may_come_in_any_order(self, engine: Engine, workspace: UUID) -> None:
        data = full_catalog(contact_count=1)
        reordered = {kind: data[kind] for kind in reversed(list(data))}

        counts = import_json(engine, workspace, reordered)

        assert counts == {kind: {"inserted": 1, "updated": 0} for kind in TABLES}


class TestLargeFile:
    """A file far beyond the inline size streams through staging, still all or nothing."""

    def test_bad_row_at_the_end_of_a_large_file(self, engine: Engine, workspace: UUID) -> None:
        data = full_catalog(contact_count=50_000)
        data["contacts"][-1]["phone"] = "12"

        assert refusal(engine, workspace, data) == (
            "contacts[49999].phone: String should have at least 3 characters"
        )
        assert row_counts(engine) == dict.fromkeys(TABLES, 0)

    def test_reimport_of_a_large_file_counts_updates(self, engine: Engine, workspace: UUID) -> None:
        data = full_catalog(contact_count=2_000)
        import_json(engine, workspace, data)
        data["contacts"].append(contact(2_000))

        counts = import_json(engine, workspace, data)

        assert counts["contacts"] == {"inserted": 1, "updated": 2_000}
        assert row_counts(engine, workspace)["contacts"] == 2_001


@pytest.mark.usefixtures("staging")
class TestAllOrNothing:
    """A bad file is one message naming the row, and nothing is imported."""

    def test_invalid_json_after_valid_rows(self, engine: Engine, workspace: UUID) -> None:
        raw = json.dumps(full_catalog(contact_count=100)).encode()[:-40]

        assert refusal(engine, workspace, raw) == (
            "invalid JSON in contacts[99]: parse error: premature EOF"
        )
        assert row_counts(engine) == dict.fromkeys(TABLES, 0)

    def test_duplicate_id_names_both_rows(self, engine: Engine, workspace: UUID) -> None:
        data = full_catalog(contact_count=5)
        data["contacts"][4]["id"] = data["contacts"][1]["id"]

        assert refusal(engine, workspace, data) == (
            f"contacts[4].id: duplicate id {UUID(int=2)} (first at contacts[1])"
        )

    def test_duplicate_id_of_a_row_already_imported(self, engine: Engine, workspace: UUID) -> None:
        import_json(engine, workspace, {"contacts": [contact(0)]})

        assert refusal(engine, workspace, {"contacts": [contact(0), contact(0)]}) == (
            f"contacts[1].id: duplicate id {UUID(int=1)} (first at contacts[0])"
        )

    def test_id_of_another_workspace(self, engine: Engine, workspace: UUID) -> None:
        other = new_workspace(engine)
        import_json(engine, other, {"contacts": [contact(2)]})
        data = full_catalog(contact_count=4)

        assert refusal(engine, workspace, data) == (
            f"contacts[2].id: {UUID(int=3)} belongs to another workspace"
        )
        assert row_counts(engine, workspace) == dict.fromkeys(TABLES, 0)
        with engine.connect() as conn:
            owner = conn.execute(select(contacts.c.workspace_id, contacts.c.name)).one()
        assert tuple(owner) == (other, f"{SECRET} 2")

    def test_reference_to_a_missing_row(self, engine: Engine, workspace: UUID) -> None:
        missing = str(uuid4())
        data = full_catalog(contact_count=1)
        data["channels"].append(channel_to(agentId=missing))

        assert refusal(engine, workspace, data) == (
            f"channels[1].agentId: {missing} is not one of the workspace's agents"
        )

    def test_reference_to_another_workspaces_row(self, engine: Engine, workspace: UUID) -> None:
        other = new_workspace(engine)
        foreign_brand = str(uuid4())
        import_json(engine, other, {"brands": [{"id": foreign_brand, "name": "Other"}]})

        assert refusal(engine, workspace, {"channels": [channel_to(brandId=foreign_brand)]}) == (
            f"channels[0].brandId: {foreign_brand} is not one of the workspace's brands"
        )

    def test_reference_to_a_row_imported_before(self, engine: Engine, workspace: UUID) -> None:
        brand = str(uuid4())
        import_json(engine, workspace, {"brands": [{"id": brand, "name": "Acme"}]})

        counts = import_json(engine, workspace, {"channels": [channel_to(brandId=brand)]})

        assert counts["channels"] == {"inserted": 1, "updated": 0}

    def test_kind_given_twice(self, engine: Engine, workspace: UUID) -> None:
        raw = b'{"contacts": [], "brands": [], "contacts": []}'

        assert refusal(engine, workspace, raw) == "contacts: appears twice in the file"


def run_import(
    file: Path, workspace: UUID | str, database_url: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCOUT_")}
    env["LEADSCOUT_DATABASE_URL"] = database_url
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "leadscout",
            "catalog",
            "import",
            "--workspace",
            str(workspace),
            str(file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


class TestCommandLine:
    """`leadscout catalog import` prints the counts as JSON, or one line and exit code 1."""

    def test_prints_the_counts(
        self, engine: Engine, workspace: UUID, database_url: str, tmp_path: Path
    ) -> None:
        file = tmp_path / "catalog.json"
        file.write_text(json.dumps(full_catalog(contact_count=2)))

        done = run_import(file, workspace, database_url)

        assert (done.returncode, done.stderr) == (0, "")
        assert json.loads(done.stdout) == {
            **{kind: {"inserted": 1, "updated": 0} for kind in TABLES},
            "contacts": {"inserted": 2, "updated": 0},
        }

    @pytest.mark.parametrize(
        ("case", "expected"),
        [
            ("bad row", "{file}: contacts[1].phone: String should have at least 3 characters"),
            ("unknown workspace", "{file}: workspace {workspace} does not exist"),
            ("missing file", "cannot read {file}: No such file or directory"),
            ("database down", "{file}: database error: connection failed:"),
        ],
    )
    def test_failure_is_one_line_without_data(
        self, engine: Engine, database_url: str, tmp_path: Path, case: str, expected: str
    ) -> None:
        file = tmp_path / "catalog.json"
        data = full_catalog(contact_count=2)
        data["contacts"][1]["phone"] = "12"
        if case != "missing file":
            file.write_text(json.dumps(data))
        workspace = uuid4() if case == "unknown workspace" else new_workspace(engine)
        url = "postgresql://postgres@127.0.0.1:9/none" if case == "database down" else database_url

        done = run_import(file, workspace, url)

        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr.startswith(
            "leadscout: " + expected.format(file=file, workspace=workspace)
        )
        assert done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr
        assert SECRET not in done.stderr
        assert row_counts(engine) == dict.fromkeys(TABLES, 0)
