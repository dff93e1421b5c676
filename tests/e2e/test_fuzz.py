"""OpenAPI-driven fuzzing (schemathesis) of the real API process over HTTP.

The fuzzer reads /openapi.json from the running API and runs what ``schemathesis run``
runs (examples, coverage, fuzzing, stateful phases), signing every request with a real
workspace's key and pinning ``{workspaceId}`` to it. Body ids are drawn from that
workspace's catalog part of the time, so some initiations succeed and the document's
links lead the stateful phase to real commands and conversations.

schemathesis' own pytest integration (``schemathesis.pytest.from_fixture``) sets
``Node._nodeid``, which pytest 9.2 no longer has; its engine is what its CLI runs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from schemathesis import Config
from schemathesis.config import OutputConfig
from schemathesis.engine import events, from_schema
from schemathesis.engine.recorder import ScenarioRecorder
from schemathesis.engine.statistic import Statistic

from tests.e2e.conftest import Stack
from tests.e2e.support import minimal_catalog
from tests.world import World

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
    "unsupported_method",
)
# What the links of a succeeded initiation lead to, with its real ids.
LINKED = {"getCommand", "getConversation", "handOffConversation", "closeConversation"}
# Valid-shaped bodies name ids the workspace mostly lacks, and SPEC 4.1's business checks
# answer 422 to some that it has (e.g. a parameter count that does not match).
UNCHECKED = ("positive_data_acceptance",)
# SPEC 4.3 accepts a batch whose items break the documented item schema: each such item is
# listed under `invalid` in the 202, and the call refuses only a malformed envelope (422).
BATCH_UNCHECKED = ("negative_data_rejection",)


@dataclass(frozen=True)
class Ids:
    """The workspace's catalog ids that the fuzzer may put into bodies."""

    contacts: list[str]
    templates: list[str]
    channels: list[str]
    users: list[str]


@dataclass
class FuzzReport:
    """What a run generated, sent and found."""

    statistic: Statistic = field(default_factory=Statistic)
    by_phase: Counter[str] = field(default_factory=Counter)
    # (phase, operationId, status) of every answer
    answers: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cases(self) -> int:
        return self.statistic.total_cases

    def record(self, phase: str, recorder: ScenarioRecorder) -> None:
        self.statistic.on_scenario_finished(recorder)
        self.by_phase[phase] += len(recorder.cases)
        for case_id, node in recorder.cases.items():
            interaction = recorder.interactions.get(case_id)
            if interaction is not None and interaction.response is not None:
                operation_id = str(node.value.operation.definition.raw.get("operationId"))
                self.answers[phase, operation_id, interaction.response.status_code] += 1

    def reached(self, phase: str, status: int) -> set[str]:
        """The operations that answered ``status`` in ``phase``."""
        return {op for at, op, code in self.answers if (at, code) == (phase, status)}

    def failures(self) -> list[str]:
        config = OutputConfig()
        return [
            f"{label}\n{group.format(index=None, curl=group.code_sample, config=config)}"
            for label, groups in self.statistic.failures.items()
            for group in groups.values()
        ]

    def summary(self) -> str:
        phases = ", ".join(f"{phase} {n}" for phase, n in sorted(self.by_phase.items()) if n)
        linked = ", ".join(sorted(self.reached("stateful", 200) & LINKED)) or "none"
        return (
            f"fuzz: {self.cases} generated cases ({phases}), {len(self.failures())} failures, "
            f"{len(self.errors)} errors in {self.seconds:.1f} s; 200 through links: {linked}"
        )


PLAIN = ("Hola", "Hola de nuevo")
# The same cases every run, so a failure is reproducible; another seed explores others.
SEED = 20240601


@pytest.fixture
def ids(world: World) -> Ids:
    """Ten leads, a two-parameter template and two plain ones (generated parameter lists
    are mostly empty), one channel, two active users and an inactive one: enough for fresh
    conversations, reuses, occupancy and handoffs."""
    catalog = minimal_catalog(world)
    contacts = [catalog.contact, *(world.contact(phone=f"+52155000000{n:02}") for n in range(9))]
    return Ids(
        contacts=[str(contact) for contact in contacts],
        templates=[str(catalog.template), *(str(world.template(body=b)) for b in PLAIN)],
        channels=[str(catalog.channel)],
        users=[str(world.user()), str(world.user()), str(world.user(active=False))],
    )


@dataclass(frozen=True)
class Budget:
    """How much to generate: cases per operation and phase, linked chains and their length."""

    examples: int
    initiations: int
    chains: int
    steps: int
    coverage: bool
    workers: int = 1


QUICK = Budget(examples=3, initiations=3, chains=3, steps=4, coverage=False)
# One worker over every phase: imports what the engine imports lazily, before two worker
# threads could import at once (pytest rewrites schemathesis' modules, and CPython 3.11's
# compiler is not thread-safe: "AST constructor recursion depth mismatch").
WARM_UP = Budget(examples=1, initiations=1, chains=1, steps=2, coverage=True)
THOROUGH = Budget(examples=2200, initiations=500, chains=100, steps=10, coverage=True, workers=2)


def fuzz_config(stack: Stack, world: World, ids: Ids, budget: Budget) -> Config:
    def drawn_from(dictionary: str) -> dict[str, object]:
        return {"dictionary": dictionary, "probability": 0.9}

    return Config.from_dict(
        {
            "base-url": stack.base_url,
            "seed": SEED,
            "workers": budget.workers,
            "auth": {"openapi": {"ApiKey": {"api_key": world.api_key}}},
            "parameters": {
                "path.workspaceId": str(world.workspace_id),
                "body.contactId": drawn_from("contacts"),
                "body.template.templateId": drawn_from("templates"),
                "body.providerChannelId": drawn_from("channels"),
                "body.handoffOverride.userId": drawn_from("users"),
                "body.userId": drawn_from("users"),
                "body.items[*].contactId": drawn_from("contacts"),
                "body.defaults.template.templateId": drawn_from("templates"),
                "body.items[*].template.templateId": drawn_from("templates"),
                "body.defaults.providerChannelId": drawn_from("channels"),
                "body.items[*].providerChannelId": drawn_from("channels"),
                "body.defaults.handoffOverride.userId": drawn_from("users"),
                "body.items[*].handoffOverride.userId": drawn_from("users"),
            },
            "dictionaries": {
                "contacts": {"values": ids.contacts},
                "templates": {"values": ids.templates},
                "channels": {"values": ids.channels},
                "users": {"values": ids.users},
            },
            "generation": {"max-examples": budget.examples, "database": "none", "mode": "all"},
            "checks": {
                **{name: {"enabled": True} for name in CHECKS},
                **{name: {"enabled": False} for name in UNCHECKED},
            },
            "phases": {
                "coverage": {"enabled": budget.coverage},
                # Chains of valid calls; the other phases send the invalid ones.
                "stateful": {
                    "max-steps": budget.steps,
                    "generation": {"max-examples": budget.chains, "mode": "positive"},
                },
            },
            # An initiation waits for the worker (sync mode), a batch loads it: fewer of them
            # keep the run short.
            "operations": [
                {
                    "include-operation-id": "initiateOutbound",
                    "generation": {"max-examples": budget.initiations},
                },
                {
                    "include-operation-id": "initiateOutboundBatch",
                    "generation": {"max-examples": budget.initiations},
                    "checks": {name: {"enabled": False} for name in BATCH_UNCHECKED},
                },
            ],
            "request-timeout": 30,
        }
    )


def run_fuzzer(config: Config, stack: Stack) -> FuzzReport:
    schema = schemathesis.openapi.from_url(stack.base_url + "/openapi.json", config=config)
    report = FuzzReport()
    started = time.perf_counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
            report.record(event.phase.value, event.recorder)
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            report.errors.append(repr(event.exception))
    report.seconds = time.perf_counter() - started
    print(report.summary())
    return report


class TestFuzz:
    """Generated requests get only documented statuses, media types, headers and bodies."""

    def test_a_quick_run_finds_nothing(self, stack, world, ids):
        """A few cases per operation and a few linked chains: no failure, no error."""
        report = run_fuzzer(fuzz_config(stack, world, ids, QUICK), stack)

        assert report.failures() == [], "\n".join(map(str, report.failures()))
        assert report.errors == [], "\n".join(report.errors)
        assert report.by_phase["fuzzing"] > 0 and report.by_phase["stateful"] > 0

    @pytest.mark.slow
    def test_ten_thousand_cases_find_nothing(self, stack, world, ids):
        """At least 10,000 generated cases over every phase: no failure, no error."""
        run_fuzzer(fuzz_config(stack, world, ids, WARM_UP), stack)
        report = run_fuzzer(fuzz_config(stack, world, ids, THOROUGH), stack)

        assert report.failures() == [], "\n".join(map(str, report.failures()))
        assert report.errors == [], "\n".join(report.errors)
        assert report.cases >= 10_000, sorted(report.answers.items())
        assert report.reached("stateful", 200) & LINKED, report.answers
