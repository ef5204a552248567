"""The built-in `kv` kind: shared key/value state an agent can read and write.

Values live in a replicated collection (`kv` unless `collection` says otherwise), so a
write commits with its `doc.version` outbox record and reaches the cloud like any document;
concurrent writes on the device and the cloud merge by the collection's rules (last writer
wins by hybrid logical clock for `kv`). Reads and writes are one transaction each.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.tools.options import Problems, unknown_keys

PARAMS: Mapping[str, Any] = {
    "type": "object",
    "properties": {"op": {"enum": ["get", "set"]},
                   "key": {"type": "string", "minLength": 1, "maxLength": 128,
                           "pattern": "^[A-Za-z0-9_.:-]+$"},
                   "value": {}},
    "required": ["op", "key"], "additionalProperties": False}
DESCRIPTION = ("Shared state: {\"op\": \"get\", \"key\": K} reads a value, {\"op\": \"set\", "
               "\"key\": K, \"value\": V} writes one (seen by the cloud too).")


def check_kv(options: Mapping[str, Any], base_dir: Path) -> Problems:
    problems = unknown_keys(options, {"collection"})
    c = options.get("collection", "kv")
    if not isinstance(c, str) or not c or "/" in c:
        problems.append(("collection", "must be a collection name without '/'", c))
    return problems
