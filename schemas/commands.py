"""Commands: what a caller asks the service to do (imperative names)."""

from __future__ import annotations

from uuid import UUID

from schemas._base import CamelModel
from schemas.api import InitiateOutboundRequest


class InitiateOutbound(CamelModel):
    """Open (or, with forceSend, reuse) an outbound conversation with one lead."""

    command_id: UUID
    workspace_id: UUID
    request: InitiateOutboundRequest
