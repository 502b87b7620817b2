"""Campaign 1 -- crash: seeded SIGKILLs of one of two managers at chosen moments.

Two ``github-runner-manager run`` units share Redis and the emulator; both receive every webhook.
Jobs arrive throughout (seeded gaps and durations) and run on real local runner processes. Each round
picks a victim and a moment -- inside its reconcile (it holds its unit's reconcile lock), while it
creates an instance (a ``pending`` instance of its own), while it deletes one, right as a job event is
taken in, while one of its runners is busy, or after a random delay -- and SIGKILLs it there.

After each kill one ``github-runner-manager reconcile`` of the victim's unit runs (the restart's first
reconcile) and then: no leaked instance (an instance without a record, or left mid-creation), no record
stuck ``creating``/``deleting`` or without an instance, no orphan GitHub runner. Then the unit's
service is restarted. At the end every queued job has completed with ``success`` -- a runner that lost
its machine mid-job makes the emulator fail (or cancel) its job -- and flushing leaves nothing anywhere.

Short form (CI): 6 kills. Full form (``CHAOS_FULL=1``): 50 kills.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.parts import wait_for
from tests.reliability.harness import (
    KEY_PREFIX,
    TIMEOUT,
    Fleet,
    Manager,
    form,
    no_traceback,
    producer,
    report,
    rng,
    run_cli,
    settle,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]

MOMENTS = ("reconcile", "create", "delete", "intake", "busy", "random")


def _kind(problem: str) -> str:
    """A problem's category (for the campaign's figures)."""
    for kind in (
        "delete lease is still held",
        "stuck deleting",
        "stuck creating",
        "leaked instance",
        "left mid-creation",
        "has no instance",
        "orphan GitHub runner",
        "did not succeed",
        "reconcile exit",
        "log:",
        "left after flush",
    ):
        if kind in problem:
            return kind
    return "other"


def trigger(
    fleet: Fleet, victim: Manager, moment: str, state: dict[str, Any]
) -> Callable[[], bool]:
    """A condition that is true at the moment ``moment`` of ``victim``'s current process."""
    pid = victim.pid
    assert pid is not None

    if moment == "reconcile":
        key = f"{KEY_PREFIX}:lock:reconcile:{victim.unit}"
        return lambda: (fleet.redis.get(key) or "").startswith(f"{pid}:")
    if moment == "create":
        return lambda: any(
            d.get("state") == "pending" and d.get("creator_pid") == pid
            for d in victim.instances().values()
        )
    if moment == "delete":
        # a delete that starts now (not one a known bug left hanging)
        hanging = {n for n, d in victim.instances().items() if d.get("state") == "deleting"}
        return lambda: any(
            d.get("state") == "deleting" and n not in hanging for n, d in victim.instances().items()
        )
    if moment == "busy":

        def busy() -> bool:
            mine = {n for n, r in fleet.records().items() if r.get("unit") == victim.unit}
            return any(r["busy"] and n in mine for n, r in fleet.github_runners().items())

        return busy
    if moment == "intake":
        job_id = fleet.queue_job(["sleep 0.3"])
        state["jobs"].append(job_id)
        return lambda: bool(fleet.redis.exists(f"{KEY_PREFIX}:job:{job_id}"))
    raise AssertionError(moment)


def test_sigkill_campaign(fleet: Fleet) -> None:
    kills = form(6, 50)
    gen = rng("crash")
    for unit in ("u0", "u1"):
        fleet.add(
            unit,
            runner_groups=[
                {
                    "name": "small",
                    "labels": ["small"],
                    "backend": "fake",
                    "min_idle": 1,
                    "max_runners": 8,
                    "cpu": 1,
                    "memory": "1GiB",
                    "paths": ["acme"],
                }
            ],
            fake={"create_latency": "0.4s", "delete_latency": "0.3s"},
        )
    fleet.start()
    problems: list[str] = []
    moments: Counter[str] = Counter()
    reached: Counter[str] = Counter()
    inflight: Counter[str] = Counter()
    state: dict[str, Any] = {"jobs": []}
    jobs_gen = rng("crash-jobs")
    durations = [round(jobs_gen.uniform(0.2, 1.5), 2) for _ in range(10_000)]
    started = time.monotonic()
    with producer(
        fleet,
        rng("crash-gaps"),
        gap=(0.8, 2.0),
        steps=lambda n: [f"sleep {durations[n]}", "echo ok"],
    ) as produced:
        for round_ in range(kills):
            victim = fleet.managers[gen.randrange(len(fleet.managers))]
            if round_ % len(MOMENTS) == 0:  # every moment once per cycle, in a seeded order
                cycle = gen.sample(MOMENTS, len(MOMENTS))
            moment = cycle[round_ % len(MOMENTS)]
            moments[moment] += 1
            if moment == "random":
                threading.Event().wait(gen.uniform(0.0, 3.0))  # the moment itself is the chaos
                reached[moment] += 1
            else:
                try:
                    wait_for(trigger(fleet, victim, moment, state), 20, interval=0.005, what=moment)
                    reached[moment] += 1
                except TimeoutError:
                    pass  # killed anyway, counted as not reached
            # what the victim had in flight when it died
            pid = victim.pid
            snapshot = victim.instances()
            assert victim.kill(signal.SIGKILL) == -signal.SIGKILL
            inflight["pending instances"] += sum(
                1
                for d in snapshot.values()
                if d.get("state") == "pending" and d.get("creator_pid") == pid
            )
            inflight["deleting instances"] += sum(
                1 for d in snapshot.values() if d.get("state") == "deleting"
            )
            records = fleet.records()
            inflight["creating records"] += sum(
                1
                for r in records.values()
                if r.get("unit") == victim.unit and r.get("state") == "creating"
            )
            inflight["busy runners"] += sum(
                1
                for n, r in fleet.github_runners().items()
                if r["busy"] and records.get(n, {}).get("unit") == victim.unit
            )
            result = run_cli(victim.config, "--log-level", "info", "reconcile")
            if result.returncode != 0 or no_traceback(result.stderr):
                problems.append(
                    f"round {round_} ({moment}): reconcile exit {result.returncode}: {result.stderr[-3000:]}"
                )
            found = fleet.unit_problems(victim) + [
                f"orphan GitHub runner {n}" for n in fleet.orphan_github_runners()
            ]
            problems += [f"round {round_} ({moment}, {victim.unit}): {p}" for p in found]
            victim.start()
    jobs = state["jobs"] + produced
    done = fleet.wait_jobs_done(jobs, timeout=240)
    failed = {
        j: (d["conclusion"], d["runner_name"])
        for j, d in done.items()
        if d["conclusion"] != "success"
    }
    if failed:
        problems.append(f"jobs that did not succeed (a busy runner lost its machine?): {failed}")
    names = [d["runner_name"] for d in done.values()]
    if len(set(names)) != len(names) or not all(n and n.startswith("ghr-") for n in names):
        problems.append(
            f"jobs not each on their own runner of ours: {Counter(names).most_common(3)}"
        )

    # quiescent: stop both, one reconcile each, everything agrees; then flush leaves nothing
    for manager in fleet.managers:
        if manager.stop() != 0:
            problems.append(f"{manager.unit} did not stop cleanly:\n{manager.tail()}")
    for manager in fleet.managers:
        result = run_cli(manager.config, "reconcile")
        if result.returncode != 0:
            problems.append(f"final reconcile of {manager.unit}: {result.stderr[-2000:]}")
    for manager in fleet.managers:
        problems += [f"final: {p}" for p in fleet.unit_problems(manager)]
    problems += [f"final: orphan GitHub runner {n}" for n in fleet.orphan_github_runners()]
    records, instances, github = fleet.records(), fleet.all_instances(), fleet.github_runners()
    stuck = {n for n, r in records.items() if r.get("state") == "deleting"}  # reported above
    records = {n: r for n, r in records.items() if n not in stuck}
    instances = {n: i for n, i in instances.items() if n not in stuck}
    if not set(github) - stuck <= set(records) or set(instances) != set(records):
        problems.append(
            f"final views disagree: records {sorted(records)}, instances {sorted(instances)}, github {sorted(github)}"
        )
    for manager in fleet.managers:
        flushed = run_cli(manager.config, "flush", "--busy")
        if flushed.returncode != 0:
            problems.append(f"flush {manager.unit}: {flushed.stderr[-2000:]}")
    try:
        wait_for(lambda: not fleet.github_runners(), 30, what="no GitHub runner after the flush")
    except TimeoutError:
        pass  # reported below
    records = fleet.records()
    problems += [
        f"left after flush: record {n} {'stuck ' if r.get('state') == 'deleting' else ''}"
        f"{r.get('state')}{fleet.why(n, r)}"
        for n, r in records.items()
    ]
    problems += [
        f"left after flush: instance {n} of {u} ({i.get('state')})"
        for n, (u, i) in fleet.all_instances().items()
        if n not in records
    ]
    problems += [
        f"left after flush: GitHub runner {n}" for n in fleet.github_runners() if n not in records
    ]
    for manager in fleet.managers:
        problems += [f"{manager.unit} log: {line}" for line in no_traceback(manager.log_text())]

    report(
        "crash",
        {
            "form": "full" if kills > 6 else "short",
            "kills": kills,
            "moments": dict(moments),
            "moments_reached": dict(reached),
            "in_flight_at_kill": dict(inflight),
            "jobs": len(jobs),
            "jobs_failed": len(failed),
            "problems": len(problems),
            "problem_kinds": dict(Counter(_kind(p) for p in problems)),
            "stuck_deleting_runners": len(
                set(re.findall(r"record (\S+) stuck deleting", " ".join(problems)))
            ),
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    settle(problems, fleet.tails())


# ------------------------------------------------------------------------------ focused moments
def _variant(manager: Manager, **fake: Any) -> Any:
    """A copy of ``manager``'s config file with other fake-backend settings (same unit, same state)."""
    import yaml

    data = json.loads(json.dumps(manager.data))
    data["backends"]["fake"].update(fake)
    path = manager.directory / f"config-{'-'.join(sorted(fake))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _popen_cli(config: Any, *args: str) -> Any:
    import subprocess
    import sys

    from tests.reliability.harness import cli_env

    return subprocess.Popen(
        [sys.executable, "-m", "github_runner_manager.cli", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        start_new_session=True,
    )


@pytest.mark.parametrize("moment", ["delete", "create"])
def test_sigkill_mid_operation_then_one_reconcile_settles_it(fleet: Fleet, moment: str) -> None:
    """A process killed inside a backend delete (or create) leaves nothing for longer than one reconcile.

    The delete (create) is made slow (5 s) so the kill lands inside it: the dead process still holds
    whatever it took (the record's state, the runner's delete lease, a pending instance).
    """
    manager = fleet.add("u0", hook=False, reconcile_interval="1h")
    first = run_cli(manager.config, "reconcile")
    assert first.returncode == 0, first.stderr
    wait_for(
        lambda: any(r["online"] for r in fleet.github_runners().values()), 30, what="runner online"
    )
    if moment == "delete":
        slow = _popen_cli(_variant(manager, delete_latency="5s"), "flush")
        wait_for(
            lambda: any(d["state"] == "deleting" for d in manager.instances().values()),
            30,
            interval=0.01,
            what="a delete in progress",
        )
    else:
        slow = _popen_cli(_variant(manager, create_latency="5s"), "reconcile", "--quantity", "2")
        wait_for(
            lambda: any(d["state"] == "pending" for d in manager.instances().values()),
            30,
            interval=0.01,
            what="a create in progress",
        )

    os.killpg(slow.pid, signal.SIGKILL)
    slow.wait(10)
    again = run_cli(manager.config, "--log-level", "info", "reconcile")
    assert again.returncode == 0, again.stderr
    problems = fleet.unit_problems(manager) + [
        f"orphan GitHub runner {n}" for n in fleet.orphan_github_runners()
    ]
    settle(problems, again.stderr[-4000:])
    flushed = run_cli(manager.config, "flush", "--busy")
    assert flushed.returncode == 0, flushed.stderr
    assert fleet.records() == {} and manager.instances() == {}, (
        fleet.records(),
        flushed.stderr[-3000:],
    )


def test_a_reservation_left_by_a_crash_is_settled_by_one_reconcile(fleet: Fleet) -> None:
    """A process killed right after reserving a runner leaves nothing for longer than one reconcile.

    ``_create_runners`` reserves the record with its creator's session in one Lua call (BUG-10: the
    session used to be written by a second call, and a kill in between left a sessionless record that
    reconciles left alone for 30 s). A real process reserves a record through ``Store`` exactly as
    the manager does and is SIGKILLed at once; then one ``reconcile`` runs.
    """
    import subprocess
    import sys

    from tests.reliability.harness import cli_env

    manager = fleet.add("u0", hook=False, reconcile_interval="1h")
    name = "ghr-small-crash0"
    script = (
        "import os, signal\n"
        "from github_runner_manager.manager import _proc_start\n"
        "from github_runner_manager.store import Store\n"
        f"store = Store({fleet.redis_url!r}, key_prefix={KEY_PREFIX!r})\n"
        "session = f'{os.getpid()}:{_proc_start(os.getpid())}'\n"
        f"got = store.reserve_runners('small', 'acme', [{name!r}], 'u0', group_cap=0, total_cap=0,"
        " owner_cap=0, backend='fake', fields={'session': session})\n"
        f"assert got == [{name!r}], got\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    creator = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert creator.returncode == -signal.SIGKILL, creator.stderr
    left = fleet.records()
    assert left[name]["state"] == "creating" and left[name].get("session"), left
    result = run_cli(manager.config, "--log-level", "info", "reconcile")
    assert result.returncode == 0, result.stderr
    assert "abandoned creation cleaned up" in result.stderr, result.stderr[-3000:]
    settle(fleet.unit_problems(manager), result.stderr[-3000:])


def test_a_runner_that_took_a_job_while_its_interrupted_delete_waited_is_kept(fleet: Fleet) -> None:
    """The other half of BUG-1: a resumed delete must not kill a runner that became busy meanwhile.

    A process deciding to remove an idle runner marks its record ``deleting`` and takes the runner's
    delete lease, then is killed before it reaches the instance: the runner stays registered and
    online, and takes a job. The next reconcile breaks the dead process's lease and resumes the
    delete -- it must give the runner back to ``busy`` instead, let the job finish, then remove it.
    """
    from github_runner_manager.manager import _host_identity

    manager = fleet.add("u0", hook=False, reconcile_interval="1h")
    first = run_cli(manager.config, "reconcile")
    assert first.returncode == 0, first.stderr
    wait_for(lambda: any(r["online"] for r in fleet.github_runners().values()), 30, what="online")
    gate = manager.directory / "job-may-end"  # the job runs until the test says so
    job = fleet.queue_job([f"while [ ! -e {gate} ]; do sleep 0.05; done", "echo survived"])
    state = fleet.emulator.state

    def reported_busy() -> list[str]:  # what GitHub's REST API says (it lags the job's start)
        with state.lock:
            return [r.name for r in state.runners.values() if state.reported_busy(r)]

    wait_for(reported_busy, 30, interval=0.05, what="GitHub reporting a runner busy")
    [name] = reported_busy()
    # what the killed process left: the record marked for an idle-surplus delete, its lease held by
    # a process of this host that no longer runs (this pid with another start time)
    key = f"{KEY_PREFIX}:runner:{name}"
    fleet.redis.hset(
        key, mapping={"state": "deleting", "delete_reason": "idle-surplus", "delete_busy": "0"}
    )
    fleet.redis.set(
        f"{KEY_PREFIX}:lease:delete:{name}", f"x|{_host_identity()}/{os.getpid()}:0", px=300_000
    )
    again = run_cli(manager.config, "--log-level", "info", "reconcile")
    assert again.returncode == 0, again.stderr
    assert f"lease delete:{name} of dead process" in again.stderr, again.stderr[-3000:]
    assert fleet.records().get(name, {}).get("state") == "busy", again.stderr[-3000:]
    assert name in manager.instances()
    assert fleet.jobs()[job]["status"] == "in_progress"
    gate.touch()
    done = fleet.wait_jobs_done([job], 60)
    assert done[job]["conclusion"] == "success", done
    # once the job is done the runner is a husk: one more reconcile removes it
    wait_for(
        lambda: (
            run_cli(manager.config, "reconcile").returncode == 0 and name not in fleet.records()
        ),
        60,
        interval=1,
        what="the husk removed",
    )
    assert name not in manager.instances() and name not in fleet.github_runners()
