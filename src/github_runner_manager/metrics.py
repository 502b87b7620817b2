"""Prometheus metrics of the runner manager, on a registry of its own.

Every :class:`Metrics` owns a dedicated :class:`~prometheus_client.CollectorRegistry` instead of the
process-global one, so several managers (or several tests) in one process never clash on metric names.
All metric names start with ``ghrm_``. Label values are bounded sets (group names, states, backend
names, error class names, reasons); job ids, runner names and repositories are never labels, so the
series count stays flat however many jobs run.

Promised series (see :class:`Metrics` for the attribute names):

* ``ghrm_runners{group,state}`` -- runners by group and state (gauge, set from Redis counts);
* ``ghrm_jobs_queued_total{group}``, ``ghrm_jobs_started_total{group}``,
  ``ghrm_jobs_completed_total{group,conclusion}`` -- workflow_job events seen;
* ``ghrm_job_pickup_seconds{group}`` -- queued -> picked up by a runner (histogram, 0.1 s .. 10 min);
* ``ghrm_jobs_refused_total{group,reason}`` (sizing beyond policy) and ``ghrm_jobs_unmatched_total``;
* ``ghrm_github_requests_total{operation}``, ``ghrm_github_rate_limit_units_total``,
  ``ghrm_github_not_modified_total``, ``ghrm_github_rate_limit_remaining``,
  ``ghrm_github_rate_limit_reset_timestamp_seconds``;
* ``ghrm_backend_create_seconds{backend}``, ``ghrm_backend_delete_seconds{backend}`` (histograms) and
  ``ghrm_backend_errors_total{backend,operation,error}`` (error = exception class name);
* ``ghrm_webhook_deliveries_total{event,result}``, ``ghrm_webhook_rejected_total{reason}``;
* ``ghrm_jobqueue_malformed_total``, ``ghrm_reconcile_seconds``, ``ghrm_reconcile_total{result}``.
* ``ghrm_runner_create_failures_total{group}``, ``ghrm_create_backoff_seconds{group}`` (current
  backoff after failed creates), ``ghrm_create_backoff_skips_total{group}``;
* ``ghrm_runners_removed_total{group,reason}`` -- reasons: ``flush``, ``never-registered``, ``offline``,
  ``done``, ``vanished`` (its instance disappeared), ``lifetime``, ``idle-surplus``, ``resume`` (an
  interrupted delete finished), ``stale-creation`` (its creator died), ``gone-unit``,
  ``orphan-instance``, ``orphan-github``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

logger = logging.getLogger(__name__)

#: Pickup latency buckets: warm pools answer in well under a second, cold starts take minutes.
PICKUP_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0,
)  # fmt: skip
#: Backend create/delete latency buckets: a container starts in a second, a cloud VM in minutes.
BACKEND_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: Reconcile duration buckets.
RECONCILE_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

#: Reasons a webhook delivery is rejected (label values of ``ghrm_webhook_rejected_total``).
WEBHOOK_REJECT_REASONS: tuple[str, ...] = (
    "missing_signature",
    "bad_signature",
    "too_large",
    "missing_header",
    "malformed_json",
    "invalid_payload",
    "unavailable",
)


class Metrics:
    """The manager's metrics, registered on a private registry.

    Args:
        registry: registry to register on; a new one when omitted (the normal case).

    The attributes are plain prometheus_client metrics; the helper methods cover the cases where the
    caller holds a cumulative number (GitHub client stats) or a full snapshot (runner counts).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.runners = Gauge(
            "ghrm_runners", "Runners by group and state (from the shared store).",
            ["group", "state"], registry=reg,
        )  # fmt: skip
        self.jobs_queued = Counter(
            "ghrm_jobs_queued", "workflow_job events with action queued, by matched group.",
            ["group"], registry=reg,
        )  # fmt: skip
        self.jobs_started = Counter(
            "ghrm_jobs_started", "workflow_job events with action in_progress, by matched group.",
            ["group"], registry=reg,
        )  # fmt: skip
        self.jobs_completed = Counter(
            "ghrm_jobs_completed", "workflow_job events with action completed, by group and conclusion.",
            ["group", "conclusion"], registry=reg,
        )  # fmt: skip
        self.pickup_latency = Histogram(
            "ghrm_job_pickup_seconds", "Seconds from a job being queued to a runner starting it.",
            ["group"], buckets=PICKUP_BUCKETS, registry=reg,
        )  # fmt: skip
        self.jobs_refused = Counter(
            "ghrm_jobs_refused", "Jobs refused because they ask beyond the group's sizing policy.",
            ["group", "reason"], registry=reg,
        )  # fmt: skip
        self.jobs_unmatched = Counter(
            "ghrm_jobs_unmatched", "Jobs whose runs-on labels match no runner group.", registry=reg,
        )  # fmt: skip
        self.github_requests = Counter(
            "ghrm_github_requests", "GitHub REST requests sent, by operation.",
            ["operation"], registry=reg,
        )  # fmt: skip
        self.github_rate_limit_units = Counter(
            "ghrm_github_rate_limit_units", "GitHub primary rate-limit units spent.", registry=reg,
        )  # fmt: skip
        self.github_not_modified = Counter(
            "ghrm_github_not_modified", "Conditional GitHub requests answered 304 (free).", registry=reg,
        )  # fmt: skip
        self.github_rate_limit_remaining = Gauge(
            "ghrm_github_rate_limit_remaining", "x-ratelimit-remaining of the last GitHub response.",
            registry=reg,
        )  # fmt: skip
        self.github_rate_limit_reset = Gauge(
            "ghrm_github_rate_limit_reset_timestamp_seconds",
            "x-ratelimit-reset (epoch seconds) of the last GitHub response.", registry=reg,
        )  # fmt: skip
        self.backend_create_latency = Histogram(
            "ghrm_backend_create_seconds", "Seconds a backend took to create an instance.",
            ["backend"], buckets=BACKEND_BUCKETS, registry=reg,
        )  # fmt: skip
        self.backend_delete_latency = Histogram(
            "ghrm_backend_delete_seconds", "Seconds a backend took to delete an instance.",
            ["backend"], buckets=BACKEND_BUCKETS, registry=reg,
        )  # fmt: skip
        self.backend_errors = Counter(
            "ghrm_backend_errors", "Backend call failures by backend, operation and error class.",
            ["backend", "operation", "error"], registry=reg,
        )  # fmt: skip
        self.webhook_deliveries = Counter(
            "ghrm_webhook_deliveries", "Webhook deliveries answered, by event and result.",
            ["event", "result"], registry=reg,
        )  # fmt: skip
        self.webhook_rejected = Counter(
            "ghrm_webhook_rejected", "Webhook deliveries rejected, by reason.",
            ["reason"], registry=reg,
        )  # fmt: skip
        self.jobqueue_malformed = Counter(
            "ghrm_jobqueue_malformed", "Job stream entries that could not be decoded (acked, dropped).",
            registry=reg,
        )  # fmt: skip
        self.reconcile_latency = Histogram(
            "ghrm_reconcile_seconds", "Seconds one reconcile pass took.",
            buckets=RECONCILE_BUCKETS, registry=reg,
        )  # fmt: skip
        self.reconciles = Counter(
            "ghrm_reconcile", "Reconcile passes by result (ok, error).", ["result"], registry=reg,
        )  # fmt: skip
        self.create_failures = Counter(
            "ghrm_runner_create_failures", "Runner creates that failed and were undone, by group.",
            ["group"], registry=reg,
        )  # fmt: skip
        self.create_backoff = Gauge(
            "ghrm_create_backoff_seconds",
            "Current backoff of runner creation after failed creates (0 when creates work), by group.",
            ["group"], registry=reg,
        )  # fmt: skip
        self.create_backoff_skips = Counter(
            "ghrm_create_backoff_skips",
            "Creates not started because the group's creation was backing off.", ["group"], registry=reg,
        )  # fmt: skip
        self.runners_removed = Counter(
            "ghrm_runners_removed", "Runners (or their leftovers) removed, by group and reason.",
            ["group", "reason"], registry=reg,
        )  # fmt: skip
        for (
            reason
        ) in WEBHOOK_REJECT_REASONS:  # export zeros so alerts on rate() work from the start
            self.webhook_rejected.labels(reason=reason)
        self._lock = threading.Lock()
        self._runner_series: set[tuple[str, str]] = set()
        self._github_seen: dict[str, float] = {}

    # -- runners -----------------------------------------------------------------------------
    def set_runner_counts(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Set ``ghrm_runners`` from a full snapshot ``group -> state -> n`` (``Store.counts()``).

        Series present before but absent from the snapshot are set to 0 rather than left stale.
        """
        with self._lock:
            current: set[tuple[str, str]] = set()
            for group, states in counts.items():
                for state, value in states.items():
                    state_text = str(getattr(state, "value", state))
                    self.runners.labels(group=group, state=state_text).set(value)
                    current.add((group, state_text))
            for group, state_text in self._runner_series - current:
                self.runners.labels(group=group, state=state_text).set(0)
            self._runner_series |= current

    # -- jobs --------------------------------------------------------------------------------
    def job_event(self, action: str, group: str | None, conclusion: str | None = None) -> None:
        """Count one workflow_job event for ``group`` (``None`` counts as ``unmatched``)."""
        label = group or "unmatched"
        if action == "queued":
            self.jobs_queued.labels(group=label).inc()
        elif action == "in_progress":
            self.jobs_started.labels(group=label).inc()
        elif action == "completed":
            self.jobs_completed.labels(group=label, conclusion=conclusion or "unknown").inc()

    def observe_pickup(self, group: str, seconds: float) -> None:
        """Record one job pickup latency (negative clock skew is clamped to 0)."""
        self.pickup_latency.labels(group=group).observe(max(0.0, float(seconds)))

    # -- GitHub ------------------------------------------------------------------------------
    def observe_github_stats(self, stats: Mapping[str, object]) -> None:
        """Fold the cumulative ``GitHubClient.stats()`` dict into the counters and gauges.

        Counters grow by the difference to the previous call, so calling this after every reconcile
        is cheap and never double-counts; a client restart (numbers going down) starts afresh.
        """
        with self._lock:
            self._github_delta(
                "rate_limit_units", stats.get("rate_limit_units"), self.github_rate_limit_units.inc
            )
            self._github_delta(
                "not_modified", stats.get("not_modified"), self.github_not_modified.inc
            )
            by_operation = stats.get("by_operation")
            if isinstance(by_operation, Mapping):
                for operation, value in by_operation.items():
                    self._github_delta(
                        f"op:{operation}", value,
                        self.github_requests.labels(operation=str(operation)).inc,
                    )  # fmt: skip
            remaining = stats.get("remaining")
            if isinstance(remaining, int | float) and not isinstance(remaining, bool):
                self.github_rate_limit_remaining.set(remaining)
            reset = stats.get("reset")
            if isinstance(reset, int | float) and not isinstance(reset, bool):
                self.github_rate_limit_reset.set(reset)

    def _github_delta(self, key: str, value: object, inc: Callable[[float], None]) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        previous = self._github_seen.get(key, 0.0)
        delta = value - previous if value >= previous else value
        self._github_seen[key] = float(value)
        if delta > 0:
            inc(delta)

    # -- backends ----------------------------------------------------------------------------
    @contextmanager
    def backend_call(self, backend: str, operation: str) -> Iterator[None]:
        """Time a backend ``create``/``delete`` and count its failure by exception class.

        The exception is re-raised unchanged; only successful calls feed the latency histograms.
        """
        start = time.monotonic()
        try:
            yield
        except Exception as exc:
            self.backend_errors.labels(
                backend=backend, operation=operation, error=type(exc).__name__
            ).inc()
            raise
        elapsed = time.monotonic() - start
        if operation == "create":
            self.backend_create_latency.labels(backend=backend).observe(elapsed)
        elif operation == "delete":
            self.backend_delete_latency.labels(backend=backend).observe(elapsed)

    # -- webhook -----------------------------------------------------------------------------
    def webhook_delivery(self, event: str, result: str) -> None:
        """Count one answered webhook delivery (``result``: enqueued, duplicate, ignored, pong, rejected)."""
        self.webhook_deliveries.labels(event=event or "unknown", result=result).inc()

    def webhook_reject(self, reason: str) -> None:
        """Count one rejected webhook delivery (``reason`` from :data:`WEBHOOK_REJECT_REASONS`)."""
        self.webhook_rejected.labels(reason=reason).inc()

    # -- exposition --------------------------------------------------------------------------
    def text(self) -> str:
        """The registry in the Prometheus text exposition format."""
        return exposition(self.registry)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value (e.g. ``"ghrm_jobs_unmatched_total"``), or ``None`` when absent."""
        return self.registry.get_sample_value(name, dict(labels or {}))


def exposition(registry: CollectorRegistry) -> str:
    """Render ``registry`` in the Prometheus text format (what ``/metrics`` serves)."""
    return generate_latest(registry).decode("utf-8")


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (see :func:`start_metrics_server`)."""

    host: str
    port: int
    _server: object
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """Base URL of the endpoint (``/metrics`` is served below it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        shutdown = getattr(self._server, "shutdown", None)
        close = getattr(self._server, "server_close", None)
        if callable(shutdown):
            shutdown()
        if callable(close):
            close()
        self._thread.join(timeout=5)


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` over HTTP on ``host:port`` in a daemon thread (port 0 picks a free port).

    Raises:
        OSError: the address cannot be bound.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound_port = int(server.server_port)
    logger.info("metrics endpoint listening on %s:%d", host, bound_port)
    return MetricsServer(host=host, port=bound_port, _server=server, _thread=thread)


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``"host:port"`` / ``"[::1]:port"`` / ``":port"`` into ``(host, port)``.

    Raises:
        ValueError: not of that form; the message quotes the text.
    """
    text = listen.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f'"{listen}" is not an address like 127.0.0.1:9464')
    host = host.strip("[]") or "0.0.0.0"
    port = int(port_text)
    if port > 65535:
        raise ValueError(f'"{listen}" has a port above 65535')
    return host, port
