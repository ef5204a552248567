"""Parallel agents on one model: the batched path (`parallel = N`) against today's serialized
path (one worker, a queue) and against llama.cpp's own llama-server `--parallel N`, built from
the same vendored llama.cpp (bench/llama_server_build.py), on the same model and prompts.

For N = 1, 2, 4, 8 agents asking at once: the aggregate tokens/s (all tokens over the wall
time), each agent's time to first token (from its request to its first token, queueing
included) and its latency (request to answer). Rounds interleave the three paths; figures
are medians over rounds with the lowest and highest round. Then grammar validity: 100
samples per keyword family (tests/support/grammar_cases.py) drawn 8 at a time in one batch,
no resampling.

Run: .venv/bin/python -m bench.inference_batch_bench [--rounds 3] [--samples 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.inference_bench import quantile
from edge_agent.inference.batch_sequence import SeqRequest
from edge_agent.inference.llama import LlamaProvider
from edge_agent.inference.llama_batched import BatchedLlamaProvider
from edge_agent.inference.provider import InvalidOutput
from edge_agent.inference.schema_grammar import check, grammar_for
from edge_agent.inference.testmodel import make_test_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.grammar_cases import CASES

NS = (1, 2, 4, 8)
N_CTX = 1024
MAX_TOKENS = 96
Sample = tuple[int, float, float]  # tokens, time to first token, latency
# a tool call of bounded length (about 40 to 60 tokens), so no answer is cut off and drawn
# again: every path generates the same kind of answer once
SCHEMA = {"type": "object", "properties": {
    "tool": {"enum": ["tool_0", "tool_1", "tool_2", "tool_3"]},
    "note": {"type": "string", "pattern": "^[a-z ]{20,40}$"},
    "value": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["tool", "note", "value"], "additionalProperties": False}


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You pick a tool for the press line."},
            {"role": "user", "content": f"Go. Part {i}."}]


def at_once(n: int, call: Callable[[int], Sample]) -> tuple[float, list[Sample]]:
    """n agents released together; (wall seconds, their samples)."""
    out: list[Sample] = [(0, 0.0, 0.0)] * n
    gate = threading.Barrier(n)

    def go(i: int) -> None:
        gate.wait()
        out[i] = call(i)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, out


def provider_call(p: Any, schema: dict[str, Any], seed0: int) -> Callable[[int], Sample]:
    def call(i: int) -> Sample:
        t0 = time.perf_counter()
        c = p.generate(messages(i), schema=schema, max_tokens=MAX_TOKENS, temperature=0.7,
                       seed=seed0 + i)
        latency = time.perf_counter() - t0
        return c.completion_tokens, latency - c.total_s + c.ttft_s, latency
    return call


class Server:
    """llama-server --parallel n on a free loopback port, asked like the providers."""

    def __init__(self, binary: Path, model: Path, n: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
             "--parallel", str(n), "-c", str(N_CTX * n), "-fa", "off",
             "-t", "1", "-b", "512", "-ub", "512", "--no-webui", "--log-disable"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("llama-server did not become healthy")

    def call(self, tokens: Callable[[int], list[int]], grammar: str,
             seed0: int) -> Callable[[int], Sample]:
        def call(i: int) -> Sample:
            body = json.dumps({"prompt": tokens(i), "n_predict": MAX_TOKENS,
                               "temperature": 0.7, "seed": seed0 + i, "grammar": grammar,
                               "cache_prompt": True, "stream": True})
            t0 = time.perf_counter()
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            c.request("POST", "/completion", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            first, n = 0.0, 0
            for line in r:
                if not line.startswith(b"data: "):
                    continue
                ev = json.loads(line[6:])
                if ev.get("content"):
                    first = first or time.perf_counter() - t0
                if ev.get("stop"):
                    n = ev.get("tokens_predicted", n)
                    break
            return n, first, time.perf_counter() - t0
        return call

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def summarize(rounds: list[tuple[float, list[Sample]]]) -> dict[str, Any]:
    rates = [sum(s[0] for s in samples) / wall for wall, samples in rounds]
    ttfts = [s[1] for _, samples in rounds for s in samples]
    lats = [s[2] for _, samples in rounds for s in samples]
    return {"tps": statistics.median(rates), "tps_spread": [min(rates), max(rates)],
            "ttft_p50_s": statistics.median(ttfts), "latency_p95_s": quantile(lats, 0.95)}


def paired(runs: dict[tuple[str, int], list[tuple[float, list[Sample]]]], ns: list[int]
           ) -> dict[str, tuple[float, float, float]]:
    """Ratios taken round by round, where both sides ran back to back: a slow spell of a
    shared machine touches both. Median, min and max over the rounds."""
    def rate(r: tuple[float, list[Sample]]) -> float:
        return sum(s[0] for s in r[1]) / r[0]

    def spread(xs: list[float]) -> tuple[float, float, float]:
        return statistics.median(xs), min(xs), max(xs)
    out = {}
    for n in ns:
        ours = runs[("batched", n)]
        out[f"batched / serialized, {n} agents"] = spread(
            [rate(a) / rate(b) for a, b in zip(ours, runs[("serialized", n)], strict=True)])
        if ("llama-server", n) in runs:
            out[f"batched / llama-server, {n} agents"] = spread(
                [rate(a) / rate(b) for a, b in zip(ours, runs[("llama-server", n)],
                                                   strict=True)])
        for name in ("batched", "llama-server"):
            if (name, n) in runs:
                out[f"{name} per-agent p95 latency, {n} agents / one alone"] = spread(
                    [quantile([s[2] for s in a[1]], 0.95) / statistics.median(
                        s[2] for s in b[1])
                     for a, b in zip(runs[(name, n)], runs[(name, 1)], strict=True)])
    return out


def grammar_validity(p: BatchedLlamaProvider, samples: int) -> dict[str, str]:
    """Share of valid samples per keyword family, `p.parallel` sequences at a time, with no
    resampling; for a family left to validation, also the share of valid answers once the
    provider draws again (what an agent gets)."""
    msgs = [{"role": "system", "content": "Answer with JSON."},
            {"role": "user", "content": "Fill in the parameters."}]
    toks, stop = p.tokens(msgs)
    out = {}
    for case in CASES:
        text = grammar_for(case.schema)
        ok, answered = 0, 0
        for start in range(0, samples, p.parallel):
            seeds = range(start, min(start + p.parallel, samples))
            reqs = [SeqRequest(toks, 160, 1.0, seed, text, stop, threading.Event())
                    for seed in seeds]
            for r in reqs:
                p.scheduler.submit(r)
            ok += sum(int(check(r.future.result().text, case.schema)[1] is None)
                      for r in reqs)
            if not case.by_grammar:
                answered += sum(n for n, _, _ in at_once(
                    len(seeds), _valid_answer(p, msgs, case.schema, start))[1])
        out[case.keyword] = f"{ok / samples:.0%}" + (
            "" if case.by_grammar else f" ({answered / samples:.0%} with resampling)")
    return out


def _valid_answer(p: BatchedLlamaProvider, msgs: list[dict[str, str]],
                  schema: Any, start: int) -> Callable[[int], Sample]:
    """Agent i's call: 1 token if the (resampled) answer validates, else 0."""
    def call(i: int) -> Sample:
        try:
            c = p.generate(msgs, schema=schema, max_tokens=160, temperature=1.0,
                           seed=1000 * (start + i))
        except InvalidOutput:
            return 0, 0.0, 0.0
        return int(check(c.text, schema)[1] is None), 0.0, 0.0
    return call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-embd", type=int, default=256, help="model width (768: the weights "
                    "outgrow the CPU caches and decoding turns memory-bound)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--agents", type=int, nargs="+", default=list(NS),
                    help="the Ns to measure (1 is always measured: the 'alone' figure)")
    args = ap.parse_args()
    from bench.llama_server_build import build
    try:
        server_bin: Path | None = build()
        server_skip = ""
    except Exception as exc:  # noqa: BLE001 - the row is skipped with the reason
        server_bin, server_skip = None, f"llama-server not built: {exc}"
    schema = SCHEMA
    ns = sorted({1, *args.agents})
    grammar = grammar_for(schema)
    results: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds,
                               "max_tokens": MAX_TOKENS, "n_embd": args.n_embd,
                               "n_layer": args.n_layer}
    with tempfile.TemporaryDirectory() as d:
        model = make_test_model(Path(d) / "bench.gguf", n_embd=args.n_embd,
                                n_layer=args.n_layer, n_ff=2 * args.n_embd, n_head=8)
        serial = LlamaProvider("serial", model, n_ctx=N_CTX, n_threads=args.threads)
        batched = {n: BatchedLlamaProvider(f"b{n}", model, parallel=n, n_ctx=N_CTX,
                                           n_threads=args.threads) for n in ns}
        servers: dict[int, Server] = {}
        if server_bin is not None:
            try:
                servers = {n: Server(server_bin, model, n) for n in ns}
            except RuntimeError as exc:
                server_skip = str(exc)
        tokens = lambda i: batched[1].tokens(messages(i))[0]  # noqa: E731
        runs: dict[tuple[str, int], list[tuple[float, list[Sample]]]] = {}
        for rnd in range(args.rounds):
            for n in ns:
                seed0 = 1000 * rnd
                paths: list[tuple[str, Callable[[int], Sample]]] = [
                    ("serialized", provider_call(serial, schema, seed0)),
                    ("batched", provider_call(batched[n], schema, seed0))]
                if n in servers:
                    paths.append(("llama-server", servers[n].call(tokens, grammar, seed0)))
                for name, call in paths[rnd % len(paths):] + paths[:rnd % len(paths)]:
                    runs.setdefault((name, n), []).append(at_once(n, call))
        for s in servers.values():
            s.close()
        serial.close()
        for p in batched.values():
            p.close()
        # the grammar keywords' own model (bench.inference_grammar_keywords)
        small = BatchedLlamaProvider("grammar", make_test_model(Path(d) / "small.gguf"),
                                     parallel=8, n_ctx=N_CTX, n_threads=args.threads)
        results["grammar"] = grammar_validity(small, args.samples) if args.samples else {}
        small.close()
    table = {f"{name} {n}": summarize(r) for (name, n), r in runs.items()}
    results["paths"] = table
    results["server_skip"] = server_skip
    results["paired"] = paired(runs, ns)
    print(f"{'path, agents':18} {'tokens/s':>9} {'(min-max)':>15} {'ttft p50':>9} "
          f"{'p95 latency':>12}")
    for key, v in table.items():
        lo, hi = v["tps_spread"]
        print(f"{key:18} {v['tps']:9.0f} {f'({lo:.0f}-{hi:.0f})':>15} "
              f"{v['ttft_p50_s'] * 1000:7.0f}ms {v['latency_p95_s'] * 1000:10.0f}ms")
    if server_skip:
        print(f"llama-server row skipped: {server_skip}")
    print("paired in each round (the paths ran back to back), median (min-max) over rounds:")
    for key, (med, lo, hi) in results["paired"].items():
        print(f"  {key:44} {med:5.2f}x ({lo:.2f}-{hi:.2f})")
    print("goals: 4 agents >= 2.5x serialized, >= 0.9x llama-server; p95 at 4 <= 1.5x alone")
    if results["grammar"]:
        full = sum(1 for v in results["grammar"].values() if v.startswith("100%"))
        print(f"grammar: {full} of {len(CASES)} keyword families valid in {args.samples}/"
              f"{args.samples} batched samples without resampling: "
              + json.dumps(results["grammar"]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
