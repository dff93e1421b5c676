"""SPEC 4.5: campaign stats over HTTP, built by the real reporter from the real event stream."""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.e2e.support import Api, Catalog, assert_problem
from tests.world import World, body

MEMBERS = ["campaignId", "created", "reused", "rejected", "byChannel"]
# Every character SPEC 4.1 allows in a campaignId, at the longest length it allows.
LONGEST = ("Spring.promo:2026_Q1-" * 7)[:128]


def zeros(campaign_id: str) -> dict[str, Any]:
    return {"campaignId": campaign_id, "created": 0, "reused": 0, "rejected": {}, "byChannel": {}}


def stats_path(campaign_id: str) -> str:
    return f"/campaigns/{campaign_id}/stats"


def stats_once_equal(api: Api, campaign_id: str, expected: Any, timeout_s: float = 20) -> Any:
    """Polls the stats until they equal ``expected`` (the reporter counts asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while (response := api.get(stats_path(campaign_id))).json() != expected:
        assert time.monotonic() < deadline, f"stats stayed {response.json()}"
        time.sleep(0.1)
    assert response.status_code == 200
    return response.json()


class TestStatsFromEvents:
    """Initiations through worker, relay and reporter become exact counts of their campaign."""

    def test_created_reused_and_rejected_of_one_campaign(
        self, api: Api, other_api: Api, world: World, catalog: Catalog
    ):
        campaign = "spring.promo:2026_Q1-a"
        second = world.channel(catalog.agent, priority=1)
        in_campaign = {"campaignId": campaign}
        api.created(body(catalog.contact, catalog.template, **in_campaign))
        api.created(
            body(world.contact(), catalog.template, providerChannelId=second, **in_campaign)
        )
        again = body(
            catalog.contact,
            catalog.template,
            providerChannelId=catalog.channel,
            forceSend=True,
            **in_campaign,
        )
        assert api.created(again)["alreadyInitiated"] is True
        opted_out = body(world.contact(opted_out=True), catalog.template, **in_campaign)
        assert_problem(api.initiate(opted_out), 422, "ContactOptedOut")
        for _ in range(2):
            unknown = body(uuid4(), catalog.template, **in_campaign)
            assert_problem(api.initiate(unknown), 404, "ContactNotFound")
        api.created(body(world.contact(), catalog.template, campaignId="another-campaign"))
        api.created(body(world.contact(), catalog.template))

        answer = stats_once_equal(
            api,
            campaign,
            {
                "campaignId": campaign,
                "created": 2,
                "reused": 1,
                "rejected": {"ContactNotFound": 2, "ContactOptedOut": 1},
                "byChannel": {
                    str(catalog.channel): {"created": 1, "reused": 1},
                    str(second): {"created": 1, "reused": 0},
                },
            },
        )

        assert list(answer) == MEMBERS
        assert other_api.get(stats_path(campaign)).json() == zeros(campaign)


class TestStatsEndpoint:
    """Any well-formed campaign id answers (zeros when unknown); a malformed one is 404."""

    def test_an_unknown_campaign_answers_zeros_in_spec_order(self, api: Api):
        response = api.get(stats_path("never-launched"))

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert list(response.json()) == MEMBERS
        assert response.json() == zeros("never-launched")

    def test_the_longest_id_of_every_allowed_character_answers(self, api: Api):
        response = api.get(stats_path(LONGEST))

        assert (response.status_code, response.json()) == (200, zeros(LONGEST))

    @pytest.mark.parametrize(
        "campaign_id",
        ["has space", "a" * 129, "semi;colon", "ñandú", "new%0Aline", "quote'"],
    )
    def test_a_malformed_campaign_id_is_not_found(self, api: Api, campaign_id: str):
        assert_problem(api.get(stats_path(campaign_id)), 404, "NotFound")

    def test_without_a_key_it_is_unauthorized(self, api: Api, client: httpx.Client):
        assert_problem(client.get(api.base + stats_path("spring")), 401, "Unauthorized")

    def test_another_workspaces_path_is_forbidden(self, api: Api, other_api: Api):
        response = other_api.client.get(
            api.base + stats_path("spring"), headers=other_api.headers()
        )

        assert_problem(response, 403, "Forbidden")

    def test_openapi_documents_the_path_and_its_answer(self, client: httpx.Client):
        openapi = client.get("/openapi.json").json()
        operation = openapi["paths"][
            "/v1/workspaces/{workspaceId}/leadscout/campaigns/{campaignId}/stats"
        ]["get"]

        assert [p["name"] for p in operation["parameters"]] == ["workspaceId", "campaignId"]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/CampaignStats"}
        assert list(openapi["components"]["schemas"]["CampaignStats"]["properties"]) == MEMBERS
        assert {"401", "403", "404"} <= set(operation["responses"])
