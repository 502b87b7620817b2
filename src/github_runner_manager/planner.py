"""The reconcile decision: (desired, observed) → :class:`Plan`. Pure: no I/O, no clock, no randomness.

The manager observes GitHub, the backends and Redis, builds a :class:`PlanInput`, calls :func:`plan`
and carries the plan out. Everything that decides *what* happens to the fleet lives here, so a reader
can test a decision with three lines of data.

Promises (checked by property tests):

* **Busy runners are safe.** A runner that is ``BUSY``, that GitHub reports busy, or whose last job
  event is unfinished is never deleted unless ``flush == "busy"`` — not for surplus, not for age
  (``max_lifetime`` drains a busy runner only once its job ends), not when its group is gone.
* **Caps hold.** After the plan, no group has more than ``max_runners``, this unit plus
  ``total_elsewhere`` no more than ``max_total_runners``, and no owner (this unit plus
  ``owner_counts_elsewhere``) more than ``per_owner_max_runners`` — counted on the fleet the plan
  leaves (kept runners plus creates). Where the observed fleet already exceeds a cap, the plan
  creates nothing that counts against it. ``0`` means no cap. (The store's ``reserve_runners``
  enforces the same caps atomically against live records when the creates are carried out.)
* **One step converges.** Carrying out the plan (creates become idle runners, deletes disappear) and
  planning again with nothing else changed gives an empty plan.
* **Deletion preference.** Runners that are broken go first and always: never registered within
  ``register_timeout``, offline longer than ``offline_timeout``, done or gone; then those past their
  group's ``max_lifetime``; a surplus is then trimmed from young offline runners, then idle runners
  newest first (old warm runners are kept: their images are cached and they are proven healthy).
  Runners still being created are not trimmed for surplus (their creator may be mid-way); they are
  trimmed once idle.
* ``flush == "idle"`` deletes every non-busy runner and creates nothing; ``flush == "busy"`` deletes
  every runner and creates nothing.
* Orphan backend instances become ``cleanups`` and orphan GitHub runners ``github_removals``, as given
  (the manager passes only runners with no instance anywhere, and none GitHub reports busy unless
  flushing busy).
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from github_runner_manager.config import RunnerGroup

__all__ = [
    "DELETE_REASONS",
    "Create",
    "Delete",
    "GroupDemand",
    "ObservedRunner",
    "Plan",
    "PlanInput",
    "RunnerState",
    "is_busy",
    "plan",
]


class RunnerState(str, enum.Enum):
    """A runner's lifecycle as the manager records it (Redis ``state`` field)."""

    CREATING = "creating"
    IDLE = "idle"
    BUSY = "busy"
    OFFLINE = "offline"
    DONE = "done"
    DELETING = "deleting"
    FAILED = "failed"
    ORPHAN = "orphan"


#: Why a runner is deleted, in the order a plan lists them.
DELETE_REASONS = ("flush", "never-registered", "offline", "done", "lifetime", "idle-surplus")
_REASON_RANK = {reason: rank for rank, reason in enumerate(DELETE_REASONS)}


@dataclass(frozen=True)
class ObservedRunner:
    """One runner of this unit as observed from Redis, the backend and GitHub together.

    Attributes:
        name: runner (= instance) name.
        group: runner group name.
        owner: the GitHub path it registers with, as text (``acme``, ``acme/app``).
        state: the recorded state.
        created_at: epoch seconds the record was created.
        github_id: GitHub's runner id, when GitHub lists it.
        github_status: ``"online"``/``"offline"`` as GitHub reports; ``None`` when GitHub does not list it.
        github_busy: GitHub says it is running a job.
        instance_exists: the backend still has its instance.
        registered: it has ever been seen on GitHub or reported by its agent.
        job_unfinished: the last ``workflow_job`` event naming it is ``in_progress``.
        offline_since: when it was first seen offline (epoch seconds); ``None`` → ``created_at`` is used.
    """

    name: str
    group: str
    owner: str
    state: RunnerState
    created_at: float
    github_id: int | None = None
    github_status: Literal["online", "offline"] | None = None
    github_busy: bool = False
    instance_exists: bool = True
    registered: bool = False
    job_unfinished: bool = False
    offline_since: float | None = None


@dataclass(frozen=True)
class GroupDemand:
    """What one runner group should have.

    Attributes:
        group: the group (its ``min_idle``, ``max_runners``, ``max_lifetime``, ``paths``).
        pending_jobs: queued jobs matched to the group that no runner has picked yet.
        quantity: idle runners wanted, overriding ``min_idle`` and ``pending_jobs`` (``reconcile(quantity)``).
        owners: GitHub paths (text) the group registers with, in preference order; default: ``group.paths``.
        pending_by_owner: of the pending jobs, how many need a runner of each owner (a job of one repo
            cannot run on a runner registered with another). Ignored when ``quantity`` is set.
    """

    group: RunnerGroup
    pending_jobs: int = 0
    quantity: int | None = None
    owners: tuple[str, ...] = ()
    pending_by_owner: Mapping[str, int] = field(default_factory=dict)

    def owner_order(self) -> list[str]:
        """The owners creates go to, in preference order.

        Raises:
            ValueError: neither ``owners`` nor ``group.paths`` names one.
        """
        owners = list(self.owners) or [str(p) for p in self.group.paths or []]
        if not owners:
            raise ValueError(
                f"group {self.group.name!r}: GroupDemand.owners is empty and the group has no paths"
            )
        return list(dict.fromkeys(owners))


@dataclass(frozen=True)
class PlanInput:
    """Everything :func:`plan` decides from. Times are epoch seconds, durations seconds."""

    demands: list[GroupDemand]
    runners: list[ObservedRunner]
    orphan_instances: list[str]
    orphan_github_runners: list[tuple[str, int]]
    max_total_runners: int
    per_owner_max_runners: int
    owner_counts_elsewhere: dict[str, int]
    total_elsewhere: int
    now: float
    register_timeout: float
    offline_timeout: float
    flush: Literal["none", "idle", "busy"] = "none"


@dataclass(frozen=True)
class Create:
    """Create ``count`` runners of ``group`` registered with ``owner``."""

    group: str
    owner: str
    count: int
    reason: str


@dataclass(frozen=True)
class Delete:
    """Delete one runner (its instance, its GitHub registration and its record)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """What to do: creates, runner deletions, orphan instance cleanups, orphan GitHub runner removals."""

    creates: list[Create] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)
    cleanups: list[str] = field(default_factory=list)
    github_removals: list[tuple[str, int]] = field(default_factory=list)

    @property
    def delta(self) -> int:
        """Runners intended minus runners existing: created minus deleted (orphans do not count)."""
        return sum(c.count for c in self.creates) - len(self.deletes)

    @property
    def empty(self) -> bool:
        """Nothing to do."""
        return not (self.creates or self.deletes or self.cleanups or self.github_removals)


def is_busy(runner: ObservedRunner) -> bool:
    """Whether a runner may be running a job (and so must not be deleted short of flushing busy)."""
    return runner.state is RunnerState.BUSY or runner.github_busy or runner.job_unfinished


def _is_offline(runner: ObservedRunner) -> bool:
    return runner.state is RunnerState.OFFLINE or runner.github_status != "online"


def _broken_reason(runner: ObservedRunner, group: RunnerGroup | None, inp: PlanInput) -> str | None:
    """Why a non-busy runner must go whatever the demand, or ``None`` if it is healthy or still coming up."""
    age = inp.now - runner.created_at
    if runner.state in (RunnerState.DONE, RunnerState.DELETING, RunnerState.ORPHAN):
        return "done"
    if runner.state is RunnerState.FAILED:
        return "offline" if runner.registered else "never-registered"
    if not runner.registered:
        # A CREATING record may precede its instance: give it register_timeout either way.
        if runner.instance_exists or runner.state is RunnerState.CREATING:
            return "never-registered" if age > inp.register_timeout else None
        return "never-registered"
    if not runner.instance_exists:
        return "done"
    if _is_offline(runner):
        since = runner.offline_since if runner.offline_since is not None else runner.created_at
        if inp.now - since > inp.offline_timeout:
            return "offline"
        return None
    if group is not None and group.max_lifetime is not None and age > group.max_lifetime:
        return "lifetime"
    return None


@dataclass
class _Fleet:
    """Counts of the runners the plan keeps, updated as the plan is built."""

    total: int = 0
    by_group: Counter[str] = field(default_factory=Counter)
    by_owner: Counter[str] = field(default_factory=Counter)
    by_group_owner: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, group: str, owner: str, n: int = 1) -> None:
        self.total += n
        self.by_group[group] += n
        self.by_owner[owner] += n
        self.by_group_owner[(group, owner)] += n


def plan(inp: PlanInput) -> Plan:
    """Decide creates, deletes, cleanups and GitHub removals. See the module docstring for the promises.

    Per group: ``idle_target = quantity if quantity is not None else max(min_idle, pending_jobs)``,
    ``total_target = min(max_runners, busy + idle_target)``; owners with pending jobs keep (or get)
    at least that many non-busy runners.

    Raises:
        ValueError: a demand has no owner to create runners for (see :meth:`GroupDemand.owner_order`).
    """
    cleanups = list(dict.fromkeys(inp.orphan_instances))
    removals = list(dict.fromkeys(inp.orphan_github_runners))

    if inp.flush != "none":
        flushed = [
            Delete(r.name, "flush") for r in inp.runners if inp.flush == "busy" or not is_busy(r)
        ]
        return Plan(creates=[], deletes=flushed, cleanups=cleanups, github_removals=removals)

    demands: dict[str, GroupDemand] = {}
    for demand in inp.demands:
        demands.setdefault(demand.group.name, demand)

    deletes: list[Delete] = []
    fleet = _Fleet()
    busy: Counter[str] = Counter()
    # Non-busy runners kept so far, per group.
    kept: dict[str, list[ObservedRunner]] = defaultdict(list)

    for runner in inp.runners:
        runner_demand = demands.get(runner.group)
        group = runner_demand.group if runner_demand else None
        if is_busy(runner):
            busy[runner.group] += 1
            fleet.add(runner.group, runner.owner)
            continue
        reason = _broken_reason(runner, group, inp)
        if reason is None and runner_demand is None:
            reason = "idle-surplus"  # its group is no longer configured
        if reason is not None:
            deletes.append(Delete(runner.name, reason))
            continue
        kept[runner.group].append(runner)
        fleet.add(runner.group, runner.owner)

    # Phase 1: trim surpluses (all groups first, so creates below see every freed slot).
    wanted: dict[str, tuple[int, dict[str, int], list[str]]] = {}
    for name, demand in demands.items():
        group = demand.group
        owners = demand.owner_order()
        if demand.quantity is not None:
            idle_target = max(0, demand.quantity)
            need = dict.fromkeys(owners, 0)
        else:
            idle_target = max(group.min_idle, demand.pending_jobs)
            need = {o: max(0, demand.pending_by_owner.get(o, 0)) for o in owners}
        room = max(0, group.max_runners - busy[name])
        target = min(idle_target, room)
        runners = kept[name]
        have = Counter(r.owner for r in runners)
        unmet = {o: max(0, need[o] - have[o]) for o in owners}
        surplus = len(runners) + sum(unmet.values()) - target
        if surplus > 0:
            for runner in _trim_order(runners):
                if surplus <= 0:
                    break
                if have[runner.owner] <= need.get(runner.owner, 0):
                    continue  # its owner's pending jobs need it
                deletes.append(Delete(runner.name, "idle-surplus"))
                have[runner.owner] -= 1
                fleet.add(name, runner.owner, -1)
                surplus -= 1
        current = sum(have.values())
        pool = max(0, target - current - sum(unmet.values()))
        wanted[name] = (pool, unmet, owners)

    # Phase 2: creates, one at a time, within every cap.
    counts: Counter[tuple[str, str, str]] = Counter()
    for name, (pool, unmet, owners) in wanted.items():
        group = demands[name].group
        reason_pool = _pool_reason(demands[name])

        def can_create(owner: str, group_name: str = name, cap: int = group.max_runners) -> bool:
            if fleet.by_group[group_name] >= cap:
                return False
            if inp.max_total_runners and fleet.total + inp.total_elsewhere >= inp.max_total_runners:
                return False
            return not (
                inp.per_owner_max_runners
                and fleet.by_owner[owner] + inp.owner_counts_elsewhere.get(owner, 0)
                >= inp.per_owner_max_runners
            )

        for owner in owners:
            for _ in range(unmet[owner]):
                if not can_create(owner):
                    break
                fleet.add(name, owner)
                counts[(name, owner, "pending")] += 1
        for _ in range(pool):
            choices = [o for o in owners if can_create(o)]
            if not choices:
                break
            owner = min(choices, key=lambda o: (fleet.by_group_owner[(name, o)], owners.index(o)))
            fleet.add(name, owner)
            counts[(name, owner, reason_pool)] += 1

    creates = [
        Create(group=g, owner=o, count=n, reason=r) for (g, o, r), n in counts.items() if n > 0
    ]
    deletes.sort(key=lambda d: _REASON_RANK.get(d.reason, len(DELETE_REASONS)))
    return Plan(creates=creates, deletes=deletes, cleanups=cleanups, github_removals=removals)


def _pool_reason(demand: GroupDemand) -> str:
    if demand.quantity is not None:
        return "quantity"
    return "pending" if demand.pending_jobs > demand.group.min_idle else "min-idle"


def _trim_order(runners: Sequence[ObservedRunner]) -> list[ObservedRunner]:
    """Surplus candidates: young offline runners (oldest first), then idle runners newest first.

    Runners not yet registered (being created) are not candidates.
    """
    offline = sorted(
        (r for r in runners if r.registered and _is_offline(r)),
        key=lambda r: (r.created_at, r.name),
    )
    idle = sorted(
        (r for r in runners if r.registered and not _is_offline(r)),
        key=lambda r: (-r.created_at, r.name),
    )
    return offline + idle
