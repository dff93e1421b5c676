"""Workers keep a workspace's catalog (all but its contacts) per process: an import bumps
``workspaces.catalog_version`` and the next initiation reads the catalog again; a hand edit
in SQL is seen once the kept copy is ``CACHE_TTL_S`` old."""

from __future__ import annotations

from uuid import UUID

import pytest
from redis import Redis
from sqlalchemy import Engine, select, update

from tests.world import DEFAULT_BODY, World, body
from worker.store import catalog
from worker.store.tables import templates, workspaces


@pytest.fixture
def world(engine: Engine, redis: Redis) -> World:
    world = World(engine, redis)
    world.channel(world.agent())
    return world


def version(engine: Engine, workspace_id: UUID) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(workspaces.c.catalog_version).where(workspaces.c.id == workspace_id)
            ).scalar_one()
        )


def reimport_template(world: World, template_id: UUID, status: str) -> None:
    world._import(
        "templates",
        {
            "id": str(template_id),
            "name": "welcome_v2",
            "language": "es_MX",
            "category": "MARKETING",
            "status": status,
            "body": DEFAULT_BODY,
            "brandId": None,
        },
    )


def code(outcome: object) -> str | None:
    error = getattr(outcome, "error", None)
    return error["code"] if error else None


def test_an_import_bumps_the_version_unless_it_holds_contacts_only(world, engine):
    before = version(engine, world.workspace_id)

    world.contacts(3)
    after_contacts = version(engine, world.workspace_id)
    world.template()
    world.user()

    assert (after_contacts, version(engine, world.workspace_id)) == (before, before + 2)


def test_an_import_is_seen_by_the_next_initiation(world):
    template = world.template()
    assert world.initiate(**body(world.contact(phone="+5215500000001"), template)).status == (
        "succeeded"
    )

    reimport_template(world, template, "REJECTED")
    rejected = world.initiate(**body(world.contact(phone="+5215500000002"), template))
    reimport_template(world, template, "APPROVED")
    approved = world.initiate(**body(world.contact(phone="+5215500000003"), template))

    assert (rejected.status, code(rejected)) == ("failed", "TemplateNotApproved")
    assert (approved.status, code(approved)) == ("succeeded", None)


@pytest.mark.parametrize(("ttl_s", "expected"), [(3600.0, "succeeded"), (0.0, "failed")])
def test_a_hand_edit_is_seen_once_the_kept_copy_is_ttl_old(
    world, engine, monkeypatch, ttl_s, expected
):
    monkeypatch.setattr(catalog, "CACHE_TTL_S", ttl_s)
    template = world.template()
    first, second = world.contacts(2)
    world.initiate(**body(first, template))
    with engine.begin() as conn:
        conn.execute(update(templates).where(templates.c.id == template).values(status="PAUSED"))

    outcome = world.initiate(**body(second, template))

    assert outcome.status == expected


def test_the_kept_catalogs_are_bounded(world, engine, redis, monkeypatch):
    monkeypatch.setattr(catalog, "CACHE_WORKSPACES", 2)
    others = [World(engine, redis, name=f"Other {n}") for n in range(3)]
    for each in [world, *others]:
        each.channel(each.agent())
        each.initiate(**body(each.contact(), each.template()))

    assert len(catalog._kept) <= 2
    assert others[-1].workspace_id in catalog._kept
