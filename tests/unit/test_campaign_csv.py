"""SPEC 8's campaign launch: the CSV read row by row, cut into chunks, keyed for replays."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from leadscout.campaign import (
    Chunk,
    CsvFormatError,
    InvalidRows,
    Plan,
    Row,
    batch_body,
    chunks,
    derived_campaign_id,
    idempotency_key,
    parse_header,
    read_rows,
    survey,
    text_lines,
)
from leadscout.cli import cli
from schemas.api import CAMPAIGN_ID_PATTERN

TEMPLATE = "0d4e6f10-0000-4000-8000-000000000005"
CHANNEL = "0d4e6f10-0000-4000-8000-000000000004"
DIGEST = hashlib.sha256(b"any file").hexdigest()


def rows_of(text: str) -> list[Row]:
    return list(read_rows(text_lines(io.BytesIO(text.encode()))))


def contacts_csv(n: int, header: str = "contactId,p1") -> bytes:
    return (header + "\n" + "".join(f"c{i},v{i}\n" for i in range(n))).encode()


class CountingFile:
    """A binary file that counts the lines handed out, to see how far a reader got."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)
        self.lines_read = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self._file:
            self.lines_read += 1
            yield line


class TestHeader:
    """``contactId`` first, then exactly p1..pN in any order; anything else is one clear error."""

    def test_contact_id_alone_means_no_parameters(self):
        assert rows_of("contactId\nc1\n") == [Row(2, "c1", ())]

    def test_parameters_come_in_p_number_order_whatever_the_column_order(self):
        assert rows_of("contactId,p3,p1,p2\nc1,three,one,two\n") == [
            Row(2, "c1", ("one", "two", "three"))
        ]
        assert parse_header(["contactId", "p2", "p1"]).parameter_columns == (2, 1)

    def test_a_bom_and_spaces_around_header_names_are_tolerated(self):
        assert rows_of("\ufeffcontactId, p1\nc1,x\n") == [Row(2, "c1", ("x",))]

    @pytest.mark.parametrize(
        ("header", "problem"),
        [
            ("contact,p1", "the first column must be contactId"),
            ("p1,contactId", "the first column must be contactId"),
            ("ContactId", "the first column must be contactId"),
            ("contactId,p2", "the other columns must be p1, p2, ... pN"),
            ("contactId,p1,p1", "the other columns must be p1, p2, ... pN"),
            ("contactId,p0", "the other columns must be p1, p2, ... pN"),
            ("contactId,p01", "the other columns must be p1, p2, ... pN"),
            ("contactId,name", "the other columns must be p1, p2, ... pN"),
        ],
    )
    def test_a_bad_header_is_an_error_naming_it(self, header: str, problem: str):
        with pytest.raises(CsvFormatError) as raised:
            rows_of(f"{header}\nc1,x\n")

        assert str(raised.value) == f"line 1: bad header ({header}): {problem}"

    def test_an_empty_file_has_no_header(self):
        with pytest.raises(CsvFormatError) as raised:
            rows_of("")

        assert str(raised.value) == "line 1: bad header (empty): the first column must be contactId"


class TestRows:
    """Rows come one at a time with the line they start on; a ragged row or bad bytes stop it."""

    def test_blank_lines_are_skipped_and_lines_counted_across_quoted_newlines(self):
        text = 'contactId,p1\nc1,"two\nlines"\n\nc2,"a, b"\r\nc3,\n'

        assert rows_of(text) == [
            Row(2, "c1", ("two\nlines",)),
            Row(5, "c2", ("a, b",)),
            Row(6, "c3", ("",)),
        ]

    @pytest.mark.parametrize("row", ["c1", "c1,x,y"])
    def test_a_row_with_another_number_of_fields_names_its_line(self, row: str):
        with pytest.raises(CsvFormatError) as raised:
            rows_of(f"contactId,p1\nc0,x\n\n{row}\n")

        fields = row.count(",") + 1
        assert str(raised.value) == f"line 4: {fields} fields, the header has 2"

    def test_bytes_that_are_not_utf8_name_their_line(self):
        with pytest.raises(CsvFormatError) as raised:
            list(read_rows(text_lines(io.BytesIO(b"contactId\nc1\nc\xe9\n"))))

        assert str(raised.value) == "line 3: not UTF-8"


class TestChunks:
    """Chunks are full but the last, and each is yielded before the rows after it are read."""

    def test_chunks_of_a_size_with_a_shorter_last_one(self):
        rows = [Row(line, f"c{line}", ()) for line in range(2, 27)]

        cut = list(chunks(rows, 10))

        assert [(chunk.index, len(chunk.rows)) for chunk in cut] == [(0, 10), (1, 10), (2, 5)]
        assert [row for chunk in cut for row in chunk.rows] == rows

    def test_no_rows_no_chunks(self):
        assert list(chunks(rows_of("contactId\n"), 10)) == []

    def test_the_first_chunk_comes_after_reading_only_its_own_lines(self):
        file = CountingFile(contacts_csv(100_000))

        first = next(chunks(read_rows(text_lines(file)), 1000))  # type: ignore[arg-type]

        assert (first.index, len(first.rows)) == (0, 1000)
        assert first.rows[-1] == Row(1001, "c999", ("v999",))
        assert file.lines_read == 1001  # the header and those rows: nothing of the 99,000 after

    def test_survey_counts_the_rows_and_hashes_the_bytes(self, tmp_path: Path):
        data = contacts_csv(2500) + b"\n"
        path = tmp_path / "leads.csv"
        path.write_bytes(data)

        surveyed = survey(path)

        assert (surveyed.rows, surveyed.digest) == (2500, hashlib.sha256(data).hexdigest())


class TestBody:
    """One chunk's body: the campaign once, the template in the defaults unless rows vary."""

    def test_without_parameters_the_template_and_channel_are_defaults(self):
        chunk = Chunk(0, [Row(2, "c1", ()), Row(3, "c2", ())])

        body = json.loads(batch_body(Plan("spring", TEMPLATE, CHANNEL), chunk))

        assert body == {
            "campaignId": "spring",
            "defaults": {"template": {"templateId": TEMPLATE}, "providerChannelId": CHANNEL},
            "items": [{"contactId": "c1"}, {"contactId": "c2"}],
        }

    def test_with_parameters_each_item_carries_its_whole_template(self):
        chunk = Chunk(0, [Row(2, "c1", ("Luis", "Ana"))])

        body = json.loads(batch_body(Plan("spring", TEMPLATE), chunk))

        assert body == {
            "campaignId": "spring",
            "defaults": {"template": {"templateId": TEMPLATE}},
            "items": [
                {
                    "contactId": "c1",
                    "template": {"templateId": TEMPLATE, "parameters": ["Luis", "Ana"]},
                }
            ],
        }

    def test_the_same_chunk_gives_the_same_bytes(self):
        plan = Plan("spring", TEMPLATE, CHANNEL)

        first = batch_body(plan, Chunk(3, [Row(2, "c1", ("ñ",))]))

        assert batch_body(plan, Chunk(3, [Row(2, "c1", ("ñ",))])) == first
        assert "ñ".encode() in first


class TestIdempotencyKey:
    """Stable for the same chunk; another chunk index or another body is another key."""

    def test_the_key_names_campaign_chunk_and_body_hash(self):
        key = idempotency_key("spring", 7, b"{}")

        assert key == f"launch:spring:7:{hashlib.sha256(b'{}').hexdigest()[:32]}"
        assert idempotency_key("spring", 7, b"{}") == key

    def test_another_index_body_or_campaign_is_another_key(self):
        keys = {
            idempotency_key("spring", 0, b"{}"),
            idempotency_key("spring", 1, b"{}"),
            idempotency_key("spring", 0, b"[]"),
            idempotency_key("autumn", 0, b"{}"),
        }

        assert len(keys) == 4

    def test_the_longest_campaign_id_still_fits_the_api_limit(self):
        assert len(idempotency_key("c" * 128, 999_999, b"{}")) <= 255


class TestDerivedCampaignId:
    """Without --campaign: the file's stem and a hash of its bytes, in SPEC 4.1's charset."""

    def test_stem_and_sixteen_hex_of_the_digest(self):
        assert derived_campaign_id("leads.csv", DIGEST) == f"leads-{DIGEST[:16]}"

    def test_characters_outside_the_charset_become_dashes(self):
        name = "Mis leads (2026)/ñandú.v2.csv"

        assert derived_campaign_id(name, DIGEST) == f"and-.v2-{DIGEST[:16]}"
        spaced = derived_campaign_id("Mis leads (2026).csv", DIGEST)
        assert spaced == f"Mis-leads-2026-{DIGEST[:16]}"

    def test_a_name_with_nothing_usable_falls_back_to_campaign(self):
        assert derived_campaign_id("ñ.csv", DIGEST) == f"campaign-{DIGEST[:16]}"

    @given(st.text(max_size=300))
    def test_any_file_name_gives_a_valid_campaign_id(self, name: str):
        assert re.fullmatch(CAMPAIGN_ID_PATTERN, derived_campaign_id(name, DIGEST))


class TestInvalidRows:
    """The API's item indexes map back to CSV lines; only the first few are shown."""

    def test_indexes_become_lines_and_locations_inside_the_item(self):
        shown: list[str] = []
        invalid = InvalidRows(shown.append, limit=2)
        chunk = Chunk(1, [Row(10, "a", ()), Row(12, "b", ()), Row(13, "c", ()), Row(14, "d", ())])
        uuid_error = {"loc": ["body", "items", 1, "contactId"], "msg": "Input should be a UUID"}

        invalid.add("leads.csv", chunk, [{"index": 1, "errors": [uuid_error]}])
        invalid.add("leads.csv", chunk, [{"index": 2, "errors": []}, {"index": 3, "errors": []}])
        invalid.close("leads.csv")

        assert invalid.count == 3
        assert shown == [
            "leads.csv line 12: contactId: Input should be a UUID",
            "leads.csv line 13: ",
            "leads.csv: 1 more invalid rows not shown",
        ]


class TestCommandLine:
    """A file that is not a contacts CSV stops the launch before any request: exit 2."""

    def test_a_bad_header_is_one_line_and_exit_code_2(self, tmp_path: Path):
        path = tmp_path / "leads.csv"
        path.write_text("contact,p1\nc1,x\n")
        args = ["campaign", "launch", "--workspace", TEMPLATE, "--template", TEMPLATE]
        # Port 9 (discard): a request would fail differently, with exit code 1.
        options = ["--contacts", str(path), "--api-key", "k", "--api-url", "http://127.0.0.1:9"]

        result = CliRunner().invoke(cli, [*args, *options])

        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == (
            f"leadscout: {path}: line 1: bad header (contact,p1): the first column must be"
            " contactId; nothing sent\n"
        )

    @pytest.mark.parametrize(
        ("option", "message"),
        [
            (
                ["--campaign", "has space"],
                "--campaign 'has space': not 1-128 of A-Z a-z 0-9 . _ - :",
            ),
            (["--batch-size", "10001"], "--batch-size must be 1 to 10000"),
        ],
    )
    def test_bad_options_are_one_line_and_exit_code_2(
        self, tmp_path: Path, option: list[str], message: str
    ):
        path = tmp_path / "leads.csv"
        path.write_text("contactId\nc1\n")
        args = ["campaign", "launch", "--workspace", TEMPLATE, "--template", TEMPLATE]

        result = CliRunner().invoke(
            cli, [*args, "--contacts", str(path), "--api-key", "k", *option]
        )

        assert (result.exit_code, result.stderr) == (2, f"leadscout: {message}\n")
