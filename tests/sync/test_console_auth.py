"""The console's doors, without a browser: tokens and their file, login, roles, CSRF,
insecure mode only on loopback, and the `[console]` table's errors (exit 78)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from sync.cloud.console.app import Console
from sync.cloud.console.fleet import Fleet
from sync.cloud.console.tokens import TokenError, TokenFile
from sync.cloud.store import SqlCloudStore

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


class Decisions:
    """What the console asked to send (the real sender is the browser test's)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, **kw: Any) -> dict[str, Any]:
        self.sent.append(kw)
        return {"command_id": f"c{len(self.sent)}", "state": "sent"}


@pytest.fixture
def tokens(tmp_path: Path) -> TokenFile:
    return TokenFile(tmp_path / "tokens.json")


@pytest.fixture
def console(tmp_path: Path, tokens: TokenFile) -> Iterator[tuple[TestClient, Decisions]]:
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    decisions = Decisions()
    app = Console(Fleet(store, decisions), tokens).app()
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield client, decisions
    finally:
        store.close()


def login(client: TestClient, token: str) -> str:
    """Log in through the form; the session's CSRF token from a page."""
    form = client.get("/login")
    r = client.post("/login", data={"token": token, "csrf": CSRF.findall(form.text)[0]},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get("/approvals")
    assert page.status_code == 200
    return CSRF.findall(page.text)[0]


DECISION = {"device": "press-7", "run_id": "r1", "approval_id": "3", "decision": "approve",
            "note": "ok", "patch": '{"lot": 4}'}


def test_token_file_keeps_only_hashes_mode_0600(tokens: TokenFile) -> None:
    token = tokens.add("ana", "operator")
    assert token.startswith("eac_") and len(token) > 40
    text = tokens.path.read_text()
    assert token not in text and "ana" in text
    assert stat.S_IMODE(os.stat(tokens.path).st_mode) == 0o600
    assert tokens.holder(token) is not None and tokens.holder(token + "x") is None
    assert tokens.listing() == [{"name": "ana", "role": "operator",
                                 "created": json.loads(text)["tokens"][0]["created"]}]
    with pytest.raises(TokenError, match="exists"):
        tokens.add("ana", "viewer")
    assert tokens.revoke("ana") and tokens.holder(token) is None and not tokens.revoke("ana")


def test_token_file_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text('{"tokens": []}')
    link = tmp_path / "tokens.json"
    link.symlink_to(target)
    with pytest.raises(TokenError, match="symbolic link"):
        TokenFile(link).add("ana", "operator")
    assert target.read_text() == '{"tokens": []}'
    with pytest.raises(TokenError, match="symbolic link"):
        TokenFile(link).entries()


def test_pages_need_a_login(console: tuple[TestClient, Decisions],
                            tokens: TokenFile) -> None:
    client, decisions = console
    for page in ("/devices", "/runs", "/approvals", "/conflicts", "/runs/d/r"):
        r = client.get(page, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), page
    assert client.get("/runs", headers={"X-Console-Fragment": "1"}).status_code == 401
    csrf = CSRF.findall(client.get("/login").text)[0]
    bad = client.post("/login", data={"token": "eac_guess", "csrf": csrf})
    assert bad.status_code == 401 and "unknown token" in bad.text
    r = client.post("/approvals/decide", data={**DECISION, "csrf": csrf},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert decisions.sent == []


def test_session_cookie_is_httponly_strict_and_signed(console: tuple[TestClient, Decisions],
                                                      tokens: TokenFile) -> None:
    client, _ = console
    token = tokens.add("ana", "operator")
    csrf = CSRF.findall(client.get("/login").text)[0]
    r = client.post("/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP here; served with tls_cert it is Secure
    assert token not in r.headers["set-cookie"]
    assert client.get("/runs", follow_redirects=False).status_code == 200
    # a forged cookie is not a session
    forged = TestClient(client.app, base_url="http://127.0.0.1",
                        cookies={"console_session": "eyJ3aG8iOiAiYW5hIn0=.forged.sig"})
    assert forged.get("/runs", follow_redirects=False).status_code == 303


def test_session_cookie_is_secure_over_tls(tmp_path: Path, tokens: TokenFile) -> None:
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    try:
        app = Console(Fleet(store, Decisions()), tokens).app(https_only=True)
        with TestClient(app, base_url="https://127.0.0.1") as client:
            r = client.get("/login")
            assert "; secure" in r.headers["set-cookie"].lower()
    finally:
        store.close()


def test_operator_decides_through_the_shared_action(console: tuple[TestClient, Decisions],
                                                    tokens: TokenFile) -> None:
    client, decisions = console
    csrf = login(client, tokens.add("ana", "operator"))
    r = client.post("/approvals/decide", data={**DECISION, "csrf": csrf},
                    follow_redirects=False)
    assert r.status_code == 303
    assert decisions.sent == [{"device": "press-7", "run_id": "r1", "approval_id": 3,
                               "approve": True, "note": "ok", "patch": {"lot": 4},
                               "by": "ana"}]
    assert "approved approval 3 of run r1 on press-7: command c1 sent" in \
        client.get("/approvals").text
    # a patch must be a JSON object, as on the CLI
    r = client.post("/approvals/decide", data={**DECISION, "patch": "[1]", "csrf": csrf})
    assert r.status_code == 400 and "must be a JSON object" in r.text
    assert len(decisions.sent) == 1


def test_viewer_is_refused_server_side(console: tuple[TestClient, Decisions],
                                       tokens: TokenFile) -> None:
    client, decisions = console
    csrf = login(client, tokens.add("bob", "viewer"))
    r = client.post("/approvals/decide", data={**DECISION, "csrf": csrf})
    assert r.status_code == 403 and "viewer" in r.text
    assert decisions.sent == []


def test_every_action_checks_csrf(console: tuple[TestClient, Decisions],
                                  tokens: TokenFile) -> None:
    client, decisions = console
    csrf = login(client, tokens.add("ana", "operator"))
    for sent in (None, "", csrf[:-2] + "xx"):
        data = {**DECISION} | ({} if sent is None else {"csrf": sent})
        r = client.post("/approvals/decide", data=data)
        assert r.status_code == 403 and "CSRF" in r.text
    assert client.post("/logout", data={"csrf": "nope"}).status_code == 403
    # a login form posted from elsewhere (no session's token) is refused too
    other = TestClient(client.app, base_url="http://127.0.0.1")
    assert other.post("/login", data={"token": "x", "csrf": "y"}).status_code == 403
    assert decisions.sent == []


def test_revoked_token_ends_its_session(console: tuple[TestClient, Decisions],
                                        tokens: TokenFile) -> None:
    client, _ = console
    login(client, tokens.add("ana", "operator"))
    tokens.revoke("ana")
    tokens.add("ana", "operator")  # the same name again is another token
    assert client.get("/runs", follow_redirects=False).status_code == 303


def test_insecure_serves_without_login(tmp_path: Path) -> None:
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    decisions = Decisions()
    try:
        with TestClient(Console(Fleet(store, decisions), None).app(),
                        base_url="http://localhost:8080") as client:
            page = client.get("/approvals")
            assert page.status_code == 200 and "insecure (operator)" in page.text
            csrf = CSRF.findall(page.text)[0]
            assert client.post("/approvals/decide", data=DECISION).status_code == 403
            client.post("/approvals/decide", data={**DECISION, "csrf": csrf})
            assert decisions.sent[0]["by"] == "insecure"
        # reached through another name (DNS rebinding): refused
        with TestClient(Console(Fleet(store, decisions), None).app(),
                        base_url="http://attacker.example") as client:
            assert client.get("/approvals").status_code == 400
    finally:
        store.close()


def cloud(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLOUD, *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60)


BASE = '[mqtt]\nbroker = "127.0.0.1:1883"\ninsecure = true\n[store]\nurl = "sqlite:///c.db"\n'


def test_insecure_refused_on_anything_but_loopback(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(BASE + '[console]\nlisten = "0.0.0.0:8080"\ninsecure = true\n')
    r = cloud(cfg, "console")
    assert r.returncode == 78
    assert "console.insecure: is refused on anything but loopback" in r.stderr
    assert "(got True)" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text(BASE)
    r = cloud(cfg, "console", "--listen", "192.0.2.1:8080", "--insecure", "--json")
    assert r.returncode == 78 and "loopback" in json.loads(r.stderr)["error"]
    # without tokens and without insecure there is nothing to log in with: refused too
    r = cloud(cfg, "console", "--listen", "127.0.0.1:1")
    assert r.returncode == 78 and "console.tokens: no token" in r.stderr


def test_console_table_errors_name_key_and_value(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(BASE + '[console]\nlisten = "nohost"\ninsecure = "yes"\ncolour = 1\n'
                   'tls_cert = "c.pem"\n')
    r = cloud(cfg, "status")
    assert r.returncode == 78, r.stderr
    for line in ("console.listen: must be host:port (or [v6]:port) (got 'nohost')",
                 "console.insecure: must be true or false (got 'yes')",
                 "console.colour: unknown key (got 1)",
                 "console.tls_key: tls_cert and tls_key go together (got 'c.pem')"):
        assert line in r.stderr, r.stderr


def test_token_commands(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(BASE + '[console]\ntokens = "secrets/tokens.json"\n')
    (tmp_path / "secrets").mkdir()
    r = cloud(cfg, "console", "token", "add", "ana", "--role", "operator")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    path = tmp_path / "secrets" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and token not in path.read_text()
    r = cloud(cfg, "console", "token", "add", "bob", "--role", "admin")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    listed = json.loads(cloud(cfg, "console", "token", "list", "--json").stdout)
    assert [(t["name"], t["role"]) for t in listed["tokens"]] == [("ana", "operator")]
    assert cloud(cfg, "console", "token", "revoke", "ana").returncode == 0
    r = cloud(cfg, "console", "token", "revoke", "ana", "--json")
    assert r.returncode == 1 and "no token named 'ana'" in json.loads(r.stderr)["error"]


def test_odd_ids_and_values_are_refused_without_a_server_error(
        console: tuple[TestClient, Decisions], tokens: TokenFile) -> None:
    """A run or deployment the cloud does not hold is a 404 page, whatever its id; an
    approval id no store integer can hold is a 400, nothing sent (it was a 500)."""
    client, decisions = console
    csrf = login(client, tokens.add("ana", "operator"))
    for path in ("/runs/press-7/nope", "/runs/%00/%ff", "/deployments/nope",
                 "/deployments/%ff", "/deployments/" + "a" * 5000):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "The cloud holds no" in r.text
    for approval_id in (str(2**70), "-1", "0"):
        r = client.post("/approvals/decide",
                        data={**DECISION, "approval_id": approval_id, "csrf": csrf})
        assert r.status_code == 400 and "approval_id: an approval id" in r.text, r.text
    assert decisions.sent == []
    r = client.get("/runs", params={"status": "bogus"})
    assert r.status_code == 200 and "status: one of queued" in r.text
