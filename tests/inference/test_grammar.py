"""The grammar keeps its promise per keyword: samples of random weights at temperature 1.0
validate on the first draw wherever the grammar is said to enforce the keyword."""

from __future__ import annotations

import json

import jsonschema
import pytest
from support.grammar_cases import CASES, Case

from edge_agent.inference.gbnf import SchemaGrammarError, schema_problems, schema_to_gbnf
from edge_agent.inference.llama import LlamaProvider
from edge_agent.inference.schema_grammar import check, parse_strict

MESSAGES = [{"role": "system", "content": "Answer with JSON."},
            {"role": "user", "content": "Fill in the parameters."}]
SAMPLES = 25


@pytest.mark.parametrize("case", CASES, ids=[c.keyword for c in CASES])
def test_every_sample_validates(provider: LlamaProvider, case: Case) -> None:
    first_draw = 0
    for seed in range(SAMPLES):
        c = provider.generate(MESSAGES, schema=case.schema, max_tokens=160, temperature=1.0,
                              seed=seed * 7919)
        jsonschema.validate(parse_strict(c.text), case.schema)  # independently of the provider
        first_draw += c.attempts == 1
    if case.by_grammar:
        assert first_draw == SAMPLES, f"{case.keyword}: the grammar let invalid samples out"


def test_strings_never_carry_raw_controls_or_lone_surrogates(provider: LlamaProvider) -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 40}},
              "required": ["s"], "additionalProperties": False}
    for seed in range(40):
        text = provider.generate(MESSAGES, schema=schema, max_tokens=200, temperature=1.5,
                                 seed=seed).text
        assert not any(ord(ch) < 0x20 for ch in text)
        json.loads(text)["s"].encode("utf-8")  # a lone surrogate would raise here


def test_strict_parse_refuses_what_json_loads_lets_through() -> None:
    for text, why in (('{"a": 1, "a": 2}', "duplicate"), ('{"a": NaN}', "not JSON"),
                      ('{"a": 1e999}', "out of range")):
        value, reason = check(text, {"type": "object"})
        assert value is None and reason is not None and why in reason


@pytest.mark.parametrize("schema, where", [
    ({"not": {"type": "string"}}, "not"),
    ({"type": "object", "properties": {"a": {"if": {}, "then": {}}}}, "properties/a/if"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
    ({"$ref": "https://example.com/s.json"}, "$ref"),
    ({"type": "string", "pattern": "(a)\\1"}, "pattern"),
    ({"type": "string", "pattern": "(?=a)b"}, "pattern"),
    ({"type": "array", "contains": {"type": "integer"}}, "contains"),
])
def test_keywords_no_grammar_can_honour_are_named(schema: dict, where: str) -> None:
    assert where in schema_problems(schema)
    with pytest.raises(SchemaGrammarError):
        schema_to_gbnf(schema)


@pytest.mark.parametrize("schema", [
    {"type": "integer", "minimum": 5, "maximum": 4},
    {"type": "integer", "minimum": 1, "maximum": 4, "multipleOf": 5},
    {"enum": ["a"], "type": "integer"},
])
def test_unsatisfiable_schemas_are_errors_not_grammars(schema: dict) -> None:
    with pytest.raises(SchemaGrammarError):
        schema_to_gbnf(schema)
