"""The error codes of SPEC 4, as one enumerated set and as exception classes.

A business rejection is raised as the exception named by its code; the API and
the command outcome both render it with :meth:`Problem.as_problem`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    VALIDATION_ERROR = "ValidationError"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    TEMPLATE_NOT_FOUND = "TemplateNotFound"
    CONTACT_NOT_FOUND = "ContactNotFound"
    BRAND_NOT_FOUND = "BrandNotFound"
    PROVIDER_CHANNEL_NOT_FOUND = "ProviderChannelNotFound"
    HANDOFF_USER_NOT_FOUND = "HandoffUserNotFound"
    TEMPLATE_NOT_APPROVED = "TemplateNotApproved"
    TEMPLATE_PARAMETERS_MISMATCH = "TemplateParametersMismatch"
    CONTACT_OPTED_OUT = "ContactOptedOut"
    CHANNEL_NOT_ELIGIBLE = "ChannelNotEligible"
    NO_WHATSAPP_CHANNEL = "NoWhatsAppChannel"
    NO_PROSPECTION_AGENT = "NoProspectionAgent"
    HANDOFF_USER_INACTIVE = "HandoffUserInactive"
    ACTIVE_CONVERSATION_EXISTS = "ActiveConversationExists"
    ALL_PROVIDER_CHANNELS_OCCUPIED = "AllProviderChannelsOccupied"
    CHANNEL_DAILY_LIMIT_REACHED = "ChannelDailyLimitReached"
    IDEMPOTENCY_KEY_REUSED = "IdempotencyKeyReused"
    COMMAND_NOT_FOUND = "CommandNotFound"
    CONVERSATION_NOT_FOUND = "ConversationNotFound"
    BATCH_NOT_FOUND = "BatchNotFound"
    CONVERSATION_CLOSED = "ConversationClosed"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    NOT_FOUND = "NotFound"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"

    @property
    def status(self) -> int:
        return _STATUS[self]

    @property
    def human_title(self) -> str:
        return _TITLES.get(self, _split_camel(self.value))


_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.TEMPLATE_NOT_FOUND: 404,
    ErrorCode.CONTACT_NOT_FOUND: 404,
    ErrorCode.BRAND_NOT_FOUND: 404,
    ErrorCode.PROVIDER_CHANNEL_NOT_FOUND: 404,
    ErrorCode.HANDOFF_USER_NOT_FOUND: 404,
    ErrorCode.TEMPLATE_NOT_APPROVED: 422,
    ErrorCode.TEMPLATE_PARAMETERS_MISMATCH: 422,
    ErrorCode.CONTACT_OPTED_OUT: 422,
    ErrorCode.CHANNEL_NOT_ELIGIBLE: 422,
    ErrorCode.NO_WHATSAPP_CHANNEL: 422,
    ErrorCode.NO_PROSPECTION_AGENT: 422,
    ErrorCode.HANDOFF_USER_INACTIVE: 422,
    ErrorCode.ACTIVE_CONVERSATION_EXISTS: 409,
    ErrorCode.ALL_PROVIDER_CHANNELS_OCCUPIED: 409,
    ErrorCode.CHANNEL_DAILY_LIMIT_REACHED: 429,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
    ErrorCode.COMMAND_NOT_FOUND: 404,
    ErrorCode.CONVERSATION_NOT_FOUND: 404,
    ErrorCode.BATCH_NOT_FOUND: 404,
    ErrorCode.CONVERSATION_CLOSED: 409,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
}

_TITLES: dict[ErrorCode, str] = {
    ErrorCode.NO_WHATSAPP_CHANNEL: "No WhatsApp channel",
}


def _split_camel(name: str) -> str:
    words: list[str] = []
    for char in name:
        if char.isupper() and words:
            words.append(" ")
        words.append(char.lower() if words else char)
    return "".join(words)


PROBLEM_TYPE_BASE = "https://leadscout.dev/problems/"


def problem_body(code: ErrorCode, detail: str, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem object; extra members go at the top level."""
    return {
        "type": PROBLEM_TYPE_BASE + code.value,
        "title": code.human_title,
        "status": code.status,
        "detail": detail,
        "code": code.value,
        **extra,
    }


class Problem(Exception):
    """A failure the client is told about with a problem+json body."""

    code: ClassVar[ErrorCode]
    default_detail: ClassVar[str] = ""

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.default_detail or self.code.human_title
        self.extra = extra
        super().__init__(self.detail)

    @property
    def status(self) -> int:
        return self.code.status

    def as_problem(self) -> dict[str, Any]:
        return problem_body(self.code, self.detail, **self.extra)


class Rejection(Problem):
    """A business outcome of SPEC 4.1: the command fails with this code."""


class TemplateNotFound(Rejection):
    code = ErrorCode.TEMPLATE_NOT_FOUND
    default_detail = "The template does not exist in this workspace."


class TemplateNotApproved(Rejection):
    code = ErrorCode.TEMPLATE_NOT_APPROVED
    default_detail = "The template is not APPROVED."


class TemplateParametersMismatch(Rejection):
    code = ErrorCode.TEMPLATE_PARAMETERS_MISMATCH
    default_detail = "The number of parameters does not match the template's placeholders."


class ContactNotFound(Rejection):
    code = ErrorCode.CONTACT_NOT_FOUND
    default_detail = "The contact does not exist in this workspace."


class ContactOptedOut(Rejection):
    code = ErrorCode.CONTACT_OPTED_OUT
    default_detail = "The contact has opted out of messages."


class BrandNotFound(Rejection):
    code = ErrorCode.BRAND_NOT_FOUND
    default_detail = "The brand does not exist in this workspace."


class ProviderChannelNotFound(Rejection):
    code = ErrorCode.PROVIDER_CHANNEL_NOT_FOUND
    default_detail = "The provider channel does not exist in this workspace."


class ChannelNotEligible(Rejection):
    code = ErrorCode.CHANNEL_NOT_ELIGIBLE
    default_detail = "The channel is inactive, not WhatsApp, or not linked to the brand."


class NoWhatsAppChannel(Rejection):
    code = ErrorCode.NO_WHATSAPP_CHANNEL
    default_detail = "No active WhatsApp channel is available."


class NoProspectionAgent(Rejection):
    code = ErrorCode.NO_PROSPECTION_AGENT
    default_detail = "No active prospection agent owns an eligible channel."


class HandoffUserNotFound(Rejection):
    code = ErrorCode.HANDOFF_USER_NOT_FOUND
    default_detail = "The handoff user does not exist in this workspace."


class HandoffUserInactive(Rejection):
    code = ErrorCode.HANDOFF_USER_INACTIVE
    default_detail = "The handoff user is inactive."


class ActiveConversationExists(Rejection):
    code = ErrorCode.ACTIVE_CONVERSATION_EXISTS
    default_detail = "An active conversation with this contact exists on the channel."


class AllProviderChannelsOccupied(Rejection):
    code = ErrorCode.ALL_PROVIDER_CHANNELS_OCCUPIED
    default_detail = "Every candidate channel has an active conversation with this contact."

    @classmethod
    def among(cls, blocking_ids: list[str], at_limit: int) -> AllProviderChannelsOccupied:
        """The rejection naming the blocking conversations, and saying whether the free
        candidates (``at_limit`` of them) were passed over for their daily limit."""
        if not at_limit:
            return cls(blockingConversationIds=blocking_ids)
        occupied = len(blocking_ids)
        detail = (
            f"No candidate channel is free: {occupied} {'has' if occupied == 1 else 'have'} "
            f"an active conversation with this contact and {at_limit} reached "
            f"{'its' if at_limit == 1 else 'their'} daily limit."
        )
        return cls(detail, blockingConversationIds=blocking_ids)


class ChannelDailyLimitReached(Rejection):
    code = ErrorCode.CHANNEL_DAILY_LIMIT_REACHED
    default_detail = "The channel reached its daily limit of business-initiated conversations."


class ConversationClosed(Problem):
    code = ErrorCode.CONVERSATION_CLOSED
    default_detail = "The conversation is closed."


REJECTIONS: dict[ErrorCode, type[Rejection]] = {cls.code: cls for cls in Rejection.__subclasses__()}
