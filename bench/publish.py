"""Publish throughput with the plugin's own subscriptions: ``python -m bench.publish``
(``make bench`` runs it after bench.run).

On mosquitto 2.0 the companion plugin keeps the subscriptions made through
``subscribeClient`` itself and matches every message a client publishes against them
(plugin/README.md). This measures what that costs the broker: one mosquitto 2.0 with the
plugin per (plugin build, subscription count), on loopback, and for each

- 0, 1,000 or 10,000 plugin subscriptions, made with ``subscribeClient`` on ``$CONTROL``:
  all but one on filters that do not match the published topic (exact ones and ones with
  '+' and '#' at different levels, sharing its first levels), and one that does, for a
  client id that is not connected (the plugin matches it and hands the broker a copy,
  which 2.0 drops for an absent client: every case delivers the same one copy);
- one subscriber with its own MQTT subscription to the topic, and one publisher that
  writes ``messages`` QoS 0 PUBLISH packets as fast as the socket takes them. Both are
  raw sockets with the packets encoded up front, so that neither Python client is the
  ceiling: the figure is how fast the broker takes them in and sends them on.

msg/s = messages / (first byte written .. last message received); beside it the broker's
CPU time per message (/proc), which other load on the machine moves less. The cases are
measured in turns (every other one backwards), ``repetitions`` times, and reported as
median, min and max. Target: at 10,000 subscriptions >= 0.8 x at 0 (same plugin), the
median of the ratios of the turns.
``--compare PATH`` measures another build of the plugin (an older one, say) side by
side with the same turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiomqtt

from bench.common import machine
from bench.run import write_json
from testbed.mosquitto import HOST, MosquittoBroker
from testbed.mqtt_wire import encode_varint

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN = REPO_ROOT / "plugin" / "mmc_client_control.so"
CONTROL = "$CONTROL/cedalo/client-control/v1"
TOPIC = "bench/pub/t"
RATIO = 0.8


@dataclass(frozen=True)
class PublishSizes:
    subscriptions: tuple[int, ...] = (0, 1000, 10000)
    messages: int = 100_000
    repetitions: int = 9
    payload: int = 64
    warmup: int = 2000
    # Bound of one measurement (an old plugin at 10,000 subscriptions took 26 s).
    max_seconds: float = 120.0


FULL = PublishSizes()
TINY = replace(FULL, subscriptions=(0, 10), messages=200, repetitions=1, warmup=10)


# ---------------------------------------------------------------- MQTT packets


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


def connect_packet(clientid: str) -> bytes:
    # MQTT 3.1.1, clean session, keepalive 60 s.
    return _packet(
        0x10, _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _string(clientid)
    )


def subscribe_packet(topic: str) -> bytes:
    return _packet(0x82, struct.pack("!H", 1) + _string(topic) + b"\x00")


def publish_packet(topic: str, payload: bytes) -> bytes:
    return _packet(0x30, _string(topic) + payload)


DISCONNECT = b"\xe0\x00"


async def _open(port: int, clientid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(connect_packet(clientid))
    connack = await reader.readexactly(4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"{clientid}: CONNACK {connack!r}")
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(DISCONNECT)
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()
    await writer.wait_closed()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0.0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    port: int, messages: int, payload: int, max_seconds: float, pid: int | None = None
) -> tuple[float, float]:
    """msg/s from the first byte published to the last message received, and the broker's
    (``pid``) CPU microseconds per message meanwhile: less moved by other load."""
    packet = publish_packet(TOPIC, b"x" * payload)
    expected = len(packet) * messages
    sub_reader, sub_writer = await _open(port, f"bench-sub-{os.getpid()}")
    pub_writer: asyncio.StreamWriter | None = None
    try:
        sub_writer.write(subscribe_packet(TOPIC))
        suback = await sub_reader.readexactly(5)
        if suback[0] != 0x90 or suback[4] != 0:
            raise RuntimeError(f"SUBACK {suback!r}")
        _, pub_writer = await _open(port, f"bench-pub-{os.getpid()}")
        data = packet * messages

        async def receive() -> int:
            # Every message is the same packet: counting bytes counts messages.
            got = 0
            while got < expected:
                chunk = await sub_reader.read(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
            return got

        receiving = asyncio.ensure_future(receive())
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        pub_writer.write(data)
        try:
            got = await asyncio.wait_for(receiving, max_seconds)
        except TimeoutError:
            got = 0
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu
        if got < expected:
            raise RuntimeError(
                f"{got // len(packet)} of {messages} messages arrived in {elapsed:.1f} s"
            )
        return messages / elapsed, cpu / messages * 1e6
    finally:
        if pub_writer is not None:
            await _close(pub_writer)
        await _close(sub_writer)


# ---------------------------------------------------------------- subscriptions


def other_filters(count: int) -> list[str]:
    """``count`` filters that do not match TOPIC, most of them sharing its first levels."""
    shapes: tuple[Callable[[int], str], ...] = (
        lambda i: f"bench/{i}/t",
        lambda i: f"bench/+/{i}",
        lambda i: f"+/pub/{i}",
        lambda i: f"bench/pub/{i}/#",
        lambda i: f"other/{i}/#",
    )
    return [shapes[i % len(shapes)](i) for i in range(count)]


async def subscribe_plugin(port: int, count: int) -> None:
    """``count`` plugin subscriptions: count - 1 that do not match TOPIC, one that does."""
    if count == 0:
        return
    commands = [
        {"command": "subscribeClient", "clientid": f"bench-idle-{i % 1000}", "topic": f}
        for i, f in enumerate(other_filters(count - 1))
    ]
    commands.append(
        {"command": "subscribeClient", "clientid": "bench-absent", "topic": "bench/+/t"}
    )
    async with aiomqtt.Client(HOST, port, identifier=f"bench-admin-{os.getpid()}") as admin:
        await admin.subscribe(f"{CONTROL}/response")
        for start in range(0, len(commands), 500):
            batch = commands[start : start + 500]
            await admin.publish(CONTROL, json.dumps({"commands": batch}), qos=1)
            async with asyncio.timeout(30):
                message = await anext(aiter(admin.messages))
            assert isinstance(message.payload, bytes)
            errors = [r for r in json.loads(message.payload)["responses"] if "error" in r]
            if errors:
                raise RuntimeError(f"subscribeClient: {errors[:3]}")


class _QuietBroker(MosquittoBroker):
    """The testbed's broker without its debug log: a log line per message would be
    what is measured."""

    def _config_text(self) -> str:
        text = super()._config_text()
        return text.replace("log_type all\n", "log_type error\nlog_type warning\nlog_type notice\n")


# ---------------------------------------------------------------- the benchmark


@dataclass
class Case:
    plugin: str  # "current", or the label of --compare
    subscriptions: int
    runs: list[float]
    cpu_us: list[float]  # the broker's CPU per message, run by run

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "median": round(self.median, 1),
            "min": round(min(self.runs), 1) if self.runs else 0.0,
            "max": round(max(self.runs), 1) if self.runs else 0.0,
            "spread_pct": round(spread(self.runs), 1),
            "cpu_us_median": round(statistics.median(self.cpu_us), 2) if self.cpu_us else 0.0,
        }


def spread(runs: Sequence[float]) -> float:
    """(max - min) / median, in percent."""
    if not runs:
        return 0.0
    return (max(runs) - min(runs)) / statistics.median(runs) * 100


async def run(
    sizes: PublishSizes,
    workdir: Path,
    log: Callable[[str], None] = print,
    *,
    plugin: Path = PLUGIN,
    compare: Path | None = None,
    compare_label: str = "compare",
) -> dict[str, Any]:
    plugins = {"current": plugin}
    if compare is not None:
        plugins[compare_label] = compare
    brokers: dict[tuple[str, int], MosquittoBroker] = {}
    cases: dict[tuple[str, int], Case] = {}
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        for label, path in plugins.items():
            for count in sizes.subscriptions:
                broker: MosquittoBroker = _QuietBroker(
                    workdir / f"{label}-{count}",
                    dynsec=False,
                    sys_interval=10,
                    extra_plugins=[path],
                    # No limit on subscriptions; a QoS 0 message queued for a slow
                    # subscriber is kept, not dropped (2.0 drops past 1000).
                    extra_conf="plugin_opt_max_subscriptions 0\nmax_queued_messages 0",
                )
                broker.start()
                brokers[label, count] = broker
                await subscribe_plugin(broker.port, count)
                await measure(broker.port, sizes.warmup, sizes.payload, sizes.max_seconds)
                cases[label, count] = Case(label, count, [], [])
        for rep in range(sizes.repetitions):
            # Every other turn backwards: no case always runs first after a pause.
            turn = list(brokers.items())
            for key, each in turn if rep % 2 == 0 else reversed(turn):
                rate, cpu_us = await measure(
                    each.port, sizes.messages, sizes.payload, sizes.max_seconds, each.pid
                )
                cases[key].runs.append(rate)
                cases[key].cpu_us.append(cpu_us)
                log(
                    f"  run {rep + 1}: {key[0]:<8} {key[1]:>6} subscriptions  {rate:9.0f} msg/s"
                    f"  broker CPU {cpu_us:5.2f} us/msg"
                )
    finally:
        for each in brokers.values():
            each.stop()
    load_after = os.getloadavg()
    return {
        "benchmark": "publish",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "loadavg_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "sizes": asdict(sizes),
        "plugins": {label: str(path) for label, path in plugins.items()},
        "results": [c.to_dict() for c in cases.values()],
        "seconds": round(time.monotonic() - started, 1),
        "targets": targets(list(cases.values()), sizes),
    }


def targets(cases: list[Case], sizes: PublishSizes) -> list[dict[str, Any]]:
    """Judged turn by turn: the two cases of one turn ran seconds apart, so other load on
    the machine moves both alike; the median of the turns' ratios is the figure."""
    low, high = min(sizes.subscriptions), max(sizes.subscriptions)
    by = {(c.plugin, c.subscriptions): c for c in cases}
    base, loaded = by.get(("current", low)), by.get(("current", high))
    if base is None or loaded is None or low == high or not base.runs:
        return []
    ratios = [b / max(a, 1e-9) for a, b in zip(base.runs, loaded.runs, strict=True)]
    ratio = statistics.median(ratios)
    return [
        {
            "target": f"publish msg/s with {high:,} plugin subscriptions >= {RATIO} x with {low}",
            "measured": (
                f"{ratio:.2f}x (median of {len(ratios)} turns, {min(ratios):.2f}-"
                f"{max(ratios):.2f}); medians {loaded.median:.0f} vs {base.median:.0f} msg/s"
            ),
            "pass": ratio >= RATIO,
        }
    ]


def report(outcome: dict[str, Any]) -> str:
    results = outcome["results"]
    lines = [
        "| plugin | subscriptions | median msg/s | min | max | spread | vs 0 | broker CPU us/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["plugin"]: r["median"] for r in results if r["subscriptions"] == 0}
    for r in results:
        ratio = r["median"] / base[r["plugin"]] if base.get(r["plugin"]) else 0.0
        lines.append(
            f"| {r['plugin']} | {r['subscriptions']:,} | {r['median']:,.0f} | {r['min']:,.0f} "
            f"| {r['max']:,.0f} | {r['spread_pct']:.0f} % | {ratio:.2f}x "
            f"| {r['cpu_us_median']:.2f} |"
        )
    load = outcome["loadavg_1min"]
    lines += [
        "",
        f"{outcome['sizes']['messages']:,} messages per run, {outcome['sizes']['repetitions']} "
        f"runs per case in turns; load average {load[0]} before, {load[1]} after",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    for t in outcome["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'PASS' if t['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plugin", type=Path, default=PLUGIN, help="the build measured")
    parser.add_argument("--compare", type=Path, help="another build, measured side by side")
    parser.add_argument("--compare-label", default="compare", help="its name in the table")
    parser.add_argument("--messages", type=int, default=FULL.messages)
    parser.add_argument("--repetitions", type=int, default=FULL.repetitions)
    args = parser.parse_args(argv)
    for path in (args.plugin, args.compare):
        if path is not None and not path.is_file():
            print(f"no plugin at {path}: `make plugin` builds it", file=sys.stderr)
            return 2
    sizes = replace(FULL, messages=args.messages, repetitions=args.repetitions)
    with tempfile.TemporaryDirectory(prefix="mmc-bench-publish-") as tmp:
        outcome = asyncio.run(
            run(
                sizes,
                Path(tmp),
                plugin=args.plugin,
                compare=args.compare,
                compare_label=args.compare_label,
            )
        )
    print()
    print(report(outcome))
    print(f"\nwritten to {write_json(outcome, args.json, 'publish')}")
    return 0 if all(t["pass"] for t in outcome["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
