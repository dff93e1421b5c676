"""Turns one ``InitiateOutbound`` command into a conversation or a clean rejection.

The rule itself (SPEC 4.1 checks 1–10) lives in ``worker.rules``; this module
adds the I/O around it: read the catalog, lock the chosen channel, re-check
under the lock, and write everything in one transaction with an outbox row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from psycopg.errors import UniqueViolation
from sqlalchemy import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError

from schemas.api import InitiateOutboundRequest
from schemas.commands import InitiateOutbound
from schemas.errors import Rejection
from worker import metrics, rules
from worker.events import initiation_event, rejection_event
from worker.locks import ChannelLocks
from worker.model import ContactState
from worker.rules import Decision, Eligible, OpenFresh, Reuse
from worker.store import catalog as catalog_store
from worker.store import commands, fences, outbox
from worker.store import conversations as conversation_store
from worker.store.commands import Outcome
from worker.views import initiation_result

logger = structlog.get_logger(__name__)

# Each attempt loses a race (stale fence, a conversation opened or closed under us);
# a few are plenty, after which the task is retried as an infrastructure failure.
MAX_ATTEMPTS = 8


class SelectionContention(Exception):
    """The channel choice kept changing under us: retry the command later."""


@dataclass(frozen=True, slots=True)
class Deps:
    engine: Engine
    locks: ChannelLocks


def initiate_outbound(command: InitiateOutbound, deps: Deps) -> Outcome:
    with deps.engine.begin() as conn:
        if (done := commands.mark_processing(conn, command.command_id)) is not None:
            logger.info("initiation.duplicate_delivery")
            return done
        catalog = catalog_store.load(conn, command.workspace_id, [command.request])
    try:
        eligible = rules.check_preflight(command.request, catalog)
    except Rejection as rejection:
        return _record_rejection(deps.engine, command, rejection)
    return _occupy(deps, command, eligible)


def _occupy(deps: Deps, command: InitiateOutbound, eligible: Eligible) -> Outcome:
    """Choose a channel, then lock it, re-check and write; start over on a lost race."""
    for _ in range(MAX_ATTEMPTS):
        try:
            target = _decide(deps.engine, command, eligible)
        except Rejection as rejection:
            return _record_rejection(deps.engine, command, rejection)
        try:
            return _write_under_lock(deps, command, eligible, target)
        except LostRace as lost:
            logger.info("initiation.lost_race", reason=str(lost))
    raise SelectionContention(str(command.command_id))


def _decide(engine: Engine, command: InitiateOutbound, eligible: Eligible) -> Decision:
    """A first choice without the lock: it only says which channel to lock."""
    with engine.connect() as conn:
        return _select(conn, command, eligible)


def _write_under_lock(
    deps: Deps, command: InitiateOutbound, eligible: Eligible, target: Decision
) -> Outcome:
    try:
        with deps.locks.hold(target.channel.id) as fence, deps.engine.begin() as conn:
            return _recheck_and_write(conn, command, eligible, target, fence)
    except fences.StaleFence:
        raise LostRace("stale_fence") from None
    except IntegrityError as error:
        if isinstance(error.orig, UniqueViolation):
            raise LostRace("unique_violation") from None
        raise


def _recheck_and_write(
    conn: Connection, command: InitiateOutbound, eligible: Eligible, target: Decision, fence: int
) -> Outcome:
    """Claim the command, re-run check 10, then check the fence right before writing.

    The token is checked after the reads so that it guards them: a holder that stalled
    past its lock's TTL after reading finds a newer token and starts over.
    """
    if (done := commands.claim(conn, command.command_id)) is not None:
        return done
    verdict = _recheck(conn, command, eligible)
    if not isinstance(verdict, Rejection) and verdict.channel.id != target.channel.id:
        # Our lock and fence cover the target's channel only.
        raise LostRace("target_moved")
    fences.check(conn, target.channel.id, fence)
    if isinstance(verdict, Rejection):
        return reject(conn, command, verdict)
    return write(conn, command, eligible, verdict)


class LostRace(Exception):
    """Someone changed the channel's state between our choice and our write."""


def _record_rejection(engine: Engine, command: InitiateOutbound, rejection: Rejection) -> Outcome:
    with engine.begin() as conn:
        if (done := commands.claim(conn, command.command_id)) is not None:
            return done
        return reject(conn, command, rejection)


def _recheck(
    conn: Connection, command: InitiateOutbound, eligible: Eligible
) -> Decision | Rejection:
    try:
        return _select(conn, command, eligible)
    except Rejection as rejection:
        return rejection


def _select(conn: Connection, command: InitiateOutbound, eligible: Eligible) -> Decision:
    state = _state(conn, command, eligible)
    return rules.select_channel(eligible, state, command.request.force_send)


def _state(conn: Connection, command: InitiateOutbound, eligible: Eligible) -> ContactState:
    return conversation_store.contact_state(
        conn,
        command.workspace_id,
        command.request.contact_id,
        [channel.id for channel in eligible.candidates],
    )


def reject(conn: Connection, command: InitiateOutbound, rejection: Rejection) -> Outcome:
    """Invariant 5: a rejection writes only the outcome and its event."""
    event = rejection_event(command, rejection.code)
    outcome = Outcome(
        command.command_id, "failed", error=rejection.as_problem(), event_ids=(event.id,)
    )
    outbox.add(conn, event, command.command_id)
    commands.finish(conn, outcome)
    metrics.COMMANDS.labels(outcome=rejection.code.value).inc()
    logger.info("initiation.rejected", code=rejection.code.value)
    return outcome


def write(
    conn: Connection, command: InitiateOutbound, eligible: Eligible, decision: Decision
) -> Outcome:
    """One transaction: conversation, template message, follow-ups, outbox row, outcome."""
    request = command.request
    previous_control: str | None = None
    if isinstance(decision, OpenFresh):
        conversation = _open_fresh(conn, command, decision)
    else:
        previous_control, conversation = _reuse(conn, command, decision)
    rendered = eligible.template.render(request.template.parameters)
    conversation_store.add_template_message(
        conn, conversation["id"], eligible.template.id, rendered, command.command_id
    )
    contents = [m.model_dump(mode="json", exclude_unset=True) for m in request.follow_ups]
    conversation_store.append_follow_ups(conn, conversation["id"], contents, command.command_id)
    result = initiation_result(
        command.command_id,
        conversation,
        eligible.contact,
        eligible.template,
        rendered,
        follow_ups_count=len(request.follow_ups),
        already_initiated=isinstance(decision, Reuse),
    )
    event = initiation_event(command, eligible, conversation, previous_control)
    outbox.add(conn, event, command.command_id)
    outcome = Outcome(command.command_id, "succeeded", result=result, event_ids=(event.id,))
    commands.finish(conn, outcome)
    metrics.COMMANDS.labels(outcome="reused" if previous_control else "created").inc()
    logger.info(
        "initiation.succeeded",
        conversation_id=str(conversation["id"]),
        already_initiated=previous_control is not None,
    )
    return outcome


def _open_fresh(conn: Connection, command: InitiateOutbound, decision: OpenFresh) -> RowMapping:
    request, channel = command.request, decision.channel
    return conversation_store.insert_conversation(
        conn,
        {
            "workspace_id": command.workspace_id,
            "channel_id": channel.id,
            "contact_id": request.contact_id,
            "agent_id": channel.agent_id,
            "status": "active",
            "control": "ai",
            "assigned_user_id": (
                request.handoff_override.user_id
                if request.handoff_override
                else channel.default_advisor_id
            ),
            "brand_id": request.brand_id or channel.brand_id,
            "campaign_id": request.campaign_id,
            "context": _context(request),
            "opt_in": request.opt_in,
            "command_id": command.command_id,
        },
    )


def _reuse(conn: Connection, command: InitiateOutbound, decision: Reuse) -> tuple[str, RowMapping]:
    """Control back to the prospection agent; present, non-null fields replace stored ones.

    Returns the control the conversation had, read under its row lock, and the new row.
    """
    previous_control = conversation_store.lock_active(conn, decision.conversation.id)
    if previous_control is None:
        raise LostRace("conversation_closed")
    request = command.request
    replacements = {
        "assigned_user_id": request.handoff_override.user_id if request.handoff_override else None,
        "campaign_id": request.campaign_id,
        "context": _context(request),
        "opt_in": request.opt_in,
    }
    return previous_control, conversation_store.update_conversation(
        conn,
        decision.conversation.id,
        {
            "control": "ai",
            "agent_id": decision.channel.agent_id,
            **{name: value for name, value in replacements.items() if value is not None},
        },
    )


def _context(request: InitiateOutboundRequest) -> dict[str, Any] | None:
    return request.context.model_dump(mode="json", exclude_unset=True) if request.context else None
