"""SPEC 4.1 check 10 and success: channel selection, occupancy, reuse, quota, what is written.

Against real PostgreSQL and Redis, through the same handler the worker runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import pytest
from redis import Redis
from sqlalchemy import Engine, Row, Table, func, select, text, update

from tests.world import World, body
from worker.store.tables import (
    channel_openings,
    commands,
    conversations,
    follow_ups,
    messages,
    outbox,
    outbox_writes,
)

CREATED = "leadscout.conversation.created"
REUSED = "leadscout.conversation.reused"
REJECTED = "leadscout.initiation.rejected"
RENDERED = "Hola Luis, soy Ana de Acme"
CONTEXT = {
    "notes": ["Asked about the SUV", "Prefers mornings"],
    "media": [{"url": "https://cdn.acme.test/q.pdf", "mimeType": "application/pdf"}],
}
OPT_IN = {"source": "landing", "at": "2024-05-01T10:00:00Z", "nested": {"ok": True, "n": [1, 2]}}


def _count(engine: Engine, table: Table, *where: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def _written_rows(engine: Engine) -> tuple[int, int, int]:
    return (
        _count(engine, conversations),
        _count(engine, messages),
        _count(engine, follow_ups),
    )


def conversation(engine: Engine, conversation_id: str | UUID) -> Row[Any]:
    with engine.connect() as conn:
        return conn.execute(
            select(conversations).where(conversations.c.id == UUID(str(conversation_id)))
        ).one()


def template_messages(engine: Engine, conversation_id: str) -> list[Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(messages)
                .where(messages.c.conversation_id == UUID(conversation_id))
                .order_by(messages.c.seq)
            ).all()
        )


def follow_up_rows(engine: Engine, conversation_id: str) -> list[Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(follow_ups)
                .where(follow_ups.c.conversation_id == UUID(conversation_id))
                .order_by(follow_ups.c.position)
            ).all()
        )


def event_of(engine: Engine, command_id: UUID | str) -> tuple[str, dict[str, Any]]:
    """The single outbox row of a command: (event_type, payload)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.event_type, outbox.c.payload).where(
                outbox.c.command_id == UUID(str(command_id))
            )
        ).all()
    assert len(rows) == 1
    return rows[0].event_type, rows[0].payload


def move_openings(engine: Engine, channel_id: UUID, age: str) -> None:
    """Moves the channel's opening counters ``age`` (a PostgreSQL interval) into the past."""
    with engine.begin() as conn:
        conn.execute(
            update(channel_openings)
            .where(channel_openings.c.channel_id == channel_id)
            .values(hour=func.date_trunc("hour", func.now() - text(f"interval '{age}'")))
        )


def set_conversation(engine: Engine, conversation_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(conversations)
            .where(conversations.c.id == UUID(conversation_id))
            .values(**values)
        )


def close(engine: Engine, conversation_id: str) -> None:
    set_conversation(engine, conversation_id, status="closed")


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def succeed(w: World, **request: Any) -> dict[str, Any]:
    """Runs a request that must succeed; returns its 200 body."""
    outcome = w.initiate(**request)
    assert outcome.error is None
    assert outcome.status == "succeeded"
    assert outcome.result is not None
    assert outcome.result["commandId"] == str(outcome.command_id)
    with w.engine.connect() as conn:
        command = conn.execute(
            select(commands.c.status, commands.c.result, commands.c.error_code).where(
                commands.c.id == outcome.command_id
            )
        ).one()
    assert (command.status, command.error_code) == ("succeeded", None)
    assert command.result == outcome.result
    return outcome.result


def fail(w: World, code: str, status: int, **request: Any) -> dict[str, Any]:
    """Runs a request that must be rejected with ``code``, writing nothing; returns the problem."""
    before = _written_rows(w.engine)
    outcome = w.initiate(**request)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert (outcome.error["code"], outcome.error["status"]) == (code, status)
    assert {"type", "title", "status", "detail", "code"} <= outcome.error.keys()
    assert _written_rows(w.engine) == before
    event_type, payload = event_of(w.engine, outcome.command_id)
    assert (event_type, payload["data"]["code"]) == (REJECTED, code)
    with w.engine.connect() as conn:
        command = conn.execute(
            select(commands.c.status, commands.c.error_code, commands.c.error).where(
                commands.c.id == outcome.command_id
            )
        ).one()
    assert tuple(command) == ("failed", code, outcome.error)
    return outcome.error


@dataclass
class Shop:
    """A workspace with a prospection agent, an approved template and a contact."""

    w: World
    agent: UUID
    template: UUID
    contact: UUID

    @property
    def engine(self) -> Engine:
        return self.w.engine

    def channel(self, **fields: Any) -> UUID:
        return self.w.channel(fields.pop("agent", self.agent), **fields)

    def request(self, contact: UUID | None = None, **extra: Any) -> dict[str, Any]:
        return body(contact or self.contact, self.template, **extra)

    def open_on(self, channel: UUID, contact: UUID | None = None, **extra: Any) -> str:
        """Opens a fresh conversation on ``channel``; returns its id."""
        result = succeed(self.w, **self.request(contact, providerChannelId=channel, **extra))
        assert result["alreadyInitiated"] is False
        return str(result["conversation"]["id"])

    def use_quota(self, channel: UUID, n: int) -> None:
        """Opens ``n`` fresh conversations on ``channel`` with other contacts."""
        for i in range(n):
            self.open_on(channel, self.w.contact(phone=f"+52155000000{i:02d}"))


@pytest.fixture
def shop(engine: Engine, redis: Redis) -> Shop:
    w = World(engine, redis)
    return Shop(w, w.agent(), w.template(), w.contact())


def chosen_channel(result: dict[str, Any]) -> UUID:
    return UUID(result["conversation"]["channelId"])


class TestAutoSelectionOrder:
    """Without stickiness, candidates go by priority, then remaining quota, then id."""

    def test_lowest_priority_number_wins(self, shop: Shop) -> None:
        shop.channel(priority=2)
        first = shop.channel(priority=1)
        shop.channel(priority=3)

        assert chosen_channel(succeed(shop.w, **shop.request())) == first

    def test_priority_wins_over_remaining_quota(self, shop: Shop) -> None:
        first = shop.channel(priority=0, dailyLimit=1)
        shop.channel(priority=1, dailyLimit=1000)

        assert chosen_channel(succeed(shop.w, **shop.request())) == first

    def test_more_remaining_quota_breaks_a_priority_tie(self, shop: Shop) -> None:
        shop.channel(priority=0, dailyLimit=5, id=UUID(int=1))
        roomier = shop.channel(priority=0, dailyLimit=10, id=UUID(int=2))

        assert chosen_channel(succeed(shop.w, **shop.request())) == roomier

    def test_remaining_quota_subtracts_conversations_opened_today(self, shop: Shop) -> None:
        busy = shop.channel(priority=0, dailyLimit=10, id=UUID(int=1))
        roomier = shop.channel(priority=0, dailyLimit=8, id=UUID(int=2))
        shop.use_quota(busy, 3)

        assert chosen_channel(succeed(shop.w, **shop.request())) == roomier

    def test_id_breaks_a_tie_of_priority_and_quota(self, shop: Shop) -> None:
        shop.channel(id=UUID("ffffffff-ffff-4fff-bfff-ffffffffffff"))
        lowest = shop.channel(id=UUID("00000000-0000-4000-8000-000000000001"))
        shop.channel(id=UUID("80000000-0000-4000-8000-000000000000"))

        assert chosen_channel(succeed(shop.w, **shop.request())) == lowest

    def test_channels_without_an_active_prospection_agent_are_skipped(self, shop: Shop) -> None:
        shop.channel(priority=0, agent=shop.w.agent(kind="support"))
        shop.channel(priority=0, agent=shop.w.agent(active=False))
        shop.channel(priority=0, agent=None)
        owned = shop.channel(priority=9)

        assert chosen_channel(succeed(shop.w, **shop.request())) == owned

    def test_inactive_and_non_whatsapp_channels_are_skipped(self, shop: Shop) -> None:
        shop.channel(priority=0, active=False)
        shop.channel(priority=0, type="sms")
        whatsapp = shop.channel(priority=9)

        assert chosen_channel(succeed(shop.w, **shop.request())) == whatsapp


class TestBrandFiltering:
    """A brandId restricts candidates to channels linked to it; the conversation gets a brand."""

    def test_brand_restricts_candidates_to_its_channels(self, shop: Shop) -> None:
        brand, other_brand = shop.w.brand(), shop.w.brand("Other Motors")
        shop.channel(priority=0)
        shop.channel(priority=0, brandId=other_brand)
        linked = shop.channel(priority=9, brandId=brand)

        result = succeed(shop.w, **shop.request(brandId=brand))

        assert chosen_channel(result) == linked
        assert result["conversation"]["brandId"] == str(brand)
        assert conversation(shop.engine, result["conversation"]["id"]).brand_id == brand

    def test_conversation_takes_the_channel_brand_when_none_is_requested(self, shop: Shop) -> None:
        brand = shop.w.brand()
        channel = shop.channel(brandId=brand)

        result = succeed(shop.w, **shop.request())

        assert chosen_channel(result) == channel
        assert result["conversation"]["brandId"] == str(brand)

    def test_conversation_has_no_brand_when_neither_request_nor_channel_has_one(
        self, shop: Shop
    ) -> None:
        shop.channel()

        result = succeed(shop.w, **shop.request())

        assert result["conversation"]["brandId"] is None
        assert conversation(shop.engine, result["conversation"]["id"]).brand_id is None

    def test_explicit_channel_linked_to_the_brand_is_used(self, shop: Shop) -> None:
        brand = shop.w.brand()
        shop.channel(priority=0, brandId=brand)
        explicit = shop.channel(priority=9, brandId=brand)

        result = succeed(shop.w, **shop.request(brandId=brand, providerChannelId=explicit))

        assert chosen_channel(result) == explicit
        assert result["conversation"]["brandId"] == str(brand)


class TestStickySender:
    """A contact goes back to the channels it had conversations on, most recent first."""

    def test_closed_conversation_on_a_lower_priority_channel_attracts_the_contact(
        self, shop: Shop
    ) -> None:
        shop.channel(priority=0)
        sticky = shop.channel(priority=5)
        close(shop.engine, shop.open_on(sticky))

        assert chosen_channel(succeed(shop.w, **shop.request())) == sticky

    def test_most_recently_created_conversation_wins(self, shop: Shop) -> None:
        shop.channel(priority=0)
        older, newer = shop.channel(priority=5), shop.channel(priority=9)
        close(shop.engine, shop.open_on(older))
        close(shop.engine, shop.open_on(newer))

        assert chosen_channel(succeed(shop.w, **shop.request())) == newer

    def test_most_recent_means_the_last_conversation_on_each_channel(self, shop: Shop) -> None:
        shop.channel(priority=0)
        a, b = shop.channel(priority=5), shop.channel(priority=9)
        close(shop.engine, shop.open_on(a))
        close(shop.engine, shop.open_on(b))
        close(shop.engine, shop.open_on(a))

        assert chosen_channel(succeed(shop.w, **shop.request())) == a

    def test_active_conversations_are_sticky_too(self, shop: Shop) -> None:
        higher, lower = shop.channel(priority=0), shop.channel(priority=5)
        on_higher, on_lower = shop.open_on(higher), shop.open_on(lower)

        problem = fail(shop.w, "AllProviderChannelsOccupied", 409, **shop.request())
        reused = succeed(shop.w, **shop.request(forceSend=True))

        assert problem["blockingConversationIds"] == [on_lower, on_higher]
        assert reused["conversation"]["id"] == on_lower

    def test_other_contacts_history_does_not_attract(self, shop: Shop) -> None:
        first = shop.channel(priority=0)
        elsewhere = shop.channel(priority=5)
        close(shop.engine, shop.open_on(elsewhere, shop.w.contact(phone="+5215500000099")))

        assert chosen_channel(succeed(shop.w, **shop.request())) == first

    def test_sticky_channel_without_quota_left_is_passed_over(self, shop: Shop) -> None:
        first = shop.channel(priority=0)
        sticky = shop.channel(priority=5, dailyLimit=1)
        close(shop.engine, shop.open_on(sticky))

        assert chosen_channel(succeed(shop.w, **shop.request())) == first


@pytest.fixture
def occupied_pair(shop: Shop) -> tuple[UUID, UUID, str]:
    """Channels A (priority 0, contact busy there) and B (priority 1, free)."""
    a, b = shop.channel(priority=0), shop.channel(priority=1)
    return a, b, shop.open_on(a)


class TestExplicitChannelOccupied:
    """An explicit channel busy with the contact answers 409 unless forceSend reuses it."""

    def test_occupied_explicit_channel_answers_active_conversation_exists(self, shop: Shop) -> None:
        user = shop.w.user()
        channel = shop.channel()
        blocking = shop.open_on(
            channel, campaignId="spring-promo", handoffOverride={"userId": str(user)}
        )
        row = conversation(shop.engine, blocking)

        problem = fail(
            shop.w, "ActiveConversationExists", 409, **shop.request(providerChannelId=channel)
        )

        assert problem["blockingConversationId"] == blocking
        assert problem["blockingConversation"] == {
            "id": blocking,
            "status": "active",
            "control": "ai",
            "channelId": str(channel),
            "agentId": str(shop.agent),
            "assignedUserId": str(user),
            "campaignId": "spring-promo",
            "createdAt": rfc3339(row.created_at),
        }
        assert datetime.fromisoformat(problem["blockingConversation"]["createdAt"]) == (
            row.created_at
        )

    def test_blocking_conversation_shows_human_control_and_null_fields(self, shop: Shop) -> None:
        channel = shop.channel()
        blocking = shop.open_on(channel)
        set_conversation(shop.engine, blocking, control="human")

        problem = fail(
            shop.w, "ActiveConversationExists", 409, **shop.request(providerChannelId=channel)
        )

        view = problem["blockingConversation"]
        assert (view["control"], view["assignedUserId"], view["campaignId"]) == (
            "human",
            None,
            None,
        )

    def test_conversation_on_another_channel_does_not_block(
        self, shop: Shop, occupied_pair: tuple[UUID, UUID, str]
    ) -> None:
        _, b, busy = occupied_pair

        result = succeed(shop.w, **shop.request(providerChannelId=b))

        assert chosen_channel(result) == b
        assert result["conversation"]["id"] != busy
        assert result["alreadyInitiated"] is False

    def test_closed_conversation_does_not_block(self, shop: Shop) -> None:
        channel = shop.channel()
        closed = shop.open_on(channel)
        close(shop.engine, closed)

        result = succeed(shop.w, **shop.request(providerChannelId=channel))

        assert result["conversation"]["id"] != closed
        assert result["alreadyInitiated"] is False
        assert _count(shop.engine, conversations, conversations.c.status == "active") == 1

    def test_another_contact_on_the_channel_does_not_block(self, shop: Shop) -> None:
        channel = shop.channel()
        shop.open_on(channel, shop.w.contact(phone="+5215500000077"))

        result = succeed(shop.w, **shop.request(providerChannelId=channel))

        assert result["alreadyInitiated"] is False
        assert _count(shop.engine, conversations, conversations.c.channel_id == channel) == 2


class TestAutoSelectionOccupied:
    """Auto-selection moves past occupied channels; it never answers ActiveConversationExists."""

    def test_moves_to_the_next_free_channel(
        self, shop: Shop, occupied_pair: tuple[UUID, UUID, str]
    ) -> None:
        _, b, busy = occupied_pair

        result = succeed(shop.w, **shop.request())

        assert chosen_channel(result) == b
        assert result["alreadyInitiated"] is False
        assert result["conversation"]["id"] != busy

    def test_force_send_prefers_a_free_candidate_over_reuse(
        self, shop: Shop, occupied_pair: tuple[UUID, UUID, str]
    ) -> None:
        _, b, busy = occupied_pair

        result = succeed(shop.w, **shop.request(forceSend=True))

        assert chosen_channel(result) == b
        assert result["alreadyInitiated"] is False
        assert conversation(shop.engine, busy).status == "active"

    def test_every_candidate_occupied_answers_all_provider_channels_occupied(
        self, shop: Shop
    ) -> None:
        a, b, c = shop.channel(priority=0), shop.channel(priority=1), shop.channel(priority=2)
        on_b = shop.open_on(b)
        on_a = shop.open_on(a)
        on_c = shop.open_on(c)

        problem = fail(shop.w, "AllProviderChannelsOccupied", 409, **shop.request())

        assert problem["blockingConversationIds"] == [on_c, on_a, on_b]
        assert "blockingConversationId" not in problem

    def test_every_candidate_occupied_with_force_send_reuses_the_first_in_order(
        self, shop: Shop
    ) -> None:
        a, b = shop.channel(priority=0), shop.channel(priority=1)
        shop.open_on(b)
        on_a = shop.open_on(a)

        result = succeed(shop.w, **shop.request(forceSend=True))

        assert result["alreadyInitiated"] is True
        assert result["conversation"]["id"] == on_a
        assert _count(shop.engine, conversations) == 2


class TestReuse:
    """forceSend on an occupied channel reuses its conversation and appends to it."""

    def test_explicit_reuse_appends_message_and_follow_up_positions(self, shop: Shop) -> None:
        channel = shop.channel()
        texts = [{"type": "text", "text": f"follow-up {i}"} for i in range(1, 6)]
        first = succeed(
            shop.w, **shop.request(providerChannelId=channel, additionalMessages=texts[:2])
        )
        conversation_id = first["conversation"]["id"]

        again = succeed(
            shop.w,
            **body(
                shop.contact,
                shop.template,
                ["Luisa", "Eva"],
                providerChannelId=channel,
                forceSend=True,
                additionalMessages=texts[2:],
            ),
        )

        assert again["alreadyInitiated"] is True
        assert again["conversation"]["id"] == conversation_id
        assert again["followUpsCount"] == 3
        assert again["template"]["renderedBody"] == "Hola Luisa, soy Eva de Acme"
        assert _count(shop.engine, conversations) == 1
        bodies = [m.body for m in template_messages(shop.engine, conversation_id)]
        assert bodies == [RENDERED, "Hola Luisa, soy Eva de Acme"]
        rows = follow_up_rows(shop.engine, conversation_id)
        assert [(r.position, r.content, r.status) for r in rows] == [
            (i, texts[i - 1], "pending") for i in range(1, 6)
        ]
        by = {first["commandId"]: "first", again["commandId"]: "again"}
        assert [by[str(r.command_id)] for r in rows] == ["first"] * 2 + ["again"] * 3

    def test_reuse_keeps_created_at_and_moves_updated_at(self, shop: Shop) -> None:
        channel = shop.channel()
        first = succeed(shop.w, **shop.request(providerChannelId=channel))

        again = succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))

        assert again["conversation"]["createdAt"] == first["conversation"]["createdAt"]
        assert datetime.fromisoformat(again["conversation"]["updatedAt"]) > (
            datetime.fromisoformat(first["conversation"]["updatedAt"])
        )
        assert again["conversation"]["status"] == "active"

    def test_reuse_without_follow_ups_counts_zero(self, shop: Shop) -> None:
        channel = shop.channel()
        shop.open_on(channel, additionalMessages=[{"type": "text", "text": "hi"}])

        again = succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))

        assert again["followUpsCount"] == 0
        assert len(follow_up_rows(shop.engine, again["conversation"]["id"])) == 1

    def test_reuse_returns_a_handed_off_conversation_to_the_agent(self, shop: Shop) -> None:
        channel = shop.channel()
        conversation_id = shop.open_on(channel)
        set_conversation(shop.engine, conversation_id, control="human")

        again = succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))

        assert again["conversation"]["control"] == "ai"
        assert conversation(shop.engine, conversation_id).control == "ai"
        event_type, payload = event_of(shop.engine, again["commandId"])
        assert event_type == REUSED
        assert payload["type"] == REUSED
        assert payload["subject"] == conversation_id
        assert payload["data"]["previousControl"] == "human"
        assert payload["data"]["alreadyInitiated"] is True
        assert payload["data"]["conversationId"] == conversation_id

    def test_reuse_of_an_ai_conversation_records_previous_control_ai(self, shop: Shop) -> None:
        channel = shop.channel()
        shop.open_on(channel)

        again = succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))

        event_type, payload = event_of(shop.engine, again["commandId"])
        assert (event_type, payload["data"]["previousControl"]) == (REUSED, "ai")

    def test_reuse_on_the_auto_path_uses_the_first_candidate(self, shop: Shop) -> None:
        a, b = shop.channel(priority=0), shop.channel(priority=1)
        on_a = shop.open_on(a)
        on_b = shop.open_on(b)
        set_conversation(shop.engine, on_a, control="human")

        result = succeed(shop.w, **shop.request(forceSend=True))

        assert result["conversation"]["id"] == on_b
        assert result["conversation"]["channelId"] == str(b)
        assert result["alreadyInitiated"] is True
        assert conversation(shop.engine, on_a).control == "human"
        assert len(template_messages(shop.engine, on_b)) == 2
        assert len(template_messages(shop.engine, on_a)) == 1

    def test_handoff_override_sets_the_assigned_user(self, shop: Shop) -> None:
        first_user, second_user = shop.w.user(), shop.w.user()
        channel = shop.channel()
        conversation_id = shop.open_on(channel, handoffOverride={"userId": str(first_user)})

        again = succeed(
            shop.w,
            **shop.request(
                providerChannelId=channel,
                forceSend=True,
                handoffOverride={"userId": str(second_user)},
            ),
        )

        assert again["conversation"]["assignedUserId"] == str(second_user)
        assert conversation(shop.engine, conversation_id).assigned_user_id == second_user

    def test_without_handoff_override_the_assigned_user_is_kept(self, shop: Shop) -> None:
        user = shop.w.user()
        channel = shop.channel()
        conversation_id = shop.open_on(channel, handoffOverride={"userId": str(user)})

        again = succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))

        assert again["conversation"]["assignedUserId"] == str(user)
        assert conversation(shop.engine, conversation_id).assigned_user_id == user

    def test_present_campaign_context_and_opt_in_replace_the_stored_ones(self, shop: Shop) -> None:
        channel = shop.channel()
        conversation_id = shop.open_on(
            channel, campaignId="old", context={"notes": ["old"]}, optIn={"v": 1}
        )

        again = succeed(
            shop.w,
            **shop.request(
                providerChannelId=channel,
                forceSend=True,
                campaignId="new:2",
                context=CONTEXT,
                optIn=OPT_IN,
            ),
        )

        row = conversation(shop.engine, conversation_id)
        assert (row.campaign_id, row.context, row.opt_in) == ("new:2", CONTEXT, OPT_IN)
        assert again["conversation"]["campaignId"] == "new:2"

    @pytest.mark.parametrize("how", ["absent", "null"])
    def test_absent_or_null_campaign_context_and_opt_in_keep_the_stored_ones(
        self, shop: Shop, how: str
    ) -> None:
        channel = shop.channel()
        conversation_id = shop.open_on(channel, campaignId="old", context=CONTEXT, optIn=OPT_IN)
        nulls = {"campaignId": None, "context": None, "optIn": None} if how == "null" else {}

        again = succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True, **nulls))

        row = conversation(shop.engine, conversation_id)
        assert (row.campaign_id, row.context, row.opt_in) == ("old", CONTEXT, OPT_IN)
        assert again["conversation"]["campaignId"] == "old"
        _, payload = event_of(shop.engine, again["commandId"])
        assert payload["data"]["campaignId"] is None

    def test_reuse_event_carries_the_command_campaign(self, shop: Shop) -> None:
        channel = shop.channel()
        shop.open_on(channel, campaignId="old")

        again = succeed(
            shop.w,
            **shop.request(providerChannelId=channel, forceSend=True, campaignId="winter"),
        )

        _, payload = event_of(shop.engine, again["commandId"])
        assert payload["data"]["campaignId"] == "winter"
        assert payload["data"]["followUpsCount"] == 0


class TestDailyQuota:
    """Fresh conversations in the last 24 h count against dailyLimit; reuses never do."""

    def test_explicit_channel_at_its_limit_answers_429(self, shop: Shop) -> None:
        channel = shop.channel(dailyLimit=2)
        shop.use_quota(channel, 2)

        fail(shop.w, "ChannelDailyLimitReached", 429, **shop.request(providerChannelId=channel))

    def test_explicit_channel_at_its_limit_answers_429_even_with_force_send(
        self, shop: Shop
    ) -> None:
        channel = shop.channel(dailyLimit=1)
        shop.use_quota(channel, 1)

        fail(
            shop.w,
            "ChannelDailyLimitReached",
            429,
            **shop.request(providerChannelId=channel, forceSend=True),
        )

    def test_channel_with_zero_limit_never_opens(self, shop: Shop) -> None:
        channel = shop.channel(dailyLimit=0)

        fail(shop.w, "ChannelDailyLimitReached", 429, **shop.request(providerChannelId=channel))

    @pytest.mark.parametrize("force_send", [False, True])
    def test_auto_selection_with_every_channel_at_its_limit_answers_429(
        self, shop: Shop, force_send: bool
    ) -> None:
        a, b = shop.channel(priority=0, dailyLimit=1), shop.channel(priority=1, dailyLimit=1)
        shop.use_quota(a, 1)
        shop.use_quota(b, 1)

        fail(shop.w, "ChannelDailyLimitReached", 429, **shop.request(forceSend=force_send))

    def test_auto_selection_passes_over_a_channel_at_its_limit(self, shop: Shop) -> None:
        full = shop.channel(priority=0, dailyLimit=1)
        spare = shop.channel(priority=1, dailyLimit=1)
        shop.use_quota(full, 1)

        assert chosen_channel(succeed(shop.w, **shop.request())) == spare

    def test_explicit_reuse_ignores_the_quota(self, shop: Shop) -> None:
        channel = shop.channel(dailyLimit=1)
        conversation_id = shop.open_on(channel)

        again = succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))

        assert again["conversation"]["id"] == conversation_id
        assert again["alreadyInitiated"] is True

    def test_auto_reuse_ignores_the_quota(self, shop: Shop) -> None:
        a, b = shop.channel(priority=0, dailyLimit=1), shop.channel(priority=1, dailyLimit=1)
        on_a = shop.open_on(a)
        shop.use_quota(b, 1)

        again = succeed(shop.w, **shop.request(forceSend=True))

        assert again["conversation"]["id"] == on_a
        assert again["alreadyInitiated"] is True

    def test_occupied_candidate_and_others_at_limit_answers_occupied_listing_only_occupied(
        self, shop: Shop
    ) -> None:
        a = shop.channel(priority=1, dailyLimit=5)
        b, c = shop.channel(priority=0, dailyLimit=1), shop.channel(priority=2, dailyLimit=1)
        on_a = shop.open_on(a)
        shop.use_quota(b, 1)
        shop.use_quota(c, 1)

        problem = fail(shop.w, "AllProviderChannelsOccupied", 409, **shop.request())

        assert problem["blockingConversationIds"] == [on_a]

    def test_reuse_does_not_consume_quota(self, shop: Shop) -> None:
        channel = shop.channel(dailyLimit=2)
        shop.open_on(channel)
        succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))
        succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))

        other = shop.open_on(channel, shop.w.contact(phone="+5215500000055"))

        assert conversation(shop.engine, other).channel_id == channel
        assert _count(shop.engine, conversations, conversations.c.channel_id == channel) == 2

    def test_closed_conversations_opened_today_still_count(self, shop: Shop) -> None:
        channel = shop.channel(dailyLimit=1)
        close(shop.engine, shop.open_on(channel, shop.w.contact(phone="+5215500000044")))

        fail(shop.w, "ChannelDailyLimitReached", 429, **shop.request(providerChannelId=channel))

    def test_conversations_older_than_24_hours_do_not_count(self, shop: Shop) -> None:
        channel = shop.channel(dailyLimit=1)
        old = shop.open_on(channel, shop.w.contact(phone="+5215500000033"))
        set_conversation(shop.engine, old, created_at=text("now() - interval '25 hours'"))
        move_openings(shop.engine, channel, "25 hours")

        result = succeed(shop.w, **shop.request(providerChannelId=channel))

        assert result["alreadyInitiated"] is False

    def test_quota_is_per_channel_not_per_workspace(self, shop: Shop) -> None:
        a, b = shop.channel(priority=0, dailyLimit=1), shop.channel(priority=1, dailyLimit=1)
        shop.use_quota(a, 1)

        result = succeed(shop.w, **shop.request(providerChannelId=b))

        assert chosen_channel(result) == b


class TestFreshConversation:
    """A fresh conversation is active, AI-controlled, and stores the request as sent."""

    def test_defaults_of_a_minimal_request(self, shop: Shop) -> None:
        channel = shop.channel()

        result = succeed(shop.w, **shop.request())

        row = conversation(shop.engine, result["conversation"]["id"])
        assert row.workspace_id == shop.w.workspace_id
        assert (row.status, row.control) == ("active", "ai")
        assert (row.channel_id, row.contact_id, row.agent_id) == (
            channel,
            shop.contact,
            shop.agent,
        )
        assert (row.assigned_user_id, row.brand_id, row.campaign_id) == (None, None, None)
        assert (row.context, row.opt_in) == (None, None)
        assert row.command_id == UUID(result["commandId"])
        assert follow_up_rows(shop.engine, str(row.id)) == []
        assert result["followUpsCount"] == 0

    def test_agent_is_the_channel_prospection_agent(self, shop: Shop) -> None:
        scout = shop.w.agent()
        channel = shop.channel(agent=scout)

        result = succeed(shop.w, **shop.request(providerChannelId=channel))

        assert result["conversation"]["agentId"] == str(scout)
        assert conversation(shop.engine, result["conversation"]["id"]).agent_id == scout

    def test_handoff_override_wins_over_the_default_advisor(self, shop: Shop) -> None:
        advisor, override = shop.w.user(), shop.w.user()
        shop.channel(defaultAdvisorId=advisor)

        result = succeed(shop.w, **shop.request(handoffOverride={"userId": str(override)}))

        assert result["conversation"]["assignedUserId"] == str(override)

    def test_default_advisor_is_assigned_without_handoff_override(self, shop: Shop) -> None:
        advisor = shop.w.user()
        shop.channel(defaultAdvisorId=advisor)

        result = succeed(shop.w, **shop.request())

        assert result["conversation"]["assignedUserId"] == str(advisor)
        row = conversation(shop.engine, result["conversation"]["id"])
        assert row.assigned_user_id == advisor

    def test_campaign_context_and_opt_in_are_stored_verbatim(self, shop: Shop) -> None:
        shop.channel()

        result = succeed(
            shop.w,
            **shop.request(campaignId="spring-promo_2024.v1:a", context=CONTEXT, optIn=OPT_IN),
        )

        row = conversation(shop.engine, result["conversation"]["id"])
        assert (row.campaign_id, row.context, row.opt_in) == (
            "spring-promo_2024.v1:a",
            CONTEXT,
            OPT_IN,
        )
        assert result["conversation"]["campaignId"] == "spring-promo_2024.v1:a"

    def test_empty_opt_in_is_stored_as_an_empty_object(self, shop: Shop) -> None:
        shop.channel()

        result = succeed(shop.w, **shop.request(optIn={}))

        assert conversation(shop.engine, result["conversation"]["id"]).opt_in == {}

    def test_first_message_is_the_rendered_template_queued(self, shop: Shop) -> None:
        shop.channel()

        result = succeed(shop.w, **shop.request())

        rows = template_messages(shop.engine, result["conversation"]["id"])
        assert [(m.kind, m.body, m.status, m.template_id) for m in rows] == [
            ("template", RENDERED, "queued", shop.template)
        ]
        assert rows[0].command_id == UUID(result["commandId"])

    def test_follow_ups_are_stored_pending_in_order_as_sent(self, shop: Shop) -> None:
        shop.channel()
        sent = [
            {"type": "text", "text": "¿Te interesa una prueba de manejo?"},
            {
                "type": "media",
                "mediaUrl": "https://cdn.acme.test/suv.jpg",
                "mimeType": "image/jpeg",
                "caption": "El nuevo SUV",
            },
            {"type": "media", "mediaUrl": "https://cdn.acme.test/x.pdf", "mimeType": "a/pdf"},
        ]

        result = succeed(shop.w, **shop.request(additionalMessages=sent))

        rows = follow_up_rows(shop.engine, result["conversation"]["id"])
        assert [(r.position, r.content, r.status) for r in rows] == [
            (1, sent[0], "pending"),
            (2, sent[1], "pending"),
            (3, sent[2], "pending"),
        ]
        assert result["followUpsCount"] == 3


class TestTemplateRendering:
    """The first message is the template body with {{k}} replaced by the k-th parameter."""

    def test_non_contiguous_placeholders_render_with_the_highest_count(self, shop: Shop) -> None:
        shop.channel()
        template = shop.w.template(body="Hola {{1}}, tu cita es el {{3}}")

        result = succeed(shop.w, **body(shop.contact, template, ["Luis", "x", "lunes"]))

        assert result["template"]["renderedBody"] == "Hola Luis, tu cita es el lunes"
        [message] = template_messages(shop.engine, result["conversation"]["id"])
        assert message.body == "Hola Luis, tu cita es el lunes"

    def test_template_with_literal_zero_braces_is_sent(self, shop: Shop) -> None:
        shop.channel()
        template = shop.w.template(body="Tu código es {{0}}")

        result = succeed(shop.w, **body(shop.contact, template, []))

        assert result["template"]["renderedBody"] == "Tu código es {{0}}"


class TestResultBody:
    """The 200 body has exactly the shape of SPEC 4.1."""

    def test_full_result_body(self, shop: Shop) -> None:
        brand, user = shop.w.brand(), shop.w.user()
        channel = shop.channel(brandId=brand)

        result = succeed(
            shop.w,
            **shop.request(
                brandId=brand,
                campaignId="spring-promo",
                handoffOverride={"userId": str(user)},
                additionalMessages=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            ),
        )

        row = conversation(shop.engine, result["conversation"]["id"])
        assert result == {
            "conversation": {
                "id": str(row.id),
                "workspaceId": str(shop.w.workspace_id),
                "status": "active",
                "control": "ai",
                "agentId": str(shop.agent),
                "channelId": str(channel),
                "contactId": str(shop.contact),
                "assignedUserId": str(user),
                "brandId": str(brand),
                "campaignId": "spring-promo",
                "createdAt": rfc3339(row.created_at),
                "updatedAt": rfc3339(row.updated_at),
            },
            "contact": {"id": str(shop.contact), "name": "Luis", "phone": "+5215598765432"},
            "template": {
                "id": str(shop.template),
                "name": "welcome_v2",
                "language": "es_MX",
                "category": "MARKETING",
                "renderedBody": RENDERED,
            },
            "followUpsCount": 2,
            "alreadyInitiated": False,
            "commandId": result["commandId"],
        }
        assert result["conversation"]["createdAt"].endswith("Z")
        assert datetime.fromisoformat(result["conversation"]["createdAt"]) == row.created_at

    def test_nullable_members_are_present_as_null(self, shop: Shop) -> None:
        shop.channel()

        conversation_view = succeed(shop.w, **shop.request())["conversation"]

        assert {k: conversation_view[k] for k in ("assignedUserId", "brandId", "campaignId")} == {
            "assignedUserId": None,
            "brandId": None,
            "campaignId": None,
        }


class TestConversationCreatedEvent:
    """A fresh conversation writes one ConversationCreated CloudEvent in the outbox."""

    def test_full_event_payload(self, shop: Shop) -> None:
        brand = shop.w.brand()
        channel = shop.channel(brandId=brand)

        result = succeed(
            shop.w,
            **shop.request(
                campaignId="spring-promo",
                additionalMessages=[{"type": "text", "text": "a"}],
            ),
        )

        event_type, payload = event_of(shop.engine, result["commandId"])
        conversation_id = result["conversation"]["id"]
        assert event_type == CREATED
        assert UUID(payload["id"]) not in (UUID(result["commandId"]), UUID(conversation_id))
        assert datetime.fromisoformat(payload["time"]).tzinfo is not None
        assert {k: v for k, v in payload.items() if k not in ("id", "time")} == {
            "specversion": "1.0",
            "type": CREATED,
            "source": "leadscout-outbound",
            "subject": conversation_id,
            "datacontenttype": "application/json",
            "workspaceid": str(shop.w.workspace_id),
            "data": {
                "commandId": result["commandId"],
                "conversationId": conversation_id,
                "contactId": str(shop.contact),
                "channelId": str(channel),
                "agentId": str(shop.agent),
                "brandId": str(brand),
                "campaignId": "spring-promo",
                "templateId": str(shop.template),
                "followUpsCount": 1,
                "alreadyInitiated": False,
                "previousControl": None,
                "message": {
                    "messaging_product": "whatsapp",
                    "to": "+5215598765432",
                    "type": "template",
                    "template": {
                        "name": "welcome_v2",
                        "language": {"code": "es_MX"},
                        "components": [
                            {
                                "type": "body",
                                "parameters": [
                                    {"type": "text", "text": "Luis"},
                                    {"type": "text", "text": "Ana"},
                                ],
                            }
                        ],
                    },
                },
            },
        }
        with shop.engine.connect() as conn:
            row = conn.execute(
                select(outbox.c.event_id, outbox.c.workspace_id, outbox_writes.c.published_at)
                .join_from(outbox, outbox_writes)
                .where(outbox.c.command_id == UUID(result["commandId"]))
            ).one()
        assert (row.event_id, row.workspace_id, row.published_at) == (
            UUID(payload["id"]),
            shop.w.workspace_id,
            None,
        )

    def test_message_omits_components_for_a_template_without_placeholders(self, shop: Shop) -> None:
        shop.channel()
        template = shop.w.template(body="Hola, somos Acme")

        result = succeed(shop.w, **body(shop.contact, template, []))

        _, payload = event_of(shop.engine, result["commandId"])
        assert payload["data"]["message"] == {
            "messaging_product": "whatsapp",
            "to": "+5215598765432",
            "type": "template",
            "template": {"name": "welcome_v2", "language": {"code": "es_MX"}},
        }

    def test_message_is_addressed_to_the_contact_phone_as_stored(self, shop: Shop) -> None:
        shop.channel()
        contact = shop.w.contact(phone="+52 1 55 9876 5432")

        result = succeed(shop.w, **body(contact, shop.template))

        _, payload = event_of(shop.engine, result["commandId"])
        assert payload["data"]["message"]["to"] == "+52 1 55 9876 5432"

    def test_each_success_writes_exactly_one_event(self, shop: Shop) -> None:
        channel = shop.channel()
        shop.open_on(channel)
        succeed(shop.w, **shop.request(providerChannelId=channel, forceSend=True))

        with shop.engine.connect() as conn:
            types = conn.execute(select(outbox.c.event_type).order_by(outbox.c.id)).scalars()
            assert list(types) == [CREATED, REUSED]
