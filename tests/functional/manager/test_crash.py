"""Crash safety: SIGKILL a manager while it creates 20 runners, restart it, nothing leaks, every job runs.

The fake backend runs in local mode with a create latency, so the kill lands while some instances are
running, some are still being created (their creator dies with them) and some records have no instance
yet. Jobs hold at a gate file until the test has checked the fleet, so no runner finishes in between.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import redis as redis_lib
from tests.functional.manager.test_manager_e2e import (
    ORGS,
    REPOS,
    SECRET,
    _kill_leftovers,
    instances,
    manager_config,
    our_github_runners,
    pid_alive,
    run_cli,
    setup_world,
    write_manager,
)
from tests.parts import wait_for

JOBS = 20


def _fleet(
    emulator: Any, redis_url: str, state_file: Path
) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    records = set(client.smembers("ghrm:runners"))
    github = {r["name"]: r for r in our_github_runners(emulator)}
    return instances(state_file), github, records


def test_sigkill_during_creation_leaks_nothing_and_every_job_completes(
    emulator: Any, redis_url: str, tmp_path: Path
) -> None:
    setup_world(emulator)
    gate = tmp_path / "gate"
    groups = [
        {"name": "small", "labels": ["small"], "backend": "fake", "min_idle": 0, "max_runners": 30,
         "cpu": 1, "memory": "1GiB", "paths": list(ORGS)},
    ]  # fmt: skip
    data = manager_config(
        tmp_path, "u0", emulator.url, redis_url, groups=groups,
        fake={"create_latency": "1s"}, concurrency=6, reconcile_interval="30s",
    )  # fmt: skip
    manager = write_manager(tmp_path, data)
    for org in ORGS:
        emulator.control.add_hook(manager.webhook_url, SECRET, org=org)
    restarted = None
    try:
        manager.start()
        steps = [f"while [ ! -e {gate} ]; do sleep 0.1; done", "echo done on $RUNNER_NAME"]
        job_ids = [
            emulator.control.queue_job(REPOS[n % len(REPOS)], ["self-hosted", "small"], steps)
            for n in range(JOBS)
        ]

        def mid_creation() -> bool:
            found = instances(manager.state_file)
            states = {d["state"] for d in found.values()}
            return len(found) >= 6 and "pending" in states

        wait_for(mid_creation, 60, interval=0.02, what="a fleet half created")
        assert manager.stop(signal.SIGKILL) == -signal.SIGKILL
        before, _github, records_before = _fleet(emulator, redis_url, manager.state_file)
        assert len(records_before) > len(before) or any(
            d["state"] == "pending" for d in before.values()
        )

        # one reconcile by the restarted manager settles everything the dead one left
        result = run_cli(manager.config, "--log-level", "info", "reconcile", timeout=120)
        assert result.returncode == 0, result.stderr
        found, github, records = _fleet(emulator, redis_url, manager.state_file)
        assert set(found) == set(github) == records, (
            sorted(found),
            sorted(github),
            sorted(records),
        )
        assert all(d["state"] == "running" and pid_alive(d["pid"]) for d in found.values())
        leaked = set(before) - set(found)
        assert all(
            before[name]["state"] == "pending" for name in leaked
        )  # only dead creations went
        for name, data_ in before.items():
            if name in leaked:
                assert not data_.get("pid") or not pid_alive(data_["pid"])
        # a runner for every job the fleet knows is waiting (events the dead manager never read
        # come back from the stream or the poll once the service runs again)
        pending = redis_lib.Redis.from_url(redis_url, decode_responses=True).hlen("ghrm:pending")
        assert 0 < pending <= len(found), result.stderr[-6000:]

        # the restarted service serves every job (none was lost, no busy runner killed)
        restarted = manager.start()
        gate.write_text("go")
        wait_for(
            lambda: all(emulator.control.get_job(j)["status"] == "completed" for j in job_ids),
            90, interval=0.25, what="all jobs completed after the crash",
        )  # fmt: skip
        conclusions = {emulator.control.get_job(j)["conclusion"] for j in job_ids}
        assert conclusions == {"success"}, manager.tail()
        assert restarted.stop() == 0
        flushed = run_cli(manager.config, "flush", "--busy")
        assert flushed.returncode == 0, flushed.stderr
        assert instances(manager.state_file) == {}
        assert our_github_runners(emulator) == []
        counters = redis_lib.Redis.from_url(redis_url, decode_responses=True).hgetall(
            "ghrm:counters"
        )
        assert json.loads(json.dumps(counters)).get("jobs_unmatched", "0") == "0"
    finally:
        if manager.process is not None and manager.process.poll() is None:
            manager.stop(signal.SIGKILL)
        _kill_leftovers(manager.state_file)
