"""Mutation testing of the concurrency core, by hand (not in CI); config in pyproject.toml.

    .venv/bin/python tools/mutation.py             a fresh full run, then the survivors
    .venv/bin/python tools/mutation.py NAME...     re-test named mutants ('worker.handlers.*')

Afterwards: `.venv/bin/mutmut show NAME` (a mutant's diff), `.venv/bin/mutmut browse`.
One PostgreSQL and one Redis serve every mutant's test session, which would otherwise
start its own servers (seconds each); the sessions share that Redis database, so they
run one at a time, at low priority.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script from anywhere: the repo root must be importable before `tests` is.
sys.path.insert(0, str(ROOT))

from tests.servers import postgres_server, redis_server  # noqa: E402 (after the path fix)

MUTMUT = str(Path(sys.executable).with_name("mutmut"))


def main(names: list[str]) -> int:
    os.chdir(ROOT)
    if not names:
        shutil.rmtree("mutants", ignore_errors=True)
    with postgres_server() as database_url, redis_server() as redis_url:
        env = dict(
            os.environ,
            LEADSCOUT_TEST_DATABASE_URL=database_url,
            LEADSCOUT_TEST_REDIS_URL=redis_url,
        )
        run = ["nice", "-n", "10", MUTMUT, "run", "--max-children", "1", *names]
        code = subprocess.run(run, env=env).returncode
    subprocess.run([MUTMUT, "export-cicd-stats"], check=True)
    print(Path("mutants/mutmut-cicd-stats.json").read_text())
    subprocess.run([MUTMUT, "results"], check=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
