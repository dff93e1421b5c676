"""SPEC 6: every event on the stream is valid against the JSON Schema exported for its type."""

from __future__ import annotations

import json
from collections import Counter

from jsonschema import Draft202012Validator, FormatChecker

from schemas.events import EVENT_CLASSES
from schemas.export import JSON_DIR
from tests.e2e.test_events import all_relayed, stream_events
from tests.world import body

VALIDATORS = {
    model.model_fields["type"].default: Draft202012Validator(
        json.loads((JSON_DIR / f"{model.__name__}.schema.json").read_text()),
        format_checker=FormatChecker(),
    )
    for model in EVENT_CLASSES
}


class TestStreamEventsMatchTheirSchemas:
    """A subscriber validating with the exported schemas accepts everything the service sends."""

    def test_every_kind_of_event_is_valid(self, api, world, catalog, events, engine):
        """Created (with and without components), reused, rejected, handed off and closed."""
        first = api.created(body(catalog.contact, catalog.template))["conversation"]["id"]
        api.handoff(first, {"userId": str(world.user())})
        api.created(body(catalog.contact, catalog.template, forceSend=True))
        api.close(first)
        bare = world.template(body="Hola, soy Scout de Acme")
        api.created(body(catalog.contact, bare, parameters=[]))
        api.initiate(body(world.contact(opted_out=True), catalog.template))
        all_relayed(engine)

        sent = stream_events(events)

        assert Counter(e["type"] for e in sent) == {
            "leadscout.conversation.created": 2,
            "leadscout.conversation.handed_off": 1,
            "leadscout.conversation.reused": 1,
            "leadscout.conversation.closed": 1,
            "leadscout.initiation.rejected": 1,
        }
        assert {
            e["id"]: [err.message for err in VALIDATORS[e["type"]].iter_errors(e)] for e in sent
        } == {e["id"]: [] for e in sent}
