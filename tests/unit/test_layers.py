"""The import arrows run one way: CLI → api_shim / worker → schemas, core."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _project_modules_after(statement: str) -> set[str]:
    """The top-level project packages a fresh interpreter holds after ``statement``."""
    probe = f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    project = {"leadscout", "api_shim", "worker", "schemas", "core"}
    return {name.split(".")[0] for name in loaded} & project


class TestImportDirection:
    """Lower layers never import the ones above them."""

    def test_worker_and_api_import_nothing_of_the_cli(self) -> None:
        loaded = _project_modules_after("import worker, api_shim, api_shim.app, worker.tasks")
        assert loaded == {"api_shim", "worker", "schemas", "core"}

    @pytest.mark.parametrize(
        ("statement", "expected"),
        [
            ("import schemas.api, schemas.events, schemas.catalog", {"schemas"}),
            ("import core.settings, core.logs, core.embedded", {"core"}),
        ],
    )
    def test_base_packages_import_no_service_code(self, statement: str, expected: set[str]) -> None:
        assert _project_modules_after(statement) == expected
