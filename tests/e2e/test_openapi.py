"""The OpenAPI document, as the running API serves it, says what the API really answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from schemas.errors import ErrorCode
from tests.e2e.support import PROBLEM_JSON
from tests.world import body

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
GUARD_STATUSES = {"401", "403", "413", "503"}


@pytest.fixture
def document(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, path_item in document["paths"].items():
        for method, operation in path_item.items():
            yield path, method, operation


def by_id(document: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {op["operationId"]: (path, op) for path, _, op in operations(document)}


def is_problem(schema: dict[str, Any]) -> bool:
    """The Problem schema itself, or an ``allOf`` that extends it."""
    return schema == PROBLEM_REF or PROBLEM_REF in schema.get("allOf", [])


def resolve(expression: str, answer: dict[str, Any]) -> Any:
    """A ``$response.body#/a/b`` runtime expression, evaluated on a JSON body."""
    source, _, pointer = expression.partition("#")
    assert source == "$response.body", expression
    value: Any = answer
    for part in pointer.strip("/").split("/"):
        value = value[part]
    return value


class TestErrors:
    """Every error is problem+json with the Problem schema; FastAPI's guesses are gone."""

    def test_every_error_answer_is_a_problem(self, document):
        """Each 4xx/5xx answer of each operation has exactly the problem+json media type."""
        wrong = {
            (path, method, status): {
                media: content.get("schema") for media, content in answer["content"].items()
            }
            for path, method, operation in operations(document)
            for status, answer in operation["responses"].items()
            if int(status) >= 400
            and (
                set(answer["content"]) != {PROBLEM_JSON}
                or not is_problem(answer["content"][PROBLEM_JSON]["schema"])
            )
        }

        assert wrong == {}

    def test_every_v1_operation_documents_the_guard_answers(self, document):
        """401, 403, 413 and 503 can come from the guard or the dependency handler anywhere."""
        missing = {
            (path, method): gap
            for path, method, operation in operations(document)
            if path.startswith("/v1/") and (gap := GUARD_STATUSES - set(operation["responses"]))
        }

        assert missing == {}

    def test_only_operations_that_read_a_body_document_422(self, document):
        """No FastAPI HTTPValidationError: 422 is documented where a body is validated."""
        with_422 = {
            op["operationId"] for _, _, op in operations(document) if "422" in op["responses"]
        }

        assert with_422 == {"initiateOutbound", "initiateOutboundBatch", "handOffConversation"}
        assert "HTTPValidationError" not in json.dumps(document)
        assert "ValidationError" not in document["components"]["schemas"]

    def test_problem_codes_are_the_error_codes(self, document):
        """The Problem schema's ``code`` lists every code the API can answer."""
        problem = document["components"]["schemas"]["Problem"]

        assert problem["required"] == ["type", "title", "status", "detail", "code"]
        assert problem["properties"]["code"]["enum"] == [code.value for code in ErrorCode]

    def test_initiate_documents_each_rejection_status(self, document):
        """The initiate operation names every SPEC 4.1 code under its status."""
        responses = by_id(document)["initiateOutbound"][1]["responses"]

        assert set(responses) == {
            "200", "202", "401", "403", "404", "409", "413", "422", "429", "503"
        }  # fmt: skip
        assert "ChannelDailyLimitReached" in responses["429"]["description"]
        assert "AllProviderChannelsOccupied" in responses["409"]["description"]
        assert "Retry-After" in responses["503"]["headers"]


class TestAnswers:
    """Success answers carry real schemas, media types and headers."""

    def test_metrics_media_type_is_what_metrics_answers(self, document, client):
        """/metrics is documented with the exact Content-Type it sends (text format 0.0.4)."""
        answered = client.get("/metrics").headers["content-type"]
        documented = list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"])

        assert documented == [answered] == ["text/plain; version=0.0.4; charset=utf-8"]

    def test_readyz_documents_ready_and_unavailable(self, document):
        """/readyz: 200 Readiness, or 503 problem+json that carries the checks."""
        responses = document["paths"]["/readyz"]["get"]["responses"]
        unready = responses["503"]["content"][PROBLEM_JSON]["schema"]

        assert set(responses) == {"200", "503"}
        assert responses["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Readiness"
        }
        assert unready["allOf"][1]["required"] == ["checks"]

    def test_accepted_has_a_schema_and_a_location(self, document):
        """The 202 body is Accepted (commandId, status, statusUrl); Location is required."""
        accepted = by_id(document)["initiateOutbound"][1]["responses"]["202"]
        schema = document["components"]["schemas"]["Accepted"]

        assert accepted["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Accepted"
        }
        assert schema["required"] == ["commandId", "status", "statusUrl"]
        assert accepted["headers"]["Location"]["required"] is True
        assert accepted["headers"]["Preference-Applied"]["required"] is False

    def test_conversation_answers_have_the_flat_object(self, document):
        """The three conversation operations answer ConversationDetail."""
        schemas = {
            operation_id: by_id(document)[operation_id][1]["responses"]["200"]["content"][
                "application/json"
            ]["schema"]
            for operation_id in ("getConversation", "handOffConversation", "closeConversation")
        }

        assert set(map(json.dumps, schemas.values())) == {
            json.dumps({"$ref": "#/components/schemas/ConversationDetail"})
        }


class TestParameters:
    """Headers, path ids and the key are documented as they behave."""

    def test_headers_are_optional_strings(self, document):
        """Idempotency-Key (≤ 255 chars) and Prefer: optional strings, never null."""
        parameters = {
            p["name"]: (p["required"], p["schema"]["type"], p["schema"].get("maxLength"))
            for p in by_id(document)["initiateOutbound"][1]["parameters"]
            if p["in"] == "header"
        }

        assert parameters == {
            "Idempotency-Key": (False, "string", 255),
            "Prefer": (False, "string", None),
        }

    def test_path_ids_are_uuids(self, document):
        """Every id in a path template is a UUID-formatted string."""
        formats = {
            p["name"]: (p["schema"]["type"], p["schema"].get("format"))
            for _, _, op in operations(document)
            for p in op.get("parameters", [])
            if p["in"] == "path" and p["name"] != "campaignId"
        }

        assert formats == {
            "workspaceId": ("string", "uuid"),
            "commandId": ("string", "uuid"),
            "conversationId": ("string", "uuid"),
            "batchId": ("string", "uuid"),
        }

    def test_the_api_key_secures_v1_only(self, document):
        """X-API-Key is the security of every /v1 operation and of nothing else."""
        secured = {path: operation.get("security") for path, _, operation in operations(document)}

        assert document["components"]["securitySchemes"] == {
            "ApiKey": {
                "type": "apiKey",
                "description": "The workspace's API key.",
                "in": "header",
                "name": "X-API-Key",
            }
        }
        assert {
            path: security for path, security in secured.items() if path.startswith("/v1/")
        } == {path: [{"ApiKey": []}] for path in secured if path.startswith("/v1/")}
        assert {path: secured[path] for path in ("/healthz", "/readyz", "/metrics")} == {
            "/healthz": None,
            "/readyz": None,
            "/metrics": None,
        }


class TestLinks:
    """Links lead from an initiation to its command and conversation operations."""

    def test_initiate_links_to_command_and_conversation_operations(self, document):
        """200 links to all four; 202 to the command."""
        responses = by_id(document)["initiateOutbound"][1]["responses"]

        assert {
            name: (link["operationId"], link["parameters"])
            for name, link in responses["200"]["links"].items()
        } == {
            "GetCommand": (
                "getCommand",
                {
                    "workspaceId": "$request.path.workspaceId",
                    "commandId": "$response.body#/commandId",
                },
            ),
            **{
                name: (
                    operation_id,
                    {
                        "workspaceId": "$request.path.workspaceId",
                        "conversationId": "$response.body#/conversation/id",
                    },
                )
                for name, operation_id in (
                    ("GetConversation", "getConversation"),
                    ("HandOffConversation", "handOffConversation"),
                    ("CloseConversation", "closeConversation"),
                )
            },
        }
        assert responses["202"]["links"]["GetCommand"]["operationId"] == "getCommand"

    def test_every_link_fills_exactly_its_targets_path_parameters(self, document):
        """Each link names an existing operation and gives each of its path parameters."""
        operations_by_id = by_id(document)
        mismatched = {
            (source["operationId"], status, name): sorted(link["parameters"])
            for _, _, source in operations(document)
            for status, answer in source["responses"].items()
            for name, link in answer.get("links", {}).items()
            if sorted(link["parameters"])
            != sorted(
                p["name"]
                for p in operations_by_id[link["operationId"]][1]["parameters"]
                if p["in"] == "path"
            )
        }

        assert mismatched == {}

    def test_links_lead_from_a_real_initiation_to_real_answers(self, document, api, catalog):
        """Following each 200 link of a succeeded initiation answers 200 for the same ids."""
        answer = api.created(body(catalog.contact, catalog.template))
        links = by_id(document)["initiateOutbound"][1]["responses"]["200"]["links"]
        calls = {
            name: by_id(document)[link["operationId"]][0].format(
                workspaceId=api.world.workspace_id,
                **{
                    parameter: resolve(expression, answer)
                    for parameter, expression in link["parameters"].items()
                    if parameter != "workspaceId"
                },
            )
            for name, link in links.items()
        }

        statuses = {
            "GetCommand": api.client.get(calls["GetCommand"], headers=api.headers()).status_code,
            "GetConversation": api.client.get(
                calls["GetConversation"], headers=api.headers()
            ).status_code,
            "CloseConversation": api.client.post(
                calls["CloseConversation"], headers=api.headers()
            ).status_code,
        }

        assert statuses == {"GetCommand": 200, "GetConversation": 200, "CloseConversation": 200}
        assert calls["HandOffConversation"] == (
            f"/v1/workspaces/{api.world.workspace_id}/leadscout"
            f"/conversations/{answer['conversation']['id']}/handoff"
        )


class TestBatch:
    """The batch operations: their answers, the shape of a body, the link to its status."""

    def test_batch_operations_document_their_statuses(self, document):
        """202 or 422 for the fan-out, 200 or 404 for the status, the guard's everywhere."""
        statuses = {
            operation_id: set(by_id(document)[operation_id][1]["responses"])
            for operation_id in ("initiateOutboundBatch", "getBatch")
        }

        assert statuses == {
            "initiateOutboundBatch": {"202", "401", "403", "413", "422", "503"},
            "getBatch": {"200", "401", "403", "404", "413", "503"},
        }

    def test_the_202_has_its_schema_a_location_and_a_link_to_the_status(self, document):
        accepted = by_id(document)["initiateOutboundBatch"][1]["responses"]["202"]

        assert accepted["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/BatchAccepted"
        }
        assert accepted["headers"]["Location"]["required"] is True
        assert {
            name: (link["operationId"], link["parameters"])
            for name, link in accepted["links"].items()
        } == {
            "GetBatch": (
                "getBatch",
                {"workspaceId": "$request.path.workspaceId", "batchId": "$response.body#/batchId"},
            )
        }

    def test_the_body_documents_campaign_defaults_and_items(self, document):
        """campaignId only at the top; defaults without contactId; 1 to 10,000 items."""
        schemas = document["components"]["schemas"]
        body = schemas["InitiateOutboundBatchRequest"]
        items = body["properties"]["items"]

        assert body["required"] == ["campaignId", "items"]
        assert (items["minItems"], items["maxItems"]) == (1, 10_000)
        assert items["items"]["required"] == ["contactId"]
        assert "campaignId" not in items["items"]["properties"]
        assert {"campaignId", "contactId"} & set(schemas["RequestDefaults"]["properties"]) == set()

    def test_the_idempotency_key_is_an_optional_string(self, document):
        parameters = {
            p["name"]: (p["required"], p["schema"]["type"], p["schema"].get("maxLength"))
            for p in by_id(document)["initiateOutboundBatch"][1]["parameters"]
            if p["in"] == "header"
        }

        assert parameters == {"Idempotency-Key": (False, "string", 255)}

    def test_the_link_leads_from_a_real_batch_to_its_status(self, document, api, catalog):
        request = {
            "campaignId": "spring",
            "defaults": {"template": {"templateId": str(catalog.template)}},
            "items": [{}],
        }
        answer = api.client.post(
            api.base + "/outbound/batch", json=request, headers=api.headers()
        ).json()
        link = by_id(document)["initiateOutboundBatch"][1]["responses"]["202"]["links"]["GetBatch"]
        path = by_id(document)[link["operationId"]][0].format(
            workspaceId=api.world.workspace_id,
            batchId=resolve(link["parameters"]["batchId"], answer),
        )

        response = api.client.get(path, headers=api.headers())

        assert (response.status_code, response.json()["batchId"]) == (200, answer["batchId"])
