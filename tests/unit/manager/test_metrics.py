"""Metrics: a private registry per manager, the promised series, and the /metrics endpoint."""

from __future__ import annotations

import urllib.request

import pytest

from github_runner_manager.metrics import (
    PICKUP_BUCKETS,
    Metrics,
    exposition,
    parse_listen,
    start_metrics_server,
)


def test_each_manager_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # the same names twice: would raise on a shared registry
    first.jobs_unmatched.inc()
    assert first.value("ghrm_jobs_unmatched_total") == 1
    assert second.value("ghrm_jobs_unmatched_total") == 0
    assert first.registry is not second.registry


def test_runner_counts_set_and_stale_series_zeroed() -> None:
    metrics = Metrics()
    metrics.set_runner_counts({"small": {"idle": 3, "busy": 2}, "large": {"creating": 1}})
    assert metrics.value("ghrm_runners", {"group": "small", "state": "idle"}) == 3
    assert metrics.value("ghrm_runners", {"group": "large", "state": "creating"}) == 1
    metrics.set_runner_counts({"small": {"idle": 1}})
    assert metrics.value("ghrm_runners", {"group": "small", "state": "idle"}) == 1
    assert metrics.value("ghrm_runners", {"group": "small", "state": "busy"}) == 0
    assert metrics.value("ghrm_runners", {"group": "large", "state": "creating"}) == 0


def test_job_events_by_action_and_group() -> None:
    metrics = Metrics()
    metrics.job_event("queued", "small")
    metrics.job_event("queued", None)
    metrics.job_event("in_progress", "small")
    metrics.job_event("completed", "small", "success")
    metrics.job_event("completed", "small", None)
    metrics.job_event("waiting", "small")  # not counted: no promise for it
    assert metrics.value("ghrm_jobs_queued_total", {"group": "small"}) == 1
    assert metrics.value("ghrm_jobs_queued_total", {"group": "unmatched"}) == 1
    assert metrics.value("ghrm_jobs_started_total", {"group": "small"}) == 1
    assert (
        metrics.value("ghrm_jobs_completed_total", {"group": "small", "conclusion": "success"}) == 1
    )
    assert (
        metrics.value("ghrm_jobs_completed_total", {"group": "small", "conclusion": "unknown"}) == 1
    )
    metrics.jobs_refused.labels(group="large", reason="mem").inc()
    assert metrics.value("ghrm_jobs_refused_total", {"group": "large", "reason": "mem"}) == 1


def test_pickup_histogram_buckets_cover_tenth_of_second_to_ten_minutes() -> None:
    assert PICKUP_BUCKETS[0] == 0.1
    assert PICKUP_BUCKETS[-1] == 600.0
    metrics = Metrics()
    for seconds in (0.05, 0.7, 45.0, 900.0, -2.0):
        metrics.observe_pickup("small", seconds)
    labels = {"group": "small"}
    assert metrics.value("ghrm_job_pickup_seconds_count", labels) == 5
    assert (
        metrics.value("ghrm_job_pickup_seconds_bucket", {**labels, "le": "0.1"}) == 2
    )  # incl. clamped
    assert metrics.value("ghrm_job_pickup_seconds_bucket", {**labels, "le": "1.0"}) == 3
    assert metrics.value("ghrm_job_pickup_seconds_bucket", {**labels, "le": "600.0"}) == 4
    assert metrics.value("ghrm_job_pickup_seconds_bucket", {**labels, "le": "+Inf"}) == 5


def test_github_stats_fold_in_as_deltas() -> None:
    metrics = Metrics()
    metrics.observe_github_stats(
        {"requests": 5, "rate_limit_units": 4, "not_modified": 1,
         "by_operation": {"list_runners": 3, "generate_jit_config": 2}, "remaining": 4990, "reset": 1.7e9}
    )  # fmt: skip
    metrics.observe_github_stats(
        {
            "rate_limit_units": 6,
            "not_modified": 3,
            "by_operation": {"list_runners": 5},
            "remaining": 4980,
        }
    )
    assert metrics.value("ghrm_github_rate_limit_units_total") == 6
    assert metrics.value("ghrm_github_not_modified_total") == 3
    assert metrics.value("ghrm_github_requests_total", {"operation": "list_runners"}) == 5
    assert metrics.value("ghrm_github_requests_total", {"operation": "generate_jit_config"}) == 2
    assert metrics.value("ghrm_github_rate_limit_remaining") == 4980
    assert metrics.value("ghrm_github_rate_limit_reset_timestamp_seconds") == 1.7e9
    # A new client (numbers restart lower) counts from zero again instead of going negative.
    metrics.observe_github_stats({"rate_limit_units": 2, "remaining": True})
    assert metrics.value("ghrm_github_rate_limit_units_total") == 8
    assert metrics.value("ghrm_github_rate_limit_remaining") == 4980  # bool ignored


class CapacityError(Exception):
    pass


def test_backend_call_times_successes_and_counts_errors_by_class() -> None:
    metrics = Metrics()
    with metrics.backend_call("lxd", "create"):
        pass
    with metrics.backend_call("lxd", "delete"):
        pass
    with pytest.raises(CapacityError), metrics.backend_call("lxd", "create"):
        raise CapacityError("quota")
    assert metrics.value("ghrm_backend_create_seconds_count", {"backend": "lxd"}) == 1
    assert metrics.value("ghrm_backend_delete_seconds_count", {"backend": "lxd"}) == 1
    assert (
        metrics.value(
            "ghrm_backend_errors_total",
            {"backend": "lxd", "operation": "create", "error": "CapacityError"},
        )
        == 1
    )


def test_webhook_rejections_exported_from_the_start() -> None:
    metrics = Metrics()
    assert metrics.value("ghrm_webhook_rejected_total", {"reason": "bad_signature"}) == 0
    metrics.webhook_reject("bad_signature")
    metrics.webhook_delivery("workflow_job", "enqueued")
    assert metrics.value("ghrm_webhook_rejected_total", {"reason": "bad_signature"}) == 1
    assert (
        metrics.value(
            "ghrm_webhook_deliveries_total", {"event": "workflow_job", "result": "enqueued"}
        )
        == 1
    )


def test_text_exposition_names_every_promised_family() -> None:
    metrics = Metrics()
    text = exposition(metrics.registry)
    assert text == metrics.text()
    for name in (
        "ghrm_runners", "ghrm_jobs_queued_total", "ghrm_jobs_started_total", "ghrm_jobs_completed_total",
        "ghrm_job_pickup_seconds", "ghrm_jobs_refused_total", "ghrm_jobs_unmatched_total",
        "ghrm_github_requests_total", "ghrm_github_rate_limit_remaining", "ghrm_backend_create_seconds",
        "ghrm_backend_delete_seconds", "ghrm_backend_errors_total", "ghrm_webhook_rejected_total",
    ):  # fmt: skip
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


def test_metrics_server_serves_the_private_registry_on_loopback() -> None:
    metrics = Metrics()
    metrics.jobs_unmatched.inc(3)
    server = start_metrics_server(metrics.registry, "127.0.0.1", 0)
    try:
        assert server.port > 0
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert "ghrm_jobs_unmatched_total 3.0" in body
        assert "python_gc_objects_collected_total" not in body  # not the global registry
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        (":9000", ("0.0.0.0", 9000)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", "host:", "host:port", "h:70000"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"address|port"):
        parse_listen(text)
