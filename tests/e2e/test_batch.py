"""SPEC 4.3 campaign fan-out against the real API, worker and relay processes."""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine, select

from tests import web
from tests.e2e.support import STREAM, Api, Catalog, assert_problem, count, is_uuid
from tests.world import World
from worker.store.tables import batches, commands

MAX_BODY_BYTES = 8 * 1024 * 1024
CAMPAIGN = "spring-promo:2026"
FINISH_TIMEOUT_S = 60


def post_batch(api: Api, payload: Any, **headers: str) -> httpx.Response:
    return api.client.post(
        api.base + "/outbound/batch", json=payload, headers=api.headers(**headers)
    )


def accepted(api: Api, payload: Any, **headers: str) -> dict[str, Any]:
    """The 202 body of a batch call that must be accepted."""
    response = post_batch(api, payload, **headers)
    assert response.status_code == 202, response.text
    answer = dict(response.json())
    assert response.headers["location"] == f"{api.base}/batches/{answer['batchId']}"
    return answer


def campaign(items: list[Any], **extra: Any) -> dict[str, Any]:
    return {"campaignId": CAMPAIGN, "items": items, **extra}


def with_template(catalog: Catalog, parameters: list[str] | None = None) -> dict[str, Any]:
    """Defaults that name the catalog's two-parameter template."""
    template: dict[str, Any] = {"templateId": str(catalog.template)}
    if parameters is not None:
        template["parameters"] = parameters
    return {"template": template}


def item(contact: UUID | str, *parameters: str, **extra: Any) -> dict[str, Any]:
    return {"contactId": str(contact), "template": {"parameters": list(parameters)}, **extra}


def batch_commands(engine: Engine, batch_id: str) -> dict[str, dict[str, Any]]:
    """The batch's command rows: id → (request as stored, idempotency key)."""
    query = select(commands.c.id, commands.c.payload, commands.c.idempotency_key).where(
        commands.c.batch_id == UUID(batch_id)
    )
    with engine.connect() as conn:
        return {
            str(row.id): {"request": row.payload["request"], "key": row.idempotency_key}
            for row in conn.execute(query)
        }


def finished(api: Api, batch_id: str, total: int) -> dict[str, Any]:
    """The batch's status once every command finished."""
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    while True:
        response = api.get(f"/batches/{batch_id}")
        assert response.status_code == 200, response.text
        status = dict(response.json())
        if status["counts"]["succeeded"] + status["counts"]["failed"] == total:
            return status
        assert time.monotonic() < deadline, f"still unfinished: {status}"
        time.sleep(0.1)


def errors_at(answer: dict[str, Any]) -> list[tuple[int, list[list[Any]]]]:
    """Each invalid item's index and the locations of its errors."""
    return [(e["index"], [error["loc"] for error in e["errors"]]) for e in answer["invalid"]]


class TestAccepted:
    """Valid items become durable commands; invalid ones are listed by index, not counted."""

    def test_answers_202_with_the_batch_and_exact_counts(self, api, world, catalog, engine):
        """Three valid items and two invalid ones: accepted 3, the two listed, three rows."""
        contacts = [world.contact(phone=f"+52155000000{n}") for n in range(3)]
        items = [
            item(contacts[0], "Luis", "Ana"),
            {"template": {"parameters": []}},
            item(contacts[1], "Eva", "Ana"),
            item("not-a-uuid", "Luis", "Ana"),
            item(contacts[2], "Leo", "Ana"),
        ]

        answer = accepted(api, campaign(items, defaults=with_template(catalog)))

        assert (is_uuid(answer["batchId"]), answer["accepted"]) == (True, 3)
        assert set(answer) == {"batchId", "accepted", "invalid"}
        assert errors_at(answer) == [
            (1, [["body", "items", 1, "contactId"]]),
            (3, [["body", "items", 3, "contactId"]]),
        ]
        assert answer["invalid"][0]["errors"][0]["msg"] == "Field required"
        stored = batch_commands(engine, answer["batchId"])
        assert sorted(c["request"]["contactId"] for c in stored.values()) == sorted(
            map(str, contacts)
        )
        assert {c["key"] for c in stored.values()} == {None}

    def test_each_command_carries_its_merged_item_as_sent(self, api, catalog, engine):
        """Defaults members the item does not send are sent for it; nothing else is added."""
        defaults = {**with_template(catalog, ["Luis", "Ana"]), "forceSend": False}
        items = [{"contactId": str(catalog.contact), "optIn": {"src": "web"}}]

        answer = accepted(api, campaign(items, defaults=defaults))

        [stored] = batch_commands(engine, answer["batchId"]).values()
        assert stored["request"] == {
            "template": {"templateId": str(catalog.template), "parameters": ["Luis", "Ana"]},
            "forceSend": False,
            "contactId": str(catalog.contact),
            "optIn": {"src": "web"},
            "campaignId": CAMPAIGN,
        }

    def test_invalid_items_of_several_kinds_are_reported_by_index(self, api, catalog, engine):
        """Missing or malformed members, unknown ones, too many follow-ups, not an object."""
        good = item(catalog.contact, "Luis", "Ana")
        text = {"type": "text", "text": "Hola"}
        items = [
            {**good, "additionalMessages": [text] * 6},
            {**good, "contactid": "x"},
            "not an object",
            {**good, "template": {"parameters": ["a"], "templateId": "nope"}},
            {**good, "forceSend": "yes"},
            {"contactId": str(catalog.contact), "template": None},
            good,
        ]

        answer = accepted(api, campaign(items, defaults=with_template(catalog)))

        assert errors_at(answer) == [
            (0, [["body", "items", 0, "additionalMessages"]]),
            (1, [["body", "items", 1, "contactid"]]),
            (2, [["body", "items", 2]]),
            (3, [["body", "items", 3, "template", "templateId"]]),
            (4, [["body", "items", 4, "forceSend"]]),
            (5, [["body", "items", 5, "template"]]),
        ]
        assert answer["accepted"] == 1
        assert len(batch_commands(engine, answer["batchId"])) == 1

    def test_a_batch_of_only_invalid_items_is_a_batch_of_none(self, api, catalog, engine):
        """Nothing to accept is still a batch: accepted 0, its status total 0."""
        answer = accepted(api, campaign([{}], defaults=with_template(catalog)))

        assert (answer["accepted"], errors_at(answer)) == (
            0,
            [(0, [["body", "items", 0, "contactId"]])],
        )
        assert api.get(f"/batches/{answer['batchId']}").json() == {
            "batchId": answer["batchId"],
            "campaignId": CAMPAIGN,
            "total": 0,
            "counts": {"accepted": 0, "processing": 0, "succeeded": 0, "failed": 0},
            "errors": {},
        }
        assert count(engine, commands) == 0

    def test_ten_thousand_items_are_accepted_in_one_call(self, workerless_api_url, world, engine):
        """The largest call: every item a durable command (on an API whose broker no worker
        reads, so the commands wait there instead of loading the shared worker)."""
        items = [{"contactId": str(uuid4())} for _ in range(10_000)]
        payload = campaign(items, defaults={"template": {"templateId": str(uuid4())}})

        with web.client(base_url=workerless_api_url, timeout=120) as client:
            started = time.perf_counter()
            response = client.post(
                f"/v1/workspaces/{world.workspace_id}/leadscout/outbound/batch",
                json=payload,
                headers={"X-API-Key": world.api_key},
            )
            print(f"10,000 items accepted in {time.perf_counter() - started:.2f} s")

        assert response.status_code == 202, response.text
        assert (response.json()["accepted"], response.json()["invalid"]) == (10_000, [])
        assert count(engine, commands) == 10_000


class TestRefused:
    """The whole call is refused (422 ValidationError, nothing recorded) for its own shape."""

    @pytest.mark.parametrize(
        ("payload", "locs"),
        [
            (
                {"campaignId": CAMPAIGN, "defaults": {"campaignId": "x"}, "items": [{}]},
                [["body", "defaults", "campaignId"]],
            ),
            (
                {"campaignId": CAMPAIGN, "items": [{}, {"campaignId": CAMPAIGN}]},
                [["body", "items", 1]],
            ),
            (
                {"campaignId": CAMPAIGN, "items": [{"campaignId": None}, {"campaignId": "b"}]},
                [["body", "items", 0], ["body", "items", 1]],
            ),
            ({"items": [{}]}, [["body", "campaignId"]]),
            ({"campaignId": "with space", "items": [{}]}, [["body", "campaignId"]]),
            ({"campaignId": CAMPAIGN, "items": [{}], "other": 1}, [["body", "other"]]),
            ({"campaignId": CAMPAIGN, "items": {"0": {}}}, [["body", "items"]]),
            ({"campaignId": CAMPAIGN, "items": []}, [["body", "items"]]),
            ({"campaignId": CAMPAIGN, "items": [{}] * 10_001}, [["body", "items"]]),
            (
                {"campaignId": CAMPAIGN, "defaults": {"contactId": str(uuid4())}, "items": [{}]},
                [["body", "defaults", "contactId"]],
            ),
            (
                {"campaignId": CAMPAIGN, "defaults": {"forceSend": 1}, "items": [{}]},
                [["body", "defaults", "forceSend"]],
            ),
            ([{"campaignId": CAMPAIGN}], [["body"]]),
        ],
        ids=[
            "campaignId in defaults",
            "campaignId in an item",
            "campaignId in two items, one null",
            "no campaignId",
            "malformed campaignId",
            "unknown member",
            "items not a list",
            "no items",
            "10,001 items",
            "contactId in defaults",
            "malformed defaults",
            "not an object",
        ],
    )
    def test_refused_with_the_locations(self, api, engine, payload, locs):
        problem = assert_problem(post_batch(api, payload), 422, "ValidationError")

        assert [error["loc"] for error in problem["errors"]] == locs
        assert (count(engine, batches), count(engine, commands)) == (0, 0)

    def test_malformed_json_is_refused(self, api, engine):
        response = api.client.post(
            api.base + "/outbound/batch",
            content=b'{"campaignId": ',
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        assert_problem(response, 422, "ValidationError")
        assert count(engine, batches) == 0

    def test_idempotency_key_longer_than_255_characters(self, api, catalog, engine):
        payload = campaign([item(catalog.contact, "a", "b")], defaults=with_template(catalog))

        problem = assert_problem(
            post_batch(api, payload, **{"Idempotency-Key": "k" * 256}), 422, "ValidationError"
        )

        assert [error["loc"] for error in problem["errors"]] == [["header", "Idempotency-Key"]]
        assert count(engine, batches) == 0


class TestIdempotencyKey:
    """The same key and body answer the same batch and create nothing; another body is 422."""

    def test_same_key_and_body_answer_the_same_batch(self, api, world, catalog, engine):
        """Member order does not matter: equal as parsed JSON is the same body."""
        items = [item(catalog.contact, "Luis", "Ana"), {}, item(world.contact(), "Eva", "Ana")]
        payload = campaign(items, defaults=with_template(catalog))
        reordered = dict(reversed(list(payload.items())))
        first = accepted(api, payload, **{"Idempotency-Key": "spring-1"})
        rows = (count(engine, batches), count(engine, commands))

        replays = [accepted(api, reordered, **{"Idempotency-Key": "spring-1"}) for _ in range(2)]

        assert replays == [first, first]
        assert (first["accepted"], [e["index"] for e in first["invalid"]]) == (2, [1])
        assert rows == (count(engine, batches), count(engine, commands)) == (1, 2)

    def test_same_key_with_another_body_is_refused(self, api, catalog, engine):
        payload = campaign([item(catalog.contact, "Luis", "Ana")], defaults=with_template(catalog))
        first = accepted(api, payload, **{"Idempotency-Key": "spring-2"})

        other = {**payload, "campaignId": "autumn"}
        problem = assert_problem(
            post_batch(api, other, **{"Idempotency-Key": "spring-2"}), 422, "IdempotencyKeyReused"
        )

        assert problem["batchId"] == first["batchId"]
        assert (count(engine, batches), count(engine, commands)) == (1, 1)

    def test_the_key_is_not_shared_with_single_initiations(self, api, catalog, engine):
        """A batch's key and a command's key live apart: the same string in both is fine."""
        request = item(catalog.contact, "Luis", "Ana")
        request["template"]["templateId"] = str(catalog.template)
        single = api.initiate(
            request, headers={"Idempotency-Key": "shared", "Prefer": "respond-async"}
        )
        payload = campaign([item(catalog.contact, "Luis", "Ana")], defaults=with_template(catalog))

        answer = accepted(api, payload, **{"Idempotency-Key": "shared"})

        assert (single.status_code, answer["accepted"]) == (202, 1)


class TestStatus:
    """GET .../batches/{batchId} buckets the accepted items by status and failures by code."""

    def test_counts_reach_succeeded_and_failed_with_errors_by_code(self, api, world, catalog):
        opted_out = world.contact(opted_out=True)
        items = [
            item(catalog.contact, "Luis", "Ana"),
            item(world.contact(), "Eva", "Ana"),
            item(uuid4(), "Nadie", "Ana"),
            item(opted_out, "Leo", "Ana"),
            item(uuid4(), "Otro", "Ana"),
            {"contactId": "bad"},
        ]
        answer = accepted(api, campaign(items, defaults=with_template(catalog)))

        status = finished(api, answer["batchId"], total=5)

        assert status == {
            "batchId": answer["batchId"],
            "campaignId": CAMPAIGN,
            "total": 5,
            "counts": {"accepted": 0, "processing": 0, "succeeded": 2, "failed": 3},
            "errors": {"ContactNotFound": 2, "ContactOptedOut": 1},
        }

    @pytest.mark.parametrize("batch_id", [str(uuid4()), "not-a-uuid", "0"])
    def test_an_unknown_or_malformed_id_is_batch_not_found(self, api, batch_id):
        assert_problem(api.get(f"/batches/{batch_id}"), 404, "BatchNotFound")

    def test_another_workspaces_batch_is_batch_not_found(self, api, other_api, catalog):
        answer = accepted(api, campaign([{}], defaults=with_template(catalog)))

        assert_problem(other_api.get(f"/batches/{answer['batchId']}"), 404, "BatchNotFound")


def events_of(stream: Redis, world: World) -> dict[str, dict[str, Any]]:
    """This workspace's events on the stream, by event id (delivery is at least once)."""
    events = (json.loads(fields[b"event"]) for _, fields in stream.xrange(STREAM))
    return {e["id"]: e for e in events if e["workspaceid"] == str(world.workspace_id)}


class TestEvents:
    """Each accepted item is processed as SPEC 4.1 would: one event with its own commandId."""

    def test_one_event_per_accepted_item_with_its_command_and_campaign(
        self, api, world, catalog, engine, events
    ):
        items = [
            item(catalog.contact, "Luis", "Ana"),
            item(world.contact(), "Eva", "Ana"),
            item(uuid4(), "Nadie", "Ana"),
            {"contactId": str(uuid4()), "template": {"parameters": ["solo uno"]}},
            {"contactId": str(uuid4()), "unknown": True},
        ]
        answer = accepted(api, campaign(items, defaults=with_template(catalog)))
        finished(api, answer["batchId"], total=4)
        command_ids = set(batch_commands(engine, answer["batchId"]))
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while len(found := events_of(events, world)) < len(command_ids):
            assert time.monotonic() < deadline, found
            time.sleep(0.05)

        assert sorted(e["data"]["commandId"] for e in found.values()) == sorted(command_ids)
        assert {e["data"]["campaignId"] for e in found.values()} == {CAMPAIGN}
        assert sorted((e["type"], e["data"].get("code")) for e in found.values()) == [
            ("leadscout.conversation.created", None),
            ("leadscout.conversation.created", None),
            ("leadscout.initiation.rejected", "ContactNotFound"),
            ("leadscout.initiation.rejected", "TemplateParametersMismatch"),
        ]


class TestGuard:
    """Key first, then size, as on every /v1 path."""

    def test_no_key_is_unauthorized(self, api):
        response = api.client.post(api.base + "/outbound/batch", json=campaign([{}]))

        assert_problem(response, 401, "Unauthorized")

    def test_another_workspaces_path_is_forbidden(self, api, other_api):
        for method, path in (("POST", "/outbound/batch"), ("GET", f"/batches/{uuid4()}")):
            response = api.client.request(
                method, other_api.base + path, json=campaign([{}]), headers=api.headers()
            )
            assert_problem(response, 403, "Forbidden")

    def test_a_body_over_8_mib_is_too_large(self, api, engine):
        response = api.client.post(
            api.base + "/outbound/batch",
            content=b" " * (MAX_BODY_BYTES + 1),
            headers=api.headers(**{"Content-Type": "application/json"}),
        )

        assert_problem(response, 413, "PayloadTooLarge")
        assert count(engine, batches) == 0

    def test_the_key_is_checked_before_the_size(self, api):
        response = api.client.post(
            api.base + "/outbound/batch", content=b" " * (MAX_BODY_BYTES + 1)
        )

        assert_problem(response, 401, "Unauthorized")
