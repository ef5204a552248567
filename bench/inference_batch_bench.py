"""Parallel agents on one model: the batched path (`parallel = N`) against today's serialized
path (one worker, a queue) and against llama.cpp's own llama-server `--parallel N`, built from
the same vendored llama.cpp (bench/llama_server_build.py), on the same model and prompts.

For N = 1, 2, 4, 8 agents asking at once: the aggregate tokens/s (all tokens over the wall
time), each agent's time to first token (from its request to its first token, queueing
included) and its latency (request to answer). Two models by default: the test model
(256x4, 11 MB: its weights sit in the CPU's caches, so a decode is bound by arithmetic) and a
wider, deeper one (1024x12, 483 MiB: each decode streams its weights from memory, the regime
of a real GGUF on a device). Rounds interleave the three paths and the two models; figures
are medians over rounds with the lowest and highest round, ratios taken within a round.
Then grammar validity: 100 samples per keyword family (tests/support/grammar_cases.py) drawn
8 at a time in one batch, no resampling.

Run: .venv/bin/python -m bench.inference_batch_bench [--rounds 3] [--samples 100]
     [--sizes 256x4 1024x12] [--agents 1 2 4 8] [--server-bin PATH]
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
SIZES = ((256, 4), (1024, 12))  # the test model; one that outgrows the CPU caches
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

    def __init__(self, binary: Path, model: Path, n: int, threads: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
             "--parallel", str(n), "-c", str(N_CTX * n), "-fa", "off",
             "-t", str(threads), "-tb", str(threads), "-b", "512", "-ub", "512", "--no-webui", "--log-disable"],
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


Runs = dict[tuple[str, int], list[tuple[float, list[Sample]]]]


class Size:
    """One model and every path on it: the serialized provider, a batched provider and a
    llama-server per N."""

    def __init__(self, label: str, model: Path, ns: list[int], threads: int,
                 server_bin: Path | None) -> None:
        self.label, self.model, self.ns = label, model, ns
        self.mib = model.stat().st_size / 2**20
        self.serial = LlamaProvider("serial", model, n_ctx=N_CTX, n_threads=threads)
        self.batched = {n: BatchedLlamaProvider(f"b{n}", model, parallel=n, n_ctx=N_CTX,
                                                n_threads=threads) for n in ns}
        self.servers: dict[int, Server] = {}
        self.server_skip = ""
        if server_bin is not None:
            try:
                self.servers = {n: Server(server_bin, model, n, threads) for n in ns}
            except RuntimeError as exc:
                self.server_skip = str(exc)
        self.runs: Runs = {}

    def round(self, rnd: int, schema: dict[str, Any], grammar: str) -> None:
        """One round: for each N, the paths back to back, in an order that turns."""
        tokens = lambda i: self.batched[1].tokens(messages(i))[0]  # noqa: E731
        for n in self.ns:
            seed0 = 1000 * rnd
            paths: list[tuple[str, Callable[[int], Sample]]] = [
                ("serialized", provider_call(self.serial, schema, seed0)),
                ("batched", provider_call(self.batched[n], schema, seed0))]
            if n in self.servers:
                paths.append(("llama-server", self.servers[n].call(tokens, grammar, seed0)))
            for name, call in paths[rnd % len(paths):] + paths[:rnd % len(paths)]:
                self.runs.setdefault((name, n), []).append(at_once(n, call))

    def close(self) -> None:
        for s in self.servers.values():
            s.close()
        self.serial.close()
        for p in self.batched.values():
            p.close()

    def report(self) -> dict[str, Any]:
        table = {f"{name} {n}": summarize(r) for (name, n), r in self.runs.items()}
        return {"model": self.label, "model_mib": round(self.mib, 1), "paths": table,
                "server_skip": self.server_skip, "paired": paired(self.runs, self.ns)}


def print_size(r: dict[str, Any]) -> None:
    print(f"\nmodel {r['model']} ({r['model_mib']:.0f} MiB of F32 weights)")
    print(f"{'path, agents':18} {'tokens/s':>9} {'(min-max)':>15} {'ttft p50':>9} "
          f"{'p95 latency':>12}")
    for key, v in r["paths"].items():
        lo, hi = v["tps_spread"]
        print(f"{key:18} {v['tps']:9.0f} {f'({lo:.0f}-{hi:.0f})':>15} "
              f"{v['ttft_p50_s'] * 1000:7.0f}ms {v['latency_p95_s'] * 1000:10.0f}ms")
    if r["server_skip"]:
        print(f"llama-server row skipped: {r['server_skip']}")
    print("paired in each round (the paths ran back to back), median (min-max) over rounds:")
    for key, (med, lo, hi) in r["paired"].items():
        print(f"  {key:44} {med:5.2f}x ({lo:.2f}-{hi:.2f})")


def size_arg(text: str) -> tuple[int, int]:
    try:
        embd, layers = (int(x) for x in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is EMBDxLAYERS, e.g. 1024x12 (got {text!r})"
                                         ) from None
    return embd, layers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=size_arg, nargs="+", default=list(SIZES),
                    help="models as n_embd x n_layer (default: the test model 256x4, 11 MB, "
                    "whose weights sit in the CPU caches, and 1024x12, 483 MiB, whose "
                    "weights do not: decoding it is bound by memory bandwidth)")
    ap.add_argument("--agents", type=int, nargs="+", default=list(NS),
                    help="the Ns to measure (1 is always measured: the 'alone' figure)")
    ap.add_argument("--server-bin", type=Path, help="a llama-server built from the same "
                    "llama.cpp (default: build it, bench/llama_server_build.py)")
    args = ap.parse_args()
    server_bin, server_skip = args.server_bin, ""
    if server_bin is None:
        from bench.llama_server_build import build
        try:
            server_bin = build()
        except Exception as exc:  # noqa: BLE001 - the row is skipped with the reason
            server_bin, server_skip = None, f"llama-server not built: {exc}"
    schema = SCHEMA
    ns = sorted({1, *args.agents})
    grammar = grammar_for(schema)
    results: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds,
                               "max_tokens": MAX_TOKENS}
    with tempfile.TemporaryDirectory() as d:
        sizes = []
        for embd, layers in args.sizes:
            model = make_test_model(Path(d) / f"bench-{embd}x{layers}.gguf", n_embd=embd,
                                    n_layer=layers, n_ff=2 * embd, n_head=8)
            sizes.append(Size(f"{embd}x{layers}", model, ns, args.threads, server_bin))
        try:
            for rnd in range(args.rounds):  # the sizes take turns too, round by round
                for size in sizes:
                    size.round(rnd, schema, grammar)
        finally:
            for size in sizes:
                size.close()
        # the grammar keywords' own model (bench.inference_grammar_keywords)
        small = BatchedLlamaProvider("grammar", make_test_model(Path(d) / "small.gguf"),
                                     parallel=8, n_ctx=N_CTX, n_threads=args.threads)
        results["grammar"] = grammar_validity(small, args.samples) if args.samples else {}
        small.close()
    reports = [s.report() for s in sizes]
    for r in reports:
        r["server_skip"] = r["server_skip"] or server_skip
        print_size(r)
    # the first size's figures at the top level (the summary table reads them), every
    # size's under "sizes"
    results.update({k: reports[0][k] for k in ("model", "paths", "paired", "server_skip")})
    results["sizes"] = reports
    print("goals: 4 agents >= 2.5x serialized, >= 0.9x llama-server; p95 at 4 <= 1.5x alone")
    if results["grammar"]:
        full = sum(1 for v in results["grammar"].values() if v.startswith("100%"))
        print(f"grammar: {full} of {len(CASES)} keyword families valid in {args.samples}/"
              f"{args.samples} batched samples without resampling: "
              + json.dumps(results["grammar"]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
