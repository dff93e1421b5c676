"""Pure rules of SPEC 4.1 check 10 (worker.rules) and template placeholders (worker.model)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from uuid import UUID

import pytest

from schemas import errors
from worker.model import Channel, Contact, ContactState, Conversation, Template
from worker.rules import (
    Eligible,
    OpenFresh,
    Reuse,
    blocking_view,
    order_candidates,
    select_channel,
)

AGENT = UUID(int=0xA6E17)
CONTACT = Contact(UUID(int=0xC0), "Luis", "+5215598765432", opted_out=False)
CREATED_AT = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def template(body: str = "Hola {{1}}, soy {{2}} de Acme") -> Template:
    return Template(UUID(int=0x7E), "welcome_v2", "es_MX", "MARKETING", "APPROVED", body)


def channel(n: int, *, priority: int = 0, daily_limit: int = 1000) -> Channel:
    return Channel(
        id=UUID(int=n),
        type="whatsapp",
        active=True,
        brand_id=None,
        agent_id=AGENT,
        default_advisor_id=None,
        daily_limit=daily_limit,
        priority=priority,
    )


def conversation(
    n: int, on: Channel, *, seq: int, status: str = "active", control: str = "ai"
) -> Conversation:
    return Conversation(
        id=UUID(int=0x1000 + n),
        seq=seq,
        channel_id=on.id,
        contact_id=CONTACT.id,
        status=status,
        control=control,
        agent_id=AGENT,
        assigned_user_id=None,
        brand_id=None,
        campaign_id=None,
        created_at=CREATED_AT,
    )


def state(*conversations: Conversation, opened: dict[Channel, int] | None = None) -> ContactState:
    return ContactState(
        conversations=conversations,
        opened_last_24h={c.id: n for c, n in (opened or {}).items()},
    )


def eligible(*candidates: Channel, explicit: bool = False) -> Eligible:
    return Eligible(template(), CONTACT, candidates, explicit_channel=explicit)


def ids(channels: list[Channel]) -> list[UUID]:
    return [c.id for c in channels]


class TestOrderCandidates:
    """Candidates go sticky (most recent first), then priority, remaining quota, id."""

    def test_lower_priority_number_comes_first(self) -> None:
        a, b, c = channel(1, priority=5), channel(2, priority=0), channel(3, priority=2)

        assert ids(order_candidates((a, b, c), state())) == [b.id, c.id, a.id]

    def test_more_remaining_quota_breaks_a_priority_tie(self) -> None:
        a, b = channel(1, daily_limit=10), channel(2, daily_limit=10)

        ordered = order_candidates((a, b), state(opened={a: 4, b: 1}))

        assert ids(ordered) == [b.id, a.id]

    def test_remaining_quota_not_daily_limit_is_compared(self) -> None:
        a, b = channel(1, daily_limit=100), channel(2, daily_limit=10)

        ordered = order_candidates((a, b), state(opened={a: 95}))

        assert ids(ordered) == [b.id, a.id]

    def test_id_breaks_a_tie_of_priority_and_quota(self) -> None:
        a, b, c = channel(0xFF), channel(0x01), channel(0x10)

        assert ids(order_candidates((a, b, c), state())) == [b.id, c.id, a.id]

    def test_priority_wins_over_remaining_quota(self) -> None:
        a, b = channel(1, priority=1, daily_limit=1000), channel(2, priority=0, daily_limit=1)

        assert ids(order_candidates((a, b), state())) == [b.id, a.id]

    def test_channels_the_contact_used_come_before_priority(self) -> None:
        best, used = channel(1, priority=0), channel(2, priority=9)

        ordered = order_candidates((best, used), state(conversation(1, used, seq=7)))

        assert ids(ordered) == [used.id, best.id]

    def test_closed_conversations_are_sticky_too(self) -> None:
        best, used = channel(1, priority=0), channel(2, priority=9)
        closed = conversation(1, used, seq=7, status="closed")

        assert ids(order_candidates((best, used), state(closed))) == [used.id, best.id]

    def test_most_recently_created_conversation_comes_first(self) -> None:
        a, b, c = channel(1), channel(2), channel(3, priority=-1)
        history = state(
            conversation(1, a, seq=3, status="closed"),
            conversation(2, b, seq=8),
            conversation(3, a, seq=5, status="closed"),
        )

        assert ids(order_candidates((a, b, c), history)) == [b.id, a.id, c.id]

    def test_latest_conversation_per_channel_decides(self) -> None:
        a, b = channel(1), channel(2)
        history = state(
            conversation(1, a, seq=1, status="closed"),
            conversation(2, b, seq=2, status="closed"),
            conversation(3, a, seq=3),
        )

        assert ids(order_candidates((a, b), history)) == [a.id, b.id]

    def test_conversations_on_non_candidate_channels_are_ignored(self) -> None:
        a, b, gone = channel(1, priority=1), channel(2, priority=0), channel(3)

        ordered = order_candidates((a, b), state(conversation(1, gone, seq=99)))

        assert ids(ordered) == [b.id, a.id]

    def test_every_candidate_is_kept_even_occupied_or_exhausted(self) -> None:
        a, b, c = channel(1, daily_limit=1), channel(2), channel(3)

        ordered = order_candidates((a, b, c), state(conversation(1, b, seq=1), opened={a: 1}))

        assert sorted(ids(ordered)) == [a.id, b.id, c.id]
        assert ids(ordered)[0] == b.id


class TestSelectExplicitChannel:
    """On an explicit channel, occupancy answers first, then the quota."""

    def test_free_channel_with_quota_opens_fresh(self) -> None:
        ch = channel(1)

        assert select_channel(eligible(ch, explicit=True), state(), False) == OpenFresh(ch)

    def test_closed_conversation_does_not_occupy(self) -> None:
        ch = channel(1)
        closed = conversation(1, ch, seq=1, status="closed")

        decision = select_channel(eligible(ch, explicit=True), state(closed), False)

        assert decision == OpenFresh(ch)

    def test_occupied_channel_without_force_send_is_active_conversation_exists(self) -> None:
        ch = channel(1)
        active = conversation(1, ch, seq=1, control="human")

        with pytest.raises(errors.ActiveConversationExists) as raised:
            select_channel(eligible(ch, explicit=True), state(active), False)

        problem = raised.value.as_problem()
        assert (problem["code"], problem["status"]) == ("ActiveConversationExists", 409)
        assert problem["blockingConversationId"] == str(active.id)
        assert problem["blockingConversation"] == blocking_view(active)

    def test_occupied_channel_with_force_send_is_reused(self) -> None:
        ch = channel(1)
        active = conversation(1, ch, seq=1)

        decision = select_channel(eligible(ch, explicit=True), state(active), True)

        assert decision == Reuse(ch, active)

    def test_occupied_channel_at_its_limit_is_still_reused(self) -> None:
        ch = channel(1, daily_limit=1)
        active = conversation(1, ch, seq=1)

        decision = select_channel(eligible(ch, explicit=True), state(active, opened={ch: 1}), True)

        assert decision == Reuse(ch, active)

    def test_occupied_channel_at_its_limit_answers_occupancy_not_quota(self) -> None:
        ch = channel(1, daily_limit=1)
        active = conversation(1, ch, seq=1)

        with pytest.raises(errors.ActiveConversationExists):
            select_channel(eligible(ch, explicit=True), state(active, opened={ch: 1}), False)

    @pytest.mark.parametrize("force_send", [False, True])
    @pytest.mark.parametrize(("limit", "opened"), [(3, 3), (0, 0), (2, 5)])
    def test_free_channel_without_quota_is_daily_limit_reached(
        self, force_send: bool, limit: int, opened: int
    ) -> None:
        ch = channel(1, daily_limit=limit)

        with pytest.raises(errors.ChannelDailyLimitReached) as raised:
            select_channel(eligible(ch, explicit=True), state(opened={ch: opened}), force_send)

        assert raised.value.status == 429

    def test_conversation_on_another_channel_does_not_occupy(self) -> None:
        ch, other = channel(1), channel(2)

        decision = select_channel(
            eligible(ch, explicit=True), state(conversation(1, other, seq=1)), False
        )

        assert decision == OpenFresh(ch)


class TestAutoSelect:
    """Auto-selection takes the first free candidate with quota, else reuses or refuses."""

    def test_first_candidate_in_order_opens_fresh(self) -> None:
        a, b = channel(1, priority=1), channel(2, priority=0)

        assert select_channel(eligible(a, b), state(), False) == OpenFresh(b)

    def test_occupied_candidates_are_passed_over(self) -> None:
        a, b = channel(1, priority=0), channel(2, priority=1)

        decision = select_channel(eligible(a, b), state(conversation(1, a, seq=1)), False)

        assert decision == OpenFresh(b)

    def test_exhausted_candidates_are_passed_over(self) -> None:
        a, b = channel(1, priority=0, daily_limit=2), channel(2, priority=1)

        assert select_channel(eligible(a, b), state(opened={a: 2}), False) == OpenFresh(b)

    def test_force_send_still_prefers_a_free_candidate(self) -> None:
        a, b = channel(1, priority=0), channel(2, priority=1)

        decision = select_channel(eligible(a, b), state(conversation(1, a, seq=1)), True)

        assert decision == OpenFresh(b)

    def test_every_candidate_occupied_lists_blocking_ids_in_candidate_order(self) -> None:
        a, b, c = channel(1), channel(2), channel(3)
        on_a, on_b, on_c = (
            conversation(1, a, seq=2),
            conversation(2, b, seq=3),
            conversation(3, c, seq=1),
        )

        with pytest.raises(errors.AllProviderChannelsOccupied) as raised:
            select_channel(eligible(a, b, c), state(on_a, on_b, on_c), False)

        problem = raised.value.as_problem()
        assert (problem["code"], problem["status"]) == ("AllProviderChannelsOccupied", 409)
        assert problem["blockingConversationIds"] == [str(on_b.id), str(on_a.id), str(on_c.id)]

    def test_every_candidate_occupied_with_force_send_reuses_the_first(self) -> None:
        a, b = channel(1, priority=0), channel(2, priority=5)
        on_a, on_b = conversation(1, a, seq=1), conversation(2, b, seq=2)

        decision = select_channel(eligible(a, b), state(on_a, on_b), True)

        assert decision == Reuse(b, on_b)

    def test_occupied_and_exhausted_lists_only_the_occupied(self) -> None:
        a, b, c = channel(1, daily_limit=1), channel(2), channel(3, daily_limit=1)
        on_b = conversation(1, b, seq=1)

        with pytest.raises(errors.AllProviderChannelsOccupied) as raised:
            select_channel(eligible(a, b, c), state(on_b, opened={a: 1, c: 1}), False)

        assert raised.value.as_problem()["blockingConversationIds"] == [str(on_b.id)]

    def test_occupied_and_exhausted_with_force_send_reuses_the_occupied(self) -> None:
        a, b = channel(1, daily_limit=1, priority=0), channel(2, daily_limit=0, priority=1)
        on_b = conversation(1, b, seq=1)

        decision = select_channel(eligible(a, b), state(on_b, opened={a: 1}), True)

        assert decision == Reuse(b, on_b)

    @pytest.mark.parametrize("force_send", [False, True])
    def test_every_candidate_exhausted_and_none_occupied_is_daily_limit_reached(
        self, force_send: bool
    ) -> None:
        a, b = channel(1, daily_limit=1), channel(2, daily_limit=0)
        closed = conversation(1, a, seq=1, status="closed")

        with pytest.raises(errors.ChannelDailyLimitReached) as raised:
            select_channel(eligible(a, b), state(closed, opened={a: 1}), force_send)

        assert (raised.value.code.value, raised.value.status) == ("ChannelDailyLimitReached", 429)


class TestBlockingView:
    """The blockingConversation object has exactly the members of SPEC 4.1."""

    def test_view_of_a_conversation_with_every_field(self) -> None:
        user = UUID(int=0x05E)
        conv = Conversation(
            id=UUID(int=1),
            seq=1,
            channel_id=UUID(int=2),
            contact_id=CONTACT.id,
            status="active",
            control="human",
            agent_id=AGENT,
            assigned_user_id=user,
            brand_id=UUID(int=3),
            campaign_id="spring",
            created_at=CREATED_AT,
        )

        assert blocking_view(conv) == {
            "id": str(UUID(int=1)),
            "status": "active",
            "control": "human",
            "channelId": str(UUID(int=2)),
            "agentId": str(AGENT),
            "assignedUserId": str(user),
            "campaignId": "spring",
            "createdAt": "2024-05-01T10:00:00.123456Z",
        }

    def test_missing_agent_and_user_are_null(self) -> None:
        conv = conversation(1, channel(1), seq=1)
        bare = replace(conv, agent_id=None)

        view = blocking_view(bare)

        assert (view["agentId"], view["assignedUserId"], view["campaignId"]) == (None, None, None)


class TestContactState:
    """The contact state answers occupancy, stickiness and remaining quota."""

    def test_remaining_quota_is_limit_minus_opened(self) -> None:
        a, b = channel(1, daily_limit=10), channel(2, daily_limit=10)

        quota = state(opened={a: 4})

        assert (quota.remaining_quota(a), quota.remaining_quota(b)) == (6, 10)

    def test_active_on_ignores_closed_conversations(self) -> None:
        a = channel(1)
        closed, active = (
            conversation(1, a, seq=1, status="closed"),
            conversation(2, a, seq=2),
        )

        assert state(closed).active_on(a.id) is None
        assert state(closed, active).active_on(a.id) == active

    def test_last_seq_by_channel_is_the_highest_of_each_channel_reached(self) -> None:
        a, b, c = channel(1), channel(2), channel(3)
        history = state(
            conversation(1, a, seq=9, status="closed"),
            conversation(2, a, seq=4),
            conversation(3, b, seq=5),
        )

        assert history.last_seq_by_channel() == {a.id: 9, b.id: 5}
        assert c.id not in history.last_seq_by_channel()


class TestPlaceholderCount:
    """A template expects n parameters, n being its highest placeholder number (0 if none)."""

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            ("Hola {{1}}, soy {{2}} de Acme", 2),
            ("Hola, somos Acme", 0),
            ("Hola {{1}}, tu cita es el {{3}}", 3),
            ("{{2}} antes que {{1}}", 2),
            ("{{1}} y otra vez {{1}}", 1),
            ("Del {{1}} al {{12}}", 12),
            ("Llaves sueltas { {1} } y {{uno}}", 0),
        ],
    )
    def test_placeholder_count(self, body: str, expected: int) -> None:
        assert template(body).placeholder_count == expected


class TestRender:
    """Rendering replaces each {{k}} with the k-th parameter and nothing else."""

    def test_parameters_replace_their_placeholders(self) -> None:
        assert template().render(["Luis", "Ana"]) == "Hola Luis, soy Ana de Acme"

    def test_template_without_placeholders_renders_as_is(self) -> None:
        assert template("Hola, somos Acme").render([]) == "Hola, somos Acme"

    def test_repeated_placeholder_gets_the_same_parameter(self) -> None:
        assert template("{{1}} y otra vez {{1}}").render(["Luis"]) == "Luis y otra vez Luis"

    def test_out_of_order_placeholders_use_their_numbers(self) -> None:
        assert template("{{2}} antes que {{1}}").render(["uno", "dos"]) == "dos antes que uno"

    def test_non_contiguous_placeholders_skip_the_unused_parameter(self) -> None:
        rendered = template("Hola {{1}}, tu cita es el {{3}}").render(["Luis", "x", "lunes"])

        assert rendered == "Hola Luis, tu cita es el lunes"

    def test_multi_digit_placeholder(self) -> None:
        parameters = [str(i) for i in range(1, 13)]

        assert template("Del {{1}} al {{12}}").render(parameters) == "Del 1 al 12"

    def test_parameters_are_inserted_literally(self) -> None:
        rendered = template("Hola {{1}}, soy {{2}} de Acme").render([r"{{2}} \1 $0", "Ana"])

        assert rendered == r"Hola {{2}} \1 $0, soy Ana de Acme"

    def test_zero_is_not_a_placeholder_and_renders_literally(self) -> None:
        assert template("Tu código es {{0}}").render([]) == "Tu código es {{0}}"

    def test_zero_placeholder_does_not_take_the_last_parameter(self) -> None:
        assert template("{{0}} y {{1}}").render(["Luis"]) == "{{0}} y Luis"
