"""Commands: what a caller asks the service to do (imperative names)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from schemas._base import CamelModel
from schemas.api import InitiateOutboundRequest


class InitiateOutbound(CamelModel):
    """Open (or, with forceSend, reuse) an outbound conversation with one lead."""

    command_id: UUID
    workspace_id: UUID
    request: InitiateOutboundRequest

    def to_message(self) -> dict[str, Any]:
        """The command as JSON with its request as sent: members the client left out stay out.

        Every place that stores or sends a command uses this form, so that parsing it again
        (``model_validate``) and dumping with ``exclude_unset`` gives back what was sent.
        """
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> bytes:
        """``to_message`` as JSON text, encoded by pydantic directly."""
        return self.model_dump_json(exclude_unset=True).encode()
