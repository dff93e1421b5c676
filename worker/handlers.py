"""Turns ``InitiateOutbound`` commands into conversations or clean rejections.

One rule, two sizes: a campaign chunk of up to 2,000 commands and a single initiation
(a chunk of one) take the same path. The rule itself (SPEC 4.1 checks 1–10) lives in
``worker.rules``; this module adds the I/O around it, set-based:

1. read the chunk (a single initiation marks it processing) and the catalog slice it
   needs;
2. checks 1–9 per command, in Python; failures are recorded together;
3. check 10 per command, in Python, against the contacts' conversations and the
   channels' quota read once for the round (a round ends where a contact comes again),
   and the rows its choices would write: a draft, without the locks;
4. lock every chosen channel once (in id order), claim the commands, re-run check 10 under
   the locks, check the fences, and write the whole round in one transaction with its
   outbox rows (each choice that held as the draft prepared it).

Step 3 does the work that needs no lock while another worker's round may hold them, so
that under the locks a round spends little more than its reads and writes. A single
command with one candidate channel has nothing to choose: its draft is only the time.

A command whose choice moved to a channel we do not hold, or whose round lost a race
(a stale fence, a conversation opened or closed under us), goes round again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any
from uuid import UUID, uuid4

import structlog
from psycopg.errors import UniqueViolation
from sqlalchemy import Connection, Engine
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
from worker.store.db import autocommit
from worker.views import initiation_result

logger = structlog.get_logger(__name__)

# Rounds a command may lose (stale fence, a conversation opened or closed under us, a
# choice that moved); after that the task is retried as an infrastructure failure.
MAX_ATTEMPTS = 8

# A single command still queued after this long means the workers are behind: the next
# single task takes up to BACKLOG_LIMIT such commands of its workspace into its chunk.
BACKLOG_AFTER = timedelta(milliseconds=5)
BACKLOG_LIMIT = 32


class SelectionContention(Exception):
    """The channel choice kept changing under us: retry the command later."""


class LostRace(Exception):
    """Someone changed a channel's state between our choice and our write."""


@dataclass(frozen=True, slots=True)
class Deps:
    engine: Engine
    locks: ChannelLocks


@dataclass(slots=True)
class Pending:
    """A command that passed checks 1–9 and waits for check 10 and its write."""

    position: int
    command: InitiateOutbound
    eligible: Eligible
    lost_races: int = 0

    @property
    def request(self) -> InitiateOutboundRequest:
        return self.command.request


Verdict = Decision | Rejection


def initiate_outbound(command: InitiateOutbound, deps: Deps) -> Outcome:
    return initiate_chunk([command], deps)[0]


def initiate_single(command: InitiateOutbound, deps: Deps) -> list[Outcome]:
    """A single initiation, with the workspace's single commands that have waited in the
    queue longer than ``BACKLOG_AFTER`` (up to ``BACKLOG_LIMIT``): a worker that fell behind
    works its backlog off in chunks. The command's own outcome comes first."""
    outcomes = _initiate([command], deps, backlog=BACKLOG_LIMIT)
    own = outcomes.pop(command.command_id)
    return [own, *outcomes.values()]


def initiate_chunk(chunk: Sequence[InitiateOutbound], deps: Deps) -> list[Outcome]:
    """SPEC 4.1 for every command; the outcomes come back in the chunk's order."""
    outcomes = _initiate_per_workspace(chunk, deps)
    return [outcomes[command.command_id] for command in chunk]


def initiate_recorded(command_ids: Sequence[UUID], deps: Deps) -> list[Outcome]:
    """A campaign chunk by its ids: ``initiate_chunk`` for the recorded commands, which stay
    accepted until their outcome (``commands.read_chunk``; unknown ids are skipped)."""
    with autocommit(deps.engine) as conn:
        chunk, outcomes = commands.read_chunk(conn, command_ids)
    if missing := len(command_ids) - len(chunk) - len(outcomes):
        logger.error("initiation.unknown_commands", missing=missing)
    if outcomes:
        logger.info("initiation.duplicate_delivery", commands=len(outcomes))
    outcomes.update(_initiate_per_workspace(chunk, deps, read=True))
    return list(outcomes.values())


def _initiate_per_workspace(
    chunk: Sequence[InitiateOutbound], deps: Deps, read: bool = False
) -> dict[UUID, Outcome]:
    """``_initiate`` for each workspace's commands of the chunk."""
    outcomes: dict[UUID, Outcome] = {}
    ordered = sorted(chunk, key=lambda command: command.workspace_id.int)
    for _, group in groupby(ordered, key=lambda command: command.workspace_id):
        outcomes.update(_initiate(list(group), deps, read=read))
    return outcomes


def _initiate(
    chunk: list[InitiateOutbound], deps: Deps, backlog: int = 0, read: bool = False
) -> dict[UUID, Outcome]:
    """``read``: a campaign chunk, read from its rows with the outcomes already recorded."""
    workspace_id = chunk[0].workspace_id
    # Each statement stands alone: the claim under the channel locks settles any race.
    with autocommit(deps.engine) as conn:
        outcomes = {} if read else commands.mark_processing(conn, [c.command_id for c in chunk])
        if outcomes:
            logger.info("initiation.duplicate_delivery", commands=len(outcomes))
        todo = [command for command in chunk if command.command_id not in outcomes]
        if backlog:
            taken = commands.take_backlog(conn, workspace_id, BACKLOG_AFTER, backlog)
            if taken:
                metrics.BACKLOG_TAKEN.inc(len(taken))
                logger.info("initiation.backlog_taken", commands=len(taken))
            todo += taken
        if not todo:
            return outcomes
        catalog = catalog_store.load(conn, workspace_id, [c.request for c in todo])
    pending: list[Pending] = []
    rejected: list[tuple[InitiateOutbound, Rejection]] = []
    for position, command in enumerate(todo):
        try:
            eligible = rules.check_preflight(command.request, catalog)
        except Rejection as rejection:
            rejected.append((command, rejection))
        else:
            pending.append(Pending(position, command, eligible))
    outcomes.update(_record_rejections(deps.engine, rejected))
    outcomes.update(_occupy(deps, pending))
    return outcomes


def _occupy(deps: Deps, pending: list[Pending]) -> dict[UUID, Outcome]:
    """Check 10 and the write, round after round, until every command has its outcome."""
    outcomes: dict[UUID, Outcome] = {}
    while pending:
        this_round, later = _one_per_contact(pending)
        written, again = _decide_and_write(deps, this_round)
        outcomes.update(written)
        for lost in again:
            lost.lost_races += 1
            if lost.lost_races >= MAX_ATTEMPTS:
                raise SelectionContention(str(lost.command.command_id))
        pending = sorted(again + later, key=lambda p: p.position)
    return outcomes


def _one_per_contact(pending: list[Pending]) -> tuple[list[Pending], list[Pending]]:
    """The round: the commands up to the first contact met again, which must see the write
    of the command before it, and which starts the next round. Quota is used in the
    chunk's order, as if the commands came one by one."""
    seen: set[UUID] = set()
    for cut, item in enumerate(pending):
        if item.request.contact_id in seen:
            return pending[:cut], pending[cut:]
        seen.add(item.request.contact_id)
    return pending, []


def _decide_and_write(
    deps: Deps, round_: list[Pending]
) -> tuple[dict[UUID, Outcome], list[Pending]]:
    """Check 10 and the write of one round; returns the outcomes and who goes round again.

    What does not need the channel locks comes before them (``Draft``): a first check 10,
    which tells what to lock, and the rows its choices would write. Under the locks a
    round spends little more than its reads and writes.
    """
    with deps.engine.connect() as conn:
        draft = Draft.of(conn, round_)
    if not draft.channels:  # every choice is a rejection: none needs a lock
        rejected = [(item.command, v) for item, v in draft.verdicts if isinstance(v, Rejection)]
        return _record_rejections(deps.engine, rejected), []
    try:
        with deps.locks.hold(draft.channels) as tokens, deps.engine.begin() as conn:
            return _recheck_and_write(conn, round_, tokens, draft)
    except fences.StaleFence:
        logger.info("initiation.lost_race", reason="stale_fence", commands=len(round_))
    except LostRace as lost:
        logger.info("initiation.lost_race", reason=str(lost), commands=len(round_))
    except IntegrityError as error:
        if not isinstance(error.orig, UniqueViolation):
            raise
        logger.info("initiation.lost_race", reason="unique_violation", commands=len(round_))
    return {}, round_


@dataclass(slots=True)
class Draft:
    """Check 10 without the locks, and what each fresh conversation it chose would write
    (stamped with the database's time of the draft)."""

    now: datetime
    channels: set[UUID]  # to lock
    verdicts: list[tuple[Pending, Verdict | None]]
    fresh: dict[UUID, tuple[OpenFresh, Built]]

    @classmethod
    def of(cls, conn: Connection, round_: list[Pending]) -> Draft:
        now = conversation_store.database_time(conn)
        candidates = {channel.id for item in round_ for channel in item.eligible.candidates}
        if len(round_) == 1 and len(candidates) == 1:  # one command, one channel: no choice
            return cls(now, candidates, [], {})
        verdicts = _select(conn, round_)
        fresh = {
            item.command.command_id: (verdict, _built_fresh(item, verdict, now))
            for item, verdict in verdicts
            if isinstance(verdict, OpenFresh)
        }
        if len(round_) >= len(candidates):
            # A round that big locks every candidate: the choices made without the locks
            # may all fall on one channel, those made under them spread as others wrote.
            return cls(now, candidates, verdicts, fresh)
        chosen = {v.channel.id for _, v in verdicts if isinstance(v, OpenFresh | Reuse)}
        return cls(now, chosen, verdicts, fresh)

    def fresh_built(self, item: Pending, decision: OpenFresh) -> Built:
        """The prepared rows if the choice held under the locks, else rows built now."""
        drafted = self.fresh.get(item.command.command_id)
        if drafted is not None and drafted[0] == decision:
            return drafted[1]
        return _built_fresh(item, decision, self.now)


def _select(
    conn: Connection, round_: list[Pending], held: frozenset[UUID] | None = None
) -> list[tuple[Pending, Verdict | None]]:
    """Check 10 for each command, in order, against one reading of the contacts and channels.

    Each fresh conversation decided here uses up quota for the commands after it. With
    ``held``, a command whose choice falls outside those channels gets ``None`` (it moved)
    and uses up nothing.
    """
    contacts = conversation_store.contact_conversations(
        conn, [p.request.contact_id for p in round_]
    )
    candidates = {channel.id for p in round_ for channel in p.eligible.candidates}
    opened = conversation_store.opened_last_24h(conn, candidates)
    verdicts: list[tuple[Pending, Verdict | None]] = []
    for item in round_:
        state = ContactState(contacts.get(item.request.contact_id, ()), opened)
        verdict: Verdict | None
        try:
            verdict = rules.select_channel(item.eligible, state, item.request.force_send)
        except Rejection as rejection:
            verdict = rejection
        if isinstance(verdict, OpenFresh | Reuse) and held is not None:
            verdict = verdict if verdict.channel.id in held else None
        if isinstance(verdict, OpenFresh):
            opened[verdict.channel.id] = opened.get(verdict.channel.id, 0) + 1
        verdicts.append((item, verdict))
    return verdicts


def _recheck_and_write(
    conn: Connection, round_: list[Pending], tokens: dict[UUID, int], draft: Draft
) -> tuple[dict[UUID, Outcome], list[Pending]]:
    """Claim the commands, re-run check 10, then check the fences right before writing.

    The tokens are checked after the reads so that they guard them: a holder that stalled
    past its locks' TTL after reading finds a newer token and goes round again.
    """
    outcomes = commands.claim(conn, [item.command.command_id for item in round_])
    live = [item for item in round_ if item.command.command_id not in outcomes]
    if not live:
        return outcomes, []
    verdicts = _select(conn, live, held=frozenset(tokens))
    moved = [item for item, verdict in verdicts if verdict is None]
    if moved:
        logger.info("initiation.lost_race", reason="target_moved", commands=len(moved))
    fences.check(conn, tokens)
    settled = [(item, verdict) for item, verdict in verdicts if verdict is not None]
    outcomes.update(write(conn, settled, draft))
    return outcomes, moved


def _record_rejections(
    engine: Engine, rejected: list[tuple[InitiateOutbound, Rejection]]
) -> dict[UUID, Outcome]:
    if not rejected:
        return {}
    with engine.begin() as conn:
        done = commands.claim(conn, [command.command_id for command, _ in rejected])
        fresh = [(command, r) for command, r in rejected if command.command_id not in done]
        return done | reject(conn, fresh)


def reject(
    conn: Connection, rejected: list[tuple[InitiateOutbound, Rejection]]
) -> dict[UUID, Outcome]:
    """Invariant 5: a rejection writes only the outcome and its event."""
    outcomes = _record(
        conn,
        {
            command.command_id: Outcome(
                command.command_id,
                "failed",
                error=rejection.as_problem(),
                events=(rejection_event(command, rejection.code),),
            )
            for command, rejection in rejected
        },
    )
    if rejected:
        _count(rejection.code.value for _, rejection in rejected)
        logger.info("initiation.rejected", commands=len(rejected))
    return outcomes


def _record(conn: Connection, outcomes: dict[UUID, Outcome]) -> dict[UUID, Outcome]:
    """The outcomes' events into the outbox and the outcomes onto their commands; returns
    the outcomes with the outbox write that holds their events."""
    write_id = outbox.add_many(
        conn, [(event, o.command_id) for o in outcomes.values() for event in o.events]
    )
    commands.finish(conn, outcomes.values())
    return {command_id: replace(o, write_id=write_id) for command_id, o in outcomes.items()}


def _count(outcomes: Iterable[str]) -> None:
    """``leadscout_commands_total`` by outcome: one increment per label, not per command."""
    for outcome, n in Counter(outcomes).items():
        metrics.COMMANDS.labels(outcome=outcome).inc(n)


def write(
    conn: Connection, settled: Sequence[tuple[Pending, Verdict]], draft: Draft
) -> dict[UUID, Outcome]:
    """One transaction: conversations, template messages, follow-ups, quota, outbox, outcomes."""
    rejected = [(item.command, v) for item, v in settled if isinstance(v, Rejection)]
    outcomes = reject(conn, rejected)
    fresh = {
        item.command.command_id: draft.fresh_built(item, v)
        for item, v in settled
        if isinstance(v, OpenFresh)
    }
    conversation_store.insert_conversations(conn, [b.conversation for b in fresh.values()])
    conversation_store.count_openings(
        conn, Counter(b.conversation["channel_id"] for b in fresh.values()), draft.now
    )
    built = [
        fresh[item.command.command_id] if isinstance(v, OpenFresh) else _built_reuse(conn, item, v)
        for item, v in settled
        if isinstance(v, OpenFresh | Reuse)
    ]
    conversation_store.add_template_messages(conn, [b.message for b in built])
    conversation_store.add_follow_ups(conn, [row for b in built for row in b.follow_ups])
    initiated = _record(conn, {b.outcome.command_id: b.outcome for b in built})
    if built:
        _count("reused" if b.reused else "created" for b in built)
        logger.info("initiation.succeeded", commands=len(built))
    return outcomes | initiated


@dataclass(frozen=True, slots=True)
class Built:
    """What one initiation writes: its conversation (fresh or updated), its template
    message and follow-ups, and its outcome with its event."""

    conversation: Mapping[str, Any]
    message: dict[str, Any]
    follow_ups: list[dict[str, Any]]
    outcome: Outcome
    reused: bool


def _built_fresh(item: Pending, decision: OpenFresh, now: datetime) -> Built:
    command, request, channel = item.command, item.request, decision.channel
    conversation = {
        "id": uuid4(),
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
        "created_at": now,
        "updated_at": now,
    }
    return _built(item, conversation, None, 0)


def _built_reuse(conn: Connection, item: Pending, decision: Reuse) -> Built:
    return _built(item, *_reuse(conn, item.command, decision))


def _built(
    item: Pending,
    conversation: Mapping[str, Any],
    previous_control: str | None,
    last_position: int,
) -> Built:
    command, eligible, request = item.command, item.eligible, item.request
    rendered = eligible.template.render(request.template.parameters)
    message = {
        "conversation_id": conversation["id"],
        "template_id": eligible.template.id,
        "body": rendered,
        "command_id": command.command_id,
    }
    follow_ups = [
        {
            "conversation_id": conversation["id"],
            "position": last_position + offset,
            "content": follow_up.model_dump(mode="json", exclude_unset=True),
            "command_id": command.command_id,
        }
        for offset, follow_up in enumerate(request.follow_ups, start=1)
    ]
    result = initiation_result(
        command.command_id,
        conversation,
        eligible.contact,
        eligible.template,
        rendered,
        follow_ups_count=len(request.follow_ups),
        already_initiated=previous_control is not None,
    )
    event = initiation_event(command, eligible, conversation, previous_control)
    outcome = Outcome(command.command_id, "succeeded", result=result, events=(event,))
    return Built(conversation, message, follow_ups, outcome, previous_control is not None)


def _reuse(
    conn: Connection, command: InitiateOutbound, decision: Reuse
) -> tuple[Mapping[Any, Any], str, int]:
    """Control back to the prospection agent; present, non-null fields replace stored ones.

    Returns the new row, the control it had (read under its row lock) and where its
    follow-ups end.
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
    row = conversation_store.update_conversation(
        conn,
        decision.conversation.id,
        {
            "control": "ai",
            "agent_id": decision.channel.agent_id,
            **{name: value for name, value in replacements.items() if value is not None},
        },
    )
    last_position = conversation_store.last_follow_up_position(conn, decision.conversation.id)
    return row, previous_control, last_position


def _context(request: InitiateOutboundRequest) -> dict[str, Any] | None:
    return request.context.model_dump(mode="json", exclude_unset=True) if request.context else None
