"""What the tests and the benchmarks run mmc against, as real processes on 127.0.0.1:
mosquitto brokers with their TLS material (``mosquitto``), `mmc serve` (``serve``) and
throw-away PostgreSQL databases (``postgres``). Both ``tests/`` and ``bench/`` import
from here; nothing here imports either of them.
"""
