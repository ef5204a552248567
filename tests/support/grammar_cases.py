"""One schema per JSON Schema keyword people write for tool parameters.

Shared by the grammar tests and `bench/inference_grammar_keywords.py`, which measures how
often the stock converter's grammar and edge-agent's own grammar produce valid samples.
`by_grammar` says whether the grammar alone must guarantee validity (True) or whether the
keyword is left to validation and resampling (False).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Case(NamedTuple):
    keyword: str
    schema: dict[str, Any]
    by_grammar: bool = True


def obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False}


CASES = [
    Case("type", obj({"a": {"type": "integer"}, "b": {"type": "boolean"},
                      "c": {"type": ["string", "null"], "maxLength": 6}})),
    Case("enum/const", obj({"mode": {"enum": ["auto", "manual", 3, None]},
                            "v": {"const": "v1"}})),
    Case("required", obj({"a": {"type": "integer", "minimum": 0, "maximum": 9},
                          "b": {"type": "string", "maxLength": 4}}, required=["b"])),
    Case("additionalProperties", {"type": "object", "properties": {"k": {"type": "boolean"}},
                                  "additionalProperties": {"type": "integer", "minimum": 0,
                                                           "maximum": 99},
                                  "required": ["k"], "maxProperties": 3}, by_grammar=False),
    Case("nested objects", obj({"meta": obj({"lot": {"type": "string", "maxLength": 5},
                                             "inner": obj({"ok": {"type": "boolean"}})})})),
    Case("minimum/maximum (integer)", obj({"n": {"type": "integer", "minimum": -40,
                                                 "maximum": 125}})),
    Case("exclusiveMinimum/Maximum", obj({"n": {"type": "integer", "exclusiveMinimum": 0,
                                                "exclusiveMaximum": 1000}})),
    Case("minimum/maximum (number)", obj({"t": {"type": "number", "minimum": -20.5,
                                                "maximum": 120}})),
    Case("multipleOf", obj({"n": {"type": "integer", "minimum": 0, "maximum": 100,
                                  "multipleOf": 5}})),
    Case("minLength/maxLength", obj({"s": {"type": "string", "minLength": 2,
                                           "maxLength": 5}})),
    Case("string escapes and controls", obj({"s": {"type": "string", "maxLength": 24}})),
    Case("pattern", obj({"id": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
                         "q": {"type": "string", "pattern": "^\"?[^a-z]{1,4}\\\\$"}})),
    Case("items/minItems/maxItems", obj({"xs": {"type": "array", "items": {
        "type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 3}})),
    Case("prefixItems", obj({"p": {"type": "array", "prefixItems": [
        {"type": "integer", "minimum": 0, "maximum": 3}, {"enum": ["x", "y"]}],
        "items": False}})),
    Case("anyOf/oneOf", obj({"v": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 5},
                                             {"type": "string", "maxLength": 3}]}})),
    Case("allOf/$ref", {"$defs": {"chan": {"type": "integer", "minimum": 1, "maximum": 8}},
                        "allOf": [obj({"c": {"$ref": "#/$defs/chan"}}),
                                  {"required": ["c"]}]}),
    Case("uniqueItems", obj({"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                      "maxItems": 3, "uniqueItems": True}}), by_grammar=False),
]
