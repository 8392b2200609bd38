"""A short soak in CI: `make soak` runs the same for 10 minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.mosquitto import Mosquitto

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


@pytest.mark.timeout(120)
def test_short_soak_with_broker_restarts(mosquitto: Mosquitto) -> None:
    result = subprocess.run(
        [
            *(sys.executable, str(SOAK), "--minutes", "0.4", "--restart-every", "7", "--json"),
            *("--mosquitto", mosquitto.version),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.stdout.strip(), result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(figures, indent=2))
    assert figures["problems"] == [], figures
    assert result.returncode == 0
    assert figures["broker_restarts"] >= 2
    assert figures["requests"] > 500
    assert set(figures["by_status"]) <= {"200", "201", "204", "502", "503", "504"}
