"""The business rule of SPEC 4.1, in its order, free of I/O.

``check_preflight`` runs checks 1–9 against a catalog snapshot; ``select_channel``
runs check 10 against the contact's state. Both raise the Rejection named by the
SPEC's code. The single and batch paths both go through these two functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from schemas import errors
from schemas.api import InitiateOutboundRequest
from worker.model import Catalog, Channel, Contact, ContactState, Conversation, Template
from worker.views import blocking_view


@dataclass(frozen=True, slots=True)
class Eligible:
    """A request that passed checks 1–9: what it may use."""

    template: Template
    contact: Contact
    candidates: tuple[Channel, ...]
    explicit_channel: bool


@dataclass(frozen=True, slots=True)
class OpenFresh:
    channel: Channel


@dataclass(frozen=True, slots=True)
class Reuse:
    channel: Channel
    conversation: Conversation


Decision = OpenFresh | Reuse


def check_preflight(request: InitiateOutboundRequest, catalog: Catalog) -> Eligible:
    template = _approved_template(request, catalog)
    contact = _reachable_contact(request.contact_id, catalog)
    if request.brand_id is not None and request.brand_id not in catalog.brand_ids:
        raise errors.BrandNotFound()
    candidates = _channels_with_agent(_whatsapp_channels(request, catalog), catalog)
    _check_handoff_user(request, catalog)
    return Eligible(template, contact, candidates, request.provider_channel_id is not None)


def _approved_template(request: InitiateOutboundRequest, catalog: Catalog) -> Template:
    template = catalog.templates.get(request.template.template_id)
    if template is None:
        raise errors.TemplateNotFound()
    if template.status != "APPROVED":
        raise errors.TemplateNotApproved(templateStatus=template.status)
    got, expected = len(request.template.parameters), template.placeholder_count
    if got != expected:
        raise errors.TemplateParametersMismatch(expected=expected, got=got)
    return template


def _reachable_contact(contact_id: UUID, catalog: Catalog) -> Contact:
    contact = catalog.contacts.get(contact_id)
    if contact is None:
        raise errors.ContactNotFound()
    if contact.opted_out:
        raise errors.ContactOptedOut()
    return contact


def _whatsapp_channels(request: InitiateOutboundRequest, catalog: Catalog) -> list[Channel]:
    """Check 7: the explicit channel, or every active WhatsApp channel of the brand."""
    if request.provider_channel_id is not None:
        channel = catalog.channels.get(request.provider_channel_id)
        if channel is None:
            raise errors.ProviderChannelNotFound()
        if not _is_usable_whatsapp(channel, request.brand_id):
            raise errors.ChannelNotEligible()
        return [channel]
    usable = [c for c in catalog.channels.values() if _is_usable_whatsapp(c, request.brand_id)]
    if not usable:
        raise errors.NoWhatsAppChannel()
    return usable


def _is_usable_whatsapp(channel: Channel, brand_id: UUID | None) -> bool:
    brand_matches = brand_id is None or channel.brand_id == brand_id
    return channel.active and channel.type == "whatsapp" and brand_matches


def _channels_with_agent(channels: list[Channel], catalog: Catalog) -> tuple[Channel, ...]:
    """Check 8: keep the channels an active prospection agent owns."""
    owned = tuple(c for c in channels if _prospection_agent(c, catalog) is not None)
    if not owned:
        raise errors.NoProspectionAgent()
    return owned


def _prospection_agent(channel: Channel, catalog: Catalog) -> UUID | None:
    agent = catalog.agents.get(channel.agent_id) if channel.agent_id else None
    if agent is None or not agent.active or agent.kind != "prospection":
        return None
    return agent.id


def _check_handoff_user(request: InitiateOutboundRequest, catalog: Catalog) -> None:
    if request.handoff_override is None:
        return
    user = catalog.users.get(request.handoff_override.user_id)
    if user is None:
        raise errors.HandoffUserNotFound()
    if not user.active:
        raise errors.HandoffUserInactive()


def order_candidates(candidates: tuple[Channel, ...], state: ContactState) -> list[Channel]:
    """Sticky (most recent first), then priority, then most remaining quota, then id."""

    last_seqs = state.last_seq_by_channel()

    def key(channel: Channel) -> tuple[int, int, int, int, int]:
        last_seq = last_seqs.get(channel.id)
        sticky = (0, -last_seq) if last_seq is not None else (1, 0)
        # The id's number orders as its canonical text does, without formatting it.
        return (*sticky, channel.priority, -state.remaining_quota(channel), channel.id.int)

    return sorted(candidates, key=key)


def select_channel(eligible: Eligible, state: ContactState, force_send: bool) -> Decision:
    """Check 10: occupancy and daily quota."""
    if eligible.explicit_channel:
        return _on_explicit_channel(eligible.candidates[0], state, force_send)
    return _auto_select(order_candidates(eligible.candidates, state), state, force_send)


def _on_explicit_channel(channel: Channel, state: ContactState, force_send: bool) -> Decision:
    active = state.active_on(channel.id)
    if active is not None:
        if force_send:
            return Reuse(channel, active)
        raise errors.ActiveConversationExists(
            blockingConversationId=str(active.id),
            blockingConversation=blocking_view(active),
        )
    if state.remaining_quota(channel) <= 0:
        raise errors.ChannelDailyLimitReached(channelId=str(channel.id))
    return OpenFresh(channel)


def _auto_select(ordered: list[Channel], state: ContactState, force_send: bool) -> Decision:
    occupied: list[tuple[Channel, Conversation]] = []
    for channel in ordered:
        active = state.active_on(channel.id)
        if active is not None:
            occupied.append((channel, active))
        elif state.remaining_quota(channel) > 0:
            return OpenFresh(channel)
    if occupied and force_send:
        return Reuse(*occupied[0])
    if occupied:
        raise errors.AllProviderChannelsOccupied.among(
            [str(conversation.id) for _, conversation in occupied],
            at_limit=len(ordered) - len(occupied),
        )
    raise errors.ChannelDailyLimitReached()
