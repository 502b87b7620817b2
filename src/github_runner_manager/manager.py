"""The RunnerManager: keeps each runner group's fleet at its target, and serves every queued job.

One :class:`RunnerManager` runs per unit (Juju unit or standalone service); several share one Redis.
What it promises:

* **Reconcile** observes GitHub (each configured target, conditional listing), this unit's backend
  instances (by prefix and unit tags), the Redis records of the whole fleet and the pending jobs, asks
  :func:`planner.plan` what to do and carries it out with bounded concurrency (``concurrency``).
  Deletions that depend on a listing that failed this cycle are skipped: never act on uncertain data.
* **Creates** reserve a Redis record first (:meth:`Store.reserve_runners`, so group, owner and fleet caps
  hold across units), then register a JIT runner, render user-data, and create the instance, trying the
  group's next backend on :class:`CapacityError`. Any failure removes the GitHub runner and the record.
* **Deletes** never touch a busy runner (recorded busy, GitHub busy on a re-check right before, or its
  last job event unfinished) unless flushing busy; a lease per runner keeps two units from deleting the
  same one; the order is instance, GitHub runner, record, so an interrupted delete is resumed.
* **Jobs**: a queued job is matched to a group (unmatched jobs and jobs asking beyond the group's sizing
  policy are counted and dropped), recorded as pending for this unit, and a runner is made sure of at
  once: an idle pool runner if there is one to spare, else a new one. Jobs with ``k=v`` runs-on tokens
  get a runner of their own, sized and labelled for them (GitHub routes by labels, so the runner must
  carry the tokens). ``in_progress`` marks the runner busy and records the pickup latency,
  ``completed`` marks it done so the husk goes promptly.
* **Crash safety**: every record carries the session (pid and start time) of the process creating it;
  a record left ``creating`` by a dead process is settled on the next reconcile: adopted when its
  instance runs and GitHub knows the runner, removed everywhere otherwise. Instances without any record
  are adopted when GitHub knows them (Redis was emptied) and deleted otherwise.

Manager-owned Redis keys (besides the store's and the job queue's): ``{p}:pending`` (hash job id →
pending job JSON), ``{p}:units`` (hash unit → last heartbeat), ``{p}:unit:{unit}`` (heartbeat, TTL),
``{p}:github`` (last rate-limit budget seen). All can be rebuilt: the poll finds queued jobs again.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import secrets
import shutil
import string
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import requests
import requests.adapters

from github_runner_manager import labels as labels_mod
from github_runner_manager import planner
from github_runner_manager.backends.base import (
    TAG_GROUP,
    TAG_OWNER,
    TAG_PREFIX,
    TAG_UNIT,
    AuthError,
    Backend,
    BackendError,
    CapacityError,
    Instance,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
)
from github_runner_manager.backends.registry import create_backend
from github_runner_manager.backoff import CreateBackoff
from github_runner_manager.config import GitHubPath, ManagerConfig, RunnerGroup
from github_runner_manager.github import (
    GitHubAuthError,
    GitHubClient,
    GitHubError,
    GitHubRunner,
    RunnerApplication,
)
from github_runner_manager.jobqueue import JobEvent, JobQueue
from github_runner_manager.labels import Sizing, SizingRefused
from github_runner_manager.metrics import Metrics
from github_runner_manager.planner import ObservedRunner, RunnerState
from github_runner_manager.runner_binary import RunnerBinary, RunnerBinaryCache
from github_runner_manager.store import RunnerRecord, Store, StoreUnavailable
from github_runner_manager.templates import build_context, render_user_data

if TYPE_CHECKING:
    from github_runner_manager.image import ImageBuildResult

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: States a runner may be claimed for a job in / taken by a job from.
_WAITING = (RunnerState.CREATING, RunnerState.IDLE)
#: Seconds a ``creating`` record without a session is given before it counts as abandoned.
_SESSIONLESS_GRACE = 30.0
#: Seconds a ``done`` runner's instance is given to power off before it is removed anyway.
_DONE_GRACE = 30.0
#: Pending jobs GitHub no longer lists as queued are dropped once this old (at least 2 poll intervals):
#: by then a job missing from GitHub's queued list has started or was cancelled, its event lost.
_PENDING_STALE = 30.0
#: A runner recorded busy that GitHub shows idle (and no job event says otherwise) for this long is idle.
_BUSY_STALE = 120.0
#: GitHub fails a job queued longer than a day.
_PENDING_MAX_AGE = 86400.0
#: Heartbeat lifetime of a unit; its pending jobs are adopted by another unit once it lapses.
HEARTBEAT_TTL = 30.0
#: A unit silent this long (at least 10 of its reconcile intervals) is gone: the registrations and
#: records it left (offline on GitHub) are removed so they stop holding cap slots.
DEAD_UNIT_AFTER = 900.0
_NAME_ALPHABET = string.ascii_lowercase + string.digits
#: Why runners are deleted (``ghrm_runners_removed_total`` reasons of :meth:`RunnerManager._delete_runner`).
_REMOVAL_REASONS = frozenset({*planner.DELETE_REASONS, "vanished"})

# Compare-and-set of one hash field: KEYS[1] hash, ARGV[1] field, ARGV[2] expected, ARGV[3] new value.
_HCAS_LUA = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


# Delete KEYS[1] only while it holds ARGV[1].
_DEL_IF_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _RemovedMeanwhileError(BackendError):
    """A runner's record went away while it was being created (a flush): not a backend failure."""


class ImageBuildUnavailable(RuntimeError):  # noqa: N818 - reads as a state, like the other errors
    """Building the runner image is not possible here (the image module or its inputs are missing)."""


# ------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class RunnerInfo:
    """One runner as GitHub and the fleet's records see it (``get_github_info``)."""

    name: str
    owner: str
    github_id: int | None
    status: str | None
    busy: bool
    labels: tuple[str, ...]
    group: str | None
    state: str | None
    unit: str | None
    backend: str | None


@dataclass(frozen=True)
class GroupStatistics:
    """Fleet-wide numbers of one runner group; ``github_*`` are fleet totals (the same in every group)."""

    group: str
    idle: int
    busy: int
    creating: int
    offline: int
    other: int
    total: int
    max_runners: int
    min_idle: int
    queued_jobs: int
    pickup_count: int
    pickup_p50: float | None
    pickup_p95: float | None
    pickup_max: float | None
    github_requests: int
    github_rate_limit_units: int
    github_not_modified: int
    github_remaining: int | None = None
    #: this group's runners by the backend they run on (fleet-wide): where fallback put them.
    backends: dict[str, int] = field(default_factory=dict, hash=False)
    #: creates each backend refused for capacity or quota, so the next one was tried (fleet totals).
    backend_capacity_refusals: dict[str, int] = field(default_factory=dict, hash=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON output and the charm's action results)."""
        return asdict(self)


@dataclass(frozen=True)
class PendingJob:
    """A queued job this fleet owes a runner: which unit serves it, for which group and owner."""

    job_id: int
    repo: str
    labels: tuple[str, ...]
    queued_at: float
    unit: str
    group: str
    owner: str
    tokens: dict[str, str] = field(default_factory=dict)
    runner: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PendingJob:
        data = json.loads(text)
        return cls(
            job_id=int(data["job_id"]),
            repo=str(data["repo"]),
            labels=tuple(str(x) for x in data.get("labels") or ()),
            queued_at=float(data.get("queued_at") or 0.0),
            unit=str(data["unit"]),
            group=str(data["group"]),
            owner=str(data["owner"]),
            tokens={str(k): str(v) for k, v in (data.get("tokens") or {}).items()},
            runner=data.get("runner") or None,
        )


@dataclass
class _Observation:
    """What one reconcile saw."""

    now: float
    #: wall-clock time the observation began (records' ``created_at`` are wall-clock too)
    wall: float
    records: dict[str, RunnerRecord]
    github: dict[str, dict[str, GitHubRunner]]
    github_ok: dict[str, bool]
    instances: dict[str, tuple[str, Instance]]
    backend_ok: dict[str, bool]
    pending: dict[int, PendingJob]
    unfinished: set[str]

    def github_runner(self, name: str) -> GitHubRunner | None:
        for runners in self.github.values():
            if name in runners:
                return runners[name]
        return None

    @property
    def all_github_ok(self) -> bool:
        return all(self.github_ok.values())

    @property
    def all_backends_ok(self) -> bool:
        return all(self.backend_ok.values())


@dataclass
class _Settled:
    """The observation turned into planner input plus the work the manager does itself."""

    runners: list[ObservedRunner] = field(default_factory=list)
    stale: list[RunnerRecord] = field(default_factory=list)
    dead: list[RunnerRecord] = field(default_factory=list)
    resume: list[RunnerRecord] = field(default_factory=list)
    orphan_instances: list[str] = field(default_factory=list)
    orphan_github: list[tuple[str, int]] = field(default_factory=list)
    uncertain: set[str] = field(default_factory=set)
    vanished: set[str] = field(default_factory=set)
    #: runners this observation's (successful) GitHub listing no longer shows: no DELETE needed
    github_gone: set[str] = field(default_factory=set)
    owner_elsewhere: dict[str, int] = field(default_factory=dict)
    total_elsewhere: int = 0


# ------------------------------------------------------------------------------------ helpers
def _proc_start(pid: int) -> str | None:
    """Start time of a live, non-zombie process (``/proc/PID/stat`` field 22), else ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :].split()
    if not rest or rest[0] in {"Z", "X"}:
        return None
    return rest[19] if len(rest) > 19 else None


@functools.cache
def _host_identity() -> str:
    """What makes a process id meaningful: this kernel boot and this pid namespace.

    Two processes whose sessions carry the same identity see the same ``/proc``; a session of another
    host (or container, or boot) cannot be judged from here.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = "?"
    return f"{boot}:{pidns}".replace("/", "_").replace("|", "_")


def _session_gone(session: str) -> bool:
    """Whether a session (``pid:start``) of a process of this host no longer runs; text not of
    that form is not ours to judge (False)."""
    pid_text, _, start = session.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return _proc_start(pid) != start


def holder_is_dead(holder: str) -> bool:
    """Whether a lease holder (``host/pid:start``) is a process of this host that no longer runs.

    Only a process of the same host identity (:func:`_host_identity`) can be judged; any other
    holder, or text not of that form, counts as alive.
    """
    host, _, session = holder.rpartition("/")
    return bool(host) and host == _host_identity() and _session_gone(session)


def prefixed_counters(counters: Mapping[str, int], prefix: str) -> dict[str, int]:
    """The fleet counters named ``{prefix}{name}``, as ``name -> value`` (sorted)."""
    return {k.removeprefix(prefix): v for k, v in sorted(counters.items()) if k.startswith(prefix)}


def read_create_backoffs(
    store: Store,
    *,
    max_age: float,
    is_dead: Callable[[str], bool] = holder_is_dead,
    unit: str | None = None,
) -> list[dict[str, Any]]:
    """The creation backoffs units published (``{prefix}:create_backoff``), by unit, group, owner.

    Each: ``unit``, ``group``, ``owner``, ``failures`` (failed rounds), ``seconds_left`` until the
    next probe create (0: a probe is due or running) and the last ``error``. Left out: entries of
    processes of this host that no longer run, entries more than ``max_age`` seconds past their
    probe time (their process is gone, elsewhere), unreadable ones, and other units' when ``unit``.

    Raises:
        redis.RedisError: Redis failed.
    """
    raw = store.client.hgetall(f"{store.key_prefix}:create_backoff")
    now = time.time()
    out = []
    for field_name, value in sorted(raw.items()):
        owner_unit, _, rest = str(field_name).partition("|")
        group, _, owner = rest.partition("|")
        if unit is not None and owner_unit != unit:
            continue
        try:
            data = json.loads(value)
            until = float(data["until"])
            failures = int(data["failures"])
        except (ValueError, KeyError, TypeError):
            continue
        if now > until + max_age or is_dead(str(data.get("holder") or "")):
            continue
        out.append(
            {"unit": owner_unit, "group": group, "owner": owner, "failures": failures,
             "seconds_left": round(max(0.0, until - now), 1), "error": str(data.get("error") or "")},
        )  # fmt: skip
    return out


def path_covers(path: GitHubPath, repo: str) -> bool:
    """Whether a runner registered at ``path`` may take a job of ``repo`` (``owner/name``)."""
    owner = repo.partition("/")[0].lower()
    if path.kind == "repo":
        return str(path).lower() == repo.lower()
    if path.kind == "org":
        return path.owner.lower() == owner
    return True


def runner_labels(group: RunnerGroup, extra: Iterable[str] = ()) -> list[str]:
    """The labels a runner of ``group`` registers with: the group's, the implied ones, then ``extra``."""
    out: list[str] = []
    seen: set[str] = set()
    implied = sorted(labels_mod.implied_labels(group) - {x.lower() for x in group.labels})
    for label in [*group.labels, *implied, *extra]:
        if label.lower() not in seen:
            seen.add(label.lower())
            out.append(label)
    return out


# -------------------------------------------------------------------------------------- manager
class RunnerManager:
    """The fleet manager of one unit. Thread-safe; see the module docstring for its promises.

    Args:
        config: the validated configuration.
        store: the Redis store (default: from ``config.redis``).
        github: the GitHub client (default: from ``config.github``; reads the token).
        backends: backends by name (default: built lazily from the registry and ``config.backends``).
        clock: epoch clock.
        metrics: where metrics go (default: a private registry).
        config_path: the config file this manager was loaded from (for the image rebuild cron entry).
    """

    def __init__(
        self,
        config: ManagerConfig,
        *,
        store: Store | None = None,
        github: GitHubClient | None = None,
        backends: Mapping[str, Backend] | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.unit = config.unit
        self.prefix = config.prefix
        self.clock = clock
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.store = store or Store.from_config(config.redis)
        self._kp = self.store.key_prefix
        if github is None:
            token = config.github.resolve_token().get_secret_value()
            # one pooled connection per worker thread (requests keeps only 10 by default)
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(
                pool_connections=4, pool_maxsize=config.concurrency + 8
            )
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            github = GitHubClient(
                config.github.url, token, timeout=config.github.timeout, session=session
            )
        self.github = github
        self.jobqueue = JobQueue(
            self.store.client,
            key_prefix=self._kp,
            consumer=f"{self.unit}-{os.getpid()}",
            claim_idle_ms=30_000,
        )
        self._backends: dict[str, Backend] = dict(backends or {})
        self._backend_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix="ghrm-act"
        )
        self._session = f"{os.getpid()}:{_proc_start(os.getpid()) or '0'}"
        #: who holds this process's leases: judged dead by any process of the same host
        self._holder = f"{_host_identity()}/{self._session}"
        self._creating: set[str] = set()
        self._deleting: set[str] = set()
        self._inflight_lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._group_locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._offline_since: dict[str, float] = {}
        self._orphan_seen: dict[tuple[str, int], float] = {}
        self._orphan_names: dict[tuple[str, int], str] = {}
        self._github_published: dict[str, float] = {}
        self._github_lock = threading.Lock()
        self._hcas = self.store.client.register_script(_HCAS_LUA)
        self._del_if = self.store.client.register_script(_DEL_IF_LUA)
        self._binary_cache: RunnerBinaryCache | None = None
        self._create_backoff = CreateBackoff(config.create_backoff, config.create_backoff_max)

    # ---------------------------------------------------------------------------- plumbing
    def _redis(self, what: str, func: Callable[[], _T]) -> _T:
        try:
            return func()
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"Redis at {self.store.where} unavailable during {what}: {type(exc).__name__}"
            ) from exc

    def backend(self, name: str) -> Backend:
        """The backend called ``name``, built on first use.

        Raises:
            BackendConfigError: unknown backend or invalid settings; MissingDependencyError.
        """
        with self._backend_lock:
            found = self._backends.get(name)
            if found is None:
                found = create_backend(name, self.config.backend_settings(name), prefix=self.prefix)
                self._backends[name] = found
                hook = getattr(found, "use_runner_binary", None)
                if callable(hook):
                    hook(self._runner_tarball)
            return found

    def _backend_names(self, records: Iterable[RunnerRecord] = ()) -> list[str]:
        names: list[str] = []
        for group in self.config.runner_groups:
            names.extend(group.backend_order)
        names.extend(r.backend for r in records if r.unit == self.unit and r.backend)
        return list(dict.fromkeys(names))

    def validate(self) -> None:
        """Build every configured backend and let it check each group (image, size); raise on problems."""
        for group in self.config.runner_groups:
            for name in group.backend_order:
                self.backend(name).validate(group)

    def _paths(self) -> list[GitHubPath]:
        paths: list[GitHubPath] = []
        for group in self.config.runner_groups:
            paths.extend(self.config.group_paths(group))
        return list(dict.fromkeys(paths))

    def _path_for(self, group: RunnerGroup, repo: str) -> GitHubPath | None:
        for path in self.config.group_paths(group):
            if path_covers(path, repo):
                return path
        return None

    def _group(self, name: str) -> RunnerGroup | None:
        try:
            return self.config.group(name)
        except KeyError:
            return None

    def _group_of(self, name: str) -> str:
        """The group part of a runner name ``{prefix}-{group}-{suffix}`` (see :meth:`_new_name`)."""
        return name.removeprefix(f"{self.prefix}-").rpartition("-")[0]

    def _new_name(self, group: str) -> str:
        suffix = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(6))
        return f"{self.prefix}-{group}-{suffix}"

    def _session_alive(self, record: RunnerRecord) -> bool:
        """Whether the process that reserved a ``creating`` record may still be creating it."""
        session = record.extra.get("session", "")
        if not session:
            return self.clock() - record.created_at < _SESSIONLESS_GRACE
        if session == self._session:
            return record.name in self._creating
        return self._session_alive_text(session)

    def _delete_lease(self, name: str, ttl: float) -> contextlib.AbstractContextManager[bool]:
        """The lease that serialises every removal of runner ``name`` across processes and units.

        A lease left by a SIGKILLed process of this host is broken at once, so the next reconcile
        resumes the interrupted removal instead of waiting ``ttl`` seconds.
        """
        return self.store.lease(
            f"delete:{name}", ttl=ttl, holder=self._holder, holder_dead=holder_is_dead
        )

    def close(self) -> None:
        """Wait for running creates/deletes, then release backends and connections."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for backend in list(self._backends.values()):
            with contextlib.suppress(Exception):
                backend.close()
        with contextlib.suppress(Exception):
            self.github.close()
        self.store.close()

    # ------------------------------------------------------------------ heartbeat, GitHub stats
    def heartbeat(self) -> None:
        """Tell other units this one is alive (its pending jobs are not to be adopted)."""
        key = f"{self._kp}:unit:{self.unit}"

        def beat() -> None:
            pipe = self.store.client.pipeline(transaction=False)
            pipe.set(key, self._session, ex=int(HEARTBEAT_TTL))
            pipe.hset(f"{self._kp}:units", self.unit, repr(self.clock()))
            pipe.execute()

        self._redis("heartbeat", beat)

    def _dead_units(self, now: float) -> set[str]:
        """Units silent for long (no heartbeat for ``DEAD_UNIT_AFTER`` or 10 reconcile intervals)."""
        after = max(DEAD_UNIT_AFTER, 10 * self.config.reconcile_interval)
        seen = self._redis("units", lambda: self.store.client.hgetall(f"{self._kp}:units"))
        dead = set()
        for unit, when in seen.items():
            try:
                silent = now - float(when)
            except ValueError:
                continue
            if unit != self.unit and silent > after and not self._unit_alive(unit):
                dead.add(unit)
        return dead

    def _unit_alive(self, unit: str) -> bool:
        if unit == self.unit:
            return True
        return bool(
            self._redis("unit check", lambda: self.store.client.exists(f"{self._kp}:unit:{unit}"))
        )

    def publish_github_stats(self) -> None:
        """Add this process's GitHub usage since the last call to the fleet counters and metrics."""
        stats = self.github.stats()
        self.metrics.observe_github_stats(stats)
        with self._github_lock:
            deltas = {}
            for key, counter in (
                ("requests", "github_requests"),
                ("rate_limit_units", "github_rate_limit_units"),
                ("not_modified", "github_not_modified"),
            ):
                value = float(stats.get(key) or 0)
                previous = self._github_published.get(key, 0.0)
                if value > previous:
                    deltas[counter] = int(value - previous)
                self._github_published[key] = value
        for counter, delta in deltas.items():
            self.store.incr(counter, delta)
        budget = {k: stats.get(k) for k in ("remaining", "limit", "reset")}
        if budget["remaining"] is not None:
            mapping: dict[str | bytes, bytes | float | int | str] = {
                k: str(v) for k, v in budget.items() if v is not None
            }
            self._redis(
                "github budget",
                lambda: self.store.client.hset(f"{self._kp}:github", mapping=mapping),
            )

    # ------------------------------------------------------------------------- pending jobs
    @property
    def _pending_key(self) -> str:
        return f"{self._kp}:pending"

    def pending_jobs(self) -> dict[int, PendingJob]:
        """Every pending job of the fleet (all units)."""
        raw = self._redis("pending jobs", lambda: self.store.client.hgetall(self._pending_key))
        out: dict[int, PendingJob] = {}
        for key, value in raw.items():
            try:
                out[int(key)] = PendingJob.from_json(value)
            except (ValueError, KeyError, TypeError):
                logger.warning("pending job %s unreadable; dropped", key)
                self._pending_drop_raw(key)
        return out

    def _pending_drop_raw(self, key: str) -> None:
        self._redis("pending drop", lambda: self.store.client.hdel(self._pending_key, key))

    def _pending_add(self, job: PendingJob) -> bool:
        return bool(
            self._redis(
                "pending add",
                lambda: self.store.client.hsetnx(self._pending_key, str(job.job_id), job.to_json()),
            )
        )

    def _pending_get(self, job_id: int) -> PendingJob | None:
        raw = self._redis(
            "pending get", lambda: self.store.client.hget(self._pending_key, str(job_id))
        )
        if not raw:
            return None
        try:
            return PendingJob.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return None

    def _pending_pop(self, job_id: int) -> PendingJob | None:
        def pop() -> Any:
            pipe = self.store.client.pipeline(transaction=True)
            pipe.hget(self._pending_key, str(job_id))
            pipe.hdel(self._pending_key, str(job_id))
            return pipe.execute()[0]

        raw = self._redis("pending pop", pop)
        if not raw:
            return None
        try:
            return PendingJob.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return None

    def _pending_replace(self, old: PendingJob, new: PendingJob) -> bool:
        """Compare-and-set a pending entry (it may have been popped or changed meanwhile)."""
        return bool(
            self._redis(
                "pending update",
                lambda: self._hcas(
                    keys=[self._pending_key], args=[str(old.job_id), old.to_json(), new.to_json()]
                ),
            )
        )

    # ---------------------------------------------------------------------------- observe
    def _observe(self) -> _Observation:
        now = self.clock()
        wall = time.time()
        records = {r.name: r for r in self.store.list_runners()}
        github: dict[str, dict[str, GitHubRunner]] = {}
        github_ok: dict[str, bool] = {}
        mine = f"{self.prefix}-"
        for path in self._paths():
            key = str(path)
            try:
                listed = self.github.list_runners(path)
            except GitHubAuthError:
                raise
            except GitHubError as exc:
                logger.warning("listing GitHub runners at %s failed: %s", key, exc)
                github_ok[key] = False
                github[key] = {}
                continue
            github[key] = {r.name: r for r in listed if r.name.startswith(mine)}
            github_ok[key] = True
        instances: dict[str, tuple[str, Instance]] = {}
        backend_ok: dict[str, bool] = {}
        tags = {TAG_PREFIX: self.prefix, TAG_UNIT: self.unit}
        for name in self._backend_names(records.values()):
            try:
                for inst in self.backend(name).list(prefix=mine, tags=tags):
                    instances.setdefault(inst.name, (name, inst))
                backend_ok[name] = True
            except AuthError:
                raise
            except BackendError as exc:
                logger.warning("listing instances of backend %s failed: %s", name, exc)
                backend_ok[name] = False
        pending = self.pending_jobs()
        unfinished = self._unfinished([r.name for r in records.values() if r.unit == self.unit])
        return _Observation(
            now=now,
            wall=wall,
            records=records,
            github=github,
            github_ok=github_ok,
            instances=instances,
            backend_ok=backend_ok,
            pending=pending,
            unfinished=unfinished,
        )

    def _unfinished(self, names: list[str]) -> set[str]:
        """Runners whose last job event says their job is in progress (two pipelined round trips)."""
        if not names:
            return set()
        client = self.store.client

        def fetch() -> set[str]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.get(f"{self._kp}:runnerjob:{name}")
            job_ids = pipe.execute()
            asked = [(n, j) for n, j in zip(names, job_ids, strict=True) if j]
            if not asked:
                return set()
            pipe = client.pipeline(transaction=False)
            for _name, job_id in asked:
                pipe.hget(f"{self._kp}:job:{job_id}", "status")
            statuses = pipe.execute()
            return {n for (n, _j), s in zip(asked, statuses, strict=True) if s == "in_progress"}

        return self._redis("runner jobs", fetch)

    def _settle(self, obs: _Observation, *, flushing: bool = False) -> _Settled:
        """Turn an observation into planner input; decide what the planner does not."""
        out = _Settled()
        now = obs.now
        with self._inflight_lock:
            creating = set(self._creating)
            deleting = set(self._deleting)
        dead_units = self._dead_units(now)
        for rec in obs.records.values():
            if rec.unit in dead_units and obs.github_ok.get(rec.owner, False):
                gr = obs.github.get(rec.owner, {}).get(rec.name)
                if gr is None or (gr.status != "online" and not gr.busy):
                    out.dead.append(rec)
                    continue
            if rec.unit != self.unit:
                out.total_elsewhere += 1
                out.owner_elsewhere[rec.owner] = out.owner_elsewhere.get(rec.owner, 0) + 1
                continue
            if rec.name in deleting:
                continue
            gh_ok = obs.github_ok.get(rec.owner, False)
            gr = obs.github.get(rec.owner, {}).get(rec.name)
            if gh_ok and gr is None and rec.state is not RunnerState.CREATING:
                out.github_gone.add(rec.name)
            located = obs.instances.get(rec.name)
            inst = located[1] if located else None
            b_ok = (
                obs.backend_ok.get(rec.backend, False) if rec.backend else obs.all_backends_ok
            ) or inst is not None
            if rec.state is RunnerState.DELETING:
                out.resume.append(rec)
                continue
            state = rec.state
            if state is RunnerState.CREATING:
                if rec.name in creating or self._session_alive(rec):
                    out.runners.append(
                        ObservedRunner(
                            name=rec.name, group=rec.group, owner=rec.owner, state=state,
                            created_at=rec.created_at, github_id=gr.id if gr else rec.github_id,
                            instance_exists=inst is not None, registered=False,
                        )
                    )  # fmt: skip
                    continue
                alive = inst is not None and inst.state in (
                    InstanceState.RUNNING,
                    InstanceState.PENDING,
                )
                if alive and gr is not None and located is not None:
                    # its creator died after the instance started: adopt it
                    if self.store.transition(
                        rec.name, [RunnerState.CREATING], RunnerState.IDLE,
                        backend=located[0], github_id=gr.id, session=self._session,
                    ):  # fmt: skip
                        logger.info("runner %s adopted from a dead creator", rec.name)
                        state = RunnerState.IDLE
                    else:
                        continue
                elif (gh_ok or rec.github_id is not None) and b_ok:
                    out.stale.append(rec)
                    continue
                else:
                    out.uncertain.add(rec.name)
                    out.runners.append(
                        ObservedRunner(
                            name=rec.name, group=rec.group, owner=rec.owner, state=state,
                            created_at=rec.created_at, instance_exists=True, registered=False,
                        )
                    )  # fmt: skip
                    continue
            if not gh_ok or not b_ok:
                out.uncertain.add(rec.name)
            busy_now = bool(gr and gr.busy)
            online = bool(gr and gr.status == "online")
            registered = rec.registered or online or busy_now or state is RunnerState.BUSY
            if registered and not rec.registered:
                self.store.update(rec.name, registered=True)
            if (
                busy_now
                and state in (RunnerState.IDLE, RunnerState.OFFLINE)
                and self.store.transition(rec.name, [state], RunnerState.BUSY)
            ):
                state = RunnerState.BUSY
            if (
                state is RunnerState.BUSY
                and gr is not None
                and online
                and not busy_now
                and rec.name not in obs.unfinished
                and now - (rec.busy_since or rec.updated_at) > _BUSY_STALE
                and self.store.transition(
                    rec.name, [RunnerState.BUSY], RunnerState.IDLE, job_id=None
                )
            ):
                state = RunnerState.IDLE  # its job ended but the completed event never came
            husk = b_ok and (
                inst is None or inst.state in (InstanceState.STOPPED, InstanceState.ERROR)
            )
            job_unfinished = rec.name in obs.unfinished
            github_status: Any = gr.status if gr and gr.status in ("online", "offline") else None
            if gr is not None and gr.status != "online" and registered:
                self._offline_since.setdefault(rec.name, now)
            else:
                self._offline_since.pop(rec.name, None)
            claimed = rec.job_id is not None and state in _WAITING and rec.job_id in obs.pending
            if husk:
                if state not in (RunnerState.DONE, RunnerState.BUSY):
                    out.vanished.add(rec.name)  # its machine went away before it ran a job
                state, job_unfinished, busy_now = RunnerState.DONE, False, False
            elif gh_ok and gr is None and state is not RunnerState.DONE:
                # GitHub no longer knows it: an ephemeral runner that finished, or an expired JIT
                state = RunnerState.DONE if registered else RunnerState.FAILED
                job_unfinished, busy_now = False, False
            elif claimed and not flushing:
                age = now - rec.created_at
                offline_for = now - self._offline_since.get(rec.name, now)
                if (not registered and age > self.config.register_timeout) or (
                    registered and offline_for > self.config.offline_timeout
                ):
                    state = RunnerState.FAILED
                else:
                    job_unfinished = True  # committed to its job: the planner must keep it
            if not gh_ok:
                github_status = "online" if registered else None
            out.runners.append(
                ObservedRunner(
                    name=rec.name,
                    group=rec.group,
                    owner=rec.owner,
                    state=state,
                    created_at=rec.created_at,
                    github_id=gr.id if gr else rec.github_id,
                    github_status=github_status,
                    github_busy=busy_now,
                    instance_exists=inst is not None if b_ok else True,
                    registered=registered,
                    job_unfinished=job_unfinished,
                    offline_since=self._offline_since.get(rec.name),
                )
            )
        # instances with no record anywhere: adopt when GitHub knows them, else clean up
        for name, (bname, inst) in obs.instances.items():
            if name in obs.records or name in creating or name in deleting:
                continue
            gr = obs.github_runner(name)
            if gr is not None:
                adopted = self._adopt(name, bname, inst, gr)
                if adopted is not None:
                    out.runners.append(adopted)
            elif obs.all_github_ok and obs.backend_ok.get(bname, False):
                out.orphan_instances.append(name)
        # GitHub runners with our prefix, no record and no instance: offline ones go
        seen_now: set[tuple[str, int]] = set()
        for owner, runners in obs.github.items():
            if not obs.github_ok.get(owner) or not obs.all_backends_ok:
                continue
            for gr in runners.values():
                if gr.name in obs.records or gr.name in obs.instances or gr.name in creating:
                    continue
                if gr.busy or (gr.status == "online" and not flushing):
                    continue
                key = (owner, gr.id)
                seen_now.add(key)
                self._orphan_names[key] = gr.name
                first = self._orphan_seen.setdefault(key, now)
                if flushing or now > first:
                    out.orphan_github.append(key)
        self._orphan_seen = {k: v for k, v in self._orphan_seen.items() if k in seen_now}
        self._orphan_names = {k: v for k, v in self._orphan_names.items() if k in seen_now}
        return out

    def _adopt(
        self, name: str, backend: str, inst: Instance, gr: GitHubRunner
    ) -> ObservedRunner | None:
        """Rebuild the record of an instance GitHub knows but Redis does not (Redis was emptied)."""
        group = inst.tags.get(TAG_GROUP) or self._group_of(name)
        owner = inst.tags.get(TAG_OWNER) or gr.owner
        if not self.store.reserve_runners(
            group, owner, [name], self.unit, group_cap=0, total_cap=0, owner_cap=0,
            backend=backend, fields={"session": self._session},
        ):  # fmt: skip
            return None
        state = RunnerState.BUSY if gr.busy else RunnerState.IDLE
        registered = gr.status == "online" or gr.busy
        self.store.transition(
            name, [RunnerState.CREATING], state, github_id=gr.id,
            registered=registered, session=self._session,
        )  # fmt: skip
        logger.info("runner %s adopted: its record was rebuilt from %s and GitHub", name, backend)
        return ObservedRunner(
            name=name,
            group=group,
            owner=owner,
            state=state,
            created_at=inst.created_at or self.clock(),
            github_id=gr.id,
            github_status="online" if gr.status == "online" else "offline",
            github_busy=gr.busy,
            instance_exists=True,
            registered=registered,
        )

    # ------------------------------------------------------------------------- reconcile
    def reconcile(self, quantity: int | None = None, resources: Sizing | None = None) -> int:
        """Converge this unit's fleet once; returns runners intended minus runners existing.

        Args:
            quantity: idle runners wanted per group, overriding ``min_idle`` and pending jobs.
            resources: size of the runners created by this pass (default: each group's size).

        Raises:
            StoreUnavailable: Redis failed. GitHubAuthError / AuthError: credentials were rejected.
        """
        started = time.monotonic()
        try:
            with self._unit_lock():
                delta = self._reconcile(quantity, resources)
        except Exception:
            self.metrics.reconciles.labels(result="error").inc()
            raise
        finally:
            with contextlib.suppress(Exception):
                self.publish_github_stats()
        self.metrics.reconciles.labels(result="ok").inc()
        self.metrics.reconcile_latency.observe(time.monotonic() - started)
        return delta

    @contextlib.contextmanager
    def _unit_lock(self, wait: float = 120.0, ttl: float = 900.0) -> Iterator[None]:
        """Serialise reconciles and flushes of this unit (threads here, and other processes of it).

        The lock holds the holder's session; a lock left by a dead process of this unit (same host)
        is broken at once, so a manager restarted after a SIGKILL does not wait for its expiry.

        Raises:
            StoreUnavailable: Redis failed, or a live process kept the lock for ``wait`` seconds.
        """
        key = f"{self._kp}:lock:reconcile:{self.unit}"
        client = self.store.client
        with self._reconcile_lock:
            deadline = time.monotonic() + wait
            while True:
                if self._redis(
                    "unit lock", lambda: client.set(key, self._session, nx=True, px=int(ttl * 1000))
                ):
                    break
                holder = self._redis("unit lock", lambda: client.get(key)) or ""
                if holder and not self._session_alive_text(holder):
                    logger.warning(
                        "breaking the reconcile lock of unit %s left by dead process %s",
                        self.unit,
                        holder,
                    )
                    self._hdel_if(key, holder)
                    continue
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"another process ({holder}) kept the reconcile lock of unit {self.unit} for {wait:g}s"
                    )
                time.sleep(0.2)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    self._hdel_if(key, self._session)

    def _hdel_if(self, key: str, value: str) -> None:
        """Delete ``key`` only while it holds ``value``."""
        self._redis("unit lock", lambda: self._del_if(keys=[key], args=[value]))

    def _session_alive_text(self, session: str) -> bool:
        return session == self._session or not _session_gone(session)

    def _reconcile(self, quantity: int | None, resources: Sizing | None) -> int:
        self.heartbeat()
        self._adopt_pending()
        obs = self._observe()
        self._prune_pending(obs)
        settled = self._settle(obs)
        # settle what dead processes left first: their records still count against the caps
        self._wait(
            [self._submit(self._remove_stale, rec, obs) for rec in settled.stale + settled.dead]
            + [self._submit(self._delete_runner, r.name, "resume") for r in settled.resume]
        )
        futures: list[Future[Any]] = []
        demands = self._demands(obs, quantity)
        inp = planner.PlanInput(
            demands=demands,
            runners=settled.runners,
            orphan_instances=settled.orphan_instances,
            orphan_github_runners=settled.orphan_github,
            max_total_runners=self.config.max_total_runners,
            per_owner_max_runners=self.config.per_owner_max_runners,
            owner_counts_elsewhere=settled.owner_elsewhere,
            total_elsewhere=settled.total_elsewhere,
            now=obs.now,
            register_timeout=self.config.register_timeout,
            offline_timeout=self.config.offline_timeout,
            flush="none",
        )
        plan = planner.plan(inp)
        for delete in plan.deletes:
            if delete.name in settled.uncertain and delete.reason != "done":
                logger.info(
                    "delete of %s (%s) skipped: uncertain data this cycle",
                    delete.name,
                    delete.reason,
                )
                continue
            reason = delete.reason
            if reason == "done" and delete.name in settled.vanished:
                reason = "vanished"
            futures.append(
                self._submit(
                    self._delete_runner,
                    delete.name,
                    reason,
                    github_gone=delete.name in settled.github_gone,
                )
            )
        for name in plan.cleanups:
            futures.append(self._submit(self._cleanup_instance, name))
        for owner, runner_id in plan.github_removals:
            futures.append(self._submit(self._remove_github_runner, owner, runner_id))
        created = 0
        started: list[str] = []
        for create in plan.creates:
            group = self._group(create.group)
            if group is None:
                continue
            # job intake creates runners while this reconcile observes (under the same lock): the
            # plan did not see those, so they count against its creates (no second runner per job)
            with self._group_locks[(group.name, create.owner)]:
                since = self._created_since(group.name, create.owner, obs, exclude=started)
                if since:
                    logger.info(
                        "group %s at %s: %d of %d planned creates already made since the observation",
                        group.name, create.owner, min(since, create.count), create.count,
                    )  # fmt: skip
                names = self._create_runners(
                    group,
                    GitHubPath.parse(create.owner),
                    create.count - since,
                    sizing=resources,
                    reason=create.reason,
                    wait=False,
                )
            created += len(names)
            started += names
        sized = self._serve_dedicated(obs)
        dedicated = len(sized)
        self._wait(futures)
        self._wait_created(started + sized)
        logger.info(
            "reconcile unit=%s: %d runners, +%d created (%d for sized jobs), -%d deleted, %d orphan "
            "instances, %d orphan GitHub runners, %d stale creations",
            self.unit, len(settled.runners), created, dedicated, len(plan.deletes), len(plan.cleanups),
            len(plan.github_removals), len(settled.stale),
        )  # fmt: skip
        return plan.delta + dedicated

    def _created_since(
        self, group: str, owner: str, obs: _Observation, *, exclude: Iterable[str] = ()
    ) -> int:
        """Generic runners of this unit reserved after ``obs`` began that it did not see."""
        skip = set(exclude)
        return sum(
            1
            for rec in self.store.list_runners(group)
            if rec.unit == self.unit
            and rec.owner == owner
            and rec.created_at >= obs.wall
            and rec.name not in obs.records
            and rec.name not in skip
            and not rec.extra.get("runson")
        )

    def _demands(self, obs: _Observation, quantity: int | None) -> list[planner.GroupDemand]:
        pending: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for job in obs.pending.values():
            if job.unit == self.unit and not job.tokens:
                pending[job.group][job.owner] += 1
        demands = []
        for group in self.config.runner_groups:
            by_owner = dict(pending.get(group.name, {}))
            demands.append(
                planner.GroupDemand(
                    group=group,
                    pending_jobs=sum(by_owner.values()),
                    quantity=quantity,
                    owners=tuple(str(p) for p in self.config.group_paths(group)),
                    pending_by_owner=by_owner,
                )
            )
        return demands

    def _serve_dedicated(self, obs: _Observation) -> list[str]:
        """Create a runner for each pending sized job of this unit that has no live runner of its own."""
        claimed = {
            r.job_id for r in obs.records.values() if r.job_id is not None and r.state in _WAITING
        }
        started: list[str] = []
        for job in sorted(obs.pending.values(), key=lambda j: j.queued_at):
            if job.unit != self.unit or not job.tokens or job.job_id in claimed:
                continue
            started += self._ensure_dedicated(job, wait=False)
        return started

    def _adopt_pending(self) -> None:
        """Take over pending jobs of units whose heartbeat lapsed (a dead unit owes them a runner)."""
        for job in self.pending_jobs().values():
            if job.unit == self.unit or self._unit_alive(job.unit):
                continue
            adopted = PendingJob(**{**asdict(job), "unit": self.unit, "runner": None})
            if self._pending_replace(job, adopted):
                logger.info(
                    "pending job %d adopted from unit %s (no heartbeat)", job.job_id, job.unit
                )

    def _prune_pending(self, obs: _Observation) -> None:
        """Drop pending jobs that started, finished or aged out, and release their runners' claims."""
        if not obs.pending:
            return
        ids = list(obs.pending)

        def fetch() -> list[Any]:
            pipe = self.store.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(f"{self._kp}:job:{job_id}", "status")
            return list(pipe.execute())

        statuses = self._redis("job statuses", fetch)
        for job_id, status in zip(ids, statuses, strict=True):
            job = obs.pending[job_id]
            if status in ("in_progress", "completed") or obs.now - job.queued_at > _PENDING_MAX_AGE:
                self._drop_pending(job_id, obs)

    def _drop_pending(self, job_id: int, obs: _Observation | None = None) -> PendingJob | None:
        job = self._pending_pop(job_id)
        if obs is not None:
            obs.pending.pop(job_id, None)
        if job is not None:
            self._release_claims(job_id)
        return job

    def _release_claims(self, job_id: int, keep: str | None = None) -> None:
        """Runners reserved for ``job_id`` but still waiting become ordinary runners again."""
        for rec in self.store.list_runners():
            if rec.job_id == job_id and rec.state in _WAITING and rec.name != keep:
                self.store.update(rec.name, job_id=None)
                logger.info("runner %s released from job %d", rec.name, job_id)

    # ------------------------------------------------------------------------------ acting
    def _submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        return self._pool.submit(self._guarded, func, *args, **kwargs)

    @staticmethod
    def _guarded(func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
        try:
            return func(*args, **kwargs)
        except (StoreUnavailable, GitHubError, BackendError) as exc:
            logger.warning("%s failed: %s", getattr(func, "__name__", func), exc)
        except Exception:
            logger.exception("%s failed unexpectedly", getattr(func, "__name__", func))
        return None

    @staticmethod
    def _wait(futures: Iterable[Future[Any]]) -> None:
        for future in futures:
            with contextlib.suppress(Exception):
                future.result()

    def _wait_created(self, names: Iterable[str], timeout: float = 600.0) -> None:
        """Wait until the creates of ``names`` (started by this process) finished, one way or another."""
        pending = set(names)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            with self._inflight_lock:
                pending &= self._creating
            if pending:
                time.sleep(0.02)

    def wait_idle(self, timeout: float = 600.0) -> bool:
        """Wait until no create or delete started by this process is running; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._inflight_lock:
                if not self._creating and not self._deleting:
                    return True
            time.sleep(0.02)
        return False

    def _create_runners(
        self,
        group: RunnerGroup,
        path: GitHubPath,
        count: int,
        *,
        sizing: Sizing | None = None,
        job: PendingJob | None = None,
        reason: str = "",
        wait: bool = True,
    ) -> list[str]:
        """Reserve ``count`` records within the caps, then create those runners (concurrently)."""
        if count <= 0:
            return []
        if group.max_runners <= 0:  # a group without room (the store reads 0 as "no cap")
            return []
        if self.store.group_count(group.name) >= group.max_runners:
            logger.debug(
                "group %s is at its cap of %d runners (%s)", group.name, group.max_runners, reason
            )
            return []
        key = (group.name, str(path))
        allowed, probe = self._create_backoff.allowance(key, count)
        if allowed <= 0:
            self.metrics.create_backoff_skips.labels(group=group.name).inc()
            logger.debug(
                "creates for group %s at %s are backing off after failures (%s)",
                group.name, path, reason,
            )  # fmt: skip
            return []
        if probe:
            logger.info(
                "group %s at %s: one probe create after failed creates (%s)",
                group.name,
                path,
                reason,
            )
        count = allowed
        names = [self._new_name(group.name) for _ in range(count)]
        # the creator's session goes into the reservation itself: a crash right after it leaves a
        # record the next reconcile can judge (dead creator: settled), never a sessionless one
        fields: dict[str, object] = {"session": self._session}
        if job is not None:
            fields["job_id"] = job.job_id
            if job.tokens:
                fields["runson"] = " ".join(f"{k}={v}" for k, v in sorted(job.tokens.items()))
        with self._inflight_lock:
            self._creating.update(names)
        try:
            reserved = self.store.reserve_runners(
                group.name,
                str(path),
                names,
                self.unit,
                group_cap=group.max_runners,
                total_cap=self.config.max_total_runners,
                owner_cap=self.config.per_owner_max_runners,
                backend=group.backend_order[0],
                fields=fields,
            )
        except Exception:
            with self._inflight_lock:
                self._creating.difference_update(names)
            if probe:
                self._create_backoff.release(key)
            raise
        with self._inflight_lock:
            self._creating.difference_update(set(names) - set(reserved))
        if probe and not reserved:
            self._create_backoff.release(key)
        if 0 < len(reserved) < count:
            logger.info(
                "group %s at a cap: %d of %d runners reserved (%s)",
                group.name,
                len(reserved),
                count,
                reason,
            )
        futures = []
        for name in reserved:
            futures.append(self._submit(self._create_one, name, group, path, sizing, job))
        if wait:
            self._wait(futures)
        return reserved

    def _create_one(
        self,
        name: str,
        group: RunnerGroup,
        path: GitHubPath,
        sizing: Sizing | None,
        job: PendingJob | None,
    ) -> bool:
        """Register, render and start one reserved runner; undo everything on failure."""
        jit = None
        instance_backend: str | None = None
        try:
            extra_labels: list[str] = []
            runson: dict[str, str] = {}
            if job is not None:
                extra_labels = list(job.labels)
                runson = dict(job.tokens)
            labels = runner_labels(group, extra_labels)
            group_id = self._runner_group_id(group, path)
            jit = self.github.generate_jit_config(path, name, labels, group_id)
            self.store.update(name, github_id=jit.runner_id)
            size = sizing or Sizing(cpu=group.cpu, memory=group.memory, disk=group.disk)
            tags = {
                TAG_PREFIX: self.prefix,
                TAG_UNIT: self.unit,
                TAG_GROUP: group.name,
                TAG_OWNER: str(path),
            }
            last: BackendError | None = None
            for bname in group.backend_order:
                backend = self.backend(bname)
                context = build_context(
                    self.config, runner_name=name, group=group, path=path, jit_config=jit.encoded,
                    labels=labels, runson=runson, repo=job.repo if job else None,
                    info=f"unit {self.unit}, group {group.name}", sizing=size, backend=bname,
                )  # fmt: skip
                spec = InstanceSpec(
                    name=name, group=group.name, image=group.image, cpu=size.cpu, memory=size.memory,
                    disk=size.disk, user_data=render_user_data(context), jit_config=jit.encoded, tags=tags,
                )  # fmt: skip
                try:
                    with self.metrics.backend_call(bname, "create"):
                        backend.create(spec)
                except CapacityError as exc:
                    logger.warning(
                        "backend %s has no capacity for %s: %s; trying the next", bname, name, exc
                    )
                    self.store.incr(f"backend_capacity_{bname}")
                    last = exc
                    continue
                instance_backend = bname
                break
            if instance_backend is None:
                raise last or BackendError(f"no backend could create {name}")
            self.store.update(name, backend=instance_backend)
            if not self.store.transition(name, [RunnerState.CREATING], RunnerState.IDLE):
                rec = self.store.get_runner(name)
                if rec is None or rec.state is RunnerState.DELETING:
                    raise _RemovedMeanwhileError(
                        f"runner {name} was removed while it was being created"
                    )
            logger.info(
                "runner %s created in group %s at %s on %s%s", name, group.name, path, instance_backend,
                f" for job {job.job_id}" if job else "",
            )  # fmt: skip
            self._creates_work(group, path)
            return True
        except Exception as exc:
            logger.warning("creating runner %s failed: %s", name, exc)
            self.store.incr("runner_create_failures")
            self.metrics.create_failures.labels(group=group.name).inc()
            if not isinstance(exc, _RemovedMeanwhileError):
                self._creates_fail(group, path, exc)
            self._undo_create(name, path, jit.runner_id if jit else None, instance_backend)
            if not isinstance(exc, GitHubError | BackendError | StoreUnavailable):
                raise
            return False
        finally:
            with self._inflight_lock:
                self._creating.discard(name)

    # ------------------------------------------------------------------------ create backoff
    @property
    def _backoff_key(self) -> str:
        return f"{self._kp}:create_backoff"

    def _backoff_field(self, group: RunnerGroup, path: GitHubPath) -> str:
        """This unit's field of ``{prefix}:create_backoff`` (read by :func:`read_create_backoffs`)."""
        return f"{self.unit}|{group.name}|{path}"

    def _creates_fail(self, group: RunnerGroup, path: GitHubPath, exc: BaseException) -> None:
        """A create failed: back off that group's creates at ``path`` (see backoff.py)."""
        error = f"{type(exc).__name__}: {exc}"
        key = (group.name, str(path))
        delay = self._create_backoff.failed(key, error)
        if delay is None:
            return  # a concurrent create's failure already opened this round
        state = self._create_backoff.state(key)
        if state is None:
            return  # a concurrent create succeeded meanwhile: the breaker is closed again
        self.metrics.create_backoff.labels(group=group.name).set(delay)
        logger.warning(
            "creates for group %s at %s back off %.1fs after %d failed round%s (last: %s)",
            group.name, path, delay, state.failures, "" if state.failures == 1 else "s", error,
        )  # fmt: skip
        entry = json.dumps(
            {"failures": state.failures, "until": time.time() + delay, "error": error[:300],
             "holder": self._holder},
            sort_keys=True,
        )  # fmt: skip
        with contextlib.suppress(StoreUnavailable):
            self._redis(
                "create backoff",
                lambda: self.store.client.hset(
                    self._backoff_key, self._backoff_field(group, path), entry
                ),
            )

    def _creates_work(self, group: RunnerGroup, path: GitHubPath) -> None:
        if not self._create_backoff.succeeded((group.name, str(path))):
            return
        self.metrics.create_backoff.labels(group=group.name).set(0)
        logger.info("creates for group %s at %s work again: backoff ended", group.name, path)
        with contextlib.suppress(StoreUnavailable):
            self._redis(
                "create backoff",
                lambda: self.store.client.hdel(self._backoff_key, self._backoff_field(group, path)),
            )

    def create_backoffs(self) -> list[dict[str, Any]]:
        """Creation backoffs of the fleet not yet ended by a successful create (any unit).

        See :func:`read_create_backoffs`.
        """
        return self._redis(
            "create backoff",
            lambda: read_create_backoffs(self.store, max_age=self.config.create_backoff_max + 60),
        )

    def _removed(self, group: str, reason: str) -> None:
        """Count one removal (of a runner or its leftovers) by why it went."""
        self.metrics.runners_removed.labels(group=group or "unknown", reason=reason).inc()
        with contextlib.suppress(StoreUnavailable):
            self.store.incr(f"runners_removed_{reason}")

    def _undo_create(
        self, name: str, path: GitHubPath, github_id: int | None, backend: str | None
    ) -> None:
        with contextlib.suppress(Exception):
            if backend is not None:
                self.backend(backend).delete(name)
        try:
            if github_id is not None:
                self.github.delete_runner(path, github_id)
            self.store.delete_runner(name)
        except Exception as exc:  # the stale-creation sweep settles it on the next reconcile
            logger.warning("cleanup after the failed create of %s incomplete: %s", name, exc)

    def _runner_group_id(self, group: RunnerGroup, path: GitHubPath) -> int:
        if path.kind == "org":
            return self.github.runner_group_id(path.owner, group.runner_group)
        return 1

    def _remove_stale(self, rec: RunnerRecord, obs: _Observation) -> None:
        """Settle a record whose creator (or whole unit) died: remove its instance, GitHub runner, record."""
        with self._delete_lease(rec.name, ttl=120) as mine:
            if not mine:
                return
            located = obs.instances.get(rec.name)
            if located is not None:
                self.backend(located[0]).delete(rec.name)
            gr = obs.github_runner(rec.name)
            github_id = gr.id if gr else rec.github_id
            if github_id is not None:
                self.github.delete_runner(GitHubPath.parse(rec.owner), github_id)
            self.store.delete_runner(rec.name)
            self._removed(rec.group, "stale-creation" if rec.unit == self.unit else "gone-unit")
            if rec.unit == self.unit:
                logger.info("runner %s: abandoned creation cleaned up", rec.name)
            else:
                logger.info(
                    "runner %s of gone unit %s: registration and record removed", rec.name, rec.unit
                )

    def _delete_runner(
        self, name: str, reason: str, *, allow_busy: bool = False, github_gone: bool = False
    ) -> bool:
        """Delete one runner: instance, then GitHub runner, then record. False when it is kept."""
        with self._inflight_lock:
            if name in self._deleting:
                return False
            self._deleting.add(name)
        try:
            with self._delete_lease(name, ttl=300) as mine:
                if not mine:
                    return False
                return self._delete_locked(name, reason, allow_busy, github_gone)
        finally:
            with self._inflight_lock:
                self._deleting.discard(name)

    def _delete_locked(
        self, name: str, reason: str, allow_busy: bool, github_gone: bool = False
    ) -> bool:
        rec = self.store.get_runner(name)
        if rec is None:
            return False
        path = GitHubPath.parse(rec.owner)
        # A resumed delete (its process was killed) of a runner that was not to be killed checks,
        # like any delete, that the runner did not take a job meanwhile: one that did goes back to
        # busy and is removed once its job is done. Deletes of husks and of busy runners go on.
        husk = reason == "done" or (reason == "resume" and rec.extra.get("delete_busy") == "1")
        if not allow_busy and not husk:
            if rec.state is RunnerState.BUSY or self.jobqueue.runner_job_unfinished(name):
                logger.info("runner %s not deleted (%s): its job is unfinished", name, reason)
                self.store.transition(name, [RunnerState.DELETING], RunnerState.BUSY)
                return False
            if rec.github_id is not None:
                current = self.github.get_runner(path, rec.github_id)
                if current is not None and current.busy:
                    logger.info("runner %s not deleted (%s): GitHub reports it busy", name, reason)
                    self.store.transition(name, [rec.state], RunnerState.BUSY)
                    return False
        from_states = [s for s in RunnerState if allow_busy or husk or s is not RunnerState.BUSY]
        marks: dict[str, object] = {}
        if reason != "resume":  # a resumed delete keeps what the interrupted one recorded
            marks = {"delete_reason": reason, "delete_busy": allow_busy or reason == "done"}
        if not self.store.transition(name, from_states, RunnerState.DELETING, **marks):
            return False
        backends = [rec.backend] if rec.backend else self._backend_names()
        for bname in backends:
            with self.metrics.backend_call(bname, "delete"):
                self.backend(bname).delete(name)
        if rec.github_id is not None:
            if github_gone or (reason == "done" and self._github_removed_it(rec)):
                logger.debug("runner %s: GitHub removed the runner itself", name)
            else:
                self.github.delete_runner(path, rec.github_id)
        else:
            for gr in self.github.list_runners(path):
                if gr.name == name:
                    self.github.delete_runner(path, gr.id)
        self.store.delete_runner(name)
        self._offline_since.pop(name, None)
        first = rec.extra.get("delete_reason", "")
        self._removed(
            rec.group, first if reason == "resume" and first in _REMOVAL_REASONS else reason
        )
        logger.info("runner %s deleted (%s)", name, reason)
        return True

    def _github_removed_it(self, rec: RunnerRecord) -> bool:
        """Whether GitHub removed this runner itself: ephemeral, and its job completed successfully.

        GitHub deletes an ephemeral runner once its job is done; a DELETE would be answered 404 and
        still cost a rate-limit unit per job. A runner whose job failed may have lost its machine
        mid-job (GitHub then keeps it, offline), so only a success is trusted; a registration left
        behind anyway is an orphan the next reconciles remove.
        """
        group = self._group(rec.group)
        if group is None or not group.ephemeral or rec.job_id is None:
            return False
        job = self.jobqueue.job_status(rec.job_id) or {}
        return job.get("status") == "completed" and job.get("conclusion") == "success"

    def _cleanup_instance(self, name: str) -> bool:
        """Delete an instance no record or GitHub runner knows (with the runner's lease)."""
        with self._delete_lease(name, ttl=300) as mine:
            if not mine or self.store.get_runner(name) is not None:
                return False
            for bname in self._backend_names():
                with self.metrics.backend_call(bname, "delete"):
                    self.backend(bname).delete(name)
            self._removed(self._group_of(name), "orphan-instance")
            logger.info("orphan instance %s deleted", name)
            return True

    def _remove_github_runner(self, owner: str, runner_id: int) -> bool:
        name = self._orphan_names.get((owner, runner_id))
        if name is not None and self.store.get_runner(name) is not None:
            return False  # a record appeared meanwhile: it is being created, not an orphan
        removed = self.github.delete_runner(GitHubPath.parse(owner), runner_id)
        self._removed(self._group_of(name or ""), "orphan-github")
        logger.info("orphan GitHub runner %s at %s removed", runner_id, owner)
        return removed

    # ------------------------------------------------------------------------------- flush
    def flush(self, flush_busy: bool = True) -> int:
        """Delete this unit's runners (busy ones too when ``flush_busy``); returns how many were removed.

        Orphan instances and orphan GitHub runners go as well. Nothing is created.
        """
        with self._unit_lock():
            self.heartbeat()
            obs = self._observe()
            settled = self._settle(obs, flushing=True)
            inp = planner.PlanInput(
                demands=[],
                runners=settled.runners,
                orphan_instances=settled.orphan_instances,
                orphan_github_runners=settled.orphan_github,
                max_total_runners=self.config.max_total_runners,
                per_owner_max_runners=self.config.per_owner_max_runners,
                owner_counts_elsewhere=settled.owner_elsewhere,
                total_elsewhere=settled.total_elsewhere,
                now=obs.now,
                register_timeout=self.config.register_timeout,
                offline_timeout=self.config.offline_timeout,
                flush="busy" if flush_busy else "idle",
            )
            plan = planner.plan(inp)
            runner_futures = [
                self._submit(self._delete_runner, d.name, "flush", allow_busy=flush_busy)
                for d in plan.deletes
            ]
            runner_futures += [
                self._submit(self._delete_runner, r.name, "resume", allow_busy=flush_busy)
                for r in settled.resume
            ]
            runner_futures += [self._submit(self._remove_stale, r, obs) for r in settled.stale]
            cleanup_futures = [self._submit(self._cleanup_instance, n) for n in plan.cleanups]
            removal_futures = [
                self._submit(self._remove_github_runner, o, i) for o, i in plan.github_removals
            ]
            removed = sum(1 for f in runner_futures + cleanup_futures if f.result())
            self._wait(removal_futures)
        with contextlib.suppress(Exception):
            self.publish_github_stats()
        logger.info(
            "flush (%s) removed %d runners of unit %s",
            "busy" if flush_busy else "idle",
            removed,
            self.unit,
        )
        return removed

    # -------------------------------------------------------------------------- job events
    def handle_job_event(self, event: JobEvent) -> None:
        """Act on one ``workflow_job`` event (see the module docstring)."""
        if event.action == "queued":
            self.job_queued(event.job_id, event.repo, event.labels, event.created_at)
        elif event.action == "in_progress":
            self._job_started(event)
        elif event.action == "completed":
            self._job_completed(event)
        else:
            logger.debug("workflow_job %d action %s ignored", event.job_id, event.action)

    def job_queued(
        self,
        job_id: int,
        repo: str,
        labels: Iterable[str],
        queued_at: float,
        *,
        source: str = "webhook",
    ) -> str | None:
        """A job waits for a runner: record it and make sure one exists; returns its group (or None)."""
        known = self.jobqueue.job_status(job_id)
        if known and known.get("status") in ("in_progress", "completed"):
            return None
        labels = tuple(labels)
        request = labels_mod.parse_runs_on(labels)
        group = labels_mod.match_group(request, self.config.runner_groups)
        if group is None:
            self.metrics.jobs_unmatched.inc()
            self.store.incr("jobs_unmatched")
            logger.info(
                "job %d of %s (runs-on %s) matches no runner group; ignored",
                job_id,
                repo,
                list(labels),
            )
            return None
        try:
            sizing = labels_mod.size_for(request, group)
        except SizingRefused as exc:
            self.metrics.jobs_refused.labels(group=group.name, reason="sizing").inc()
            self.store.incr("jobs_refused")
            logger.warning("job %d of %s refused: %s", job_id, repo, exc)
            return None
        path = self._path_for(group, repo)
        if path is None:
            self.metrics.jobs_unmatched.inc()
            self.store.incr("jobs_unmatched")
            logger.info(
                "job %d: no target of group %s serves repository %s; ignored",
                job_id,
                group.name,
                repo,
            )
            return None
        job = PendingJob(
            job_id=job_id, repo=repo, labels=labels, queued_at=queued_at, unit=self.unit,
            group=group.name, owner=str(path), tokens=dict(request.tokens),
        )  # fmt: skip
        if not self._pending_add(job):
            existing = self._pending_get(job_id)
            if existing is None or existing.unit != self.unit:
                return group.name  # another unit serves it (or it just started)
            job = existing
        else:
            self.metrics.job_event("queued", group.name)
            logger.info(
                "job %d of %s queued for group %s at %s (%s)",
                job_id,
                repo,
                group.name,
                path,
                source,
            )
        if job.tokens:
            self._ensure_dedicated(job, sizing=sizing, wait=False)
        else:
            self._ensure_generic(group, path)
        return group.name

    def _ensure_generic(self, group: RunnerGroup, path: GitHubPath) -> int:
        """Create runners now when this unit's waiting runners are fewer than its pending jobs."""
        owner = str(path)
        with self._group_locks[(group.name, owner)]:
            waiting = [
                r
                for r in self.store.list_runners(group.name)
                if r.unit == self.unit
                and r.owner == owner
                and r.state in _WAITING
                and r.job_id is None
            ]
            pending = [
                j
                for j in self.pending_jobs().values()
                if j.unit == self.unit
                and j.group == group.name
                and j.owner == owner
                and not j.tokens
            ]
            need = len(pending) - len(waiting)
            if need <= 0:
                return 0
            return len(self._create_runners(group, path, need, reason="job", wait=False))

    def _ensure_dedicated(
        self, job: PendingJob, *, sizing: Sizing | None = None, wait: bool = False
    ) -> list[str]:
        """Create the runner a sized job needs, unless it has one already; returns the name started."""
        group = self._group(job.group)
        if group is None:
            return []
        with self._group_locks[(group.name, f"job:{job.job_id}")]:
            for rec in self.store.list_runners(group.name):
                if rec.job_id == job.job_id and rec.state in _WAITING:
                    return []
            if sizing is None:
                try:
                    sizing = labels_mod.size_for(labels_mod.parse_runs_on(job.labels), group)
                except SizingRefused:
                    self._pending_pop(job.job_id)
                    return []
            names = self._create_runners(
                group,
                GitHubPath.parse(job.owner),
                1,
                sizing=sizing,
                job=job,
                reason="sized job",
                wait=wait,
            )
            if names:
                self._pending_replace(job, PendingJob(**{**asdict(job), "runner": names[0]}))
            return names

    def _job_started(self, event: JobEvent) -> None:
        job = self._pending_pop(event.job_id)
        name = event.runner_name
        rec = self.store.get_runner(name) if name else None
        group = (
            (job.group if job else None)
            or (rec.group if rec else None)
            or self._match(event.labels)
        )
        lost_claim: int | None = None
        if rec is not None and name is not None:
            if rec.job_id is not None and rec.job_id != event.job_id and rec.state in _WAITING:
                lost_claim = rec.job_id
            self.store.transition(
                name,
                [*_WAITING, RunnerState.OFFLINE],
                RunnerState.BUSY,
                job_id=event.job_id,
                registered=True,
            )
        if job is not None:
            self._release_claims(event.job_id, keep=name)
        if lost_claim is not None:
            other = self._pending_get(lost_claim)
            if other is not None and other.unit == self.unit and other.tokens:
                self._ensure_dedicated(other, wait=False)
        if group is not None:
            status = self.jobqueue.job_status(event.job_id) or {}
            started = status.get("started_at") or event.received_at
            queued = status.get("queued_at") or event.created_at
            latency = max(0.0, float(started) - float(queued))
            self.store.record_pickup(group, latency)
            self.metrics.observe_pickup(group, latency)
            self.metrics.job_event("in_progress", group)
            logger.info(
                "job %d started on %s (group %s) after %.1fs", event.job_id, name, group, latency
            )

    def _job_completed(self, event: JobEvent) -> None:
        job = self._pending_pop(event.job_id)
        if job is not None:
            self._release_claims(event.job_id)
        name = event.runner_name
        rec = self.store.get_runner(name) if name else None
        group_name = (
            (rec.group if rec else None)
            or (job.group if job else None)
            or self._match(event.labels)
        )
        self.metrics.job_event("completed", group_name, event.conclusion)
        if rec is None or name is None:
            return
        group = self._group(rec.group)
        if group is not None and not group.ephemeral:
            self.store.transition(name, [RunnerState.BUSY], RunnerState.IDLE, job_id=None)
            return
        self.store.transition(
            name,
            [*_WAITING, RunnerState.BUSY, RunnerState.OFFLINE],
            RunnerState.DONE,
            job_id=event.job_id,
        )
        if rec.unit == self.unit:
            self._submit(self._await_husk, name)

    def _match(self, labels: Iterable[str]) -> str | None:
        group = labels_mod.match_group(labels_mod.parse_runs_on(labels), self.config.runner_groups)
        return group.name if group else None

    def _remove_if_stopped(self, name: str, force: bool = False) -> bool:
        """Remove a done runner of this unit once its instance stopped (or ``force``)."""
        rec = self.store.get_runner(name)
        if rec is None or rec.state is not RunnerState.DONE or rec.unit != self.unit:
            return False
        if not force:
            try:
                inst = self.backend(rec.backend).get(name) if rec.backend else None
            except InstanceNotFound:
                inst = None
            if inst is not None and inst.state not in (InstanceState.STOPPED, InstanceState.ERROR):
                return False
        return self._delete_runner(name, "done")

    def _await_husk(self, name: str, timeout: float = 5.0) -> bool:
        """After its job: remove the runner as soon as its instance powered off, then serve waiting jobs."""
        deadline = time.monotonic() + timeout
        while True:
            if self._remove_if_stopped(name):
                self.serve_pending()
                return True
            if time.monotonic() > deadline:
                return False  # the sweeper or the next reconcile takes it
            time.sleep(0.1)

    def serve_pending(self) -> int:
        """Make sure of runners for this unit's pending jobs now (e.g. once a husk freed a slot).

        Needs no GitHub listing: generic jobs are counted against waiting runners, sized jobs get their
        own runner. Returns how many runners were started.
        """
        mine = [j for j in self.pending_jobs().values() if j.unit == self.unit]
        if not mine:
            return 0
        started = 0
        for group_name, owner in sorted({(j.group, j.owner) for j in mine if not j.tokens}):
            group = self._group(group_name)
            if group is not None:
                started += self._ensure_generic(group, GitHubPath.parse(owner))
        claimed = {
            r.job_id
            for r in self.store.list_runners()
            if r.job_id is not None and r.state in _WAITING
        }
        for job in sorted(mine, key=lambda j: j.queued_at):
            if job.tokens and job.job_id not in claimed and self._ensure_dedicated(job):
                started += 1
        return started

    def sweep_done(self) -> int:
        """Remove this unit's done runners whose instance stopped (or that are done for long)."""
        removed = 0
        now = self.clock()
        for rec in self.store.list_runners():
            if rec.unit != self.unit or rec.state is not RunnerState.DONE:
                continue
            try:
                if self._remove_if_stopped(rec.name, force=now - rec.updated_at > _DONE_GRACE):
                    removed += 1
            except (BackendError, GitHubError) as exc:
                logger.warning("removing done runner %s failed: %s", rec.name, exc)
        if removed:
            self.serve_pending()
        return removed

    # -------------------------------------------------------------------------------- poll
    def _poll_repos(self) -> list[str]:
        repos: list[str] = []
        for path in self.config.github.paths:
            if path.kind == "repo":
                repos.append(str(path))
            elif path.kind == "org":
                repos.extend(self.github.list_org_repos(path.owner))
        return list(dict.fromkeys(repos))

    def poll_queued_jobs(self) -> int:
        """The safety net for lost webhooks: serve queued jobs no event told us about.

        One unit polls per interval (a lease); requests are conditional, so an unchanged world costs
        no rate-limit unit. Returns the number of jobs found that were not known.
        """
        interval = self.config.github.poll_interval
        with self.store.lease("poll", ttl=max(1.0, interval * 0.8)) as mine:
            if not mine:
                return 0
            repos = self._poll_repos()
            jobs = self.github.queued_jobs(repos)
        queued_ids = {j.id for j in jobs}
        pending = self.pending_jobs()
        found = 0
        for job in jobs:
            if job.id in pending:
                continue
            if (
                self.job_queued(job.id, job.repo, job.labels, job.created_at, source="poll")
                is not None
            ):
                found += 1
        now = self.clock()
        polled = set(repos)
        stale_after = max(_PENDING_STALE, 2 * interval)
        for job_id, entry in pending.items():
            if (
                job_id not in queued_ids
                and entry.repo in polled
                and now - entry.queued_at > stale_after
            ):
                logger.info("pending job %d is no longer queued on GitHub; dropped", job_id)
                self._drop_pending(job_id)
        with contextlib.suppress(Exception):
            self.publish_github_stats()
        if found:
            logger.info("poll found %d queued jobs no webhook announced", found)
        return found

    # -------------------------------------------------------------------------- reporting
    def get_github_info(self) -> Iterator[RunnerInfo]:
        """Every runner with this fleet's prefix that GitHub lists, joined with its record."""
        records = {r.name: r for r in self.store.list_runners()}
        for path in self._paths():
            for gr in self.github.list_runners(path):
                if not gr.name.startswith(f"{self.prefix}-"):
                    continue
                rec = records.get(gr.name)
                yield RunnerInfo(
                    name=gr.name,
                    owner=str(path),
                    github_id=gr.id,
                    status=gr.status,
                    busy=gr.busy,
                    labels=gr.labels,
                    group=rec.group if rec else None,
                    state=rec.state.value if rec else None,
                    unit=rec.unit if rec else None,
                    backend=rec.backend if rec else None,
                )

    def statistics(self) -> dict[str, GroupStatistics]:
        """Per group: runners by state (fleet-wide), queued jobs, pickup latency, GitHub calls spent."""
        counts: dict[str, dict[str, int]] = {}
        by_backend: dict[str, dict[str, int]] = {}
        for rec in self.store.list_runners():  # one read for both (as Store.counts() does)
            states = counts.setdefault(rec.group, {})
            states[rec.state.value] = states.get(rec.state.value, 0) + 1
            backends = by_backend.setdefault(rec.group, {})
            backends[rec.backend] = backends.get(rec.backend, 0) + 1
        counters = self.store.counters()
        refusals = prefixed_counters(counters, "backend_capacity_")
        budget = self._redis(
            "github budget", lambda: self.store.client.hgetall(f"{self._kp}:github")
        )
        remaining = int(float(budget["remaining"])) if budget.get("remaining") else None
        queued: dict[str, int] = defaultdict(int)
        for job in self.pending_jobs().values():
            queued[job.group] += 1
        out: dict[str, GroupStatistics] = {}
        names = [g.name for g in self.config.runner_groups] + sorted(
            set(counts) - {g.name for g in self.config.runner_groups}
        )
        for name in names:
            group = self._group(name)
            by_state = counts.get(name, {})
            pickup = self.store.pickup_percentiles(name)
            main = ("idle", "busy", "creating", "offline")
            out[name] = GroupStatistics(
                group=name,
                idle=by_state.get("idle", 0),
                busy=by_state.get("busy", 0),
                creating=by_state.get("creating", 0),
                offline=by_state.get("offline", 0),
                other=sum(v for k, v in by_state.items() if k not in main),
                total=sum(by_state.values()),
                max_runners=group.max_runners if group else 0,
                min_idle=group.min_idle if group else 0,
                queued_jobs=queued.get(name, 0),
                pickup_count=int(pickup.get("count") or 0),
                pickup_p50=_opt_float(pickup.get("p50")),
                pickup_p95=_opt_float(pickup.get("p95")),
                pickup_max=_opt_float(pickup.get("max")),
                github_requests=counters.get("github_requests", 0),
                github_rate_limit_units=counters.get("github_rate_limit_units", 0),
                github_not_modified=counters.get("github_not_modified", 0),
                github_remaining=remaining,
                backends=dict(sorted(by_backend.get(name, {}).items())),
                backend_capacity_refusals=refusals,
            )
        self.metrics.set_runner_counts(counts)
        return out

    def removals(self) -> dict[str, int]:
        """Runners (and leftovers) the fleet removed, by reason (``ghrm_runners_removed_total``)."""
        return prefixed_counters(self.store.counters(), "runners_removed_")

    def info(self) -> str:
        """The statistics as a human-readable table (text)."""
        return render_statistics(
            self.statistics(), self.store.counters(), backoffs=self.create_backoffs()
        )

    # ----------------------------------------------------------------------- runner binary
    @property
    def binary_cache(self) -> RunnerBinaryCache:
        """The runner application cache under ``state_dir/runner-binary``."""
        if self._binary_cache is None:
            self._binary_cache = RunnerBinaryCache(
                self.config.state_dir / "runner-binary", self.github, self.config.github.paths[0]
            )
        return self._binary_cache

    def _runner_tarball(self) -> Path | None:
        current = self.binary_cache.current()
        if current is None:
            current = self.binary_cache.update()
        return current.path

    def check_runner_bin(self) -> bool:
        """True when GitHub offers a newer runner application than the cached one (or none is cached)."""
        return self.binary_cache.check()

    def get_latest_runner_bin_url(
        self, os_name: str = "linux", arch: str | None = None
    ) -> RunnerApplication:
        """The newest runner application GitHub offers for ``os_name``/``arch``."""
        return self.binary_cache.latest(os_name, arch)

    def update_runner_bin(self, binary: RunnerApplication | None = None) -> RunnerBinary:
        """Download (sha256-verified) the given or the latest runner application into the cache."""
        return self.binary_cache.update(binary)

    # ------------------------------------------------------------------------------ images
    def build_runner_image(self) -> ImageBuildResult:
        """Build the runner image with the cached (verified) runner application baked in.

        Raises:
            ImageBuildUnavailable: the image module cannot be used here.
            ImageBuildError: the build failed (the previous image stays in place).
        """
        try:
            from github_runner_manager import image
        except ImportError as exc:  # pragma: no cover - image.py ships with the package
            raise ImageBuildUnavailable(f"image building is unavailable: {exc}") from None
        binary = self.binary_cache.current() or self.update_runner_bin()
        options = image.ImageBuildOptions(
            runner_sha256=binary.sha256,
            runner_tarball=binary.path,
            runner_version=binary.version,
            cache_dir=self.config.state_dir / "image-cache",
            output_dir=self.config.state_dir / "images",
            templates_dir=self.config.templates_dir,
        )
        return image.build_runner_image(options)

    def schedule_build_runner_image(
        self, interval_hours: int = 6, *, path: Path | None = None, log: Path | None = None
    ) -> Path:
        """Install the cron entry that rebuilds the image every ``interval_hours`` (idempotent)."""
        try:
            from github_runner_manager import image
        except ImportError as exc:  # pragma: no cover
            raise ImageBuildUnavailable(f"image building is unavailable: {exc}") from None
        if self.config_path is None:
            raise ImageBuildUnavailable(
                "scheduling image builds needs the manager's config file path"
            )
        exe = shutil.which("github-runner-manager") or str(
            Path(sys.executable).with_name("github-runner-manager")
        )
        command = [exe, "--config", str(self.config_path), "build-image"]
        return image.schedule_build_runner_image(
            interval_hours,
            command,
            path or image.CRON_PATH,
            log or image.CRON_LOG,
            templates_dir=self.config.templates_dir,
        )

    # ------------------------------------------------------------------------------- serve
    def serve(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set: webhook server, job consumers, reconcile loop, poll, sweeper."""
        from github_runner_manager.service import ManagerService

        ManagerService(self).run(stop)


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def render_statistics(
    stats: Mapping[str, GroupStatistics],
    counters: Mapping[str, int] | None = None,
    *,
    backoffs: Iterable[Mapping[str, Any]] = (),
) -> str:
    """A rich table of per-group statistics, rendered to plain text."""
    from rich.console import Console
    from rich.table import Table

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}s"

    table = Table(title="runner groups", title_justify="left")
    for column in ("group", "idle", "busy", "creating", "offline", "other", "total/max", "min idle",
                   "queued jobs", "pickup p50", "pickup p95", "pickups", "backends"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("group", "backends") else "right")
    for s in stats.values():
        table.add_row(
            s.group, str(s.idle), str(s.busy), str(s.creating), str(s.offline), str(s.other),
            f"{s.total}/{s.max_runners}", str(s.min_idle), str(s.queued_jobs), secs(s.pickup_p50),
            secs(s.pickup_p95), str(s.pickup_count),
            ", ".join(f"{name} {n}" for name, n in s.backends.items()) or "-",
        )  # fmt: skip
    buffer = io.StringIO()
    console = Console(file=buffer, width=140, color_system=None, force_terminal=False)
    console.print(table)
    first = next(iter(stats.values()), None)
    if first is not None:
        remaining = "unknown" if first.github_remaining is None else str(first.github_remaining)
        console.print(
            f"GitHub calls spent: {first.github_requests} requests, {first.github_rate_limit_units} "
            f"rate-limit units, {first.github_not_modified} answered 304 (free); remaining budget {remaining}"
        )
        if first.backend_capacity_refusals:
            refusals = ", ".join(f"{k} {v}" for k, v in first.backend_capacity_refusals.items())
            console.print(f"creates refused for capacity (the next backend was tried): {refusals}")
    if counters:
        unmatched, refused = counters.get("jobs_unmatched", 0), counters.get("jobs_refused", 0)
        failures = counters.get("runner_create_failures", 0)
        console.print(
            f"jobs unmatched: {unmatched}, refused by sizing policy: {refused}, failed creates: {failures}"
        )
        removed = prefixed_counters(counters, "runners_removed_")
        if removed:
            console.print(
                "runners removed: " + ", ".join(f"{reason} {n}" for reason, n in removed.items())
            )
    for entry in backoffs:
        console.print(
            f"creates backing off: group {entry['group']} at {entry['owner']} (unit {entry['unit']}) "
            f"for {entry['seconds_left']:g}s more after {entry['failures']} failed rounds; "
            f"last error: {entry['error']}",
            markup=False,
            highlight=False,
        )
    return buffer.getvalue()
