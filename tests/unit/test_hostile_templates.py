"""Hostile parameters against template rendering (SPEC 3 placeholders, SPEC 4.1's
renderedBody, SPEC 6's WhatsApp payload): each parameter lands verbatim, once per
placeholder, and nothing in it (``{{1}}``, backslashes, right-to-left marks) is read."""

from __future__ import annotations

import json
import re
from typing import Any
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from schemas.events import WhatsAppTemplateMessage
from tests.unit.hostile import SETTINGS, STORABLE_CHARS, TRICKY, storable_text
from worker.events import whatsapp_message
from worker.model import Contact, Template

CONTACT = Contact(id=UUID(int=1), name="Luis", phone="+5215598765432", opted_out=False)
SPELLINGS = ["{{%d}}", "{{ %d }}", "{{%d }}", "{{\t%d}}"]
# Literal template text that cannot form a placeholder: no opening brace at all.
literal = st.lists(
    st.sampled_from([t for t in TRICKY if "{" not in t])
    | st.text(STORABLE_CHARS.filter(lambda c: c != "{"), max_size=5),
    max_size=4,
).map("".join)
placeholder = st.tuples(st.integers(1, 8), st.sampled_from(SPELLINGS))
segments = st.lists(st.tuples(literal, placeholder), max_size=8)
parameters = st.lists(storable_text, min_size=8, max_size=8)
# Parameters that a careless renderer would read: placeholders, regex group references.
SNEAKY = ["{{1}}", "{{ 2 }}", "{{3}}", "{{8}}", "\\1", "\\g<0>", "$1", "%s"]
# Any template text, braces and digits included, as SPEC 3's catalog allows it.
any_body = st.lists(
    st.sampled_from([*TRICKY, "{", "}", "1", " "]) | st.text(STORABLE_CHARS, max_size=4),
    max_size=12,
).map("".join)


def template(body: str) -> Template:
    return Template(UUID(int=2), "welcome_v2", "es_MX", "MARKETING", "APPROVED", body)


def built(parts: list[tuple[str, tuple[int, str]]], tail: str) -> tuple[str, list[int]]:
    """The template body and the placeholder numbers in it, in order."""
    body = "".join(text + spelling % n for text, (n, spelling) in parts) + tail
    return body, [n for _, (n, _) in parts]


def expected(parts: list[tuple[str, tuple[int, str]]], tail: str, params: list[str]) -> str:
    return "".join(text + params[n - 1] for text, (n, _) in parts) + tail


# SPEC 3: ``{{n}}``, n from 1, spaces allowed inside the braces (as worker.model reads them).
PLACEHOLDER = re.compile(r"\{\{\s*([1-9][0-9]*)\s*\}\}")


class TestConstructedTemplates:
    """Templates built from known placeholders: the rendering is known exactly."""

    @SETTINGS
    @given(segments, literal, parameters)
    def test_each_placeholder_becomes_its_parameter_verbatim(self, parts, tail, params) -> None:
        body, numbers = built(parts, tail)
        subject = template(body)
        used = params[: subject.placeholder_count]

        assert subject.placeholder_count == max(numbers, default=0)
        assert subject.render(used) == expected(parts, tail, params)

    @SETTINGS
    @given(segments, literal)
    def test_a_parameter_appears_once_per_placeholder_naming_it(self, parts, tail) -> None:
        body, numbers = built(parts, tail)
        subject = template(body)
        # Unique markers, each shaped like a placeholder of another number.
        markers = [f"<{{{{{(k % 8) + 1}}}}}#{k}>" for k in range(1, subject.placeholder_count + 1)]

        rendered = subject.render(markers)

        for k, marker in enumerate(markers, start=1):
            assert rendered.count(marker) == numbers.count(k)

    @SETTINGS
    @given(segments, literal, st.lists(st.sampled_from(SNEAKY), min_size=8, max_size=8))
    def test_a_parameter_that_looks_like_a_placeholder_is_not_expanded(
        self, parts, tail, sneaky
    ) -> None:
        subject = template(built(parts, tail)[0])
        params = [f"{text}#{k}" for k, text in enumerate(sneaky)]

        rendered = subject.render(params[: subject.placeholder_count])

        assert rendered == expected(parts, tail, params)


class TestAnyTemplateText:
    """Any template text, as the catalog may hold it, renders with as many parameters as
    its highest placeholder number, and only its placeholders change."""

    @SETTINGS
    @given(any_body, parameters)
    def test_renders_exactly_its_placeholders(self, body: str, params: list[str]) -> None:
        subject = template(body)
        count = subject.placeholder_count
        matches = list(PLACEHOLDER.finditer(body))
        if count > len(params):  # "{{12}}" typed in by hand: the request must carry 12
            params = params + ["p"] * (count - len(params))
        used = params[:count]

        rendered = subject.render(used)

        assert count == max((int(m.group(1)) for m in matches), default=0)
        pieces, at = [], 0
        for match in matches:
            pieces += [body[at : match.start()], used[int(match.group(1)) - 1]]
            at = match.end()
        assert rendered == "".join(pieces) + body[at:]

    def test_numbers_from_zero_or_with_a_leading_zero_are_text(self) -> None:
        subject = template("{{0}} {{01}} {{1}} {{{1}}} {{ 1 }} {{1 }}")

        assert subject.placeholder_count == 1
        assert subject.render(["X"]) == "{{0}} {{01}} X {X} X X"


class TestWhatsAppPayload:
    """SPEC 6's ``data.message``: one text parameter per request parameter, in order and
    verbatim; no ``components`` for a template without placeholders."""

    @SETTINGS
    @given(segments, literal, parameters)
    def test_parameters_in_order_and_verbatim(self, parts, tail, params) -> None:
        subject = template(built(parts, tail)[0])
        used = params[: subject.placeholder_count]

        payload = whatsapp_message(CONTACT, subject, used)

        expected_template: dict[str, Any] = {"name": "welcome_v2", "language": {"code": "es_MX"}}
        if used:
            texts = [{"type": "text", "text": p} for p in used]
            expected_template["components"] = [{"type": "body", "parameters": texts}]
        assert payload == {
            "messaging_product": "whatsapp",
            "to": CONTACT.phone,
            "type": "template",
            "template": expected_template,
        }
        assert json.loads(json.dumps(payload, ensure_ascii=False).encode()) == payload
        assert WhatsAppTemplateMessage.model_validate(payload).model_dump(mode="json") == payload
