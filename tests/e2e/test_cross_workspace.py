"""Workspace isolation probed from outside (SPEC 3, 4): workspace A's key with workspace B's
real ids, on every /v1 route, in the path and in the body. The answers are exactly the
SPEC's (403 on B's path, 404 with the resource's code for B's ids, the pre-flight code for
B's ids in a body), none carries B's data, and nothing of B changes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from sqlalchemy import Engine, Table, select

from tests.e2e.support import Api, Catalog, assert_problem, minimal_catalog
from tests.world import World, body
from worker.store.tables import (
    batches,
    campaign_stats,
    channel_fences,
    channel_openings,
    commands,
    conversations,
    follow_ups,
    messages,
    outbox,
)

CAMPAIGN_B = "bravo-spring"
PHONE_B = "+5215500007777"
FINISH_TIMEOUT_S = 60


@dataclass(frozen=True)
class Bravo:
    """Workspace B with a finished initiation, a finished batch and counted stats."""

    api: Api
    catalog: Catalog
    user: UUID
    brand: UUID
    conversation: str
    command: str
    batch: str

    @property
    def ids(self) -> list[str]:
        """Everything of B that must never show up in an answer to A."""
        catalog = self.catalog
        return [
            str(self.api.world.workspace_id),
            *map(str, (catalog.agent, catalog.channel, catalog.template, catalog.contact)),
            str(self.user),
            str(self.brand),
            self.conversation,
            self.command,
            self.batch,
            PHONE_B,
        ]


def finished_command(api: Api, command_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    while (status := api.get(f"/commands/{command_id}").json())["status"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return dict(status)


def finished_batch(api: Api, batch_id: str, total: int) -> dict[str, Any]:
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    while True:
        status = api.get(f"/batches/{batch_id}").json()
        if status["counts"]["succeeded"] + status["counts"]["failed"] == total:
            return dict(status)
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def counted_stats(api: Api, campaign: str, created: int) -> dict[str, Any]:
    """The campaign's stats once the reporter counted ``created`` conversations."""
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    while (stats := api.get(f"/campaigns/{campaign}/stats").json())["created"] < created:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    return dict(stats)


@pytest.fixture
def bravo(other_api: Api, other_world: World) -> Bravo:
    brand = other_world.brand("Bravo Motors")
    agent = other_world.agent()
    catalog = Catalog(
        agent,
        other_world.channel(agent, brandId=brand),
        other_world.template(),
        other_world.contact(phone=PHONE_B),
    )
    user = other_world.user()
    answer = other_api.created(
        body(
            catalog.contact,
            catalog.template,
            campaignId=CAMPAIGN_B,
            handoffOverride={"userId": str(user)},
        )
    )
    second = {"contactId": str(other_world.contact(phone="+5215500007778"))}
    batch = other_api.post(
        "/outbound/batch",
        {
            "campaignId": CAMPAIGN_B,
            "defaults": {
                "template": {"templateId": str(catalog.template), "parameters": ["a", "b"]}
            },
            "items": [second],
        },
    )
    assert batch.status_code == 202, batch.text
    batch_id = batch.json()["batchId"]
    finished_batch(other_api, batch_id, total=1)
    counted_stats(other_api, CAMPAIGN_B, created=2)
    return Bravo(
        other_api,
        catalog,
        user,
        brand,
        answer["conversation"]["id"],
        answer["commandId"],
        batch_id,
    )


@dataclass(frozen=True)
class Alpha:
    """Workspace A with an active conversation of its own."""

    api: Api
    catalog: Catalog
    user: UUID
    conversation: str


@pytest.fixture
def alpha(api: Api, world: World) -> Alpha:
    catalog = minimal_catalog(world)
    answer = api.created(body(catalog.contact, catalog.template))
    return Alpha(api, catalog, world.user(), answer["conversation"]["id"])


def rows_of_b(engine: Engine, bravo: Bravo) -> dict[str, list[tuple[Any, ...]]]:
    """Every row that belongs to B, table by table (what the relay changes left out)."""
    workspace = bravo.api.world.workspace_id
    channel = bravo.catalog.channel
    in_b = select(conversations.c.id).where(conversations.c.workspace_id == workspace)
    wheres: dict[Table, Any] = {
        conversations: conversations.c.workspace_id == workspace,
        messages: messages.c.conversation_id.in_(in_b),
        follow_ups: follow_ups.c.conversation_id.in_(in_b),
        commands: commands.c.workspace_id == workspace,
        batches: batches.c.workspace_id == workspace,
        outbox: outbox.c.workspace_id == workspace,
        campaign_stats: campaign_stats.c.workspace_id == workspace,
        channel_fences: channel_fences.c.channel_id == channel,
        channel_openings: channel_openings.c.channel_id == channel,
    }
    with engine.connect() as conn:
        return {
            table.name: sorted(
                (tuple(row) for row in conn.execute(select(table).where(where))), key=repr
            )
            for table, where in wheres.items()
        }


def assert_no_data_of(bravo: Bravo, responses: list[httpx.Response]) -> None:
    for response in responses:
        leaked = [value for value in bravo.ids if value in response.text]
        assert leaked == [], f"{response.request.method} {response.request.url}: {leaked}"


class TestAnotherWorkspacesPath:
    """A's key on B's path answers 403 Forbidden on every route, whatever the ids."""

    def test_forbidden_on_every_route(self, alpha: Alpha, bravo: Bravo, engine: Engine) -> None:
        before = rows_of_b(engine, bravo)
        catalog = bravo.catalog
        initiation = body(catalog.contact, catalog.template, campaignId=CAMPAIGN_B)
        probes = [
            ("POST", "/outbound", initiation),
            ("POST", "/outbound/batch", {"campaignId": CAMPAIGN_B, "items": [initiation]}),
            ("GET", f"/batches/{bravo.batch}", None),
            ("GET", f"/commands/{bravo.command}", None),
            ("GET", f"/conversations/{bravo.conversation}", None),
            ("POST", f"/conversations/{bravo.conversation}/handoff", {"userId": str(bravo.user)}),
            ("POST", f"/conversations/{bravo.conversation}/close", None),
            ("GET", f"/campaigns/{CAMPAIGN_B}/stats", None),
        ]

        responses = [
            alpha.api.client.request(
                method, bravo.api.base + path, json=payload, headers=alpha.api.headers()
            )
            for method, path, payload in probes
        ]

        for response in responses:
            assert_problem(response, 403, "Forbidden")
        assert_no_data_of(bravo, responses)
        assert rows_of_b(engine, bravo) == before


class TestAnotherWorkspacesIdsInThePath:
    """B's ids on A's own path are unknown ids: 404 with the resource's code, the very answer
    an id that exists nowhere gets; B's campaign is a campaign with nothing counted."""

    def test_not_found_exactly_as_an_id_of_nowhere(
        self, alpha: Alpha, bravo: Bravo, engine: Engine
    ) -> None:
        before = rows_of_b(engine, bravo)
        handoff = {"userId": str(alpha.user)}
        probes = [
            ("GET", "/commands/{}", None, "CommandNotFound"),
            ("GET", "/conversations/{}", None, "ConversationNotFound"),
            ("POST", "/conversations/{}/handoff", handoff, "ConversationNotFound"),
            ("POST", "/conversations/{}/close", None, "ConversationNotFound"),
            ("GET", "/batches/{}", None, "BatchNotFound"),
        ]
        ids_of_b = [bravo.command, bravo.conversation, bravo.conversation, bravo.conversation]
        ids_of_b.append(bravo.batch)

        answers = []
        for (method, path, payload, code), id_of_b in zip(probes, ids_of_b, strict=True):
            of_b = alpha.api.client.request(
                method,
                alpha.api.base + path.format(id_of_b),
                json=payload,
                headers=alpha.api.headers(),
            )
            of_nowhere = alpha.api.client.request(
                method,
                alpha.api.base + path.format(uuid4()),
                json=payload,
                headers=alpha.api.headers(),
            )
            assert assert_problem(of_b, 404, code) == assert_problem(of_nowhere, 404, code)
            answers.append(of_b)

        stats = alpha.api.get(f"/campaigns/{CAMPAIGN_B}/stats")
        assert (stats.status_code, stats.json()) == (
            200,
            {"campaignId": CAMPAIGN_B, "created": 0, "reused": 0, "rejected": {}, "byChannel": {}},
        )
        assert_no_data_of(bravo, [*answers, stats])
        assert rows_of_b(engine, bravo) == before
        assert bravo.api.conversation(bravo.conversation).json()["status"] == "active"


class TestAnotherWorkspacesIdsInTheBody:
    """B's ids in A's bodies fail SPEC 4.1's pre-flight with the check's own code, in sync,
    async and batch mode alike, and a handoff to B's user is HandoffUserNotFound."""

    def cases(self, alpha: Alpha, bravo: Bravo) -> dict[str, dict[str, Any]]:
        """Expected code → A's valid request with one of B's ids in it."""
        mine = alpha.catalog
        return {
            "TemplateNotFound": body(mine.contact, bravo.catalog.template),
            "ContactNotFound": body(bravo.catalog.contact, mine.template),
            "BrandNotFound": body(mine.contact, mine.template, brandId=bravo.brand),
            "ProviderChannelNotFound": body(
                mine.contact, mine.template, providerChannelId=bravo.catalog.channel
            ),
            "HandoffUserNotFound": body(
                mine.contact, mine.template, handoffOverride={"userId": str(bravo.user)}
            ),
        }

    def test_initiations_fail_preflight(self, alpha: Alpha, bravo: Bravo, engine: Engine) -> None:
        before = rows_of_b(engine, bravo)
        cases = self.cases(alpha, bravo)

        sync = [alpha.api.initiate(request) for request in cases.values()]
        queued = [
            alpha.api.initiate(request, headers={"Prefer": "respond-async"})
            for request in cases.values()
        ]
        batch = alpha.api.post(
            "/outbound/batch",
            {
                "campaignId": "alpha",
                "items": list(cases.values()),
            },
        )

        for code, response in zip(cases, sync, strict=True):
            assert_problem(response, 404, code)
        statuses = [finished_command(alpha.api, r.json()["commandId"]) for r in queued]
        assert [(s["status"], s["error"]["code"]) for s in statuses] == [
            ("failed", code) for code in cases
        ]
        assert batch.status_code == 202, batch.text
        assert (batch.json()["accepted"], batch.json()["invalid"]) == (5, [])
        batch_status = finished_batch(alpha.api, batch.json()["batchId"], total=5)
        assert batch_status["errors"] == {code: 1 for code in sorted(cases)}
        assert_no_data_of(bravo, [*sync, *queued, batch])
        assert rows_of_b(engine, bravo) == before

    def test_handoff_to_a_user_of_another_workspace(
        self, alpha: Alpha, bravo: Bravo, engine: Engine
    ) -> None:
        before = rows_of_b(engine, bravo)

        response = alpha.api.handoff(alpha.conversation, {"userId": str(bravo.user)})

        assert_problem(response, 404, "HandoffUserNotFound")
        conversation = alpha.api.conversation(alpha.conversation).json()
        assert (conversation["control"], conversation["assignedUserId"]) == ("ai", None)
        assert_no_data_of(bravo, [response])
        assert rows_of_b(engine, bravo) == before
