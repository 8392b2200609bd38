"""The one rule for every string mmc sends to a broker: what mosquitto can represent.

mosquitto reads names as C strings: a NUL ends them, so ``"anon\\u0000x"`` is ``"anon"`` to
the broker while mmc would compare the whole Python string (its anonymous-group and
held-role guards were bypassed that way, and a 2.0.11 broker crashed). The
dynamic-security plugin checks usernames, client ids, group and role names, ACL topics
with ``mosquitto_validate_utf8`` (lib/utf8_mosq.c, unchanged from 2.0.11 to 2.0.18), which
refuses, after the NUL has already cut the string:

- bytes that are not UTF-8 (for a JSON string: a lone surrogate such as ``"\\ud800"``),
- U+0000-U+001F and U+007F-U+009F (control characters),
- the non-characters U+FDD0-U+FDEF and U+xFFFE/U+xFFFF of every plane,
- more than 65,535 bytes (an MQTT string).

ACL topics are also checked with ``mosquitto_sub_topic_check`` (``+`` and ``#`` only as
whole levels, ``#`` last; at most 200 ``/``, the broker's TOPIC_HIERARCHY_LIMIT). Text
fields (``textname``, ``textdescription``) and passwords are not checked by the plugin, but
are C strings too: valid UTF-8, no NUL, at most 65,535 bytes.

A name mmc creates must also be addressable by URL afterwards (read, changed, deleted):
aiohttp refuses a request line over 8,190 bytes, so a new username, group or role name is
at most ``MAX_NEW_NAME_BYTES`` bytes, the longest whose every byte percent-encoded
(``%XX``) still fits the longest request line mmc serves for it (see ``_URL_OVERHEAD``).

Every route that takes a broker name (resource paths and bodies, both passthrough
routes, project-wide apply, import, client control) uses the validators here, so mmc
compares exactly the string the broker will see.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import ValidationError

MAX_STRING = 65535  # an MQTT string; mosquitto_validate_utf8 and topic checks refuse more
TOPIC_HIERARCHY_LIMIT = 200  # src/mosquitto_broker_internal.h: at most 200 '/' in a topic

# The longest request line naming a resource: "DELETE " + base path (a reverse proxy's
# prefix, up to 256 bytes reserved) + "/api/projects/" + project id (64) + "/brokers/" +
# broker id (64) + "/dynsec/clients/" + NAME + "/password" + "?force=true" + " HTTP/1.1".
AIOHTTP_MAX_LINE = 8190
_URL_OVERHEAD = 7 + 256 + 14 + 64 + 9 + 64 + 16 + 9 + 11 + 9
MAX_NEW_NAME_BYTES = (AIOHTTP_MAX_LINE - _URL_OVERHEAD) // 3  # 2577: "%XX" per byte

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NONCHARACTER = re.compile("[\ufdd0-\ufdef\ufffe\uffff]")


def _encoded(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Not valid UTF-8.") from None


def _within(encoded: bytes, limit: int) -> None:
    if len(encoded) > limit:
        raise ValidationError(f"Longer than {limit} bytes in UTF-8.")


def check_text(value: str) -> None:
    """A text field or password: a C string the broker stores as given."""
    if value.isascii() and len(value) <= MAX_STRING and "\x00" not in value:
        return  # the common case, without encoding it: ASCII is its own UTF-8
    encoded = _encoded(value)
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters (U+0000).")
    _within(encoded, MAX_STRING)


def check_name(value: str) -> None:
    """A username, client id, group or role name as mosquitto_validate_utf8 accepts it."""
    if value.isascii() and value.isprintable() and len(value) <= MAX_STRING:
        # The common case, in one pass: printable ASCII has no NUL, no control character
        # (U+0000-U+001F, U+007F), no non-character and is its own UTF-8.
        return
    encoded = _encoded(value)
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters (U+0000).")
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters (U+0001-U+001F, U+007F-U+009F).")
    if _NONCHARACTER.search(value) or any((ord(c) & 0xFFFE) == 0xFFFE for c in value):
        raise ValidationError(
            "Must not contain Unicode non-characters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF)."
        )
    _within(encoded, MAX_STRING)


def check_new_name(value: str) -> None:
    """A name mmc creates: also short enough to be read back and deleted by URL."""
    check_name(value)
    _within(value.encode("utf-8"), MAX_NEW_NAME_BYTES)


def check_topic(value: str) -> None:
    """An ACL topic filter as mosquitto_sub_topic_check accepts it."""
    check_name(value)
    levels = value.split("/")
    if len(levels) - 1 > TOPIC_HIERARCHY_LIMIT:
        raise ValidationError(f"More than {TOPIC_HIERARCHY_LIMIT} '/' separators.")
    for i, level in enumerate(levels):
        if "+" in level and level != "+":
            raise ValidationError("'+' must be a whole topic level.")
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValidationError("'#' must be the whole last topic level.")


# ------------------------------------------------------------ passthrough commands

# Parameters of the plugins' commands that are names, by the rule they follow. Every other
# string anywhere in a command follows check_text.
NAME_KEYS: Mapping[str, Callable[[str], None]] = {
    "command": check_name,
    "username": check_name,
    "clientid": check_name,
    "groupname": check_name,
    "rolename": check_name,
    "acltype": check_name,
    "topic": check_name,  # the filter's shape is the plugin's to answer
}
# The plugins read keys with cJSON_GetObjectItem, which ignores case: "GroupName" is
# "groupname" to the broker. These must be spelled exactly, or a guard that looks for
# "groupname" would not see what the broker acts on.
KNOWN_KEYS = frozenset(
    {
        *NAME_KEYS,
        "password",
        "textname",
        "textdescription",
        "roles",
        "groups",
        "clients",
        "acls",
        "priority",
        "allow",
        "verbose",
        "count",
        "offset",
        "correlationData",
        "commands",
    }
)
_KNOWN_FOLDED = {k.lower(): k for k in KNOWN_KEYS}
# The name a command creates: it must be addressable by URL afterwards.
CREATES = {"createclient": "username", "creategroup": "groupname", "createrole": "rolename"}


def ascii_lower(value: str) -> str:
    """Lower case as strcasecmp sees it (ASCII only: Python's lower() maps e.g. U+212A to k)."""
    return value.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# No plugin command nests deeper than a few levels; the walk below recurses, so it is bounded.
MAX_DEPTH = 32


def _check_value(value: Any, rule: Callable[[str], None] | None, depth: int = 0) -> Any:
    """Problems of a JSON value (nested dict of messages), or None."""
    if depth > MAX_DEPTH and isinstance(value, list | dict):
        return [f"Nested more than {MAX_DEPTH} levels deep."]
    if isinstance(value, str):
        try:
            (rule or check_text)(value)
        except ValidationError as exc:
            return exc.messages
        return None
    if isinstance(value, list):
        found = {}
        for i, item in enumerate(value):
            if problem := _check_value(item, None, depth + 1):
                found[str(i)] = problem
        return found or None
    if isinstance(value, dict):
        return _check_object(value, depth) or None
    return None


def _check_object(obj: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    problems: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in obj.items():
        try:
            check_text(key)
        except ValidationError as exc:
            problems[repr(key)] = [f"Key: {m}" for m in exc.messages]
            continue
        folded = ascii_lower(key)
        if folded in seen:
            problems[key] = [f"The broker reads keys without regard to case: {seen[folded]!r}."]
            continue
        seen[folded] = key
        known = _KNOWN_FOLDED.get(folded)
        if known is not None and known != key:
            problems[key] = [
                f"Write it as {known!r}: the broker reads keys without regard to case."
            ]
            continue
        found = _check_value(value, NAME_KEYS.get(key), depth + 1)
        if found:
            problems[key] = found
    return problems


def command_problems(command: Mapping[str, Any]) -> dict[str, Any]:
    """What in one plugin command the broker would read differently (field -> messages).

    Unknown commands and parameters pass: the passthrough forwards what the plugin knows.
    """
    problems = _check_object(command)
    name = command.get("command")
    key = CREATES.get(ascii_lower(name)) if isinstance(name, str) else None
    if key and isinstance(command.get(key), str) and key not in problems:
        try:
            check_new_name(command[key])
        except ValidationError as exc:
            problems[key] = exc.messages
    return problems
