"""The long-running manager service: webhook intake, job consumers, reconcile loop, poll, sweeper.

``RunnerManager.serve(stop)`` runs a :class:`ManagerService` until ``stop`` is set. Every loop is guarded:
a Redis or GitHub outage (or a backend error) is logged in one line and retried with exponential backoff;
nothing an outage raises ends the process. What runs:

* the webhook HTTP server (when ``webhook`` is configured) feeding the Redis job stream;
* ``consumers`` threads reading the stream (``XREADGROUP``; a crashed unit's entries are re-claimed),
  each event handled by :meth:`RunnerManager.handle_job_event`, then acknowledged; an event whose handling
  hit a Redis outage stays unacknowledged and comes back;
* the reconcile loop, every ``reconcile_interval`` with ±20 % jitter (a fleet of units does not act in step);
* the conditional poll for queued jobs no webhook announced, every ``github.poll_interval``;
* the sweeper (every ``sweep_interval``): heartbeat, removal of finished runners' husks, runners for
  pending jobs that waited for a free slot, GitHub usage published to the fleet counters, runner gauges;
* the Prometheus endpoint (when ``metrics_listen`` is set).

Shutdown (``stop`` set, e.g. by SIGTERM): intake stops first, loops finish their current step, running
creates and deletes get ``shutdown_grace`` seconds. Runners are left running: they belong to the fleet.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from github_runner_manager.backends.base import BackendError
from github_runner_manager.config import ConfigError
from github_runner_manager.github import GitHubAuthError, GitHubError, RateLimited
from github_runner_manager.jobqueue import JobQueue
from github_runner_manager.metrics import MetricsServer, parse_listen, start_metrics_server
from github_runner_manager.store import StoreUnavailable
from github_runner_manager.webhook import WebhookServer, create_app

if TYPE_CHECKING:
    from github_runner_manager.manager import RunnerManager

logger = logging.getLogger(__name__)

#: Errors a loop expects from the world (logged in one line, retried with backoff).
EXPECTED = (StoreUnavailable, GitHubError, BackendError, ConfigError, OSError)


class ManagerService:
    """Threads that keep one manager serving (see the module docstring).

    Args:
        manager: the manager to serve.
        consumers: job stream consumer threads (default: up to 4, bounded by ``concurrency``).
        sweep_interval: seconds between sweeper passes.
        max_backoff: the longest wait after repeated failures of a loop.
        shutdown_grace: seconds running operations get to finish on shutdown.
    """

    def __init__(
        self,
        manager: RunnerManager,
        *,
        consumers: int | None = None,
        sweep_interval: float = 2.0,
        max_backoff: float = 60.0,
        shutdown_grace: float = 20.0,
    ) -> None:
        self.manager = manager
        self.config = manager.config
        self.consumers = consumers or max(1, min(4, self.config.concurrency))
        self.sweep_interval = sweep_interval
        self.max_backoff = max_backoff
        self.shutdown_grace = shutdown_grace
        self.webhook: WebhookServer | None = None
        self.metrics_server: MetricsServer | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------- lifecycle
    def start_servers(self) -> None:
        """Bind the webhook and metrics endpoints (errors surface here, before any loop starts).

        Raises:
            ConfigError: the webhook secret is missing.
            OSError: an address cannot be bound.
        """
        cfg = self.config
        if cfg.webhook is not None:
            secret = cfg.webhook.resolve_secret().get_secret_value().encode()
            host, port = parse_listen(cfg.webhook.listen)
            app = create_app(
                self.manager.jobqueue, secret, path=cfg.webhook.path, metrics=self.manager.metrics
            )
            self.webhook = WebhookServer(app, host, port)
            self.webhook.start()
        if cfg.metrics_listen:
            host, port = parse_listen(cfg.metrics_listen)
            self.metrics_server = start_metrics_server(self.manager.metrics.registry, host, port)

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        self.start_servers()
        cfg = self.config
        logger.info(
            "manager unit=%s serving: %d groups, reconcile every %gs, poll every %gs, %d consumers%s",
            cfg.unit, len(cfg.runner_groups), cfg.reconcile_interval, cfg.github.poll_interval,
            self.consumers, f", webhook {self.webhook.url}{cfg.webhook.path}" if self.webhook and cfg.webhook else "",
        )  # fmt: skip
        self._spawn(
            "reconcile",
            self._loop,
            stop,
            "reconcile",
            self._reconcile_interval,
            self.manager.reconcile,
        )
        self._spawn(
            "poll", self._loop, stop, "poll", self._poll_interval, self.manager.poll_queued_jobs
        )
        self._spawn(
            "sweeper", self._loop, stop, "sweeper", lambda: self.sweep_interval, self._sweep
        )
        for index in range(self.consumers):
            self._spawn(f"consumer-{index}", self._consume, stop, index)
        try:
            while not stop.wait(
                0.5
            ):  # wake up now and then: signal handlers run on the main thread
                pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop intake, let loops end, give running operations a grace period."""
        logger.info("manager unit=%s shutting down", self.config.unit)
        if self.webhook is not None:
            self.webhook.stop()
        deadline = time.monotonic() + self.shutdown_grace
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if not self.manager.wait_idle(timeout=max(0.1, deadline - time.monotonic())):
            logger.warning(
                "shutdown: some creates/deletes still running; the next start settles them"
            )
        if self.metrics_server is not None:
            self.metrics_server.stop()
        logger.info("manager unit=%s stopped", self.config.unit)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"ghrm-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # ---------------------------------------------------------------------------------- loops
    def _reconcile_interval(self) -> float:
        return self.config.reconcile_interval * random.uniform(0.8, 1.2)

    def _poll_interval(self) -> float:
        return self.config.github.poll_interval * random.uniform(0.9, 1.1)

    def _loop(
        self,
        stop: threading.Event,
        name: str,
        interval: Callable[[], float],
        body: Callable[[], object],
    ) -> None:
        """Run ``body`` now and then every ``interval()``; back off exponentially while it fails."""
        failures = 0
        delay = 0.0
        while not stop.wait(delay):
            try:
                body()
            except Exception as exc:
                failures += 1
                delay = self._backoff(failures, exc)
                if isinstance(exc, EXPECTED):
                    level = logging.ERROR if isinstance(exc, GitHubAuthError) else logging.WARNING
                    logger.log(level, "%s failed: %s; retrying in %.1fs", name, exc, delay)
                else:
                    logger.exception("%s failed unexpectedly; retrying in %.1fs", name, delay)
                continue
            failures = 0
            delay = interval()

    def _backoff(self, failures: int, exc: BaseException) -> float:
        if isinstance(exc, RateLimited):
            return min(self.max_backoff * 10, max(1.0, exc.retry_at - time.time()))
        base = min(self.max_backoff, 0.5 * 2 ** min(failures, 10))
        return base / 2 + random.random() * base / 2

    def _sweep(self) -> None:
        self.manager.heartbeat()
        if not self.manager.sweep_done():
            self.manager.serve_pending()  # a slot may have freed elsewhere in the fleet
        self.manager.publish_github_stats()
        self.manager.metrics.set_runner_counts(self.manager.store.counts())

    def _consume(self, stop: threading.Event, index: int) -> None:
        """Read the job stream and hand each event to the manager; ack once handled."""
        queue = JobQueue(
            self.manager.store.client,
            key_prefix=self.manager.store.key_prefix,
            consumer=f"{self.manager.jobqueue.consumer}-{index}",
            claim_idle_ms=self.manager.jobqueue.claim_idle_ms,
        )
        failures = 0
        while not stop.is_set():
            try:
                entries = queue.read(count=10, block_ms=1000)
            except Exception as exc:
                failures += 1
                delay = self._backoff(failures, exc)
                logger.warning(
                    "job consumer %d: reading the job stream failed: %s; retrying in %.1fs",
                    index,
                    exc,
                    delay,
                )
                stop.wait(delay)
                continue
            failures = 0
            for entry_id, event in entries:
                try:
                    self.manager.handle_job_event(event)
                except StoreUnavailable as exc:
                    logger.warning(
                        "job %d (%s) not handled, Redis failed: %s; it will come back",
                        event.job_id,
                        event.action,
                        exc,
                    )
                    break
                except EXPECTED as exc:
                    # the job is recorded as pending: reconcile makes sure of its runner later
                    logger.warning(
                        "job %d (%s): %s; reconcile will retry", event.job_id, event.action, exc
                    )
                except Exception:
                    logger.exception(
                        "job %d (%s) handling failed unexpectedly", event.job_id, event.action
                    )
                try:
                    queue.ack(entry_id)
                except StoreUnavailable as exc:
                    logger.warning("ack of job entry %s failed: %s", entry_id, exc)
                    break
