"""Agent step tokens/s against a bare llama-cpp-python call, and time to first token with a
warm prefix cache against a cold one (a 1,000+ token static prefix).

The overhead is measured in pairs: each sample asks the bare model and the edge-agent
provider the same prompt with the same seed, one right after the other (which goes first
alternates), so a slow spell of the machine touches both sides of a pair alike; the figure
is the median of the pairs' ratios, with the spread of the middle half.

Run: .venv/bin/python -m bench.inference_bench [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import llama_cpp

from edge_agent.inference.llama import LlamaProvider
from edge_agent.inference.schema_grammar import grammar_for, tool_choice_schema
from edge_agent.inference.testmodel import make_test_model

TOOLS = [{"name": f"tool_{i}", "params": {"type": "object", "properties": {
    "value": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["value"]}}
    for i in range(4)]


def long_system() -> str:
    rules = " ".join(f"Rule {i}: check the part's edge {i} for burrs and report ok." for i in
                     range(24))
    return "You inspect parts on a press line. " + rules


def bare_tokens_per_s(llm: llama_cpp.Llama, messages: list, grammar: Any,
                      seed: int) -> float | None:
    first = last = None
    count = 0
    for chunk in llm.create_chat_completion(messages, max_tokens=96, temperature=0.7,
                                            seed=seed, grammar=grammar, stream=True):
        if chunk["choices"][0].get("delta", {}).get("content"):
            count += 1
            last = time.perf_counter()
            first = first or last
    if first and last and count > 1:  # first to last token, as the provider counts it
        return (count - 1) / (last - first)
    return None


def paired_rates(bare: llama_cpp.Llama, prov: LlamaProvider, schema: dict[str, Any],
                 n: int) -> list[tuple[float, float]]:
    """(bare, edge-agent) tokens/s for the same prompt and seed, taken back to back."""
    grammar = llama_cpp.LlamaGrammar.from_string(grammar_for(schema), verbose=False)
    pairs = []
    for i in range(n):
        messages = [{"role": "system", "content": "You pick a tool."},
                    {"role": "user", "content": f"Go. Part {i}."}]

        def ours(messages: list = messages, seed: int = i) -> float | None:
            c = prov.generate(messages, schema=schema, max_tokens=96, temperature=0.7,
                              seed=seed)
            return c.tokens_per_s if c.completion_tokens > 1 else None
        if i % 2 == 0:
            b, a = bare_tokens_per_s(bare, messages, grammar, i), ours()
        else:
            a, b = ours(), bare_tokens_per_s(bare, messages, grammar, i)
        if a and b:
            pairs.append((b, a))
    return pairs


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a GGUF to use instead of the generated test model")
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(args.model) if args.model else make_test_model(Path(d) / "bench.gguf",
                                                                    n_embd=256, n_layer=4,
                                                                    n_ff=512, n_head=8)
        schema = tool_choice_schema(TOOLS)
        bare = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_gpu_layers=args.n_gpu_layers,
                               verbose=False, seed=0)
        prov = LlamaProvider("bench", path, n_ctx=4096, n_gpu_layers=args.n_gpu_layers)
        pairs = paired_rates(bare, prov, schema, args.samples)
        del bare
        bare_rate = statistics.median(b for b, _ in pairs)
        agent_rate = statistics.median(a for _, a in pairs)
        ratios = [a / b for b, a in pairs]
        system = long_system()
        prompt_tokens = len(prov.llm.tokenize(system.encode()))
        cold_provider = LlamaProvider("cold", path, n_ctx=4096, cache_bytes=0,
                                      n_gpu_layers=args.n_gpu_layers)
        colds, warms = [], []
        for i in range(5):
            cold_provider.llm.reset()  # nothing cached: the whole prefix is evaluated
            msgs = [{"role": "system", "content": system},
                    {"role": "user", "content": f"part {i}"}]
            colds.append(cold_provider.generate(msgs, schema=None, max_tokens=4,
                                                temperature=0).ttft_s)
            prov.generate([{"role": "system", "content": system},
                           {"role": "user", "content": f"warm-up {i}"}], schema=None,
                          max_tokens=2, temperature=0)
            warms.append(prov.generate(msgs, schema=None, max_tokens=4, temperature=0).ttft_s)
        prov.close()
        cold_provider.close()
    cold, warm = statistics.median(colds), statistics.median(warms)
    ratio = statistics.median(ratios)
    low, high = quantile(ratios, 0.25), quantile(ratios, 0.75)
    overhead = 1 - ratio
    print(f"bare llama-cpp-python, grammar-constrained: {bare_rate:8.1f} tokens/s")
    print(f"edge-agent provider (worker thread, validation): {agent_rate:8.1f} tokens/s")
    print(f"paired ratio, edge-agent / bare, same prompt and seed: median {ratio:.3f} "
          f"(middle half {low:.3f} to {high:.3f}, {len(ratios)} pairs); overhead "
          f"{overhead * 100:.1f}%, target <= 5%")
    print(f"time to first token, {prompt_tokens}-token prefix: cold {cold * 1000:.1f} ms, "
          f"warm {warm * 1000:.1f} ms ({cold / warm:.1f}x, target >= 3x)")
    print(json.dumps({"bare_tps": bare_rate, "agent_tps": agent_rate, "overhead": overhead,
                      "ratio_median": ratio, "ratio_p25": low, "ratio_p75": high,
                      "pairs": len(ratios),
                      "ttft_cold_s": cold, "ttft_warm_s": warm, "prefix_tokens": prompt_tokens}))


if __name__ == "__main__":
    main()
