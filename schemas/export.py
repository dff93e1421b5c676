"""Exports the published language as JSON Schema files under ``schemas/json/``.

Run ``python -m schemas.export`` after changing a model; a test fails while the
checked-in files differ from what this writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.api import CommandStatus, InitiateOutboundRequest, InitiateOutboundResult
from schemas.batches import BatchAccepted, BatchStatus, InitiateOutboundBatchRequest
from schemas.commands import InitiateOutbound
from schemas.events import EVENT_CLASSES
from schemas.reporting import CampaignStats

JSON_DIR = Path(__file__).parent / "json"
PUBLISHED: tuple[type[BaseModel], ...] = (
    *EVENT_CLASSES,
    InitiateOutbound,
    InitiateOutboundRequest,
    InitiateOutboundResult,
    CommandStatus,
    InitiateOutboundBatchRequest,
    BatchAccepted,
    BatchStatus,
    CampaignStats,
)


def rendered_schemas() -> dict[str, str]:
    """File name → file text, for every published model."""
    return {f"{model.__name__}.schema.json": _render(model) for model in PUBLISHED}


def _render(model: type[BaseModel]) -> str:
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(by_alias=True, mode="serialization"),
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in rendered_schemas().items():
        (JSON_DIR / name).write_text(text)


if __name__ == "__main__":
    main()
