"""planner.py: property tests (hypothesis) for the promises, and worked examples for each rule."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from github_runner_manager.config import GitHubPath, RunnerGroup
from github_runner_manager.planner import (
    DELETE_REASONS,
    GroupDemand,
    ObservedRunner,
    Plan,
    PlanInput,
    RunnerState,
    is_busy,
    plan,
)

NOW = 100_000.0
OWNERS = ["acme", "acme/app", "other"]
PROPERTY = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------- strategies
# Built once at import: hypothesis spends most of its time validating strategy objects, not in plan().

AGE = st.integers(0, 300) | st.integers(0, 3_000)
OWNER = st.sampled_from(OWNERS)
GROUP_PATHS = st.lists(OWNER, min_size=1, max_size=3, unique=True).map(
    lambda owners: [GitHubPath.parse(o) for o in owners]
)
LIFETIME = st.sampled_from([None, None, None, 1.0, 600.0, 2_000.0])
MIN_IDLE = st.integers(0, 3)
EXTRA_RUNNERS = st.sampled_from([0, 0, 1, 2, 3, 6])  # max_runners - min_idle: caps often bind
GROUP_NAMES = {n: st.sampled_from([*(f"g{i}" for i in range(n)), "retired"]) for n in (1, 2, 3)}
# Weighted towards healthy idle fleets (where surplus and preference decisions happen), with every
# state, flag and combination still reachable.
STATES = (
    [RunnerState.IDLE] * 5
    + [RunnerState.CREATING, RunnerState.BUSY, RunnerState.OFFLINE] * 2
    + [RunnerState.DONE, RunnerState.DELETING, RunnerState.FAILED, RunnerState.ORPHAN]
)
RUNNER_FIELDS = st.tuples(
    st.sampled_from([True, True, True, False]),  # registered
    OWNER,
    st.sampled_from(STATES),
    AGE,
    st.sampled_from(["online"] * 4 + [None, "offline"]),
    st.sampled_from([False] * 4 + [True]),  # github_busy
    st.sampled_from([True] * 5 + [False]),  # instance_exists
    st.sampled_from([False] * 5 + [True]),  # job_unfinished
    st.none() | AGE,  # offline for
)
HEALTHY_IDLE_FIELDS = st.tuples(
    st.just(True),
    OWNER,
    st.just(RunnerState.IDLE),
    AGE,
    st.just("online"),
    st.just(False),
    st.just(True),
    st.just(False),
    st.none(),
)
ANY_RUNNER_FIELDS = HEALTHY_IDLE_FIELDS | RUNNER_FIELDS
SKIP_DEMAND = st.integers(0, 9)
PENDING = st.sampled_from([0, 0, 0, 1, 2, 3, 5])
QUANTITY = st.none() | st.integers(0, 4)
OWNER_PENDING = st.sampled_from([0, 0, 1, 2])
RUNNER_COUNT = st.integers(0, 18)
ORPHANS = st.lists(st.sampled_from(["ghr-x-1", "ghr-x-2", "ghr-y-3"]), max_size=3)
GITHUB_ORPHANS = st.lists(st.tuples(OWNER, st.integers(1, 5)), max_size=3)
TOTAL_CAP = st.sampled_from([0, 0, *range(1, 20)])
OWNER_CAP = st.sampled_from([0, 0, *range(1, 12)])
ELSEWHERE = st.dictionaries(OWNER, st.integers(0, 6))
TOTAL_ELSEWHERE = st.integers(0, 8)
TIMEOUT = st.integers(10, 1_500).map(float)
GROUP_COUNT = st.integers(1, 3)
NO_FLUSH = st.just("none")


def make_group(draw: st.DrawFn, index: int) -> RunnerGroup:
    min_idle = draw(MIN_IDLE)
    return RunnerGroup(
        name=f"g{index}",
        min_idle=min_idle,
        max_runners=min_idle + draw(EXTRA_RUNNERS),
        max_lifetime=draw(LIFETIME),
        paths=draw(GROUP_PATHS),
    )


def make_runner(draw: st.DrawFn, group_names: st.SearchStrategy[str], index: int) -> ObservedRunner:
    registered, owner, state, age, status, gh_busy, exists, unfinished, offline_for = draw(
        ANY_RUNNER_FIELDS
    )
    return ObservedRunner(
        name=f"r{index}",
        group=draw(group_names),
        owner=owner,
        state=state,
        created_at=NOW - age,
        github_id=index if registered else None,
        github_status=status,
        github_busy=gh_busy,
        instance_exists=exists,
        registered=registered,
        job_unfinished=unfinished,
        offline_since=None if offline_for is None else NOW - offline_for,
    )


@st.composite
def plan_inputs(
    draw: st.DrawFn,
    flush: st.SearchStrategy[str] = NO_FLUSH,
    per_owner_pending: st.SearchStrategy[bool] = st.just(True),
) -> PlanInput:
    group_list = [make_group(draw, i) for i in range(draw(GROUP_COUNT))]
    demands = []
    for group in group_list:
        if draw(SKIP_DEMAND) == 0:
            continue  # a group without demand: its runners are surplus
        pending_by_owner: dict[str, int] = {}
        if draw(per_owner_pending):
            for path in group.paths or []:
                pending_by_owner[str(path)] = draw(OWNER_PENDING)
        demands.append(
            GroupDemand(
                group=group,
                pending_jobs=draw(PENDING),
                quantity=draw(QUANTITY),
                pending_by_owner=pending_by_owner,
            )
        )
    names = GROUP_NAMES[len(group_list)]
    return PlanInput(
        demands=demands,
        runners=[make_runner(draw, names, i) for i in range(draw(RUNNER_COUNT))],
        orphan_instances=draw(ORPHANS),
        orphan_github_runners=draw(GITHUB_ORPHANS),
        max_total_runners=draw(TOTAL_CAP),
        per_owner_max_runners=draw(OWNER_CAP),
        owner_counts_elsewhere=draw(ELSEWHERE),
        total_elsewhere=draw(TOTAL_ELSEWHERE),
        now=NOW,
        register_timeout=draw(TIMEOUT),
        offline_timeout=draw(TIMEOUT),
        flush=draw(flush),  # type: ignore[arg-type]
    )


ANY_FLUSH = st.sampled_from(["none", "idle", "busy"])
MOSTLY_NO_FLUSH = st.sampled_from(["none", "none", "idle", "busy"])


def apply(inp: PlanInput, result: Plan) -> PlanInput:
    """Carry a plan out with nothing failing: deletes vanish, creates become idle registered runners."""
    gone = {d.name for d in result.deletes}
    kept = [r for r in inp.runners if r.name not in gone]
    created = [
        ObservedRunner(
            name=f"new-{c.group}-{c.owner}-{i}",
            group=c.group,
            owner=c.owner,
            state=RunnerState.IDLE,
            created_at=inp.now,
            github_id=None,
            github_status="online",
            github_busy=False,
            instance_exists=True,
            registered=True,
            job_unfinished=False,
        )
        for c in result.creates
        for i in range(c.count)
    ]
    return dataclasses.replace(
        inp, runners=kept + created, orphan_instances=[], orphan_github_runners=[]
    )


def demand_of(inp: PlanInput, name: str) -> GroupDemand | None:
    return next((d for d in inp.demands if d.group.name == name), None)


# --------------------------------------------------------------------------- properties
# Each check_* is one promise of planner.py. Generating an input costs far more than planning it, so
# the two @given tests below run every applicable check on each of their (>= 300) examples.


def check_busy_safe_and_flush(inp: PlanInput, result: Plan) -> None:
    """Busy runners are never deleted unless flushing busy; flush idle/busy delete as promised."""
    by_name = {r.name: r for r in inp.runners}
    deleted = [by_name[d.name] for d in result.deletes]
    assert len({r.name for r in deleted}) == len(deleted), "a runner is deleted twice"
    if inp.flush != "busy":
        assert not [r.name for r in deleted if is_busy(r)], "a busy runner is deleted"
    if inp.flush == "idle":
        assert {r.name for r in deleted} == {r.name for r in inp.runners if not is_busy(r)}
        assert result.creates == []
    if inp.flush == "busy":
        assert {r.name for r in deleted} == set(by_name)
        assert result.creates == []
    assert result.cleanups == list(dict.fromkeys(inp.orphan_instances))
    assert result.github_removals == list(dict.fromkeys(inp.orphan_github_runners))


def check_delta(inp: PlanInput, result: Plan) -> None:
    """``delta`` is intended minus actual: runners after the plan minus runners before."""
    assert result.delta == len(apply(inp, result).runners) - len(inp.runners)
    assert result.delta == sum(c.count for c in result.creates) - len(result.deletes)


def check_caps(inp: PlanInput, result: Plan) -> None:
    """Creates never push a group, the total or an owner over its cap (existing + creates)."""
    after = apply(inp, result).runners
    created_groups = Counter(c.group for c in result.creates for _ in range(c.count))
    created_owners = Counter(c.owner for c in result.creates for _ in range(c.count))
    per_group = Counter(r.group for r in after)
    per_owner = Counter(r.owner for r in after)
    for name in created_groups:
        demand = demand_of(inp, name)
        assert demand is not None, "created runners for a group without demand"
        assert per_group[name] <= demand.group.max_runners, f"{name} over max_runners"
    if created_groups and inp.max_total_runners:
        assert len(after) + inp.total_elsewhere <= inp.max_total_runners, "over max_total_runners"
    if inp.per_owner_max_runners:
        for owner in created_owners:
            assert (
                per_owner[owner] + inp.owner_counts_elsewhere.get(owner, 0)
                <= inp.per_owner_max_runners
            )
    for create in result.creates:
        demand = demand_of(inp, create.group)
        assert demand is not None and create.owner in demand.owner_order()
        assert create.count > 0


def check_converges(inp: PlanInput, result: Plan) -> None:
    """Carrying the plan out with nothing failing, the next plan is empty."""
    second = plan(apply(inp, result))
    assert second.empty, f"first={result}\nsecond={second}"


def _offline(r: ObservedRunner) -> bool:
    return r.state is RunnerState.OFFLINE or r.github_status != "online"


def check_deletion_preference(inp: PlanInput, result: Plan) -> None:
    """Broken runners always go; a surplus goes offline-first, then idle newest first."""
    reasons = {d.name: d.reason for d in result.deletes}
    ranks = [DELETE_REASONS.index(d.reason) for d in result.deletes]
    assert ranks == sorted(ranks), "deletes not listed in preference order"
    for runner in inp.runners:
        if is_busy(runner) or runner.state in (
            RunnerState.DONE,
            RunnerState.DELETING,
            RunnerState.ORPHAN,
            RunnerState.FAILED,
        ):
            continue
        age = inp.now - runner.created_at
        lost = not runner.instance_exists and runner.state is not RunnerState.CREATING
        if not runner.registered and (age > inp.register_timeout or lost):
            assert reasons.get(runner.name) == "never-registered", runner
        since = runner.offline_since if runner.offline_since is not None else runner.created_at
        if (
            runner.registered
            and runner.instance_exists
            and _offline(runner)
            and inp.now - since > inp.offline_timeout
        ):
            assert reasons.get(runner.name) == "offline", runner
    for demand in inp.demands:
        if demand.quantity is None and any(demand.pending_by_owner.values()):
            continue  # an owner's pending jobs may protect an older runner
        candidates = [
            r
            for r in inp.runners
            if r.group == demand.group.name
            and r.registered
            and not is_busy(r)
            and reasons.get(r.name, "idle-surplus") == "idle-surplus"
        ]
        trimmed = [r for r in candidates if r.name in reasons]
        kept = [r for r in candidates if r.name not in reasons]
        if any(not _offline(r) for r in trimmed):
            assert not [r for r in kept if _offline(r)], (
                "an idle runner trimmed before an offline one"
            )
        trimmed_idle = [r for r in trimmed if not _offline(r)]
        kept_idle = [r for r in kept if not _offline(r)]
        if trimmed_idle and kept_idle:
            assert min(r.created_at for r in trimmed_idle) >= max(
                r.created_at for r in kept_idle
            ), "an older idle runner trimmed before a newer one"


@PROPERTY
@given(plan_inputs(flush=ANY_FLUSH))
def test_properties_with_any_flush(inp: PlanInput) -> None:
    """Busy safety, flush semantics, delta and purity over none/idle/busy flushes."""
    snapshot = repr(inp)
    result = plan(inp)
    assert plan(inp) == result and repr(inp) == snapshot, "plan() is not pure"
    check_busy_safe_and_flush(inp, result)
    check_delta(inp, result)


@PROPERTY
@given(plan_inputs(flush=NO_FLUSH, per_owner_pending=st.booleans()))
def test_properties_without_flush(inp: PlanInput) -> None:
    """Busy safety, caps, one-step convergence, delta and deletion preference in normal reconciles."""
    result = plan(inp)
    check_busy_safe_and_flush(inp, result)
    check_caps(inp, result)
    check_converges(inp, result)
    check_delta(inp, result)
    check_deletion_preference(inp, result)


# --------------------------------------------------------------------------- worked examples


GROUP = RunnerGroup(name="small", min_idle=1, max_runners=10, paths=[GitHubPath.parse("acme")])


def runner(name: str, age: float, **kw: object) -> ObservedRunner:
    fields: dict[str, object] = {
        "group": "small",
        "owner": "acme",
        "state": RunnerState.IDLE,
        "github_id": 1,
        "github_status": "online",
        "github_busy": False,
        "instance_exists": True,
        "registered": True,
        "job_unfinished": False,
    }
    fields.update(kw)
    return ObservedRunner(name=name, created_at=NOW - age, **fields)  # type: ignore[arg-type]


def make_input(runners: list[ObservedRunner], *demands: GroupDemand, **kw: object) -> PlanInput:
    fields: dict[str, object] = {
        "orphan_instances": [],
        "orphan_github_runners": [],
        "max_total_runners": 0,
        "per_owner_max_runners": 0,
        "owner_counts_elsewhere": {},
        "total_elsewhere": 0,
        "now": NOW,
        "register_timeout": 300.0,
        "offline_timeout": 120.0,
        "flush": "none",
    }
    fields.update(kw)
    return PlanInput(
        demands=list(demands) or [GroupDemand(GROUP, 0, None)], runners=runners, **fields
    )  # type: ignore[arg-type]


def test_preference_never_registered_then_offline_then_idle_newest_first() -> None:
    inp = make_input(
        [
            runner("idle-old", 1000),
            runner("busy", 10, state=RunnerState.BUSY, github_busy=True),
            runner("idle-new", 20),
            runner(
                "unregistered-old",
                400,
                state=RunnerState.CREATING,
                registered=False,
                github_status=None,
            ),
            runner("idle-newest", 5),
            runner("offline-old", 500, state=RunnerState.OFFLINE, github_status="offline"),
            runner(
                "creating-young",
                30,
                state=RunnerState.CREATING,
                registered=False,
                github_status=None,
            ),
        ],
        GroupDemand(GROUP, pending_jobs=0, quantity=2),
    )
    result = plan(inp)
    assert [(d.name, d.reason) for d in result.deletes] == [
        ("unregistered-old", "never-registered"),
        ("offline-old", "offline"),
        ("idle-newest", "idle-surplus"),
        ("idle-new", "idle-surplus"),
    ]
    assert result.creates == [] and result.delta == -4


def test_target_counts_busy_and_pending() -> None:
    group = RunnerGroup(name="small", min_idle=2, max_runners=6, paths=[GitHubPath.parse("acme")])
    busy = [runner(f"b{i}", 10, state=RunnerState.BUSY) for i in range(3)]
    result = plan(make_input(busy, GroupDemand(group, pending_jobs=5)))
    # idle_target = max(2, 5) = 5, total_target = min(6, 3 + 5) = 6 → 3 creates
    assert result.creates[0].count == 3 and result.creates[0].reason == "pending"
    result = plan(make_input(busy, GroupDemand(group, pending_jobs=0)))
    assert result.creates[0].count == 2 and result.creates[0].reason == "min-idle"
    result = plan(make_input(busy, GroupDemand(group, pending_jobs=5, quantity=1)))
    assert result.creates[0].count == 1 and result.creates[0].reason == "quantity"


def test_lifetime_drains_idle_but_never_busy() -> None:
    group = RunnerGroup(name="small", max_lifetime=3600, paths=[GitHubPath.parse("acme")])
    inp = make_input(
        [
            runner("old-idle", 4000),
            runner("old-busy", 4000, github_busy=True),
            runner("old-job", 4000, job_unfinished=True),
            runner("young", 100),
        ],
        GroupDemand(group, quantity=1),
    )
    result = plan(inp)
    assert [(d.name, d.reason) for d in result.deletes] == [("old-idle", "lifetime")]
    assert result.creates == []


def test_vanished_and_done_runners_are_removed() -> None:
    inp = make_input(
        [
            runner("gone", 50, instance_exists=False),
            runner("done", 50, state=RunnerState.DONE),
            runner("done-but-busy", 50, state=RunnerState.DONE, job_unfinished=True),
            runner("failed", 5, state=RunnerState.FAILED, registered=False),
            runner(
                "record-first",
                5,
                state=RunnerState.CREATING,
                registered=False,
                instance_exists=False,
            ),
        ],
        GroupDemand(GROUP, quantity=1),
    )
    result = plan(inp)
    assert sorted((d.name, d.reason) for d in result.deletes) == [
        ("done", "done"),
        ("failed", "never-registered"),
        ("gone", "done"),
    ]
    # the young CREATING record (instance not made yet) fills the one idle slot
    assert result.creates == []


def test_offline_timeout_counts_from_offline_since() -> None:
    inp = make_input(
        [
            runner(
                "long-lived-just-offline", 5000, github_status="offline", offline_since=NOW - 10
            ),
            runner("offline-long", 5000, github_status="offline", offline_since=NOW - 500),
            runner("not-listed", 5000, github_status=None),
        ],
        GroupDemand(GROUP, quantity=3),
    )
    assert sorted((d.name, d.reason) for d in plan(inp).deletes) == [
        ("not-listed", "offline"),
        ("offline-long", "offline"),
    ]


def test_flush_idle_and_busy() -> None:
    runners = [runner("idle", 10), runner("busy", 10, state=RunnerState.BUSY)]
    idle = plan(make_input(runners, flush="idle", orphan_instances=["ghr-x"]))
    assert [(d.name, d.reason) for d in idle.deletes] == [("idle", "flush")]
    assert idle.creates == [] and idle.cleanups == ["ghr-x"]
    busy = plan(make_input(runners, flush="busy"))
    assert sorted(d.name for d in busy.deletes) == ["busy", "idle"] and busy.creates == []


def test_orphans_pass_through() -> None:
    result = plan(
        make_input(
            [runner("r", 10)],
            orphan_instances=["ghr-small-a", "ghr-small-a", "ghr-small-b"],
            orphan_github_runners=[("acme", 7), ("acme/app", 9)],
        )
    )
    assert result.cleanups == ["ghr-small-a", "ghr-small-b"]
    assert result.github_removals == [("acme", 7), ("acme/app", 9)]
    assert result.delta == 0


def test_runners_of_retired_groups_go_unless_busy() -> None:
    inp = make_input(
        [
            runner("old-idle", 10, group="retired"),
            runner("old-busy", 10, group="retired", github_busy=True),
        ],
        GroupDemand(GROUP, quantity=0),
    )
    assert [(d.name, d.reason) for d in plan(inp).deletes] == [("old-idle", "idle-surplus")]


def test_caps_total_and_per_owner() -> None:
    group = RunnerGroup(
        name="small", max_runners=10, paths=[GitHubPath.parse("acme"), GitHubPath.parse("other")]
    )
    demand = GroupDemand(group, quantity=8)
    # total cap: 3 here + 4 elsewhere, cap 10 → 3 more
    result = plan(
        make_input(
            [runner(f"r{i}", 10) for i in range(3)], demand, max_total_runners=10, total_elsewhere=4
        )
    )
    assert sum(c.count for c in result.creates) == 3
    # per-owner cap 4, acme has 3 elsewhere: acme gets 1, other gets the rest up to 4
    result = plan(
        make_input([], demand, per_owner_max_runners=4, owner_counts_elsewhere={"acme": 3})
    )
    assert {c.owner: c.count for c in result.creates} == {"acme": 1, "other": 4}


def test_pool_is_spread_over_owners() -> None:
    group = RunnerGroup(name="small", paths=[GitHubPath.parse("acme"), GitHubPath.parse("other")])
    result = plan(make_input([runner("a", 10, owner="acme")], GroupDemand(group, quantity=5)))
    assert {c.owner: c.count for c in result.creates} == {"acme": 2, "other": 2}


def test_pending_jobs_of_an_owner_get_that_owners_runner() -> None:
    group = RunnerGroup(
        name="small", min_idle=0, paths=[GitHubPath.parse("acme"), GitHubPath.parse("other")]
    )
    inp = make_input(
        [runner("acme-idle", 10, owner="acme")],
        GroupDemand(group, pending_jobs=1, pending_by_owner={"other": 1}),
    )
    result = plan(inp)
    assert [(d.name, d.reason) for d in result.deletes] == [("acme-idle", "idle-surplus")]
    assert result.creates[0].owner == "other" and result.creates[0].count == 1
    assert plan(apply(inp, result)).empty


def test_owner_order_needs_an_owner() -> None:
    with pytest.raises(ValueError, match=r"GroupDemand.owners is empty"):
        plan(make_input([], GroupDemand(RunnerGroup(name="x"), quantity=1)))
    assert GroupDemand(RunnerGroup(name="x"), owners=("b", "a", "b")).owner_order() == ["b", "a"]
