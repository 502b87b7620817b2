"""JobQueue against a real redis-server: validation, dedup, consumer group, re-claim, malformed entries."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from tests.conftest import SPEC_DIR
from tests.parts import ON_CI, RedisServer, start_redis, wait_for

from github_runner_manager.jobqueue import JobEvent, JobQueue
from github_runner_manager.store import StoreUnavailable

pytestmark = pytest.mark.needs_redis


def load_examples() -> dict[str, dict[str, Any]]:
    """GitHub's own workflow_job example payloads (queued, in_progress, completed, waiting)."""
    spec = SPEC_DIR / "workflow_job-webhook.json"
    if not spec.is_file():
        if ON_CI:
            pytest.fail(f"{spec} is missing (set GITHUB_API_SPEC_DIR)", pytrace=False)
        pytest.skip(f"{spec} is missing (set GITHUB_API_SPEC_DIR)")
    return json.loads(spec.read_text())["examples"]


@pytest.fixture
def examples() -> dict[str, dict[str, Any]]:
    return load_examples()


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
def client(request: pytest.FixtureRequest, redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=request.param, socket_timeout=5)
    yield c
    c.close()


def make_queue(client: redis.Redis, consumer: str, **kwargs: Any) -> JobQueue:
    return JobQueue(client, key_prefix="q", consumer=consumer, **kwargs)


def payload(
    examples: dict[str, dict[str, Any]], action: str = "queued", job_id: int = 1, **job: Any
) -> dict:
    data = copy.deepcopy(examples[action])
    data["workflow_job"]["id"] = job_id
    data["workflow_job"].update(job)
    return data


def event(
    examples: dict[str, dict[str, Any]],
    delivery: str,
    action: str = "queued",
    job_id: int = 1,
    **job: Any,
) -> JobEvent:
    return JobEvent.from_payload(delivery, payload(examples, action, job_id, **job))


# -- JobEvent ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["queued", "in_progress", "completed", "waiting"])
def test_from_payload_accepts_githubs_examples(
    examples: dict[str, dict[str, Any]], action: str
) -> None:
    body = examples[action]
    ev = JobEvent.from_payload("d-1", body, received_at=123.0)
    assert ev.action == action == body["action"]
    assert ev.job_id == body["workflow_job"]["id"] and ev.run_id == body["workflow_job"]["run_id"]
    assert ev.labels == tuple(body["workflow_job"]["labels"])
    assert (
        ev.repo == body["repository"]["full_name"]
        and ev.owner == body["repository"]["owner"]["login"]
    )
    assert ev.status == body["workflow_job"]["status"]
    assert ev.conclusion == body["workflow_job"]["conclusion"]
    assert ev.runner_name == body["workflow_job"]["runner_name"]
    assert ev.received_at == 123.0 and ev.created_at > 1.6e9
    assert JobEvent.from_json(ev.to_json()) == ev


def test_created_at_is_parsed_as_utc(examples: dict[str, dict[str, Any]]) -> None:
    ev = event(examples, "d", created_at="2021-09-13T02:21:13Z")
    assert ev.created_at == 1631499673.0


def _drop(data: dict, path: str) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        data = data[part]
    del data[leaf]


def _set(data: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        data = data[part]
    data[leaf] = value


@pytest.mark.parametrize(
    "field",
    ["action", "workflow_job", "workflow_job.id", "workflow_job.run_id", "workflow_job.labels",
     "workflow_job.status", "workflow_job.created_at", "repository", "repository.full_name",
     "repository.owner", "repository.owner.login"],
)  # fmt: skip
def test_from_payload_names_a_missing_field(
    examples: dict[str, dict[str, Any]], field: str
) -> None:
    data = copy.deepcopy(examples["queued"])
    _drop(data, field)
    with pytest.raises(ValueError, match=f"^{field.replace('.', '[.]')}: missing"):
        JobEvent.from_payload("d", data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("workflow_job.id", "12"),
        ("workflow_job.id", True),
        ("workflow_job.run_id", -1),
        ("workflow_job.labels", "self-hosted"),
        ("workflow_job.labels", ["ok", 3]),
        ("workflow_job.status", ""),
        ("workflow_job.conclusion", 5),
        ("workflow_job.runner_id", "5"),
        ("workflow_job.runner_name", ["x"]),
        ("workflow_job.created_at", "yesterday"),
        ("workflow_job", []),
        ("repository.full_name", "no-slash"),
        ("repository.owner", "acme"),
    ],
)
def test_from_payload_names_a_bad_field(
    examples: dict[str, dict[str, Any]], field: str, value: Any
) -> None:
    data = copy.deepcopy(examples["queued"])
    _set(data, field, value)
    with pytest.raises(ValueError, match=f"^{field.replace('.', '[.]')}: "):
        JobEvent.from_payload("d", data)


def test_from_payload_rejects_non_objects_and_missing_delivery(
    examples: dict[str, dict[str, Any]],
) -> None:
    with pytest.raises(ValueError, match=r"^payload: expected a JSON object"):
        JobEvent.from_payload("d", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="X-GitHub-Delivery"):
        JobEvent.from_payload(" ", examples["queued"])


def test_nullable_fields_may_be_null_or_absent(examples: dict[str, dict[str, Any]]) -> None:
    data = copy.deepcopy(examples["waiting"])
    del data["workflow_job"]["conclusion"]
    ev = JobEvent.from_payload("d", data)
    assert ev.runner_name is None and ev.runner_id is None and ev.conclusion is None


# -- dedup and tracking ---------------------------------------------------------------------------


def test_dedup_by_delivery_id(client: redis.Redis, examples: dict[str, dict[str, Any]]) -> None:
    queue = make_queue(client, "a")
    ev = event(examples, "delivery-1")
    assert queue.enqueue(ev) is True
    assert queue.enqueue(ev) is False  # GitHub redelivery reuses the delivery id
    assert queue.pending_count() == 1
    assert int(client.hget("q:counters", "jobqueue_duplicate_delivery")) == 1


def test_dedup_by_job_id_and_action(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    queue = make_queue(client, "a")
    assert queue.enqueue(event(examples, "d-1", "queued", job_id=7))
    assert not queue.enqueue(
        event(examples, "d-2", "queued", job_id=7)
    )  # e.g. the poll found it too
    assert queue.enqueue(event(examples, "d-3", "in_progress", job_id=7))
    assert queue.enqueue(event(examples, "d-4", "queued", job_id=8))
    assert queue.pending_count() == 3
    got = queue.read(count=10, block_ms=0)
    assert [(e.job_id, e.action) for _id, e in got] == [
        (7, "queued"),
        (7, "in_progress"),
        (8, "queued"),
    ]


def test_job_tracking_for_pickup_latency_and_unfinished_runners(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    queue = make_queue(client, "a")
    assert queue.job_status(5) is None
    queued = event(examples, "d-1", "queued", job_id=5, runner_name=None, runner_id=None)
    queue.enqueue(queued)
    status = queue.job_status(5)
    assert status is not None
    assert status["status"] == "queued" and status["queued_at"] == queued.created_at
    assert status["labels"] == list(queued.labels) and status["repo"] == queued.repo
    assert status["started_at"] is None and status["runner_name"] is None
    assert queue.runner_job_unfinished("ghr-small-abc") is False
    started = event(
        examples, "d-2", "in_progress", job_id=5, runner_name="ghr-small-abc", runner_id=77
    )
    queue.enqueue(started)
    status = queue.job_status(5)
    assert status is not None
    assert status["status"] == "in_progress" and status["started_at"] == started.received_at
    assert status["runner_name"] == "ghr-small-abc" and status["runner_id"] == 77
    assert queue.runner_job_unfinished("ghr-small-abc") is True
    assert queue.job_for_runner("ghr-small-abc")["job_id"] == 5  # type: ignore[index]
    queue.enqueue(
        event(examples, "d-3", "completed", job_id=5, runner_name="ghr-small-abc", runner_id=77)
    )
    status = queue.job_status(5)
    assert status is not None
    assert status["status"] == "completed" and status["conclusion"] == "success"
    assert status["completed_at"] is not None
    assert queue.runner_job_unfinished("ghr-small-abc") is False
    assert 0 < client.ttl("q:job:5") <= queue.job_ttl


def test_tracking_never_goes_backwards(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    queue = make_queue(client, "a")
    queue.enqueue(event(examples, "d-1", "completed", job_id=9, runner_name="ghr-r1"))
    queue.enqueue(
        event(examples, "d-2", "in_progress", job_id=9, runner_name="ghr-r1")
    )  # arrives late
    queue.enqueue(event(examples, "d-3", "queued", job_id=9))
    status = queue.job_status(9)
    assert status is not None and status["status"] == "completed"
    assert queue.runner_job_unfinished("ghr-r1") is False


# -- consumer group -------------------------------------------------------------------------------


def test_two_consumers_share_the_work_without_duplicates(
    client: redis.Redis, redis_url: str, examples: dict[str, dict[str, Any]]
) -> None:
    producer = make_queue(client, "producer")
    for job_id in range(1, 41):
        assert producer.enqueue(event(examples, f"d-{job_id}", job_id=job_id))
    seen: dict[str, list[int]] = {"a": [], "b": []}
    lock = threading.Lock()

    def consume(name: str) -> None:
        own = redis.Redis.from_url(redis_url, socket_timeout=5)
        queue = make_queue(own, name)
        while True:
            with lock:
                if len(seen["a"]) + len(seen["b"]) >= 40:
                    return
            for entry_id, ev in queue.read(count=3, block_ms=200):
                with lock:
                    seen[name].append(ev.job_id)
                queue.ack(entry_id)

    threads = [threading.Thread(target=consume, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seen["a"] + seen["b"]) == list(range(1, 41))
    assert not set(seen["a"]) & set(seen["b"])
    assert seen["a"] and seen["b"]  # both really took part
    assert producer.pending_count() == 0


def test_entries_of_a_consumer_that_never_acks_are_reclaimed(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    crashed = make_queue(client, "crashed", claim_idle_ms=300)
    survivor = make_queue(client, "survivor", claim_idle_ms=300)
    for job_id in (1, 2, 3):
        crashed.enqueue(event(examples, f"d-{job_id}", job_id=job_id))
    taken = crashed.read(count=10, block_ms=0)
    assert [e.job_id for _i, e in taken] == [1, 2, 3]
    assert survivor.read(count=10, block_ms=0) == []  # still owned, not idle long enough
    reclaimed: list[tuple[str, JobEvent]] = []

    def reclaim() -> bool:
        reclaimed.extend(survivor.read(count=10, block_ms=0))
        return len(reclaimed) >= 3

    wait_for(reclaim, timeout=10, what="the survivor to re-claim the crashed consumer's entries")
    assert [i for i, _e in reclaimed] == [i for i, _e in taken]
    for entry_id, _ev in reclaimed:
        survivor.ack(entry_id)
    assert survivor.pending_count() == 0
    assert client.xpending("q:jobs", "managers")["pending"] == 0


def test_reclaimed_entries_come_before_new_ones(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    first = make_queue(client, "first", claim_idle_ms=100)
    second = make_queue(client, "second", claim_idle_ms=100)
    first.enqueue(event(examples, "d-1", job_id=1))
    assert len(first.read(block_ms=0)) == 1  # never acked
    second.enqueue(event(examples, "d-2", job_id=2))

    def idle() -> bool:
        pending = client.xpending_range("q:jobs", "managers", min="-", max="+", count=10)
        return bool(pending) and pending[0]["time_since_delivered"] > 150

    wait_for(idle, timeout=10, what="job 1 to be idle past claim_idle_ms")
    assert [e.job_id for _i, e in second.read(count=1, block_ms=0)] == [1]
    assert [e.job_id for _i, e in second.read(count=1, block_ms=0)] == [2]


def test_an_entry_delivered_too_often_is_dropped_and_counted(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    one = make_queue(client, "one", claim_idle_ms=100, max_deliveries=1)
    two = make_queue(client, "two", claim_idle_ms=100, max_deliveries=1)
    one.enqueue(event(examples, "d-1", job_id=1))
    assert len(one.read(block_ms=0)) == 1  # delivery 1, never acked

    def dropped() -> bool:
        assert two.read(block_ms=0) == []  # delivery 2 exceeds max_deliveries=1
        return two.dead_lettered == 1

    wait_for(dropped, timeout=10, what="the poison entry to be dropped")
    assert int(client.hget("q:counters", "jobqueue_dead_lettered")) == 1
    assert two.pending_count() == 0


def test_malformed_entries_are_acked_counted_and_never_retried(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    queue = make_queue(client, "a", claim_idle_ms=50)
    queue.enqueue(event(examples, "d-0", job_id=100))
    client.xadd("q:jobs", {"event": "{not json"})
    client.xadd("q:jobs", {"something": "else"})
    client.xadd("q:jobs", {"event": json.dumps({"job_id": 1})})
    queue.enqueue(event(examples, "d-1", job_id=101))
    got = queue.read(count=10, block_ms=0)
    assert [e.job_id for _i, e in got] == [100, 101]
    assert queue.malformed == 3
    assert int(client.hget("q:counters", "jobqueue_malformed")) == 3
    for entry_id, _ev in got:
        queue.ack(entry_id)
    assert client.xlen("q:jobs") == 0
    assert client.xpending("q:jobs", "managers")["pending"] == 0
    assert queue.read(count=10, block_ms=0) == []  # nothing comes back, however long we wait


def test_read_blocks_for_new_entries(
    client: redis.Redis, redis_url: str, examples: dict[str, dict[str, Any]]
) -> None:
    consumer = make_queue(client, "c")
    producer = make_queue(redis.Redis.from_url(redis_url), "p")
    consumer.read(block_ms=0)  # group exists
    timer = threading.Timer(0.2, lambda: producer.enqueue(event(examples, "d-1", job_id=1)))
    timer.start()
    got = consumer.read(count=1, block_ms=3000)
    timer.join()
    assert [e.job_id for _i, e in got] == [1]


def test_stream_recreated_after_redis_lost_it(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    queue = make_queue(client, "a")
    assert queue.read(block_ms=0) == []
    client.flushdb()  # Redis emptied: stream and group are gone
    assert queue.read(block_ms=0) == []
    assert queue.enqueue(event(examples, "d-1", job_id=1))
    assert [e.job_id for _i, e in queue.read(block_ms=0)] == [1]


def test_group_created_before_consumers_keeps_early_events(
    client: redis.Redis, examples: dict[str, dict[str, Any]]
) -> None:
    producer = make_queue(client, "webhook")
    producer.enqueue(event(examples, "d-1", job_id=1))  # before any consumer exists
    JobQueue(client, key_prefix="q", consumer="again")  # a second construction tolerates BUSYGROUP
    late = make_queue(client, "late")
    assert [e.job_id for _i, e in late.read(block_ms=0)] == [1]


def test_redis_down_is_store_unavailable(
    tmp_path: Path, examples: dict[str, dict[str, Any]]
) -> None:
    server: RedisServer = start_redis(tmp_path / "r")
    try:
        queue = JobQueue(server.client(), key_prefix="q", consumer="a")
        assert queue.ping()
        queue.enqueue(event(examples, "d-1", job_id=1))
        server.stop()
        assert queue.ping() is False
        for call in (
            lambda: queue.enqueue(event(examples, "d-2", job_id=2)),
            lambda: queue.read(block_ms=0),
            lambda: queue.ack("1-0"),
            queue.pending_count,
            lambda: queue.job_status(1),
        ):
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{server.port}"):
                call()
    finally:
        server.stop()
