"""Which JSON Schema keywords a grammar really enforces, measured by sampling.

For each keyword (tests/support/grammar_cases.py), draws N samples at temperature 1.0 from
the random-weight test model under (a) the stock converter's grammar
(llama_cpp.llama_grammar) and (b) edge-agent's grammar, with no resampling, and counts how
many parse strictly and validate. Each cell runs in a child process: a grammar the stock
converter emits but llama.cpp cannot parse crashes it ("crash"); one it refuses to build is
"no grammar". An answer cut off at max_tokens counts as invalid: a grammar that does not
bound what the schema bounds lets random weights run on.

Run: .venv/bin/python -m bench.inference_grammar_keywords [--samples N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import llama_cpp
from llama_cpp.llama_grammar import json_schema_to_gbnf

from edge_agent.inference.schema_grammar import check, grammar_for
from edge_agent.inference.testmodel import make_test_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.grammar_cases import CASES

MESSAGES = [{"role": "system", "content": "Answer with JSON."},
            {"role": "user", "content": "Fill in the parameters."}]


def valid_share(llm: llama_cpp.Llama, grammar_text: str | None, schema: dict, n: int) -> float:
    if grammar_text is None:
        return 0.0
    grammar = llama_cpp.LlamaGrammar.from_string(grammar_text, verbose=False)
    ok = 0
    for seed in range(n):
        out = llm.create_chat_completion(MESSAGES, max_tokens=160, temperature=1.0, seed=seed,
                                         grammar=grammar)
        ok += check(out["choices"][0]["message"]["content"] or "", schema)[1] is None
    return ok / n


def stock(schema: dict) -> str | None:
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception:  # noqa: BLE001 - the stock converter raises on what it cannot express
        return None


def measure(converter: str, index: int, samples: int, model: Path) -> str:
    """One cell of the table in a child process: the stock grammar can crash llama.cpp."""
    r = subprocess.run([sys.executable, "-m", "bench.inference_grammar_keywords", "--cell",
                        converter, str(index), "--samples", str(samples), "--model", str(model)],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return "crash" if r.returncode < 0 else "error"
    return r.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--cell", nargs=2, metavar=("CONVERTER", "INDEX"))
    ap.add_argument("--model")
    args = ap.parse_args()
    if args.cell:
        converter, index = args.cell[0], int(args.cell[1])
        schema = CASES[index].schema
        llm = llama_cpp.Llama(model_path=args.model, n_ctx=2048, seed=0, verbose=False)
        text = stock(schema) if converter == "stock" else grammar_for(schema)
        share = None if text is None else valid_share(llm, text, schema, args.samples)
        print("no grammar" if share is None else f"{share:.0%}")
        return
    with tempfile.TemporaryDirectory() as d:
        model = make_test_model(Path(d) / "m.gguf")
        rows = [(case.keyword, measure("stock", i, args.samples, model),
                 measure("ours", i, args.samples, model),
                 "grammar" if case.by_grammar else "validation + resample")
                for i, case in enumerate(CASES)]
    print(f"valid samples out of {args.samples} at temperature 1.0, no resampling")
    print(f"{'keyword':32} {'stock':>10} {'edge-agent':>11}  guaranteed by")
    for keyword, a, b, how in rows:
        print(f"{keyword:32} {a:>10} {b:>11}  {how}")
    print(json.dumps({k: {"stock": a, "edge_agent": b} for k, a, b, _ in rows}))


if __name__ == "__main__":
    main()
