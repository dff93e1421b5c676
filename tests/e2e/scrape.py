"""Reading Prometheus text the way a scraper does, for exact counter checks."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests import web


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Label set → value of every sample called ``name`` in a scrape."""
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def scrape(url: str) -> str:
    response = web.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return response.text


def increase(
    before: dict[frozenset[tuple[str, str]], float], after: dict[frozenset[tuple[str, str]], float]
) -> dict[frozenset[tuple[str, str]], float]:
    """The samples that moved between two scrapes, by how much."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
