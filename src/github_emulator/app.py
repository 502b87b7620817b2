"""The emulator's WSGI application: GitHub REST routes plus the cross-cutting behaviour.

Every GitHub REST request goes through ``Emulator.serve``: authentication, fault injection,
primary and secondary rate limits, the handler, ETag/304, rate-limit headers and accounting.
The control API (``/_emulator/``) and the runner-agent API (``/_agent/``) live in
``control.py`` and ``agent_api.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlencode

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.local import LocalProxy

from github_emulator.faults import FaultInjector
from github_emulator.ratelimit import Budget, RateLimiter
from github_emulator.runner_app import RunnerAppCatalog
from github_emulator.settings import Seed, Settings
from github_emulator.state import (
    EmulatorError,
    EmulatorState,
    Token,
)
from github_emulator.stats import Stats
from github_emulator.webhooks import Dispatcher

logger = logging.getLogger("github_emulator")

DOCS = "https://docs.github.com/rest"
RATE_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
SECONDARY_DOCS = (
    "https://docs.github.com/free-pro-team@latest/rest/overview/"
    "rate-limits-for-the-rest-api#about-secondary-rate-limits"
)
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNCOUNTED_OPERATIONS = frozenset({"rate-limit/get"})
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 30


@dataclass
class Reply:
    """What a REST handler returns: a JSON-able body, a status and extra headers."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    data = b"" if body is None else _dumps(body)
    resp = Response(data, status=status, mimetype="application/json; charset=utf-8")
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def flask_path(path: str) -> str:
    """``/orgs/{org}/actions/runners/{runner_id}`` → ``/orgs/<org>/actions/runners/<int:runner_id>``."""
    out = path
    for name in ("runner_id", "runner_group_id", "run_id", "job_id", "hook_id", "delivery_id"):
        out = out.replace("{" + name + "}", f"<int:{name}>")
    return out.replace("{", "<").replace("}", ">")


class Emulator:
    """One emulated GitHub: state, limits, faults, stats, webhooks and the Flask app."""

    def __init__(self, settings: Settings | None = None, seed: Seed | None = None) -> None:
        self.settings = settings or Settings()
        self.state = EmulatorState(self.settings, seed)
        self.limiter = RateLimiter(self.settings)
        self.faults = FaultInjector()
        self.stats = Stats(self.settings.request_log_size)
        self.dispatcher = Dispatcher(self.state)
        self.state.on_delivery = self.dispatcher.submit
        self.runner_apps = RunnerAppCatalog()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        """The WSGI application of this emulator (routes are shared, state is not)."""
        environ[ENVIRON_KEY] = self
        return shared_app()(environ, start_response)

    @staticmethod
    def current() -> Emulator:
        """The emulator serving the current request."""
        emu: Emulator = request.environ[ENVIRON_KEY]
        return emu

    # ------------------------------------------------------------------ lifecycle
    def start_background(self, interval: float = 0.2) -> None:
        """Start the housekeeping thread (expiry, lost runners, simulated runners)."""
        if self._ticker is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.state.tick()
                except Exception:  # keep ticking whatever one tick hit
                    logger.exception("event=tick_failed")

        self._ticker = threading.Thread(target=loop, name="emulator-tick", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        self.state.closed = True
        self.faults.clear()
        self.dispatcher.stop()
        with self.state.changed:
            self.state.changed.notify_all()

    def reset(self, full: bool = False) -> None:
        self.faults.clear()
        self.state.reset(full=full)
        self.limiter.reset()
        self.stats.reset()

    # ------------------------------------------------------------------ helpers for handlers
    @staticmethod
    def base() -> str:
        return request.host_url.rstrip("/")

    def agent_url(self) -> str:
        """Where runners reach the agent API: ``agent_host`` (same port) or the client's address."""
        host = self.settings.agent_host
        if not host:
            return self.base()
        port = self.state.port or request.host.rsplit(":", 1)[-1]
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{request.scheme}://{host}:{port}"

    @staticmethod
    def body() -> dict[str, Any]:
        if not request.get_data():
            return {}
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise EmulatorError(400, "Problems parsing JSON")
        return data

    @staticmethod
    def paginate(items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """GitHub pagination: ``per_page`` (default 30, max 100), ``page``, and a Link header."""
        per_page = _int_arg("per_page", DEFAULT_PER_PAGE)
        per_page = DEFAULT_PER_PAGE if per_page <= 0 else min(per_page, MAX_PER_PAGE)
        page = max(1, _int_arg("page", 1))
        total = len(items)
        last = max(1, -(-total // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        headers: dict[str, str] = {}
        if last > 1 or page > 1:
            links = []
            if page > 1:
                links.append((min(page - 1, last), "prev"))
            if page < last:
                links.append((page + 1, "next"))
                links.append((last, "last"))
            if page > 1:
                links.append((1, "first"))
            headers["Link"] = ", ".join(f'<{_page_url(n)}>; rel="{rel}"' for n, rel in links)
        return chunk, headers

    # ------------------------------------------------------------------ the request pipeline
    def serve(
        self, operation_id: str, handler: Callable[..., Reply], kwargs: dict[str, Any]
    ) -> Response:
        method = request.method
        token = self._authenticate()
        g.token = token
        key = token.key if token else None
        budget: Budget | None = None
        try:
            if token is None and operation_id != "rate-limit/get":
                raise self._auth_error()
            fault = self.faults.match(method, request.path, operation_id)
            early = self.apply_fault(fault, key) if fault is not None else None
            if early is not None:
                resp = early  # the injected answer replaces the real one
            else:
                if key is not None:
                    budget = self._charge(key, method, operation_id)
                reply = handler(**kwargs)
                resp = _json_response(reply.body, reply.status, reply.headers)
                if fault is not None and fault.malformed:
                    data = resp.get_data()
                    resp.set_data(data[: max(1, len(data) // 2)] + b'{"')
        except EmulatorError as exc:
            resp = _json_response(exc.body(), exc.status, exc.headers)
        if method == "GET" and resp.status_code == 200:
            etag = 'W/"' + hashlib.sha256(resp.get_data()).hexdigest() + '"'
            resp.headers["ETag"] = etag
            if _etag_matches(request.headers.get("If-None-Match"), etag):
                resp = Response(status=304)
                resp.headers["ETag"] = etag
                if key is not None and budget is not None:
                    budget = self.limiter.refund(key)
        if key is not None:
            if budget is None:
                budget = self.limiter.peek(key)
            resp.headers.update(_rate_headers(budget))
        resp.headers["Cache-Control"] = "private, max-age=60, s-maxage=60"
        resp.headers["Vary"] = "Accept, Authorization, Cookie, X-GitHub-OTP"
        resp.headers["X-GitHub-Media-Type"] = "github.v3; format=json"
        resp.headers["X-GitHub-Api-Version-Selected"] = "2022-11-28"
        resp.headers["X-GitHub-Request-Id"] = uuid.uuid4().hex[:16].upper()
        self.stats.record(method, request.path, operation_id, resp.status_code, key)
        return resp

    def _authenticate(self) -> Token | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not value.strip():
            g.auth_given = bool(header)
            return None
        g.auth_given = True
        token = self.state.token(value.strip())
        return token

    @staticmethod
    def _auth_error() -> EmulatorError:
        if g.get("auth_given"):
            return EmulatorError(401, "Bad credentials", documentation_url=DOCS)
        return EmulatorError(401, "Requires authentication", documentation_url=DOCS)

    def _charge(self, key: str, method: str, operation_id: str) -> Budget:
        if operation_id in UNCOUNTED_OPERATIONS:
            return self.limiter.peek(key)
        ok, budget = self.limiter.reserve(key)
        if not ok:
            self.stats.bump("primary_limited")
            raise EmulatorError(
                403,
                f"API rate limit exceeded for user ID {self.state.tokens_index(key)}. If you reach "
                "out to GitHub Support for help, please include the request ID "
                f"{uuid.uuid4().hex[:16].upper()}.",
                headers=_rate_headers(budget),
                documentation_url=RATE_DOCS,
            )
        if method in WRITE_METHODS:
            wait = self.limiter.charge_write(key)
            if wait is not None:
                self.stats.bump("secondary_limited")
                raise self._secondary_error(wait, budget)
        return budget

    @staticmethod
    def _secondary_error(wait: int, budget: Budget | None, status: int = 403) -> EmulatorError:
        headers = {"retry-after": str(wait)}
        if budget is not None:
            headers.update(_rate_headers(budget))
        return EmulatorError(
            status,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
            "again. If you reach out to GitHub Support for help, please include the request ID "
            f"{uuid.uuid4().hex[:16].upper()}.",
            headers=headers,
            documentation_url=SECONDARY_DOCS,
        )

    def apply_fault(self, fault: Any, key: str | None) -> Response | None:
        if fault.latency:
            time.sleep(fault.latency)
        if fault.hang:
            # Hold the connection until the client gives up (or faults are cleared).
            self.faults.release.wait(fault.hang_seconds)
            return _json_response({"message": "Gateway Timeout", "documentation_url": DOCS}, 504)
        if fault.status:
            budget = self.limiter.peek(key) if key else None
            if fault.status in (403, 429) and (
                fault.retry_after is not None or fault.status == 429
            ):
                err = self._secondary_error(fault.retry_after or 60, budget, fault.status)
                return _json_response(err.body(), err.status, err.headers)
            message = {
                500: "Server Error",
                502: "Server Error",
                503: "Service Unavailable",
                504: "Gateway Timeout",
            }.get(fault.status, "Injected fault")
            headers = _rate_headers(budget) if budget else {}
            if fault.retry_after is not None:
                headers["retry-after"] = str(fault.retry_after)
            return _json_response(
                {"message": message, "documentation_url": DOCS}, fault.status, headers
            )
        return None


ENVIRON_KEY = "github_emulator.instance"
_APP: Flask | None = None
_APP_LOCK = threading.Lock()

#: The emulator serving the current request, usable wherever a request is being handled.
CURRENT: Emulator = cast("Emulator", LocalProxy(Emulator.current))


def shared_app() -> Flask:
    """The Flask app with every route, built once per process (rule compilation is slow).

    Each ``Emulator`` puts itself in the WSGI environ; handlers find it through ``CURRENT``.
    """
    global _APP
    with _APP_LOCK:
        if _APP is None:
            _APP = _build_app()
        return _APP


def _build_app() -> Flask:
    from github_emulator import agent_api, control, rest

    app = Flask("github_emulator")
    rest.register(app, CURRENT)
    control.register(app, CURRENT)
    agent_api.register(app, CURRENT)

    @app.errorhandler(EmulatorError)
    def _emulator_error(exc: EmulatorError) -> Response:
        return _json_response(exc.body(), exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        # GitHub answers unknown routes and wrong methods alike with 404 Not Found.
        status = exc.code or 500
        if status in (404, 405):
            status = 404
        message = "Not Found" if status == 404 else (exc.description or "error")
        if request.path.startswith(("/_emulator", "/_agent")):
            CURRENT.stats.bump("control_requests")
        else:
            CURRENT.stats.record(request.method, request.path, "unknown", status, None)
        return _json_response({"message": message, "documentation_url": DOCS}, status)

    return app


def rest_route(app: Flask, method: str, path: str, operation_id: str) -> Callable[..., Any]:
    """Decorator: register a GitHub REST handler under its operationId."""

    def decorate(handler: Callable[..., Reply]) -> Callable[..., Reply]:
        def view(**kwargs: Any) -> Response:
            return Emulator.current().serve(operation_id, handler, kwargs)

        app.add_url_rule(flask_path(path), endpoint=operation_id, view_func=view, methods=[method])
        return handler

    return decorate


def _int_arg(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except (TypeError, ValueError):
        return default


def _page_url(page: int) -> str:
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "page"]
    args.append(("page", str(page)))
    return f"{request.base_url}?{urlencode(args)}"


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True

    def bare(tag: str) -> str:
        tag = tag.strip()
        return tag[2:] if tag.startswith("W/") else tag

    return any(bare(candidate) == bare(etag) for candidate in header.split(","))


def _rate_headers(budget: Budget) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(budget.limit),
        "x-ratelimit-remaining": str(budget.remaining),
        "x-ratelimit-used": str(budget.used),
        "x-ratelimit-reset": str(budget.reset),
        "x-ratelimit-resource": "core",
    }
