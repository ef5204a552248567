"""JSON Schema to a llama.cpp GBNF grammar whose every sentence is valid JSON for the schema.

Written instead of the stock converter (llama_cpp.llama_grammar) after measuring its gaps
(see schema_grammar for the keyword table). Where the grammar cannot express a keyword
exactly it is made stricter, never looser; the few keywords it cannot express at all are
left to validation and resampling, and keywords outside the supported set are reported by
`schema_problems` so a config using them is rejected at load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from edge_agent.inference.gbnf_regex import PatternError, pattern_body
from edge_agent.inference.gbnf_text import (
    JSON_CHAR,
    int_bounds,
    integer_range,
    json_literal,
    literal,
    number_range,
)

ANNOTATIONS = frozenset({
    "$schema", "$id", "$comment", "$anchor", "title", "description", "default", "examples",
    "deprecated", "readOnly", "writeOnly", "format", "contentMediaType", "contentEncoding"})
IN_GRAMMAR = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "anyOf", "oneOf", "allOf", "$ref",
    "$defs", "definitions"})
BY_VALIDATION = frozenset({"multipleOf", "uniqueItems", "minProperties", "maxProperties"})
SUPPORTED = ANNOTATIONS | IN_GRAMMAR | BY_VALIDATION
LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
MAX_ENUM_RANGE = 256  # an integer range with multipleOf up to this size becomes an enum
MAX_MERGE_DEPTH = 32

BASE_RULES = {
    "sp": '" "?',
    "char": JSON_CHAR,
    "string": '"\\"" char* "\\""',
    "number": '"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?',
    "value": 'object | array | string | number | "true" | "false" | "null"',
    "object": '"{" (string ":" sp value ("," sp string ":" sp value)*)? "}"',
    "array": '"[" (value ("," sp value)*)? "]"',
}


class SchemaGrammarError(ValueError):
    """The schema cannot be turned into a grammar; `where` is the JSON pointer-ish path."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where or 'schema'}: {reason}")


def schema_problems(schema: Any, path: str = "") -> list[str]:
    """Paths of keywords this pipeline cannot honour (for rejection at config load)."""
    out: list[str] = []
    if not isinstance(schema, Mapping):
        return out
    for key, sub in schema.items():
        here = f"{path}/{key}" if path else key
        if key not in SUPPORTED or (
                key == "$ref" and not (isinstance(sub, str) and sub.startswith("#/"))):
            out.append(here)
        elif key == "pattern" and isinstance(sub, str):
            try:
                pattern_body(sub)
            except PatternError:
                out.append(here)
        elif key in ("properties", "$defs", "definitions") and isinstance(sub, Mapping):
            for name, s in sub.items():
                out += schema_problems(s, f"{here}/{name}")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(sub, list):
            for i, s in enumerate(sub):
                out += schema_problems(s, f"{here}/{i}")
        elif key in ("items", "additionalProperties"):
            out += schema_problems(sub, here)
    return out


def schema_to_gbnf(schema: Mapping[str, Any]) -> str:
    """The grammar text; raises SchemaGrammarError for what cannot be expressed."""
    problems = schema_problems(schema)
    if problems:
        raise SchemaGrammarError(problems[0], "keyword not supported by grammar generation")
    return _Builder(schema).build()


def _rule_name(hint: str) -> str:
    return re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-").lower()[:40] or "r"


def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Both schemas at once, as far as a grammar needs (validation checks the rest)."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif key == "properties":
            props = dict(out[key])
            for name, sub in value.items():
                props[name] = {"allOf": [props[name], sub]} if name in props else sub
            out[key] = props
        elif key == "required":
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key in LOWER:
            out[key] = max(out[key], value)
        elif key in UPPER:
            out[key] = min(out[key], value)
        elif key == "type":
            out[key] = _type_meet(out[key], value)
        else:
            out[key] = value
    return out


def _type_meet(a: str | list[str], b: str | list[str]) -> list[str]:
    sa = {a} if isinstance(a, str) else set(a)
    sb = {b} if isinstance(b, str) else set(b)
    for s, other in ((sa, sb), (sb, sa)):
        if "number" in s and "integer" in other:
            s.add("integer")
    return sorted(sa & sb)


def _infer_types(s: Mapping[str, Any]) -> list[str]:
    t = s.get("type")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return list(t)
    keys = set(s)
    if keys & {"properties", "required", "additionalProperties", "minProperties",
               "maxProperties"}:
        return ["object"]
    if keys & {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"}:
        return ["array"]
    if keys & {"minLength", "maxLength", "pattern"}:
        return ["string"]
    if keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}:
        return ["number"]
    return ["null", "boolean", "object", "array", "number", "string"]


def _rep(expr: str, lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{expr}*" if lo == 0 else (f"{expr}+" if lo == 1 else f"{expr}{{{lo},}}")
    if hi == 0:
        return ""
    if (lo, hi) == (0, 1):
        return f"{expr}?"
    return f"{expr}{{{lo}}}" if lo == hi else f"{expr}{{{lo},{hi}}}"


class _Builder:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.by_body: dict[str, str] = {}
        self.refs: dict[str, str] = {}
        self.used_base: set[str] = set()

    def build(self) -> str:
        body = self.visit(self.root, "root-value", "", 0)
        lines = [f"root ::= {body}"]
        lines += [f"{k} ::= {v}" for k, v in self.rules.items()]
        if "value" in self.used_base:
            self.used_base |= {"object", "array", "string", "number", "char", "sp"}
        if "string" in self.used_base:
            self.used_base.add("char")
        lines += [f"{k} ::= {BASE_RULES[k]}" for k in BASE_RULES if k in self.used_base]
        return "\n".join(lines) + "\n"

    def base(self, name: str) -> str:
        self.used_base.add(name)
        return name

    def add(self, hint: str, body: str) -> str:
        if body in self.by_body:
            return self.by_body[body]
        name = base = _rule_name(hint)
        n = 1
        while name in self.rules or name in BASE_RULES or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        self.by_body[body] = name
        return name

    def resolve(self, ref: str, where: str) -> Any:
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise SchemaGrammarError(where, f"$ref {ref!r} does not resolve")
            node = node[part]
        return node

    def visit(self, schema: Any, hint: str, where: str, depth: int) -> str:
        if depth > MAX_MERGE_DEPTH:
            raise SchemaGrammarError(where, "schema nests or refers to itself too deeply")
        if schema is True:
            return self.base("value")
        if schema is False or not isinstance(schema, Mapping):
            raise SchemaGrammarError(where, "a false schema admits no value")
        s = {k: v for k, v in schema.items() if k not in ANNOTATIONS}
        s.pop("$defs", None)
        s.pop("definitions", None)
        if "$ref" in s:
            ref = s.pop("$ref")
            if not s:
                return self.ref_rule(ref, where, depth)
            s = merge(self.resolve(ref, where), s)
            return self.visit(s, hint, where, depth + 1)
        if "allOf" in s:
            parts = s.pop("allOf")
            for part in parts:
                if isinstance(part, Mapping) and "$ref" in part:
                    part = merge(self.resolve(part["$ref"], where),
                                 {k: v for k, v in part.items() if k != "$ref"})
                s = merge(s, part)
            return self.visit(s, hint, where, depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in s:
                branches = s.pop(key)
                alts = [self.visit(merge(s, b) if isinstance(b, Mapping) else b,
                                   f"{hint}-{i}", f"{where}/{key}/{i}", depth + 1)
                        for i, b in enumerate(branches)]
                return self.add(hint, " | ".join(alts))
        if not s:
            return self.base("value")
        if "const" in s or "enum" in s:
            return self.enum(s, hint, where)
        alts = [self.typed(t, s, hint, where, depth) for t in _infer_types(s)]
        return self.add(hint, " | ".join(alts))

    def ref_rule(self, ref: str, where: str, depth: int) -> str:
        if ref not in self.refs:
            name = self.add("ref-" + ref.rsplit("/", 1)[-1], f"<pending {ref}>")
            self.refs[ref] = name
            body = self.visit(self.resolve(ref, where), name + "-body", where, depth + 1)
            del self.by_body[f"<pending {ref}>"]
            self.rules[name] = body
        return self.refs[ref]

    def enum(self, s: Mapping[str, Any], hint: str, where: str) -> str:
        values = [s["const"]] if "const" in s else list(s["enum"])
        rest = {k: v for k, v in s.items() if k not in ("enum", "const")}
        ok = [v for v in values if jsonschema.Draft202012Validator(rest).is_valid(v)]
        if "const" in s and "enum" in s:
            ok = [v for v in ok if v in s["enum"]]
        if not ok:
            raise SchemaGrammarError(where, "no enum/const value satisfies the schema")
        return self.add(hint, " | ".join(json_literal(v) for v in ok))

    def typed(self, t: str, s: Mapping[str, Any], hint: str, where: str, depth: int) -> str:
        if t == "null":
            return '"null"'
        if t == "boolean":
            return '("true" | "false")'
        if t == "integer":
            return self.integer(s, where)
        if t == "number":
            bounded = any(k in s for k in ("minimum", "maximum", "exclusiveMinimum",
                                             "exclusiveMaximum"))
            return (number_range(dict(s)) if bounded else None) or self.base("number")
        if t == "string":
            return self.string(s)
        if t == "array":
            return self.array(s, hint, where, depth)
        if t == "object":
            return self.object(s, hint, where, depth)
        raise SchemaGrammarError(where, f"unknown type {t!r}")

    def integer(self, s: Mapping[str, Any], where: str) -> str:
        lo, hi = int_bounds(dict(s))
        step = s.get("multipleOf")
        if isinstance(step, int) and lo is not None and hi is not None \
                and hi - lo < MAX_ENUM_RANGE:
            values = [v for v in range(lo, hi + 1) if v % step == 0]
            if not values:
                raise SchemaGrammarError(where, "no integer in range is a multiple of "
                                                f"{step}")
            return "(" + " | ".join(json_literal(v) for v in values) + ")"
        expr = integer_range(lo, hi)
        if expr is None:
            raise SchemaGrammarError(where, f"no integer lies in [{lo}, {hi}]")
        return expr

    def string(self, s: Mapping[str, Any]) -> str:
        if "pattern" in s:
            return f'"\\"" {pattern_body(s["pattern"])} "\\""'
        lo, hi = int(s.get("minLength", 0)), s.get("maxLength")
        if lo == 0 and hi is None:
            return self.base("string")
        self.base("char")
        return f'"\\"" {_rep("char", lo, None if hi is None else int(hi))} "\\""'

    def array(self, s: Mapping[str, Any], hint: str, where: str, depth: int) -> str:
        prefix = list(s.get("prefixItems", []))
        lo, hi = int(s.get("minItems", 0)), s.get("maxItems")
        if hi is not None:
            prefix = prefix[:int(hi)]
        items = s.get("items", not prefix)
        parts = [self.visit(p, f"{hint}-{i}", f"{where}/prefixItems/{i}", depth + 1)
                 for i, p in enumerate(prefix)]
        rest_lo = max(0, lo - len(prefix))
        rest_hi = None if hi is None else int(hi) - len(prefix)
        if items is False:
            if rest_lo:
                raise SchemaGrammarError(where, "minItems exceeds prefixItems with items=false")
            rest_hi = 0
        item = "" if rest_hi == 0 else self.visit(items, f"{hint}-item", f"{where}/items",
                                                  depth + 1)
        if parts:
            body = ' "," sp '.join(parts)
            more = _rep(f'("," sp {item})', rest_lo, rest_hi) if item else ""
            self.base("sp")
            return self.add(hint, f'"[" {body} {more} "]"'.replace("  ", " "))
        if not item:
            return '"[]"'
        self.base("sp")
        first_hi = None if rest_hi is None else rest_hi - 1
        tail = _rep(f'("," sp {item})', max(rest_lo - 1, 0), first_hi)
        seq = f"{item} {tail}".strip()
        return self.add(hint, f'"[" {seq} "]"' if rest_lo else f'"[" ({seq})? "]"')

    def object(self, s: Mapping[str, Any], hint: str, where: str, depth: int) -> str:
        props: dict[str, Any] = dict(s.get("properties", {}))
        extra_schema = s.get("additionalProperties", False)
        for name in s.get("required", []):
            if name not in props:
                if extra_schema is False:
                    raise SchemaGrammarError(where, f"required {name!r} is not allowed")
                props[name] = extra_schema
        required = [k for k in props if k in s.get("required", [])]
        optional = [k for k in props if k not in required]
        self.base("sp")
        kv = {k: self.add(f"{hint}-{k}-kv", f'{literal(json.dumps(k))} ":" sp '
                          + self.visit(props[k], f"{hint}-{k}", f"{where}/properties/{k}",
                                       depth + 1)) for k in props}
        extra = ""
        if extra_schema is not False:
            value = self.visit(extra_schema, f"{hint}-extra", f"{where}/additionalProperties",
                               depth + 1)
            extra = self.add(f"{hint}-extra-kv", f'{self.base("string")} ":" sp {value}')
        extra_star = f'("," sp {extra})*' if extra else ""
        if required:
            seq = ' "," sp '.join(kv[k] for k in required)
            seq += "".join(f' ("," sp {kv[k]})?' for k in optional)
            return self.add(hint, f'"{{" {seq} {extra_star} "}}"'.replace("  ", " "))
        tail = extra_star
        alts = [f"{extra} {extra_star}"] if extra else []
        for k in reversed(optional):
            alts.insert(0, f"{kv[k]} {tail}".strip())
            tail = f'("," sp {kv[k]})? {tail}'.strip()
            if len(tail) > 200:
                tail = self.add(f"{hint}-after-{k}", tail)
        if not alts:
            return '"{}"'
        return self.add(hint, f'"{{" ({" | ".join(alts)})? "}}"')
