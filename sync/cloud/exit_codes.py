"""The exit statuses of `edge-agent-cloud`: the README's table, and the EXIT STATUS section
of edge-agent-cloud(1). A test keeps the two the same."""

from __future__ import annotations

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "done (with `--wait`: the device confirmed)"),
    (1, "the command failed: the broker cannot be reached (nothing was sent), no such "
        "document, or the device answered that it failed"),
    (2, "the command line itself is wrong (argparse's usage error), or `--wait` saw no "
        "confirmation within `--timeout` (the command waits in the device's session)"),
    (64, "usage: a device id that is not 1-64 letters, digits, `.`, `_` or `-`, JSON in "
         "`--input`, `--patch` or `--value` that is not UTF-8 or nests deeper than 64 levels, "
         "or an `--root` that is not a directory (EX_USAGE)"),
    (65, "`--input`, `--patch` or `--value` larger than one command carries (EX_DATAERR)"),
    (66, "`keys show` or `keys init`: the signing key cannot be read or written (EX_NOINPUT)"),
    (73, "`keys init` over a key that exists, or a symlink below `install-service --root` "
         "(EX_CANTCREAT)"),
    (78, "the configuration is invalid, or its store cannot be opened (EX_CONFIG; systemd "
         "does not restart on it)"),
)
