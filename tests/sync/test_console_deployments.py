"""The console's deployments pages, without a browser: the list and one deployment's page
render what the rollout module stored (on SQLite and PostgreSQL), their live part updates
without a reload, an operator's Abort does exactly what `edge-agent-cloud deployment abort`
does, and a viewer's or a CSRF-less abort is refused (403) and changes nothing."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from starlette.testclient import TestClient

from sync.cloud import deployments as deps
from sync.cloud.console.app import Console
from sync.cloud.console.fleet import Fleet
from sync.cloud.console.tokens import TokenFile
from sync.cloud.store import SqlCloudStore

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
FRAGMENT = '[workflows.w]\nstart = "done"\n[workflows.w.nodes.done]\nend = true\n'
ABORT_FORM = re.compile(r'action="/deployments/[0-9a-f]+/abort"')


def answer(store: SqlCloudStore, dep: str, device: str, status: str = "applied",
           action: str = "apply", **kw: Any) -> None:
    deps.record_result(store, device, msgpack.packb(
        {"deployment": dep, "device": device, "action": action, "status": status, **kw}))


def health(store: SqlCloudStore, dep: str, device: str, started: int, failed: int) -> None:
    deps.record_health(store, device, msgpack.packb(
        {"deployment": dep, "device": device, "started": started, "failed": failed,
         "tool_calls": 4, "tool_failures": 1, "sync_healthy": True, "at": time.time()}))


def ignore(*_: Any) -> None:
    """The driver's sender: what it publishes is not this test's concern."""


def failed_one(store: SqlCloudStore, t: float) -> str:
    """A deployment stopped by its gate after wave 1: d1 applied and rolled back, d2
    rejected with the device's reason, d5 never sent."""
    for device in ["d1", "d2", "d5"]:  # devices the cloud has heard from
        store.seen(device, online=True)
    dep = deps.create(store, fragment=FRAGMENT, devices=["d1", "d2", "d5"], version="v2",
                      waves="2,100%", bake_s=10, now=t)
    deps.tick(store, ignore, now=t + 1)
    answer(store, dep, "d1", previous="a41c0e9b77d2")
    health(store, dep, "d1", started=3, failed=0)
    answer(store, dep, "d2", status="rejected", reasons=["tools.x: unknown key"])
    deps.tick(store, ignore, now=t + 12)  # the gate: rejected > 0
    answer(store, dep, "d1", status="rolled_back", action="rollback")
    return dep


def running_one(store: SqlCloudStore, t: float) -> str:
    """A deployment baking its first wave: d3 offline, d4 healthy, d6 applied, d7 pending;
    d5 waits for wave 2."""
    for device in ["d3", "d4", "d6", "d7", "d5"]:  # devices the cloud has heard from
        store.seen(device, online=True)
    dep = deps.create(store, fragment=FRAGMENT, devices=["d3", "d4", "d6", "d7", "d5"],
                      version="v3", waves="4,100%", bake_s=3600, now=t)
    deps.tick(store, ignore, now=t + 1)
    store.seen("d3", online=False)
    answer(store, dep, "d4", previous="5d93be0a1f6c")
    health(store, dep, "d4", started=2, failed=0)
    answer(store, dep, "d6")
    return dep


@pytest.fixture
def tokens(tmp_path: Path) -> TokenFile:
    return TokenFile(tmp_path / "tokens.json")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlCloudStore]:
    s = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    try:
        yield s
    finally:
        s.close()


def client_on(store: SqlCloudStore, tokens: TokenFile) -> TestClient:
    return TestClient(Console(Fleet(store, lambda **kw: {}), tokens).app(),
                      base_url="http://127.0.0.1")


def login(client: TestClient, token: str) -> str:
    """Log in through the form; the session's CSRF token from a page."""
    form = client.get("/login")
    r = client.post("/login", data={"token": token, "csrf": CSRF.findall(form.text)[0]},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return CSRF.findall(client.get("/deployments").text)[0]


def cells(html: str, row: str, cls: str) -> dict[str, str]:
    """{a row's data- attribute: the text of its td with class `cls`} for rows tr.ROW."""
    out = {}
    for key, body in re.findall(rf'<tr class="{row}" data-[a-z]+="([^"]+)">(.*?)</tr>',
                                html, re.S):
        found = re.search(rf'<td class="[^"]*\b{cls}\b[^"]*"[^>]*>(.*?)</td>', body, re.S)
        out[key] = " ".join(re.sub(r"<[^>]+>", "", found.group(1)).split()) if found else ""
    return out


def test_list_and_detail_render_the_stored_rollouts(cloud_url: str,
                                                    tokens: TokenFile) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        t = time.time() - 100
        failed, running = failed_one(store, t), running_one(store, t + 50)
        with client_on(store, tokens) as client:
            login(client, tokens.add("lee", "viewer"))
            page = client.get("/deployments").text
            assert '<a href="/deployments" class="here">Deployments</a>' in page
            assert "edge-agent-cloud deploy FRAGMENT.toml" in page  # started from the CLI
            assert re.findall(r'<tr class="deployment" data-id="([^"]+)"', page) == [
                running, failed]  # newest first
            assert cells(page, "deployment", "state") == {running: "running",
                                                         failed: "failed"}
            assert cells(page, "deployment", "wave") == {running: "1 / 2", failed: "1 / 2"}
            reason = cells(page, "deployment", "reason")[failed]
            assert reason.startswith("wave 1: abort-if") and "rejected 1" in reason
            assert "5 device(s)" in page and "3 device(s)" in page and "v3" in page

            # the running one: each device's state and wave, the gate and its figures
            page = client.get(f"/deployments/{running}").text
            assert cells(page, "device", "state") == {
                "d3": "offline", "d4": "healthy", "d6": "applied", "d7": "pending",
                "d5": "waiting"}
            assert cells(page, "device", "wave") == {"d3": "1", "d4": "1", "d6": "1",
                                                     "d7": "1", "d5": "2"}
            assert "<code>failed_rate &gt; 0.05 || rejected &gt; 0</code>" in page
            assert cells(page, "wave", "started") == {"1": "2", "2": "0"}
            assert cells(page, "wave", "gate") == {"1": "holds", "2": "not out yet"}
            assert ABORT_FORM.search(page) is None  # a viewer gets no button

            # the failed one: the rejection's reason, the rollback, the gate that stopped it
            page = client.get(f"/deployments/{failed}").text
            assert cells(page, "device", "state") == {"d1": "rolled back",
                                                      "d2": "rejected", "d5": "waiting"}
            assert cells(page, "device", "reason")["d2"] == "tools.x: unknown key"
            gate = cells(page, "wave", "gate")["1"]
            assert gate.startswith("does not hold") and "rejected 1" in gate
            assert "The cloud holds no deployment nope" in client.get(
                "/deployments/nope").text

            # the live part, as the page's poll fetches it, follows the store
            live = {"X-Console-Fragment": "1"}
            before = client.get(f"/deployments/{running}", headers=live)
            assert "<html" not in before.text and 'id="devices"' in before.text
            answer(store, running, "d7")
            after = client.get(f"/deployments/{running}", headers=live)
            assert cells(after.text, "device", "state")["d7"] == "applied"
            assert after.headers["X-Fragment-Digest"] != before.headers["X-Fragment-Digest"]
            listed = client.get("/deployments", headers=live).text
            assert "<html" not in listed and f'data-id="{running}"' in listed
    finally:
        store.close()


def test_operator_abort_is_the_cli_abort(cloud_url: str, tokens: TokenFile,
                                         tmp_path: Path) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        t = time.time() - 100
        by_console, by_cli = running_one(store, t), running_one(store, t)
        with client_on(store, tokens) as client:
            csrf = login(client, tokens.add("ana", "operator"))
            page = client.get(f"/deployments/{by_console}").text
            assert ABORT_FORM.search(page) is not None
            r = client.post(f"/deployments/{by_console}/abort", data={"csrf": csrf},
                            follow_redirects=False)
            assert r.status_code == 303
            assert r.headers["location"] == f"/deployments/{by_console}"
            page = client.get(f"/deployments/{by_console}").text
            assert f"aborted deployment {by_console}" in page
            assert ABORT_FORM.search(page) is None  # no longer running: no button
            again = client.post(f"/deployments/{by_console}/abort", data={"csrf": csrf})
            assert again.status_code == 409 and "is not running" in again.text
        cfg = tmp_path / "cloud.toml"
        cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1883"\ninsecure = true\n'
                       f'[store]\nurl = "{cloud_url}"\n')
        r = subprocess.run([CLOUD, "deployment", "abort", by_cli, "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

        def kept(dep: str) -> dict[str, Any]:
            d = deps.deployment(store, dep)
            assert d is not None
            devices = [{k: v for k, v in x.items() if k not in ("updated_at", "health")}
                       for x in d["devices"]]
            return {**{k: v for k, v in d.items() if k not in ("id", "updated_at")},
                    "devices": devices}
        assert kept(by_console)["state"] == "aborted"
        assert kept(by_console) == kept(by_cli)
    finally:
        store.close()


def test_viewer_abort_is_refused(store: SqlCloudStore, tokens: TokenFile) -> None:
    dep = running_one(store, time.time() - 100)
    with client_on(store, tokens) as client:
        csrf = login(client, tokens.add("lee", "viewer"))
        r = client.post(f"/deployments/{dep}/abort", data={"csrf": csrf})
        assert r.status_code == 403 and "viewer" in r.text
    d = deps.deployment(store, dep)
    assert d is not None and d["state"] == "running"


def test_abort_without_csrf_is_refused(store: SqlCloudStore, tokens: TokenFile) -> None:
    dep = running_one(store, time.time() - 100)
    with client_on(store, tokens) as client:
        csrf = login(client, tokens.add("ana", "operator"))
        for data in ({}, {"csrf": ""}, {"csrf": csrf[:-2] + "xx"}):
            r = client.post(f"/deployments/{dep}/abort", data=data)
            assert r.status_code == 403 and "CSRF" in r.text
        # and without a session at all: to the login page, nothing done
        other = TestClient(client.app, base_url="http://127.0.0.1")
        r = other.post(f"/deployments/{dep}/abort", data={"csrf": csrf},
                       follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
    d = deps.deployment(store, dep)
    assert d is not None and d["state"] == "running"
