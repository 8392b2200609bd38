"""The benchmarks' code keeps working: both run end to end at tiny sizes (no timing checks)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiomqtt

from bench import cpu, fleet, import_cost, publish, replicas
from bench import run as api
from bench.common import percentile


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_lag_p99_from_histogram_readings() -> None:
    before = {0.001: 10.0, 0.05: 10.0, 0.1: 10.0, float("inf"): 10.0}
    after = {0.001: 100.0, 0.05: 109.0, 0.1: 110.0, float("inf"): 110.0}
    assert fleet.lag_p99(before, after) == (0.05, 100)
    assert fleet.lag_p99(after, after) == (0.0, 0)


async def test_api_benchmark_runs(tmp_path: Path) -> None:
    sizes = replace(
        api.QUICK,
        concurrencies=(1, 2),
        max_requests=5,
        max_seconds=1.0,
        ctrl_runs=1,
        connections=3,
        listing_concurrency=2,
    )
    outcome = await api.run(sizes, tmp_path, log=lambda _: None)
    cases = {(r["case"], r["concurrency"]) for r in outcome["results"]}
    assert ("REST getClient", 2) in cases
    assert ("bare getClient", 2) in cases
    assert ("WS listClients", 2) in cases
    assert ("batching bare getClient", 2) in cases
    assert ("batching bare modifyClient", 1) not in cases  # c=1: nothing to batch
    assert ("GET /api/connections", 2) in cases
    assert all(r["errors"] == 0 for r in outcome["results"])
    assert len(outcome["targets"]) == 9
    assert "| REST getClient | 1 |" in api.report(outcome)
    api.write_json(outcome, tmp_path / "bench.json", "bench")


async def test_cpu_benchmark_runs(tmp_path: Path) -> None:
    got = await cpu.measure(tmp_path, requests=3, rounds=2, connections=2, log=lambda _: None)
    assert set(got) == {path.name for path in cpu.PATHS}
    assert all(len(figures) == 2 and all(f > 0 for f in figures) for figures in got.values())
    assert "| REST getClient | " in cpu.table({"after": got})


async def test_fleet_benchmark_runs(tmp_path: Path) -> None:
    outcome = await fleet.run(fleet.TINY, tmp_path, log=lambda _: None)
    assert len(outcome["restarts"]) == fleet.TINY.restarts
    for window in outcome["restarts"]:
        assert window["reconnect_attempts"] >= fleet.TINY.big_share
    assert outcome["listing"]["errors"] == 0
    assert outcome["rss_mb"] > 0
    assert "| all 6 connected" in fleet.report(outcome)
    assert "2 restarts out of 2" in fleet.report(outcome)


async def test_fleet_benchmark_imports_its_connections(tmp_path: Path) -> None:
    sizes = replace(fleet.TINY, via_import=True, restarts=1)
    outcome = await fleet.run(sizes, tmp_path, log=lambda _: None)
    assert outcome["created_how"] == "with mmc import-mmc"
    assert outcome["listing"]["errors"] == 0
    table = fleet.compare([outcome, outcome])
    assert "| created | " in table
    assert "with mmc import-mmc" in table


async def test_publish_benchmark_runs(tmp_path: Path, client_control_plugin: Path) -> None:
    outcome = await publish.run(
        publish.TINY, tmp_path, log=lambda _: None, plugin=client_control_plugin
    )
    results = {r["subscriptions"]: r for r in outcome["results"]}
    assert set(results) == {0, 10}
    assert all(r["median"] > 0 for r in results.values())
    assert len(outcome["targets"]) == 1
    assert "| current | 10 |" in publish.report(outcome)


def test_publish_benchmark_filters_do_not_match_its_topic() -> None:
    # Otherwise every case would deliver more copies than the one without subscriptions.
    topic = aiomqtt.Topic(publish.TOPIC)
    assert not any(topic.matches(f) for f in publish.other_filters(1000))


async def test_import_benchmark_runs(tmp_path: Path) -> None:
    """Tiny sizes; the proxy counts mmc's messages and commands on the wire."""
    outcome = await import_cost.run(1, None, 45, 42, 4, tmp_path, log=lambda _: None)
    [steps] = outcome["runs"]["after"]
    assert set(steps) == set(import_cost.STEPS)
    assert steps["again"]["commands"] == 5  # the plan's export, nothing else
    assert steps["envelope"]["listings"] == 2  # 40 deleteRole: one listClients, one listGroups
    assert steps["fresh"]["messages"] < steps["fresh"]["commands"] / 10
    assert steps["fresh"]["broker_cpu"] >= 0
    assert "| envelope | after |" in import_cost.table(outcome)


async def test_replicas_benchmark_runs(tmp_path: Path) -> None:
    outcome = await replicas.run(1, None, 0.5, tmp_path, log=lambda _: None)
    [results] = outcome["runs"]["after"]
    assert [r["case"].split(",")[0] for r in results] == [
        "REST modifyClient",
        "REST modifyClient",
        "REST modifyClient",
        "login store writes (reserve",
    ]
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in results)
    assert "| REST modifyClient, both replicas | after | 64 |" in replicas.table(outcome)
