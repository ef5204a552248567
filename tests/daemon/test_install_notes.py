"""What install-service and the man pages tell a newcomer: ExecStart under /tmp, which the
unit's PrivateTmp=yes hides, is warned of; each man page has an EXIT STATUS section that is
the README's exit table, code for code and word for word."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import sync.service_files as service_files
from edge_agent.cli import main
from edge_agent.cli.exit_codes import EXIT_CODES as DEVICE_CODES
from sync.cloud.cli import main as cloud_main
from sync.cloud.exit_codes import EXIT_CODES as CLOUD_CODES

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("exe, warned", [
    ("/tmp/venv/bin/edge-agent", True), ("/var/tmp/x/bin/edge-agent", True),
    ("/opt/edge-agent/bin/edge-agent", False)])
@pytest.mark.parametrize("which", ["device", "cloud"])
def test_exec_start_under_tmp_is_warned_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], exe: str,
                                           warned: bool, which: str) -> None:
    monkeypatch.setattr(service_files, "entry_point", lambda command: Path(exe))
    run = main if which == "device" else cloud_main
    assert run(["install-service", "--root", str(tmp_path), "--no-reload"]) == 0
    out = capsys.readouterr().out
    assert ("PrivateTmp=yes hides from the service" in out) is warned, out
    assert f"ExecStart={exe} " in next((tmp_path / "etc/systemd/system").glob("*.service")
                                       ).read_text()


def _readme_table(after: str) -> list[tuple[int, str]]:
    text = README.read_text()
    start = text.index(after)
    table = text[text.index("| code | meaning |", start):]
    rows = []
    for line in table.splitlines()[2:]:
        m = re.fullmatch(r"\| (\d+) \| (.*) \|", line)
        if not m:
            break
        rows.append((int(m.group(1)), m.group(2)))
    return rows


def test_the_readme_exit_tables_are_the_pages_exit_status() -> None:
    assert _readme_table("Exit codes (the daemon's and the CLI's") == list(DEVICE_CODES)
    assert _readme_table("`edge-agent-cloud` exit codes") == list(CLOUD_CODES)


@pytest.mark.parametrize("which", ["device", "cloud"])
def test_man_pages_have_an_exit_status_section(tmp_path: Path, which: str) -> None:
    from edge_agent.cli.main import manual
    from sync.cloud.cli import manual as cloud_manual
    page, codes = (manual(), DEVICE_CODES) if which == "device" else (cloud_manual(),
                                                                      CLOUD_CODES)
    section = page[page.index(".SH EXIT STATUS"):]
    section = section[:section.index(".SH", 4)]
    assert [int(c) for c in re.findall(r"\\fB(\d+)\\fR", section)] == [c for c, _ in codes]
    if shutil.which("man"):
        path = tmp_path / "page.1"
        path.write_text(page)
        r = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True,
                           timeout=60, check=False, env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0 and "EXIT STATUS" in r.stdout, r.stderr
        assert "EX_CONFIG" in r.stdout
