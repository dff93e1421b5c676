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


class CamelInput(CamelModel):
    """A body a client sends: camelCase member names only, as the published schema says."""

    model_config = ConfigDict(validate_by_name=False, validate_by_alias=True)
