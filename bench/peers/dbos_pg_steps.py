"""DBOS Transact peer on PostgreSQL: CONCURRENCY threads each running workflows of K trivial
steps until RUNS have run, system database at URL. Prints JSON."""

import json
import sys
import threading
import time

from dbos import DBOS

url, runs, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 1
DBOS(config={"name": "bench", "system_database_url": url.replace(
    "postgresql://", "postgresql+psycopg://", 1)})


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
left = [runs]
lock = threading.Lock()


def worker() -> None:
    while True:
        with lock:
            if left[0] <= 0:
                return
            left[0] -= 1
        flow(k)


start = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.perf_counter() - start
print(json.dumps({"steps": runs * k, "seconds": elapsed}))
DBOS.destroy()
