"""SPEC 4.1 pre-flight checks 1–9: each rejection, its problem, and its order.

Every rejection is checked the same way (``assert_rejected``): a failed outcome
with the exact code and HTTP status, a complete problem object, no conversation,
message or follow-up written (invariant 5), exactly one ``InitiationRejected``
outbox row for the command, and the command row failed with its error code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import pytest
from redis import Redis
from sqlalchemy import Engine, Table, func, select

from tests.world import World, body
from worker.store.tables import commands, conversations, follow_ups, messages, outbox

REJECTED = "leadscout.initiation.rejected"
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code"}


def _count(engine: Engine, table: Table, *where: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def _written_rows(engine: Engine) -> dict[str, int]:
    return {t.name: _count(engine, t) for t in (conversations, messages, follow_ups)}


def reject(w: World, code: str, status: int, **request: Any) -> dict[str, Any]:
    """Runs one request that must be rejected with ``code``; returns its problem."""
    before_rows, before_events = _written_rows(w.engine), _count(w.engine, outbox)
    outcome = w.initiate(**request)

    assert outcome.status == "failed"
    assert outcome.result is None
    problem = outcome.error
    assert problem is not None
    assert problem.keys() >= PROBLEM_MEMBERS
    assert (problem["code"], problem["status"]) == (code, status)
    assert problem["type"].endswith(code)
    assert problem["title"]
    assert problem["detail"]

    assert _written_rows(w.engine) == before_rows
    for table in (conversations, messages, follow_ups):
        assert _count(w.engine, table, table.c.command_id == outcome.command_id) == 0

    assert _count(w.engine, outbox) == before_events + 1
    with w.engine.connect() as conn:
        events = conn.execute(
            select(outbox.c.event_type, outbox.c.payload).where(
                outbox.c.command_id == outcome.command_id
            )
        ).all()
        command = conn.execute(
            select(
                commands.c.status, commands.c.error_code, commands.c.error, commands.c.result
            ).where(commands.c.id == outcome.command_id)
        ).one()
    assert len(events) == 1
    event_type, payload = events[0]
    assert event_type == REJECTED
    assert payload["type"] == REJECTED
    assert payload["subject"] == str(outcome.command_id)
    assert payload["data"]["code"] == code
    assert payload["data"]["commandId"] == str(outcome.command_id)
    assert payload["data"]["contactId"] == request["contactId"]

    assert command.status == "failed"
    assert command.error_code == code
    assert command.error == problem
    assert command.result is None
    return problem


@dataclass
class Ready:
    """A workspace in which the baseline request succeeds."""

    w: World
    agent: UUID
    channel: UUID
    template: UUID
    contact: UUID

    def request(self, **extra: Any) -> dict[str, Any]:
        return body(self.contact, self.template, **extra)


@pytest.fixture
def w(engine: Engine, redis: Redis) -> World:
    return World(engine, redis)


@pytest.fixture
def other(engine: Engine, redis: Redis) -> World:
    """A second workspace whose rows must stay invisible to ``w``."""
    return World(engine, redis, name="Other")


@pytest.fixture
def ready(w: World) -> Ready:
    agent = w.agent()
    return Ready(w, agent, w.channel(agent), w.template(), w.contact())


class TestBaseline:
    """The baseline request of these tests passes every check."""

    def test_baseline_request_succeeds(self, ready: Ready) -> None:
        outcome = ready.w.initiate(**ready.request())

        assert outcome.status == "succeeded"
        assert outcome.error is None
        assert outcome.result is not None
        assert outcome.result["conversation"]["channelId"] == str(ready.channel)


class TestTemplateNotFound:
    """Check 1: the template must exist in the workspace (404 TemplateNotFound)."""

    def test_unknown_template_is_rejected(self, ready: Ready) -> None:
        reject(ready.w, "TemplateNotFound", 404, **body(ready.contact, uuid4()))

    def test_template_of_another_workspace_is_rejected(self, ready: Ready, other: World) -> None:
        foreign = other.template()

        reject(ready.w, "TemplateNotFound", 404, **body(ready.contact, foreign))


class TestTemplateNotApproved:
    """Check 2: only an APPROVED template may be sent (422, with templateStatus)."""

    @pytest.mark.parametrize("status", ["PENDING", "REJECTED", "PAUSED", "DISABLED"])
    def test_non_approved_template_is_rejected_with_its_status(
        self, ready: Ready, status: str
    ) -> None:
        template = ready.w.template(status=status)

        problem = reject(ready.w, "TemplateNotApproved", 422, **body(ready.contact, template))

        assert problem["templateStatus"] == status


class TestTemplateParametersMismatch:
    """Check 3: len(parameters) must equal the highest placeholder number (422)."""

    @pytest.mark.parametrize(
        ("template_body", "parameters", "expected"),
        [
            ("Hola {{1}}, soy {{2}} de Acme", ["Luis"], 2),
            ("Hola {{1}}, soy {{2}} de Acme", ["Luis", "Ana", "extra"], 2),
            ("Hola {{1}}, soy {{2}} de Acme", [], 2),
            ("Hola, somos Acme", ["Luis"], 0),
            ("Hola {{1}}, tu cita es el {{3}}", ["Luis", "lunes"], 3),
        ],
        ids=["too-few", "too-many", "none-given", "no-placeholders", "non-contiguous"],
    )
    def test_wrong_parameter_count_is_rejected_with_integer_expected_and_got(
        self, ready: Ready, template_body: str, parameters: list[str], expected: int
    ) -> None:
        template = ready.w.template(body=template_body)

        problem = reject(
            ready.w,
            "TemplateParametersMismatch",
            422,
            **body(ready.contact, template, parameters),
        )

        assert type(problem["expected"]) is int
        assert type(problem["got"]) is int
        assert (problem["expected"], problem["got"]) == (expected, len(parameters))

    def test_non_contiguous_placeholders_accept_highest_number_of_parameters(
        self, ready: Ready
    ) -> None:
        template = ready.w.template(body="Hola {{1}}, tu cita es el {{3}}")

        outcome = ready.w.initiate(**body(ready.contact, template, ["Luis", "unused", "lunes"]))

        assert outcome.status == "succeeded"
        assert outcome.result is not None
        assert outcome.result["template"]["renderedBody"] == "Hola Luis, tu cita es el lunes"

    def test_template_without_placeholders_accepts_no_parameters(self, ready: Ready) -> None:
        template = ready.w.template(body="Hola, somos Acme")

        outcome = ready.w.initiate(**body(ready.contact, template, []))

        assert outcome.status == "succeeded"
        assert outcome.result is not None
        assert outcome.result["template"]["renderedBody"] == "Hola, somos Acme"


class TestContactNotFound:
    """Check 4: the contact must exist in the workspace (404 ContactNotFound)."""

    def test_unknown_contact_is_rejected(self, ready: Ready) -> None:
        reject(ready.w, "ContactNotFound", 404, **body(uuid4(), ready.template))

    def test_contact_of_another_workspace_is_rejected(self, ready: Ready, other: World) -> None:
        foreign = other.contact()

        reject(ready.w, "ContactNotFound", 404, **body(foreign, ready.template))


class TestContactOptedOut:
    """Check 5: an opted-out contact is never messaged, forceSend or not (422)."""

    @pytest.mark.parametrize("force_send", [False, True])
    def test_opted_out_contact_is_rejected(self, ready: Ready, force_send: bool) -> None:
        contact = ready.w.contact(opted_out=True)

        reject(
            ready.w,
            "ContactOptedOut",
            422,
            **body(contact, ready.template, forceSend=force_send),
        )


class TestBrandNotFound:
    """Check 6: a given brandId must exist in the workspace (404 BrandNotFound)."""

    def test_unknown_brand_is_rejected(self, ready: Ready) -> None:
        reject(ready.w, "BrandNotFound", 404, **ready.request(brandId=uuid4()))

    def test_brand_of_another_workspace_is_rejected(self, ready: Ready, other: World) -> None:
        reject(ready.w, "BrandNotFound", 404, **ready.request(brandId=other.brand()))


class TestProviderChannelNotFound:
    """Check 7, explicit channel: it must exist in the workspace (404)."""

    def test_unknown_channel_is_rejected(self, ready: Ready) -> None:
        reject(ready.w, "ProviderChannelNotFound", 404, **ready.request(providerChannelId=uuid4()))

    def test_channel_of_another_workspace_is_rejected(self, ready: Ready, other: World) -> None:
        foreign = other.channel(other.agent())

        reject(ready.w, "ProviderChannelNotFound", 404, **ready.request(providerChannelId=foreign))


class TestChannelNotEligible:
    """Check 7, explicit channel: inactive, non-WhatsApp or other-brand channels are 422."""

    def test_inactive_channel_is_rejected(self, ready: Ready) -> None:
        channel = ready.w.channel(ready.agent, active=False)

        reject(ready.w, "ChannelNotEligible", 422, **ready.request(providerChannelId=channel))

    @pytest.mark.parametrize("channel_type", ["sms", "email"])
    def test_non_whatsapp_channel_is_rejected(self, ready: Ready, channel_type: str) -> None:
        channel = ready.w.channel(ready.agent, type=channel_type)

        reject(ready.w, "ChannelNotEligible", 422, **ready.request(providerChannelId=channel))

    def test_channel_linked_to_another_brand_is_rejected(self, ready: Ready) -> None:
        asked, linked = ready.w.brand(), ready.w.brand("Other Motors")
        channel = ready.w.channel(ready.agent, brandId=linked)

        reject(
            ready.w,
            "ChannelNotEligible",
            422,
            **ready.request(providerChannelId=channel, brandId=asked),
        )

    def test_channel_linked_to_no_brand_is_rejected_when_a_brand_is_given(
        self, ready: Ready
    ) -> None:
        brand = ready.w.brand()

        reject(
            ready.w,
            "ChannelNotEligible",
            422,
            **ready.request(providerChannelId=ready.channel, brandId=brand),
        )


class TestNoWhatsAppChannel:
    """Check 7, auto-selection: some active WhatsApp channel (of the brand) must exist."""

    def test_workspace_without_channels_is_rejected(self, w: World, other: World) -> None:
        other.channel(other.agent())
        w.agent()

        reject(w, "NoWhatsAppChannel", 422, **body(w.contact(), w.template()))

    def test_only_inactive_or_non_whatsapp_channels_are_rejected(self, w: World) -> None:
        agent = w.agent()
        w.channel(agent, active=False)
        w.channel(agent, type="sms")
        w.channel(agent, type="email")

        reject(w, "NoWhatsAppChannel", 422, **body(w.contact(), w.template()))

    def test_brand_without_linked_channel_is_rejected(self, ready: Ready) -> None:
        asked, linked = ready.w.brand(), ready.w.brand("Other Motors")
        ready.w.channel(ready.agent, brandId=linked)
        ready.w.channel(ready.agent, brandId=asked, active=False)

        reject(ready.w, "NoWhatsAppChannel", 422, **ready.request(brandId=asked))


class TestNoProspectionAgent:
    """Check 8: an active prospection agent must own the channel (422 NoProspectionAgent)."""

    def test_explicit_channel_of_support_agent_is_rejected(self, ready: Ready) -> None:
        channel = ready.w.channel(ready.w.agent(kind="support"))

        reject(ready.w, "NoProspectionAgent", 422, **ready.request(providerChannelId=channel))

    def test_explicit_channel_of_inactive_prospection_agent_is_rejected(self, ready: Ready) -> None:
        channel = ready.w.channel(ready.w.agent(active=False))

        reject(ready.w, "NoProspectionAgent", 422, **ready.request(providerChannelId=channel))

    def test_explicit_channel_without_agent_is_rejected(self, ready: Ready) -> None:
        channel = ready.w.channel(None)

        reject(ready.w, "NoProspectionAgent", 422, **ready.request(providerChannelId=channel))

    def test_auto_selection_where_no_channel_has_one_is_rejected(self, w: World) -> None:
        w.channel(w.agent(kind="support"))
        w.channel(w.agent(active=False))
        w.channel(None)

        reject(w, "NoProspectionAgent", 422, **body(w.contact(), w.template()))


class TestHandoffUser:
    """Check 9: handoffOverride.userId must be an active user of the workspace."""

    def test_unknown_user_is_rejected(self, ready: Ready) -> None:
        reject(
            ready.w,
            "HandoffUserNotFound",
            404,
            **ready.request(handoffOverride={"userId": str(uuid4())}),
        )

    def test_user_of_another_workspace_is_rejected(self, ready: Ready, other: World) -> None:
        foreign = other.user()

        reject(
            ready.w,
            "HandoffUserNotFound",
            404,
            **ready.request(handoffOverride={"userId": str(foreign)}),
        )

    def test_active_admin_user_is_accepted(self, ready: Ready) -> None:
        admin = ready.w.user(role="admin")

        outcome = ready.w.initiate(**ready.request(handoffOverride={"userId": str(admin)}))

        assert outcome.status == "succeeded"
        assert outcome.result is not None
        assert outcome.result["conversation"]["assignedUserId"] == str(admin)

    def test_inactive_user_is_rejected(self, ready: Ready) -> None:
        user = ready.w.user(active=False)

        reject(
            ready.w,
            "HandoffUserInactive",
            422,
            **ready.request(handoffOverride={"userId": str(user)}),
        )


class TestCheckOrder:
    """When several checks fail, the first one in SPEC 4.1's order answers."""

    def test_missing_template_wins_over_missing_contact(self, ready: Ready) -> None:
        reject(ready.w, "TemplateNotFound", 404, **body(uuid4(), uuid4()))

    def test_unapproved_template_wins_over_parameter_mismatch(self, ready: Ready) -> None:
        template = ready.w.template(status="PAUSED")

        problem = reject(
            ready.w, "TemplateNotApproved", 422, **body(uuid4(), template, ["only-one"])
        )

        assert problem["templateStatus"] == "PAUSED"

    def test_parameter_mismatch_wins_over_missing_contact(self, ready: Ready) -> None:
        reject(
            ready.w,
            "TemplateParametersMismatch",
            422,
            **body(uuid4(), ready.template, ["only-one"], brandId=uuid4()),
        )

    def test_missing_contact_wins_over_missing_brand(self, ready: Ready) -> None:
        reject(ready.w, "ContactNotFound", 404, **body(uuid4(), ready.template, brandId=uuid4()))

    def test_opted_out_contact_wins_over_missing_brand(self, ready: Ready) -> None:
        contact = ready.w.contact(opted_out=True)

        reject(
            ready.w,
            "ContactOptedOut",
            422,
            **body(contact, ready.template, brandId=uuid4(), providerChannelId=uuid4()),
        )

    def test_missing_brand_wins_over_missing_channel(self, ready: Ready) -> None:
        reject(
            ready.w,
            "BrandNotFound",
            404,
            **ready.request(brandId=uuid4(), providerChannelId=uuid4()),
        )

    def test_missing_channel_wins_over_missing_handoff_user(self, ready: Ready) -> None:
        reject(
            ready.w,
            "ProviderChannelNotFound",
            404,
            **ready.request(providerChannelId=uuid4(), handoffOverride={"userId": str(uuid4())}),
        )

    def test_ineligible_channel_wins_over_missing_agent(self, ready: Ready) -> None:
        channel = ready.w.channel(None, active=False)

        reject(ready.w, "ChannelNotEligible", 422, **ready.request(providerChannelId=channel))

    def test_no_whatsapp_channel_wins_over_missing_agent(self, w: World) -> None:
        w.channel(None, type="sms")

        reject(w, "NoWhatsAppChannel", 422, **body(w.contact(), w.template()))

    def test_missing_agent_wins_over_inactive_handoff_user(self, ready: Ready) -> None:
        channel = ready.w.channel(ready.w.agent(kind="support"))
        user = ready.w.user(active=False)

        reject(
            ready.w,
            "NoProspectionAgent",
            422,
            **ready.request(providerChannelId=channel, handoffOverride={"userId": str(user)}),
        )

    def test_handoff_user_wins_over_occupied_channel(self, ready: Ready) -> None:
        assert ready.w.initiate(**ready.request()).status == "succeeded"

        reject(
            ready.w,
            "HandoffUserNotFound",
            404,
            **ready.request(
                providerChannelId=ready.channel, handoffOverride={"userId": str(uuid4())}
            ),
        )

    def test_handoff_user_wins_over_exhausted_quota(self, ready: Ready) -> None:
        channel = ready.w.channel(ready.agent, dailyLimit=0)
        user = ready.w.user(active=False)

        reject(
            ready.w,
            "HandoffUserInactive",
            422,
            **ready.request(providerChannelId=channel, handoffOverride={"userId": str(user)}),
        )


class TestRejectionIsRecordedOnce:
    """A rejection leaves exactly its outcome and one event, however many were rejected."""

    def test_each_rejected_command_gets_its_own_single_event(self, ready: Ready) -> None:
        first = reject(ready.w, "ContactNotFound", 404, **body(uuid4(), ready.template))
        second = reject(ready.w, "TemplateNotFound", 404, **body(ready.contact, uuid4()))

        assert first["code"] != second["code"]
        assert _count(ready.w.engine, outbox, outbox.c.event_type == REJECTED) == 2
        assert _count(ready.w.engine, commands, commands.c.status == "failed") == 2

    def test_rejection_event_carries_the_campaign_of_the_command(self, ready: Ready) -> None:
        outcome = ready.w.initiate(**body(uuid4(), ready.template, campaignId="spring-promo"))

        with ready.w.engine.connect() as conn:
            payload = conn.execute(
                select(outbox.c.payload).where(outbox.c.command_id == outcome.command_id)
            ).scalar_one()
        assert payload["workspaceid"] == str(ready.w.workspace_id)
        assert payload["data"]["campaignId"] == "spring-promo"
        assert payload["data"]["code"] == "ContactNotFound"
