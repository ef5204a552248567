"""LangGraph peer: a graph of K trivial nodes with its SQLite checkpointer. Prints JSON."""

import json
import sqlite3
import sys
import time
from typing import TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

path, runs, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


class State(TypedDict):
    n: int


def step(state: State) -> State:
    return {"n": state["n"] + 1}


g = StateGraph(State)
for i in range(k):
    g.add_node(f"n{i}", step)
    g.add_edge(START if i == 0 else f"n{i - 1}", f"n{i}")
g.add_edge(f"n{k - 1}", END)
conn = sqlite3.connect(path, check_same_thread=False)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
app = g.compile(checkpointer=SqliteSaver(conn))


def invoke(thread: str) -> None:
    cfg = {"configurable": {"thread_id": thread}}
    try:
        app.invoke({"n": 0}, cfg, durability="sync")
    except TypeError:  # older releases have no durability switch; their default is sync
        app.invoke({"n": 0}, cfg)


invoke("warm")
start = time.perf_counter()
for r in range(runs):
    invoke(str(r))
elapsed = time.perf_counter() - start
print(json.dumps({"steps": runs * k, "seconds": elapsed}))
