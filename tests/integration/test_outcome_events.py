"""An outcome names the outbox events its processing wrote: the worker publishes those."""

from __future__ import annotations

from sqlalchemy import select

from schemas.commands import InitiateOutbound
from tests.world import World, body
from worker import handlers
from worker.store.tables import outbox


def event_ids_of(world: World, command: InitiateOutbound) -> tuple[object, ...]:
    query = select(outbox.c.event_id).where(outbox.c.command_id == command.command_id)
    with world.engine.connect() as conn:
        return tuple(conn.execute(query).scalars())


class TestOutcomeEventIds:
    """The first processing names its one event; a redelivery names none."""

    def test_a_success_names_its_created_event(self, engine, redis):
        world = World(engine, redis)
        world.channel(world.agent())
        command = world.command(**body(world.contact(), world.template()))
        outcome = handlers.initiate_outbound(command, world.deps)
        assert outcome.status == "succeeded"
        assert outcome.event_ids == event_ids_of(world, command)
        assert len(outcome.event_ids) == 1

    def test_a_rejection_names_its_rejected_event(self, engine, redis):
        world = World(engine, redis)
        command = world.command(**body(world.contact(opted_out=True), world.template()))
        outcome = handlers.initiate_outbound(command, world.deps)
        assert outcome.error["code"] == "ContactOptedOut"
        assert outcome.event_ids == event_ids_of(world, command)
        assert len(outcome.event_ids) == 1

    def test_a_redelivery_names_none(self, engine, redis):
        world = World(engine, redis)
        command = world.command(**body(world.contact(opted_out=True), world.template()))
        handlers.initiate_outbound(command, world.deps)
        assert handlers.initiate_outbound(command, world.deps).event_ids == ()
