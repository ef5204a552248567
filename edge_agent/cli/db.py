"""`edge-agent db`: look into the device's database for support, read-only.

`db tables` lists the tables with their row counts; `db export TABLE` writes a table's rows
(or one run's, `--run RUN_ID`) as JSON or CSV, and `db export --run RUN_ID` every table's
rows of that run. The file is opened read-only (`mode=ro`): in WAL mode a reader never
blocks the daemon's writer nor waits on it, so this is safe while the daemon runs. The
reading goes through sqlite-utils, which is what people who live with SQLite files use; the
engine's own hot path stays on sqlite3 (README, Limits).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge_agent.cli.context import CliError, Context
from edge_agent.cli.render import table
from edge_agent.store.db import BUSY_TIMEOUT_MS

EX_USAGE, EX_IOERR = 64, 74


def register(add: Callable[[str, str], argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    """The `db` command and its two subcommands, on the CLI's parser."""
    s = add("db", "look into the device's database, read-only: `db tables`, `db export TABLE"
            " [--run RUN_ID] [--format json|csv]`, `db export --run RUN_ID`")
    sub = s.add_subparsers(dest="db_command", required=True, metavar="tables|export")
    for name, text in (("tables", "tables with their row counts"),
                       ("export", "a table's rows, or a run's rows (of one table or all)")):
        c = sub.add_parser(name, parents=[common], help=text, description=text)
        c.add_argument("--db", metavar="PATH",
                       help="a database file (default: the config's, in its data_dir)")
        if name == "export":
            c.add_argument("table", nargs="?", help="the table (all tables with a run_id"
                           " column when --run is given alone)")
            c.add_argument("--run", metavar="RUN_ID", help="only this run's rows")
            c.add_argument("--format", choices=["json", "csv"], default="json",
                           help="json (default) or csv (one table)")


def cmd_db(ctx: Context, args: argparse.Namespace) -> int:
    path = _path(ctx, args.db)
    with _open(path) as db:
        if args.db_command == "tables":
            rows = [{"name": t, "rows": db[t].count} for t in db.table_names()]
            ctx.out({"database": str(path), "tables": rows},
                    table(["table", "rows"], [[r["name"], r["rows"]] for r in rows]))
            return 0
        return _export(ctx, db, path, args)


def _export(ctx: Context, db: Any, path: Path, args: argparse.Namespace) -> int:
    if args.table is None and args.run is None:
        raise CliError("db export needs a TABLE, or --run RUN_ID for a run's rows", EX_USAGE)
    if args.run is not None and not (db["runs"].exists() and next(
            db["runs"].rows_where("run_id = ?", [args.run], limit=1), None)):
        raise CliError(f"no run {args.run!r} in {path}")
    names = db.table_names()
    if args.table is not None and args.table not in names:
        raise CliError(f"no table {args.table!r} in {path} (tables: {', '.join(names)})",
                       EX_USAGE)
    with_run = [t for t in names if "run_id" in db[t].columns_dict]
    if args.table is not None and args.run is not None and args.table not in with_run:
        raise CliError(f"table {args.table!r} has no run_id column (tables with one: "
                       f"{', '.join(with_run)})", EX_USAGE)
    if args.format == "csv" and (args.table is None or ctx.as_json):
        raise CliError("--format csv writes one TABLE, and not under --json", EX_USAGE)
    where, params = ("run_id = ?", [args.run]) if args.run is not None else (None, None)
    if args.table is not None and args.format == "csv":
        _csv(db[args.table].columns_dict, _rows(db, args.table, where, params))
        return 0
    if args.table is not None:
        rows: Any = list(_rows(db, args.table, where, params))
    else:
        rows = {t: list(_rows(db, t, where, params)) for t in with_run}
    if ctx.as_json:
        ctx.out({"database": str(path), "table": args.table, "run": args.run, "rows": rows})
    else:
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    return 0


def _rows(db: Any, name: str, where: str | None, params: list[Any] | None
          ) -> Iterator[dict[str, Any]]:
    """Rows in storage order, blobs as sqlite-utils' CLI writes them ({"$base64": true,
    "encoded": ...})."""
    for row in db[name].rows_where(where, params, order_by="rowid" if _has_rowid(db, name)
                                   else None):
        yield {k: {"$base64": True, "encoded": base64.b64encode(v).decode()}
               if isinstance(v, bytes) else v for k, v in row.items()}


def _has_rowid(db: Any, name: str) -> bool:
    sql = db[name].schema.upper()
    return "WITHOUT ROWID" not in sql


def _csv(columns: dict[str, Any], rows: Iterator[dict[str, Any]]) -> None:
    out = csv.DictWriter(sys.stdout, fieldnames=list(columns), lineterminator="\n")
    out.writeheader()
    for row in rows:
        out.writerow({k: v["encoded"] if isinstance(v, dict) else v for k, v in row.items()})


def _path(ctx: Context, given: str | None) -> Path:
    if given is not None:
        path = Path(given)
    else:
        if ctx.config.device.database:
            raise CliError("edge-agent db reads the device's SQLite file; this config keeps its"
                           " state in PostgreSQL (use psql there)")
        path = ctx.config.db_path
    if not path.is_file():
        raise CliError(f"no database at {path}")
    return path


class _open:
    """sqlite-utils over a read-only connection (`mode=ro`); SQLite's errors become ours."""

    def __init__(self, path: Path) -> None:
        import sqlite_utils
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise CliError(f"{path}: cannot read it as a database: {exc}", EX_IOERR) from exc
        self.conn = conn
        self.db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)

    def __enter__(self) -> Any:
        return self.db

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.conn.close()
        if isinstance(exc, sqlite3.Error):
            raise CliError(f"reading the database failed: {exc}", EX_IOERR) from exc


__all__ = ["cmd_db", "register"]
