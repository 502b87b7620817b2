"""Durable intake of ``workflow_job`` events: a Redis Stream read by a consumer group.

Why a stream: a webhook delivery must survive a manager crash between "received" and "a runner
exists for it". The webhook appends the event (after deduplication) and answers at once; consumers in
any unit read with ``XREADGROUP``, make sure a runner exists, then ``XACK``. Entries a crashed consumer
read but never acknowledged stay pending and are re-claimed by another consumer with ``XAUTOCLAIM``
once they have been idle longer than ``claim_idle_ms``.

Promises:

* :meth:`JobQueue.enqueue` is one Lua script: deduplicate by delivery id **and** by ``(job_id, action)``
  (``SET NX EX``, 7 days), ``XADD`` (stream bounded by ``MAXLEN ~``) and update the job's tracking hash
  ``{prefix}:job:{id}``. Either all of it happens or none, so a crash cannot mark an event seen without
  queueing it.
* The tracking hash never moves backwards (``completed`` arriving before ``in_progress`` keeps
  ``completed``); it records ``queued_at`` (GitHub's creation time), ``started_at`` and ``completed_at``
  (when we learnt of them), the runner that took the job, and expires after ``job_ttl``. The runner
  name maps to its last job (``{prefix}:runnerjob:{name}``), which is how the planner learns that a
  runner's job is unfinished even while GitHub's ``busy`` flag lags.
* A stream entry that cannot be decoded is acknowledged, deleted and counted (``jobqueue_malformed`` in
  ``{prefix}:counters``), never retried. An entry delivered more than ``max_deliveries`` times is
  dropped the same way (``jobqueue_dead_lettered``); the conditional poll recovers such a job if it is
  still queued on GitHub.
* Every Redis failure surfaces as :class:`~github_runner_manager.store.StoreUnavailable`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import redis

from github_runner_manager.store import StoreUnavailable, describe_client

logger = logging.getLogger(__name__)

#: How long a delivery id / (job id, action) pair is remembered (GitHub redelivers within days).
DEDUP_TTL = 7 * 86400
#: How long a job's tracking hash lives after its last event.
JOB_TTL = 7 * 86400
#: Order of workflow_job statuses; the tracking hash never goes back to a lower rank.
STATUS_RANK: dict[str, int] = {
    "requested": 0,
    "pending": 0,
    "waiting": 0,
    "queued": 1,
    "in_progress": 2,
    "completed": 3,
}

_T = TypeVar("_T")

# KEYS: 1 delivery dedup, 2 job/action dedup, 3 stream, 4 job hash, 5 runner->job, 6 counters
# ARGV: 1 dedup ttl, 2 maxlen, 3 event json, 4 job ttl, 5 status, 6 rank, 7 labels json, 8 repo,
#       9 owner, 10 run_id, 11 created_at, 12 received_at, 13 runner_name, 14 runner_id,
#       15 conclusion, 16 action, 17 job_id
_ENQUEUE_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('HINCRBY', KEYS[6], 'jobqueue_duplicate_delivery', 1)
  return false
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('HINCRBY', KEYS[6], 'jobqueue_duplicate_job_event', 1)
  return false
end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[3])
local rank = tonumber(ARGV[6])
local current = redis.call('HGET', KEYS[4], 'rank')
if (not current) or rank >= tonumber(current) then
  redis.call('HSET', KEYS[4], 'status', ARGV[5], 'rank', ARGV[6], 'action', ARGV[16],
             'conclusion', ARGV[15], 'updated_at', ARGV[12])
end
redis.call('HSETNX', KEYS[4], 'job_id', ARGV[17])
redis.call('HSETNX', KEYS[4], 'labels', ARGV[7])
redis.call('HSETNX', KEYS[4], 'repo', ARGV[8])
redis.call('HSETNX', KEYS[4], 'owner', ARGV[9])
redis.call('HSETNX', KEYS[4], 'run_id', ARGV[10])
redis.call('HSETNX', KEYS[4], 'queued_at', ARGV[11])
redis.call('HSETNX', KEYS[4], 'received_at', ARGV[12])
if ARGV[16] == 'in_progress' or ARGV[16] == 'completed' then
  if ARGV[16] == 'in_progress' then
    redis.call('HSETNX', KEYS[4], 'started_at', ARGV[12])
  else
    redis.call('HSETNX', KEYS[4], 'completed_at', ARGV[12])
  end
  if ARGV[13] ~= '' then
    redis.call('HSET', KEYS[4], 'runner_name', ARGV[13], 'runner_id', ARGV[14])
    redis.call('SET', KEYS[5], ARGV[17], 'EX', ARGV[4])
  end
end
redis.call('EXPIRE', KEYS[4], ARGV[4])
redis.call('HINCRBY', KEYS[6], 'jobqueue_enqueued', 1)
return id
"""


def _parse_time(value: object, field: str) -> float:
    """ISO 8601 (``2021-09-13T02:21:13Z``) or epoch number → epoch seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an ISO 8601 time, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{field}: expected a finite time, got {value!r}")
        return float(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected an ISO 8601 time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _need(mapping: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in mapping:
        raise ValueError(f"{path}: missing")
    return mapping[key]


def _need_mapping(mapping: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = _need(mapping, key, path)
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _need_str(mapping: Mapping[str, Any], key: str, path: str) -> str:
    value = _need(mapping, key, path)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: expected a non-empty string, got {value!r}")
    return value


def _need_int(mapping: Mapping[str, Any], key: str, path: str) -> int:
    value = _need(mapping, key, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{path}: expected a non-negative integer, got {value!r}")
    return value


def _optional(mapping: Mapping[str, Any], key: str, path: str, kind: type[_T]) -> _T | None:
    """A nullable field: absent or ``null`` → ``None``; otherwise it must have type ``kind``."""
    value = mapping.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{path}: expected {kind.__name__} or null, got {value!r}")
    return value


@dataclass(frozen=True)
class JobEvent:
    """One ``workflow_job`` webhook delivery, reduced to what the manager needs.

    ``created_at`` is when GitHub created the job; ``received_at`` when this process received it.
    """

    delivery_id: str
    action: str
    job_id: int
    run_id: int
    repo: str
    owner: str
    labels: tuple[str, ...]
    runner_name: str | None
    runner_id: int | None
    status: str
    conclusion: str | None
    created_at: float
    received_at: float

    @classmethod
    def from_payload(
        cls, delivery_id: str, payload: Mapping[str, Any], *, received_at: float | None = None
    ) -> JobEvent:
        """Validate a ``workflow_job`` payload and keep the fields the manager uses.

        Raises:
            ValueError: a needed field is missing or has the wrong type; the message starts with its
                path, e.g. ``"workflow_job.labels: expected a list of strings, got None"``.
        """
        if not isinstance(delivery_id, str) or not delivery_id.strip():
            raise ValueError("X-GitHub-Delivery: missing delivery id")
        if not isinstance(payload, Mapping):
            raise ValueError(f"payload: expected a JSON object, got {type(payload).__name__}")
        action = _need_str(payload, "action", "action")
        job = _need_mapping(payload, "workflow_job", "workflow_job")
        job_id = _need_int(job, "id", "workflow_job.id")
        run_id = _need_int(job, "run_id", "workflow_job.run_id")
        labels = _need(job, "labels", "workflow_job.labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"workflow_job.labels: expected a list of strings, got {labels!r}")
        status = _need_str(job, "status", "workflow_job.status")
        conclusion = _optional(job, "conclusion", "workflow_job.conclusion", str)
        runner_name = _optional(job, "runner_name", "workflow_job.runner_name", str) or None
        runner_id = _optional(job, "runner_id", "workflow_job.runner_id", int)
        created_at = _parse_time(
            _need(job, "created_at", "workflow_job.created_at"), "workflow_job.created_at"
        )
        repository = _need_mapping(payload, "repository", "repository")
        repo = _need_str(repository, "full_name", "repository.full_name")
        if repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/"):
            raise ValueError(f"repository.full_name: expected 'owner/name', got {repo!r}")
        owner_obj = _need_mapping(repository, "owner", "repository.owner")
        owner = _need_str(owner_obj, "login", "repository.owner.login")
        return cls(
            delivery_id=delivery_id.strip(),
            action=action,
            job_id=job_id,
            run_id=run_id,
            repo=repo,
            owner=owner,
            labels=tuple(labels),
            runner_name=runner_name,
            runner_id=runner_id,
            status=status,
            conclusion=conclusion,
            created_at=created_at,
            received_at=time.time() if received_at is None else float(received_at),
        )

    def to_json(self) -> str:
        """Compact JSON form stored in the stream entry's ``event`` field."""
        data = asdict(self)
        data["labels"] = list(self.labels)
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobEvent:
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: not JSON or a field is missing/mistyped (names the field).
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"event: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("event: expected a JSON object")
        labels = _need(data, "labels", "labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"labels: expected a list of strings, got {labels!r}")
        created_at = _need(data, "created_at", "created_at")
        received_at = _need(data, "received_at", "received_at")
        for name, value in (("created_at", created_at), ("received_at", received_at)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}: expected a number, got {value!r}")
        return cls(
            delivery_id=_need_str(data, "delivery_id", "delivery_id"),
            action=_need_str(data, "action", "action"),
            job_id=_need_int(data, "job_id", "job_id"),
            run_id=_need_int(data, "run_id", "run_id"),
            repo=_need_str(data, "repo", "repo"),
            owner=_need_str(data, "owner", "owner"),
            labels=tuple(labels),
            runner_name=_optional(data, "runner_name", "runner_name", str) or None,
            runner_id=_optional(data, "runner_id", "runner_id", int),
            status=_need_str(data, "status", "status"),
            conclusion=_optional(data, "conclusion", "conclusion", str),
            created_at=float(created_at),
            received_at=float(received_at),
        )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class JobQueue:
    """Workflow-job events in a Redis Stream with a consumer group shared by all manager units.

    Args:
        redis_client: a ``redis.Redis`` (``Store.client`` or any other; bytes or decoded responses).
        key_prefix: prefix of every key (``{prefix}:{stream}``, ``{prefix}:job:{id}``, ...).
        stream: stream name below the prefix.
        group: consumer group name (one per fleet, shared by every unit).
        consumer: this consumer's name; unique per process (default ``hostname-pid``).
        claim_idle_ms: entries pending longer than this with another consumer are re-claimed.
        maxlen: approximate bound of the stream (``XADD MAXLEN ~``); acked entries are deleted anyway.
        max_deliveries: an entry delivered more often than this is dropped and counted.
        dedup_ttl / job_ttl: seconds the dedup keys and job tracking hashes live.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        key_prefix: str = "ghrm",
        stream: str = "jobs",
        group: str = "managers",
        consumer: str | None = None,
        *,
        claim_idle_ms: int = 60_000,
        maxlen: int = 100_000,
        max_deliveries: int = 10,
        dedup_ttl: int = DEDUP_TTL,
        job_ttl: int = JOB_TTL,
    ) -> None:
        self._client = redis_client
        self.key_prefix = key_prefix
        self.stream_key = f"{key_prefix}:{stream}"
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle_ms)
        self.maxlen = int(maxlen)
        self.max_deliveries = int(max_deliveries)
        self.dedup_ttl = int(dedup_ttl)
        self.job_ttl = int(job_ttl)
        self._counters_key = f"{key_prefix}:counters"
        self._where = describe_client(redis_client)
        self._enqueue_script = redis_client.register_script(_ENQUEUE_LUA)
        self._group_ready = False
        self._claim_cursor = "0-0"
        #: Malformed / dead-lettered entries dropped by this instance (also counted in Redis).
        self.malformed = 0
        self.dead_lettered = 0

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, what: str, func: Callable[[], _T]) -> _T:
        try:
            return func()
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"Redis at {self._where} unavailable during {what}: {type(exc).__name__}: {exc}"
            ) from exc

    def _ensure_group(self, force: bool = False) -> None:
        if self._group_ready and not force:
            return

        def create() -> None:
            try:
                self._client.xgroup_create(self.stream_key, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        self._call("consumer group creation", create)
        self._group_ready = True

    def job_key(self, job_id: int) -> str:
        """Key of a job's tracking hash."""
        return f"{self.key_prefix}:job:{int(job_id)}"

    def ping(self) -> bool:
        """True when Redis answers (for health checks; never raises)."""
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    # -- producing ---------------------------------------------------------------------------
    def enqueue(self, event: JobEvent) -> bool:
        """Append ``event`` unless its delivery id or its ``(job_id, action)`` was seen before.

        Returns:
            True when appended, False for a duplicate (nothing changed).

        Raises:
            StoreUnavailable: Redis failed; nothing was recorded.
        """
        self._ensure_group()
        runner = event.runner_name or ""
        keys = [
            f"{self.key_prefix}:seen:delivery:{event.delivery_id}",
            f"{self.key_prefix}:seen:job:{event.job_id}:{event.action}",
            self.stream_key,
            self.job_key(event.job_id),
            f"{self.key_prefix}:runnerjob:{runner}",
            self._counters_key,
        ]
        args = [
            self.dedup_ttl,
            self.maxlen,
            event.to_json(),
            self.job_ttl,
            event.status,
            STATUS_RANK.get(event.status, 0),
            json.dumps(list(event.labels)),
            event.repo,
            event.owner,
            event.run_id,
            repr(event.created_at),
            repr(event.received_at),
            runner,
            "" if event.runner_id is None else event.runner_id,
            event.conclusion or "",
            event.action,
            event.job_id,
        ]
        entry_id = self._call("enqueue", lambda: self._enqueue_script(keys=keys, args=args))
        if entry_id is None:
            logger.info(
                "duplicate workflow_job delivery=%s job=%d action=%s ignored",
                event.delivery_id, event.job_id, event.action,
            )  # fmt: skip
            return False
        logger.info(
            "enqueued workflow_job delivery=%s job=%d action=%s repo=%s entry=%s",
            event.delivery_id, event.job_id, event.action, event.repo, _text(entry_id),
        )  # fmt: skip
        return True

    # -- consuming ---------------------------------------------------------------------------
    def read(self, count: int = 10, block_ms: int = 1000) -> list[tuple[str, JobEvent]]:
        """Up to ``count`` events for this consumer: re-claimed stale entries first, then new ones.

        Entries pending with any consumer for longer than ``claim_idle_ms`` are taken over
        (``XAUTOCLAIM``); then new entries are read (``XREADGROUP >``), blocking up to ``block_ms``
        only when nothing was re-claimed (``block_ms <= 0``: do not block). Keep ``block_ms`` below
        the client's socket timeout. Every returned entry must be :meth:`ack`-ed once handled.

        Raises:
            StoreUnavailable: Redis failed.
        """
        count = max(1, int(count))
        self._ensure_group()
        events = self._decode_all(self._claim(count))
        if len(events) < count:
            block = None if events or block_ms <= 0 else int(block_ms)
            events += self._decode_all(self._read_new(count - len(events), block))
        return events

    def _read_new(self, count: int, block: int | None) -> list[tuple[Any, Any]]:
        def read() -> Any:
            return self._client.xreadgroup(
                self.group, self.consumer, {self.stream_key: ">"}, count=count, block=block
            )

        try:
            response = self._call("read", read)
        except StoreUnavailable as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group vanished (Redis flushed or restarted empty): recreate, read again.
            self._ensure_group(force=True)
            response = self._call("read", read)
        entries: list[tuple[Any, Any]] = []
        if isinstance(response, dict):  # RESP3 shape
            for stream_entries in response.values():
                entries.extend(stream_entries[0] if stream_entries else [])
        else:
            for _stream, stream_entries in response or []:
                entries.extend(stream_entries)
        return entries

    def _claim(self, count: int) -> list[tuple[Any, Any]]:
        def claim() -> Any:
            return self._client.xautoclaim(
                self.stream_key,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=self._claim_cursor,
                count=count,
            )

        try:
            response = self._call("re-claim", claim)
        except StoreUnavailable as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ensure_group(force=True)
            return []
        self._claim_cursor = _text(response[0]) if response else "0-0"
        entries = [(entry_id, fields) for entry_id, fields in (response[1] if response else [])]
        if not entries:
            return []
        logger.info(
            "consumer %s re-claimed %d job entries idle over %d ms",
            self.consumer, len(entries), self.claim_idle_ms,
        )  # fmt: skip
        return self._drop_over_delivered(entries)

    def _drop_over_delivered(self, entries: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        ids = [_text(entry_id) for entry_id, _fields in entries]
        pending = self._call(
            "pending lookup",
            lambda: self._client.xpending_range(
                self.stream_key, self.group, min=min(ids, key=_id_key),
                max=max(ids, key=_id_key), count=len(ids) + 1000,
            ),
        )  # fmt: skip
        deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        kept: list[tuple[Any, Any]] = []
        for entry_id, fields in entries:
            times = deliveries.get(_text(entry_id), 0)
            if times > self.max_deliveries:
                self.dead_lettered += 1
                self._drop(_text(entry_id), "jobqueue_dead_lettered")
                logger.warning(
                    "job entry %s dropped after %d deliveries (max %d); the poll recovers it if still queued",
                    _text(entry_id), times, self.max_deliveries,
                )  # fmt: skip
            else:
                kept.append((entry_id, fields))
        return kept

    def _decode_all(self, entries: Sequence[tuple[Any, Any]]) -> list[tuple[str, JobEvent]]:
        events: list[tuple[str, JobEvent]] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            try:
                if not fields:
                    raise ValueError("entry has no fields")
                decoded = {_text(k): v for k, v in dict(fields).items()}
                if "event" not in decoded:
                    raise ValueError("event: missing")
                event = JobEvent.from_json(decoded["event"])
            except (ValueError, TypeError) as exc:
                self.malformed += 1
                self._drop(entry_id, "jobqueue_malformed")
                logger.warning("malformed job entry %s acknowledged and dropped: %s", entry_id, exc)
                continue
            events.append((entry_id, event))
        return events

    def _drop(self, entry_id: str, counter: str) -> None:
        def drop() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.xack(self.stream_key, self.group, entry_id)
            pipe.xdel(self.stream_key, entry_id)
            pipe.hincrby(self._counters_key, counter, 1)
            pipe.execute()

        self._call("drop", drop)

    def ack(self, entry_id: str) -> None:
        """Acknowledge a handled entry and delete it, so the stream only holds unfinished work.

        Raises:
            StoreUnavailable: Redis failed (the entry stays pending and will be re-claimed).
        """

        def ack() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.xack(self.stream_key, self.group, entry_id)
            pipe.xdel(self.stream_key, entry_id)
            pipe.execute()

        self._call("ack", ack)

    # -- inspection --------------------------------------------------------------------------
    def pending_count(self) -> int:
        """Entries not yet acknowledged (delivered to a consumer or not)."""
        return int(self._call("pending count", lambda: self._client.xlen(self.stream_key)))

    def job_status(self, job_id: int) -> dict[str, Any] | None:
        """The tracking record of a job, or ``None`` when unknown or expired.

        Keys: ``job_id``, ``status``, ``action``, ``conclusion``, ``labels`` (list), ``repo``,
        ``owner``, ``run_id``, ``queued_at`` (GitHub's creation time), ``received_at``,
        ``started_at``, ``completed_at``, ``runner_name``, ``runner_id``, ``updated_at``;
        absent values are ``None``.
        """
        raw = self._call("job lookup", lambda: self._client.hgetall(self.job_key(job_id)))
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}

        def number(key: str) -> float | None:
            value = data.get(key, "")
            try:
                return float(value) if value else None
            except ValueError:
                return None

        def integer(key: str) -> int | None:
            value = number(key)
            return None if value is None else int(value)

        try:
            labels = json.loads(data.get("labels", "[]"))
        except json.JSONDecodeError:
            labels = []
        return {
            "job_id": integer("job_id") if data.get("job_id") else int(job_id),
            "status": data.get("status") or None,
            "action": data.get("action") or None,
            "conclusion": data.get("conclusion") or None,
            "labels": labels if isinstance(labels, list) else [],
            "repo": data.get("repo") or None,
            "owner": data.get("owner") or None,
            "run_id": integer("run_id"),
            "queued_at": number("queued_at"),
            "received_at": number("received_at"),
            "started_at": number("started_at"),
            "completed_at": number("completed_at"),
            "runner_name": data.get("runner_name") or None,
            "runner_id": integer("runner_id"),
            "updated_at": number("updated_at"),
        }

    def job_for_runner(self, runner_name: str) -> dict[str, Any] | None:
        """The tracking record of the last job an event named ``runner_name`` for, or ``None``."""
        job_id = self._call(
            "runner job lookup",
            lambda: self._client.get(f"{self.key_prefix}:runnerjob:{runner_name}"),
        )
        if job_id is None:
            return None
        try:
            return self.job_status(int(_text(job_id)))
        except ValueError:
            return None

    def runner_job_unfinished(self, runner_name: str) -> bool:
        """True when the last event naming ``runner_name`` left its job ``in_progress``."""
        job = self.job_for_runner(runner_name)
        return bool(job and job["status"] == "in_progress")


def _id_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)
