"""Benchmarks of mmc against bare MQTT and ``mosquitto_ctrl``.

``make bench`` runs bench.run, ``make bench-fleet`` runs bench.fleet.
"""
