"""Webhook delivery: one background worker per hook, so a slow receiver never blocks the API.

Deliveries to one hook go out in the order they were created. Each is signed like GitHub's
(``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``) and recorded with the
receiver's answer, so the hook-deliveries endpoints can list and redeliver them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

import requests

from github_emulator.state import Delivery, Hook

if TYPE_CHECKING:
    from github_emulator.state import EmulatorState

logger = logging.getLogger("github_emulator.webhooks")

USER_AGENT = "GitHub-Hookshot/emulator"
MAX_RECORDED_RESPONSE = 4096


def signature_256(secret: str, body: bytes) -> str:
    """GitHub's ``X-Hub-Signature-256`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_1(secret: str, body: bytes) -> str:
    """The legacy ``X-Hub-Signature`` (SHA-1) value GitHub still sends."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


class Dispatcher:
    """Queues deliveries per hook and sends them from worker threads."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._queues: dict[int, queue.Queue[Delivery | None]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._stopped = False
        self.sent = 0
        self.failed = 0

    def submit(self, hook: Hook, delivery: Delivery) -> None:
        """Queue ``delivery`` for ``hook`` (returns at once)."""
        with self._lock:
            if self._stopped:
                return
            q = self._queues.get(hook.id)
            if q is None:
                q = queue.Queue()
                self._queues[hook.id] = q
                thread = threading.Thread(
                    target=self._worker, args=(q,), name=f"hook-{hook.id}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._pending += 1
        q.put(delivery)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued delivery has been attempted; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            queues = list(self._queues.values())
        for q in queues:
            q.put(None)

    def _worker(self, q: queue.Queue[Delivery | None]) -> None:
        session = requests.Session()
        while True:
            delivery = q.get()
            if delivery is None:
                return
            try:
                self._send(session, delivery)
            except Exception:  # a bad receiver must never kill the worker
                logger.exception("event=webhook_error delivery_id=%s", delivery.id)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _send(self, session: requests.Session, delivery: Delivery) -> None:
        hook = self.state.hooks.get(delivery.hook_id)
        if hook is None:
            delivery.status = "hook deleted"
            return
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-GitHub-Event": delivery.event,
            "X-GitHub-Delivery": delivery.guid,
            "X-GitHub-Hook-ID": str(hook.id),
            "X-GitHub-Hook-Installation-Target-Type": (
                "organization" if hook.scope_kind == "org" else "repository"
            ),
            "X-GitHub-Hook-Installation-Target-ID": str(self._target_id(hook)),
        }
        if hook.secret:
            headers["X-Hub-Signature"] = signature_1(hook.secret, delivery.body)
            headers["X-Hub-Signature-256"] = signature_256(hook.secret, delivery.body)
        delivery.request_headers = headers
        started = time.monotonic()
        delivery.delivered_at = time.time()
        try:
            response = session.post(
                hook.url,
                data=delivery.body,
                headers=headers,
                timeout=self.state.settings.hook_timeout,
            )
        except requests.Timeout:
            delivery.status, delivery.status_code = "timed out", 0
        except requests.RequestException as exc:
            delivery.status, delivery.status_code = f"failed to connect: {type(exc).__name__}", 0
        else:
            delivery.status_code = response.status_code
            delivery.status = (
                "OK"
                if 200 <= response.status_code < 300
                else (f"Invalid HTTP Response: {response.status_code}")
            )
            delivery.response_headers = dict(response.headers)
            delivery.response_body = response.text[:MAX_RECORDED_RESPONSE]
        delivery.duration = time.monotonic() - started
        ok = 200 <= delivery.status_code < 300
        with self._lock:
            if ok:
                self.sent += 1
            else:
                self.failed += 1
        logger.info(
            "event=webhook_delivered hook_id=%s delivery_id=%s guid=%s action=%s status=%s",
            hook.id,
            delivery.id,
            delivery.guid,
            delivery.action,
            delivery.status_code,
        )

    def _target_id(self, hook: Hook) -> int:
        if hook.scope_kind == "org":
            org = self.state.orgs.get(hook.scope.lower())
            return org.id if org else 0
        repo = self.state.repos.get(hook.scope.lower())
        return repo.id if repo else 0
