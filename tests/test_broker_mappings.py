"""Mapping tests: pure functions on the payloads documented in the project's research
notes (``../shared/notes/mmc-and-mosquitto.md`` beside the repository, sections 2.1, 3.1, 4).

No Pro broker runs in the tests, so the Pro payloads (license, listeners, listPlugins,
bridge plugins) are checked here on the documented shapes, with 2.1's (whose listeners
test_brokers_api also reads from a real 2.1 broker); the $SYS folding and history are
checked on the topics mosquitto 2.0 publishes.
"""

from __future__ import annotations

from mmc.brokers import mappings
from mmc.brokers.capabilities import from_plugins
from mmc.brokers.control import RESPONSE_TOPICS
from mmc.brokers.sys_tree import SysHistory, fold

# --------------------------------------------------------------- license (section 3.1)


def test_mapping_license_as_the_mmc_reads_it() -> None:
    data = {
        "edition": "pro",
        "issuedBy": "Cedalo AG",
        "issuedTo": "ACME",
        "validSince": 1700000000000,
        "validUntil": "2027-01-01T00:00:00Z",
        "features": [
            {"name": "mosquitto-clients", "count": 1000},
            {"name": "client-control"},
            {"name": "influxdb-bridge"},
        ],
    }
    assert mappings.license_info(data) == {
        "plan": "pro",
        "edition": "pro",
        "issuedBy": "Cedalo AG",
        "issuedTo": "ACME",
        "validSince": 1700000000000,
        "validUntil": 1798761600000,
        "features": ["mosquitto-clients", "client-control", "influxdb-bridge"],
    }


def test_mapping_license_keeps_a_plan_and_never_invents_dates() -> None:
    info = mappings.license_info({"plan": "starter", "edition": "pro", "features": ["a", 3]})
    assert info["plan"] == "starter"
    assert info["validSince"] is None
    assert info["validUntil"] is None
    assert info["features"] == ["a"]


# ------------------------------------------------------------- listeners (section 2.1)


def test_mapping_listeners_of_open_source_2_1() -> None:
    # test/broker/17-control-list-listeners.py@v2.1.2
    data = {
        "listeners": [
            {"port": 1883, "protocol": "mqtt", "tls": False},
            {"port": 8080, "protocol": "mqtt+websockets", "tls": False},
            {"port": 8883, "protocol": "mqtt", "tls": True},
            {"port": 0, "protocol": "mqtt", "socket-path": "mqtt.sock", "tls": False},
        ]
    }
    assert mappings.listeners(data) == [
        {
            "id": 1,
            "port": 1883,
            "tls": False,
            "protocol": "mqtt",
            "requireCertificate": False,
            "certs": [],
        },
        {
            "id": 2,
            "port": 8080,
            "tls": False,
            "protocol": "mqtt+websockets",
            "requireCertificate": False,
            "certs": [],
        },
        {
            "id": 3,
            "port": 8883,
            "tls": True,
            "protocol": "mqtt",
            "requireCertificate": False,
            "certs": [],
        },
        {
            "id": 4,
            "port": 0,
            "tls": False,
            "protocol": "mqtt",
            "requireCertificate": False,
            "certs": [],
            "socketPath": "mqtt.sock",
        },
    ]


def test_mapping_listeners_of_pro_with_ids_and_certificates() -> None:
    data = {
        "listeners": [
            {
                "id": 7,
                "port": 8883,
                "bind-address": "192.0.2.10",
                "protocol": "mqtt",
                "tls": True,
                "require-certificate": True,
                "certs": [{"certificate_id": "c1", "name": "Plant CA", "filename": "ca.pem"}],
            }
        ]
    }
    assert mappings.listeners(data) == [
        {
            "id": 7,
            "port": 8883,
            "bindAddress": "192.0.2.10",
            "tls": True,
            "protocol": "mqtt",
            "requireCertificate": True,
            "certs": [{"certificate_id": "c1", "name": "Plant CA", "filename": "ca.pem"}],
        }
    ]


# -------------------------------------------------- listPlugins -> features (2.1, 3.1)


def test_mapping_plugins_to_features() -> None:
    # The Pro example of docs.cedalo.com/asyncapi/old/broker, plus a bridge plugin.
    plugins = [
        {"name": "dynamic-security", "control-endpoints": ["$CONTROL/dynamic-security/v1"]},
        {"name": "inspect", "version": "1.0", "control-endpoints": ["$CONTROL/cedalo/inspect/v1"]},
        {"name": "client-control", "control-endpoints": ["$CONTROL/cedalo/client-control/v1"]},
        {
            "name": "certificate-management",
            "control-endpoints": ["$CONTROL/certificate-management/v1"],
        },
        {"name": "influxdb-bridge", "control-endpoints": ["$CONTROL/cedalo/influxdb-bridge/v1"]},
        {"name": "no-endpoints"},
        "not an object",
    ]
    features, bridges = from_plugins(plugins)
    assert features == {
        "dynamicSecurity",
        "inspect",
        "clientControl",
        "certificateManagement",
        "bridges",
    }
    assert bridges == ["cedalo/influxdb-bridge"]


def test_bridge_plugin_replies_are_listened_for_under_both_documented_topics() -> None:
    assert RESPONSE_TOPICS["$CONTROL/cedalo/influxdb-bridge/v1/response"] == (
        "cedalo/influxdb-bridge"
    )
    assert RESPONSE_TOPICS["$CONTROL/cedalo/influx-db/v1/response"] == "cedalo/influxdb-bridge"
    assert RESPONSE_TOPICS["$CONTROL/cedalo/mongo-db/v1/response"] == "cedalo/mongodb-bridge"


# ---------------------------------------------------------------- bridges (sections 3.1, 4)


def test_mapping_bridge_listing() -> None:
    sys_values = {
        "$SYS/broker/connection/host.example.com.cloud/state": "1",
        "$SYS/broker/connection/edge-gw/state": "0",
        "$SYS/broker/connection/far.b2a/state": "1",
        "$SYS/broker/uptime": "5 seconds",
    }
    seen = mappings.conf_bridges(sys_values)
    origins = mappings.incoming_bridges(
        seen, {"bridges": [{"id": "far.b2a", "clientid": "far.b2a"}], "complete": True}
    )
    listing = mappings.bridge_listing(
        sys_values,
        ["cedalo/influxdb-bridge"],
        ["mosquitto-clients", "influxdb-bridge", "mongodb-bridge"],
        origins,
    )
    conf = {"isActive": True, "source": "config", "origin": "own"}
    assert listing == [
        {"id": "edge-gw", "name": "edge-gw", **conf},
        {"id": "host.example.com.cloud", "name": "cloud", **conf},
        # far.b2a: another broker's bridge, published here by its client: not listed.
        {
            "id": "influxdb-bridge",
            "name": "influxdb-bridge",
            "isActive": True,
            "source": "plugin",
            "origin": "own",
        },
        # Licensed but not loaded: not configured in mosquitto.conf.
        {
            "id": "mongodb-bridge",
            "name": "mongodb-bridge",
            "isActive": False,
            "source": "license",
            "origin": "own",
        },
    ]


def test_mapping_bridge_origins_never_guess_own() -> None:
    sys_values = {"$SYS/broker/connection/a/state": "1", "$SYS/broker/connection/b/state": "1"}
    ids = [entry["id"] for entry in mappings.bridge_listing(sys_values)]
    assert ids == ["a", "b"]
    # No plugin answer: nobody's bridge is called the broker's own.
    assert {e["origin"] for e in mappings.bridge_listing(sys_values)} == {"unknown"}
    # An answer covers only the ids seen before it was asked for.
    origins = mappings.incoming_bridges(["a"], {"bridges": [], "complete": True})
    assert origins is not None
    assert (origins.origin("a"), origins.origin("b")) == ("own", "unknown")
    # The plugin dropped notes at its bound: what it does not list is not known to be own.
    partial = mappings.incoming_bridges(
        ["a", "b"], {"bridges": [{"id": "b", "clientid": "x"}], "complete": False}
    )
    assert partial is not None
    assert (partial.origin("a"), partial.origin("b")) == ("unknown", "incoming")
    # Anything but the plugin's shape (Pro's client-control, an older plugin) is no answer.
    assert mappings.incoming_bridges(["a"], {}) is None
    assert mappings.incoming_bridges(["a"], None) is None


def test_mapping_conf_bridge_status() -> None:
    assert mappings.conf_bridge_status("h.b", "1", None) == {"id": "h.b", "connected": True}
    assert mappings.conf_bridge_status("h.b", "0", 1700000000000) == {
        "id": "h.b",
        "connected": False,
        "since": 1700000000000,
    }


def test_mapping_bridge_plugin_status() -> None:
    # getStatus' payload is not documented: both likely spellings are understood.
    assert mappings.plugin_bridge_status("influxdb-bridge", {"connected": True, "since": 5}) == {
        "id": "influxdb-bridge",
        "connected": True,
        "since": 5,
    }
    assert mappings.plugin_bridge_status(
        "mongodb-bridge", {"status": "Disconnected", "lastConnect": "2026-01-01T00:00:00Z"}
    ) == {"id": "mongodb-bridge", "connected": False, "since": 1767225600000}
    assert mappings.plugin_bridge_status("x-bridge", {"state": "running"})["connected"] is True
    assert mappings.plugin_bridge_api(mappings.plugin_bridge_id("cedalo/x-bridge")) == (
        "cedalo/x-bridge"
    )


# --------------------------------------------------------------------- $SYS (section 4)


def test_fold_nests_topics_and_keeps_strings() -> None:
    values = {
        "$SYS/broker/version": "mosquitto version 2.0.11",
        "$SYS/broker/clients/total": "3",
        "$SYS/broker/retained messages/count": "40",
        "$SYS/broker/load/messages/received/1min": "1.97",
        "$SYS/broker/log/N": "a log line is not state",
    }
    assert fold(values) == {
        "$SYS": {
            "broker": {
                "version": "mosquitto version 2.0.11",
                "clients": {"total": "3"},
                "retained messages": {"count": "40"},
                "load": {"messages": {"received": {"1min": "1.97"}}},
            }
        }
    }


def test_fold_keeps_a_value_that_is_also_a_prefix() -> None:
    values = {"$SYS/broker/a": "1", "$SYS/broker/a/b": "2"}
    assert fold(values) == {"$SYS": {"broker": {"a": {"_value": "1", "b": "2"}}}}


def test_history_is_a_bounded_ring_of_copies() -> None:
    history = SysHistory(2)
    values = {"$SYS/broker/uptime": "1 seconds"}
    history.record(values, 1)
    values["$SYS/broker/uptime"] = "2 seconds"
    history.record(values, 2)
    values["$SYS/broker/uptime"] = "3 seconds"
    history.record(values, 3)
    assert len(history) == 2
    assert history.entries() == [
        {"topics": {"$SYS": {"broker": {"uptime": "2 seconds"}}}, "date": 2},
        {"topics": {"$SYS": {"broker": {"uptime": "3 seconds"}}}, "date": 3},
    ]
    disabled = SysHistory(0)
    disabled.record(values, 4)
    assert disabled.entries() == []
