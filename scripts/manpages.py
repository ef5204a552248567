"""Write edge-agent(1) and edge-agent-cloud(1) into a directory, for packagers:
`python scripts/manpages.py DIR`; install-service writes them itself.
SOURCE_DATE_EPOCH, when set, dates the pages (reproducible builds)."""

from __future__ import annotations

import sys
from pathlib import Path

from edge_agent.cli.main import manual as device_manual
from sync.cloud.cli import manual as cloud_manual

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/manpages.py DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, page in (("edge-agent", device_manual()), ("edge-agent-cloud", cloud_manual())):
        (out / f"{name}.1").write_text(page)
        print(out / f"{name}.1")
