"""Campaign 4 -- backend faults: failing, slow, never-registering and vanishing instances.

* **Create failures** (fake ``fail_rate``, seeded): every job is still served; each failed create is
  undone (no record, no GitHub runner, no instance left) and counted (``runner_create_failures`` in
  Redis, ``ghrm_backend_errors_total`` in metrics). With every create failing, retries stay bounded
  (the attempt rate is measured and reported; a storm fails the test).
* **Slow creates** (``create_latency`` 3 s): intake and the health endpoint keep answering, creates run
  concurrently, jobs complete; create latency lands in ``ghrm_backend_create_seconds``.
* **Instances that never register** (``mode: memory``: no runner process ever connects): removed after
  ``register_timeout`` together with their JIT registration, replaced, never piling up.
* **Instances that vanish** (an idle runner's process killed; a busy runner's machine gone from the
  backend): cleaned up -- record, instance and the runner GitHub keeps offline -- and replaced.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from typing import Any

import pytest
import requests

from github_emulator import token_key
from tests.parts import wait_for
from tests.reliability.harness import (
    TIMEOUT,
    TOKEN,
    Fleet,
    Manager,
    no_traceback,
    pid_alive,
    report,
    run_cli,
    settle,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]


#: Jobs waiting while every create fails, and for how long attempts are counted.
WAITING = 3
WINDOW = 15.0


def _group(**overrides: Any) -> list[dict[str, Any]]:
    group = {
        "name": "small",
        "labels": ["small"],
        "backend": "fake",
        "min_idle": 0,
        "max_runners": 6,
        "cpu": 1,
        "memory": "1GiB",
        "paths": ["acme"],
    }
    group.update(overrides)
    return [group]


def _counter(fleet: Fleet, name: str) -> int:
    return int(fleet.redis.hget("ghrm:counters", name) or 0)


def _removals(fleet: Fleet) -> dict[str, int]:
    """Removals the fleet counted (``runners_removed_<reason>`` counters in Redis), by reason."""
    return {
        key.removeprefix("runners_removed_"): int(value)
        for key, value in fleet.redis.hgetall("ghrm:counters").items()
        if key.startswith("runners_removed_")
    }


def _settled(fleet: Fleet, manager: Manager) -> list[str]:
    return fleet.unit_problems(manager) + [
        f"orphan GitHub runner {n}" for n in fleet.orphan_github_runners()
    ]


def test_create_failures_are_undone_counted_and_retried(fleet: Fleet) -> None:
    manager = fleet.add("u0", runner_groups=_group(), fake={"fail_rate": 0.5, "seed": 7})
    fleet.start()
    problems: list[str] = []
    jobs = [fleet.queue_job(["echo served"]) for _ in range(6)]
    done = fleet.wait_jobs_done(jobs, 120)
    failed = {j: d["conclusion"] for j, d in done.items() if d["conclusion"] != "success"}
    if failed:
        problems.append(f"jobs not successful: {failed}")
    failures = _counter(fleet, "runner_create_failures")
    metric = manager.metric("ghrm_backend_errors_total", {"operation": "create"})
    if failures < 1 or metric < 1:
        problems.append(f"create failures not counted: redis {failures}, metric {metric}")
    wait_for(lambda: not _settled(fleet, manager), 30, what="failed creates undone")

    # every create fails (the backend is down): retries back off while the jobs wait
    assert manager.stop() == 0
    manager.data["backends"]["fake"]["fail_rate"] = 1.0
    manager.start()
    key = token_key(TOKEN)
    before = _counter(fleet, "runner_create_failures")
    since = time.time()
    waiting = [fleet.queue_job(["echo finally"]) for _ in range(WAITING)]
    threading.Event().wait(WINDOW)  # the window over which attempts are counted
    attempts = _counter(fleet, "runner_create_failures") - before
    log = [e for e in fleet.emulator.control.stats()["request_log"] if e["token"] == key]
    log = [e for e in log if since <= e["time"] <= since + WINDOW]
    jit = sorted(e["time"] for e in log if "generate-jitconfig" in e["path"])
    writes = sum(1 for e in log if e["method"] in ("POST", "DELETE"))
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(jit)]
    # the backoff (create_backoff 2 s doubling, +-20 % jitter): the first attempts run together (at most
    # one per waiting job), then one probe at a time after ~2, ~4, ~8 s: at most 4 in the window
    burst = list(itertools.takewhile(lambda g: g < 1.0, gaps))
    probes = gaps[len(burst) :]
    bound = WAITING + 4
    # probe k waits at least the k-th delay (2 s x 2^k, less 20 % jitter); the sweeper (2 s) and the
    # reconcile (3 s) that trigger creates can only make it later
    growing = all(gap >= 0.8 * 2.0 * 2**k - 0.05 for k, gap in enumerate(probes))
    if attempts > bound or len(burst) >= WAITING or not growing or any(g < 1.0 for g in probes):
        problems.append(
            f"create retries without backoff: {attempts} failed creates (bound {bound}) for {WAITING} "
            f"waiting jobs in {WINDOW:g}s ({writes} GitHub writes = {writes * 5} secondary-limit "
            f"points; gaps {gaps[:12]})"
        )
    backoff_metric = manager.metric("ghrm_create_backoff_seconds", {"group": "small"})
    skips = manager.metric("ghrm_create_backoff_skips_total", {"group": "small"})
    status = run_cli(manager.config, "status", "--json")
    shown = (
        json.loads(status.stdout)["create_backoffs"] if status.returncode == 0 else status.stderr
    )
    if backoff_metric <= 0 or skips < 1:
        problems.append(f"backoff not in metrics: seconds {backoff_metric}, skips {skips}")
    if not (
        isinstance(shown, list)
        and [(b["unit"], b["group"], b["owner"]) for b in shown] == [("u0", "small", "acme")]
        and shown[0]["failures"] >= 2
        and "injected create failure" in shown[0]["error"]
    ):
        problems.append(f"status does not show the backoff: {shown}")
    problems += [
        f"while every create fails: {p}"
        for p in _settled(fleet, manager)
        if "stuck creating" not in p and "has no instance" not in p
    ]
    assert manager.stop() == 0
    manager.data["backends"]["fake"]["fail_rate"] = 0.0
    manager.start()
    done = fleet.wait_jobs_done(waiting, 60)
    problems += [
        f"waiting job {j}: {d['conclusion']}"
        for j, d in done.items()
        if d["conclusion"] != "success"
    ]
    wait_for(lambda: not _settled(fleet, manager), 30, what="everything settled")
    problems += [f"log: {line}" for line in no_traceback(manager.log_text())]
    report(
        "backend-create-failures",
        {
            "jobs": len(jobs) + WAITING,
            "failed_creates_fail_rate_0.5": failures,
            "metric_backend_errors": metric,
            "all_failing": {
                "waiting_jobs": WAITING,
                "window_seconds": WINDOW,
                "failed_creates": attempts,
                "jit_registrations": len(jit),
                "github_writes": writes,
                "gaps": gaps[:20],
                "backoff": growing,
                "backoff_metric_seconds": backoff_metric,
                "creates_skipped_in_backoff": skips,
                "status_backoffs": shown,
            },
            "problems": len(problems),
        },
    )
    settle(problems, manager.tail(60))


def test_slow_creates_keep_the_service_answering(fleet: Fleet) -> None:
    manager = fleet.add("u0", runner_groups=_group(), fake={"create_latency": "3s"})
    fleet.start()
    reconciles = manager.metric("ghrm_reconcile_total", {"result": "ok"})
    started = time.monotonic()
    jobs = [fleet.queue_job(["echo slow"]) for _ in range(4)]
    health: list[int] = []
    while not all(d["status"] == "completed" for j, d in fleet.jobs().items() if j in jobs):
        if time.monotonic() - started > 120:
            break
        try:
            health.append(requests.get(manager.health_url, timeout=2).status_code)
        except requests.RequestException:
            health.append(0)
        threading.Event().wait(0.25)
    done = fleet.wait_jobs_done(jobs, 30)
    took = time.monotonic() - started
    problems = [
        f"job {j}: {d['conclusion']}" for j, d in done.items() if d["conclusion"] != "success"
    ]
    if any(code != 200 for code in health):
        problems.append(f"health answers while creating: {health}")
    creates = manager.metric("ghrm_backend_create_seconds_count")
    if creates < 4:
        problems.append(f"create latency not recorded: {creates}")
    if manager.metric("ghrm_reconcile_total", {"result": "ok"}) <= reconciles:
        problems.append("no reconcile completed while creates were slow")
    problems += [f"log: {line}" for line in no_traceback(manager.log_text())]
    report(
        "backend-slow-creates",
        {
            "jobs": 4,
            "create_latency": 3,
            "seconds": round(took, 1),
            "health_ok": health.count(200),
            "problems": len(problems),
        },
    )
    settle(problems, manager.tail(60))


def test_instances_that_never_register_are_replaced(fleet: Fleet) -> None:
    manager = fleet.add(
        "u0",
        runner_groups=_group(min_idle=1),
        register_timeout="4s",
        reconcile_interval="1s",
        fake={"mode": "memory"},
    )
    fleet.start()
    seen: set[str] = set()
    most_instances = most_github = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # watch the pool churn for 20 s
        instances = manager.instances()
        github = fleet.github_runners()
        seen |= set(instances)
        most_instances = max(most_instances, len(instances))
        most_github = max(most_github, len(github))
        threading.Event().wait(0.2)
    problems: list[str] = []
    if len(seen) < 3:
        problems.append(f"never-registered instances not replaced: only {sorted(seen)} in 20 s")
    if most_instances > 2 or most_github > 2:
        problems.append(
            f"never-registered instances pile up: {most_instances} instances, {most_github} GitHub runners"
        )
    gone = seen - set(manager.instances())
    left = gone & set(fleet.github_runners())
    if left:
        problems.append(f"JIT registrations of removed instances left on GitHub: {sorted(left)}")
    removals = _removals(fleet)
    counted = manager.metric("ghrm_runners_removed_total", {"reason": "never-registered"})
    if removals.get("never-registered", 0) < len(gone) or counted < len(gone):
        problems.append(
            f"{len(gone)} never-registered instances removed, counted: redis {removals}, metric {counted}"
        )
    problems += [f"log: {line}" for line in no_traceback(manager.log_text())]
    report(
        "backend-never-register",
        {
            "instances_seen": len(seen),
            "removed": len(gone),
            "removals_counted": removals,
            "max_instances": most_instances,
            "max_github_runners": most_github,
            "problems": len(problems),
        },
    )
    settle(problems, manager.tail(60))


def test_vanished_instances_are_cleaned_up(fleet: Fleet) -> None:
    fleet.emulator.control.settings(offline_after=3.0)
    manager = fleet.add("u0", runner_groups=_group(min_idle=1), offline_timeout="5s")
    fleet.start()
    problems: list[str] = []
    wait_for(
        lambda: any(r["online"] for r in fleet.github_runners().values()),
        60,
        what="an idle runner online",
    )
    # 1. an idle runner's machine dies
    idle = next(n for n, r in fleet.github_runners().items() if r["online"])
    os.killpg(manager.instances()[idle]["pid"], signal.SIGKILL)
    try:
        wait_for(
            lambda: (
                idle not in manager.instances()
                and idle not in fleet.records()
                and idle not in fleet.github_runners()
            ),
            60,
            what=f"dead idle runner {idle} removed",
        )
    except TimeoutError:
        problems.append(
            f"dead idle runner {idle} not cleaned up: instance {manager.instances().get(idle)}, "
            f"record {fleet.records().get(idle)}, github {fleet.github_runners().get(idle)}"
        )
    wait_for(
        lambda: any(r["online"] for n, r in fleet.github_runners().items() if n != idle),
        60,
        what="a replacement runner online",
    )
    # 2. a busy runner's machine disappears from the backend altogether
    job = fleet.queue_job(["sleep 30"])
    wait_for(lambda: fleet.jobs()[job]["status"] == "in_progress", 60, what="the job running")
    busy = fleet.jobs()[job]["runner_name"]
    pid = manager.instances()[busy]["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, what="the busy runner's process gone")
    import fcntl
    import json

    state_file = manager.state_file
    with open(state_file.with_name(state_file.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(state_file.read_text())
        data.pop(busy, None)
        state_file.write_text(json.dumps(data))
        fcntl.flock(lock, fcntl.LOCK_UN)
    done = fleet.wait_jobs_done([job], 60)
    if done[job]["conclusion"] == "success":
        problems.append("the job of the vanished machine succeeded?")
    try:
        wait_for(
            lambda: busy not in fleet.records() and busy not in fleet.github_runners(),
            60,
            what=f"vanished busy runner {busy} cleaned up",
        )
    except TimeoutError:
        problems.append(
            f"vanished busy runner {busy} left: record {fleet.records().get(busy)}, "
            f"github {fleet.github_runners().get(busy)}"
        )
    later = fleet.queue_job(["echo replaced"])
    if fleet.wait_jobs_done([later], 60)[later]["conclusion"] != "success":
        problems.append("no replacement served the next job")
    removals = _removals(fleet)
    # the idle runner's dead machine is "vanished"; the busy one's job failed, so it is a "done" husk
    if removals.get("vanished", 0) < 1 or removals.get("done", 0) < 1:
        problems.append(f"removals of vanished machines not counted: {removals}")
    if manager.metric("ghrm_runners_removed_total", {"reason": "vanished"}) < 1:
        problems.append("ghrm_runners_removed_total{reason=vanished} not counted")
    problems += [f"log: {line}" for line in no_traceback(manager.log_text())]
    report(
        "backend-vanish",
        {"vanished_idle": 1, "vanished_busy": 1, "removals_counted": removals,
         "problems": len(problems)},
    )  # fmt: skip
    settle(problems, manager.tail(60))
