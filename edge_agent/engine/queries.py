"""Plain SQL over the engine's tables. Every function takes the connection of a transaction."""

from __future__ import annotations

from typing import Any

from edge_agent.engine.records import QUEUED, TERMINAL, WAITING, Run, dumps, loads
from edge_agent.engine.transitions import (
    StepCall,  # (tool, key, arguments) of a step row
    StepRow,
)
from sync.dbapi import Connection

_STEP_INSERT = ("INSERT INTO steps (run_id, node, visit, attempt, status, output, error,"
                " error_kind, started_at, finished_at, span_id, tool, call_key, args)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def insert_run(conn: Connection, *, run_id: str, workflow: str, input: Any,
               origin: str, now: float, trace_id: str | None = None,
               version: str | None = None) -> None:
    values = (run_id, workflow, QUEUED, dumps(input), dumps({"input": input}), origin, trace_id,
              now, now)
    if version is None:  # unpinned (also what a database from before runs.version takes)
        conn.execute("INSERT INTO runs (run_id, workflow, status, input, context, origin,"
                     " trace_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     values)
        return
    conn.execute("INSERT INTO runs (run_id, workflow, status, input, context, origin, trace_id,"
                 " created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (*values, version))


def get_run(conn: Connection, run_id: str) -> Run | None:
    row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return Run.from_row(row) if row else None


def list_runs(conn: Connection, *, status: str | None = None,
              limit: int = 100) -> list[Run]:
    if status:
        rows = conn.execute("SELECT * FROM runs WHERE status = ? ORDER BY created_at DESC"
                            " LIMIT ?", (status, limit))
    else:
        rows = conn.execute("SELECT * FROM runs ORDER BY created_at DESC LIMIT ?", (limit,))
    return [Run.from_row(r) for r in rows]


def unfinished_run_ids(conn: Connection) -> list[str]:
    marks = ",".join("?" * len(TERMINAL))
    return [r[0] for r in conn.execute(
        f"SELECT run_id FROM runs WHERE status NOT IN ({marks}) ORDER BY priority DESC,"
        " created_at", tuple(TERMINAL))]


def count_by_status(conn: Connection) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute("SELECT status, count(*) FROM runs GROUP BY status")}


def run_update(run_id: str, now: float, **fields: Any) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE of a run's fields, as SQL and parameters."""
    encoded = {k: dumps(v) if k in ("node_state", "visits", "context", "output") else v
               for k, v in fields.items()}
    encoded["updated_at"] = now
    sets = ", ".join(f"{k} = ?" for k in encoded)
    return f"UPDATE runs SET {sets} WHERE run_id = ?", (*encoded.values(), run_id)


def update_run(conn: Connection, run_id: str, now: float, **fields: Any) -> None:
    conn.execute(*run_update(run_id, now, **fields))


def checkpoint_update(run_id: str, now: float, *, node: str, context: Any, visits: Any,
                      status: str | None) -> tuple[str, tuple[Any, ...]]:
    """The hot transition: the run moves to its next node with fresh node state. Status is
    written only when it changes (an unchanged status needs no write of its index)."""
    if status is None:
        return ("UPDATE runs SET node = ?, node_state = '{}', context = ?, visits = ?,"
                " updated_at = ? WHERE run_id = ?",
                (node, dumps(context), dumps(visits), now, run_id))
    return ("UPDATE runs SET status = ?, node = ?, node_state = '{}', context = ?, visits = ?,"
            " updated_at = ? WHERE run_id = ?",
            (status, node, dumps(context), dumps(visits), now, run_id))


def step_insert(*, run_id: str, node: str, visit: int, attempt: int, status: str,
                started_at: float, finished_at: float, output: Any = None,
                error: str | None = None, error_kind: str | None = None,
                span_id: str | None = None, call: StepCall | None = None
                ) -> tuple[str, tuple[Any, ...]]:
    """One step row, as SQL and parameters; `call` journals an idempotent tool node's call
    in the same row."""
    tool, key, args = call if call is not None else (None, None, None)
    return (_STEP_INSERT,
            (run_id, node, visit, attempt, status, None if output is None else dumps(output),
             error, error_kind, started_at, finished_at, span_id, tool, key,
             None if call is None else dumps(args)))


def step_row(run_id: str, s: StepRow) -> tuple[str, tuple[Any, ...]]:
    """A transition's step row (see `transitions.StepRow`), as SQL and parameters."""
    call = s.call
    return (_STEP_INSERT, (
        run_id, s.node, s.visit, s.attempt, s.status,
        None if s.output is None else dumps(s.output), s.error, s.error_kind, s.started_at,
        s.finished_at, None, *((None, None, None) if call is None else
                                (call[0], call[1], dumps(call[2])))))


def insert_step(conn: Connection, **fields: Any) -> int:
    sql, params = step_insert(**fields)
    return int(conn.execute(sql + " RETURNING id", params).fetchone()[0])


def steps(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY id", (run_id,))
    return [{**dict(r), "output": loads(r["output"])} for r in rows]


def memo_get(conn: Connection, run_id: str, scope: str, key: str) -> Any:
    row = conn.execute("SELECT value FROM memo WHERE run_id = ? AND scope = ? AND key = ?",
                       (run_id, scope, key)).fetchone()
    return None if row is None else loads(row[0])


def memo_put(conn: Connection, run_id: str, scope: str, key: str, value: Any,
             now: float) -> None:
    conn.execute("INSERT INTO memo (run_id, scope, key, value, created_at) VALUES (?,?,?,?,?)",
                 (run_id, scope, key, dumps(value), now))


# approvals ------------------------------------------------------------------------------------

def create_approval(conn: Connection, *, run_id: str, node: str, kind: str, prompt: str,
                    context: Any, now: float, timeout_at: float | None) -> int:
    approval_id = int(conn.execute(
        "INSERT INTO approvals (run_id, node, kind, prompt, context, status, created_at,"
        " timeout_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
        (run_id, node, kind, prompt, dumps(context), now, timeout_at)).fetchone()[0])
    conn.execute("UPDATE runs SET status = ?, updated_at = ? WHERE run_id = ?",
                 (WAITING, now, run_id))
    return approval_id


def get_approval(conn: Connection, approval_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
    return _approval(row) if row else None


def pending_approval(conn: Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM approvals WHERE run_id = ? AND status = 'pending'"
                       " ORDER BY id DESC LIMIT 1", (run_id,)).fetchone()
    return _approval(row) if row else None


def list_approvals(conn: Connection, *, pending_only: bool = True,
                   run_id: str | None = None) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM approvals WHERE 1=1", []
    if pending_only:
        sql += " AND status = 'pending'"
    if run_id:
        sql += " AND run_id = ?"
        args.append(run_id)
    return [_approval(r) for r in conn.execute(sql + " ORDER BY id", args)]


def decide(conn: Connection, approval_id: int, *, status: str, by: str, origin: str,
           note: str | None, patch: Any, now: float) -> bool:
    """Record a decision on a pending approval; False if it was already decided."""
    cur = conn.execute(
        "UPDATE approvals SET status = ?, decided_by = ?, origin = ?, note = ?, patch = ?,"
        " decided_at = ? WHERE id = ? AND status = 'pending'",
        (status, by, origin, note, None if patch is None else dumps(patch), now, approval_id))
    return cur.rowcount == 1


def _approval(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["context"] = loads(out["context"])
    out["patch"] = loads(out["patch"])
    return out


def due_approval_timeouts(conn: Connection) -> list[tuple[float, int, str]]:
    """(due time, approval id, run id) of every pending approval with a timeout."""
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "SELECT timeout_at, id, run_id FROM approvals WHERE status = 'pending'"
        " AND timeout_at IS NOT NULL")]


def runs_to_wake(conn: Connection) -> list[str]:
    """Runs changed from outside the engine: queued, decided, or asked to cancel."""
    rows = conn.execute(
        "SELECT run_id FROM runs WHERE status = 'queued'"
        " UNION SELECT r.run_id FROM runs r WHERE r.status = 'waiting_approval' AND NOT EXISTS"
        " (SELECT 1 FROM approvals a WHERE a.run_id = r.run_id AND a.status = 'pending')"
        " UNION SELECT run_id FROM runs WHERE cancel_requested = 1"
        " AND status NOT IN ('completed', 'failed', 'cancelled')")
    return [r[0] for r in rows]


# tool journal ---------------------------------------------------------------------------------

def journal_get(conn: Connection, key: str, attempt: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM tool_calls WHERE idem_key = ? AND attempt = ?",
                       (key, attempt)).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["args"], out["result"] = loads(out["args"]), loads(out["result"])
    return out


def intent_insert(*, key: str, attempt: int, run_id: str, node: str, tool: str, args: Any,
                  now: float) -> tuple[str, tuple[Any, ...]]:
    """A call's intent row, as SQL and parameters."""
    return ("INSERT INTO tool_calls (idem_key, attempt, run_id, node, tool, args, status,"
            " started_at) VALUES (?, ?, ?, ?, ?, ?, 'intent', ?)",
            (key, attempt, run_id, node, tool, dumps(args), now))


def journal_intent(conn: Connection, *, key: str, attempt: int, run_id: str, node: str,
                   tool: str, args: Any, now: float) -> None:
    conn.execute(*intent_insert(key=key, attempt=attempt, run_id=run_id, node=node, tool=tool,
                                args=args, now=now))


def intent_withdraw(key: str, attempt: int) -> tuple[str, tuple[Any, ...]]:
    """Remove an intent whose call was never made (its run ended before it)."""
    return ("DELETE FROM tool_calls WHERE idem_key = ? AND attempt = ? AND status = 'intent'",
            (key, attempt))


def result_upsert(*, key: str, attempt: int, run_id: str, node: str, tool: str, args: Any,
                  status: str, result: Any, error: str | None, error_kind: str | None,
                  started_at: float, now: float) -> tuple[str, tuple[Any, ...]]:
    """A call's outcome, as SQL and parameters: completes its intent row, or inserts the
    row when no intent was written (idempotent tools)."""
    return ("INSERT INTO tool_calls (idem_key, attempt, run_id, node, tool, args, status, result,"
            " error, error_kind, started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (idem_key, attempt) DO UPDATE SET status = excluded.status,"
            " result = excluded.result, error = excluded.error, error_kind = excluded.error_kind,"
            " finished_at = excluded.finished_at",
            (key, attempt, run_id, node, tool, dumps(args), status,
             None if result is None else dumps(result), error, error_kind, started_at, now))


def journal_result(conn: Connection, *, key: str, attempt: int, run_id: str, node: str,
                   tool: str, args: Any, status: str, result: Any, error: str | None,
                   error_kind: str | None, started_at: float, now: float) -> None:
    """Record the outcome; inserts the row when no intent was written (idempotent tools)."""
    conn.execute(*result_upsert(key=key, attempt=attempt, run_id=run_id, node=node, tool=tool,
                                args=args, status=status, result=result, error=error,
                                error_kind=error_kind, started_at=started_at, now=now))


def tool_calls(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    """Every call of a run, journaled in tool_calls or in its step row, in time order."""
    rows = conn.execute("SELECT * FROM calls WHERE run_id = ? ORDER BY started_at, source, id",
                        (run_id,))
    return [{**dict(r), "args": loads(r["args"]), "result": loads(r["result"])} for r in rows]
