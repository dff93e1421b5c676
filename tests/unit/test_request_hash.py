"""The idempotency hash of a request body (SPEC 4.2: equal as parsed JSON)."""

from __future__ import annotations

from worker.store.commands import request_hash


class TestRequestHash:
    """Bodies equal as parsed JSON hash alike; any other body hashes differently; the
    digest is stable, so keys stored by an earlier release still compare."""

    def test_key_order_does_not_matter(self) -> None:
        assert request_hash({"a": 1, "b": [1, 2]}) == request_hash({"b": [1, 2], "a": 1})

    def test_another_body_hashes_differently(self) -> None:
        assert request_hash({"a": 1}) != request_hash({"a": 2})

    def test_the_digest_of_a_non_ascii_body_is_pinned(self) -> None:
        # sha256 of '{"name":"Peña"}': compact separators, UTF-8, no \u escapes.
        assert request_hash({"name": "Peña"}) == (
            "aa5b2bf53271e3cfaf906a4158ad097f62f40accca5d360a7b0a337d3f88a67b"
        )

    def test_the_digest_of_several_members_is_pinned(self) -> None:
        # sha256 of '{"name":"Peña","tags":["a","b"]}': members sorted, "," and ":" alone.
        assert request_hash({"tags": ["a", "b"], "name": "Peña"}) == (
            "e417e37d52b2276d2505998e6242a303050e8ea769444795f7242c629a179564"
        )
