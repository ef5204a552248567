"""A section-1 man page written from an argparse parser, so the page and `--help` never
disagree. `install-service` writes it below the root; `scripts/manpages.py` writes both for
packagers. Knows no command of its own: each CLI passes its parser."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Iterable, Sequence


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote on a line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def _invocation(action: argparse.Action) -> str:
    meta = action.metavar or (action.dest if not action.option_strings
                                else action.dest.upper())
    name = " ".join(meta) if isinstance(meta, tuple) else str(meta)
    if not action.option_strings:
        return f"\\fI{_roff(name)}\\fR"
    flags = ", ".join(f"\\fB{_roff(o)}\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return flags
    return f"{flags} \\fI{_roff(name)}\\fR"


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(default)" in text:
        text = text % {"default": action.default}
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text = f"{text} (one of: {', '.join(map(str, action.choices))})".strip()
    return _roff(text)


def _options(actions: Iterable[argparse.Action]) -> list[str]:
    out: list[str] = []
    for action in actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        out += [".TP", _invocation(action), _help(action)]
    return out


def _subcommands(parser: argparse.ArgumentParser,
                 prefix: str) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(full name, help, parser) of every command below `parser`, depth first."""
    found: list[tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            full = f"{prefix} {name}".strip()
            found.append((full, helps.get(name, sub.description or ""), sub))
            found += _subcommands(sub, full)
    return found


def render(parser: argparse.ArgumentParser, *, summary: str, version: str,
           files: Sequence[tuple[str, str]] = (), environment: Sequence[tuple[str, str]] = (),
           see_also: Sequence[str] = (), exit_status: Sequence[tuple[int, str]] = (),
           date: dt.date | None = None) -> str:
    """The page: NAME, SYNOPSIS, DESCRIPTION, OPTIONS, COMMANDS, then the optional
    EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO."""
    prog = parser.prog
    if date is None:  # reproducible builds pin the date
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        date = (dt.datetime.fromtimestamp(int(epoch), dt.UTC).date() if epoch
                else dt.date.today())
    day = date.isoformat()
    lines = [f'.TH "{prog.upper()}" "1" "{day}" "{prog} {version}" "User Commands"',
             ".SH NAME", f"{_roff(prog)} \\- {_roff(summary)}",
             ".SH SYNOPSIS", (f"\\fB{_roff(prog)}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR "
             "[\\fIARGS\\fR]")]
    if parser.description:
        lines += [".SH DESCRIPTION", _roff(parser.description)]
    lines += [".SH OPTIONS"] + _options(parser._actions)
    commands = _subcommands(parser, "")
    top = {tuple(a.option_strings) for a in parser._actions if a.option_strings}
    if commands:
        lines.append(".SH COMMANDS")
        for name, text, sub in commands:
            positional = " ".join(_invocation(a) for a in sub._actions
                                  if not a.option_strings
                                  and not isinstance(a, argparse._SubParsersAction))
            lines += [".SS", f"\\fB{_roff(prog)} {_roff(name)}\\fR {positional}".rstrip(),
                      _roff(text)]
            opts = _options(a for a in sub._actions  # global options are listed once
                            if a.option_strings and tuple(a.option_strings) not in top)
            if opts:
                lines += [".RS"] + opts + [".RE"]
    if exit_status:
        lines.append(".SH EXIT STATUS")
        for code, text in exit_status:
            lines += [".TP", f"\\fB{code}\\fR", _roff(text.replace("`", ""))]
    if environment:
        lines.append(".SH ENVIRONMENT")
        for name, text in environment:
            lines += [".TP", f"\\fB{_roff(name)}\\fR", _roff(text)]
    if files:
        lines.append(".SH FILES")
        for name, text in files:
            lines += [".TP", f"\\fI{_roff(name)}\\fR", _roff(text)]
    if see_also:
        lines += [".SH SEE ALSO", ", ".join(f"\\fB{_roff(p.split('(')[0])}\\fR"
                                            f"({p.split('(')[1]}" for p in see_also)]
    return "\n".join(lines) + "\n"

