"""The GitHub webhook endpoint: verify, validate, enqueue, answer at once.

Order of checks for ``POST {path}`` (each failure is answered without touching the queue):

1. body larger than ``max_body`` → **413** (the body is never buffered beyond the limit);
2. ``X-Hub-Signature-256`` missing → **401**; not ``sha256=`` + HMAC-SHA256(secret, raw body) compared
   in constant time → **401**. The signature is checked over the raw bytes *before* any parsing;
3. ``X-GitHub-Event: ping`` → **200**; any event other than ``workflow_job`` → **204**;
4. malformed JSON or a ``workflow_job`` payload missing a needed field → **400** naming the field;
5. enqueued → **202** ``{"result": "enqueued"}``; seen before → **202** ``{"result": "duplicate"}``;
   Redis unavailable → **503** (GitHub shows the failed delivery; the conditional poll recovers it).

``GET /healthz`` answers 200 when Redis answers, 503 otherwise. The secret and the signature are
never logged; log lines carry the delivery id, event, action and job id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from github_runner_manager.jobqueue import JobEvent, JobQueue
from github_runner_manager.store import StoreUnavailable

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from github_runner_manager.metrics import Metrics

logger = logging.getLogger(__name__)

#: Default request body limit; workflow_job payloads are a few KiB.
MAX_BODY = 1024 * 1024
SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` is ``sha256=`` + hex HMAC-SHA256 of ``body`` keyed with ``secret``.

    Constant-time comparison; an empty secret never verifies.
    """
    if not secret or not header:
        return False
    algorithm, sep, received = header.strip().partition("=")
    if not sep or algorithm.lower() != "sha256":
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode("ascii"), received.strip().lower().encode("utf-8"))


def _json(code: int, **body: object) -> Response:
    return Response(json.dumps(body), status=code, mimetype="application/json")


class WebhookApp:
    """The WSGI application (see the module docstring for the promised answers).

    Args:
        queue: where ``workflow_job`` events go.
        secret: the webhook secret (bytes; empty is refused: an unsigned endpoint could spawn runners).
        path: URL path GitHub posts to.
        on_event: called with each newly enqueued :class:`JobEvent` (e.g. to wake a consumer);
            its failures are logged and never change the answer.
        metrics: optional :class:`~github_runner_manager.metrics.Metrics` to count deliveries.
        max_body: largest accepted body in bytes.
    """

    def __init__(
        self,
        queue: JobQueue,
        secret: bytes,
        *,
        path: str = "/webhook",
        on_event: Callable[[JobEvent], None] | None = None,
        metrics: Metrics | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        if not secret:
            raise ValueError("webhook secret must not be empty")
        self._queue = queue
        self._secret = bytes(secret)
        self.path = "/" + path.strip("/")
        self._on_event = on_event
        self._metrics = metrics
        self.max_body = int(max_body)

    def __repr__(self) -> str:
        return f"WebhookApp(path={self.path!r})"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = self.max_body
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        if request.path == "/healthz":
            if request.method not in ("GET", "HEAD"):
                return _json(405, error="method not allowed")
            if self._queue.ping():
                return _json(200, status="ok")
            return _json(503, status="redis unavailable")
        if request.path.rstrip("/") != self.path.rstrip("/"):
            return _json(404, error="not found")
        if request.method != "POST":
            return _json(405, error="method not allowed; GitHub posts here")
        try:
            return self._handle(request)
        except Exception:  # pragma: no cover - last resort: never a traceback to the sender
            logger.exception(
                "webhook delivery %s failed unexpectedly", request.headers.get(DELIVERY_HEADER, "-")
            )
            return _json(500, error="internal error")

    def _reject(
        self, code: int, reason: str, message: str, event: str, delivery: str, *, detail: str = ""
    ) -> Response:
        logger.warning(
            "webhook delivery=%s event=%s rejected (%d %s): %s",
            delivery, event, code, reason, detail or message,
        )  # fmt: skip
        if self._metrics is not None:
            self._metrics.webhook_reject(reason)
            self._metrics.webhook_delivery(event, "rejected")
        return _json(code, error=message)

    def _handle(self, request: Request) -> Response:
        event = request.headers.get(EVENT_HEADER, "").strip()
        delivery = request.headers.get(DELIVERY_HEADER, "").strip()
        shown_event = event or "-"
        shown_delivery = delivery or "-"
        try:
            body = request.get_data(cache=True)
        except RequestEntityTooLarge:
            return self._reject(
                413,
                "too_large",
                f"body larger than {self.max_body} bytes",
                shown_event,
                shown_delivery,
            )
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            return self._reject(
                401, "missing_signature", f"missing {SIGNATURE_HEADER}", shown_event, shown_delivery
            )
        if not verify_signature(self._secret, body, signature):
            return self._reject(
                401, "bad_signature", "signature mismatch", shown_event, shown_delivery
            )
        if not event:
            return self._reject(
                400, "missing_header", f"missing {EVENT_HEADER}", "-", shown_delivery
            )
        if event == "ping":
            logger.info("webhook ping delivery=%s answered", shown_delivery)
            self._count(event, "pong")
            return _json(200, result="pong")
        if event != "workflow_job":
            logger.info("webhook delivery=%s event=%s ignored", shown_delivery, event)
            self._count(event, "ignored")
            return Response(status=204)
        if not delivery:
            return self._reject(400, "missing_header", f"missing {DELIVERY_HEADER}", event, "-")
        try:
            payload = self._payload(request, body)
        except ValueError as exc:
            return self._reject(400, "malformed_json", f"malformed JSON: {exc}", event, delivery)
        try:
            job_event = JobEvent.from_payload(delivery, payload)
        except ValueError as exc:
            return self._reject(400, "invalid_payload", str(exc), event, delivery)
        try:
            enqueued = self._queue.enqueue(job_event)
        except StoreUnavailable as exc:
            return self._reject(
                503,
                "unavailable",
                "queue unavailable, redeliver later",
                event,
                delivery,
                detail=str(exc),
            )
        result = "enqueued" if enqueued else "duplicate"
        logger.info(
            "webhook delivery=%s job=%d action=%s repo=%s %s",
            delivery, job_event.job_id, job_event.action, job_event.repo, result,
        )  # fmt: skip
        self._count(event, result)
        if enqueued and self._on_event is not None:
            try:
                self._on_event(job_event)
            except Exception:
                logger.exception("on_event callback failed for delivery=%s", delivery)
        return _json(202, result=result, job_id=job_event.job_id, action=job_event.action)

    def _count(self, event: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.webhook_delivery(event, result)

    @staticmethod
    def _payload(request: Request, body: bytes) -> Any:
        """The JSON payload; form-encoded deliveries carry it in the ``payload`` field."""
        if request.mimetype == "application/x-www-form-urlencoded":
            try:
                fields = parse_qs(body.decode("utf-8"), strict_parsing=True)
            except (UnicodeDecodeError, ValueError):
                raise ValueError("form body is not valid") from None
            values = fields.get("payload")
            if not values:
                raise ValueError("form body has no payload field")
            text = values[0]
        else:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("body is not UTF-8") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None


def create_app(
    queue: JobQueue,
    secret: bytes,
    *,
    path: str = "/webhook",
    on_event: Callable[[JobEvent], None] | None = None,
    metrics: Metrics | None = None,
    max_body: int = MAX_BODY,
) -> WebhookApp:
    """The webhook WSGI app (see :class:`WebhookApp`)."""
    return WebhookApp(
        queue, secret, path=path, on_event=on_event, metrics=metrics, max_body=max_body
    )


class WebhookServer:
    """Serve a WSGI app with werkzeug's threaded server in a daemon thread.

    ``port`` 0 picks a free port; :attr:`url` is valid after :meth:`start`.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.app = app
        self.host = host
        self.port = int(port)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._server is None:
            raise RuntimeError("webhook server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in the background.

        Raises:
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            return
        self._server = make_server(self.host, self.port, self.app, threaded=True)
        self.port = int(self._server.server_port)
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.1),
            name=f"webhook-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("webhook server listening on %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        logger.info("webhook server on port %d stopped", self.port)

    def __enter__(self) -> WebhookServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
