"""The webhook endpoint over real HTTP on loopback, feeding a real Redis stream."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
import requests
from tests.conftest import SPEC_DIR
from tests.parts import ON_CI, start_redis

from github_runner_manager.jobqueue import JobEvent, JobQueue
from github_runner_manager.metrics import Metrics
from github_runner_manager.webhook import WebhookServer, create_app, verify_signature

pytestmark = pytest.mark.needs_redis

SECRET = b"wh-secret-" + uuid.uuid4().hex.encode()


@pytest.fixture
def examples() -> dict[str, dict[str, Any]]:
    spec = SPEC_DIR / "workflow_job-webhook.json"
    if not spec.is_file():
        if ON_CI:
            pytest.fail(f"{spec} is missing (set GITHUB_API_SPEC_DIR)", pytrace=False)
        pytest.skip(f"{spec} is missing (set GITHUB_API_SPEC_DIR)")
    return json.loads(spec.read_text())["examples"]


class Hook:
    """A running endpoint plus what the test needs to post to it and look behind it."""

    def __init__(
        self, queue: JobQueue, server: WebhookServer, metrics: Metrics, events: list[JobEvent]
    ) -> None:
        self.queue, self.server, self.metrics, self.events = queue, server, metrics, events
        self.url = f"{server.url}/webhook"

    def post(
        self, body: bytes | dict, *, event: str = "workflow_job", delivery: str | None = None,
        signature: str | None = "auto", content_type: str = "application/json",
    ) -> requests.Response:  # fmt: skip
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        headers = {
            "Content-Type": content_type,
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "User-Agent": "GitHub-Hookshot/test",
        }
        if signature == "auto":
            headers["X-Hub-Signature-256"] = sign(raw)
        elif signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return requests.post(self.url, data=raw, headers=headers, timeout=10)


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.fixture
def hook(redis_url: str) -> Iterator[Hook]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    queue = JobQueue(client, key_prefix="wh", consumer="test")
    metrics = Metrics()
    events: list[JobEvent] = []
    app = create_app(queue, SECRET, path="/webhook", on_event=events.append, metrics=metrics)
    server = WebhookServer(app, "127.0.0.1", 0)
    server.start()
    try:
        yield Hook(queue, server, metrics, events)
    finally:
        server.stop()
        client.close()


def test_verify_signature_matches_githubs_test_vector() -> None:
    secret, body = b"It's a Secret to Everybody", b"Hello, World!"
    good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert verify_signature(secret, body, good)
    assert verify_signature(secret, body, good.upper().replace("SHA256=", "sha256="))
    assert not verify_signature(secret, body + b" ", good)
    assert not verify_signature(b"other", body, good)
    assert not verify_signature(secret, body, None)
    assert not verify_signature(secret, body, good.replace("sha256=", "sha1="))
    assert not verify_signature(secret, body, "sha256=" + "0" * 64)
    assert not verify_signature(
        secret, body, "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    assert not verify_signature(b"", body, good)


def test_valid_queued_payload_is_enqueued(hook: Hook, examples: dict[str, dict[str, Any]]) -> None:
    response = hook.post(examples["queued"], delivery="del-1")
    assert response.status_code == 202
    assert response.json()["result"] == "enqueued"
    [(entry_id, event)] = hook.queue.read(block_ms=0)
    assert event == JobEvent.from_payload(
        "del-1", examples["queued"], received_at=event.received_at
    )
    assert [e.job_id for e in hook.events] == [event.job_id]
    hook.queue.ack(entry_id)
    assert (
        hook.metrics.value(
            "ghrm_webhook_deliveries_total", {"event": "workflow_job", "result": "enqueued"}
        )
        == 1
    )


@pytest.mark.parametrize("action", ["in_progress", "completed", "waiting"])
def test_every_example_action_is_accepted(
    hook: Hook, examples: dict[str, dict[str, Any]], action: str
) -> None:
    response = hook.post(examples[action])
    assert response.status_code == 202, response.text
    assert hook.queue.pending_count() == 1


def test_bad_signature_is_401_and_nothing_enqueued(
    hook: Hook, examples: dict[str, dict[str, Any]]
) -> None:
    body = json.dumps(examples["queued"]).encode()
    for signature in (
        sign(body, b"wrong-secret"),
        sign(body + b"\n"),
        "sha256=deadbeef",
        "garbage",
    ):
        response = hook.post(body, signature=signature)
        assert response.status_code == 401, signature
    assert hook.queue.pending_count() == 0
    assert hook.events == []
    assert hook.metrics.value("ghrm_webhook_rejected_total", {"reason": "bad_signature"}) == 4


def test_missing_signature_is_401(hook: Hook, examples: dict[str, dict[str, Any]]) -> None:
    response = hook.post(examples["queued"], signature=None)
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.json()["error"]
    assert hook.queue.pending_count() == 0
    assert hook.metrics.value("ghrm_webhook_rejected_total", {"reason": "missing_signature"}) == 1


def test_signature_checked_before_parsing(hook: Hook) -> None:
    response = hook.post(b"{definitely not json", signature="sha256=" + "0" * 64)
    assert response.status_code == 401  # not 400: an unsigned body is never parsed


def test_same_delivery_twice_is_one_job(hook: Hook, examples: dict[str, dict[str, Any]]) -> None:
    first = hook.post(examples["queued"], delivery="same")
    second = hook.post(examples["queued"], delivery="same")
    assert (first.status_code, first.json()["result"]) == (202, "enqueued")
    assert (second.status_code, second.json()["result"]) == (202, "duplicate")
    third = hook.post(examples["queued"], delivery="other-delivery-same-job")
    assert third.json()["result"] == "duplicate"
    assert hook.queue.pending_count() == 1
    assert len(hook.events) == 1


def test_malformed_json_is_400(hook: Hook) -> None:
    response = hook.post(b'{"action": "queued", ')
    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed JSON")
    response = hook.post(b"\xff\xfe")
    assert response.status_code == 400
    assert hook.queue.pending_count() == 0


def test_payload_missing_a_field_is_400_naming_it(
    hook: Hook, examples: dict[str, dict[str, Any]]
) -> None:
    body = copy.deepcopy(examples["queued"])
    del body["workflow_job"]["labels"]
    response = hook.post(body)
    assert response.status_code == 400
    assert "workflow_job.labels" in response.json()["error"]
    body = copy.deepcopy(examples["queued"])
    body["repository"]["owner"] = None
    response = hook.post(body)
    assert response.status_code == 400 and "repository.owner" in response.json()["error"]
    assert hook.queue.pending_count() == 0


def test_ping_is_200_and_other_events_204(hook: Hook) -> None:
    ping = hook.post({"zen": "Keep it logically awesome.", "hook_id": 1}, event="ping")
    assert ping.status_code == 200
    other = hook.post({"action": "created"}, event="workflow_run")
    assert other.status_code == 204
    assert hook.queue.pending_count() == 0


def test_missing_event_or_delivery_header_is_400(
    hook: Hook, examples: dict[str, dict[str, Any]]
) -> None:
    body = json.dumps(examples["queued"]).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
    response = requests.post(hook.url, data=body, headers=headers, timeout=10)
    assert response.status_code == 400 and "X-GitHub-Event" in response.json()["error"]
    headers["X-GitHub-Event"] = "workflow_job"
    response = requests.post(hook.url, data=body, headers=headers, timeout=10)
    assert response.status_code == 400 and "X-GitHub-Delivery" in response.json()["error"]
    assert hook.queue.pending_count() == 0


def test_form_encoded_delivery_is_accepted(hook: Hook, examples: dict[str, dict[str, Any]]) -> None:
    body = urlencode({"payload": json.dumps(examples["queued"])}).encode()
    response = hook.post(body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 202, response.text
    assert hook.queue.pending_count() == 1


def test_body_over_the_limit_is_413(hook: Hook) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    response = hook.post(body)
    assert response.status_code == 413
    assert hook.queue.pending_count() == 0
    assert hook.metrics.value("ghrm_webhook_rejected_total", {"reason": "too_large"}) == 1


def test_routes_health_and_methods(hook: Hook) -> None:
    assert requests.get(f"{hook.server.url}/healthz", timeout=5).status_code == 200
    assert requests.get(hook.url, timeout=5).status_code == 405
    assert requests.post(f"{hook.server.url}/elsewhere", data=b"{}", timeout=5).status_code == 404


def test_secret_and_signature_never_logged(
    hook: Hook, examples: dict[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps(examples["queued"]).encode()
    good, bad = sign(body), sign(body, b"nope")
    hook.post(body, signature=bad)
    hook.post(body, signature=good, delivery="logged-delivery")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "logged-delivery" in text  # the log does say what happened
    for secret in (
        SECRET.decode(),
        good,
        bad,
        good.removeprefix("sha256="),
        bad.removeprefix("sha256="),
    ):
        assert secret not in text


def test_empty_secret_is_refused(redis_url: str) -> None:
    queue = JobQueue(redis.Redis.from_url(redis_url), key_prefix="wh", consumer="x")
    with pytest.raises(ValueError, match="secret"):
        create_app(queue, b"")


def test_redis_down_is_503_and_health_fails(
    tmp_path: Path, examples: dict[str, dict[str, Any]]
) -> None:
    private = start_redis(tmp_path / "r")
    queue = JobQueue(private.client(), key_prefix="wh", consumer="x")
    server = WebhookServer(create_app(queue, SECRET), "127.0.0.1", 0)
    server.start()
    try:
        body = json.dumps(examples["queued"]).encode()
        headers = {
            "X-GitHub-Event": "workflow_job",
            "X-GitHub-Delivery": "d-1",
            "X-Hub-Signature-256": sign(body),
        }
        private.stop()
        response = requests.post(f"{server.url}/webhook", data=body, headers=headers, timeout=10)
        assert response.status_code == 503
        assert SECRET.decode() not in response.text
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 503
    finally:
        server.stop()
        private.stop()


def test_server_start_stop_and_url() -> None:
    server = WebhookServer(lambda environ, start: [], "127.0.0.1", 0)
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
    server.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=2)
