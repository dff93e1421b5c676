"""httpx for tests, with one TLS context shared by every client.

httpx builds a TLS context for each client it makes (``httpx.get`` makes a client per call),
loading the CA bundle: ~30 ms each, although the tests only speak plain HTTP to 127.0.0.1.
A client per test and the readiness polls added up to many seconds per run.
"""

from __future__ import annotations

import ssl
from functools import cache
from typing import Any

import httpx


@cache
def tls() -> ssl.SSLContext:
    """httpx's default context (``verify=True``), built once."""
    return httpx.create_ssl_context()


def client(**options: Any) -> httpx.Client:
    """``httpx.Client(**options)`` with the shared TLS context."""
    return httpx.Client(verify=tls(), **options)


def get(url: str, **options: Any) -> httpx.Response:
    """``httpx.get(url, **options)`` with the shared TLS context."""
    return httpx.get(url, verify=tls(), **options)
