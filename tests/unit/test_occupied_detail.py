"""AllProviderChannelsOccupied says why no candidate was free: occupancy alone, or quota too."""

from __future__ import annotations

import pytest

from schemas import errors
from tests.unit.test_rules import channel, conversation, eligible, state
from worker.rules import select_channel


def refusal(*args: object) -> dict[str, object]:
    """The problem body of the AllProviderChannelsOccupied that ``select_channel`` raises."""
    with pytest.raises(errors.AllProviderChannelsOccupied) as raised:
        select_channel(*args)
    return raised.value.as_problem()


class TestAllProviderChannelsOccupiedDetail:
    """The detail counts the occupied candidates and those passed over for their daily limit."""

    def test_every_candidate_occupied(self) -> None:
        a, b = channel(1), channel(2, priority=1)
        first, second = conversation(1, a, seq=2), conversation(2, b, seq=1)

        problem = refusal(eligible(a, b), state(first, second), False)

        assert (problem["detail"], problem["blockingConversationIds"]) == (
            "Every candidate channel has an active conversation with this contact.",
            [str(first.id), str(second.id)],
        )

    def test_one_occupied_and_one_at_its_limit(self) -> None:
        a, b = channel(1, daily_limit=1), channel(2, priority=1)
        active = conversation(1, b, seq=1)

        problem = refusal(eligible(a, b), state(active, opened={a: 1}), False)

        assert (problem["detail"], problem["blockingConversationIds"]) == (
            "No candidate channel is free: 1 has an active conversation with this contact "
            "and 1 reached its daily limit.",
            [str(active.id)],
        )

    def test_several_occupied_and_several_at_their_limit(self) -> None:
        full = [channel(n, daily_limit=0, priority=n) for n in (1, 2, 3)]
        busy = [channel(n, priority=n) for n in (4, 5)]
        active = [conversation(n, ch, seq=n) for n, ch in enumerate(busy, start=1)]

        problem = refusal(eligible(*full, *busy), state(*active), False)

        assert problem["detail"] == (
            "No candidate channel is free: 2 have an active conversation with this contact "
            "and 3 reached their daily limit."
        )
