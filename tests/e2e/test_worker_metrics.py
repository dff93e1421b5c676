"""SPEC 4.6: the worker serves its metrics, summed over its pool processes, on its own port."""

from __future__ import annotations

from tests.e2e.scrape import increase, samples, scrape
from tests.e2e.support import Api, Catalog, assert_problem
from tests.world import World, body


def outcome(code: str) -> frozenset[tuple[str, str]]:
    return frozenset({("outcome", code)})


class TestWorkerMetrics:
    """Every command the worker finishes is counted once, under its outcome, on its port."""

    def test_a_created_and_a_rejected_command_are_counted(
        self, stack, api: Api, world: World, catalog: Catalog
    ):
        """One 200 and one 422 through the API move exactly created and ContactOptedOut by 1."""
        before = samples(scrape(stack.worker_metrics_url), "leadscout_commands_total")
        api.created(body(catalog.contact, catalog.template))
        refused = api.initiate(body(world.contact(opted_out=True), catalog.template))
        assert_problem(refused, 422, "ContactOptedOut")

        after = samples(scrape(stack.worker_metrics_url), "leadscout_commands_total")

        assert increase(before, after) == {outcome("created"): 1.0, outcome("ContactOptedOut"): 1.0}
