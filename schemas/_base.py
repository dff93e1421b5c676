"""Model bases shared by the published language."""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    """A JSON object with camelCase members that refuses unknown ones."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        serialize_by_alias=True,
    )


class WireModel(BaseModel):
    """A JSON object whose member names are written as they are (CloudEvents, WhatsApp)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
