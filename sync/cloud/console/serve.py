"""Serve the console: the store, the CLI's decide, uvicorn, until SIGTERM or SIGINT."""

from __future__ import annotations

import functools
import logging
from typing import Any

from sync.cloud.console.settings import ConsoleSettings
from sync.cloud.console.tokens import TokenFile

log = logging.getLogger(__name__)


class ConsoleError(Exception):
    """The console cannot serve as configured."""

    def __init__(self, message: str, exit_code: int = 78) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def token_file(cfg: Any, settings: ConsoleSettings) -> TokenFile | None:
    """The tokens to log in with; None when served insecure. No token and not insecure is
    a configuration error: the console never serves an open door by accident."""
    if settings.insecure:
        return None
    tokens = TokenFile(settings.tokens)
    if not tokens.entries():
        raise ConsoleError(f"{cfg.path}: console.tokens: no token in {settings.tokens} "
                           "(edge-agent-cloud console token add NAME --role operator makes "
                           "one; console.insecure = true serves without, on loopback only)")
    return tokens


def serve(cfg: Any, settings: ConsoleSettings) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean stop."""
    tokens = token_file(cfg, settings)
    import uvicorn

    from sync.cloud.console.app import Console
    from sync.cloud.console.fleet import Fleet
    from sync.cloud.decisions import decide
    from sync.cloud.wiring import store_of

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    store = store_of(cfg)
    try:
        # the CLI's own action: each decision a signed command through a short-lived client
        fleet = Fleet(store, functools.partial(decide, cfg, store), groups=cfg.groups)
        app = Console(fleet, tokens).app(https_only=settings.tls)
        if settings.insecure:
            log.warning("console.insecure = true: no login, every visitor is an operator;"
                        " serving on loopback only (%s)", settings.host)
        server = uvicorn.Server(uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="info",
            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
            proxy_headers=False, server_header=False))
        server.run()
    finally:
        store.close()
    return 0
