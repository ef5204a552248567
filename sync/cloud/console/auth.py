"""Who is asking, what they may do, and the CSRF check every action passes.

A session is Starlette's signed cookie (HttpOnly, SameSite=Strict, Secure over TLS) that
names the token's holder and carries the session's CSRF token. Each request checks the
holder against the token file, so a revoked token ends its sessions at once. Every POST
must carry the session's CSRF token in its form (`csrf`), compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request

from sync.cloud.console.tokens import Holder, TokenFile

INSECURE = Holder("insecure", "operator", "")  # who acts when served with insecure = true


class Refused(Exception):
    """A request that may not proceed: its HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request) -> dict[str, str]:
    """The form of a POST, once its CSRF token matches the session's (else 403)."""
    form = await request.form()
    sent, want = form.get("csrf"), request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(want, str) or not hmac.compare_digest(
            sent.encode(), want.encode()):
        raise Refused(403, "the form's CSRF token does not match this session (reload the"
                      " page and try again)")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def holder_of(request: Request, tokens: TokenFile | None) -> Holder | None:
    """The session's holder, if logged in with a token still in the file."""
    if tokens is None:
        return INSECURE
    name, key = request.session.get("who"), request.session.get("key")
    if not isinstance(name, str) or not isinstance(key, str):
        return None
    return tokens.still(name, key)


def log_in(request: Request, holder: Holder) -> None:
    """A fresh session for the holder (a new CSRF token too: no fixation)."""
    request.session.clear()
    request.session.update({"who": holder.name, "key": holder.key,
                            "csrf": secrets.token_urlsafe(32)})


def require_operator(holder: Holder) -> None:
    if not holder.operator:
        raise Refused(403, f"{holder.name} is a viewer: only an operator may send commands")
