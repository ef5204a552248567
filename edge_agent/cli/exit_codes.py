"""The exit statuses of `edge-agent` (the daemon and the CLI): the README's table, and the
EXIT STATUS section of edge-agent(1). A test keeps the two the same."""

from __future__ import annotations

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "done"),
    (1, "the command failed (an unknown run, no pending approval, ...): see the message"),
    (2, "the command line itself is wrong: an unknown option, a missing argument (argparse's "
        "usage error)"),
    (64, "usage: a bad argument, such as `--input` that is not JSON, holds a lone surrogate or "
         "nests deeper than 64 levels, or an `--root` that is not a directory (EX_USAGE)"),
    (65, "`tools call`: `--args` do not match the tool's `params` schema (EX_DATAERR)"),
    (69, "a command needs an extra that is not installed (`model make-test-model` without "
         "`edge-agent[llm]`); the message names it (EX_UNAVAILABLE)"),
    (73, "the data directory cannot hold the lock or the database safely: read-only, not "
         "writable by this user, writable by others than its owner, or a symlink planted in "
         "place of the lock file or the database's files; or a symlink below "
         "`install-service --root` (EX_CANTCREAT)"),
    (74, "the database cannot be used: damaged (the message says to keep a copy and restore a "
         "backup or use sqlite3's `.recover`), or cannot be created (EX_IOERR)"),
    (75, "another daemon holds this data directory, or `runs migrate` found a step of the run "
         "in flight: try again (EX_TEMPFAIL)"),
    (78, "the configuration is invalid (EX_CONFIG; systemd does not restart on it)"),
    (130, "interrupted"),
)
