"""The launch's HTTP client: the same request again on 503 or a lost connection, else one line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from leadscout.campaign import BatchApi, LaunchError, Tracker, UsageError

WORKSPACE = "0d4e6f10-0000-4000-8000-000000000001"
ACCEPTED = {"batchId": "b1", "accepted": 2, "invalid": []}


@dataclass
class Script:
    """Answers to give in order (``None`` = drop the connection), and the requests seen."""

    answers: list[tuple[int, Any] | None]
    seen: list[dict[str, Any]] = field(default_factory=list)


def problem(status: int, code: str, detail: str) -> tuple[int, Any]:
    return status, {"type": "about:blank", "status": status, "code": code, "detail": detail}


@pytest.fixture
def script() -> Script:
    return Script([])


@pytest.fixture
def server(script: Script) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            script.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "key": self.headers.get("Idempotency-Key"),
                    "apiKey": self.headers.get("X-API-Key"),
                    "body": self.rfile.read(length),
                }
            )
            answer = script.answers.pop(0)
            if answer is None:
                self.close_connection = True
                return
            data = json.dumps(answer[1]).encode()
            self.send_response(answer[0])
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever to notice, up to one poll interval (0.5 s by default).
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def client(url: str, slept: list[float]) -> BatchApi:
    return BatchApi(url, "lsk_test", WORKSPACE, sleep=slept.append, retry_delays=(0.5, 1.0))


class TestRetries:
    """A 503 or a lost connection: the same key and body again, a bounded number of times."""

    def test_503_then_a_dropped_connection_then_202_sends_the_same_request_three_times(
        self, server: str, script: Script
    ):
        script.answers = [problem(503, "ServiceUnavailable", "broker down"), None, (202, ACCEPTED)]
        slept: list[float] = []

        answer = client(server, slept).send(b'{"items":[]}', "launch:c:0:abc")

        assert answer == ACCEPTED
        assert slept == [0.5, 1.0]
        assert [(r["method"], r["key"], r["body"], r["apiKey"]) for r in script.seen] == [
            ("POST", "launch:c:0:abc", b'{"items":[]}', "lsk_test")
        ] * 3
        assert script.seen[0]["path"] == f"/v1/workspaces/{WORKSPACE}/leadscout/outbound/batch"

    def test_503_every_time_gives_up_after_the_last_delay(self, server: str, script: Script):
        script.answers = [problem(503, "ServiceUnavailable", "broker down")] * 3
        slept: list[float] = []

        with pytest.raises(LaunchError) as raised:
            client(server, slept).send(b"{}", "k")

        assert str(raised.value) == (
            f"POST /outbound/batch: 503 ServiceUnavailable: broker down (3 attempts; {server})"
        )
        assert (len(script.seen), slept) == (3, [0.5, 1.0])

    def test_nothing_listening_is_retried_then_one_line(self):
        slept: list[float] = []
        with pytest.raises(LaunchError) as raised:
            client("http://127.0.0.1:9", slept).stats("spring")

        assert str(raised.value).startswith("GET /campaigns/spring/stats: ConnectionRefusedError")
        assert slept == [0.5, 1.0]


class TestRefusals:
    """Any other 4xx or 5xx stops at once with the problem's code and detail."""

    @pytest.mark.parametrize(
        ("answer", "line"),
        [
            (
                problem(422, "IdempotencyKeyReused", "the key holds another body"),
                "POST /outbound/batch: 422 IdempotencyKeyReused: the key holds another body",
            ),
            (
                problem(401, "Unauthorized", "unknown key"),
                "POST /outbound/batch: 401 Unauthorized: unknown key",
            ),
            ((500, "oops"), "POST /outbound/batch: 500 oops"),
        ],
    )
    def test_one_request_and_one_line(self, server: str, script: Script, answer: Any, line: str):
        script.answers = [answer]
        slept: list[float] = []

        with pytest.raises(LaunchError) as raised:
            client(server, slept).send(b"{}", "k")

        assert (str(raised.value), len(script.seen), slept) == (line, 1, [])


class TestAddress:
    """The API URL may carry a path prefix; anything but http(s) is a usage error."""

    def test_a_path_prefix_is_kept(self, server: str, script: Script):
        script.answers = [(200, {"batchId": "b1"})]

        client(server + "/edge/", []).batch("b1")

        assert script.seen[0]["path"] == f"/edge/v1/workspaces/{WORKSPACE}/leadscout/batches/b1"

    def test_another_scheme_is_refused(self):
        with pytest.raises(UsageError) as raised:
            BatchApi("ftp://example.test", "k", WORKSPACE)

        assert str(raised.value) == "--api-url 'ftp://example.test': not an http(s) URL"


class StatusReads:
    """A BatchApi stand-in for ``Tracker.poll``: each batch's finished count, and the reads."""

    def __init__(self, finished: dict[str, int]) -> None:
        self.finished = finished
        self.read: list[str] = []

    def batch(self, batch_id: str) -> dict[str, Any]:
        self.read.append(batch_id)
        return {"counts": {"succeeded": self.finished[batch_id], "failed": 0}}


class TestFollowingTheBatches:
    """The launch reads the oldest unfinished batches up to the first still running."""

    def tracker(self) -> Tracker:
        tracker = Tracker()
        for batch_id in ("b1", "b2", "b3"):
            tracker.add(batch_id, 10)
        return tracker

    def test_a_round_stops_at_the_first_batch_still_running(self):
        tracker, api = self.tracker(), StatusReads({"b1": 10, "b2": 4, "b3": 0})

        tracker.poll(api)

        assert api.read == ["b1", "b2"]
        assert (tracker.finished, [b.batch_id for b in tracker.unfinished]) == (14, ["b2", "b3"])

    def test_rounds_go_on_until_every_batch_finished(self):
        tracker, api = self.tracker(), StatusReads({"b1": 3, "b2": 0, "b3": 0})
        tracker.poll(api)
        api.finished.update(b1=10, b2=10, b3=10)

        tracker.poll(api)

        assert api.read == ["b1", "b1", "b2", "b3"]
        assert (tracker.finished, list(tracker.unfinished)) == (30, [])

    def test_a_batch_with_nothing_accepted_is_never_read(self):
        tracker, api = Tracker(), StatusReads({})
        tracker.add("empty", 0)

        tracker.poll(api)

        assert (api.read, tracker.finished, tracker.accepted) == ([], 0, 0)
