"""Campaign 3 -- GitHub faults through the emulator.

One manager service with an idle pool of two runners. Phases, each a fault injected for a while:

* **read faults** -- the runner listing answers malformed JSON; a burst of 5xx on every route; the
  listing hangs (the client's timeout fires); every route slow. The manager keeps serving (its health
  endpoint answers, a job queued meanwhile completes) and deletes nothing it could not see: every idle
  runner that was there before a phase and took no job is still there after it, and no DELETE of one
  reached GitHub.
* **rate limits** -- a 429 and a 403 secondary limit with ``retry-after``, and the primary budget spent
  (403 with ``x-ratelimit-remaining: 0`` and a reset a few seconds ahead). The emulator's request log
  shows no request from the manager's token during the wait (requests already in flight when the limit
  answer arrived are allowed to finish), requests resume afterwards and jobs are still served.
"""

from __future__ import annotations

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
    report,
    rng,
    settle,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]

LIST = "actions/list-self-hosted-runners-for-org"
#: Seconds after a limit answer during which requests sent before it may still complete.
IN_FLIGHT = 1.5


def _start(fleet: Fleet, **overrides: Any) -> Manager:
    fleet.emulator.control.settings(request_log_size=50_000)
    manager = fleet.add(
        "u0",
        github={"poll_interval": "1s", "timeout": 2},
        reconcile_interval="2s",
        runner_groups=[
            {
                "name": "small",
                "labels": ["small"],
                "backend": "fake",
                "min_idle": 2,
                "max_runners": 6,
                "cpu": 1,
                "memory": "1GiB",
                "paths": ["acme"],
            }
        ],
        **overrides,
    )
    fleet.start()
    wait_for(
        lambda: sum(r["online"] and not r["busy"] for r in fleet.github_runners().values()) >= 2,
        60,
        what="the idle pool online",
    )
    return manager


def _log(fleet: Fleet) -> list[dict[str, Any]]:
    key = token_key(TOKEN)
    return [e for e in fleet.emulator.control.stats()["request_log"] if e.get("token") == key]


def test_read_faults_keep_serving_and_delete_nothing(fleet: Fleet) -> None:
    manager = _start(fleet)
    gen = rng("github-read-faults")
    phases: list[tuple[str, list[dict[str, Any]], bool]] = [
        ("malformed listing", [{"route": LIST, "malformed": True}], True),
        (
            "5xx burst",
            [
                {
                    "route": "*",
                    "status": s,
                    "probability": 0.6,
                    "seed": gen.randrange(10**6),
                    "count": 40,
                }
                for s in (500, 502, 503)
            ],
            False,
        ),
        ("hanging listing", [{"route": LIST, "hang": True, "hang_seconds": 30}], True),
        (
            "slow everything",
            [{"route": "*", "latency": 1.5, "probability": 0.5, "seed": gen.randrange(10**6)}],
            True,
        ),
    ]
    problems: list[str] = []
    figures: dict[str, Any] = {}
    jobs: list[int] = []
    for name, faults, with_job in phases:
        before = {n: r for n, r in fleet.github_runners().items() if r["online"] and not r["busy"]}
        started = time.time()
        for spec in faults:
            fleet.emulator.control.fault(**spec)
        job = fleet.queue_job(["echo served"]) if with_job else None
        health: list[int] = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # the phase lasts 8 s; sample health meanwhile
            try:
                health.append(requests.get(manager.health_url, timeout=3).status_code)
            except requests.RequestException:
                health.append(0)
            threading.Event().wait(0.5)
        if job is not None:
            try:
                wait_for(
                    lambda: fleet.jobs()[job]["status"] == "completed",
                    60,
                    what=f"the job of phase {name}",
                )
            except TimeoutError:
                problems.append(
                    f"{name}: job {job} not served during the fault: {fleet.jobs()[job]['status']}"
                )
            jobs.append(job)
        hits = sum(f["hits"] for f in fleet.emulator.control._call("GET", "faults"))
        fleet.emulator.control.clear_faults()
        ended = time.time()
        took = {fleet.jobs()[job]["runner_name"]} if job is not None else set()
        after = fleet.github_runners()
        instances = manager.instances()
        for runner in set(before) - took:
            if runner not in after or runner not in instances:
                problems.append(
                    f"{name}: idle runner {runner} deleted on data that could not be read"
                )
        ids = {str(before[r]["id"]) for r in set(before) - took}
        deletes = [
            e
            for e in _log(fleet)
            if e["method"] == "DELETE"
            and started <= e["time"] <= ended
            and e["path"].rsplit("/", 1)[-1] in ids
        ]
        if deletes:
            problems.append(f"{name}: DELETE of idle runners reached GitHub: {deletes}")
        if not manager.alive():
            problems.append(f"{name}: the manager died")
        if any(code != 200 for code in health):
            problems.append(f"{name}: health answers {health}")
        figures[name] = {
            "faulty_answers": hits,
            "health_ok": health.count(200),
        }
    done = fleet.wait_jobs_done(jobs, 60)
    failed = {j: d["conclusion"] for j, d in done.items() if d["conclusion"] != "success"}
    if failed:
        problems.append(f"jobs not successful: {failed}")
    problems += [f"log: {line}" for line in no_traceback(manager.log_text())]
    stats = fleet.emulator.control.stats()
    report(
        "github-read-faults",
        {
            "phases": figures,
            "faults_injected": stats["faults_injected"],
            "jobs": len(jobs),
            "problems": len(problems),
        },
    )
    settle(problems, manager.tail(80))


def _quiet_after(
    log: list[dict[str, Any]], limited: dict[str, Any], until: float
) -> list[dict[str, Any]]:
    """Requests that completed after the limit answer (past the in-flight grace) but before ``until``."""
    return [e for e in log if limited["time"] + IN_FLIGHT < e["time"] < until]


def test_rate_limits_are_waited_out_without_requests(fleet: Fleet) -> None:
    manager = _start(fleet)
    problems: list[str] = []
    figures: dict[str, Any] = {}
    for name, status, retry_after in (("429", 429, 5), ("403 secondary", 403, 5)):
        since = time.time()
        fleet.emulator.control.fault(route="*", status=status, retry_after=retry_after, count=1)
        wait_for(
            lambda: any(e["status"] == status and e["time"] >= since for e in _log(fleet)),
            30,
            what=f"the {name} answer",
        )
        limited = next(e for e in _log(fleet) if e["status"] == status and e["time"] >= since)
        wait_for(
            lambda: any(e["time"] > limited["time"] + retry_after for e in _log(fleet)),
            30,
            what=f"requests resuming after {name}",
        )
        early = _quiet_after(_log(fleet), limited, limited["time"] + retry_after - 0.05)
        if early:
            problems.append(f"{name}: {len(early)} requests during retry-after: {early[:3]}")
        resumed = min(e["time"] for e in _log(fleet) if e["time"] > limited["time"] + IN_FLIGHT)
        figures[name] = {
            "retry_after": retry_after,
            "silence": round(resumed - limited["time"], 2),
            "early_requests": len(early),
        }
        fleet.emulator.control.clear_faults()

    # the primary budget is spent, its reset a few seconds ahead (with a few units left the client
    # spreads them until the reset instead: it never runs dry, so start from none)
    from github_emulator.ratelimit import Budget

    limiter = fleet.emulator.emulator.limiter
    key = token_key(TOKEN)
    reset = int(time.time()) + 8
    with limiter._lock:
        limit = limiter.settings.rate_limit
        limiter._budgets[key] = Budget(limit=limit, used=limit, reset=reset)
    since = time.time()
    job = fleet.queue_job(["echo after the budget"])
    wait_for(
        lambda: any(e["status"] == 403 and e["time"] >= since for e in _log(fleet)),
        30,
        what="the budget running out",
    )
    limited = next(e for e in _log(fleet) if e["status"] == 403 and e["time"] >= since)
    spent_403 = sum(1 for e in _log(fleet) if e["status"] == 403 and since <= e["time"] < reset)
    wait_for(
        lambda: any(e["time"] > reset for e in _log(fleet)), 60, what="requests after the reset"
    )
    early = _quiet_after(_log(fleet), limited, reset)
    if early:
        problems.append(f"primary budget: {len(early)} requests before the reset: {early[:3]}")
    if spent_403 > 3:
        problems.append(
            f"primary budget: {spent_403} requests answered 403 before the reset (a storm)"
        )
    figures["primary budget"] = {
        "reset_in": round(reset - limited["time"], 2),
        "answered_403": spent_403,
        "early_requests": len(early),
    }
    done = fleet.wait_jobs_done([job], 90)
    if done[job]["conclusion"] != "success":
        problems.append(f"job after the budget: {done[job]['conclusion']}")
    if not manager.alive():
        problems.append("the manager died")
    problems += [f"log: {line}" for line in no_traceback(manager.log_text())]
    report("github-rate-limits", {"phases": figures, "problems": len(problems)})
    settle(problems, manager.tail(80))
