"""Processes that share one stderr (a prefork worker and its pool children, all appending to
one file) must never put two records on one line, even with PYTHONUNBUFFERED=1, where
``print`` writes a record and its newline as two separate writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WRITERS = 4
RECORDS = 5000

WRITER = f"""
from core import logs
import structlog
logs.configure("json")
log = structlog.get_logger()
for n in range({RECORDS}):
    log.info("log_lines.record", n=n, padding="x" * 150)
"""


def test_four_processes_appending_to_one_file_write_whole_lines(tmp_path: Path):
    path = tmp_path / "shared.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with path.open("ab") as out:
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER], stdout=out, stderr=out, env=env)
            for _ in range(WRITERS)
        ]
        assert [w.wait(timeout=60) for w in writers] == [0] * WRITERS

    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == WRITERS * RECORDS
    assert sorted(r["n"] for r in records) == sorted(list(range(RECORDS)) * WRITERS)
