"""Reading a catalog file (SPEC 3) as a stream: the rows it yields, the one line it refuses with."""

from __future__ import annotations

import io
import json
from typing import Any
from uuid import UUID

import pytest

from schemas.catalog import CatalogBrand, CatalogChannel, CatalogContact
from worker.catalog_file import read_catalog
from worker.store.catalog import CatalogImportError

SECRET = "Zq-private-lead-data"
BRAND_ID = "0d4e6f10-0000-4000-8000-000000000001"


def contact(index: int = 0, **fields: Any) -> dict[str, Any]:
    row = {
        "id": str(UUID(int=index + 1)),
        "name": f"{SECRET} {index}",
        "phone": "+5215598765432",
        "email": None,
        "optedOut": False,
    }
    return {**row, **fields}


def read(data: bytes) -> list[tuple[str, list[Any]]]:
    return [(kind, list(rows)) for kind, rows in read_catalog(io.BytesIO(data))]


def refusal(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    with pytest.raises(CatalogImportError) as caught:
        read(raw)
    message = str(caught.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


class TestRows:
    """Each kind comes once, in file order, with its rows validated by the row model."""

    def test_kinds_and_rows_in_file_order(self) -> None:
        data = {
            "contacts": [contact(0), contact(1)],
            "brands": [{"id": BRAND_ID, "name": "Acme Motors"}],
        }
        sections = read(json.dumps(data).encode())

        assert [kind for kind, _ in sections] == ["contacts", "brands"]
        assert sections[0][1] == [
            CatalogContact.model_validate(contact(0)),
            CatalogContact.model_validate(contact(1)),
        ]
        assert sections[1][1] == [CatalogBrand(id=UUID(BRAND_ID), name="Acme Motors")]

    def test_absent_optional_references_are_null(self) -> None:
        channel = {
            "id": BRAND_ID,
            "type": "whatsapp",
            "phoneNumber": "+5215512345678",
            "active": True,
            "dailyLimit": 1000,
            "priority": 0,
        }
        [(_, [row])] = read(json.dumps({"channels": [channel]}).encode())

        assert isinstance(row, CatalogChannel)
        assert (row.brand_id, row.agent_id, row.default_advisor_id) == (None, None, None)

    def test_empty_object_and_empty_kinds(self) -> None:
        assert read(b"{}") == []
        assert read(b'{"brands": [], "contacts": []}') == [("brands", []), ("contacts", [])]


class TestBadRows:
    """A bad row names its kind, index and field, never its data."""

    def test_field_error_names_kind_index_and_field(self) -> None:
        data = {"contacts": [contact(0), contact(1, phone="12")]}
        assert refusal(data) == "contacts[1].phone: String should have at least 3 characters"

    def test_missing_field(self) -> None:
        row = contact(0)
        del row["optedOut"]
        assert refusal({"contacts": [row]}) == "contacts[0].optedOut: Field required"

    def test_unknown_field(self) -> None:
        data = {"contacts": [contact(0, nickname=SECRET)]}
        assert refusal(data) == "contacts[0].nickname: Extra inputs are not permitted"

    def test_nested_value_is_refused_as_the_field_type(self) -> None:
        data = {"contacts": [contact(0, name={"first": SECRET, "more": [1, {"x": []}]})]}
        assert refusal(data) == "contacts[0].name: Input should be a valid string"

    def test_row_that_is_not_an_object(self) -> None:
        assert refusal({"contacts": [contact(0), SECRET]}) == "contacts[1]: must be an object"

    def test_nul_character_is_refused(self) -> None:
        data = {"contacts": [contact(0, name="Luis\u0000")]}
        assert refusal(data) == "contacts[0].name: Value error, must not contain NUL (\\u0000)"

    def test_integer_beyond_32_bits_is_refused(self) -> None:
        channel = {
            "id": BRAND_ID,
            "type": "whatsapp",
            "phoneNumber": "+5215512345678",
            "active": True,
            "dailyLimit": 2**31,
            "priority": 0,
        }
        assert refusal({"channels": [channel]}) == (
            "channels[0].dailyLimit: Input should be less than or equal to 2147483647"
        )

    def test_long_member_name_is_cut_short(self) -> None:
        data = {"contacts": [contact(0, **{"x" * 500: 1})]}
        assert refusal(data) == f"contacts[0].{'x' * 39}…: Extra inputs are not permitted"


class TestBadShape:
    """The file's shape: an object of known kinds, each a list."""

    @pytest.mark.parametrize("data", [b"[]", b'"catalog"', b"null"])
    def test_top_level_must_be_an_object(self, data: bytes) -> None:
        assert refusal(data) == (
            "the file must be a JSON object of brands, users, agents, channels, templates, contacts"
        )

    def test_unknown_kind(self) -> None:
        assert refusal({"leads": []}) == (
            "unknown kind 'leads' (the kinds are brands, users, agents, channels, templates,"
            " contacts)"
        )

    @pytest.mark.parametrize("value", [None, {}, SECRET])
    def test_kind_must_be_a_list(self, value: Any) -> None:
        assert refusal({"contacts": value}) == "contacts: must be a list of objects"


class TestInvalidJson:
    """Malformed JSON names where it broke and yajl's reason, without quoting the file."""

    def test_error_inside_a_row_names_the_row(self) -> None:
        rows = ",".join(json.dumps(contact(i)) for i in range(3000))
        data = f'{{"contacts": [{rows}, {{"id": {SECRET}}}]}}'.encode()
        assert (
            refusal(data)
            == "invalid JSON in contacts[3000]: lexical error: invalid char in json text"
        )

    def test_truncated_file(self) -> None:
        data = json.dumps({"contacts": [contact(0), contact(1)]}).encode()[:-30]
        assert refusal(data) == "invalid JSON in contacts[1]: parse error: premature EOF"

    def test_empty_file(self) -> None:
        assert refusal(b"") == "invalid JSON at the top level: parse error: premature EOF"

    def test_data_after_the_object(self) -> None:
        data = json.dumps({"contacts": [contact(0)]}).encode() + b" {}"
        assert refusal(data) == "invalid JSON after contacts: parse error: trailing garbage"

    def test_invalid_utf8(self) -> None:
        data = b'{"contacts": [{"name": "\xff"}]}'
        assert refusal(data) == (
            "invalid JSON in contacts[0]: lexical error: invalid bytes in UTF8 string"
        )
