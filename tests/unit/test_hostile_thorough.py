"""The hostile-input properties again, with 1,000 examples each instead of the quick run's 50."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MODULES = sorted(str(p) for p in HERE.glob("test_hostile_*.py") if p.name != Path(__file__).name)
TIMEOUT_S = 1800


@pytest.mark.slow
def test_every_property_holds_for_a_thousand_examples() -> None:
    env = {**os.environ, "LEADSCOUT_HYPOTHESIS": "thorough"}

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES],
        env=env,
        cwd=HERE.parent.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )

    assert run.returncode == 0, run.stdout[-6000:]  # 5 if no test ran
    assert " passed" in run.stdout.strip().splitlines()[-1]
