"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis).

A real `mmc serve` with one real broker connected, every operation called with an admin
token and bodies, paths and queries generated from the document: no 5xx other than the
documented 503/504, and every answer matches its documented status, content type and
schema (errors: the one error shape). FUZZ_EXAMPLES sets the examples per operation.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from testbed.mosquitto import MosquittoBroker
from testbed.serve import MmcServer
from tests.conftest import plain_body

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


@pytest.fixture
def served(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[str, dict[str, str]]]:
    config = tmp_path / "mmc.toml"
    # Fuzzed connections point anywhere: keep each attempt and their number small.
    config.write_text(
        "[mmc]\npassword_hash_cost = 10\nconnect_timeout = 0.5\nrequest_timeout = 1.0\n"
        "max_connections = 20\nprobe_timeout = 0.3\n"
    )
    with MmcServer(tmp_path, env={"MMC_CONFIG": str(config)}) as server:
        base = server.base_url
        asyncio.run(server.wait_ready())
        headers = {"Authorization": f"Bearer {asyncio.run(server.admin_token('fuzz'))}"}
        resp = requests.post(
            f"{base}/api/connections", json=plain_body(broker), headers=headers, timeout=10
        )
        assert resp.status_code == 200, resp.text
        yield base, headers
    log = server.output()
    assert "Traceback" not in log, log[-5000:]


@pytest.mark.timeout(300)
def test_every_operation_survives_generated_input(served: tuple[str, dict[str, str]]) -> None:
    base, headers = served
    spec = requests.get(f"{base}/api/docs/openapi.json", headers=headers, timeout=10).json()
    schema = schemathesis.openapi.from_dict(spec)
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: list[str] = []
    statuses: collections.Counter[int] = collections.Counter()
    calls = 0
    operations = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            operations += 1

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def run(case: schemathesis.Case[Any]) -> None:
                nonlocal calls
                calls += 1
                response = case.call(base_url=base, headers=headers, session=session, timeout=15)
                status = response.status_code
                where = f"{case.method} {case.formatted_path} -> {status}"
                if status >= 500 and status not in (503, 504):
                    failures.append(f"{where}: {response.text[:300]}")
                try:
                    case.validate_response(
                        response, checks=checks, excluded_checks=[not_a_server_error]
                    )
                except FailureGroup as group:
                    failures.extend(f"{where}: {str(f)[:500]}" for f in group.exceptions)
                statuses[status] += 1

            run()
    print(
        f"schemathesis: {calls} calls over {operations} operations: "
        f"{dict(sorted(statuses.items()))}"
    )
    assert operations >= 60
    assert calls >= 3 * operations
    assert not failures, "\n".join(failures[:20])

    # The checks do bite: an answer from another operation does not pass for this one's.
    profile = schema.find_operation_by_label("GET /api/profile")
    assert profile is not None
    case = profile.Case()
    wrong = requests.get(f"{base}/api/connections", headers=headers, timeout=10)
    with pytest.raises(FailureGroup):
        case.validate_response(wrong, checks=checks)
