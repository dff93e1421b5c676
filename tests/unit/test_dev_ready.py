"""``leadscout dev`` announces its curl only once the API answers ``/readyz``."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leadscout import dev


class _Readiness(BaseHTTPRequestHandler):
    """503 for the first ``not_ready`` requests, then 200; counts them."""

    not_ready = 3
    asked = 0

    def do_GET(self) -> None:
        type(self).asked += 1
        self.send_response(503 if type(self).asked <= type(self).not_ready else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    _Readiness.asked = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readiness)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


def test_waits_through_503s_until_ready(api: str) -> None:
    child = _sleeper()
    try:
        dev._wait_ready(api, [child])
    finally:
        child.kill()
        child.wait()
    assert _Readiness.asked == 4


def test_stops_waiting_when_a_child_exits(api: str) -> None:
    _Readiness.not_ready = 10**9
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    try:
        dev._wait_ready(api, [exited])
    finally:
        _Readiness.not_ready = 3
    assert _Readiness.asked == 0
