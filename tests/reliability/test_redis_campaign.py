"""Campaign 2 -- Redis: stopped mid-run, and emptied (FLUSHALL).

* **Outage**: two managers serve jobs; Redis stops for 30 s (full form; 8 s in the short form) while
  jobs keep arriving (their webhooks fail with 503 while it is down). Both processes stay up, answer
  their health endpoint, and once Redis is back every job -- before, during and after -- completes
  with ``success``; reconciles succeed again. Redis keeps its data across the stop (append-only file).
* **Emptied**: with idle and busy runners in the fleet, Redis is emptied with FLUSHALL while the
  services are stopped; one ``reconcile`` per unit rebuilds every record from the backends and GitHub
  (each runner in its unit, busy ones busy), deletes nothing, creates nothing extra. Then it is emptied
  again under the running services: records come back, and every job still completes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.parts import wait_for
from tests.reliability.harness import (
    TIMEOUT,
    Fleet,
    RedisProc,
    form,
    no_traceback,
    report,
    run_cli,
    settle,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]


def _watch(fleet: Fleet, stop: threading.Event, seen: dict[str, Any]) -> None:
    """Sample every manager's liveness and health endpoint until ``stop``."""
    import requests

    while not stop.wait(0.2):
        for manager in fleet.managers:
            if not manager.alive():
                seen["dead"].append(
                    f"{manager.unit} exited {manager.process.returncode if manager.process else '?'}"
                )
            try:
                code = requests.get(manager.health_url, timeout=3).status_code
                seen["health"][code] = seen["health"].get(code, 0) + 1
            except requests.RequestException as exc:
                seen["health"][type(exc).__name__] = seen["health"].get(type(exc).__name__, 0) + 1


def test_redis_outage(private_fleet: Fleet, private_redis: RedisProc) -> None:
    fleet = private_fleet
    outage = form(8, 30)
    for unit in ("u0", "u1"):
        fleet.add(unit)
    fleet.start()
    before = [fleet.queue_job(["sleep 0.5"]) for _ in range(3)]
    fleet.wait_jobs_done(before, 90)
    # a long job is running on a runner when Redis goes away
    running = fleet.queue_job([f"sleep {outage / 2 + 2}", "echo survived"])
    wait_for(lambda: fleet.jobs()[running]["status"] == "in_progress", 60, what="a job in progress")
    stop = threading.Event()
    seen: dict[str, Any] = {"dead": [], "health": {}}
    watcher = threading.Thread(target=_watch, args=(fleet, stop, seen), daemon=True)
    watcher.start()
    reconciles_before = {
        m.unit: m.metric("ghrm_reconcile_total", {"result": "ok"}) for m in fleet.managers
    }
    private_redis.stop()
    down_at = time.monotonic()
    during = [fleet.queue_job(["echo during"], repo="acme/lib") for _ in range(3)]
    threading.Event().wait(max(0.0, outage - (time.monotonic() - down_at)))  # the outage itself
    private_redis.start()
    after = [fleet.queue_job(["echo after"]) for _ in range(2)]
    problems: list[str] = []
    try:
        done = fleet.wait_jobs_done([*before, running, *during, *after], 180)
    finally:
        stop.set()
        watcher.join(10)
    failed = {j: d["conclusion"] for j, d in done.items() if d["conclusion"] != "success"}
    if failed:
        problems.append(f"jobs not successful: {failed}")
    problems += seen["dead"]
    wait_for(
        lambda: all(
            m.metric("ghrm_reconcile_total", {"result": "ok"}) > reconciles_before[m.unit]
            for m in fleet.managers
        ),
        60,
        what="reconciles succeeding again",
    )
    errors = {m.unit: m.metric("ghrm_reconcile_total", {"result": "error"}) for m in fleet.managers}
    deliveries = fleet.emulator.control.deliveries()
    failed_deliveries = sum(
        1 for d in deliveries if not str(d.get("status_code", "")).startswith("2")
    )
    for manager in fleet.managers:
        problems += [f"{manager.unit} log: {line}" for line in no_traceback(manager.log_text())]
        if not manager.alive():
            problems.append(f"{manager.unit} is not running")
    records, instances = fleet.records(), fleet.all_instances()
    if set(records) != set(instances):
        wait_for(
            lambda: set(fleet.records()) == set(fleet.all_instances()),
            30,
            what="records == instances",
        )
    report(
        "redis-outage",
        {
            "form": "full" if outage >= 30 else "short",
            "outage_seconds": outage,
            "jobs": len(done),
            "jobs_failed": len(failed),
            "webhook_deliveries_failed": failed_deliveries,
            "reconcile_errors": errors,
            "health_answers": seen["health"],
            "problems": len(problems),
        },
    )
    assert errors and all(v >= 1 for v in errors.values()), f"the outage went unnoticed: {errors}"
    settle(problems, fleet.tails())


def test_redis_emptied_is_rebuilt_within_one_reconcile(
    private_fleet: Fleet, private_redis: RedisProc, tmp_path: Any
) -> None:
    fleet = private_fleet
    gate = tmp_path / "gate"
    for unit in ("u0", "u1"):
        fleet.add(unit)
    fleet.start()
    gated = [
        fleet.queue_job([f"while [ ! -e {gate} ]; do sleep 0.1; done", "echo released"])
        for _ in range(2)
    ]
    wait_for(
        lambda: (
            all(fleet.jobs()[j]["status"] == "in_progress" for j in gated)
            and sum(r["busy"] for r in fleet.github_runners().values()) == 2
            and sum(1 for r in fleet.github_runners().values() if r["online"] and not r["busy"])
            >= 2
        ),
        90,
        what="2 busy runners and the idle pool online",
    )
    for manager in fleet.managers:
        assert manager.stop() == 0, manager.tail()
    snapshot = {m.unit: m.instances() for m in fleet.managers}
    records_before = fleet.records()
    busy_before = {n for n, r in fleet.github_runners().items() if r["busy"]}
    github_before = set(fleet.github_runners())
    fleet.redis.flushall()
    problems: list[str] = []
    for manager in fleet.managers:
        result = run_cli(manager.config, "--log-level", "info", "reconcile")
        if result.returncode != 0:
            problems.append(f"reconcile of {manager.unit} after FLUSHALL: {result.stderr[-3000:]}")
    records = fleet.records()
    for manager in fleet.managers:
        now = manager.instances()
        if set(now) != set(snapshot[manager.unit]):
            problems.append(
                f"{manager.unit}: instances changed by the rebuild: {sorted(snapshot[manager.unit])} -> {sorted(now)}"
            )
        for name in snapshot[manager.unit]:
            rec = records.get(name)
            if rec is None:
                problems.append(f"{manager.unit}: record of {name} not rebuilt")
            elif rec.get("unit") != manager.unit:
                problems.append(f"{name}: rebuilt in unit {rec.get('unit')}, not {manager.unit}")
            elif name in busy_before and rec.get("state") != "busy":
                problems.append(f"busy runner {name} rebuilt as {rec.get('state')}")
    if set(fleet.github_runners()) != github_before:
        problems.append(
            f"GitHub runners changed by the rebuild: {sorted(github_before)} -> {sorted(fleet.github_runners())}"
        )
    if set(records) != set(records_before):
        problems.append(f"records rebuilt {sorted(records)} != before {sorted(records_before)}")

    # emptied again, under running services: records come back and every job completes
    fleet.start()
    fleet.redis.flushall()
    try:
        wait_for(
            lambda: set(fleet.records()) == set(fleet.all_instances()) and fleet.records(),
            60,
            what="records rebuilt under the running services",
        )
    except TimeoutError:
        problems.append(
            f"live rebuild: records {sorted(fleet.records())} vs instances {sorted(fleet.all_instances())}"
        )
    later = [fleet.queue_job(["echo after the flush"]) for _ in range(2)]
    gate.write_text("go")
    done = fleet.wait_jobs_done([*gated, *later], 120)
    failed = {j: d["conclusion"] for j, d in done.items() if d["conclusion"] != "success"}
    if failed:
        problems.append(f"jobs not successful (a busy runner lost?): {failed}")
    for manager in fleet.managers:
        problems += [f"{manager.unit} log: {line}" for line in no_traceback(manager.log_text())]
    report(
        "redis-flushall",
        {
            "runners_before": len(records_before),
            "busy_before": len(busy_before),
            "records_rebuilt": len(records),
            "jobs": len(done),
            "jobs_failed": len(failed),
            "problems": len(problems),
        },
    )
    settle(problems, fleet.tails())
