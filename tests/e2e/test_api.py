"""The HTTP API of SPEC 4 against the real API, worker and relay processes."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from sqlalchemy import Engine, func, select, text, update

from tests import web
from tests.e2e.scrape import increase, samples, scrape
from tests.e2e.support import (
    PROBLEM_JSON,
    RENDERED,
    Api,
    Catalog,
    assert_problem,
    count,
    is_rfc3339,
    is_uuid,
    minimal_catalog,
)
from tests.world import World, body
from worker.store.tables import commands, conversations, follow_ups, messages, outbox

MAX_BODY_BYTES = 8 * 1024 * 1024
KEY = {"Idempotency-Key": "order-42"}
FOLLOW_UPS = [
    {"type": "text", "text": "¿Te interesa una prueba de manejo?"},
    {
        "type": "media",
        "mediaUrl": "https://cdn.acme.test/suv.jpg",
        "mimeType": "image/jpeg",
        "caption": "El nuevo SUV",
    },
]
CONTEXT = {
    "notes": ["Asked about SUVs at the fair"],
    "media": [
        {"url": "https://cdn.acme.test/quote.pdf", "mimeType": "application/pdf", "caption": "Q"}
    ],
}
OPT_IN = {
    "source": "web-form",
    "consentedAt": "2026-01-05T10:00:00Z",
    "Any Key": [1, 2.5, {"nested": None, "flag": True}],
}


def expected_result(
    world: World, catalog: Catalog, answer: dict[str, Any], follow_ups: int, reused: bool
) -> dict[str, Any]:
    """SPEC 4.1's 200 body for the minimal catalog; generated ids and times come from ``answer``."""
    conversation = answer["conversation"]
    assert all(is_uuid(v) for v in (conversation["id"], answer["commandId"])), answer
    assert all(is_rfc3339(conversation[k]) for k in ("createdAt", "updatedAt")), answer
    return {
        "conversation": {
            "id": conversation["id"],
            "workspaceId": str(world.workspace_id),
            "status": "active",
            "control": "ai",
            "agentId": str(catalog.agent),
            "channelId": str(catalog.channel),
            "contactId": str(catalog.contact),
            "assignedUserId": None,
            "brandId": None,
            "campaignId": None,
            "createdAt": conversation["createdAt"],
            "updatedAt": conversation["updatedAt"],
        },
        "contact": {"id": str(catalog.contact), "name": "Luis", "phone": "+5215598765432"},
        "template": {
            "id": str(catalog.template),
            "name": "welcome_v2",
            "language": "es_MX",
            "category": "MARKETING",
            "renderedBody": RENDERED,
        },
        "followUpsCount": follow_ups,
        "alreadyInitiated": reused,
        "commandId": answer["commandId"],
    }


def in_parallel(times: int, send: Any) -> list[httpx.Response]:
    """Calls ``send()`` from ``times`` threads released at the same instant."""
    start = threading.Barrier(times)

    def one(_: int) -> httpx.Response:
        start.wait()
        return send()

    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(one, range(times)))


def backdate_commands(engine: Engine, age: str) -> None:
    """Moves every command's creation ``age`` (a PostgreSQL interval) into the past."""
    with engine.begin() as conn:
        conn.execute(update(commands).values(created_at=func.now() - text(f"interval '{age}'")))


def poll_command(api: Api, status_url: str, timeout_s: float = 15) -> dict[str, Any]:
    """The command's status body once it is finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = api.client.get(status_url, headers=api.headers())
        assert response.status_code == 200, response.text
        if response.json()["status"] in ("succeeded", "failed"):
            return dict(response.json())
        assert time.monotonic() < deadline, f"still {response.json()['status']}"
        time.sleep(0.05)


class TestInitiateSucceeds:
    """A valid initiation opens an AI-controlled conversation and answers SPEC 4.1's 200."""

    def test_answers_the_full_200_body(self, api, world, catalog, engine):
        """Every field of the 200 body is there, with the catalog's ids and the rendered body."""
        response = api.initiate(
            body(catalog.contact, catalog.template, additionalMessages=FOLLOW_UPS)
        )

        assert (response.status_code, response.headers["content-type"]) == (
            200,
            "application/json",
        )
        answer = response.json()
        assert answer == expected_result(world, catalog, answer, follow_ups=2, reused=False)
        with engine.connect() as conn:
            assert conn.execute(select(conversations.c.id)).scalars().all() == [
                UUID(answer["conversation"]["id"])
            ]
            stored = conn.execute(select(commands.c.id, commands.c.status)).one()
        assert (str(stored.id), stored.status) == (answer["commandId"], "succeeded")

    def test_handoff_override_brand_and_campaign_are_stored(self, api, world):
        """The override user is assigned, the brand comes from the channel, the campaign is kept."""
        brand, user, agent = world.brand(), world.user(), world.agent()
        channel = world.channel(agent, brandId=brand, defaultAdvisorId=world.user())
        request = body(
            world.contact(),
            world.template(),
            handoffOverride={"userId": str(user)},
            campaignId="spring-promo:2026.v1",
        )

        conversation = api.created(request)["conversation"]

        assert (
            conversation["assignedUserId"],
            conversation["brandId"],
            conversation["channelId"],
            conversation["campaignId"],
        ) == (str(user), str(brand), str(channel), "spring-promo:2026.v1")
        stored = api.conversation(conversation["id"]).json()
        assert {key: stored[key] for key in conversation} == conversation

    def test_default_advisor_is_assigned_without_override(self, api, world):
        """Without handoffOverride the channel's defaultAdvisorId is the assigned user."""
        advisor = world.user()
        world.channel(world.agent(), defaultAdvisorId=advisor)

        conversation = api.created(body(world.contact(), world.template()))["conversation"]

        assert conversation["assignedUserId"] == str(advisor)
        assert api.conversation(conversation["id"]).json()["assignedUserId"] == str(advisor)

    def test_force_send_reuses_the_active_conversation(self, api, world, catalog, engine):
        """forceSend on an occupied explicit channel answers 200 with alreadyInitiated true."""
        first = api.created(
            body(catalog.contact, catalog.template, providerChannelId=catalog.channel)
        )
        request = body(
            catalog.contact,
            catalog.template,
            providerChannelId=catalog.channel,
            forceSend=True,
            additionalMessages=FOLLOW_UPS[:1],
        )

        answer = api.created(request)

        assert answer == expected_result(world, catalog, answer, follow_ups=1, reused=True)
        assert answer["conversation"]["id"] == first["conversation"]["id"]
        assert answer["commandId"] != first["commandId"]
        assert (count(engine, conversations), count(engine, messages)) == (1, 2)

    def test_force_send_without_an_active_conversation_opens_a_fresh_one(
        self, api, world, catalog, engine
    ):
        """forceSend with nothing to reuse simply opens a conversation."""
        answer = api.created(body(catalog.contact, catalog.template, forceSend=True))

        assert answer == expected_result(world, catalog, answer, follow_ups=0, reused=False)
        assert (count(engine, conversations), count(engine, messages)) == (1, 1)


class TestPreflightRejections:
    """Each failing pre-flight check answers its problem+json, with its extra members."""

    def test_template_not_found(self, api, catalog):
        """An unknown template id answers 404 TemplateNotFound."""
        assert_problem(api.initiate(body(catalog.contact, uuid4())), 404, "TemplateNotFound")

    def test_template_of_another_workspace_is_not_found(self, api, catalog, other_world):
        """Another workspace's template is as unknown as a random id."""
        foreign = other_world.template()

        assert_problem(api.initiate(body(catalog.contact, foreign)), 404, "TemplateNotFound")

    @pytest.mark.parametrize("status", ["PENDING", "REJECTED", "PAUSED", "DISABLED"])
    def test_template_not_approved(self, api, world, catalog, status):
        """A template that isn't APPROVED answers 422 with its status in templateStatus."""
        template = world.template(status=status)

        problem = assert_problem(
            api.initiate(body(catalog.contact, template)), 422, "TemplateNotApproved"
        )

        assert problem["templateStatus"] == status

    def test_template_parameters_mismatch(self, api, catalog):
        """One parameter for a two-placeholder template answers 422 with expected and got."""
        problem = assert_problem(
            api.initiate(body(catalog.contact, catalog.template, parameters=["Luis"])),
            422,
            "TemplateParametersMismatch",
        )

        assert (problem["expected"], problem["got"]) == (2, 1)

    def test_contact_not_found(self, api, catalog):
        """An unknown contact id answers 404 ContactNotFound."""
        assert_problem(api.initiate(body(uuid4(), catalog.template)), 404, "ContactNotFound")

    def test_contact_opted_out_even_with_force_send(self, api, world, catalog):
        """An opted-out contact answers 422 ContactOptedOut; forceSend does not bypass it."""
        contact = world.contact(opted_out=True)

        assert_problem(
            api.initiate(body(contact, catalog.template, forceSend=True)), 422, "ContactOptedOut"
        )

    def test_brand_not_found(self, api, catalog):
        """An unknown brandId answers 404 BrandNotFound."""
        assert_problem(
            api.initiate(body(catalog.contact, catalog.template, brandId=uuid4())),
            404,
            "BrandNotFound",
        )

    def test_provider_channel_not_found(self, api, catalog, other_world):
        """An explicit channel of another workspace answers 404 ProviderChannelNotFound."""
        foreign = other_world.channel(other_world.agent())

        assert_problem(
            api.initiate(body(catalog.contact, catalog.template, providerChannelId=foreign)),
            404,
            "ProviderChannelNotFound",
        )

    @pytest.mark.parametrize("fields", [{"active": False}, {"type": "sms"}, {"type": "email"}])
    def test_channel_not_eligible(self, api, world, catalog, fields):
        """An explicit channel that is inactive or not WhatsApp answers 422 ChannelNotEligible."""
        channel = world.channel(world.agent(), **fields)

        assert_problem(
            api.initiate(body(catalog.contact, catalog.template, providerChannelId=channel)),
            422,
            "ChannelNotEligible",
        )

    def test_channel_not_linked_to_the_brand_is_not_eligible(self, api, world, catalog):
        """An explicit channel of no brand, asked for with a brand, answers 422."""
        assert_problem(
            api.initiate(
                body(
                    catalog.contact,
                    catalog.template,
                    providerChannelId=catalog.channel,
                    brandId=world.brand(),
                )
            ),
            422,
            "ChannelNotEligible",
        )

    def test_no_whatsapp_channel_for_the_brand(self, api, world, catalog):
        """No active WhatsApp channel linked to the brand answers 422 NoWhatsAppChannel."""
        brand = world.brand()
        world.channel(world.agent(), brandId=brand, active=False)
        world.channel(world.agent(), brandId=brand, type="sms")

        assert_problem(
            api.initiate(body(catalog.contact, catalog.template, brandId=brand)),
            422,
            "NoWhatsAppChannel",
        )

    def test_no_prospection_agent(self, api, world):
        """Channels owned by a support agent, an inactive one or none answer 422."""
        world.channel(world.agent(kind="support"))
        world.channel(world.agent(active=False))
        world.channel(None)

        assert_problem(
            api.initiate(body(world.contact(), world.template())), 422, "NoProspectionAgent"
        )

    def test_explicit_channel_without_a_prospection_agent(self, api, world, catalog):
        """An explicit channel owned by a support agent answers 422 NoProspectionAgent."""
        channel = world.channel(world.agent(kind="support"))

        assert_problem(
            api.initiate(body(catalog.contact, catalog.template, providerChannelId=channel)),
            422,
            "NoProspectionAgent",
        )

    def test_handoff_user_not_found(self, api, catalog, other_world):
        """A handoff user of another workspace answers 404 HandoffUserNotFound."""
        request = body(
            catalog.contact, catalog.template, handoffOverride={"userId": str(other_world.user())}
        )

        assert_problem(api.initiate(request), 404, "HandoffUserNotFound")

    def test_handoff_user_inactive(self, api, world, catalog):
        """An inactive handoff user answers 422 HandoffUserInactive."""
        request = body(
            catalog.contact,
            catalog.template,
            handoffOverride={"userId": str(world.user(active=False))},
        )

        assert_problem(api.initiate(request), 422, "HandoffUserInactive")

    def test_active_conversation_exists(self, api, catalog):
        """An occupied explicit channel answers 409 naming and describing the blocking one."""
        request = body(catalog.contact, catalog.template, providerChannelId=catalog.channel)
        first = api.created(request)["conversation"]

        problem = assert_problem(api.initiate(request), 409, "ActiveConversationExists")

        assert problem["blockingConversationId"] == first["id"]
        assert problem["blockingConversation"] == {
            "id": first["id"],
            "status": "active",
            "control": "ai",
            "channelId": str(catalog.channel),
            "agentId": str(catalog.agent),
            "assignedUserId": None,
            "campaignId": None,
            "createdAt": first["createdAt"],
        }

    def test_all_provider_channels_occupied(self, api, world, catalog):
        """Every candidate occupied answers 409 with the blocking ids, most recent first."""
        world.channel(world.agent(), priority=1)
        request = body(catalog.contact, catalog.template)
        first = api.created(request)["conversation"]
        second = api.created(request)["conversation"]

        problem = assert_problem(api.initiate(request), 409, "AllProviderChannelsOccupied")

        assert first["channelId"] == str(catalog.channel) != second["channelId"]
        assert problem["blockingConversationIds"] == [second["id"], first["id"]]

    def test_channel_daily_limit_reached_on_an_explicit_channel(self, api, world, catalog, engine):
        """A fresh conversation on an explicit channel at its limit answers 429 naming it."""
        channel = world.channel(world.agent(), dailyLimit=0)

        problem = assert_problem(
            api.initiate(body(catalog.contact, catalog.template, providerChannelId=channel)),
            429,
            "ChannelDailyLimitReached",
        )

        assert problem["channelId"] == str(channel)
        assert count(engine, conversations) == 0

    def test_channel_daily_limit_reached_when_auto_selecting(self, api, world):
        """No candidate with quota left and none occupied answers 429."""
        world.channel(world.agent(), dailyLimit=0)
        world.channel(world.agent(), dailyLimit=0, priority=1)

        assert_problem(
            api.initiate(body(world.contact(), world.template())), 429, "ChannelDailyLimitReached"
        )

    def test_a_rejection_writes_only_its_outcome_and_event(self, api, world, catalog, engine):
        """A rejected initiation leaves no conversation, message or follow-up (invariant 5)."""
        contact = world.contact(opted_out=True)

        response = api.initiate(body(contact, catalog.template, additionalMessages=FOLLOW_UPS))

        assert_problem(response, 422, "ContactOptedOut")
        assert [count(engine, t) for t in (conversations, messages, follow_ups)] == [0, 0, 0]
        assert (count(engine, commands), count(engine, outbox)) == (1, 1)


class TestOccupancyAndQuota:
    """Check 10 over HTTP: reuse ignores quota, closed conversations still count, sticky sender."""

    def test_a_reuse_is_never_refused_for_quota(self, api, world, catalog):
        """forceSend on an occupied explicit channel at its limit reuses (200), never 429."""
        channel = world.channel(catalog.agent, dailyLimit=1)
        request = body(catalog.contact, catalog.template, providerChannelId=channel)
        first = api.created(request)

        answer = api.created({**request, "forceSend": True})

        assert (answer["alreadyInitiated"], answer["conversation"]["id"]) == (
            True,
            first["conversation"]["id"],
        )

    def test_force_send_never_opens_past_the_limit(self, api, world, catalog, engine):
        """forceSend with nothing to reuse on a channel at its limit answers 429."""
        channel = world.channel(catalog.agent, dailyLimit=0)
        request = body(catalog.contact, catalog.template, providerChannelId=channel, forceSend=True)

        problem = assert_problem(api.initiate(request), 429, "ChannelDailyLimitReached")

        assert problem["channelId"] == str(channel)
        assert count(engine, conversations) == 0

    def test_a_closed_conversation_still_counts_against_the_limit(self, api, world, catalog):
        """Fresh conversations of the last 24 h count even when closed since."""
        channel = world.channel(catalog.agent, dailyLimit=1)
        request = body(catalog.contact, catalog.template, providerChannelId=channel)
        api.close(api.created(request)["conversation"]["id"])

        assert_problem(api.initiate(request), 429, "ChannelDailyLimitReached")

    def test_occupied_and_exhausted_candidates_answer_409(self, api, world, catalog):
        """No unoccupied candidate with quota, one occupied: 409 naming its conversation."""
        occupied = api.created(body(catalog.contact, catalog.template))["conversation"]
        world.channel(catalog.agent, dailyLimit=0, priority=1)

        problem = assert_problem(
            api.initiate(body(catalog.contact, catalog.template)),
            409,
            "AllProviderChannelsOccupied",
        )

        assert problem["blockingConversationIds"] == [occupied["id"]]

    def test_force_send_reuses_the_first_occupied_candidate(self, api, world, catalog):
        """Every candidate occupied and forceSend: the most recent conversation is reused."""
        world.channel(catalog.agent, priority=1)
        request = body(catalog.contact, catalog.template)
        api.created(request)
        latest = api.created(request)["conversation"]

        answer = api.created({**request, "forceSend": True})

        assert (answer["alreadyInitiated"], answer["conversation"]["id"]) == (True, latest["id"])

    def test_sticky_sender_beats_priority(self, api, world, catalog):
        """A channel the contact already used wins over a channel of better priority."""
        used = world.channel(catalog.agent, priority=5)
        request = body(catalog.contact, catalog.template)
        first = api.created({**request, "providerChannelId": str(used)})["conversation"]
        api.close(first["id"])

        again = api.created(request)["conversation"]

        assert again["channelId"] == str(used) != str(catalog.channel)

    def test_reuse_keeps_the_assigned_user_without_override(self, api, world, catalog):
        """A reuse gives control back to the agent and keeps the assigned user."""
        user = world.user()
        conversation_id = api.created(body(catalog.contact, catalog.template))["conversation"]["id"]
        assert api.handoff(conversation_id, {"userId": str(user)}).json()["control"] == "human"

        reused = api.created(body(catalog.contact, catalog.template, forceSend=True))

        conversation = reused["conversation"]
        assert (conversation["id"], conversation["control"], conversation["assignedUserId"]) == (
            conversation_id,
            "ai",
            str(user),
        )

    def test_reuse_with_override_reassigns(self, api, world, catalog):
        """A reuse with handoffOverride assigns that user."""
        first = api.created(body(catalog.contact, catalog.template))["conversation"]
        user = world.user()
        request = body(
            catalog.contact, catalog.template, forceSend=True, handoffOverride={"userId": str(user)}
        )

        answer = api.created(request)

        assert (answer["alreadyInitiated"], answer["conversation"]["id"]) == (True, first["id"])
        assert answer["conversation"]["assignedUserId"] == str(user)
        assert api.conversation(first["id"]).json()["assignedUserId"] == str(user)


AUTHED_PATHS = [
    ("POST", "/outbound"),
    ("GET", "/commands/{id}"),
    ("GET", "/conversations/{id}"),
    ("POST", "/conversations/{id}/handoff"),
    ("POST", "/conversations/{id}/close"),
]


class TestAuth:
    """The key is checked first on every /v1 path: 401 without a valid one, 403 elsewhere."""

    @pytest.mark.parametrize(("method", "path"), AUTHED_PATHS)
    def test_no_key_is_unauthorized(self, api, method, path):
        """A request without X-API-Key answers 401 Unauthorized."""
        url = api.base + path.format(id=uuid4())

        assert_problem(api.client.request(method, url, json={}), 401, "Unauthorized")

    @pytest.mark.parametrize(("method", "path"), AUTHED_PATHS)
    def test_unknown_key_is_unauthorized(self, api, method, path):
        """A key that belongs to no workspace answers 401 Unauthorized."""
        url = api.base + path.format(id=uuid4())
        headers = {"X-API-Key": "lsk_" + "x" * 43}

        assert_problem(
            api.client.request(method, url, json={}, headers=headers), 401, "Unauthorized"
        )

    @pytest.mark.parametrize(("method", "path"), AUTHED_PATHS)
    def test_other_workspace_path_is_forbidden(self, api, other_api, method, path):
        """A valid key on another existing workspace's path answers 403 Forbidden."""
        url = other_api.base + path.format(id=uuid4())

        response = api.client.request(method, url, json={}, headers=api.headers())

        assert_problem(response, 403, "Forbidden")

    @pytest.mark.parametrize("workspace", [str(uuid4()), "not-a-uuid", "0"])
    def test_unknown_or_malformed_workspace_path_is_forbidden(self, api, catalog, workspace):
        """A valid key on a workspace that doesn't exist, or isn't a UUID, answers 403."""
        url = f"/v1/workspaces/{workspace}/leadscout/outbound"

        response = api.client.post(
            url, json=body(catalog.contact, catalog.template), headers=api.headers()
        )

        assert_problem(response, 403, "Forbidden")

    def test_key_is_checked_before_the_body(self, api):
        """No key and malformed JSON answers 401, not 422."""
        response = api.client.post(api.base + "/outbound", content=b"{not json")

        assert_problem(response, 401, "Unauthorized")

    def test_workspace_is_checked_before_the_body(self, api, other_api):
        """A valid key on another workspace's path with malformed JSON answers 403, not 422."""
        response = api.client.post(
            other_api.base + "/outbound", content=b"{not json", headers=api.headers()
        )

        assert_problem(response, 403, "Forbidden")

    def test_key_is_checked_before_the_size(self, api):
        """No key and a body over 8 MiB answers 401, not 413."""
        response = api.client.post(api.base + "/outbound", content=b" " * (MAX_BODY_BYTES + 1))

        assert_problem(response, 401, "Unauthorized")


def _valid() -> dict[str, Any]:
    return body(uuid4(), uuid4())


INVALID_BODIES: dict[str, tuple[bytes, list[list[Any]]]] = {
    "malformed JSON": (b'{"contactId": ', [["body"]]),
    "empty body": (b"", [["body"]]),
    "a JSON array": (b"[]", [["body"]]),
    "unknown top-level field": (
        json.dumps({**_valid(), "colour": "red"}).encode(),
        [["body", "colour"]],
    ),
    "unknown nested field": (
        json.dumps({**_valid(), "template": {"templateId": str(uuid4()), "lang": "es"}}).encode(),
        [["body", "template", "lang"]],
    ),
    "snake_case field": (
        json.dumps({**_valid(), "force_send": True}).encode(),
        [["body", "force_send"]],
    ),
    "six additionalMessages": (
        json.dumps({**_valid(), "additionalMessages": [FOLLOW_UPS[0]] * 6}).encode(),
        [["body", "additionalMessages"]],
    ),
    "campaignId with a space": (
        json.dumps({**_valid(), "campaignId": "spring promo"}).encode(),
        [["body", "campaignId"]],
    ),
    "campaignId of 129 characters": (
        json.dumps({**_valid(), "campaignId": "c" * 129}).encode(),
        [["body", "campaignId"]],
    ),
    "missing contactId": (
        json.dumps({"template": {"templateId": str(uuid4())}}).encode(),
        [["body", "contactId"]],
    ),
    "missing template.templateId": (
        json.dumps({"contactId": str(uuid4()), "template": {}}).encode(),
        [["body", "template", "templateId"]],
    ),
    "forceSend not a boolean": (
        json.dumps({**_valid(), "forceSend": "yes"}).encode(),
        [["body", "forceSend"]],
    ),
}


class TestBodyValidation:
    """A body of the wrong shape answers 422 ValidationError with errors and accepts nothing."""

    @pytest.mark.parametrize("case", list(INVALID_BODIES))
    def test_invalid_body(self, api, engine, case):
        """Each shape error is listed with its location and a message."""
        content, locations = INVALID_BODIES[case]

        response = api.client.post(
            api.base + "/outbound",
            content=content,
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        problem = assert_problem(response, 422, "ValidationError")
        assert [error["loc"] for error in problem["errors"]] == locations
        assert all(set(e) == {"loc", "msg"} and e["msg"] for e in problem["errors"])
        assert count(engine, commands) == 0

    def test_opt_in_accepts_any_object(self, api, catalog):
        """Unknown members inside optIn are accepted and stored exactly as sent."""
        opt_in = {"anything": {"goes": [1, -2.5, "x", None, True]}, "": {}, "Ünïcode": []}
        request = body(catalog.contact, catalog.template, optIn=opt_in)

        created = api.created(request)["conversation"]

        assert api.conversation(created["id"]).json()["optIn"] == opt_in

    def test_idempotency_key_longer_than_255_characters(self, api, catalog, engine):
        """An Idempotency-Key over 255 characters answers 422 ValidationError."""
        response = api.initiate(
            body(catalog.contact, catalog.template), headers={"Idempotency-Key": "k" * 256}
        )

        problem = assert_problem(response, 422, "ValidationError")
        assert [error["loc"] for error in problem["errors"]] == [["header", "Idempotency-Key"]]
        assert count(engine, commands) == 0


def _spliced(request: dict[str, Any], member: str) -> bytes:
    """The request's JSON text with ``member`` (raw JSON text) spliced in as its last member."""
    return (json.dumps(request)[:-1] + ", " + member + "}").encode()


HOSTILE_BODIES = {
    "NUL in an optIn value": '"optIn": {"x": "a\\u0000b"}',
    "NUL in an optIn key": '"optIn": {"a\\u0000": 1}',
    "NUL in a context note": '"context": {"notes": ["a\\u0000"]}',
    "NUL in a follow-up text": '"additionalMessages": [{"type": "text", "text": "a\\u0000"}]',
    "lone surrogate in optIn": '"optIn": {"x": "\\ud800"}',
    "100,000 nested arrays": '"optIn": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "NaN": '"optIn": {"x": NaN}',
    "Infinity": '"optIn": {"x": -Infinity}',
}


class TestHostileBodies:
    """Bodies that are not valid, storable JSON answer 422 ValidationError, never 5xx or 200."""

    @pytest.mark.parametrize("case", list(HOSTILE_BODIES))
    def test_refused_as_a_validation_error(self, api, catalog, engine, case):
        """The body is refused with a 422 problem and nothing is accepted."""
        member = HOSTILE_BODIES[case]

        response = api.client.post(
            api.base + "/outbound",
            content=_spliced(body(catalog.contact, catalog.template), member),
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        assert_problem(response, 422, "ValidationError")
        assert count(engine, commands) == 0


class TestPayloadTooLarge:
    """A body over 8 MiB answers 413 PayloadTooLarge, declared or streamed."""

    def test_declared_length_over_8_mib(self, api, engine):
        """A Content-Length over 8 MiB answers 413."""
        response = api.client.post(
            api.base + "/outbound",
            content=b" " * (MAX_BODY_BYTES + 1),
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        assert_problem(response, 413, "PayloadTooLarge")
        assert count(engine, commands) == 0

    def test_chunked_body_over_8_mib(self, api, engine):
        """A chunked body without Content-Length that grows past 8 MiB answers 413."""
        chunks = (b" " * (1024 * 1024) for _ in range(9))

        response = api.client.post(
            api.base + "/outbound",
            content=chunks,
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        assert_problem(response, 413, "PayloadTooLarge")
        assert count(engine, commands) == 0

    def test_exactly_8_mib_is_read(self, api):
        """A body of exactly 8 MiB is not too large: its shape is checked (422)."""
        content = b" " * (MAX_BODY_BYTES - 2) + b"{}"

        response = api.client.post(
            api.base + "/outbound",
            content=content,
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        problem = assert_problem(response, 422, "ValidationError")
        assert [error["loc"] for error in problem["errors"]] == [
            ["body", "contactId"],
            ["body", "template"],
        ]


class TestRoutes:
    """Unknown routes and wrong methods answer problem+json too."""

    def test_unknown_route_outside_v1(self, client):
        """An unknown path answers 404 NotFound."""
        assert_problem(client.get("/nope"), 404, "NotFound")

    def test_unknown_route_inside_a_workspace(self, api):
        """An unknown path under the workspace, with a valid key, answers 404 NotFound."""
        assert_problem(api.get("/nope"), 404, "NotFound")

    def test_wrong_method(self, api):
        """GET on the initiate path answers 405 MethodNotAllowed with Allow."""
        response = api.get("/outbound")

        assert_problem(response, 405, "MethodNotAllowed")
        assert response.headers["allow"] == "POST"

    def test_wrong_method_on_an_operations_path(self, client):
        """DELETE /healthz answers 405 MethodNotAllowed."""
        assert_problem(client.delete("/healthz"), 405, "MethodNotAllowed")


class TestAsyncMode:
    """Prefer: respond-async answers 202 at once; the status URL gives the outcome."""

    def test_accepted_then_succeeded(self, api, world, catalog):
        """202 with the status URL as Location, then succeeded with the 200 body as result."""
        response = api.initiate(
            body(catalog.contact, catalog.template), headers={"Prefer": "respond-async"}
        )

        assert response.status_code == 202, response.text
        accepted = response.json()
        command_id = accepted["commandId"]
        status_url = f"/v1/workspaces/{world.workspace_id}/leadscout/commands/{command_id}"
        assert accepted == {"commandId": command_id, "status": "accepted", "statusUrl": status_url}
        assert is_uuid(command_id)
        assert response.headers["location"] == status_url
        assert response.headers["preference-applied"] == "respond-async"
        final = poll_command(api, status_url)
        assert final == {
            "commandId": command_id,
            "status": "succeeded",
            "result": expected_result(world, catalog, final["result"], 0, reused=False),
            "error": None,
        }
        assert final["result"]["commandId"] == command_id

    def test_accepted_then_failed(self, api, catalog):
        """A rejected async command ends failed, its problem under error and no result."""
        response = api.initiate(body(catalog.contact, uuid4()), headers={"Prefer": "respond-async"})

        assert response.status_code == 202, response.text
        final = poll_command(api, response.json()["statusUrl"])
        assert (final["commandId"], final["status"], final["result"]) == (
            response.json()["commandId"],
            "failed",
            None,
        )
        error = final["error"]
        assert set(error) == {"type", "title", "status", "detail", "code"}
        assert (error["type"], error["status"], error["code"]) == (
            "https://leadscout.dev/problems/TemplateNotFound",
            404,
            "TemplateNotFound",
        )

    def test_respond_async_among_other_preferences(self, api, catalog):
        """respond-async is honoured inside a list of preferences."""
        response = api.initiate(
            body(catalog.contact, catalog.template), headers={"Prefer": "wait=5, respond-async"}
        )

        assert response.status_code == 202, response.text
        assert response.headers["preference-applied"] == "respond-async"
        assert response.json()["status"] == "accepted"
        assert poll_command(api, response.json()["statusUrl"])["status"] == "succeeded"

    def test_status_of_a_sync_command_carries_its_200_body(self, api, catalog):
        """GET command after a sync 200 answers succeeded with that exact body as result."""
        answer = api.created(body(catalog.contact, catalog.template))

        status = api.get(f"/commands/{answer['commandId']}").json()

        assert status == {
            "commandId": answer["commandId"],
            "status": "succeeded",
            "result": answer,
            "error": None,
        }

    def test_status_of_a_rejected_command_carries_its_problem(self, api, catalog, engine):
        """GET command after a sync rejection answers failed with that exact problem as error."""
        problem = assert_problem(
            api.initiate(body(catalog.contact, uuid4())), 404, "TemplateNotFound"
        )
        with engine.connect() as conn:
            command_id = str(conn.execute(select(commands.c.id)).scalar_one())

        status = api.get(f"/commands/{command_id}").json()

        assert status == {
            "commandId": command_id,
            "status": "failed",
            "result": None,
            "error": problem,
        }

    def test_sync_answer_has_no_preference_applied(self, api, world, catalog):
        """The default sync answer is the 200 body, with no Preference-Applied header."""
        response = api.initiate(body(catalog.contact, catalog.template))

        assert response.status_code == 200, response.text
        assert "preference-applied" not in response.headers
        answer = response.json()
        assert answer == expected_result(world, catalog, answer, follow_ups=0, reused=False)

    def test_command_of_another_workspace_is_not_found(self, api, other_api, catalog):
        """Another workspace cannot read a command: 404 CommandNotFound."""
        command_id = api.created(body(catalog.contact, catalog.template))["commandId"]

        assert api.get(f"/commands/{command_id}").status_code == 200
        assert_problem(other_api.get(f"/commands/{command_id}"), 404, "CommandNotFound")

    @pytest.mark.parametrize("command_id", [str(uuid4()), "not-a-uuid", "1"])
    def test_unknown_or_malformed_command_id_is_not_found(self, api, command_id):
        """An unknown or malformed command id answers 404 CommandNotFound."""
        assert_problem(api.get(f"/commands/{command_id}"), 404, "CommandNotFound")


class TestSyncWaitRunsOut:
    """When the sync wait runs out the answer is 202 with the status, without Preference-Applied."""

    def test_answers_202_with_location(self, api, catalog, workerless_api_url):
        """A command nobody processes in time answers 202 accepted with Location."""
        with web.client(base_url=workerless_api_url, timeout=30) as slow:
            started = time.monotonic()
            response = slow.post(
                api.base + "/outbound",
                json=body(catalog.contact, catalog.template),
                headers=api.headers(),
            )
            waited = time.monotonic() - started

        assert response.status_code == 202, response.text
        command_id = response.json()["commandId"]
        status_url = f"{api.base}/commands/{command_id}"
        assert response.json() == {
            "commandId": command_id,
            "status": "accepted",
            "statusUrl": status_url,
        }
        assert response.headers["location"] == status_url
        assert "preference-applied" not in response.headers
        assert waited >= 0.5
        assert api.get(f"/commands/{command_id}").json() == {
            "commandId": command_id,
            "status": "accepted",
            "result": None,
            "error": None,
        }

    def test_replay_of_a_running_command_waits_for_the_same_command(
        self, api, catalog, engine, workerless_api_url
    ):
        """A replay while the first is unfinished waits too, then answers 202 with its id."""
        request = body(catalog.contact, catalog.template)
        with web.client(base_url=workerless_api_url, timeout=30) as slow:
            first, second = (
                slow.post(api.base + "/outbound", json=request, headers=api.headers(**KEY))
                for _ in range(2)
            )

        assert (first.status_code, second.status_code) == (202, 202)
        assert second.json() == first.json()
        assert count(engine, commands) == 1


class TestIdempotency:
    """The same Idempotency-Key and body give the same command and outcome, done once."""

    def test_sequential_replay_returns_the_same_answer(self, api, catalog, engine):
        """A replay answers the identical body with the same commandId; one conversation."""
        request = body(catalog.contact, catalog.template)
        first = api.initiate(request, headers=KEY)
        second = api.initiate(request, headers=KEY)

        assert (first.status_code, second.status_code) == (200, 200)
        assert second.json() == first.json()
        assert (count(engine, conversations), count(engine, commands)) == (1, 1)

    def test_replay_of_a_rejection_returns_the_same_problem(self, api, catalog, engine):
        """A replayed rejected command answers the same problem, not a second attempt."""
        request = body(catalog.contact, uuid4())
        first = api.initiate(request, headers=KEY)
        second = api.initiate(request, headers=KEY)

        assert_problem(first, 404, "TemplateNotFound")
        assert second.json() == first.json()
        assert (count(engine, commands), count(engine, outbox)) == (1, 1)

    def test_equal_json_with_other_formatting_is_the_same_body(self, api, catalog, engine):
        """Bodies equal as parsed JSON (member order, spacing) are one command."""
        request = body(catalog.contact, catalog.template, campaignId="c1")
        reordered = json.dumps(dict(reversed(list(request.items()))), indent=2)
        first = api.initiate(request, headers=KEY)
        second = api.client.post(
            api.base + "/outbound",
            content=reordered,
            headers=api.headers(**KEY, **{"Content-Type": "application/json"}),
        )

        assert (first.status_code, second.status_code) == (200, 200)
        assert second.json()["commandId"] == first.json()["commandId"]
        assert count(engine, commands) == 1

    def test_same_key_with_another_body_is_refused(self, api, catalog, engine):
        """The same key with a different body answers 422 IdempotencyKeyReused."""
        api.initiate(body(catalog.contact, catalog.template), headers=KEY)

        response = api.initiate(
            body(catalog.contact, catalog.template, forceSend=True), headers=KEY
        )

        assert_problem(response, 422, "IdempotencyKeyReused")
        assert (count(engine, commands), count(engine, messages)) == (1, 1)

    def test_key_is_scoped_to_the_workspace(self, api, other_api, catalog):
        """The same key in another workspace is another command."""
        theirs = minimal_catalog(other_api.world)
        first = api.initiate(body(catalog.contact, catalog.template), headers=KEY)
        second = other_api.initiate(body(theirs.contact, theirs.template), headers=KEY)

        assert (first.status_code, second.status_code) == (200, 200)
        assert first.json()["commandId"] != second.json()["commandId"]
        assert (
            first.json()["conversation"]["workspaceId"],
            second.json()["conversation"]["workspaceId"],
        ) == (str(api.world.workspace_id), str(other_api.world.workspace_id))

    def test_async_replay_gets_the_same_command(self, api, catalog, engine):
        """Two async requests with one key both answer 202 with the same commandId."""
        headers = {**KEY, "Prefer": "respond-async"}
        request = body(catalog.contact, catalog.template)
        first = api.initiate(request, headers=headers)
        second = api.initiate(request, headers=headers)

        assert (first.status_code, second.status_code) == (202, 202)
        assert second.json()["commandId"] == first.json()["commandId"]
        assert poll_command(api, first.json()["statusUrl"])["status"] == "succeeded"
        assert (count(engine, commands), count(engine, conversations)) == (1, 1)

    def test_racing_replays_share_one_command(self, api, catalog, engine):
        """Eight simultaneous replays all answer 200 with one commandId and one conversation."""
        request = body(catalog.contact, catalog.template)

        answers = in_parallel(8, lambda: api.initiate(request, headers=KEY))

        assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
        assert len({a.json()["commandId"] for a in answers}) == 1
        assert len({a.content for a in answers}) == 1
        assert (count(engine, commands), count(engine, conversations)) == (1, 1)

    def test_a_key_older_than_24_hours_is_taken_by_a_new_command(self, api, catalog, engine):
        """Past the window the same key and body run again; the old command keeps its outcome."""
        request = body(catalog.contact, catalog.template, forceSend=True)
        first = api.initiate(request, headers=KEY)
        backdate_commands(engine, "24 hours 1 second")

        second = api.initiate(request, headers=KEY)
        third = api.initiate(request, headers=KEY)

        assert (first.status_code, second.status_code, third.status_code) == (200, 200, 200)
        old, new = first.json(), second.json()
        assert new["commandId"] != old["commandId"]
        assert (new["alreadyInitiated"], new["conversation"]["id"]) == (
            True,
            old["conversation"]["id"],
        )
        assert third.json() == new
        assert api.get(f"/commands/{old['commandId']}").json() == {
            "commandId": old["commandId"],
            "status": "succeeded",
            "result": old,
            "error": None,
        }
        assert (count(engine, commands), count(engine, messages)) == (2, 2)

    def test_a_key_just_inside_the_window_replays_the_command(self, api, catalog, engine):
        """A key used 23 h 59 min ago still answers its command's outcome, done once."""
        request = body(catalog.contact, catalog.template, forceSend=True)
        first = api.initiate(request, headers=KEY)
        backdate_commands(engine, "23 hours 59 minutes")

        second = api.initiate(request, headers=KEY)

        assert (first.status_code, second.status_code) == (200, 200)
        assert second.json() == first.json()
        assert (count(engine, commands), count(engine, messages)) == (1, 1)


class TestConcurrentInitiations:
    """Many simultaneous requests for one contact and channel open exactly one conversation."""

    def test_24_requests_without_a_key_give_one_200_and_23_409(self, api, catalog, engine):
        """One request wins; the other 23 answer 409 ActiveConversationExists naming it."""
        request = body(catalog.contact, catalog.template, providerChannelId=catalog.channel)

        answers = in_parallel(24, lambda: api.initiate(request))

        statuses = Counter(a.status_code for a in answers)
        assert statuses == {200: 1, 409: 23}, [a.text for a in answers]
        winner = next(a.json() for a in answers if a.status_code == 200)
        losers = [a for a in answers if a.status_code == 409]
        problems = [assert_problem(a, 409, "ActiveConversationExists") for a in losers]
        assert {p["blockingConversationId"] for p in problems} == {winner["conversation"]["id"]}
        assert (count(engine, conversations), count(engine, commands)) == (1, 24)
        assert count(engine, messages) == 1

    def test_24_auto_selected_requests_fill_each_channel_once(self, api, world, catalog, engine):
        """Three channels: three 200s on distinct channels, 21 AllProviderChannelsOccupied."""
        world.channel(catalog.agent, priority=1)
        world.channel(catalog.agent, priority=2)
        request = body(catalog.contact, catalog.template)

        answers = in_parallel(24, lambda: api.initiate(request))

        codes = Counter(a.json().get("code", a.status_code) for a in answers)
        assert codes == {200: 3, "AllProviderChannelsOccupied": 21}, [a.text for a in answers]
        channels = {a.json()["conversation"]["channelId"] for a in answers if a.status_code == 200}
        assert len(channels) == 3
        assert count(engine, conversations) == 3

    def test_24_force_send_requests_give_one_created_and_23_reused(self, api, catalog, engine):
        """With forceSend one request opens the conversation and the other 23 reuse it."""
        request = body(
            catalog.contact, catalog.template, providerChannelId=catalog.channel, forceSend=True
        )

        answers = in_parallel(24, lambda: api.initiate(request))

        assert [a.status_code for a in answers] == [200] * 24, [a.text for a in answers]
        assert Counter(a.json()["alreadyInitiated"] for a in answers) == {False: 1, True: 23}
        assert len({a.json()["conversation"]["id"] for a in answers}) == 1
        assert (count(engine, conversations), count(engine, messages)) == (1, 24)

    def test_daily_limit_holds_under_concurrency(self, api, world, catalog, engine):
        """Ten leads at once on a channel with dailyLimit 3: three 200s and seven 429s."""
        channel = world.channel(catalog.agent, dailyLimit=3)
        contacts = [world.contact(phone=f"+52155000000{n:02d}") for n in range(10)]
        requests = iter([body(c, catalog.template, providerChannelId=channel) for c in contacts])
        lock = threading.Lock()

        def send() -> httpx.Response:
            with lock:
                request = next(requests)
            return api.initiate(request)

        answers = in_parallel(10, send)

        codes = Counter(a.json().get("code", a.status_code) for a in answers)
        assert codes == {200: 3, "ChannelDailyLimitReached": 7}, [a.text for a in answers]
        assert count(engine, conversations) == 3


class TestConversationRead:
    """GET conversation answers SPEC 4.4's flat object, for this workspace only."""

    def test_flat_object_with_messages_follow_ups_context_and_opt_in(self, api, catalog):
        """The conversation, its template message, follow-ups as sent, context and optIn."""
        request = body(
            catalog.contact,
            catalog.template,
            additionalMessages=FOLLOW_UPS,
            context=CONTEXT,
            optIn=OPT_IN,
        )
        created = api.created(request)["conversation"]

        response = api.conversation(created["id"])

        assert response.status_code == 200
        detail = response.json()
        assert is_rfc3339(detail["messages"][0]["createdAt"])
        assert detail == {
            **created,
            "messages": [
                {
                    "kind": "template",
                    "body": RENDERED,
                    "status": "queued",
                    "templateId": str(catalog.template),
                    "createdAt": detail["messages"][0]["createdAt"],
                }
            ],
            "followUps": [
                {"position": 1, "content": FOLLOW_UPS[0], "status": "pending"},
                {"position": 2, "content": FOLLOW_UPS[1], "status": "pending"},
            ],
            "context": CONTEXT,
            "optIn": OPT_IN,
        }

    def test_context_and_opt_in_are_null_when_never_sent(self, api, catalog):
        """A conversation started without context or optIn has them null and no follow-ups."""
        created = api.created(body(catalog.contact, catalog.template))["conversation"]

        detail = api.conversation(created["id"]).json()

        assert (detail["context"], detail["optIn"], detail["followUps"]) == (None, None, [])

    def test_reuse_appends_the_message_and_continues_follow_up_positions(self, api, catalog):
        """A reuse adds a second template message; its follow-ups continue at position 3."""
        first = api.created(body(catalog.contact, catalog.template, additionalMessages=FOLLOW_UPS))
        again = body(
            catalog.contact,
            catalog.template,
            parameters=["Luisa", "Eva"],
            forceSend=True,
            additionalMessages=FOLLOW_UPS[:1],
        )
        api.created(again)

        detail = api.conversation(first["conversation"]["id"]).json()

        assert [m["body"] for m in detail["messages"]] == [RENDERED, "Hola Luisa, soy Eva de Acme"]
        assert [(f["position"], f["content"]) for f in detail["followUps"]] == [
            (1, FOLLOW_UPS[0]),
            (2, FOLLOW_UPS[1]),
            (3, FOLLOW_UPS[0]),
        ]

    def test_reuse_replaces_campaign_context_and_opt_in_only_when_sent(self, api, catalog):
        """Present, non-null fields replace the stored ones; absent or null keep them."""
        first = body(
            catalog.contact, catalog.template, campaignId="c1", context=CONTEXT, optIn=OPT_IN
        )
        conversation_id = api.created(first)["conversation"]["id"]
        api.created(body(catalog.contact, catalog.template, forceSend=True, optIn=None))
        kept = api.conversation(conversation_id).json()
        api.created(
            body(catalog.contact, catalog.template, forceSend=True, campaignId="c2", optIn={"v": 2})
        )

        replaced = api.conversation(conversation_id).json()

        assert (kept["campaignId"], kept["context"], kept["optIn"]) == ("c1", CONTEXT, OPT_IN)
        assert (replaced["campaignId"], replaced["context"], replaced["optIn"]) == (
            "c2",
            CONTEXT,
            {"v": 2},
        )

    def test_another_workspaces_conversation_is_not_found(self, api, other_api, catalog):
        """Another workspace reading the conversation gets 404 ConversationNotFound."""
        created = api.created(body(catalog.contact, catalog.template))["conversation"]

        assert_problem(other_api.conversation(created["id"]), 404, "ConversationNotFound")

    @pytest.mark.parametrize("conversation_id", [str(uuid4()), "not-a-uuid", "42"])
    def test_unknown_or_malformed_id_is_not_found(self, api, conversation_id):
        """An unknown or malformed conversation id answers 404 ConversationNotFound."""
        assert_problem(api.conversation(conversation_id), 404, "ConversationNotFound")


class TestHandoff:
    """Handoff gives control to an active user of the workspace, in SPEC 4.4's check order."""

    @pytest.fixture
    def conversation(self, api, catalog) -> dict[str, Any]:
        return dict(api.created(body(catalog.contact, catalog.template))["conversation"])

    def test_hands_the_conversation_to_a_human(self, api, world, conversation):
        """200 with control human and the user assigned, as the flat object."""
        user = world.user()

        response = api.handoff(conversation["id"], {"userId": str(user)})

        assert response.status_code == 200, response.text
        detail = response.json()
        assert (detail["id"], detail["control"], detail["assignedUserId"], detail["status"]) == (
            conversation["id"],
            "human",
            str(user),
            "active",
        )
        assert len(detail["messages"]) == 1
        assert api.conversation(conversation["id"]).json() == detail

    def test_closed_conversation_is_refused(self, api, world, conversation):
        """Handing off a closed conversation answers 409 ConversationClosed."""
        api.close(conversation["id"])

        response = api.handoff(conversation["id"], {"userId": str(world.user())})

        assert_problem(response, 409, "ConversationClosed")
        stored = api.conversation(conversation["id"]).json()
        assert (stored["status"], stored["control"], stored["assignedUserId"]) == (
            "closed",
            "ai",
            None,
        )

    def test_closed_is_checked_before_the_body(self, api, conversation):
        """A closed conversation with a malformed body answers 409, not 422."""
        api.close(conversation["id"])

        assert_problem(api.handoff(conversation["id"], {"user": 1}), 409, "ConversationClosed")

    def test_unknown_conversation_is_checked_before_the_body(self, api):
        """An unknown conversation with a malformed body answers 404, not 422."""
        response = api.handoff(str(uuid4()), {"user": 1})

        assert_problem(response, 404, "ConversationNotFound")

    def test_another_workspaces_conversation_is_not_found(self, api, other_api, conversation):
        """Another workspace cannot hand the conversation off: 404, and nothing changes."""
        user = other_api.world.user()

        response = other_api.handoff(conversation["id"], {"userId": str(user)})

        assert_problem(response, 404, "ConversationNotFound")
        assert api.conversation(conversation["id"]).json()["control"] == "ai"

    def test_size_is_checked_before_the_conversation(self, api):
        """A body over 8 MiB for an unknown conversation answers 413, not 404."""
        response = api.client.post(
            f"{api.base}/conversations/{uuid4()}/handoff",
            content=b" " * (MAX_BODY_BYTES + 1),
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        assert_problem(response, 413, "PayloadTooLarge")

    def test_deeply_nested_body(self, api, conversation):
        """A body of 100,000 nested arrays is a 422 ValidationError, not a 500."""
        response = api.client.post(
            f"{api.base}/conversations/{conversation['id']}/handoff",
            content=b"[" * 100_000 + b"]" * 100_000,
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        assert_problem(response, 422, "ValidationError")

    def test_unknown_user(self, api, other_world, conversation):
        """A user of another workspace answers 404 HandoffUserNotFound."""
        response = api.handoff(conversation["id"], {"userId": str(other_world.user())})

        assert_problem(response, 404, "HandoffUserNotFound")
        stored = api.conversation(conversation["id"]).json()
        assert (stored["control"], stored["assignedUserId"]) == ("ai", None)

    def test_inactive_user(self, api, world, conversation):
        """An inactive user answers 422 HandoffUserInactive and changes nothing."""
        response = api.handoff(conversation["id"], {"userId": str(world.user(active=False))})

        assert_problem(response, 422, "HandoffUserInactive")
        assert api.conversation(conversation["id"]).json()["control"] == "ai"

    @pytest.mark.parametrize(
        ("payload", "locations"),
        [
            ({}, [["body", "userId"]]),
            ({"userId": "nope"}, [["body", "userId"]]),
            ({"userId": str(uuid4()), "note": "x"}, [["body", "note"]]),
            (None, [["body"]]),
        ],
    )
    def test_bad_body(self, api, conversation, payload, locations):
        """A body of the wrong shape answers 422 ValidationError."""
        problem = assert_problem(api.handoff(conversation["id"], payload), 422, "ValidationError")

        assert [error["loc"] for error in problem["errors"]] == locations


class TestClose:
    """Close sets status closed once, frees the channel, and is a no-op when repeated."""

    def test_closes_the_conversation(self, api, catalog):
        """200 with status closed, as the flat object."""
        created = api.created(body(catalog.contact, catalog.template))["conversation"]

        response = api.close(created["id"])

        assert response.status_code == 200, response.text
        detail = response.json()
        assert (detail["id"], detail["status"], detail["control"]) == (
            created["id"],
            "closed",
            "ai",
        )
        assert len(detail["messages"]) == 1
        assert api.conversation(created["id"]).json() == detail

    def test_closing_again_changes_nothing_and_emits_nothing(self, api, catalog, engine):
        """A second close answers the same 200 and writes no outbox row."""
        created = api.created(body(catalog.contact, catalog.template))["conversation"]
        first = api.close(created["id"])
        rows = count(engine, outbox)

        second = api.close(created["id"])

        assert (first.status_code, second.status_code) == (200, 200)
        assert second.json() == first.json()
        assert rows == count(engine, outbox) == 2

    def test_a_new_initiation_after_close_opens_a_fresh_conversation(self, api, catalog, engine):
        """The channel is free again: the next initiation opens a new conversation."""
        request = body(catalog.contact, catalog.template, providerChannelId=catalog.channel)
        first = api.created(request)["conversation"]
        api.close(first["id"])

        again = api.created(request)

        assert again["alreadyInitiated"] is False
        assert again["conversation"]["id"] != first["id"]
        assert again["conversation"]["status"] == "active"
        assert count(engine, conversations) == 2

    def test_another_workspaces_conversation_is_not_found(self, api, other_api, catalog):
        """Another workspace cannot close the conversation: 404, and it stays active."""
        created = api.created(body(catalog.contact, catalog.template))["conversation"]

        assert_problem(other_api.close(created["id"]), 404, "ConversationNotFound")
        assert api.conversation(created["id"]).json()["status"] == "active"

    def test_size_is_checked_before_the_conversation(self, api):
        """A body over 8 MiB to close an unknown conversation answers 413, not 404."""
        response = api.client.post(
            f"{api.base}/conversations/{uuid4()}/close",
            content=b" " * (MAX_BODY_BYTES + 1),
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        assert_problem(response, 413, "PayloadTooLarge")

    def test_unknown_conversation(self, api):
        """Closing an unknown conversation answers 404 ConversationNotFound."""
        assert_problem(api.close(str(uuid4())), 404, "ConversationNotFound")


SPEC_PATHS = {
    "/v1/workspaces/{workspaceId}/leadscout/outbound": "post",
    "/v1/workspaces/{workspaceId}/leadscout/commands/{commandId}": "get",
    "/v1/workspaces/{workspaceId}/leadscout/conversations/{conversationId}": "get",
    "/v1/workspaces/{workspaceId}/leadscout/conversations/{conversationId}/handoff": "post",
    "/v1/workspaces/{workspaceId}/leadscout/conversations/{conversationId}/close": "post",
}


class TestOperations:
    """Health, readiness, metrics and the OpenAPI document need no key."""

    def test_healthz(self, client):
        """/healthz answers 200 {"status": "ok"}."""
        response = client.get("/healthz")

        assert (response.status_code, response.json()) == (200, {"status": "ok"})

    def test_readyz(self, client):
        """/readyz answers 200 with both checks passed while PostgreSQL and Redis are reachable."""
        response = client.get("/readyz")

        assert (response.status_code, response.json()) == (
            200,
            {"status": "ready", "checks": {"postgres": True, "redis": True}},
        )

    def test_metrics_count_requests_by_route_template_and_status(self, api, client):
        """/metrics counts each request once under its route template, method and status."""
        route = "/v1/workspaces/{workspaceId}/leadscout/conversations/{conversationId}"
        labels = frozenset({("method", "GET"), ("route", route), ("status", "404")})
        metrics_url = f"{client.base_url}/metrics"
        before = samples(scrape(metrics_url), "leadscout_http_requests_total")
        for _ in range(3):
            assert_problem(api.conversation(str(uuid4())), 404, "ConversationNotFound")

        after = samples(scrape(metrics_url), "leadscout_http_requests_total")

        # The first scrape itself is the only other request in between.
        metrics_route = frozenset({("method", "GET"), ("route", "/metrics"), ("status", "200")})
        assert increase(before, after) == {labels: 3.0, metrics_route: 1.0}

    def test_docs(self, client):
        """/docs answers 200 HTML without a key."""
        response = client.get("/docs")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")

    def test_openapi_paths_are_spelled_as_in_the_spec(self, client):
        """Each SPEC path template appears exactly, with its method."""
        paths = client.get("/openapi.json").json()["paths"]

        assert {path: method in paths.get(path, {}) for path, method in SPEC_PATHS.items()} == {
            path: True for path in SPEC_PATHS
        }

    def test_openapi_documents_the_initiate_operation(self, client):
        """The initiate POST documents every status it can answer and its request body."""
        document = client.get("/openapi.json").json()
        operation = document["paths"]["/v1/workspaces/{workspaceId}/leadscout/outbound"]["post"]

        assert set(operation["responses"]) == {
            "200",
            "202",
            "401",
            "403",
            "404",
            "409",
            "413",
            "422",
            "429",
            "503",
        }
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[1]
        properties = document["components"]["schemas"][name]["properties"]
        assert {"contactId", "template", "additionalMessages", "forceSend"} <= set(properties)
        assert set(operation["responses"]["409"]["content"]) == {PROBLEM_JSON}
