"""DBOS Transact peer: a workflow of K trivial steps, SQLite system database. Prints JSON."""

import json
import sys
import time

from dbos import DBOS

path, runs, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{path}"})


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.workflow()
def flow(n: int) -> int:
    total = 0
    for i in range(n):
        total += noop(i)
    return total


DBOS.launch()
flow(k)  # warm up
start = time.perf_counter()
for _ in range(runs):
    flow(k)
elapsed = time.perf_counter() - start
print(json.dumps({"steps": runs * k, "seconds": elapsed}))
DBOS.destroy()
