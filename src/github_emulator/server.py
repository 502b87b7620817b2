"""A threaded werkzeug HTTP server around an ``Emulator`` (slow routes never block others)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from github_emulator.app import Emulator

logger = logging.getLogger("github_emulator")


class _QuietHandler(WSGIRequestHandler):
    """No access log: one line per request would drown the event log (and paths are enough)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def advertised_url(host: str, port: int) -> str:
    """The base URL clients should use: wildcard addresses become loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


class EmulatorServer:
    """Serves ``emulator`` on ``host:port`` (0 picks a free port) from a background thread."""

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator
        self._server: BaseWSGIServer = make_server(
            host, port, emulator.app, threaded=True, request_handler=_QuietHandler
        )
        self.host = host
        self.port = int(self._server.server_port)
        self.url = advertised_url(host, self.port)
        emulator.state.base_url = self.url
        emulator.state.port = self.port
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        self.emulator.start_background()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="emulator-http",
            daemon=True,
        )
        self._thread.start()
        logger.info("event=emulator_started url=%s listen=%s:%s", self.url, self.host, self.port)
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until ``stop`` is called from another one."""
        self.emulator.start_background()
        logger.info("event=emulator_started url=%s listen=%s:%s", self.url, self.host, self.port)
        self._server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        self.emulator.stop()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        logger.info("event=emulator_stopped url=%s", self.url)
