"""JSON Schema for model output: the grammar, the strict check, the agent's choice schema.

Measured with `python -m bench.inference_grammar_keywords`: 100 samples per keyword at
temperature 1.0 from the random-weight test model, no resampling, each sample checked by a
strict JSON parse and jsonschema (Draft 2020-12). Under the stock converter's grammar
(llama_cpp.llama_grammar) only `enum`/`const` came out valid every time; integer ranges
held in 21% of samples, `multipleOf` in 8%, number ranges in 31%, short free-text strings in 47%
(raw control characters make invalid JSON), `allOf`/`$ref` in 4%, and a `pattern` with `\\d` gave a grammar llama.cpp could not parse
(the process crashed). Under edge-agent's grammar every keyword marked "grammar" below came
out valid in 100 of 100 samples. So edge-agent generates its own grammar (gbnf.py):

| keyword                                         | how it is guaranteed               |
|-------------------------------------------------|------------------------------------|
| type (incl. lists), enum, const                 | grammar                            |
| properties, required, additionalProperties      | grammar (absent = false, stricter) |
| nested objects, $ref (local), $defs, anyOf      | grammar                            |
| allOf                                           | grammar (merged), then validation  |
| oneOf                                           | grammar; exclusivity by validation |
| items, prefixItems, minItems, maxItems          | grammar                            |
| minLength, maxLength, string escapes, controls  | grammar                            |
| pattern (Python `re` dialect, see gbnf_regex)   | grammar                            |
| pattern together with minLength/maxLength       | pattern by grammar, length by validation + resample |
| minimum, maximum, exclusiveMinimum/Maximum      | grammar (integers exact; decimals kept strictly inside) |
| multipleOf                                      | grammar for integer ranges < 256 values, else validation + resample |
| uniqueItems, minProperties, maxProperties       | validation + resample              |
| duplicate keys, NaN/Infinity, cut-off output    | strict parse + resample            |
| title, description, default, examples, format...| annotations, ignored               |
| not, if/then/else, patternProperties, contains, | rejected at config load            |
| dependent*, unevaluated*, propertyNames, remote $ref, unknown keywords | rejected    |

Every sample is parsed strictly and validated before anything runs; an invalid one is drawn
again with the next seed, up to a limit, then InvalidOutput.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema

from edge_agent.inference.gbnf import schema_problems, schema_to_gbnf

NOTE_MAX = 400
ANSWER_MAX = 400


def unsupported_keywords(schema: Any) -> list[str]:
    """Paths of keywords that grammar-constrained generation cannot honour."""
    return schema_problems(schema)


@functools.lru_cache(maxsize=128)
def _grammar_text(schema_json: str) -> str:
    return schema_to_gbnf(json.loads(schema_json))


def grammar_for(schema: Mapping[str, Any]) -> str:
    """The GBNF grammar for a schema (cached by the schema's canonical JSON)."""
    return _grammar_text(json.dumps(schema, sort_keys=True))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def parse_strict(text: str) -> Any:
    """JSON as the standard defines it: no duplicate keys, NaN or infinities."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite,
                      parse_constant=_no_constant)


@functools.lru_cache(maxsize=128)
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def check(text: str, schema: Mapping[str, Any]) -> tuple[Any, str | None]:
    """Strict parse and validation: (value, None) or (None, reason)."""
    try:
        value = parse_strict(text)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    validator = _validator(json.dumps(schema, sort_keys=True))
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        error = _chosen_branch_error(error)
        where = "/".join(str(p) for p in error.absolute_path) or "value"
        return None, f"{where}: {error.message}"
    return value, None


def _chosen_branch_error(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For a oneOf/anyOf miss, the error inside the one branch whose `const`/`enum`
    discriminators matched (the tool the model meant to call), so a hint names the real
    problem rather than "not valid under any of the given schemas"."""
    while error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        meant = [errs for errs in branches.values()
                 if not any(e.validator in ("const", "enum") for e in errs)]
        if len(meant) != 1:
            break
        error = jsonschema.exceptions.best_match(meant[0]) or error
    return error


def tool_choice_schema(tools: Sequence[Mapping[str, Any]], *, handoff: Sequence[str] = (),
                       output_schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One of: a call of an allowed tool with its arguments, a final answer, a handoff."""
    options: list[dict[str, Any]] = []
    for t in tools:
        options.append(_call(t["name"], dict(t.get("params") or {"type": "object"})))
    answer = dict(output_schema) if output_schema else {
        "type": "object", "properties": {"answer": {"type": "string", "maxLength": ANSWER_MAX}},
        "required": ["answer"], "additionalProperties": False}
    options.append(_call("final_answer", answer))
    if handoff:
        options.append(_call("handoff", {
            "type": "object", "properties": {
                "to": {"enum": list(handoff)},
                "note": {"type": "string", "maxLength": NOTE_MAX}},
            "required": ["to", "note"], "additionalProperties": False}))
    return {"oneOf": options} if len(options) > 1 else options[0]


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"tool": {"const": name}, "args": args},
            "required": ["tool", "args"], "additionalProperties": False}
