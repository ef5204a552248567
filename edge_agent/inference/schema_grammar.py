"""JSON Schema to a llama.cpp grammar, and the checks that make "always validates" true.

Measured on the stock converter (llama_cpp.llama_grammar) with a random-weight model at
temperature 1.0 (tests/inference): it enforces object shape, `properties`, `required`,
`additionalProperties: false`, `enum`/`const`, nested objects, arrays with
`minItems`/`maxItems`, and string `minLength`/`maxLength`. It does not enforce numeric
`minimum`/`maximum`/`exclusive*`, and its string rule lets raw control characters through
(invalid JSON). Gaps closed: the `char` rule is patched to exclude control characters
(see llama.gbnf_for); integer ranges of up to 512 values are rewritten as enums, so the
grammar itself enforces them; every sample is then parsed strictly and validated with
jsonschema, and an invalid one (a non-integer number out of range, or an answer cut off by
`max_tokens`) is drawn again with another seed, up to a limit, after which the call fails
with InvalidOutput. Keywords the pipeline cannot honour at all (`not`, `if`/`then`/`else`,
`patternProperties`, remote `$ref`, ...) are listed by `unsupported_keywords` so the config
can reject them at load.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema

UNSUPPORTED = ("not", "if", "then", "else", "dependentSchemas", "patternProperties",
               "unevaluatedProperties")
MAX_ENUM = 512


def unsupported_keywords(schema: Any, path: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k in UNSUPPORTED:
                out.append(f"{path}/{k}" if path else k)
            elif k == "$ref" and isinstance(v, str) and not v.startswith("#"):
                out.append(f"{path}/$ref")
            out += unsupported_keywords(v, f"{path}/{k}" if path else k)
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            out += unsupported_keywords(v, f"{path}/{i}")
    return out


def tighten(schema: Any) -> Any:
    """A copy where small integer ranges become enums the grammar can enforce."""
    s = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer" and "enum" not in node:
                lo = node.get("minimum", None)
                hi = node.get("maximum", None)
                if "exclusiveMinimum" in node and isinstance(node["exclusiveMinimum"], int):
                    lo = node["exclusiveMinimum"] + 1
                if "exclusiveMaximum" in node and isinstance(node["exclusiveMaximum"], int):
                    hi = node["exclusiveMaximum"] - 1
                if isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo < MAX_ENUM:
                    step = node.get("multipleOf", 1)
                    node["enum"] = [v for v in range(lo, hi + 1) if v % step == 0]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(s)
    return s


def tool_choice_schema(tools: Sequence[Mapping[str, Any]], *, handoff: Sequence[str] = (),
                       output_schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One of: a call of an allowed tool with its arguments, a final answer, a handoff."""
    options: list[dict[str, Any]] = []
    for t in tools:
        options.append({"type": "object", "properties": {
            "tool": {"const": t["name"]}, "args": dict(t.get("params") or {"type": "object"})},
            "required": ["tool", "args"], "additionalProperties": False})
    answer = dict(output_schema) if output_schema else {
        "type": "object", "properties": {"answer": {"type": "string", "maxLength": 200}},
        "required": ["answer"], "additionalProperties": False}
    options.append({"type": "object", "properties": {"tool": {"const": "final_answer"},
                                                     "args": answer},
                    "required": ["tool", "args"], "additionalProperties": False})
    if handoff:
        options.append({"type": "object", "properties": {
            "tool": {"const": "handoff"},
            "args": {"type": "object", "properties": {
                "to": {"enum": list(handoff)},
                "note": {"type": "string", "maxLength": 200}},
                "required": ["to", "note"], "additionalProperties": False}},
            "required": ["tool", "args"], "additionalProperties": False})
    return {"oneOf": options} if len(options) > 1 else options[0]


def check(text: str, schema: Mapping[str, Any]) -> tuple[Any, str | None]:
    """Strict parse and validation: (value, None) or (None, reason)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(dict(schema)).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "value"
        return None, f"{where}: {error.message}"
    return value, None
